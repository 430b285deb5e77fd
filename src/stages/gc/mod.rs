//! `GarbageCollector`: deletes a transient source version once every target holds it, verified.
//!
//! For each GC task it looks at every target copy the status processor recorded (HEAD of that
//! exact target version): it must be ferry's copy of this source version (stamp), with the
//! same size and source ETag. Only if every check passes is exactly that source version
//! deleted. A failed check deletes nothing and says why; the source copy stays. What the task
//! says of the configuration is not trusted: [`Policy`] checks it against the running one.

mod policy;

pub use policy::Policy;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::bus::{Delivery, Publisher, Subscription, Topics};
use crate::config::GcConfig;
use crate::model::{EntryKind, GcTask, TargetCopy};
use crate::storage::{etag_is_md5, ErrorKind, Head, StorageError, Store, Stores};

use super::board::StageStatus;
use super::runner::{self, Inbox, Stage};
use super::{sleep_or_shutdown, StageError};
use crate::model::stamps::is_copy_of;

const STAGE: &str = "gc";

/// The garbage-collection stage.
pub struct GarbageCollector {
    config: GcConfig,
    policy: Policy,
    stores: Stores,
    publisher: Publisher,
    topics: Topics,
    subscription: Subscription,
    /// Its counters on the stage board; a refusal is its error.
    status: Arc<StageStatus>,
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
        policy: Policy,
        stores: Stores,
        publisher: Publisher,
        topics: Topics,
        subscription: Subscription,
    ) -> Self {
        Self {
            config,
            policy,
            stores,
            publisher,
            topics,
            subscription,
            status: Arc::default(),
        }
    }

    /// The collector's counters, for the stage board.
    pub fn status(&self) -> Arc<StageStatus> {
        self.status.clone()
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StageError> {
        let this = Arc::new(self);
        let tasks = TaskTracker::new();
        runner::consume(this.clone(), &tasks, &shutdown).await;
        tasks.close();
        tasks.wait().await;
        this.subscription
            .commit()
            .await
            .map_err(|source| StageError::Bus {
                stage: STAGE,
                source,
            })
    }

    /// Verifies and deletes, retrying transient failures; acknowledges when settled.
    async fn collect(&self, task: GcTask, delivery: Delivery, shutdown: &CancellationToken) {
        let retry = &self.config.retry;
        let mut backoff = Backoff::new(retry.initial_delay, retry.max_delay);
        loop {
            // Each target's copy is verified before the delete whoever asks; a member that lost
            // the partition leaves even that to the new owner.
            if !delivery.still_owned().await {
                return;
            }
            match self.try_collect(&task).await {
                Ok(Verdict::Delete) => {
                    crate::metrics::metrics().gc_deletions.inc();
                    tracing::info!("transient source copy deleted; every target holds it");
                    break;
                }
                Ok(Verdict::Gone) => {
                    tracing::info!("transient source copy already gone; nothing to delete");
                    break;
                }
                Ok(Verdict::Refuse(why)) => {
                    crate::metrics::metrics().gc_refusals.inc();
                    tracing::error!(reason = %why, "not deleting the transient source copy");
                    self.status
                        .error(format!("{}: not deleted: {why}", task.entry.key));
                    break;
                }
                Err(e)
                    if matches!(
                        e.kind,
                        ErrorKind::Transient | ErrorKind::Unreachable | ErrorKind::Config
                    ) =>
                {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "GC check or delete failed, will retry");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "GC failed permanently; the source copy stays");
                    self.status
                        .error(format!("{}: not deleted: {e}", task.entry.key));
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
            Head::Object(h) if !is_copy_of(&h.meta.user, entry) => Ok(Some(format!(
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
            status: &self.status,
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

#[cfg(test)]
mod tests {
    //! The collector's verdicts against real `fs` stores and the embedded queue (no servers).

    use base64::Engine;
    use bytes::Bytes;
    use md5::{Digest, Md5};

    use super::*;
    use crate::model::stamps::Stamps;
    use crate::model::ReplicationEntry;
    use crate::stages::testing::local_site;
    use crate::storage::{ObjectMeta, Written};

    struct Site {
        _dir: tempfile::TempDir,
        gc: GarbageCollector,
    }

    async fn site() -> Site {
        let site = local_site(
            r#"
[queue]
kind = "embedded"
path = "{root}/queue"

[locations.inbox]
kind = "fs"
path = "{root}/inbox"
transient = true

[locations.site]
kind = "fs"
path = "{root}/site"

[[rules]]
name = "all"
source = "inbox"
targets = ["site"]
"#,
        )
        .await;
        let (config, bus, topics) = (&site.config, &site.bus, &site.topics);
        let stores = Stores::connect(config).await;
        for store in stores.iter() {
            store.check().await.expect("the store sets itself up");
        }
        let gc = GarbageCollector::new(
            config.gc.clone(),
            Policy::new(config),
            stores,
            bus.publisher(),
            topics.clone(),
            bus.subscribe("gc", &[&topics.gc]).expect("subscribe"),
        );
        Site { _dir: site.dir, gc }
    }

    fn store<'a>(site: &'a Site, name: &str) -> &'a Store {
        site.gc.stores.get(name).expect("a configured location")
    }

    async fn put(store: &Store, key: &str, body: &[u8], meta: &ObjectMeta) -> Written {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body));
        store
            .put(key, Bytes::copy_from_slice(body), &md5, meta, None)
            .await
            .expect("put")
    }

    /// A source version in the inbox, and the GC task of its copy (made by `copy`, given the
    /// entry; `None` leaves the target without it).
    async fn task(
        site: &Site,
        body: &[u8],
        copy: impl FnOnce(&ReplicationEntry) -> Option<(Vec<u8>, ObjectMeta)>,
    ) -> GcTask {
        let written = put(store(site, "inbox"), "k", body, &ObjectMeta::default()).await;
        let entry = ReplicationEntry {
            schema: crate::model::SCHEMA,
            rule: "all".into(),
            source: "inbox".into(),
            bucket: "inbox".into(),
            key: "k".into(),
            version_id: written.version_id.clone(),
            kind: EntryKind::Object,
            size: body.len() as u64,
            etag: written.etag.clone(),
            last_modified_ms: written.last_modified_ms.unwrap_or_default(),
            targets: vec!["site".into()],
            transient: true,
            enqueued_at_ms: 0,
        };
        let target_version = match copy(&entry) {
            Some((data, meta)) => put(store(site, "site"), "k", &data, &meta).await.version_id,
            None => Some("nothing-there".into()),
        };
        GcTask {
            schema: crate::model::SCHEMA,
            entry,
            copies: vec![TargetCopy {
                target: "site".into(),
                version_id: target_version,
            }],
        }
    }

    fn stamped(entry: &ReplicationEntry) -> ObjectMeta {
        let mut meta = ObjectMeta::default();
        Stamps::of(entry, entry.etag.as_deref()).write(&mut meta.user);
        meta
    }

    async fn source_holds_it(site: &Site) -> bool {
        matches!(
            store(site, "inbox").head("k", None).await.expect("head"),
            Head::Object(_)
        )
    }

    #[tokio::test]
    async fn a_verified_copy_lets_the_source_version_go_once() {
        let site = site().await;
        let task = task(&site, b"data", |e| Some((b"data".to_vec(), stamped(e)))).await;
        let verdict = site.gc.try_collect(&task).await.expect("no storage error");
        assert!(matches!(verdict, Verdict::Delete), "{verdict:?}");
        assert!(!source_holds_it(&site).await);
        // A redelivered task finds the version gone and changes nothing.
        let again = site.gc.try_collect(&task).await.expect("no storage error");
        assert!(matches!(again, Verdict::Gone), "{again:?}");
    }

    #[tokio::test]
    async fn nothing_is_deleted_without_ferrys_copy_of_that_version() {
        for (case, copy) in [
            ("unstamped", Some((b"data".to_vec(), None))),
            ("other size", Some((b"data!".to_vec(), Some(())))),
            ("missing", None),
        ] {
            let site = site().await;
            let task = task(&site, b"data", |e| {
                copy.map(|(data, stamp)| {
                    let meta = stamp.map_or_else(ObjectMeta::default, |()| stamped(e));
                    (data, meta)
                })
            })
            .await;
            let verdict = site.gc.try_collect(&task).await.expect("no storage error");
            let Verdict::Refuse(why) = verdict else {
                panic!("{case}: deleted ({verdict:?})");
            };
            let expected = match case {
                "unstamped" => "not ferry's copy",
                "other size" => "holds 5 bytes",
                _ => "does not hold",
            };
            assert!(why.contains(expected), "{case}: {why}");
            assert!(
                source_holds_it(&site).await,
                "{case}: the source lost its data"
            );
        }
    }

    #[tokio::test]
    async fn a_task_that_leaves_out_a_target_is_refused() {
        let site = site().await;
        let mut task = task(&site, b"data", |e| Some((b"data".to_vec(), stamped(e)))).await;
        task.copies.clear();
        let verdict = site.gc.try_collect(&task).await.expect("no storage error");
        assert!(matches!(verdict, Verdict::Refuse(_)), "{verdict:?}");
        assert!(source_holds_it(&site).await);
    }
}
