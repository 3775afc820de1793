//! The SQLite queue store, opened the first time a relay needs it.
//!
//! Most relays never queue. Opened at start, `queue.sqlite3` cost each of them a
//! writer thread, a 32 KiB shared-memory mapping, SQLite's write path in resident code,
//! and a database query every second (the watch for `porthole-relay queue` edits, which
//! also kept a blocking-pool thread alive). [`OnDemand`] opens the file at start only
//! if it already exists, so that a foreign or corrupt file is still refused before the
//! relay serves anything; otherwise it opens (creates) it when a client first asks for
//! queue delivery or a visitor's request is to be stored. Until then, reads answer as
//! an empty queue would, and a client's default delivery setting is not written (no
//! row means the default).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use shared_proto::delivery::Delivery;

use super::sqlite::{SqliteOptions, SqliteStore, QUEUE_DB_FILE};
use super::{
    Attempt, Entry, Limits, NewExchange, QueueId, QueueStore, StoreError, StoreFuture, Stored,
};

/// A [`SqliteStore`] in `data_dir`, opened at start if its file exists, else when first
/// written.
pub struct OnDemand {
    data_dir: PathBuf,
    options: SqliteOptions,
    store: OnceLock<Arc<SqliteStore>>,
    /// Held while opening, so that two first uses open the file once.
    opening: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for OnDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemand")
            .field("data_dir", &self.data_dir)
            .field("open", &self.store.get().is_some())
            .finish_non_exhaustive()
    }
}

impl OnDemand {
    /// The store of `data_dir`: opened now if `queue.sqlite3` exists there (a file that
    /// cannot be used is refused here), else on first use.
    pub fn new(data_dir: PathBuf, options: SqliteOptions) -> Result<Self, StoreError> {
        let this = Self {
            data_dir,
            options,
            store: OnceLock::new(),
            opening: tokio::sync::Mutex::new(()),
        };
        if this.file_exists() {
            let store = SqliteStore::open(&this.data_dir, this.options.clone())?;
            let _ = this.store.set(store);
        }
        Ok(this)
    }

    fn file_exists(&self) -> bool {
        self.data_dir.join(QUEUE_DB_FILE).exists()
    }

    /// The store, opening (creating) it on the blocking pool if it is not open yet.
    async fn open(&self) -> Result<&SqliteStore, StoreError> {
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        let _opening = self.opening.lock().await;
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        let (dir, options) = (self.data_dir.clone(), self.options.clone());
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&dir, options))
            .await
            .map_err(|e| StoreError::Db(format!("opening the queue: {e}")))??;
        Ok(self.store.get_or_init(|| store))
    }

    /// The store if it is open or its file now exists (another process created it).
    async fn existing(&self) -> Result<Option<&SqliteStore>, StoreError> {
        if self.store.get().is_none() && !self.file_exists() {
            return Ok(None);
        }
        self.open().await.map(Some)
    }

    /// `f` on the store, opening it first if needed.
    fn opened<'a, T: Send + 'a>(
        &'a self,
        f: impl FnOnce(&'a SqliteStore) -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move { f(self.open().await?).await })
    }

    /// `f` on the store if there is one; what an empty queue answers if not.
    fn if_any<'a, T: Default + Send + 'a>(
        &'a self,
        f: impl FnOnce(&'a SqliteStore) -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            match self.existing().await? {
                Some(s) => f(s).await,
                None => Ok(T::default()),
            }
        })
    }
}

impl QueueStore for OnDemand {
    fn store_id(&self) -> &str {
        // Asked only about exchanges the store has answered for, so it is open.
        self.store.get().map_or("", |s| s.store_id())
    }

    fn enqueue(&self, exchange: NewExchange, limits: Limits) -> StoreFuture<'_, QueueId> {
        self.opened(move |s| s.enqueue(exchange, limits))
    }

    fn next_queued(&self, name: &str, limit: usize) -> StoreFuture<'_, Vec<Stored>> {
        let name = name.to_owned();
        self.if_any(move |s| s.next_queued(&name, limit))
    }

    fn record(&self, id: QueueId, attempt: Attempt) -> StoreFuture<'_, ()> {
        self.if_any(move |s| s.record(id, attempt))
    }

    fn list(&self, names: Option<Vec<String>>, limit: usize) -> StoreFuture<'_, Vec<Entry>> {
        self.if_any(move |s| s.list(names, limit))
    }

    fn retry(&self, id: QueueId) -> StoreFuture<'_, Option<String>> {
        self.if_any(move |s| s.retry(id))
    }

    fn remove(&self, id: QueueId) -> StoreFuture<'_, Option<String>> {
        self.if_any(move |s| s.remove(id))
    }

    fn queued_count(&self) -> StoreFuture<'_, u64> {
        self.if_any(|s| s.queued_count())
    }

    fn names_with_queued(&self) -> StoreFuture<'_, Vec<String>> {
        self.if_any(|s| s.names_with_queued())
    }

    fn save_delivery(&self, name: &str, delivery: Delivery) -> StoreFuture<'_, ()> {
        let name = name.to_owned();
        if delivery == Delivery::default() {
            // Without a store there is no row, and no row means the default: nothing
            // to remember (every client that binds a name asks for its delivery).
            return self.if_any(move |s| s.save_delivery(&name, delivery));
        }
        self.opened(move |s| s.save_delivery(&name, delivery))
    }

    fn deliveries(&self) -> StoreFuture<'_, Vec<(String, Delivery)>> {
        self.if_any(|s| s.deliveries())
    }

    fn prune(&self, limits_of: Box<dyn Fn(&str) -> Limits + Send>) -> StoreFuture<'_, (u64, u64)> {
        self.if_any(move |s| s.prune(limits_of))
    }

    fn changed_externally(&self) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            match self.store.get() {
                Some(s) => s.changed_externally().await,
                // A file that appeared was made by `porthole-relay queue`: news.
                None => Ok(self.existing().await?.is_some()),
            }
        })
    }
}
