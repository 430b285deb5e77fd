//! `GarbageCollector`: deletes a transient source version once every target holds it, verified.
//!
//! For each GC task it looks at every target copy the status processor recorded (HEAD of that
//! exact target version): it must be ferry's copy of this source version (stamp), with the
//! same size and source ETag. Only if every check passes is exactly that source version
//! deleted. A failed check deletes nothing and says why; the source copy stays. What the task
//! says of the configuration is not trusted: [`Policy`] checks it against the running one.

mod policy;

pub use policy::Policy;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::bus::{Delivery, Publisher, Subscription, Topics};
use crate::config::{GcConfig, ReplicationConfig};
use crate::model::{EntryKind, GcTask, TargetCopy};
use crate::storage::{etag_is_md5, ErrorKind, Head, StorageError, Store, Stores};

use super::replication::is_copy_of;
use super::runner::{self, Inbox, Stage};
use super::{sleep_or_shutdown, StageError};

const STAGE: &str = "gc";

/// Counters tests and operators read.
#[derive(Debug, Default)]
pub struct GcStats {
    pub deleted: AtomicU64,
    pub refused: AtomicU64,
    pub retries: AtomicU64,
    pub dead_letters: AtomicU64,
}

/// The garbage-collection stage.
pub struct GarbageCollector {
    config: GcConfig,
    retry: ReplicationConfig,
    policy: Policy,
    stores: Stores,
    publisher: Publisher,
    topics: Topics,
    subscription: Subscription,
    pub stats: Arc<GcStats>,
}

/// Why a version is not deleted.
#[derive(Debug)]
enum Verdict {
    Delete,
    /// The source version was already deleted (a redelivered task, or a client removed it).
    Gone,
    Refuse(String),
}

impl GarbageCollector {
    pub fn new(
        config: GcConfig,
        retry: ReplicationConfig,
        policy: Policy,
        stores: Stores,
        publisher: Publisher,
        topics: Topics,
        subscription: Subscription,
    ) -> Self {
        Self {
            config,
            retry,
            policy,
            stores,
            publisher,
            topics,
            subscription,
            stats: Arc::default(),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StageError> {
        let this = Arc::new(self);
        let tasks = TaskTracker::new();
        runner::consume(this.clone(), &tasks, &shutdown).await;
        tasks.close();
        tasks.wait().await;
        this.subscription
            .commit()
            .map_err(|source| StageError::Bus {
                stage: STAGE,
                source,
            })
    }

    /// Verifies and deletes, retrying transient failures; acknowledges when settled.
    async fn collect(&self, task: GcTask, delivery: Delivery, shutdown: &CancellationToken) {
        let mut backoff = Backoff::new(self.retry.retry.initial_delay, self.retry.retry.max_delay);
        loop {
            // Each target's copy is verified before the delete whoever asks; a member that lost
            // the partition leaves even that to the new owner.
            if !delivery.still_owned().await {
                return;
            }
            match self.try_collect(&task).await {
                Ok(Verdict::Delete) => {
                    self.stats.deleted.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::metrics().gc_deletions.inc();
                    tracing::info!("transient source copy deleted; every target holds it");
                    break;
                }
                Ok(Verdict::Gone) => {
                    tracing::info!("transient source copy already gone; nothing to delete");
                    break;
                }
                Ok(Verdict::Refuse(why)) => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::metrics().gc_refusals.inc();
                    tracing::error!(reason = %why, "not deleting the transient source copy");
                    break;
                }
                Err(e)
                    if matches!(
                        e.kind,
                        ErrorKind::Transient | ErrorKind::Unreachable | ErrorKind::Config
                    ) =>
                {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "GC check or delete failed, will retry");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return;
                    }
                }
                Err(e) => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "GC failed permanently; the source copy stays");
                    break;
                }
            }
        }
        delivery.ack();
    }

    async fn try_collect(&self, task: &GcTask) -> Result<Verdict, StorageError> {
        let entry = &task.entry;
        if let Some(why) = self.policy.refusal(task) {
            return Ok(Verdict::Refuse(why));
        }
        let Some(source) = self.stores.get(&entry.source) else {
            return Ok(Verdict::Refuse(format!(
                "no location {:?} in this configuration",
                entry.source
            )));
        };
        if task.copies.is_empty() || task.copies.len() != entry.targets.len() {
            return Ok(Verdict::Refuse(
                "the task does not account for every target".into(),
            ));
        }
        for copy in &task.copies {
            let Some(target) = self.stores.get(&copy.target) else {
                return Ok(Verdict::Refuse(format!(
                    "no location {:?} in this configuration",
                    copy.target
                )));
            };
            if let Some(why) = check_copy(target, task, copy).await? {
                return Ok(Verdict::Refuse(why));
            }
        }
        if entry.version_id.is_none() {
            // Unversioned source: only delete if the object is still the one replicated.
            match source.head(&entry.key, None).await? {
                Head::Object(h) if h.etag == entry.etag => {}
                Head::Missing | Head::DeleteMarker { .. } => return Ok(Verdict::Delete),
                _ => return Ok(Verdict::Refuse("the source object was overwritten since; its new content is not replicated yet".into())),
            }
        }
        match source
            .delete_version(&entry.key, entry.version_id.as_deref())
            .await
        {
            Ok(()) => Ok(Verdict::Delete),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(Verdict::Gone),
            Err(e) => Err(e),
        }
    }
}

