//! Client tokens and name reservations, kept in a SQLite file in the data dir.
//!
//! Only a SHA-256 hash of each token is stored: tokens carry 256 bits of randomness, so a
//! fast hash is as good as a slow one and keeps auth cheap. Presented tokens are
//! compared against every stored hash in constant time. The `token` subcommands and a
//! running relay share the file; the relay notices changes through SQLite's
//! `data_version`, so `token add` and `token revoke` take effect without a restart.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use ring::digest::{digest, SHA256};
use rusqlite::{params, Connection, OptionalExtension};
use shared_proto::{Secret, TunnelName};
use subtle::ConstantTimeEq;

/// File name of the database in the data dir.
pub const DB_FILE: &str = "relay.sqlite3";

/// The name of a token, chosen by the operator (`token add ci-runner`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenName(pub String);

impl std::fmt::Display for TokenName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Errors of the token store.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The database could not be read or written.
    #[error("token database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The file is not a Porthole relay database.
    #[error("{0} is not a porthole relay database (found tables: {1})")]
    Foreign(String, String),
    /// A token with that name exists already.
    #[error("a token named {0} already exists")]
    Exists(String),
    /// No token has that name.
    #[error("no token named {0}")]
    NotFound(String),
    /// The token name is empty or has odd characters.
    #[error("a token name must be 1-64 characters of letters, digits, '-', '_' or '.'")]
    BadName,
    /// The blocking task that ran the query did not finish (shutdown or a panic).
    #[error("token database: the query was interrupted")]
    Interrupted,
}

/// A token as listed (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's name.
    pub name: TokenName,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Names reserved by this token.
    pub reserved: Vec<String>,
}

/// Outcome of reserving a name for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The name is now (or already was) reserved by this token.
    Granted,
    /// Another token reserved it first.
    HeldBy(TokenName),
}

/// The token and reservation store.
pub struct TokenStore {
    conn: Mutex<Connection>,
    cache: Mutex<Cache>,
}

