//! `FsStore`: a local directory used as an unversioned bucket (`kind = "fs"` locations).
//!
//! Object data lives at `<root>/<key>` (keys with '/' make subdirectories, so the directory
//! is browsable); its sidecar, the commit record of the write, at
//! `<root>/.ferry/meta/<key>.json`; temporary files under `<root>/.ferry/tmp/` and multipart
//! uploads under `<root>/.ferry/uploads/<upload id>/`. Keys map strictly inside the root
//! ([`keys`]); `.ferry` as a first key component is reserved.
//!
//! The store keeps one version per key, but every write gets a fresh version id, so a reader
//! (or the garbage collector) can ask for exactly the object it saw and is told NotFound once
//! it was overwritten. Writes are atomic and durable: temporary file, MD5 check, fsync,
//! rename, fsync of the directory — the sidecar first (naming the object it replaces), then
//! the data file, so a failed write leaves the previous object intact ([`meta::Sidecar`]).
//!
//! Files that another program (or an operator) put there are objects too: a data file that no
//! sidecar describes is an *ordinary file*, whose version id is derived from its modification
//! time, inode and size; listings show it once it has not changed for `stable_after`, and the
//! first complete read records its MD5 as its ETag. A read that sees the file change fails.

mod beneath;
mod clock;
mod dirs;
mod disk;
pub(crate) mod keys;
mod locks;
pub(crate) mod meta;
mod multipart;
mod objects;
mod pages;
#[cfg(test)]
mod tests;
mod walk;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use md5::{Digest, Md5};

use super::{
    BodyChunks, ErrorCode, ErrorKind, Head, Listed, ObjectBody, ObjectHead, ObjectMeta,
    StorageError, Written,
};
use crate::model::EntryKind;
use disk::{Done, Fault, Layout, Temp, Tree};
use locks::KeyLocks;
use meta::{decode_tagging, Description, Sidecar};
use objects::Pending;
pub use pages::FsPages;

/// A GET body is read from the data file in pieces of this size: large enough that the
/// blocking-pool hop per piece costs little, small enough to keep memory flat.
const READ_CHUNK: usize = 1 << 20;
/// A temporary file untouched this long was left by a crashed process: no write of a running
/// one pauses that long between two of its own steps.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);
/// Like S3 lifecycle rules for incomplete uploads: an upload idle for a week is abandoned.
const STALE_UPLOAD: Duration = Duration::from_secs(7 * 24 * 3600);

/// One directory of one location. Cheap to clone; clones share the key locks.
#[derive(Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The location's name in the configuration, for errors and logs.
    name: String,
    /// The bucket name entries carry (for an `fs` location, the location's name).
    bucket: String,
    layout: Layout,
    /// Serialises the writes and deletes of one key within this process.
    locks: KeyLocks,
    /// `.ferry/lock`, locked by [`FsStore::check`] for as long as this process runs: the
    /// per-key locks hold within one process only, so a second process is refused.
    owner: std::sync::OnceLock<fs::File>,
}

