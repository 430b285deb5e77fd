//! Listings of an `fs` store a page at a time: a walk on the blocking pool hands pages over a
//! small channel, so at most a few pages are in memory whatever the directory holds.

use tokio::sync::mpsc;

use super::{unset, walk, Done, FsStore};
use crate::storage::{Listed, StorageError};

/// Objects per page (as many as an S3 LIST page holds).
const PAGE: usize = 1000;
/// Pages the walk may run ahead of the reader.
const AHEAD: usize = 2;

/// A walk of the store under a prefix, keys ascending.
pub struct FsPages {
    store: FsStore,
    prefix: String,
    /// Keys after this one only.
    after: Option<String>,
    pages: Option<mpsc::Receiver<Done<Vec<Listed>>>>,
    done: bool,
    /// Pages read so far (the fs counterpart of LIST requests).
    pub requests: u64,
}

impl FsPages {
    pub fn new(store: FsStore, prefix: &str) -> Self {
        Self {
            store,
            prefix: prefix.to_string(),
            after: None,
            pages: None,
            done: false,
            requests: 0,
        }
    }

    /// The objects after `key` only: the walk skips what sorts before it unread.
    pub fn after(mut self, key: Option<&str>) -> Self {
        self.after = key.map(str::to_string);
        self
    }

    /// The next page, or `None` once the walk ended. Dropping the listing stops the walk.
    pub async fn next(&mut self) -> Result<Option<Vec<Listed>>, StorageError> {
        if self.done {
            return Ok(None);
        }
        let store = self.store.clone();
        let (prefix, after) = (self.prefix.clone(), self.after.clone());
        let pages = self
            .pages
            .get_or_insert_with(|| start(store, prefix, after));
        match pages.recv().await {
            Some(Ok(page)) => {
                self.requests += 1;
                Ok(Some(page))
            }
            Some(Err(fault)) => {
                self.done = true;
                Err(self.store.fault("ListObjects", &self.prefix, fault))
            }
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }
}

/// Starts the walk; the channel closes after the last page (or after an error).
fn start(
    store: FsStore,
    prefix: String,
    after: Option<String>,
) -> mpsc::Receiver<Done<Vec<Listed>>> {
    let (tx, rx) = mpsc::channel(AHEAD);
    tokio::task::spawn_blocking(move || {
        let layout = &store.inner.layout;
        let mut page = Vec::with_capacity(PAGE);
        let walked = walk::each_after(layout, &prefix, after.as_deref(), |listed| {
            page.push(listed);
            if page.len() < PAGE {
                return true;
            }
            let full = std::mem::replace(&mut page, Vec::with_capacity(PAGE));
            tx.blocking_send(Ok(full)).is_ok()
        });
        let last = match walked {
            Ok(true) if !page.is_empty() => Ok(page),
            Ok(_) => return,
            Err(fault) => Err(unset(layout, fault)),
        };
        // The reader may be gone: nothing more to do either way.
        let _ = tx.blocking_send(last);
    });
    rx
}
