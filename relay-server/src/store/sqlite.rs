//! [`QueueStore`] in an SQLite file (`queue.sqlite3` in the data dir): WAL, and
//! `synchronous = FULL`, so a commit is on disk before anyone is told it is stored.
//!
//! One writer thread owns the writing connection and commits in groups: it takes every
//! request waiting in its channel (up to [`MAX_BATCH`]), applies them in one
//! transaction, commits with one fsync, and only then answers each caller. That is how
//! many visitors per second each get a durable acknowledgement without one fsync each,
//! and why no write ever blocks the async runtime. Reads use their own connection on
//! the blocking pool (WAL readers do not wait for the writer).
//!
//! Before a batch that stores bodies, the writer checks the free space of the file
//! system and refuses (as [`StoreError::DiskFull`]) when it would drop below the
//! configured reserve, so the file keeps room for state updates; a real `SQLITE_FULL`
//! is refused the same way. A failed transaction is rolled back whole: never a torn
//! record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use http::{HeaderMap, HeaderName, HeaderValue};
use rusqlite::{params, Connection, OptionalExtension};
use shared_proto::delivery::Delivery;
use shared_proto::Scheme;
use tokio::sync::oneshot;

use super::{
    now_ms, Attempt, Entry, Limits, NewExchange, QueueId, QueueStore, State, StoreError,
    StoreFuture, Stored,
};

/// File name of the queue database in the data dir (tokens live in `relay.sqlite3`).
pub const QUEUE_DB_FILE: &str = "queue.sqlite3";
/// What the `meta` table says a Porthole queue database is.
const SCHEMA_NAME: &str = "porthole-queue";
/// The schema this build writes.
const SCHEMA_VERSION: i64 = 1;
/// Most requests applied in one transaction.
pub const MAX_BATCH: usize = 1024;
/// Finished exchanges evicted at once when a name reaches its retention limit.
const EVICT_ROUND: usize = 64;

/// Options of the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Refuse new bodies when the file system would have less free space than this.
    pub min_free_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The SQLite queue store.
pub struct SqliteStore {
    path: PathBuf,
    store_id: String,
    writer: Mutex<Option<mpsc::Sender<Op>>>,
    reader: Arc<Mutex<Connection>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

enum Answer {
    Id(QueueId),
    Unit,
    Name(Option<String>),
    Pruned(u64, u64),
    Flag(bool),
}

enum OpKind {
    Enqueue(Box<NewExchange>, Limits),
    Record(QueueId, Attempt),
    Retry(QueueId),
    Remove(QueueId),
    SaveDelivery(String, Delivery),
    Prune(Box<dyn Fn(&str) -> Limits + Send>),
    DataVersion,
}

struct Op {
    kind: OpKind,
    reply: oneshot::Sender<Result<Answer, StoreError>>,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if f.code == rusqlite::ErrorCode::DiskFull {
            return StoreError::DiskFull("no space left on the device".into());
        }
    }
    StoreError::Db(e.to_string())
}

