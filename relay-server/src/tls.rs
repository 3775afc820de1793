//! The relay's TLS identity: its certificate and key (given as files, or created once
//! with rcgen and kept in the data dir), the pin clients trust it by, and rustls server
//! configurations for QUIC and HTTPS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use ring::digest::{digest, SHA256};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the self-signed certificate in the data dir.
pub const CERT_FILE: &str = "relay-cert.pem";
/// File name of its private key in the data dir.
pub const KEY_FILE: &str = "relay-key.pem";

/// A certificate chain and its private key.
pub struct Identity {
    /// Leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("certs", &self.certs.len())
            .field("key", &"MASKED")
            .finish()
    }
}

impl Identity {
    /// The pin of the leaf certificate: `sha256:<hex>` of its SubjectPublicKeyInfo.
    pub fn pin(&self) -> anyhow::Result<String> {
        let leaf = self.certs.first().ok_or_else(|| anyhow!("empty chain"))?;
        spki_pin(leaf)
    }

    /// Loads a PEM chain and key from files (the operator's own certificate).
    pub fn from_files(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let certs = read_certs(cert)?;
        let key_pem =
            std::fs::read(key).with_context(|| format!("reading TLS key {}", key.display()))?;
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .with_context(|| format!("parsing TLS key {}", key.display()))?
            .ok_or_else(|| anyhow!("no private key found in {}", key.display()))?;
        Ok(Self { certs, key })
    }

    /// Loads the relay's self-signed identity from `data_dir`, creating it on first use
    /// for `domain` and `*.domain`.
    pub fn load_or_create(data_dir: &Path, domain: &str) -> anyhow::Result<Self> {
        let cert_path = data_dir.join(CERT_FILE);
        let key_path = data_dir.join(KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            return Self::from_files(&cert_path, &key_path);
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let names = vec![domain.to_owned(), format!("*.{domain}")];
        let key = rcgen::KeyPair::generate().context("generating relay key")?;
        let mut params =
            rcgen::CertificateParams::new(names).context("building certificate params")?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("porthole relay {domain}"),
        );
        // Long-lived on purpose: clients trust it by pin, not by expiry.
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = params
            .self_signed(&key)
            .context("self-signing certificate")?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem())
            .with_context(|| format!("writing {}", cert_path.display()))?;
        Self::from_files(&cert_path, &key_path)
    }

    /// Where the identity comes from: operator files if both are given, else the data
    /// dir.
    pub fn resolve(
        data_dir: &Path,
        domain: &str,
        tls_cert: Option<&PathBuf>,
        tls_key: Option<&PathBuf>,
    ) -> anyhow::Result<Self> {
        match (tls_cert, tls_key) {
            (Some(c), Some(k)) => Self::from_files(c, k),
            (None, None) => Self::load_or_create(data_dir, domain),
            _ => bail!("--tls-cert and --tls-key must be given together"),
        }
    }

    /// A rustls server configuration for this identity with the given ALPN protocols.
    pub fn server_config(&self, alpn: &[&[u8]]) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .context("certificate and key do not match")?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem =
        std::fs::read(path).with_context(|| format!("reading certificate {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate found in {}", path.display());
    }
    Ok(certs)
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo: the pin clients trust a
/// self-hosted relay by. It survives certificate renewal with the same key.
pub fn spki_pin(cert: &CertificateDer<'_>) -> anyhow::Result<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| anyhow!("parsing certificate: {e}"))?;
    let spki = parsed.tbs_certificate.subject_pki.raw;
    Ok(format!("sha256:{}", hex::encode(digest(&SHA256, spki))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_pin_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path(), "example.test").unwrap();
        let b = Identity::load_or_create(dir.path(), "example.test").unwrap();
        let pin = a.pin().unwrap();
        assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64, "{pin}");
        assert_eq!(pin, b.pin().unwrap());
        assert!(format!("{a:?}").contains("MASKED"));
        a.server_config(&[b"h2"]).unwrap();
    }

    #[test]
    fn half_a_pair_of_files_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let err = Identity::resolve(dir.path(), "x", Some(&cert), None).unwrap_err();
        assert!(err.to_string().contains("together"));
    }
}
