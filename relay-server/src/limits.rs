//! Per-token limits (tunnels, requests per second, bandwidth) and throttling of failed
//! authentication per source address. Pure bookkeeping: callers pass the clock in, so
//! every rule is tested without sleeping; ingress and session turn the answers into a
//! 429 with `Retry-After` or a `LimitExceeded`/`Throttled` refusal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Limits for one token; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Tunnels the token may hold at once, across its sessions.
    pub tunnels: Option<u32>,
    /// Visitor requests per second to the token's tunnels (bursts up to one second's
    /// worth).
    pub requests_per_second: Option<f64>,
    /// Bytes per second through the token's tunnels, both directions; checked when a
    /// request arrives, charged as bodies flow.
    pub bandwidth: Option<u64>,
}

impl Limits {
    /// `self`, with unset fields taken from `defaults`.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            tunnels: self.tunnels.or(defaults.tunnels),
            requests_per_second: self.requests_per_second.or(defaults.requests_per_second),
            bandwidth: self.bandwidth.or(defaults.bandwidth),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Over {
    /// Too many requests per second.
    Rate(Duration),
    /// Too many bytes per second.
    Bandwidth(Duration),
}

/// A token bucket: `rate` per second, holding at most `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * rate).min(burst);
        self.at = now;
    }

    /// Time until `need` is available.
    fn wait_for(&self, need: f64, rate: f64) -> Duration {
        if self.level >= need || rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(((need - self.level) / rate).min(3600.0))
    }
}

#[derive(Debug, Default)]
struct TokenState {
    requests: Option<Bucket>,
    bytes: Option<Bucket>,
}

/// The request-rate and bandwidth state of every token.
#[derive(Debug, Default)]
pub struct Meter {
    tokens: Mutex<HashMap<String, TokenState>>,
}

impl Meter {
    /// Admits one request for `token` under `limits` at `now`, or says how long to wait.
    pub fn admit(&self, token: &str, limits: &Limits, now: Instant) -> Result<(), Over> {
        if limits.bandwidth.is_none() && limits.requests_per_second.is_none() {
            // The common case: no lock, no allocation.
            return Ok(());
        }
        let mut map = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let st = map.entry(token.to_owned()).or_default();
        if let Some(bw) = limits.bandwidth {
            let rate = bw as f64;
            let b = st.bytes.get_or_insert(Bucket {
                level: rate,
                at: now,
            });
            b.refill(now, rate, rate);
            // A debt (negative level) from earlier transfers must be paid back first.
            if b.level < 0.0 {
                return Err(Over::Bandwidth(
                    b.wait_for(0.0, rate).max(Duration::from_secs(1)),
                ));
            }
        }
        if let Some(rps) = limits.requests_per_second {
            let burst = rps.max(1.0);
            let b = st.requests.get_or_insert(Bucket {
                level: burst,
                at: now,
            });
            b.refill(now, rps, burst);
            if b.level < 1.0 {
                return Err(Over::Rate(b.wait_for(1.0, rps).max(Duration::from_secs(1))));
            }
            b.level -= 1.0;
        }
        Ok(())
    }

    /// Charges `bytes` carried for `token` against its bandwidth.
    pub fn charge(&self, token: &str, limits: &Limits, bytes: u64, now: Instant) {
        let Some(bw) = limits.bandwidth else { return };
        let mut map = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let st = map.entry(token.to_owned()).or_default();
        let rate = bw as f64;
        let b = st.bytes.get_or_insert(Bucket {
            level: rate,
            at: now,
        });
        b.refill(now, rate, rate);
        b.level -= bytes as f64;
    }
}

/// Failed hellos per source address in a sliding minute.
#[derive(Debug)]
pub struct AuthThrottle {
    per_minute: u32,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl AuthThrottle {
    /// Allows `per_minute` failures per address (0 disables throttling).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn prune(list: &mut Vec<Instant>, now: Instant) {
        list.retain(|t| now.saturating_duration_since(*t) < Duration::from_secs(60));
    }

    /// Whether `ip` must wait before trying again, and for how long.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.per_minute == 0 {
            return None;
        }
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(&ip)?;
        Self::prune(list, now);
        if list.len() >= self.per_minute as usize {
            let oldest = list.first().copied().unwrap_or(now);
            return Some(Duration::from_secs(60).saturating_sub(now - oldest));
        }
        None
    }

    /// Records a failed hello from `ip`.
    pub fn fail(&self, ip: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the table: forget addresses with nothing in the last minute.
        if map.len() > 10_000 {
            map.retain(|_, l| {
                Self::prune(l, now);
                !l.is_empty()
            });
        }
        let list = map.entry(ip).or_default();
        Self::prune(list, now);
        list.push(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_then_says_when() {
        let m = Meter::default();
        let l = Limits {
            requests_per_second: Some(2.0),
            ..Default::default()
        };
        let t0 = Instant::now();
        assert!(m.admit("a", &l, t0).is_ok());
        assert!(m.admit("a", &l, t0).is_ok());
        assert!(matches!(m.admit("a", &l, t0), Err(Over::Rate(_))));
        assert!(m.admit("b", &l, t0).is_ok(), "tokens are independent");
        assert!(m.admit("a", &l, t0 + Duration::from_millis(600)).is_ok());
    }

    #[test]
    fn bandwidth_debt_blocks_until_paid() {
        let m = Meter::default();
        let l = Limits {
            bandwidth: Some(1000),
            ..Default::default()
        };
        let t0 = Instant::now();
        assert!(m.admit("a", &l, t0).is_ok());
        m.charge("a", &l, 3000, t0);
        assert!(matches!(m.admit("a", &l, t0), Err(Over::Bandwidth(_))));
        assert!(m.admit("a", &l, t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn failed_auth_is_throttled_per_address_for_a_minute() {
        let th = AuthThrottle::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(th.blocked(a, t0).is_none());
            th.fail(a, t0);
        }
        assert!(th.blocked(a, t0).is_some());
        assert!(th.blocked(b, t0).is_none());
        assert!(th.blocked(a, t0 + Duration::from_secs(61)).is_none());
    }

    #[test]
    fn per_token_limits_fall_back_to_defaults() {
        let d = Limits {
            tunnels: Some(5),
            requests_per_second: Some(10.0),
            bandwidth: None,
        };
        let t = Limits {
            tunnels: Some(1),
            ..Default::default()
        };
        assert_eq!(t.or(d).tunnels, Some(1));
        assert_eq!(t.or(d).requests_per_second, Some(10.0));
    }
}
