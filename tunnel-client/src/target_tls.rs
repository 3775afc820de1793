//! How the forwarder talks to its target: TLS for `https://` targets (verified by the
//! public roots by default, by a CA file with `--target-ca`, or accepting the target's
//! own self-signed certificate with `--target-insecure`), and HTTP/2 (negotiated by
//! ALPN over TLS, or spoken in clear by prior knowledge with `--target-h2`).
//!
//! This is the hop from the daemon to a local app; the relay is trusted by other rules
//! ([`crate::trust`]). Even `--target-insecure` checks that the handshake is signed by
//! the key in the certificate the target presents.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How to reach targets, from the `porthole http` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetOptions {
    /// Accept any certificate from an `https://` target (a self-signed local one).
    pub insecure: bool,
    /// Trust `https://` targets by the CA certificates in this PEM file.
    pub ca: Option<PathBuf>,
    /// Speak HTTP/2 in clear (prior knowledge) to `http://` targets.
    pub h2c: bool,
}

/// The rustls configuration for `https://` targets, without ALPN (the connector sets
/// `h2` and `http/1.1`).
pub fn client_config(opts: &TargetOptions) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    if opts.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &opts.ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading target CA file {}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("adding CA from {}", path.display()))?;
            }
            if roots.is_empty() {
                bail!("no certificate found in {}", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Accepts whatever certificate the target presents (`--target-insecure`), but still
/// checks that the target holds its private key.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_builds_and_a_missing_ca_is_a_clear_error() {
        client_config(&TargetOptions::default()).unwrap();
        client_config(&TargetOptions {
            insecure: true,
            ..Default::default()
        })
        .unwrap();
        let err = client_config(&TargetOptions {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("reading target CA file"),
            "{err:#}"
        );
    }
}
