//! How the client trusts a relay: by pin (`sha256:<hex>` of the certificate's public
//! key), by a CA file, or by the system's roots. Every mode verifies the handshake
//! signature, so a relay must hold the private key it claims; there is no
//! skip-verification mode.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How to trust the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The relay's SPKI must hash to this pin.
    Pin(String),
    /// The relay's chain must lead to a certificate in this PEM file.
    CaFile(PathBuf),
    /// The relay's chain must lead to a well-known public root.
    SystemRoots,
}

impl Trust {
    /// The trust `--relay-pin` and `--relay-ca` ask for: a pin wins, then a CA file,
    /// else the system roots.
    pub fn from_flags(pin: Option<&str>, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Ok(match (pin, ca) {
            (Some(pin), _) => Trust::Pin(parse_pin(pin)?),
            (None, Some(ca)) => Trust::CaFile(ca.to_path_buf()),
            (None, None) => Trust::SystemRoots,
        })
    }
}

/// Normalises and checks a pin: `sha256:` and 64 hex digits (case-insensitive; the
/// prefix may be omitted).
pub fn parse_pin(s: &str) -> anyhow::Result<String> {
    let hex_part = s.trim().strip_prefix("sha256:").unwrap_or(s.trim());
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("a relay pin looks like sha256:<64 hex digits> (from `porthole-relay fingerprint`), got {s:?}");
    }
    Ok(format!("sha256:{}", hex_part.to_ascii_lowercase()))
}

/// rustls with *ring*, offering AES-128-GCM first: TLS 1.3's mandatory suite, and
/// with four fewer AES rounds per block than AES-256 it takes less CPU for every
/// packet of the tunnel. The relay follows the client's order; the other two suites
/// stay on offer.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// The rustls client configuration for `trust`, with the Porthole ALPN.
pub fn client_config(trust: &Trust) -> anyhow::Result<rustls::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut cfg = match trust {
        Trust::Pin(pin) => {
            let pin = parse_pin(pin)?;
            let check = move |cert: &CertificateDer<'_>| check_pin(cert, &pin);
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(KeyHolder::new(check, &provider)))
                .with_no_client_auth()
        }
        Trust::CaFile(path) => builder
            .with_root_certificates(roots_from_pem(path, "relay")?)
            .with_no_client_auth(),
        Trust::SystemRoots => builder
            .with_root_certificates(public_roots())
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![shared_proto::ALPN.to_vec()];
    Ok(cfg)
}

/// Accepts exactly the relay whose public key hashes to `pin`.
fn check_pin(end_entity: &CertificateDer<'_>, pin: &str) -> Result<(), rustls::Error> {
    let got = relay_server::tls::spki_pin(end_entity)
        .map_err(|e| rustls::Error::General(format!("relay certificate: {e}")))?;
    if got == pin {
        Ok(())
    } else {
        Err(rustls::Error::General(format!(
            "the relay's certificate pin is {got}, not the expected {pin}: refusing to connect (wrong relay, or its key changed)"
        )))
    }
}

/// A certificate verifier that judges the server's certificate by `check` alone (no
/// chain to a root), and still verifies the handshake signature against that
/// certificate's key: the server must hold the private key it presents. Used for the
/// relay's pin and for `--target-insecure`.
pub(crate) struct KeyHolder<F> {
    check: F,
    algorithms: WebPkiSupportedAlgorithms,
}

impl<F> KeyHolder<F>
where
    F: Fn(&CertificateDer<'_>) -> Result<(), rustls::Error> + Send + Sync,
{
    /// A verifier with `check`, verifying signatures with `provider`'s algorithms.
    pub(crate) fn new(check: F, provider: &CryptoProvider) -> Self {
        Self {
            check,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl<F> std::fmt::Debug for KeyHolder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHolder").finish_non_exhaustive()
    }
}

impl<F> ServerCertVerifier for KeyHolder<F>
where
    F: Fn(&CertificateDer<'_>) -> Result<(), rustls::Error> + Send + Sync,
{
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        (self.check)(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The public web's root CAs (Mozilla's, bundled: no system store is read).
pub(crate) fn public_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

/// The CA certificates in the PEM file at `path` (`what`'s CA: "relay", "target"), as
/// roots; a file without any is an error.
pub(crate) fn roots_from_pem(path: &Path, what: &str) -> anyhow::Result<rustls::RootCertStore> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading {what} CA file {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("adding CA from {}", path.display()))?;
    }
    if roots.is_empty() {
        bail!("no certificate found in {}", path.display());
    }
    Ok(roots)
}

/// Whether a connection error is a certificate/trust failure (not worth retrying).
pub fn is_trust_error(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            let s = t.to_string();
            s.contains("pin") || s.contains("certificate") || s.contains("UnknownIssuer")
        }
        _ => false,
    }
}

/// Explains a connection error in one sentence.
pub fn explain(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::TimedOut => {
            "no answer from the relay (is the address right, and is its UDP port open?)".into()
        }
        quinn::ConnectionError::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            if reason.is_empty() {
                format!("the relay closed the session (code {})", c.error_code)
            } else {
                format!("the relay closed the session: {reason}")
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_normalised_and_checked() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_pin(&format!("sha256:{hex}")).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
        assert!(parse_pin(&hex).is_ok());
        assert!(parse_pin("sha256:abc").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn every_mode_builds() {
        client_config(&Trust::Pin(format!("sha256:{}", "0".repeat(64)))).unwrap();
        client_config(&Trust::SystemRoots).unwrap();
        assert!(client_config(&Trust::CaFile("/nonexistent.pem".into())).is_err());
    }
}