fn refused(path: &Path, why: impl Into<String>) -> StoreError {
    StoreError::Refused {
        path: path.display().to_string(),
        why: why.into(),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `queue.sqlite3` in `data_dir`. A file that is not a
    /// Porthole queue database, is corrupt, or comes from a newer relay is refused
    /// with a sentence saying so; it is never modified.
    pub fn open(data_dir: &Path, options: SqliteOptions) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| refused(data_dir, format!("creating the data dir: {e}")))?;
        let path = data_dir.join(QUEUE_DB_FILE);
        let existed = std::fs::metadata(&path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        let conn = Connection::open(&path).map_err(|e| refused(&path, e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        if existed {
            check_existing(&conn, &path)?;
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| refused(&path, format!("setting WAL mode: {e}")))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(refused(&path, format!("WAL mode unavailable ({mode})")));
        }
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA journal_size_limit = 8388608;
             BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS queue (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL,
                 state INTEGER NOT NULL,
                 received_at INTEGER NOT NULL,
                 method TEXT NOT NULL,
                 uri TEXT NOT NULL,
                 headers BLOB NOT NULL,
                 visitor TEXT,
                 scheme INTEGER NOT NULL,
                 body BLOB NOT NULL,
                 body_len INTEGER NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 next_attempt_at INTEGER NOT NULL,
                 last_status INTEGER,
                 last_error TEXT,
                 done_at INTEGER
             );
             CREATE INDEX IF NOT EXISTS queue_by_name ON queue (name, state, id);
             CREATE TABLE IF NOT EXISTS deliveries (
                 name TEXT PRIMARY KEY,
                 mode TEXT NOT NULL,
                 offline TEXT NOT NULL
             );",
        )
        .map_err(db_err)?;
        let fresh_id = hex::encode(rand::random::<[u8; 8]>());
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?1), ('version', ?2), ('store_id', ?3)",
            params![SCHEMA_NAME, SCHEMA_VERSION.to_string(), fresh_id],
        )
        .map_err(db_err)?;
        conn.execute_batch("COMMIT").map_err(db_err)?;
        let store_id: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get(0)
            })
            .map_err(db_err)?;

        let reader = Connection::open(&path).map_err(db_err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        reader
            .execute_batch("PRAGMA query_only = 1;")
            .map_err(db_err)?;

        let (tx, rx) = mpsc::channel();
        let dir = data_dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || {
                Writer {
                    conn,
                    dir,
                    options,
                    sizes: HashMap::new(),
                    data_version: -1,
                }
                .run(rx)
            })
            .map_err(|e| StoreError::Db(format!("starting the writer thread: {e}")))?;
        Ok(Arc::new(Self {
            path,
            store_id,
            writer: Mutex::new(Some(tx)),
            reader: Arc::new(Mutex::new(reader)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the writer thread after the requests already sent to it.
    pub fn close(&self) {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }

    fn send(&self, kind: OpKind) -> StoreFuture<'_, Answer> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|w| w.send(Op { kind, reply }).is_ok())
            .unwrap_or(false);
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let reader = self.reader.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
                f(&conn).map_err(db_err)
            })
            .await
            .map_err(|e| StoreError::Db(format!("reader task: {e}")))?
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn check_existing(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let schema: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| {
            refused(
                path,
                format!("it is not a porthole queue database ({e}); move it away to start an empty queue"),
            )
        })?;
    if schema.as_deref() != Some(SCHEMA_NAME) {
        return Err(refused(
            path,
            "it is not a porthole queue database (no porthole-queue marker); move it away to start an empty queue",
        ));
    }
    let version: i64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'version'", [], |r| {
            r.get::<_, String>(0)
        })
        .map_err(|e| refused(path, format!("unreadable schema version: {e}")))?
        .parse()
        .map_err(|_| refused(path, "unreadable schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(refused(
            path,
            format!("it was written by a newer porthole-relay (queue schema {version}, this one knows {SCHEMA_VERSION}): upgrade the relay"),
        ));
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| refused(path, format!("it is corrupt ({e})")))?;
    if check != "ok" {
        return Err(refused(path, format!("it is corrupt ({check})")));
    }
    Ok(())
}

struct Writer {
    conn: Connection,
    dir: PathBuf,
    options: SqliteOptions,
    /// Per name: (exchanges, body bytes) stored; loaded lazily, dropped on doubt.
    sizes: HashMap<String, (u64, u64)>,
    data_version: i64,
}

/// A failure that aborts the whole transaction (as opposed to one refused request).
struct Abort(StoreError);

