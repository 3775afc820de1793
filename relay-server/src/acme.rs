//! ACME certificates for the HTTPS ingress (instant-acme, ring): TLS-ALPN-01 for the
//! relay's own names, answered on the HTTPS port through [`crate::certs::SwapResolver`],
//! and DNS-01 through an operator's hook command for the wildcard `*.DOMAIN`.
//!
//! The account and the certificate are cached in `DATA_DIR/acme/`; [`run`] renews ahead
//! of expiry and swaps the new certificate in without a restart. Failures are logged
//! and retried with backoff; the certificate in service stays until replaced.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio_util::sync::CancellationToken;

use crate::certs::SwapResolver;
use crate::tls::Identity;

/// What the relay orders from an ACME directory.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// Directory URL (Let's Encrypt: `https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// Contact address for the account.
    pub email: Option<String>,
    /// Names validated by TLS-ALPN-01 on the HTTPS port (the relay's own names).
    pub names: Vec<String>,
    /// The tunnel domain; with a hook, `*.domain` is validated by DNS-01.
    pub domain: String,
    /// `HOOK present|cleanup DOMAIN VALUE`: publishes (removes) the TXT record
    /// `_acme-challenge.DOMAIN` with VALUE, returning once it is published.
    pub dns_hook: Option<PathBuf>,
    /// Extra root (PEM) trusted for the directory's own HTTPS (a private or test CA).
    pub directory_ca: Option<PathBuf>,
    /// Renew when the certificate has less than this left.
    pub renew_before: Duration,
}

impl AcmeConfig {
    /// Every name on the certificate.
    pub fn all_names(&self) -> Vec<String> {
        let mut names = self.names.clone();
        if self.dns_hook.is_some() {
            names.push(format!("*.{}", self.domain));
        }
        names
    }
}

/// Where the cache lives.
fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("acme")
}

/// Loads the cached ACME certificate, if there is one for exactly these names, with
/// the time it should be renewed.
pub fn load_cached(data_dir: &Path, cfg: &AcmeConfig) -> Option<(Identity, SystemTime)> {
    let d = dir(data_dir);
    let id = Identity::from_files(&d.join("cert.pem"), &d.join("key.pem")).ok()?;
    let (names, validity) = leaf_facts(&id).ok()?;
    let mut want = cfg.all_names();
    want.sort();
    (names == want).then(|| (id, renew_at(validity, cfg.renew_before)))
}

/// When to renew a certificate valid from `not_before` to `not_after`: `renew_before`
/// ahead of expiry, but never in the first half of its lifetime (so a renew_before
/// longer than the CA's lifetime cannot make the relay re-order in a loop).
pub fn renew_at(
    (not_before, not_after): (SystemTime, SystemTime),
    renew_before: Duration,
) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let half = not_before + lifetime / 2;
    let ahead = not_after.checked_sub(renew_before).unwrap_or(not_before);
    ahead.max(half)
}