impl FsStore {
    /// The store for the directory `root`, which lists ordinary files once they have not
    /// changed for `stable_after`; touches nothing on disk ([`Self::check`] does).
    pub fn new(name: &str, bucket: &str, root: PathBuf, stable_after: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                name: name.to_string(),
                bucket: bucket.to_string(),
                layout: Layout::new(root, stable_after),
                locks: KeyLocks::default(),
                owner: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    pub fn root(&self) -> &Path {
        &self.inner.layout.root
    }

    /// An error found by ferry itself about this store.
    pub fn local_error(
        &self,
        op: &'static str,
        key: &str,
        kind: ErrorKind,
        message: String,
    ) -> StorageError {
        StorageError {
            kind,
            op,
            location: self.inner.name.clone(),
            bucket: self.inner.bucket.clone(),
            key: key.to_string(),
            message,
            code: None,
        }
    }

    /// Creates the directory and ferry's own subdirectories if missing, and checks a file can
    /// be written there; removes what a crashed process left behind long ago.
    pub async fn check(&self) -> Result<(), StorageError> {
        self.blocking("check directory", "", |layout| {
            let dirs = [
                layout.root.clone(),
                layout.tmp_dir(),
                layout.base(Tree::Meta),
                layout.uploads_dir(),
            ];
            for dir in dirs {
                fs::create_dir_all(&dir).map_err(|e| Fault::io("create the directory", &dir, e))?;
            }
            let mut probe = Temp::create(&layout.tmp()?)?;
            probe.write(b"ferry")?;
            probe.sync()?;
            drop(probe);
            sweep(layout);
            Ok(())
        })
        .await
        .map_err(|mut e| {
            e.kind = ErrorKind::Config;
            e
        })
    }

    /// Makes this process the directory's only user for as long as it runs (`.ferry/lock`):
    /// the per-key locks hold within one process only, so another process using it is
    /// refused, naming it. Called once at start; a second call changes nothing.
    pub async fn claim(&self) -> Result<(), StorageError> {
        if self.inner.owner.get().is_some() {
            return Ok(());
        }
        let owner = self
            .blocking("lock the directory", "", |layout| {
                let dir = layout.root.join(".ferry");
                fs::create_dir_all(&dir).map_err(|e| Fault::io("create the directory", &dir, e))?;
                own(layout)
            })
            .await
            .map_err(|mut e| {
                e.kind = ErrorKind::Config;
                e
            })?;
        if let Some(file) = owner {
            let _ = self.inner.owner.set(file);
        }
        Ok(())
    }

    /// For readiness, often: the directories are there (no write, no sweep).
    pub async fn probe(&self) -> Result<(), StorageError> {
        self.blocking("check directory", "", |layout| {
            for dir in [layout.root.clone(), layout.tmp_dir()] {
                let meta = fs::metadata(&dir).map_err(|e| Fault::io("stat", &dir, e))?;
                if !meta.is_dir() {
                    return Err(Fault::io("stat", &dir, io::Error::other("not a directory")));
                }
            }
            Ok(())
        })
        .await
    }

    /// Removes what crashed processes left behind long ago: temporary files and abandoned
    /// multipart uploads.
    pub async fn sweep(&self) -> Result<(), StorageError> {
        self.blocking("sweep", "", |layout| {
            sweep(layout);
            Ok(())
        })
        .await
    }

    /// A directory keeps one version per key.
    pub async fn is_versioned(&self) -> Result<bool, StorageError> {
        Ok(false)
    }

    /// The same as [`Self::list_current`]: there are no older versions or delete markers.
    pub async fn list_versions(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        self.list_current(prefix).await
    }

    /// Hands the key of every object to `key`.
    pub async fn each_key(&self, mut key: impl FnMut(&str)) -> Result<(), StorageError> {
        let mut pages = self.pages("");
        while let Some(page) = pages.next().await? {
            page.iter().for_each(|l| key(&l.key));
        }
        Ok(())
    }

    /// The objects under `prefix` a page at a time, keys ascending ([`walk::each`]).
    pub fn pages(&self, prefix: &str) -> FsPages {
        FsPages::new(self.clone(), prefix)
    }

    /// Every object under `prefix`, sorted by key (ordinary files once stable).
    pub async fn list_current(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        let owned = prefix.to_string();
        self.blocking("ListObjects", prefix, move |layout| {
            walk::list(layout, &owned)
        })
        .await
    }

    /// The current object of `key`; `Missing` if there is none or it is not `version_id`.
    pub async fn head(&self, key: &str, version_id: Option<&str>) -> Result<Head, StorageError> {
        match self.current("HeadObject", key, version_id, false).await {
            Ok((sidecar, _)) => Ok(Head::Object(sidecar.head())),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(Head::Missing),
            Err(e) => Err(e),
        }
    }

    /// The size of the first part of an object completed from more than one part.
    pub async fn first_part_size(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Option<u64>, StorageError> {
        let (sidecar, _) = self
            .current("HeadObject (part 1)", key, version_id, false)
            .await?;
        Ok((sidecar.parts.len() > 1).then(|| sidecar.parts[0]))
    }

    /// Starts reading the current object (which must be `version_id`, if given).
    pub async fn get(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(ObjectHead, ObjectBody), StorageError> {
        let (sidecar, file) = self.current("GetObject", key, version_id, true).await?;
        let body = FsBody {
            file,
            store: self.clone(),
            key: key.to_string(),
            md5: sidecar.is_ordinary().then(Md5::new),
            seen: sidecar.clone(),
        };
        Ok((sidecar.head(), ObjectBody::from(body)))
    }

    /// The tags of the current object (which must be `version_id`, if given).
    pub async fn tags(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let (sidecar, _) = self
            .current("GetObjectTagging", key, version_id, false)
            .await?;
        Ok(sidecar.description.tags)
    }

    /// Writes a whole object after checking it against `content_md5` (base64).
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_md5: &str,
        meta: &ObjectMeta,
        tagging: Option<String>,
    ) -> Result<Written, StorageError> {
        const OP: &str = "PutObject";
        let comps = self.comps(OP, key)?;
        let description = self.describe(OP, key, meta, tagging)?;
        let content_md5 = content_md5.to_string();
        let pending = self
            .blocking(OP, key, move |layout| {
                let md5 = disk::verify_md5(&body, &content_md5)?;
                let mut temp = Temp::create(&layout.tmp()?)?;
                temp.write(&body)?;
                Pending::whole(temp, &md5, description)
            })
            .await?;
        self.commit(OP, key, comps, pending).await
    }

    /// Writes a whole object from a stream of `length` bytes; checks `content_md5`, if given,
    /// as [`Self::put`] does. An aborted or short stream leaves nothing behind.
    pub async fn put_stream(
        &self,
        key: &str,
        length: u64,
        content_md5: Option<&str>,
        mut body: BodyChunks,
        meta: &ObjectMeta,
        tagging: Option<String>,
    ) -> Result<Written, StorageError> {
        const OP: &str = "PutObject";
        let comps = self.comps(OP, key)?;
        let description = self.describe(OP, key, meta, tagging)?;
        let content_md5 = content_md5.map(str::to_string);
        let pending = self
            .blocking(OP, key, move |layout| {
                let expected = content_md5.as_deref().map(disk::decode_md5).transpose()?;
                let mut temp = Temp::create(&layout.tmp()?)?;
                let mut md5 = Md5::new();
                let mut received = 0u64;
                while let Some(chunk) = body.blocking_recv() {
                    let chunk =
                        chunk.map_err(|e| Fault::new(ErrorKind::Transient, e.to_string()))?;
                    received += chunk.len() as u64;
                    md5.update(&chunk);
                    temp.write(&chunk)?;
                }
                if received != length {
                    return Err(Fault::coded(
                        ErrorKind::Transient,
                        ErrorCode::IncompleteBody,
                        format_args!("received {received} of {length} bytes"),
                    ));
                }
                let md5: [u8; 16] = md5.finalize().into();
                if let Some(expected) = expected {
                    disk::check_md5(&expected, md5)?;
                }
                Pending::whole(temp, &md5, description)
            })
            .await?;
        self.commit(OP, key, comps, pending).await
    }

    /// At most `bytes` of parts staged in open multipart uploads at once (UploadPart answers
    /// SlowDown beyond); none set, no limit.
    pub fn limit_staged(&self, bytes: u64) {
        self.inner.layout.staged.set_limit(bytes);
    }

    /// The bytes of parts staged in open multipart uploads now.
    pub fn staged_bytes(&self) -> u64 {
        self.inner.layout.staged.bytes()
    }

    /// Starts a multipart upload carrying the object's headers, metadata and tags.
    pub async fn create_multipart(
        &self,
        key: &str,
        meta: &ObjectMeta,
        tagging: Option<String>,
    ) -> Result<String, StorageError> {
        const OP: &str = "CreateMultipartUpload";
        self.comps(OP, key)?;
        let description = self.describe(OP, key, meta, tagging)?;
        let owned = key.to_string();
        self.blocking(OP, key, move |layout| {
            multipart::create(layout, &owned, description)
        })
        .await
    }

    /// Stages one part after checking it against `content_md5`; returns its hex MD5 (ETag).
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
        content_md5: &str,
    ) -> Result<String, StorageError> {
        let (owned, id, md5) = (
            key.to_string(),
            upload_id.to_string(),
            content_md5.to_string(),
        );
        self.blocking("UploadPart", key, move |layout| {
            multipart::upload_part(layout, &owned, &id, part_number, &body, &md5)
        })
        .await
    }

    /// Joins the `(part number, ETag)` parts in order into the object and drops the upload.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<Written, StorageError> {
        const OP: &str = "CompleteMultipartUpload";
        let comps = self.comps(OP, key)?;
        let (owned, id, parts) = (key.to_string(), upload_id.to_string(), parts.to_vec());
        let pending = self
            .blocking(OP, key, move |layout| {
                multipart::assemble(layout, &owned, &id, &parts)
            })
            .await?;
        let written = self.commit(OP, key, comps, pending).await?;
        let id = upload_id.to_string();
        self.blocking(OP, key, move |layout| {
            multipart::discard(layout, &id);
            Ok(())
        })
        .await?;
        Ok(written)
    }

