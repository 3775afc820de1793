//! Relay configuration: `relay.toml` keys mirror the `serve` flags one to one. Flags
//! override the file, the file overrides defaults. Unknown keys are refused with their
//! name, so a typo never silently falls back to a default.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use serde::Deserialize;

use crate::acme::AcmeConfig;
use crate::limits::Limits;

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
    /// Public TCP ports for TCP tunnels, LOW-HIGH (like 20000-20100) [default: none,
    /// TCP tunnels off].
    #[arg(long)]
    pub tcp_ports: Option<crate::tcp::PortRange>,
    /// Worker threads; more than 1 runs a multi-threaded runtime [default: 1].
    #[arg(long)]
    pub threads: Option<usize>,
    /// ACME directory URL: obtain and renew the HTTPS certificate automatically
    /// (e.g. https://acme-v02.api.letsencrypt.org/directory).
    // The help text shows the URL as it is.
    #[allow(rustdoc::bare_urls)]
    #[arg(long)]
    pub acme_directory: Option<String>,
    /// Contact e-mail for the ACME account.
    #[arg(long)]
    pub acme_email: Option<String>,
    /// The relay's own names, validated by TLS-ALPN-01 on the HTTPS port [default: the
    /// domain].
    #[arg(long, value_delimiter = ',')]
    pub acme_names: Option<Vec<String>>,
    /// Command run as `HOOK present|cleanup DOMAIN VALUE` to publish the DNS-01 TXT
    /// record `_acme-challenge.DOMAIN` for the wildcard `*.DOMAIN`.
    #[arg(long)]
    pub acme_dns_hook: Option<PathBuf>,
    /// Extra CA (PEM) trusted for the ACME directory's own HTTPS (private or test CAs).
    #[arg(long)]
    pub acme_ca: Option<PathBuf>,
    /// Renew when the certificate has less than this left [default: 30d].
    #[arg(long, value_parser = parse_duration)]
    pub acme_renew_before: Option<Duration>,
    /// Default per-token limit: tunnels held at once [default: unlimited].
    #[arg(long)]
    pub max_tunnels_per_token: Option<u32>,
    /// Default per-token limit: visitor requests per second; over it gets 429
    /// [default: unlimited].
    #[arg(long)]
    pub max_requests_per_second: Option<f64>,
    /// Default per-token limit: bytes per second through its tunnels; over it gets 429
    /// [default: unlimited].
    #[arg(long)]
    pub max_bandwidth: Option<u64>,
    /// Failed client hellos allowed per source address per minute before it is
    /// throttled; 0 disables [default: 10].
    #[arg(long)]
    pub auth_failures_per_minute: Option<u32>,
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
    /// See [`ServeArgs::tcp_ports`].
    pub tcp_ports: Option<crate::tcp::PortRange>,
    /// See [`ServeArgs::threads`].
    pub threads: Option<usize>,
    /// See [`ServeArgs::acme_directory`].
    pub acme_directory: Option<String>,
    /// See [`ServeArgs::acme_email`].
    pub acme_email: Option<String>,
    /// See [`ServeArgs::acme_names`].
    pub acme_names: Option<Vec<String>>,
    /// See [`ServeArgs::acme_dns_hook`].
    pub acme_dns_hook: Option<PathBuf>,
    /// See [`ServeArgs::acme_ca`].
    pub acme_ca: Option<PathBuf>,
    /// See [`ServeArgs::acme_renew_before`].
    #[serde(default, deserialize_with = "duration_de::opt")]
    pub acme_renew_before: Option<Duration>,
    /// See [`ServeArgs::max_tunnels_per_token`].
    pub max_tunnels_per_token: Option<u32>,
    /// See [`ServeArgs::max_requests_per_second`].
    pub max_requests_per_second: Option<f64>,
    /// See [`ServeArgs::max_bandwidth`].
    pub max_bandwidth: Option<u64>,
    /// See [`ServeArgs::auth_failures_per_minute`].
    pub auth_failures_per_minute: Option<u32>,
    /// File only: limits for named tokens (`[token_limits.NAME]` with `tunnels`,
    /// `requests_per_second`, `bandwidth`); unset fields fall back to the `max_*`
    /// defaults.
    pub token_limits: Option<HashMap<String, Limits>>,
    /// Operator rules per tunnel name (`[names.pay-hooks]`); file only, no flag.
    #[serde(default)]
    pub names: BTreeMap<String, NameRules>,
    /// The `[queue]` table: see [`crate::queue::QueueArgs`].
    pub queue: Option<crate::queue::QueueFile>,
}