fn leaf_facts(id: &Identity) -> anyhow::Result<(Vec<String>, (SystemTime, SystemTime))> {
    let leaf = id.certs.first().ok_or_else(|| anyhow!("empty chain"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| anyhow!("parsing certificate: {e}"))?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let v = cert.validity();
    Ok((names, (at(v.not_before), at(v.not_after))))
}

/// Keeps `resolver` serving a valid ACME certificate until `stop` fires: the cached
/// one first, a new one when it is missing or within `renew_before` of expiry.
pub async fn run(
    cfg: AcmeConfig,
    data_dir: PathBuf,
    resolver: Arc<SwapResolver>,
    stop: CancellationToken,
) {
    let mut renew = match load_cached(&data_dir, &cfg) {
        Some((id, renew)) => {
            if let Err(e) = resolver.replace(&id) {
                tracing::warn!("cached ACME certificate does not load: {e:#}");
            }
            tracing::info!(names = ?cfg.all_names(), "serving cached ACME certificate");
            Some(renew)
        }
        None => None,
    };
    let mut failures = 0u32;
    loop {
        let due = renew
            .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or_default();
        if !due.is_zero() {
            // Wake at least twice a day so a changed clock or a long sleep is noticed.
            let wait = due.min(Duration::from_secs(12 * 3600));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        tracing::info!(names = ?cfg.all_names(), directory = %cfg.directory, "ordering certificate");
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = issue(&cfg, &data_dir, &resolver) => r,
        };
        match result {
            Ok((id, validity)) => {
                failures = 0;
                renew = Some(renew_at(validity, cfg.renew_before));
                match resolver.replace(&id) {
                    Ok(()) => tracing::info!(
                        names = ?cfg.all_names(),
                        expires = %humantime::format_rfc3339_seconds(validity.1),
                        "ACME certificate issued and in service"
                    ),
                    Err(e) => tracing::warn!("issued certificate does not load: {e:#}"),
                }
                // A floor against a CA that issues already-expiring certificates.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
            Err(e) => {
                failures += 1;
                let wait =
                    Duration::from_secs(30u64 << failures.min(7)).min(Duration::from_secs(3600));
                tracing::warn!(retry_in = %humantime::format_duration(wait), "ACME order failed: {e:#}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedAccount {
    directory: String,
    credentials: AccountCredentials,
}

async fn account(cfg: &AcmeConfig, data_dir: &Path) -> anyhow::Result<Account> {
    let builder = || match &cfg.directory_ca {
        Some(ca) => Account::builder_with_root(ca)
            .with_context(|| format!("loading ACME directory CA {}", ca.display())),
        None => Account::builder().context("ACME HTTP client"),
    };
    let path = dir(data_dir).join("account.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(cached) = serde_json::from_str::<CachedAccount>(&text) {
            if cached.directory == cfg.directory {
                return builder()?
                    .from_credentials(cached.credentials)
                    .await
                    .context("restoring the cached ACME account");
            }
        }
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an ACME account at {}", cfg.directory))?;
    let cached = CachedAccount {
        directory: cfg.directory.clone(),
        credentials,
    };
    std::fs::create_dir_all(dir(data_dir))?;
    crate::tls::write_private(&path, serde_json::to_string(&cached)?.as_bytes())?;
    tracing::info!(id = account.id(), "ACME account created");
    Ok(account)
}

/// Runs the hook; its stderr's last line explains a failure.
async fn hook(hook: &Path, action: &str, domain: &str, value: &str) -> anyhow::Result<()> {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(hook)
            .arg(action)
            .arg(domain)
            .arg(value)
            .env("PORTHOLE_ACME_RECORD", format!("_acme-challenge.{domain}"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("DNS hook {} {action} took over 300s", hook.display()))?
    .with_context(|| format!("running DNS hook {}", hook.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "DNS hook {} {action} {domain} failed ({}): {}",
            hook.display(),
            out.status,
            err.trim().lines().last().unwrap_or("")
        );
    }
    Ok(())
}

/// A TLS-ALPN-01 challenge certificate (RFC 8737) for `name`.
fn challenge_cert(name: &str, digest: &[u8]) -> anyhow::Result<rustls::sign::CertifiedKey> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let id = Identity {
        certs: vec![cert.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    };
    crate::certs::certified(&id)
}

/// Orders, validates and stores one certificate.
async fn issue(
    cfg: &AcmeConfig,
    data_dir: &Path,
    resolver: &SwapResolver,
) -> anyhow::Result<(Identity, (SystemTime, SystemTime))> {
    let account = account(cfg, data_dir).await?;
    let ids: Vec<Identifier> = cfg.all_names().into_iter().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .context("creating the order")?;
    let mut alpn_names = Vec::new();
    let mut dns_records = Vec::new();
    let outcome = async {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.context("fetching an authorization")?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => bail!("authorization is {other:?}"),
            }
            let wildcard = authz.wildcard;
            let name = authz.identifier().identifier.clone();
            let Identifier::Dns(name) = name else {
                bail!("unexpected identifier type")
            };
            if wildcard {
                let hook_path = cfg
                    .dns_hook
                    .as_ref()
                    .ok_or_else(|| anyhow!("a wildcard needs --acme-dns-hook"))?;
                let mut ch = authz
                    .challenge(ChallengeType::Dns01)
                    .ok_or_else(|| anyhow!("the CA offers no dns-01 challenge for *.{name}"))?;
                let value = ch.key_authorization().dns_value();
                hook(hook_path, "present", &name, &value).await?;
                dns_records.push((name.clone(), value));
                ch.set_ready().await.context("dns-01 set_ready")?;
            } else {
                let mut ch = authz
                    .challenge(ChallengeType::TlsAlpn01)
                    .ok_or_else(|| anyhow!("the CA offers no tls-alpn-01 challenge for {name}"))?;
                let cert = challenge_cert(&name, ch.key_authorization().digest().as_ref())?;
                resolver.set_challenge(&name, Arc::new(cert));
                alpn_names.push(name.clone());
                ch.set_ready().await.context("tls-alpn-01 set_ready")?;
            }
        }
        let retry = RetryPolicy::new().timeout(Duration::from_secs(180));
        match order
            .poll_ready(&retry)
            .await
            .context("waiting for validation")?
        {
            OrderStatus::Ready => {}
            other => bail!("order is {other:?} after validation"),
        }
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(cfg.all_names())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        order
            .finalize_csr(csr.der())
            .await
            .context("finalizing the order")?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .context("downloading the certificate")?;
        Ok::<_, anyhow::Error>((chain, key.serialize_pem()))
    }
    .await;
    for name in &alpn_names {
        resolver.clear_challenge(name);
    }
    if let Some(hook_path) = &cfg.dns_hook {
        for (name, value) in &dns_records {
            if let Err(e) = hook(hook_path, "cleanup", name, value).await {
                tracing::warn!("{e:#}");
            }
        }
    }
    let (chain, key_pem) = outcome?;
    let d = dir(data_dir);
    std::fs::create_dir_all(&d)?;
    crate::tls::write_private(&d.join("key.pem"), key_pem.as_bytes())?;
    std::fs::write(d.join("cert.pem"), &chain)
        .with_context(|| format!("writing {}", d.join("cert.pem").display()))?;
    let id = Identity::from_files(&d.join("cert.pem"), &d.join("key.pem"))?;
    let (_, validity) = leaf_facts(&id)?;
    Ok((id, validity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_ahead_of_expiry_but_never_in_the_first_half() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86400);
        let le = (t0, t0 + 90 * day);
        assert_eq!(renew_at(le, 30 * day), t0 + 60 * day);
        assert_eq!(renew_at(le, 80 * day), t0 + 45 * day);
        assert_eq!(renew_at(le, 1000 * day), t0 + 45 * day);
    }
}