    /// Abandons a multipart upload and its parts.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        let (owned, id) = (key.to_string(), upload_id.to_string());
        self.blocking("AbortMultipartUpload", key, move |layout| {
            multipart::abort(layout, &owned, &id)
        })
        .await
    }

    /// Deletes the current object; with `version_id`, only if it is that version (else
    /// NotFound). Deleting a key without an object succeeds.
    pub async fn delete_version(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(), StorageError> {
        const OP: &str = "DeleteObject";
        let comps = self.comps(OP, key)?;
        let wanted = version_id.map(str::to_string);
        let _guard = self.inner.locks.lock(key).await;
        self.blocking(OP, key, move |layout| {
            if let Some(wanted) = wanted.as_deref() {
                let current = objects::lookup(layout, &comps, false)?.map(|(s, _)| s);
                if current.as_ref().is_none_or(|s| s.version_id != wanted) {
                    return Err(missing(current.as_ref(), Some(wanted)));
                }
            }
            objects::remove(layout, &comps)
        })
        .await
    }

    /// Deletes the current object; a directory keeps no delete markers, so there is no
    /// version id to return.
    pub async fn put_delete_marker(&self, key: &str) -> Result<Written, StorageError> {
        self.delete_version(key, None).await?;
        Ok(Written {
            version_id: None,
            etag: None,
            last_modified_ms: None,
        })
    }

    /// The current object of exactly `key`, if there is one.
    pub async fn key_versions(&self, key: &str) -> Result<Vec<Listed>, StorageError> {
        Ok(match self.head(key, None).await? {
            Head::Object(h) => vec![Listed {
                key: key.to_string(),
                version_id: h.version_id,
                kind: EntryKind::Object,
                size: h.size,
                etag: h.etag,
                last_modified_ms: h.last_modified_ms,
                is_latest: true,
            }],
            _ => Vec::new(),
        })
    }

    /// The committed object of `key` (with `open`, its data file opened), which must be
    /// `version_id` if given; NotFound otherwise.
    async fn current(
        &self,
        op: &'static str,
        key: &str,
        version_id: Option<&str>,
        open: bool,
    ) -> Result<(Sidecar, Option<File>), StorageError> {
        let comps = self.comps(op, key)?;
        let wanted = version_id.map(str::to_string);
        // Under the key's lock: never between a write's data rename and its sidecar.
        let _guard = self.inner.locks.lock(key).await;
        self.blocking(op, key, move |layout| {
            match objects::lookup(layout, &comps, open)? {
                Some(found) if wanted.as_deref().is_none_or(|w| w == found.0.version_id) => {
                    Ok(found)
                }
                other => Err(missing(other.as_ref().map(|(s, _)| s), wanted.as_deref())),
            }
        })
        .await
    }

    /// Writes `pending` as the object `key` under the key's lock.
    async fn commit(
        &self,
        op: &'static str,
        key: &str,
        comps: Vec<String>,
        pending: Pending,
    ) -> Result<Written, StorageError> {
        let _guard = self.inner.locks.lock(key).await;
        let sidecar = self
            .blocking(op, key, move |layout| {
                // Something on the way vanished under the write (removed by another program):
                // worth another try, never a "no such key" for a write.
                objects::commit(layout, &comps, pending).map_err(|mut fault| {
                    if fault.kind == ErrorKind::NotFound {
                        fault.kind = ErrorKind::Transient;
                    }
                    fault
                })
            })
            .await?;
        Ok(Written {
            version_id: Some(sidecar.version_id),
            etag: Some(sidecar.etag),
            last_modified_ms: Some(sidecar.last_modified_ms),
        })
    }

    fn comps(&self, op: &'static str, key: &str) -> Result<Vec<String>, StorageError> {
        keys::components(key).map_err(|why| {
            self.local_error(
                op,
                key,
                ErrorKind::Permanent,
                format!("the key cannot be stored in a directory: {why}"),
            )
        })
    }

    fn describe(
        &self,
        op: &'static str,
        key: &str,
        meta: &ObjectMeta,
        tagging: Option<String>,
    ) -> Result<Description, StorageError> {
        let tags = decode_tagging(tagging.as_deref())
            .map_err(|m| self.local_error(op, key, ErrorKind::Permanent, m))?;
        Ok(Description::new(meta, tags))
    }

    /// Records the ETag of the ordinary file `key` read whole as `seen` (best effort: a
    /// read-only directory keeps its files as they are, and they are hashed on every read).
    async fn adopt(&self, key: &str, seen: Sidecar, md5: [u8; 16]) {
        let Ok(comps) = keys::components(key) else {
            return;
        };
        let _guard = self.inner.locks.lock(key).await;
        let recorded = self
            .blocking("GetObject (record the ETag)", key, move |layout| {
                objects::adopt(layout, &comps, &seen, &md5)
            })
            .await;
        if let Err(e) = recorded {
            tracing::debug!(error = %e, "cannot record an ordinary file's ETag");
        }
    }

    /// Runs `work` on the blocking pool; its failures as [`unset`] and [`Self::fault`] say.
    async fn blocking<T, F>(&self, op: &'static str, key: &str, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Layout) -> Done<T> + Send + 'static,
    {
        let store = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let layout = &store.inner.layout;
            work(layout).map_err(|fault| unset(layout, fault))
        })
        .await;
        match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(fault)) => Err(self.fault(op, key, fault)),
            Err(e) => Err(self.local_error(
                op,
                key,
                ErrorKind::Transient,
                format!("the file-system task failed: {e}"),
            )),
        }
    }

    /// The error of a failed `op`, naming paths relative to the root.
    fn fault(&self, op: &'static str, key: &str, fault: Fault) -> StorageError {
        let root = format!("{}/", self.root().display());
        let message = fault.message.replace(&root, "");
        self.local_error(op, key, fault.kind, message)
            .coded(fault.code)
    }
}

