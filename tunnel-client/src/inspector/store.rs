//! The history's SQLite file: schema, inserts, eviction, filtered listing and search.
//!
//! Blocking code only: callers run it on the writer thread or `spawn_blocking`. Bodies
//! and header values are stored as BLOBs so they come back byte-exact.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::ExchangeSummary;
use crate::capture::{
    CapturedBody, CapturedRequest, CapturedResponse, Exchange, ExchangeId, Outcome,
};

/// Bumped when the schema changes. Version 1 files are migrated in place (version 2
/// added the `signature` column); unknown versions are recreated.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS exchanges (
    id                 INTEGER PRIMARY KEY,
    replay_of          INTEGER,
    tunnel             TEXT NOT NULL,
    target             TEXT NOT NULL,
    started_us         INTEGER NOT NULL,
    time_to_head_us    INTEGER,
    duration_us        INTEGER NOT NULL,
    visitor            TEXT,
    method             TEXT NOT NULL,
    uri                TEXT NOT NULL,
    req_headers        BLOB NOT NULL,
    req_body           BLOB NOT NULL,
    req_size           INTEGER NOT NULL,
    req_truncated      INTEGER NOT NULL,
    status             INTEGER,
    resp_headers       BLOB,
    resp_body          BLOB,
    resp_size          INTEGER,
    resp_truncated     INTEGER,
    outcome            TEXT NOT NULL,
    reason             TEXT,
    stored_bytes       INTEGER NOT NULL,
    signature          TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

const SUMMARY_COLUMNS: &str = "id, replay_of, tunnel, method, uri, status, duration_us, \
     started_us, outcome, reason, req_size, resp_size, visitor, signature";

const FULL_COLUMNS: &str = "id, replay_of, tunnel, target, started_us, time_to_head_us, \
     duration_us, visitor, method, uri, req_headers, req_body, req_size, req_truncated, \
     status, resp_headers, resp_body, resp_size, resp_truncated, outcome, reason, signature";

/// How much history to keep.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_exchanges: usize,
    pub(crate) max_bytes: u64,
}

/// Which exchanges a listing or export returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exact method, case-insensitive.
    pub method: Option<String>,
    /// Response status.
    pub status: Option<StatusFilter>,
    /// Substring of the path and query, case-insensitive.
    pub path: Option<String>,
    /// Substring of the path, any header line (`name: value`) or either body,
    /// ASCII case-insensitive.
    pub q: Option<String>,
    /// Only exchanges with an id below this (paging).
    pub before: Option<u64>,
    /// At most this many (newest first).
    pub limit: usize,
}

/// A status filter: `200`, `5xx`, or `none` (no response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this status.
    Exact(u16),
    /// A class: `Class(5)` is 500–599.
    Class(u16),
    /// Exchanges without a response.
    None,
}

impl std::str::FromStr for StatusFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("invalid status filter {s:?}: use e.g. 200, 5xx or none");
        if s.eq_ignore_ascii_case("none") {
            return Ok(Self::None);
        }
        let b = s.as_bytes();
        if b.len() == 3 && b[1..].eq_ignore_ascii_case(b"xx") && (b'1'..=b'5').contains(&b[0]) {
            return Ok(Self::Class(u16::from(b[0] - b'0')));
        }
        match s.parse::<u16>() {
            Ok(n) if (100..=999).contains(&n) => Ok(Self::Exact(n)),
            _ => Err(bad()),
        }
    }
}

/// One connection to the history file.
pub(crate) struct Store {
    conn: Connection,
    /// Rows and stored bytes, kept up to date by this (only) writer so that checking
    /// the limits does not scan the table on every batch.
    totals: Option<(u64, u64)>,
}

