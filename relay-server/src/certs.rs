//! Hot-swappable server certificates: a rustls [`ResolvesServerCert`] whose certificate
//! can be replaced while the relay runs (ACME renewal, operator files changing on disk),
//! and which answers TLS-ALPN-01 challenges (RFC 8737) on the HTTPS port.
//!
//! This module owns no I/O except [`watch_files`], which polls the operator's
//! certificate files; ordering certificates is [`crate::acme`]'s job.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::tls::Identity;

/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How often `--tls-cert`/`--tls-key` are checked for changes.
pub const FILE_POLL: Duration = Duration::from_secs(2);

/// A certificate that can be swapped at run time, plus pending TLS-ALPN-01 challenge
/// certificates by server name.
#[derive(Debug)]
pub struct SwapResolver {
    current: ArcSwap<CertifiedKey>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl SwapResolver {
    /// A resolver serving `identity` until replaced.
    pub fn new(identity: &Identity) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(certified(identity)?),
            challenges: Mutex::new(HashMap::new()),
        }))
    }

    /// Serves `identity` from the next handshake on.
    pub fn replace(&self, identity: &Identity) -> anyhow::Result<()> {
        self.current.store(Arc::new(certified(identity)?));
        Ok(())
    }

    /// The chain served now (leaf first).
    pub fn chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// Answers TLS-ALPN-01 validation for `name` with `cert` until removed.
    pub fn set_challenge(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), cert);
    }

    /// Stops answering TLS-ALPN-01 validation for `name`.
    pub fn clear_challenge(&self, name: &str) {
        self.challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name.to_ascii_lowercase());
    }
}

impl ResolvesServerCert for SwapResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // A validation connection gets the challenge certificate or nothing: never
            // the real one (RFC 8737 §3).
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .cloned();
        }
        Some(self.current.load_full())
    }
}

/// A rustls certified key for an identity (ring signer).
pub fn certified(identity: &Identity) -> anyhow::Result<CertifiedKey> {
    let key = rustls::crypto::ring::sign::any_supported_type(&identity.key)
        .map_err(|e| anyhow::anyhow!("unsupported private key: {e}"))?;
    Ok(CertifiedKey::new(identity.certs.clone(), key))
}

/// A rustls server configuration that asks `resolver` for its certificate.
pub fn server_config(
    resolver: Arc<SwapResolver>,
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

fn mtime(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Reloads the operator's certificate and key into every resolver in `targets` when
/// either file changes, checking every [`FILE_POLL`] until `stop` fires. A pair that
/// does not load (half-written, mismatched) is skipped with a warning and retried at
/// the next change; the previous certificate stays in service.
pub async fn watch_files(
    cert: PathBuf,
    key: PathBuf,
    targets: Vec<Arc<SwapResolver>>,
    stop: CancellationToken,
) {
    let mut seen = (mtime(&cert), mtime(&key));
    let mut tick = tokio::time::interval(FILE_POLL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = (mtime(&cert), mtime(&key));
        if now == seen {
            continue;
        }
        seen = now;
        match Identity::from_files(&cert, &key).and_then(|id| {
            for t in &targets {
                t.replace(&id)?;
            }
            id.pin()
        }) {
            Ok(pin) => {
                tracing::info!(cert = %cert.display(), %pin, "certificate files changed: reloaded")
            }
            Err(e) => {
                tracing::warn!(cert = %cert.display(), "certificate files changed but do not load (keeping the previous certificate): {e:#}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changed_files_are_served_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(&dir.path().join("a"), "a.test").unwrap();
        let b_dir = dir.path().join("b");
        let b = Identity::load_or_create(&b_dir, "b.test").unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::copy(dir.path().join("a").join(crate::tls::CERT_FILE), &cert).unwrap();
        std::fs::copy(dir.path().join("a").join(crate::tls::KEY_FILE), &key).unwrap();
        let resolver = SwapResolver::new(&a).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_files(
            cert.clone(),
            key.clone(),
            vec![resolver.clone()],
            stop.clone(),
        ));
        assert_eq!(resolver.chain(), a.certs);
        // Some filesystems keep whole-second mtimes: make the change visible.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        std::fs::copy(b_dir.join(crate::tls::CERT_FILE), &cert).unwrap();
        std::fs::copy(b_dir.join(crate::tls::KEY_FILE), &key).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while resolver.chain() != b.certs {
            assert!(tokio::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        task.await.unwrap();
    }
}