impl From<rusqlite::Error> for Abort {
    fn from(e: rusqlite::Error) -> Self {
        Abort(db_err(e))
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
        }
    }

    fn wal_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join(format!("{QUEUE_DB_FILE}-wal")))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Moves the WAL into the main file and truncates it, giving its space back.
    fn checkpoint(&self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!("queue store checkpoint: {e}");
        }
    }

    /// Near a full disk, checkpoints early (SQLite's own threshold is 4 MiB of WAL),
    /// so that state updates keep finding room.
    fn checkpoint_if_tight(&self) {
        let wal = self.wal_bytes();
        if wal < 64 * 1024 {
            return;
        }
        if self
            .free_bytes()
            .is_some_and(|free| free < self.options.min_free_bytes.saturating_add(2 * wal))
        {
            self.checkpoint();
        }
    }

    fn free_bytes(&self) -> Option<u64> {
        let s = rustix::fs::statvfs(&self.dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }

    fn run_batch(&mut self, batch: Vec<Op>) {
        // Room check for the bodies of this batch (headers and index included, roughly).
        let incoming: u64 = batch
            .iter()
            .map(|op| match &op.kind {
                OpKind::Enqueue(ex, _) => ex.body.len() as u64 + 1024,
                _ => 0,
            })
            .sum();
        // The WAL is counted too: a checkpoint copies it into the main file, so that
        // much room must stay free for the store to keep working.
        let no_room = incoming > 0
            && self.free_bytes().is_some_and(|free| {
                free < self
                    .options
                    .min_free_bytes
                    .saturating_add(incoming)
                    .saturating_add(self.wal_bytes())
            });

        let mut replies = Vec::with_capacity(batch.len());
        let result = (|| -> Result<(), Abort> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            for op in batch {
                let answer = match op.kind {
                    OpKind::Enqueue(_, _) if no_room => Err(StoreError::DiskFull(format!(
                        "less than {} bytes would be left free in {}",
                        self.options.min_free_bytes,
                        self.dir.display()
                    ))),
                    kind => self.apply(kind)?,
                };
                replies.push((op.reply, answer));
            }
            self.conn.execute_batch("COMMIT")?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                for (reply, answer) in replies {
                    let _ = reply.send(answer);
                }
                self.checkpoint_if_tight();
            }
            Err(Abort(e)) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.sizes.clear();
                if matches!(e, StoreError::DiskFull(_)) {
                    self.checkpoint();
                }
                if matches!(e, StoreError::DiskFull(_)) {
                    tracing::error!("queue store: {e}: the batch was rolled back, nothing stored");
                } else {
                    tracing::error!("queue store: {e}: the batch was rolled back");
                }
                for (reply, _) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
                // Requests of the batch not yet applied were dropped with their reply
                // senders: their callers see the store as closed for this request.
            }
        }
    }

    fn sizes_of(&mut self, name: &str) -> rusqlite::Result<(u64, u64)> {
        if let Some(s) = self.sizes.get(name) {
            return Ok(*s);
        }
        let s: (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(body_len), 0) FROM queue WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let s = (s.0.max(0) as u64, s.1.max(0) as u64);
        self.sizes.insert(name.to_owned(), s);
        Ok(s)
    }

    /// Deletes the name's oldest delivered or dead exchanges until `count` and `bytes`
    /// fit `limits`; answers the sizes after. When it has to evict at all, it evicts a
    /// whole round of [`EVICT_ROUND`] (oldest first), so a name that lives at its limit
    /// pays for one indexed read per round, not per request.
    fn evict(
        &mut self,
        name: &str,
        limits: Limits,
        extra_count: u64,
        extra_bytes: u64,
    ) -> rusqlite::Result<(u64, u64)> {
        let (mut count, mut bytes) = self.sizes_of(name)?;
        let over = |count: u64, bytes: u64| {
            count + extra_count > limits.max_count || bytes + extra_bytes > limits.max_bytes
        };
        while over(count, bytes) {
            // Each state is its own range of the (name, state, id) index, so both reads
            // walk the index in id order instead of sorting the name's history.
            let mut victims: Vec<(i64, i64)> = Vec::with_capacity(2 * EVICT_ROUND);
            for state in [1i64, 2] {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT id, body_len FROM queue WHERE name = ?1 AND state = ?2 ORDER BY id LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![name, state, EVICT_ROUND as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
                for row in rows {
                    victims.push(row?);
                }
            }
            if victims.is_empty() {
                break;
            }
            victims.sort_unstable();
            victims.truncate(EVICT_ROUND);
            for (id, len) in victims {
                self.conn
                    .prepare_cached("DELETE FROM queue WHERE id = ?1")?
                    .execute([id])?;
                count = count.saturating_sub(1);
                bytes = bytes.saturating_sub(len.max(0) as u64);
            }
        }
        self.sizes.insert(name.to_owned(), (count, bytes));
        Ok((count, bytes))
    }

    fn apply(&mut self, kind: OpKind) -> Result<Result<Answer, StoreError>, Abort> {
        Ok(match kind {
            OpKind::Enqueue(ex, limits) => {
                let len = ex.body.len() as u64;
                let (count, bytes) = self.evict(&ex.name, limits, 1, len)?;
                if count + 1 > limits.max_count {
                    return Ok(Err(StoreError::QueueFull {
                        name: ex.name.clone(),
                        reason: format!(
                            "{count} exchanges waiting, the limit is {}",
                            limits.max_count
                        ),
                    }));
                }
                if bytes + len > limits.max_bytes {
                    return Ok(Err(StoreError::QueueFull {
                        name: ex.name.clone(),
                        reason: format!(
                            "{bytes} body bytes waiting, the limit is {}",
                            limits.max_bytes
                        ),
                    }));
                }
                let now = now_ms();
                self.conn
                    .prepare_cached(
                        "INSERT INTO queue (name, state, received_at, method, uri, headers, visitor, scheme, body, body_len, next_attempt_at)
                         VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?2)",
                    )?
                    .execute(params![
                        ex.name,
                        now,
                        ex.method,
                        ex.uri,
                        encode_headers(&ex.headers),
                        ex.visitor.map(|v| v.to_string()),
                        scheme_to_i64(ex.scheme),
                        &ex.body[..],
                        len as i64,
                    ])?;
                let id = self.conn.last_insert_rowid();
                self.sizes.insert(ex.name.clone(), (count + 1, bytes + len));
                Ok(Answer::Id(QueueId(id as u64)))
            }
            OpKind::Record(id, attempt) => {
                let now = now_ms();
                match attempt {
                    Attempt::Delivered(status) => self
                        .conn
                        .prepare_cached(
                            "UPDATE queue SET state = 1, attempts = attempts + 1, last_status = ?2, last_error = NULL, done_at = ?3 WHERE id = ?1 AND state = 0",
                        )?
                        .execute(params![id.0 as i64, status, now])?,
                    Attempt::Retry { status, error, at } => self
                        .conn
                        .prepare_cached(
                            "UPDATE queue SET attempts = attempts + 1, last_status = ?2, last_error = ?3, next_attempt_at = ?4 WHERE id = ?1 AND state = 0",
                        )?
                        .execute(params![id.0 as i64, status, error, at])?,
                    Attempt::Dead { status, error } => self
                        .conn
                        .prepare_cached(
                            "UPDATE queue SET state = 2, attempts = attempts + 1, last_status = ?2, last_error = ?3, done_at = ?4 WHERE id = ?1 AND state = 0",
                        )?
                        .execute(params![id.0 as i64, status, error, now])?,
                };
                Ok(Answer::Unit)
            }
            OpKind::Retry(id) => {
                let name: Option<String> = self
                    .conn
                    .query_row("SELECT name FROM queue WHERE id = ?1", [id.0 as i64], |r| {
                        r.get(0)
                    })
                    .optional()?;
                if name.is_some() {
                    self.conn.execute(
                        "UPDATE queue SET state = 0, attempts = 0, next_attempt_at = ?2, last_error = NULL, done_at = NULL WHERE id = ?1",
                        params![id.0 as i64, now_ms()],
                    )?;
                }
                Ok(Answer::Name(name))
            }
            OpKind::Remove(id) => {
                let name: Option<String> = self
                    .conn
                    .query_row("SELECT name FROM queue WHERE id = ?1", [id.0 as i64], |r| {
                        r.get(0)
                    })
                    .optional()?;
                if let Some(n) = &name {
                    self.conn
                        .execute("DELETE FROM queue WHERE id = ?1", [id.0 as i64])?;
                    self.sizes.remove(n);
                }
                Ok(Answer::Name(name))
            }
            OpKind::SaveDelivery(name, d) => {
                self.conn.execute(
                    "INSERT INTO deliveries (name, mode, offline) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET mode = excluded.mode, offline = excluded.offline",
                    params![name, d.mode.as_str(), d.offline.as_str()],
                )?;
                Ok(Answer::Unit)
            }
            OpKind::Prune(limits_of) => {
                let names: Vec<String> = {
                    let mut stmt = self.conn.prepare("SELECT DISTINCT name FROM queue")?;
                    let rows = stmt.query_map([], |r| r.get(0))?;
                    rows.collect::<Result<_, _>>()?
                };
                let now = now_ms();
                let (mut dropped, mut expired) = (0u64, 0u64);
                for name in names {
                    let limits = limits_of(&name);
                    let cutoff = now - limits.max_age.as_millis().min(i64::MAX as u128) as i64;
                    expired += self.conn.execute(
                        "UPDATE queue SET state = 2, last_error = 'expired: older than the retention age', done_at = ?3
                         WHERE name = ?1 AND state = 0 AND received_at < ?2",
                        params![name, cutoff, now],
                    )? as u64;
                    dropped += self.conn.execute(
                        "DELETE FROM queue WHERE name = ?1 AND state != 0 AND received_at < ?2",
                        params![name, cutoff],
                    )? as u64;
                    self.sizes.remove(&name);
                    let before = self.sizes_of(&name)?.0;
                    let after = self.evict(&name, limits, 0, 0)?.0;
                    dropped += before.saturating_sub(after);
                }
                Ok(Answer::Pruned(dropped, expired))
            }
            OpKind::DataVersion => {
                let v: i64 = self
                    .conn
                    .query_row("PRAGMA data_version", [], |r| r.get(0))?;
                let changed = self.data_version != -1 && v != self.data_version;
                self.data_version = v;
                if changed {
                    self.sizes.clear();
                }
                Ok(Answer::Flag(changed))
            }
        })
    }
}