impl Store {
    /// Opens or creates the file, in WAL mode, with the search functions registered.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // auto_vacuum only takes effect before the first table is created.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        // WAL lets the API read while the writer thread writes.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::debug!(%mode, "history is not in wal mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 1 {
            // Version 1 lacked the signature column; its rows stay readable.
            conn.execute_batch("ALTER TABLE exchanges ADD COLUMN signature TEXT;")?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        } else if version != SCHEMA_VERSION {
            if version != 0 {
                tracing::warn!(version, "history has an unknown schema; starting afresh");
                conn.execute_batch("DROP TABLE IF EXISTS exchanges; DROP TABLE IF EXISTS meta;")?;
            }
            conn.execute_batch(SCHEMA)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        // Sizes sit after the bodies in each row, so reading them from the table walks
        // overflow pages; this covering index lets eviction count and walk sizes alone.
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS exchanges_id_size ON exchanges (id, stored_bytes);",
        )?;
        register_functions(&conn)?;
        Ok(Self { conn, totals: None })
    }

    /// The highest id ever stored (0 when none), surviving clears.
    pub(crate) fn max_id(&self) -> anyhow::Result<u64> {
        let meta: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'max_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let rows: Option<i64> = self
            .conn
            .query_row("SELECT MAX(id) FROM exchanges", [], |r| r.get(0))?;
        Ok(meta.unwrap_or(0).max(rows.unwrap_or(0)).max(0) as u64)
    }

    /// Stores exchanges in one transaction (an existing id is replaced).
    pub(crate) fn insert_all<'a>(
        &mut self,
        exchanges: impl IntoIterator<Item = &'a Exchange>,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        let mut max_id = 0u64;
        let (mut added_rows, mut added_bytes) = (0u64, 0u64);
        {
            let mut insert = tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO exchanges ({FULL_COLUMNS}, stored_bytes) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
                  ?18, ?19, ?20, ?21, ?22, ?23)"
            ))?;
            for ex in exchanges {
                max_id = max_id.max(ex.id.0);
                let req_headers = encode_headers(&ex.request.headers);
                let resp = ex.response.as_ref();
                let resp_headers = resp.map(|r| encode_headers(&r.headers));
                let stored = 256
                    + ex.request.uri.len()
                    + req_headers.len()
                    + ex.request.body.bytes.len()
                    + resp_headers.as_ref().map_or(0, Vec::len)
                    + resp.map_or(0, |r| r.body.bytes.len());
                insert.execute(params![
                    to_i64(ex.id.0),
                    ex.replay_of.map(|r| to_i64(r.0)),
                    ex.tunnel,
                    ex.target,
                    micros_since_epoch(ex.started_at),
                    ex.time_to_head.map(|d| to_i64(d.as_micros() as u64)),
                    to_i64(ex.duration.as_micros() as u64),
                    ex.visitor.map(|v| v.to_string()),
                    ex.request.method,
                    ex.request.uri,
                    req_headers,
                    &ex.request.body.bytes[..],
                    to_i64(ex.request.body.size),
                    ex.request.body.truncated,
                    resp.map(|r| r.status),
                    resp_headers,
                    resp.map(|r| &r.body.bytes[..]),
                    resp.map(|r| to_i64(r.body.size)),
                    resp.map(|r| r.body.truncated),
                    ex.outcome.kind(),
                    ex.outcome.reason(),
                    ex.signature
                        .as_ref()
                        .and_then(|s| serde_json::to_string(s).ok()),
                    stored as i64,
                ])?;
                added_rows += 1;
                added_bytes += stored as u64;
            }
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('max_id', ?1) \
             ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
            [to_i64(max_id)],
        )?;
        tx.commit()?;
        // A replaced id is counted twice: the totals may run high, which only makes
        // eviction (which recounts) come a little early.
        if let Some((rows, bytes)) = &mut self.totals {
            *rows += added_rows;
            *bytes += added_bytes;
        }
        Ok(())
    }

    fn count_totals(&self) -> anyhow::Result<(u64, u64)> {
        let (count, bytes): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(stored_bytes), 0) FROM exchanges INDEXED BY exchanges_id_size",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((count.max(0) as u64, bytes.max(0) as u64))
    }

    /// Deletes the oldest exchanges once a limit is exceeded, down to 90% of it (so
    /// that a full history does not pay for an eviction on every insert); the newest
    /// is always kept.
    pub(crate) fn evict(&mut self, limits: &Limits) -> anyhow::Result<u64> {
        let (count, bytes) = match self.totals {
            Some(t) => t,
            None => {
                let t = self.count_totals()?;
                self.totals = Some(t);
                t
            }
        };
        let max_rows = limits.max_exchanges as u64;
        if count <= max_rows && bytes <= limits.max_bytes {
            return Ok(0);
        }
        let low_rows = max_rows - max_rows / 10;
        let low_bytes = limits.max_bytes - limits.max_bytes / 10;
        let mut bytes = bytes;
        let mut excess = count.saturating_sub(low_rows);
        let over_bytes = bytes > limits.max_bytes;
        let mut cutoff: Option<i64> = None;
        {
            // Walk oldest first, dropping rows until both limits hold.
            let mut stmt = self.conn.prepare(
                "SELECT id, stored_bytes FROM exchanges INDEXED BY exchanges_id_size \
                     ORDER BY id ASC",
            )?;
            let mut rows = stmt.query([])?;
            let mut left = count;
            while left > 1 && (excess > 0 || (over_bytes && bytes > low_bytes)) {
                let Some(row) = rows.next()? else { break };
                let (id, size): (i64, i64) = (row.get(0)?, row.get(1)?);
                cutoff = Some(id);
                bytes = bytes.saturating_sub(size.max(0) as u64);
                excess = excess.saturating_sub(1);
                left -= 1;
            }
        }
        let Some(cutoff) = cutoff else { return Ok(0) };
        let n = self
            .conn
            .execute("DELETE FROM exchanges WHERE id <= ?1", [cutoff])?;
        self.totals = Some(self.count_totals()?);
        // The freed pages are not given back: new exchanges reuse them at once, and the
        // file stays at the size the limits allow (vacuuming here cost the tunnel
        // throughput under load). `clear` does give them back.
        Ok(n as u64)
    }

    /// Deletes everything; answers how many exchanges were deleted.
    pub(crate) fn clear(&mut self) -> anyhow::Result<u64> {
        let n = self.conn.execute("DELETE FROM exchanges", [])?;
        self.totals = Some((0, 0));
        self.reclaim();
        Ok(n as u64)
    }

    /// Gives freed pages back to the file system, best effort.
    fn reclaim(&self) {
        if let Err(err) = self.conn.execute_batch("PRAGMA incremental_vacuum;") {
            tracing::debug!(error = %err, "history vacuum failed");
        }
    }

    /// Whether exchange `id` is stored.
    pub(crate) fn contains(&self, id: ExchangeId) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM exchanges WHERE id = ?1",
                [to_i64(id.0)],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Summaries matching `filter`, newest first.
    pub(crate) fn list(&self, filter: &Filter) -> anyhow::Result<Vec<ExchangeSummary>> {
        let (clause, args) = where_clause(filter);
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM exchanges {clause} ORDER BY id DESC LIMIT {}",
            filter.limit
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), summary_from_row)?;
        rows.collect::<Result<Vec<_>, _>>()
            .context("reading exchange summaries")
    }

    /// Full exchanges matching `filter`, newest first.
    pub(crate) fn exchanges(&self, filter: &Filter) -> anyhow::Result<Vec<Exchange>> {
        let (clause, args) = where_clause(filter);
        let sql = format!(
            "SELECT {FULL_COLUMNS} FROM exchanges {clause} ORDER BY id DESC LIMIT {}",
            filter.limit
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(exchange_from_row(row)?);
        }
        Ok(out)
    }

    /// One exchange in full.
    pub(crate) fn exchange(&self, id: ExchangeId) -> anyhow::Result<Option<Exchange>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {FULL_COLUMNS} FROM exchanges WHERE id = ?1"
        ))?;
        let mut rows = stmt.query([to_i64(id.0)])?;
        match rows.next()? {
            Some(row) => Ok(Some(exchange_from_row(row)?)),
            None => Ok(None),
        }
    }

    /// How many exchanges are stored.
    pub(crate) fn count(&self) -> anyhow::Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM exchanges", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }
}