/// What the operator enforces for one tunnel name, whoever binds it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameRules {
    /// Webhook signature specs (`stripe:whsec_…`); requests that verify with none of
    /// them get 401 at the relay and never cross the tunnel.
    #[serde(default)]
    pub verify: Vec<String>,
    /// Names of environment variables each holding one such spec, so secrets stay
    /// out of the file.
    #[serde(default)]
    pub verify_env: Vec<String>,
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
    /// Public ports for TCP tunnels (none: TCP tunnels off).
    pub tcp_ports: Option<crate::tcp::PortRange>,
    /// Runtime worker threads (`None`: one).
    pub threads: Option<usize>,
    /// ACME, when a directory is configured.
    pub acme: Option<AcmeConfig>,
    /// Limits for tokens without an entry of their own.
    pub default_limits: Limits,
    /// Limits by token name.
    pub token_limits: HashMap<String, Limits>,
    /// Failed hellos per source address per minute (0: no throttling).
    pub auth_failures_per_minute: u32,
    /// Operator signature rules: tunnel name → verifiers (any one must pass).
    pub verify: HashMap<String, Vec<webhook_verify::Verifier>>,
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
            tcp_ports: None,
            threads: None,
            acme: None,
            default_limits: Limits::default(),
            token_limits: HashMap::new(),
            auth_failures_per_minute: 10,
            verify: HashMap::new(),
            queue: crate::queue::QueueConfig::default(),
        }
    }

    /// The limits that apply to `token`.
    pub fn limits_for(&self, token: &str) -> Limits {
        self.token_limits
            .get(token)
            .copied()
            .unwrap_or_default()
            .or(self.default_limits)
    }

    /// Resolves flags over the file (if any) over defaults.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let file_name = args
            .config
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let verify = resolve_names(&file_name, &file.names)?;
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
        cfg.tcp_ports = args.tcp_ports.or(file.tcp_ports);
        cfg.threads = args.threads.or(file.threads).filter(|n| *n > 0);
        if let Some(directory) = args.acme_directory.clone().or(file.acme_directory) {
            if cfg.https_addr.is_none() {
                anyhow::bail!("--acme-directory needs --https-addr: TLS-ALPN-01 validation and visitors use it");
            }
            if cfg.tls_cert.is_some() {
                anyhow::bail!("--acme-directory and --tls-cert exclude each other: choose one source of certificates");
            }
            cfg.acme = Some(AcmeConfig {
                directory,
                email: args.acme_email.clone().or(file.acme_email),
                names: args
                    .acme_names
                    .clone()
                    .or(file.acme_names)
                    .unwrap_or_else(|| vec![domain.clone()]),
                domain: domain.clone(),
                dns_hook: args.acme_dns_hook.clone().or(file.acme_dns_hook),
                directory_ca: args.acme_ca.clone().or(file.acme_ca),
                renew_before: args
                    .acme_renew_before
                    .or(file.acme_renew_before)
                    .unwrap_or(Duration::from_secs(30 * 86400)),
            });
        }
        cfg.default_limits = Limits {
            tunnels: args.max_tunnels_per_token.or(file.max_tunnels_per_token),
            requests_per_second: args
                .max_requests_per_second
                .or(file.max_requests_per_second),
            bandwidth: args.max_bandwidth.or(file.max_bandwidth),
        };
        cfg.token_limits = file.token_limits.unwrap_or_default();
        let rates = std::iter::once(("max_requests_per_second".to_owned(), cfg.default_limits))
            .chain(
                cfg.token_limits
                    .iter()
                    .map(|(n, l)| (format!("token_limits.{n}.requests_per_second"), *l)),
            );
        for (key, limits) in rates {
            if let Some(rps) = limits.requests_per_second {
                if rps.is_nan() || rps <= 0.0 {
                    anyhow::bail!("{key} must be above 0, got {rps}");
                }
            }
        }
        if let Some(n) = args
            .auth_failures_per_minute
            .or(file.auth_failures_per_minute)
        {
            cfg.auth_failures_per_minute = n;
        }
        cfg.queue = crate::queue::QueueConfig::resolve(&args.queue, file.queue)?;
        if cfg.tunnel_addr.is_none() {
            anyhow::bail!("--tunnel-addr cannot be off: clients connect there");
        }
        cfg.verify = verify;
        Ok(cfg)
    }
}