fn scheme_to_i64(s: Scheme) -> i64 {
    match s {
        Scheme::Http => 0,
        Scheme::Https => 1,
    }
}

/// Headers as stored: for each, a u16 name length, the name, a u32 value length, the
/// value (big-endian).
fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() * 32);
    for (name, value) in headers {
        out.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The stored headers; a field HTTP would refuse (none is ever stored: they come from
/// a header map) is skipped.
fn decode_headers(mut b: &[u8]) -> HeaderMap {
    let mut out = HeaderMap::new();
    while let Some((n, rest)) = b.split_first_chunk::<2>() {
        let n = u16::from_be_bytes(*n) as usize;
        let Some((name, rest)) = (rest.len() >= n).then(|| rest.split_at(n)) else {
            break;
        };
        let Some((v, rest)) = rest.split_first_chunk::<4>() else {
            break;
        };
        let v = u32::from_be_bytes(*v) as usize;
        let Some((value, rest)) = (rest.len() >= v).then(|| rest.split_at(v)) else {
            break;
        };
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            out.append(name, value);
        }
        b = rest;
    }
    out
}

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: QueueId(r.get::<_, i64>(0)? as u64),
        name: r.get(1)?,
        state: State::from_i64(r.get(2)?),
        method: r.get(3)?,
        uri: r.get(4)?,
        body_bytes: r.get::<_, i64>(5)?.max(0) as u64,
        received_at: r.get(6)?,
        attempts: r.get::<_, i64>(7)?.max(0) as u32,
        next_attempt_at: r.get(8)?,
        last_status: r.get::<_, Option<i64>>(9)?.map(|s| s as u16),
        last_error: r.get(10)?,
    })
}