fn where_clause(filter: &Filter) -> (String, Vec<Value>) {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let arg = |v: Value, args: &mut Vec<Value>| {
        args.push(v);
        format!("?{}", args.len())
    };
    if let Some(method) = &filter.method {
        let p = arg(Value::Text(method.to_ascii_uppercase()), &mut args);
        conds.push(format!("upper(method) = {p}"));
    }
    match filter.status {
        Some(StatusFilter::Exact(n)) => {
            let p = arg(Value::Integer(n.into()), &mut args);
            conds.push(format!("status = {p}"));
        }
        Some(StatusFilter::Class(c)) => {
            let lo = arg(Value::Integer(i64::from(c) * 100), &mut args);
            let hi = arg(Value::Integer(i64::from(c) * 100 + 99), &mut args);
            conds.push(format!("status BETWEEN {lo} AND {hi}"));
        }
        Some(StatusFilter::None) => conds.push("status IS NULL".into()),
        None => {}
    }
    if let Some(path) = filter.path.as_deref().filter(|p| !p.is_empty()) {
        let p = arg(Value::Text(path.to_ascii_lowercase()), &mut args);
        conds.push(format!("ci_contains(uri, {p})"));
    }
    if let Some(q) = filter.q.as_deref().filter(|q| !q.is_empty()) {
        let p = arg(Value::Text(q.to_ascii_lowercase()), &mut args);
        conds.push(format!(
            "(ci_contains(uri, {p}) OR ci_headers_contain(req_headers, {p}) \
             OR ci_contains(req_body, {p}) OR ci_headers_contain(resp_headers, {p}) \
             OR ci_contains(resp_body, {p}))"
        ));
    }
    if let Some(before) = filter.before {
        let p = arg(Value::Integer(to_i64(before)), &mut args);
        conds.push(format!("id < {p}"));
    }
    let clause = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    (clause, args)
}

