//! Relay configuration: `relay.toml` keys mirror the `serve` flags one to one. Flags
//! override the file, the file overrides defaults. Unknown keys are refused with their
//! name, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use serde::Deserialize;

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen(None));
        }
        s.parse()
            .map(|a| Listen(Some(a)))
            .map_err(|_| format!("expected HOST:PORT (like 0.0.0.0:8080) or `off`, got {s:?}"))
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("expected a duration like 30s or 500ms: {e}"))
}

mod duration_de {
    use super::*;
    pub fn opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Flags of `porthole-relay serve`; each has a `relay.toml` key of the same name
/// (with `_` for `-`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Config file (TOML); flags override its keys.
    #[arg(long, env = "PORTHOLE_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Tunnels are served as NAME.DOMAIN [default: localhost].
    #[arg(long)]
    pub domain: Option<String>,
    /// Public HTTP listener, or `off` [default: 0.0.0.0:8080].
    #[arg(long)]
    pub http_addr: Option<Listen>,
    /// Public HTTPS listener, or `off` [default: off].
    #[arg(long)]
    pub https_addr: Option<Listen>,
    /// QUIC (UDP) listener for clients [default: 0.0.0.0:4443].
    #[arg(long)]
    pub tunnel_addr: Option<Listen>,
    /// Admin listener: /healthz, /metrics; or `off` [default: 127.0.0.1:9090].
    #[arg(long)]
    pub admin_addr: Option<Listen>,
    /// Where tokens, reservations and the certificate live
    /// [default: $XDG_DATA_HOME/porthole-relay].
    #[arg(long, env = "PORTHOLE_RELAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain for HTTPS and QUIC (else a self-signed one is created).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Port shown in public URLs when a load balancer maps ports [default: the
    /// listener's port].
    #[arg(long)]
    pub public_port: Option<u16>,
    /// A target slower than this to answer gets 504 [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub target_timeout: Option<Duration>,
    /// Visitors must send their request head within this [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// Largest request head accepted; larger gets 431 [default: 65536].
    #[arg(long)]
    pub max_header_bytes: Option<usize>,
    /// Largest request body accepted; larger gets 413 [default: unlimited].
    #[arg(long)]
    pub max_body_bytes: Option<u64>,
    /// Peers (CIDR) whose X-Forwarded-* headers are trusted and extended.
    #[arg(long, value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<IpNet>>,
    /// A client silent for this long is considered gone [default: 3s].
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Worker threads (1 = single-threaded) [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Durable queue settings (`[queue]` in the file).
    #[command(flatten)]
    pub queue: crate::queue::QueueArgs,
}

/// The `relay.toml` file: the same keys as the flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`ServeArgs::domain`].
    pub domain: Option<String>,
    /// See [`ServeArgs::http_addr`].
    pub http_addr: Option<Listen>,
    /// See [`ServeArgs::https_addr`].
    pub https_addr: Option<Listen>,
    /// See [`ServeArgs::tunnel_addr`].
    pub tunnel_addr: Option<Listen>,
    /// See [`ServeArgs::admin_addr`].
    pub admin_addr: Option<Listen>,
    /// See [`ServeArgs::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`ServeArgs::tls_cert`].
    pub tls_cert: Option<PathBuf>,
    /// See [`ServeArgs::tls_key`].
    pub tls_key: Option<PathBuf>,
    /// See [`ServeArgs::public_port`].
    pub public_port: Option<u16>,
    /// See [`ServeArgs::target_timeout`].
    #[serde(default, deserialize_with = "duration_de::opt")]
    pub target_timeout: Option<Duration>,
    /// See [`ServeArgs::header_timeout`].
    #[serde(default, deserialize_with = "duration_de::opt")]
    pub header_timeout: Option<Duration>,
    /// See [`ServeArgs::max_header_bytes`].
    pub max_header_bytes: Option<usize>,
    /// See [`ServeArgs::max_body_bytes`].
    pub max_body_bytes: Option<u64>,
    /// See [`ServeArgs::trusted_proxies`].
    pub trusted_proxies: Option<Vec<IpNet>>,
    /// See [`ServeArgs::idle_timeout`].
    #[serde(default, deserialize_with = "duration_de::opt")]
    pub idle_timeout: Option<Duration>,
    /// See [`ServeArgs::threads`].
    pub threads: Option<usize>,
    /// The `[queue]` table: see [`crate::queue::QueueArgs`].
    pub queue: Option<crate::queue::QueueFile>,
}

impl FileConfig {
    /// Reads and parses a config file; errors name the file, the key and what was
    /// expected.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim()))
    }
}