/// A NotFound while ferry's own directories are missing means the store is not set up
/// (removed under us): a configuration problem.
/// Removes temporary files and multipart uploads left untouched long enough to be a crashed
/// process's (see [`STALE_TMP`], [`STALE_UPLOAD`]).
/// Locks `.ferry/lock` for this process (released when it exits, however it exits) and
/// writes its pid there; a location another process holds is refused, naming it. `None`:
/// this process holds it already (a check racing the first).
fn own(layout: &Layout) -> Done<Option<fs::File>> {
    use std::io::{Read, Seek, Write};
    let path = layout.root.join(".ferry/lock");
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Fault::io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            if holder.trim() == std::process::id().to_string() {
                return Ok(None);
            }
            return Err(Fault::new(
                ErrorKind::Config,
                format!(
                    "another process (pid {}) uses this directory as a location; two ferry processes on one fs location would race (the lock is {})",
                    holder.trim(),
                    path.display()
                ),
            ));
        }
        Err(fs::TryLockError::Error(e)) => return Err(Fault::io("lock", &path, e)),
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| Fault::io("write", &path, e))?;
    Ok(Some(file))
}

fn sweep(layout: &Layout) {
    walk::remove_stale(&layout.tmp_dir(), STALE_TMP);
    walk::remove_stale(&layout.uploads_dir(), STALE_UPLOAD);
    multipart::recount(layout);
}

