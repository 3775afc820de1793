//! `porthole.toml`: the relay connection and any number of tunnels (target, name,
//! signature verification, edge policy), for `porthole start [NAME…]`; and the
//! per-tunnel settings `porthole http` builds from its flags, so both paths produce
//! the same [`TunnelPlan`].
//!
//! Unknown keys and bad values are refused with the file, the key and what was
//! expected. Secrets may come from the environment (`token_env`, `verify_env`,
//! `basic_auth_env`) so the file can be shared; none is ever printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use ipnet::IpNet;
use relay_server::policy::{BasicAuthUser, EdgePolicy};
use serde::Deserialize;
use shared_proto::Secret;
use webhook_verify::Verifier;

use crate::signatures::TunnelRules;

/// The default config file: `$XDG_CONFIG_HOME/porthole/porthole.toml`, else
/// `~/.config/porthole/porthole.toml`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("porthole/porthole.toml"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".config/porthole/porthole.toml"))
}

/// A secret read from the file; `Debug` prints `MASKED`.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct FileSecret(Secret);

impl From<String> for FileSecret {
    fn from(s: String) -> Self {
        Self(Secret::new(s))
    }
}

impl std::fmt::Debug for FileSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MASKED")
    }
}

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The relay's tunnel address, `HOST:PORT`.
    pub relay: Option<String>,
    /// Client token (prefer `token_env`).
    pub token: Option<FileSecret>,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// Trust the relay by this pin.
    pub relay_pin: Option<String>,
    /// Trust the relay by this CA file.
    pub relay_ca: Option<PathBuf>,
    /// Inspector address, or `off`.
    pub inspect: Option<String>,
    /// Tunnels by key; `porthole start KEY…` picks some.
    #[serde(default)]
    pub tunnels: BTreeMap<String, TunnelFile>,
}

/// One `[tunnels.KEY]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelFile {
    /// `PORT`, `HOST:PORT` or `http://HOST:PORT` (required).
    pub target: Option<String>,
    /// Public name to request; defaults to the table's key.
    pub name: Option<String>,
    /// Signature specs, `provider:secret`.
    #[serde(default)]
    pub verify: Vec<FileSecret>,
    /// Environment variables each holding one `provider:secret` spec.
    #[serde(default)]
    pub verify_env: Vec<String>,
    /// Refuse requests that fail verification (401) before the target sees them.
    #[serde(default)]
    pub verify_enforce: bool,
    /// Set the Host header to the target's `HOST:PORT` (done by the client).
    #[serde(default)]
    pub rewrite_host: bool,
    /// Edge policy enforced by the relay.
    #[serde(default)]
    pub policy: PolicyFile,
}

/// A `[tunnels.KEY.policy]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// `user:password` entries (prefer `basic_auth_env`).
    #[serde(default)]
    pub basic_auth: Vec<FileSecret>,
    /// Environment variables each holding `user:password`.
    #[serde(default)]
    pub basic_auth_env: Vec<String>,
    /// Allowed visitor networks (CIDR or single address).
    #[serde(default, deserialize_with = "cidrs")]
    pub allow_ips: Vec<IpNet>,
    /// Refused visitor networks.
    #[serde(default, deserialize_with = "cidrs")]
    pub deny_ips: Vec<IpNet>,
    /// Headers set on requests, `{ "X-Env" = "dev" }`.
    #[serde(default)]
    pub request_headers_add: BTreeMap<String, String>,
    /// Headers removed from requests.
    #[serde(default)]
    pub request_headers_remove: Vec<String>,
    /// Headers set on responses.
    #[serde(default)]
    pub response_headers_add: BTreeMap<String, String>,
    /// Headers removed from responses.
    #[serde(default)]
    pub response_headers_remove: Vec<String>,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: Option<u64>,
}

/// Parses a network, `10.0.0.0/8` or `2001:db8::/32`, or one address (`/32`, `/128`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("expected a network like 10.0.0.0/8 or an address, got {s:?}"))
}