/// Registers `ci_contains(hay, needle)` and `ci_headers_contain(headers, needle)`:
/// ASCII case-insensitive substring tests over text or BLOBs (the needle is lowercase).
fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("ci_contains", 2, flags, |ctx| {
        let (Some(hay), Some(needle)) = (raw_bytes(ctx.get_raw(0)), raw_bytes(ctx.get_raw(1)))
        else {
            return Ok(false);
        };
        Ok(contains_ci(hay, needle))
    })?;
    conn.create_scalar_function("ci_headers_contain", 2, flags, |ctx| {
        let (Some(blob), Some(needle)) = (raw_bytes(ctx.get_raw(0)), raw_bytes(ctx.get_raw(1)))
        else {
            return Ok(false);
        };
        let Ok(headers) = decode_headers(blob) else {
            return Ok(false);
        };
        let mut lines = Vec::with_capacity(blob.len() + 4 * headers.len());
        for (name, value) in headers {
            lines.extend_from_slice(name.as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(&value);
            lines.push(b'\n');
        }
        Ok(contains_ci(&lines, needle))
    })
}

fn raw_bytes(v: ValueRef<'_>) -> Option<&[u8]> {
    match v {
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(b),
        _ => None,
    }
}

/// Whether `hay` contains `needle_lower`, ignoring ASCII case.
pub(crate) fn contains_ci(hay: &[u8], needle_lower: &[u8]) -> bool {
    if needle_lower.is_empty() {
        return true;
    }
    let first = needle_lower[0];
    hay.windows(needle_lower.len())
        .any(|w| w[0].to_ascii_lowercase() == first && w.eq_ignore_ascii_case(needle_lower))
}

/// Headers as `[u16 name length][name][u32 value length][value]`…, byte-exact.
pub(crate) fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        // Header names and values longer than these cannot come through hyper; clamp so
        // a hand-built exchange still encodes to something decodable.
        let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
        let value = &value[..value.len().min(u32::MAX as usize)];
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Inverse of [`encode_headers`].
pub(crate) fn decode_headers(mut b: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let take = |n: usize, b: &mut &[u8]| -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(b.len() >= n, "truncated header block");
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head.to_vec())
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = take(2, &mut b)?;
        let name = take(usize::from(u16::from_be_bytes([len[0], len[1]])), &mut b)?;
        let len = take(4, &mut b)?;
        let value = take(
            u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize,
            &mut b,
        )?;
        out.push((String::from_utf8_lossy(&name).into_owned(), value));
    }
    Ok(out)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn micros_since_epoch(t: SystemTime) -> i64 {
    to_i64(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64)
}