fn unset(layout: &Layout, mut fault: Fault) -> Fault {
    if fault.kind == ErrorKind::NotFound && !layout.tmp_dir().is_dir() {
        fault.kind = ErrorKind::Config;
        fault.message = format!(
            "{}; the store's directory is not set up (the location check creates it)",
            fault.message,
        );
    }
    fault
}

/// NotFound: there is no committed object, or `current` is not the version `wanted`.
fn missing(current: Option<&Sidecar>, wanted: Option<&str>) -> Fault {
    match (current, wanted) {
        (Some(s), Some(w)) => Fault::coded(
            ErrorKind::NotFound,
            ErrorCode::NoSuchVersion,
            format_args!("the key's current version is {}, not {w}", s.version_id),
        ),
        _ => Fault::coded(
            ErrorKind::NotFound,
            ErrorCode::NoSuchKey,
            "the key has no committed object",
        ),
    }
}

/// The body of a GET from a directory: the data file opened when the object was looked up
/// (a later write renames a new file into place and leaves this one as it was). At the end
/// the file must still be what was looked up: an ordinary file written to while it was read
/// fails the read rather than giving a mix of two contents.
pub struct FsBody {
    file: Option<File>,
    store: FsStore,
    key: String,
    /// What the read started from.
    seen: Sidecar,
    /// The MD5 of what was read, for an ordinary file (recorded as its ETag at the end).
    md5: Option<Md5>,
}