fn cidrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_cidr(s).map_err(serde::de::Error::custom))
        .collect()
}

/// One tunnel ready to open: what the session binds and what the forwarder does.
#[derive(Debug, Clone)]
pub struct TunnelPlan {
    /// Requested public name.
    pub name: Option<String>,
    /// Target as written; `None` means the built-in target.
    pub target: Option<String>,
    /// Bind options (the edge policy).
    pub options: Vec<shared_proto::TunnelOption>,
    /// Client-side rules.
    pub rules: Arc<TunnelRules>,
}

impl ClientFile {
    /// Reads and parses `path`; errors name the file, the key and what was expected.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> anyhow::Result<Self> {
        let parsed: Self = toml::from_str(text).map_err(|e| toml_error(text, file, &e))?;
        // Check every tunnel now, so a mistake in one that is not started still shows.
        for (key, t) in &parsed.tunnels {
            t.plan(file, key)?;
        }
        Ok(parsed)
    }

    /// The token: the file's `token`, else the variable `token_env` names.
    pub fn token(&self, file: &str) -> anyhow::Result<Option<Secret>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.0.clone()));
        }
        match &self.token_env {
            None => Ok(None),
            Some(var) => std::env::var(var).map(|v| Some(Secret::new(v))).map_err(|_| {
                anyhow!("{file}: token_env: expected environment variable {var} to hold the token, but it is not set")
            }),
        }
    }

    /// The plans for `names` (table keys), or every tunnel when `names` is empty.
    pub fn plans(&self, file: &str, names: &[String]) -> anyhow::Result<Vec<TunnelPlan>> {
        if self.tunnels.is_empty() {
            bail!("{file}: no [tunnels.NAME] table: add one with at least target = \"PORT\"");
        }
        if names.is_empty() {
            return self.tunnels.iter().map(|(k, t)| t.plan(file, k)).collect();
        }
        names
            .iter()
            .map(|n| {
                let t = self.tunnels.get(n).ok_or_else(|| {
                    anyhow!(
                        "{file}: no tunnel named {n:?} (the file has: {})",
                        self.tunnels.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })?;
                t.plan(file, n)
            })
            .collect()
    }
}

/// A parse error naming the file, the line, the key (`tunnels.pay.policy.allow_ips`)
/// and what was expected, without echoing the line: it may hold a secret.
fn toml_error(text: &str, file: &str, e: &toml::de::Error) -> anyhow::Error {
    let Some(span) = e.span() else {
        return anyhow!("{file}: {}", e.message());
    };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let path = match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k,
        (Some(t), None) => t,
        (None, None) => String::new(),
    };
    anyhow!("{file}: line {line_no}: {path}: {}", e.message().trim())
}