/// Builds the operator's verifiers; errors name the file, the key and what was
/// expected, never a secret.
fn resolve_names(
    file: &str,
    names: &BTreeMap<String, NameRules>,
) -> anyhow::Result<HashMap<String, Vec<webhook_verify::Verifier>>> {
    let mut out = HashMap::new();
    for (name, rules) in names {
        let tunnel = shared_proto::TunnelName::parse(name).map_err(|e| {
            anyhow::anyhow!("{file}: names.{name}: expected a tunnel name (a DNS label): {e}")
        })?;
        let mut verifiers = Vec::new();
        for (i, spec) in rules.verify.iter().enumerate() {
            verifiers.push(webhook_verify::Verifier::from_spec(spec).map_err(|e| {
                anyhow::anyhow!("{file}: names.{name}.verify[{i}]: expected PROVIDER:SECRET: {e}")
            })?);
        }
        for (i, var) in rules.verify_env.iter().enumerate() {
            let spec = std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "{file}: names.{name}.verify_env[{i}]: environment variable {var} is not set"
                )
            })?;
            verifiers.push(webhook_verify::Verifier::from_spec(&spec).map_err(|e| {
                anyhow::anyhow!(
                    "{file}: names.{name}.verify_env[{i}]: {var} must hold PROVIDER:SECRET: {e}"
                )
            })?);
        }
        if !verifiers.is_empty() {
            out.insert(tunnel.as_str().to_owned(), verifiers);
        }
    }
    Ok(out)
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
        let acme = cfg.acme.as_ref().expect("the sample configures ACME");
        assert_eq!(
            acme.all_names(),
            ["tunnel.example.com", "*.tunnel.example.com"]
        );
        assert_eq!(cfg.limits_for("someone").tunnels, Some(20));
        assert_eq!(cfg.limits_for("ci").tunnels, Some(100));
        assert_eq!(cfg.limits_for("ci").requests_per_second, Some(200.0));
        assert_eq!(cfg.auth_failures_per_minute, 10);
    }

    #[test]
    fn acme_needs_https_and_excludes_certificate_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(&p, "acme_directory = \"https://ca.test/dir\"\n").unwrap();
        let args = ServeArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        let err = RelayConfig::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("--https-addr"), "{err}");
        std::fs::write(
            &p,
            "acme_directory = \"https://ca.test/dir\"\nhttps_addr = \"127.0.0.1:0\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        )
        .unwrap();
        let err = RelayConfig::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("exclude each other"), "{err}");
        std::fs::write(&p, "[token_limits.x]\nrequests_per_second = 0\n").unwrap();
        let err = RelayConfig::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("token_limits.x.requests_per_second"), "{err}");
        std::fs::write(&p, "[token_limits.x]\nrequests = 1\n").unwrap();
        let err = FileConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("requests"), "{err}");
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
    fn operator_verify_rules_resolve_and_errors_hide_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(
            &p,
            "[names.pay-hooks]\nverify = [\"stripe:whsec_abc\"]\nverify_env = [\"PORTHOLE_TEST_NO_SUCH_VAR_4\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        let err = RelayConfig::resolve(&args).unwrap_err().to_string();
        assert!(
            err.contains("names.pay-hooks.verify_env[0]") && err.contains("relay.toml"),
            "{err}"
        );
        std::fs::write(&p, "[names.pay-hooks]\nverify = [\"stripe:whsec_abc\"]\n").unwrap();
        let cfg = RelayConfig::resolve(&args).unwrap();
        assert_eq!(cfg.verify["pay-hooks"].len(), 1);
        std::fs::write(&p, "[names.pay-hooks]\nverify = [\"strype:whsec_abc\"]\n").unwrap();
        let err = RelayConfig::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("names.pay-hooks.verify[0]"), "{err}");
        assert!(!err.contains("whsec_abc"), "{err}");
        std::fs::write(&p, "[names.pay-hooks]\nverfy = []\n").unwrap();
        let err = FileConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("verfy"), "{err}");
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