impl FsBody {
    /// The next chunk, or `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        let Some(mut file) = self.file.take() else {
            return Ok(None);
        };
        let read = tokio::task::spawn_blocking(move || {
            let piece = read_piece(&mut file);
            (file, piece)
        })
        .await;
        match read {
            Ok((file, Ok(buffer))) if buffer.is_empty() => {
                self.finish(&file).await?;
                Ok(None)
            }
            Ok((file, Ok(buffer))) => {
                if let Some(md5) = self.md5.as_mut() {
                    md5.update(&buffer);
                }
                self.file = Some(file);
                Ok(Some(Bytes::from(buffer)))
            }
            Ok((_, Err(e))) => Err(self.fail(format!("reading the data file failed: {e}"))),
            Err(e) => Err(self.fail(format!("the read task failed: {e}"))),
        }
    }

    /// At the end of the file: checks it did not change, records an ordinary file's ETag.
    async fn finish(&mut self, file: &File) -> Result<(), StorageError> {
        let unchanged = file.metadata().is_ok_and(|data| self.seen.describes(&data));
        if !unchanged {
            return Err(self.fail(
                "the file changed while it was read (another program is writing it); \
                 it is read again once it is stable"
                    .into(),
            ));
        }
        if let Some(md5) = self.md5.take() {
            let seen = self.seen.clone();
            self.store
                .adopt(&self.key, seen, md5.finalize().into())
                .await;
        }
        Ok(())
    }

    fn fail(&self, message: String) -> StorageError {
        self.store
            .local_error("GetObject (body)", &self.key, ErrorKind::Transient, message)
    }
}

/// Up to [`READ_CHUNK`] bytes from `file`; empty at the end.
fn read_piece(file: &mut File) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut filled = 0;
    while filled < READ_CHUNK {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buffer.truncate(filled);
    if filled < READ_CHUNK {
        buffer.shrink_to_fit();
    }
    Ok(buffer)
}