impl TunnelFile {
    fn plan(&self, file: &str, key: &str) -> anyhow::Result<TunnelPlan> {
        let at = |field: &str| format!("{file}: tunnels.{key}.{field}");
        let target = self.target.clone().ok_or_else(|| {
            anyhow!(
                "{}: missing; expected PORT, HOST:PORT or http://HOST:PORT",
                at("target")
            )
        })?;
        crate::forwarder::Target::parse(&target).map_err(|e| anyhow!("{}: {e}", at("target")))?;
        let name = self.name.clone().unwrap_or_else(|| key.to_owned());
        shared_proto::TunnelName::parse(&name)
            .map_err(|e| anyhow!("{}: expected a tunnel name (a DNS label): {e}", at("name")))?;
        let mut specs: Vec<(String, Secret)> = self
            .verify
            .iter()
            .enumerate()
            .map(|(i, s)| (at(&format!("verify[{i}]")), s.0.clone()))
            .collect();
        for (i, var) in self.verify_env.iter().enumerate() {
            let v = std::env::var(var).map_err(|_| {
                anyhow!(
                    "{}: expected environment variable {var} to hold PROVIDER:SECRET, but it is not set",
                    at(&format!("verify_env[{i}]"))
                )
            })?;
            specs.push((at(&format!("verify_env[{i}]")), Secret::new(v)));
        }
        let mut users: Vec<(String, Secret)> = self
            .policy
            .basic_auth
            .iter()
            .enumerate()
            .map(|(i, s)| (at(&format!("policy.basic_auth[{i}]")), s.0.clone()))
            .collect();
        for (i, var) in self.policy.basic_auth_env.iter().enumerate() {
            let v = std::env::var(var).map_err(|_| {
                anyhow!(
                    "{}: expected environment variable {var} to hold USER:PASSWORD, but it is not set",
                    at(&format!("policy.basic_auth_env[{i}]"))
                )
            })?;
            users.push((at(&format!("policy.basic_auth_env[{i}]")), Secret::new(v)));
        }
        let settings = TunnelSettings {
            name: Some(name),
            target: Some(target),
            verify: specs,
            verify_enforce: self.verify_enforce,
            rewrite_host: self.rewrite_host,
            basic_auth: users,
            allow_ips: self.policy.allow_ips.clone(),
            deny_ips: self.policy.deny_ips.clone(),
            request_headers_add: self
                .policy
                .request_headers_add
                .iter()
                .map(|(n, v)| (at("policy.request_headers_add"), format!("{n}: {v}")))
                .collect(),
            request_headers_remove: self.policy.request_headers_remove.clone(),
            response_headers_add: self
                .policy
                .response_headers_add
                .iter()
                .map(|(n, v)| (at("policy.response_headers_add"), format!("{n}: {v}")))
                .collect(),
            response_headers_remove: self.policy.response_headers_remove.clone(),
            max_body_bytes: self.policy.max_body_bytes,
        };
        settings.plan(&at("policy"))
    }
}

/// One tunnel's settings from flags or a file; each secret or header carries where it
/// came from (`--verify`, `porthole.toml: tunnels.pay.verify[0]`) for errors.
#[derive(Debug, Clone, Default)]
pub struct TunnelSettings {
    /// Requested name.
    pub name: Option<String>,
    /// Target as written.
    pub target: Option<String>,
    /// `(origin, provider:secret)`.
    pub verify: Vec<(String, Secret)>,
    /// Refuse failing requests in the client.
    pub verify_enforce: bool,
    /// Host rewrite in the client.
    pub rewrite_host: bool,
    /// `(origin, user:password)`.
    pub basic_auth: Vec<(String, Secret)>,
    /// Allowed networks.
    pub allow_ips: Vec<IpNet>,
    /// Refused networks.
    pub deny_ips: Vec<IpNet>,
    /// `(origin, "Name: value")`.
    pub request_headers_add: Vec<(String, String)>,
    /// Header names.
    pub request_headers_remove: Vec<String>,
    /// `(origin, "Name: value")`.
    pub response_headers_add: Vec<(String, String)>,
    /// Header names.
    pub response_headers_remove: Vec<String>,
    /// Body limit.
    pub max_body_bytes: Option<u64>,
}