/// The resolved relay configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Tunnels are `NAME.domain`.
    pub domain: String,
    /// Public HTTP listener.
    pub http_addr: Option<SocketAddr>,
    /// Public HTTPS listener.
    pub https_addr: Option<SocketAddr>,
    /// QUIC listener.
    pub tunnel_addr: Option<SocketAddr>,
    /// Admin listener.
    pub admin_addr: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Operator certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// Operator key.
    pub tls_key: Option<PathBuf>,
    /// Port in public URLs.
    pub public_port: Option<u16>,
    /// Response-head deadline.
    pub target_timeout: Duration,
    /// Request-head deadline.
    pub header_timeout: Duration,
    /// Request-head size limit.
    pub max_header_bytes: usize,
    /// Request-body size limit.
    pub max_body_bytes: Option<u64>,
    /// Trusted proxy networks.
    pub trusted_proxies: Vec<IpNet>,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Runtime worker threads (`None`: one per core).
    pub threads: Option<usize>,
    /// Durable queue settings.
    pub queue: crate::queue::QueueConfig,
}

/// The default data dir: `$XDG_DATA_HOME/porthole-relay`, else
/// `~/.local/share/porthole-relay`, else `./porthole-relay-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("porthole-relay");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/porthole-relay");
    }
    PathBuf::from("porthole-relay-data")
}

impl RelayConfig {
    /// Defaults for a relay serving `domain` with everything in `data_dir`, all
    /// listeners off (tests and local mode choose their own).
    pub fn new(domain: &str, data_dir: PathBuf) -> Self {
        Self {
            domain: domain.to_owned(),
            http_addr: None,
            https_addr: None,
            tunnel_addr: None,
            admin_addr: None,
            data_dir,
            tls_cert: None,
            tls_key: None,
            public_port: None,
            target_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_body_bytes: None,
            trusted_proxies: Vec::new(),
            idle_timeout: Duration::from_secs(3),
            threads: None,
            queue: crate::queue::QueueConfig::default(),
        }
    }

    /// Resolves flags over the file (if any) over defaults.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let domain = args
            .domain
            .clone()
            .or(file.domain)
            .unwrap_or_else(|| "localhost".into())
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if domain.is_empty() || domain.contains([':', '/', ' ']) {
            anyhow::bail!("--domain must be a DNS name like tunnel.example.com, got {domain:?}");
        }
        let pick = |flag: Option<Listen>, key: Option<Listen>, default: Option<&str>| {
            flag.or(key)
                .map(|l| l.0)
                .unwrap_or_else(|| default.map(|d| d.parse().expect("default address parses")))
        };
        let mut cfg = Self::new(
            &domain,
            args.data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(default_data_dir),
        );
        cfg.http_addr = pick(args.http_addr, file.http_addr, Some("0.0.0.0:8080"));
        cfg.https_addr = pick(args.https_addr, file.https_addr, None);
        cfg.tunnel_addr = pick(args.tunnel_addr, file.tunnel_addr, Some("0.0.0.0:4443"));
        cfg.admin_addr = pick(args.admin_addr, file.admin_addr, Some("127.0.0.1:9090"));
        cfg.tls_cert = args.tls_cert.clone().or(file.tls_cert);
        cfg.tls_key = args.tls_key.clone().or(file.tls_key);
        cfg.public_port = args.public_port.or(file.public_port);
        if let Some(t) = args.target_timeout.or(file.target_timeout) {
            cfg.target_timeout = t;
        }
        if let Some(t) = args.header_timeout.or(file.header_timeout) {
            cfg.header_timeout = t;
        }
        if let Some(n) = args.max_header_bytes.or(file.max_header_bytes) {
            cfg.max_header_bytes = n.max(8192);
        }
        cfg.max_body_bytes = args.max_body_bytes.or(file.max_body_bytes);
        cfg.trusted_proxies = args
            .trusted_proxies
            .clone()
            .or(file.trusted_proxies)
            .unwrap_or_default();
        if let Some(t) = args.idle_timeout.or(file.idle_timeout) {
            cfg.idle_timeout = t;
        }
        cfg.threads = args.threads.or(file.threads).filter(|n| *n > 0);
        cfg.queue = crate::queue::QueueConfig::resolve(&args.queue, file.queue)?;
        if cfg.tunnel_addr.is_none() {
            anyhow::bail!("--tunnel-addr cannot be off: clients connect there");
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_config_in_deploy_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/relay.toml");
        let file = FileConfig::load(&path).expect("deploy/relay.toml parses");
        assert!(file.domain.is_some());
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let cfg = RelayConfig::resolve(&args).unwrap();
        assert_eq!(cfg.tunnel_addr, Some("0.0.0.0:4443".parse().unwrap()));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(&p, "domian = \"x.com\"\n").unwrap();
        let err = FileConfig::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("domian") && err.contains("relay.toml"),
            "{err}"
        );

        std::fs::write(&p, "http_addr = \"nope\"\n").unwrap();
        let err = FileConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("HOST:PORT"), "{err}");

        std::fs::write(&p, "target_timeout = \"soon\"\n").unwrap();
        let err = FileConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("duration"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(&p, "domain = \"file.example\"\nhttp_addr = \"off\"\n").unwrap();
        let args = ServeArgs {
            config: Some(p),
            domain: Some("Flag.Example.".into()),
            ..Default::default()
        };
        let cfg = RelayConfig::resolve(&args).unwrap();
        assert_eq!(cfg.domain, "flag.example");
        assert_eq!(cfg.http_addr, None);
    }
}
