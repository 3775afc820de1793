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

use rustls::pki_types::CertificateDer;

use crate::trust::{public_roots, roots_from_pem, KeyHolder};

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
        // Whatever certificate the target presents (a self-signed local one), as long
        // as the target holds its private key.
        let any = |_: &CertificateDer<'_>| Ok(());
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(KeyHolder::new(any, &provider)))
            .with_no_client_auth());
    }
    let roots = match &opts.ca {
        Some(path) => roots_from_pem(path, "target")?,
        None => public_roots(),
    };
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
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