fn from_micros(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

fn summary_from_row(r: &Row<'_>) -> rusqlite::Result<ExchangeSummary> {
    let outcome: String = r.get(8)?;
    let reason: Option<String> = r.get(9)?;
    Ok(ExchangeSummary {
        id: r.get::<_, i64>(0)?.max(0) as u64,
        replay_of: r.get::<_, Option<i64>>(1)?.map(|v| v.max(0) as u64),
        tunnel: r.get(2)?,
        method: r.get(3)?,
        path: r.get(4)?,
        status: r.get(5)?,
        duration_ms: super::time::millis(from_micros(r.get(6)?)),
        started_at: super::time::rfc3339(UNIX_EPOCH + from_micros(r.get(7)?)),
        error: match (outcome.as_str(), reason) {
            ("target_timeout", None) => Some("target timed out".to_owned()),
            (_, reason) => reason,
        },
        outcome,
        request_size: r.get::<_, i64>(10)?.max(0) as u64,
        response_size: r.get::<_, Option<i64>>(11)?.map(|v| v.max(0) as u64),
        visitor: r.get(12)?,
        signature: signature_from(r.get(13)?),
    })
}

fn exchange_from_row(r: &Row<'_>) -> anyhow::Result<Exchange> {
    let body = |bytes: Vec<u8>, size: i64, truncated: bool| CapturedBody {
        bytes: Bytes::from(bytes),
        size: size.max(0) as u64,
        truncated,
    };
    let outcome: String = r.get(19)?;
    let reason: Option<String> = r.get(20)?;
    let reason_or_unknown = || reason.clone().unwrap_or_default();
    let outcome = match outcome.as_str() {
        "completed" => Outcome::Completed,
        "target_error" => Outcome::TargetError(reason_or_unknown()),
        "target_timeout" => Outcome::TargetTimeout,
        "refused_at_edge" => Outcome::RefusedAtEdge(reason_or_unknown()),
        "rejected" => Outcome::Rejected(reason_or_unknown()),
        _ => Outcome::Cancelled(reason_or_unknown()),
    };
    let response = match r.get::<_, Option<u16>>(14)? {
        None => None,
        Some(status) => Some(CapturedResponse {
            status,
            headers: decode_headers(&r.get::<_, Option<Vec<u8>>>(15)?.unwrap_or_default())?,
            body: body(
                r.get::<_, Option<Vec<u8>>>(16)?.unwrap_or_default(),
                r.get::<_, Option<i64>>(17)?.unwrap_or(0),
                r.get::<_, Option<bool>>(18)?.unwrap_or(false),
            ),
        }),
    };
    Ok(Exchange {
        id: ExchangeId(r.get::<_, i64>(0)?.max(0) as u64),
        replay_of: r
            .get::<_, Option<i64>>(1)?
            .map(|v| ExchangeId(v.max(0) as u64)),
        tunnel: r.get(2)?,
        target: r.get(3)?,
        started_at: UNIX_EPOCH + from_micros(r.get(4)?),
        time_to_head: r.get::<_, Option<i64>>(5)?.map(from_micros),
        duration: from_micros(r.get(6)?),
        visitor: r
            .get::<_, Option<String>>(7)?
            .and_then(|v| v.parse::<SocketAddr>().ok()),
        request: CapturedRequest {
            method: r.get(8)?,
            uri: r.get(9)?,
            headers: decode_headers(&r.get::<_, Vec<u8>>(10)?)?,
            body: body(r.get(11)?, r.get(12)?, r.get(13)?),
        },
        response,
        outcome,
        signature: signature_from(r.get(21)?),
    })
}

fn signature_from(json: Option<String>) -> Option<crate::signatures::SignatureCheck> {
    json.and_then(|j| serde_json::from_str(&j).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_byte_exact() {
        let headers = vec![
            ("Content-Type".to_owned(), b"application/json".to_vec()),
            ("X-Bin".to_owned(), vec![0xff, 0x00, 0x80]),
            ("Empty".to_owned(), vec![]),
        ];
        let enc = encode_headers(&headers);
        assert_eq!(decode_headers(&enc).unwrap(), headers);
        assert!(decode_headers(&enc[..enc.len() - 1]).is_err());
        assert!(decode_headers(&[0]).is_err());
    }

    #[test]
    fn status_filters_parse() {
        assert_eq!("200".parse(), Ok(StatusFilter::Exact(200)));
        assert_eq!("5xx".parse(), Ok(StatusFilter::Class(5)));
        assert_eq!("4XX".parse(), Ok(StatusFilter::Class(4)));
        assert_eq!("none".parse(), Ok(StatusFilter::None));
        assert!("9xx".parse::<StatusFilter>().is_err());
        assert!("abc".parse::<StatusFilter>().is_err());
        assert!("42".parse::<StatusFilter>().is_err());
    }

    #[test]
    fn version_1_files_gain_the_signature_column_and_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            let v1 = SCHEMA.replace(",\n    signature          TEXT", "");
            assert!(!v1.contains("signature"));
            conn.execute_batch(&v1).unwrap();
            conn.execute(
                "INSERT INTO exchanges (id, tunnel, target, started_us, duration_us, method, \
                 uri, req_headers, req_body, req_size, req_truncated, outcome, stored_bytes) \
                 VALUES (7, 't', 'http://127.0.0.1:1', 0, 5, 'POST', '/old', x'', x'', 0, 0, \
                 'completed', 300)",
                [],
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let old = store.exchange(ExchangeId(7)).unwrap().unwrap();
        assert_eq!(old.request.uri, "/old");
        assert_eq!(old.signature, None);
        let listed = store
            .list(&Filter {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(listed.len(), 1);
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn case_insensitive_search() {
        assert!(contains_ci(b"Hello World", b"o wor"));
        assert!(contains_ci(&[0xff, b'A', b'b'], b"ab"));
        assert!(!contains_ci(b"abc", b"abcd"));
        assert!(contains_ci(b"", b""));
    }
}