/// Checks that `copy` on `target` is a verified copy of the task's version; `Some(reason)` if not.
async fn check_copy(
    target: &Store,
    task: &GcTask,
    copy: &TargetCopy,
) -> Result<Option<String>, StorageError> {
    let entry = &task.entry;
    match entry.kind {
        EntryKind::Object => match target.head(&entry.key, copy.version_id.as_deref()).await? {
            Head::Object(h) if !is_copy_of(&h, entry) => Ok(Some(format!(
                "target {} version {:?} is not ferry's copy of this source version",
                copy.target, copy.version_id
            ))),
            Head::Object(h) if h.size != entry.size => Ok(Some(format!(
                "target {} holds {} bytes, the source version has {}",
                copy.target, h.size, entry.size
            ))),
            // Both ETags are plain MD5s of the content: they must be equal. (Multipart ETags
            // depend on the part layout, which may differ between source and copy; those
            // copies were checked part by part when they were made.)
            Head::Object(h) if matches!((&h.etag, &entry.etag), (Some(t), Some(s)) if etag_is_md5(t) && etag_is_md5(s) && t != s) => {
                Ok(Some(format!(
                    "target {} holds content with ETag {:?}, the source version's is {:?}",
                    copy.target, h.etag, entry.etag
                )))
            }
            Head::Object(_) => Ok(None),
            _ => Ok(Some(format!(
                "target {} does not hold version {:?}",
                copy.target, copy.version_id
            ))),
        },
        EntryKind::VersionDelete => {
            Ok(Some("a version deletion is never garbage-collected".into()))
        }
        EntryKind::DeleteMarker => {
            // A delete marker carries no data: the target must show the key deleted, or hold
            // the marker ferry wrote.
            if let Some(version) = &copy.version_id {
                let versions = target.key_versions(&entry.key).await?;
                if versions.iter().any(|l| {
                    l.kind == EntryKind::DeleteMarker && l.version_id.as_ref() == Some(version)
                }) {
                    return Ok(None);
                }
            }
            match target.head(&entry.key, None).await? {
                Head::DeleteMarker { .. } | Head::Missing => Ok(None),
                Head::Object(_) => Ok(Some(format!(
                    "target {} does not hold the delete marker and shows the key present",
                    copy.target
                ))),
            }
        }
    }
}

impl Stage for GarbageCollector {
    type Input = GcTask;
    type Admitted = ();
    const NAME: &'static str = STAGE;
    const WHAT: &'static str = "GC task";

    fn inbox(&self) -> Inbox<'_> {
        Inbox {
            subscription: &self.subscription,
            publisher: &self.publisher,
            dead_letter_topic: &self.topics.dead_letter,
            dead_letters: &self.stats.dead_letters,
            concurrency: self.config.concurrency,
        }
    }

    fn admit(&self, _: &GcTask) -> Result<(), String> {
        Ok(())
    }

    fn span(task: &GcTask) -> tracing::Span {
        let e = &task.entry;
        tracing::info_span!("entry", stage = STAGE, rule = %e.rule, bucket = %e.bucket, key = %e.key, version = e.version_id.as_deref().unwrap_or("null"))
    }

    async fn handle(
        self: Arc<Self>,
        task: GcTask,
        (): (),
        delivery: Delivery,
        shutdown: CancellationToken,
    ) {
        self.collect(task, delivery, &shutdown).await;
    }
}