struct Cache {
    data_version: i64,
    hashes: Vec<(TokenName, [u8; 32])>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenStore")
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hash(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

fn valid_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl TokenStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, TokenError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| TokenError::Db(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .and_then(|mut s| {
                s.query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .map_err(|_| TokenError::Foreign(path.display().to_string(), "unreadable".into()))?;
        let ours = ["reservations", "tokens"];
        if !tables.is_empty() && !ours.iter().all(|t| tables.iter().any(|x| x == t)) {
            return Err(TokenError::Foreign(
                path.display().to_string(),
                tables.join(", "),
            ));
        }
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS tokens (
                 name TEXT PRIMARY KEY,
                 hash BLOB NOT NULL,
                 created_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS reservations (
                 tunnel_name TEXT PRIMARY KEY,
                 token_name TEXT NOT NULL,
                 created_at INTEGER NOT NULL
             );",
        )?;
        let store = Self {
            conn: Mutex::new(conn),
            cache: Mutex::new(Cache {
                data_version: -1,
                hashes: Vec::new(),
            }),
        };
        store.refresh()?;
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A poisoned lock means a panic while holding it; the connection itself is
        // still consistent (SQLite transactions are atomic), so keep going.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forces the next refresh to reload: `data_version` only moves for commits made
    /// by *other* connections.
    fn invalidate(&self) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .data_version = -1;
    }

    /// Reloads the token hashes if another process changed the file. Answers whether
    /// anything changed.
    pub fn refresh(&self) -> Result<bool, TokenError> {
        let conn = self.lock();
        let version: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if version == cache.data_version {
            return Ok(false);
        }
        let mut stmt = conn.prepare("SELECT name, hash FROM tokens")?;
        let rows = stmt.query_map([], |r| {
            let name: String = r.get(0)?;
            let h: Vec<u8> = r.get(1)?;
            Ok((name, h))
        })?;
        let mut hashes = Vec::new();
        for row in rows {
            let (name, h) = row?;
            if let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) {
                hashes.push((TokenName(name), h));
            }
        }
        cache.hashes = hashes;
        cache.data_version = version;
        Ok(true)
    }

    /// Creates a token named `name` and answers its value, which is shown once and
    /// never stored.
    pub fn add(&self, name: &str) -> Result<Secret, TokenError> {
        if !valid_token_name(name) {
            return Err(TokenError::BadName);
        }
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let token = format!("ph_{}", hex::encode(raw));
        let conn = self.lock();
        let res = conn.execute(
            "INSERT INTO tokens (name, hash, created_at) VALUES (?1, ?2, ?3)",
            params![name, &hash(&token)[..], now()],
        );
        drop(conn);
        self.invalidate();
        match res {
            Ok(_) => Ok(Secret::new(token)),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(TokenError::Exists(name.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a token and releases its reservations.
    pub fn revoke(&self, name: &str) -> Result<(), TokenError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM tokens WHERE name = ?1", params![name])?;
        if n == 0 {
            return Err(TokenError::NotFound(name.to_owned()));
        }
        tx.execute(
            "DELETE FROM reservations WHERE token_name = ?1",
            params![name],
        )?;
        tx.commit()?;
        drop(conn);
        self.invalidate();
        Ok(())
    }

    /// Lists tokens, oldest first.
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT name, created_at FROM tokens ORDER BY created_at, name")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut res_stmt = conn.prepare(
            "SELECT tunnel_name FROM reservations WHERE token_name = ?1 ORDER BY tunnel_name",
        )?;
        let mut out = Vec::new();
        for (name, created_at) in rows {
            let reserved = res_stmt
                .query_map(params![name], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            out.push(TokenInfo {
                name: TokenName(name),
                created_at,
                reserved,
            });
        }
        Ok(out)
    }

    /// Which token, if any, `presented` is. Every stored hash is compared in constant
    /// time, so timing reveals nothing about near misses.
    pub fn authenticate(&self, presented: &Secret) -> Result<Option<TokenName>, TokenError> {
        self.refresh()?;
        let h = hash(presented.expose());
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for (name, stored) in &cache.hashes {
            if bool::from(stored.ct_eq(&h)) {
                found = Some(name.clone());
            }
        }
        Ok(found)
    }

    /// Whether a token of that name still exists (after a refresh).
    pub fn exists(&self, name: &TokenName) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.hashes.iter().any(|(n, _)| n == name)
    }

    /// Reserves `tunnel` for `token`, persistently, unless another token holds it.
    pub fn reserve(
        &self,
        tunnel: &TunnelName,
        token: &TokenName,
    ) -> Result<Reservation, TokenError> {
        let conn = self.lock();
        let holder: Option<String> = conn
            .query_row(
                "SELECT token_name FROM reservations WHERE tunnel_name = ?1",
                params![tunnel.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        match holder {
            Some(h) if h == token.0 => Ok(Reservation::Granted),
            Some(h) => Ok(Reservation::HeldBy(TokenName(h))),
            None => {
                conn.execute(
                    "INSERT INTO reservations (tunnel_name, token_name, created_at) VALUES (?1, ?2, ?3)",
                    params![tunnel.as_str(), token.0, now()],
                )?;
                Ok(Reservation::Granted)
            }
        }
    }

    /// Whether `token` may bind `tunnel`: reserving it first when `reserve` is set (a
    /// `--name`), else only checking that no other token reserved it (a client taking
    /// back its random name after a reconnect).
    pub fn claim(
        &self,
        tunnel: &TunnelName,
        token: &TokenName,
        reserve: bool,
    ) -> Result<Reservation, TokenError> {
        if reserve {
            return self.reserve(tunnel, token);
        }
        Ok(match self.reserved_by(tunnel)? {
            Some(holder) if &holder != token => Reservation::HeldBy(holder),
            _ => Reservation::Granted,
        })
    }

    /// The token that reserved `tunnel`, if any.
    pub fn reserved_by(&self, tunnel: &TunnelName) -> Result<Option<TokenName>, TokenError> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                "SELECT token_name FROM reservations WHERE tunnel_name = ?1",
                params![tunnel.as_str()],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(TokenName))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let t = store.add("laptop").unwrap();
        assert!(t.expose().starts_with("ph_") && t.expose().len() == 67);
        assert_eq!(
            store.authenticate(&t).unwrap(),
            Some(TokenName("laptop".into()))
        );
        assert_eq!(store.authenticate(&Secret::new("ph_nope")).unwrap(), None);
        assert!(matches!(store.add("laptop"), Err(TokenError::Exists(_))));
        assert!(matches!(store.add("bad name"), Err(TokenError::BadName)));

        // A second handle (another process) sees the revocation.
        let other = TokenStore::open(dir.path()).unwrap();
        other.revoke("laptop").unwrap();
        assert_eq!(store.authenticate(&t).unwrap(), None);
        assert!(matches!(
            other.revoke("laptop"),
            Err(TokenError::NotFound(_))
        ));
    }

    #[test]
    fn the_database_never_holds_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let t = store.add("ci").unwrap();
        drop(store);
        let raw = std::fs::read(dir.path().join(DB_FILE)).unwrap();
        let wal = std::fs::read(dir.path().join(format!("{DB_FILE}-wal"))).unwrap_or_default();
        let needle = t.expose().as_bytes();
        for bytes in [raw, wal] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }

    #[test]
    fn reservations_belong_to_the_first_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        store.add("a").unwrap();
        store.add("b").unwrap();
        let name = TunnelName::parse("pay-hooks").unwrap();
        let a = TokenName("a".into());
        let b = TokenName("b".into());
        assert_eq!(store.reserve(&name, &a).unwrap(), Reservation::Granted);
        assert_eq!(store.reserve(&name, &a).unwrap(), Reservation::Granted);
        assert_eq!(
            store.reserve(&name, &b).unwrap(),
            Reservation::HeldBy(a.clone())
        );
        assert_eq!(store.list().unwrap()[0].reserved, vec!["pay-hooks"]);
        store.revoke("a").unwrap();
        assert_eq!(store.reserve(&name, &b).unwrap(), Reservation::Granted);
    }

    #[test]
    fn a_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch("CREATE TABLE something_else (x INTEGER);")
            .unwrap();
        drop(conn);
        let err = TokenStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a porthole relay database"), "{err}");

        std::fs::write(
            dir.path().join(DB_FILE),
            b"this is not sqlite at all, just text",
        )
        .unwrap();
        assert!(TokenStore::open(dir.path()).is_err());
    }
}
