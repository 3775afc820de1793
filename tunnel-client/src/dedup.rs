//! The set of queued exchanges this machine already handed to its target, so a
//! redelivery (the relay did not hear the answer: a crash, a lost connection) is
//! answered with the recorded status without calling the app again.
//!
//! Keys are the relay's `x-porthole-queue-id` values (`STORE_ID-QUEUE_ID`, unique
//! across relays and restarts). The set is bounded (the newest [`CAPACITY`] keys) and
//! kept in an append-only file in the data dir, one `KEY STATUS` line per delivery:
//! appending a line is one `write`, which survives the client being killed, and the
//! file is compacted when it is opened.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;

/// Keys remembered. A duplicate can only come from the short window between the
/// target answering and the relay recording the delivery, so the newest ten thousand
/// cover any redelivery by far, for ~1 MiB of memory.
pub const CAPACITY: usize = 10_000;

/// The file name in the data dir.
pub const FILE: &str = "delivered.log";

/// Delivered queue ids and the status the target answered.
#[derive(Debug)]
pub struct Dedup {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    map: HashMap<String, u16>,
    order: VecDeque<String>,
    file: Option<std::fs::File>,
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Dedup {
    /// Opens (creating) the set at `path`, compacting it when it has grown past twice
    /// its capacity.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut map = HashMap::new();
        let mut order = VecDeque::new();
        let mut lines = 0usize;
        for line in text.lines() {
            lines += 1;
            // A torn last line (killed mid-write) is skipped, never misread.
            let Some((k, s)) = line.split_once(' ') else {
                continue;
            };
            let (Ok(status), true) = (s.parse::<u16>(), valid_key(k)) else {
                continue;
            };
            if map.insert(k.to_owned(), status).is_none() {
                order.push_back(k.to_owned());
            }
            while order.len() > CAPACITY {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        if lines > 2 * CAPACITY {
            let tmp = path.with_extension("tmp");
            let mut out = String::new();
            for k in &order {
                out.push_str(&format!("{k} {}\n", map[k]));
            }
            std::fs::write(&tmp, out).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                map,
                order,
                file: Some(file),
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The status recorded for `key`, if it was delivered before.
    pub fn seen(&self, key: &str) -> Option<u16> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.map.get(key).copied()
    }

    /// Records that `key` was delivered and the target answered `status`.
    pub fn record(&self, key: &str, status: u16) {
        if !valid_key(key) {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.map.insert(key.to_owned(), status).is_none() {
            inner.order.push_back(key.to_owned());
        }
        while inner.order.len() > CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.map.remove(&old);
            }
        }
        let line = format!("{key} {status}\n");
        if let Some(f) = inner.file.as_mut() {
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::warn!(
                    "recording a delivered webhook in {}: {e}",
                    self.path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_across_opens_and_skips_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE);
        let d = Dedup::open(&p).unwrap();
        assert_eq!(d.seen("ab12-1"), None);
        d.record("ab12-1", 200);
        d.record("ab12-2", 404);
        d.record("bad key\n", 200);
        drop(d);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"ab12-3 2").unwrap();
        drop(f);
        let d = Dedup::open(&p).unwrap();
        assert_eq!(d.seen("ab12-1"), Some(200));
        assert_eq!(d.seen("ab12-2"), Some(404));
        // "ab12-3 2" parses as status 2; keys are exact, statuses are informative.
        assert_eq!(d.seen("bad key\n"), None);
    }
}