impl TunnelSettings {
    /// Checks everything and builds the plan; `policy_origin` names the policy in
    /// errors about it as a whole.
    pub fn plan(&self, policy_origin: &str) -> anyhow::Result<TunnelPlan> {
        let verifiers = self
            .verify
            .iter()
            .map(|(origin, spec)| {
                Verifier::from_spec(spec.expose())
                    .map_err(|e| anyhow!("{origin}: expected PROVIDER:SECRET: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.verify_enforce && verifiers.is_empty() {
            bail!("{policy_origin}: verify_enforce needs at least one verify spec");
        }
        let basic_auth = self
            .basic_auth
            .iter()
            .map(|(origin, s)| {
                let (u, p) = s
                    .expose()
                    .split_once(':')
                    .filter(|(u, _)| !u.is_empty())
                    .ok_or_else(|| anyhow!("{origin}: expected USER:PASSWORD"))?;
                Ok(BasicAuthUser::new(u, p))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .map(|(origin, h)| {
                    let (n, v) = h
                        .split_once(':')
                        .ok_or_else(|| anyhow!("{origin}: expected \"Name: value\", got {h:?}"))?;
                    Ok((n.trim().to_owned(), v.trim().to_owned()))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let policy = EdgePolicy {
            basic_auth,
            allow_ips: self.allow_ips.clone(),
            deny_ips: self.deny_ips.clone(),
            request_headers_add: pairs(&self.request_headers_add)?,
            request_headers_remove: self.request_headers_remove.clone(),
            response_headers_add: pairs(&self.response_headers_add)?,
            response_headers_remove: self.response_headers_remove.clone(),
            max_body_bytes: self.max_body_bytes,
        };
        policy
            .compile()
            .map_err(|e| anyhow!("{policy_origin}: {e}"))?;
        let options = if policy.is_empty() {
            Vec::new()
        } else {
            vec![policy.to_option()]
        };
        Ok(TunnelPlan {
            name: self.name.clone(),
            target: self.target.clone(),
            options,
            rules: Arc::new(TunnelRules {
                verifiers,
                enforce: self.verify_enforce,
                rewrite_host: self.rewrite_host,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
    }

    #[test]
    fn valid_fixtures_parse() {
        let mut seen = 0;
        for entry in std::fs::read_dir(fixtures().join("valid")).unwrap() {
            let path = entry.unwrap().path();
            let file = ClientFile::load(&path)
                .unwrap_or_else(|e| panic!("{} should parse: {e:#}", path.display()));
            let plans = file.plans("f", &[]).unwrap();
            assert!(!plans.is_empty(), "{}", path.display());
            seen += 1;
        }
        assert!(seen >= 2);
        let full = ClientFile::load(&fixtures().join("valid/full.toml")).unwrap();
        let plans = full.plans("f", &["pay".into()]).unwrap();
        assert_eq!(plans.len(), 1);
        let pay = &plans[0];
        assert_eq!(pay.name.as_deref(), Some("pay-hooks"));
        assert_eq!(pay.rules.verifiers.len(), 2);
        assert!(pay.rules.enforce && pay.rules.rewrite_host);
        assert_eq!(pay.options.len(), 1);
        assert!(pay.options[0].is_critical());
        let policy = EdgePolicy::from_option_value(&pay.options[0].value).unwrap();
        assert_eq!(policy.max_body_bytes, Some(1_048_576));
        assert_eq!(policy.basic_auth.len(), 1);
        assert_eq!(
            policy.request_headers_add,
            vec![("X-Env".to_owned(), "dev".to_owned())]
        );
        // The debug form never shows a secret.
        let shown = format!("{full:?}");
        assert!(!shown.contains("whsec_"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    /// Each invalid fixture starts with `# expect: TEXT…`: every TEXT must be in the
    /// error, along with the file's name.
    #[test]
    fn invalid_fixtures_are_refused_with_the_file_the_key_and_the_expectation() {
        let mut seen = 0;
        for entry in std::fs::read_dir(fixtures().join("invalid")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let expect: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("# expect: "))
                .collect();
            assert!(
                !expect.is_empty(),
                "{} has no # expect line",
                path.display()
            );
            let err = match ClientFile::load(&path) {
                Ok(f) => f
                    .plans(&path.display().to_string(), &[])
                    .and_then(|_| f.token(&path.display().to_string()).map(|_| ()))
                    .map(|_| "parsed".to_owned())
                    .unwrap_or_else(|e| format!("{e:#}")),
                Err(e) => format!("{e:#}"),
            };
            let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(err.contains(&file_name), "{file_name}: {err}");
            for e in expect {
                assert!(err.contains(e), "{file_name}: expected {e:?} in: {err}");
            }
            assert!(!err.contains("whsec_"), "{file_name} leaks a secret: {err}");
            seen += 1;
        }
        assert!(seen >= 5);
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let f = ClientFile::parse("[tunnels.a]\ntarget = \"3000\"\n", "p.toml").unwrap();
        let err = f.plans("p.toml", &["b".into()]).unwrap_err().to_string();
        assert!(err.contains("\"b\"") && err.contains("a"), "{err}");
    }
}