const ENTRY_COLUMNS: &str =
    "id, name, state, method, uri, body_len, received_at, attempts, next_attempt_at, last_status, last_error";

impl QueueStore for SqliteStore {
    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn enqueue(&self, exchange: NewExchange, limits: Limits) -> StoreFuture<'_, QueueId> {
        let fut = self.send(OpKind::Enqueue(Box::new(exchange), limits));
        Box::pin(async move {
            match fut.await? {
                Answer::Id(id) => Ok(id),
                _ => Err(StoreError::Db("unexpected answer".into())),
            }
        })
    }

    fn next_queued(&self, name: &str, limit: usize) -> StoreFuture<'_, Vec<Stored>> {
        let name = name.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, method, uri, headers, visitor, scheme, body, attempts, next_attempt_at
                 FROM queue WHERE name = ?1 AND state = 0 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![name, limit as i64], |r| {
                let body: Vec<u8> = r.get(6)?;
                Ok(Stored {
                    id: QueueId(r.get::<_, i64>(0)? as u64),
                    exchange: NewExchange {
                        name: name.clone(),
                        method: r.get(1)?,
                        uri: r.get(2)?,
                        headers: decode_headers(&r.get::<_, Vec<u8>>(3)?),
                        visitor: r.get::<_, Option<String>>(4)?.and_then(|v| v.parse().ok()),
                        scheme: if r.get::<_, i64>(5)? == 1 {
                            Scheme::Https
                        } else {
                            Scheme::Http
                        },
                        body: body.into(),
                    },
                    attempts: r.get::<_, i64>(7)?.max(0) as u32,
                    next_attempt_at: r.get(8)?,
                })
            })?;
            rows.collect()
        })
    }

    fn record(&self, id: QueueId, attempt: Attempt) -> StoreFuture<'_, ()> {
        let fut = self.send(OpKind::Record(id, attempt));
        Box::pin(async move { fut.await.map(|_| ()) })
    }

    fn list(&self, names: Option<Vec<String>>, limit: usize) -> StoreFuture<'_, Vec<Entry>> {
        self.read(move |c| match names {
            None => {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM queue ORDER BY id DESC LIMIT ?1"
                ))?;
                let rows = stmt.query_map([limit as i64], entry_from_row)?;
                rows.collect()
            }
            Some(names) => {
                let mut out = Vec::new();
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM queue WHERE name = ?1 ORDER BY id DESC LIMIT ?2"
                ))?;
                for n in names {
                    let rows = stmt.query_map(params![n, limit as i64], entry_from_row)?;
                    for r in rows {
                        out.push(r?);
                    }
                }
                out.sort_by_key(|e| std::cmp::Reverse(e.id));
                out.truncate(limit);
                Ok(out)
            }
        })
    }

    fn retry(&self, id: QueueId) -> StoreFuture<'_, Option<String>> {
        let fut = self.send(OpKind::Retry(id));
        Box::pin(async move {
            match fut.await? {
                Answer::Name(n) => Ok(n),
                _ => Err(StoreError::Db("unexpected answer".into())),
            }
        })
    }

    fn remove(&self, id: QueueId) -> StoreFuture<'_, Option<String>> {
        let fut = self.send(OpKind::Remove(id));
        Box::pin(async move {
            match fut.await? {
                Answer::Name(n) => Ok(n),
                _ => Err(StoreError::Db("unexpected answer".into())),
            }
        })
    }

    fn queued_count(&self) -> StoreFuture<'_, u64> {
        self.read(|c| {
            c.query_row("SELECT count(*) FROM queue WHERE state = 0", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
        })
    }

    fn names_with_queued(&self) -> StoreFuture<'_, Vec<String>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT DISTINCT name FROM queue WHERE state = 0")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    fn save_delivery(&self, name: &str, delivery: Delivery) -> StoreFuture<'_, ()> {
        let fut = self.send(OpKind::SaveDelivery(name.to_owned(), delivery));
        Box::pin(async move { fut.await.map(|_| ()) })
    }

    fn deliveries(&self) -> StoreFuture<'_, Vec<(String, Delivery)>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT name, mode, offline FROM deliveries")?;
            let rows = stmt.query_map([], |r| {
                let name: String = r.get(0)?;
                let mode: String = r.get(1)?;
                let offline: String = r.get(2)?;
                Ok((
                    name,
                    Delivery {
                        mode: mode.parse().unwrap_or_default(),
                        offline: offline.parse().unwrap_or_default(),
                    },
                ))
            })?;
            rows.collect()
        })
    }

    fn prune(&self, limits_of: Box<dyn Fn(&str) -> Limits + Send>) -> StoreFuture<'_, (u64, u64)> {
        let fut = self.send(OpKind::Prune(limits_of));
        Box::pin(async move {
            match fut.await? {
                Answer::Pruned(d, e) => Ok((d, e)),
                _ => Err(StoreError::Db("unexpected answer".into())),
            }
        })
    }

    fn changed_externally(&self) -> StoreFuture<'_, bool> {
        let fut = self.send(OpKind::DataVersion);
        Box::pin(async move {
            match fut.await? {
                Answer::Flag(f) => Ok(f),
                _ => Err(StoreError::Db("unexpected answer".into())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(name: &str, body: &str) -> NewExchange {
        NewExchange {
            name: name.into(),
            method: "POST".into(),
            uri: "/hook".into(),
            headers: HeaderMap::from_iter([(
                HeaderName::from_static("x-a"),
                HeaderValue::from_bytes(b"1\xff").unwrap(),
            )]),
            visitor: Some("127.0.0.1:9".parse().unwrap()),
            scheme: Scheme::Https,
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    fn opts() -> SqliteOptions {
        SqliteOptions { min_free_bytes: 0 }
    }

    #[tokio::test]
    async fn stores_in_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), opts()).unwrap();
        let id0 = store.store_id().to_owned();
        let mut ids = Vec::new();
        let futs: Vec<_> = (0..50)
            .map(|i| store.enqueue(exchange("a", &format!("{i}")), Limits::default()))
            .collect();
        for f in futs {
            ids.push(f.await.unwrap());
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        store.record(ids[0], Attempt::Delivered(200)).await.unwrap();
        store.close();
        drop(store);

        let store = SqliteStore::open(dir.path(), opts()).unwrap();
        assert_eq!(store.store_id(), id0);
        let next = store.next_queued("a", 3).await.unwrap();
        assert_eq!(next.len(), 3);
        assert_eq!(next[0].id, ids[1]);
        assert_eq!(&next[0].exchange.body[..], b"1");
        assert_eq!(next[0].exchange.headers, exchange("a", "").headers);
        assert_eq!(next[0].exchange.scheme, Scheme::Https);
        let list = store.list(None, 100).await.unwrap();
        assert_eq!(list.len(), 50);
        assert_eq!(list.last().unwrap().state, State::Delivered);
        assert_eq!(
            store.names_with_queued().await.unwrap(),
            vec!["a".to_owned()]
        );
    }

    #[tokio::test]
    async fn retention_evicts_finished_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), opts()).unwrap();
        let limits = Limits {
            max_count: 2,
            ..Limits::default()
        };
        let a = store.enqueue(exchange("n", "a"), limits).await.unwrap();
        let _b = store.enqueue(exchange("n", "b"), limits).await.unwrap();
        assert!(matches!(
            store.enqueue(exchange("n", "c"), limits).await,
            Err(StoreError::QueueFull { .. })
        ));
        store
            .record(
                a,
                Attempt::Dead {
                    status: Some(500),
                    error: "x".into(),
                },
            )
            .await
            .unwrap();
        store.enqueue(exchange("n", "c"), limits).await.unwrap();
        assert_eq!(store.list(None, 10).await.unwrap().len(), 2);
        // Another name is not affected.
        store.enqueue(exchange("m", "c"), limits).await.unwrap();
        assert_eq!(store.retry(QueueId(9999)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_name_at_its_limit_evicts_its_oldest_finished_in_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), opts()).unwrap();
        let limits = Limits {
            max_count: 100,
            ..Limits::default()
        };
        let mut ids = Vec::new();
        for i in 0..100 {
            ids.push(
                store
                    .enqueue(exchange("n", &i.to_string()), limits)
                    .await
                    .unwrap(),
            );
        }
        for id in &ids[..80] {
            store.record(*id, Attempt::Delivered(200)).await.unwrap();
        }
        store.enqueue(exchange("n", "new"), limits).await.unwrap();
        let left = store.list(None, 1000).await.unwrap();
        assert_eq!(left.len(), 100 - EVICT_ROUND + 1);
        // The oldest delivered went first; every queued one stayed.
        assert!(left.iter().all(|e| e.id > ids[EVICT_ROUND - 1]));
        assert_eq!(left.iter().filter(|e| e.state == State::Queued).count(), 21);
    }

    #[tokio::test]
    async fn foreign_and_corrupt_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(QUEUE_DB_FILE),
            b"this is not sqlite at all, no",
        )
        .unwrap();
        let err = SqliteStore::open(dir.path(), opts())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a porthole queue database"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join(QUEUE_DB_FILE)).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        let err = SqliteStore::open(dir.path(), opts())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a porthole queue database"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), opts()).unwrap();
        drop(store);
        let c = Connection::open(dir.path().join(QUEUE_DB_FILE)).unwrap();
        c.execute("UPDATE meta SET value = '9' WHERE key = 'version'", [])
            .unwrap();
        drop(c);
        let err = SqliteStore::open(dir.path(), opts())
            .unwrap_err()
            .to_string();
        assert!(err.contains("newer porthole-relay"), "{err}");
    }

    #[tokio::test]
    async fn free_space_reserve_refuses_bodies_but_not_updates() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            dir.path(),
            SqliteOptions {
                min_free_bytes: u64::MAX / 2,
            },
        )
        .unwrap();
        assert!(matches!(
            store.enqueue(exchange("a", "x"), Limits::default()).await,
            Err(StoreError::DiskFull(_))
        ));
        store.save_delivery("a", Delivery::default()).await.unwrap();
        assert_eq!(store.deliveries().await.unwrap().len(), 1);
    }
}
