//! `PendingAborts`: multipart uploads whose abort failed (the target was away), aborted later
//! so a failed copy does not leave its parts billed on the target.

use std::sync::{Arc, Mutex};

use crate::storage::{ErrorKind, Store};

/// One upload still to abort.
struct PendingAbort {
    target: Store,
    key: String,
    upload_id: String,
}

/// Uploads to abort when their target answers again; shared by every copy of the process.
#[derive(Clone, Default)]
pub struct PendingAborts(Arc<Mutex<Vec<PendingAbort>>>);

impl PendingAborts {
    /// Aborts `upload_id`; if the target cannot be reached, remembers it for later.
    pub(super) async fn abort(&self, target: &Store, key: &str, upload_id: &str) {
        match target.abort_multipart(key, upload_id).await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, upload_id, "could not abort a failed multipart upload yet; will retry");
                self.lock().push(PendingAbort {
                    target: target.clone(),
                    key: key.to_string(),
                    upload_id: upload_id.to_string(),
                });
            }
        }
    }

    /// Retries aborting earlier failed uploads on these targets.
    pub(super) async fn retry(&self, targets: &[Store]) {
        let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
        let mine: Vec<PendingAbort> = {
            let mut pending = self.lock();
            let (mine, rest) = pending
                .drain(..)
                .partition(|p| names.contains(&p.target.name()));
            *pending = rest;
            mine
        };
        for p in mine {
            self.abort(&p.target, &p.key, &p.upload_id).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PendingAbort>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
