//! `Copier`: what one target needs besides the data copy itself (see [`super::fanout`]):
//! recognising copies ferry made before, delete markers, and version deletions.
//!
//! Every copy is stamped with the source version id, ETag and write time (user metadata
//! `ferry-source-*`), so a redelivered entry finds its earlier copy and does not write it
//! again, and the garbage collector can tell exactly which source version a target holds.

use base64::Engine;

use crate::model::stamps::{self, Stamps};
use crate::model::{EntryKind, ReplicationEntry};
use crate::storage::{Head, ObjectHead, ObjectMeta, StorageError, Store};

/// S3's limit on the number of parts of one upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's smallest and largest part (all but the last part of an upload).
pub const MIN_PART: u64 = 5 << 20;
pub const MAX_PART: u64 = 5 << 30;
/// How many versions of one key the duplicate search looks at before giving up.
const SEARCH_LIMIT: usize = 200;

/// What a copy attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written now; the target's version id.
    Copied { target_version_id: Option<String> },
    /// An earlier attempt already put this exact version there.
    AlreadyThere { target_version_id: Option<String> },
    /// The target already holds a newer version of the key, written by ferry; the entry is
    /// older than what the target shows, so writing it would make an old version current.
    Superseded,
}

/// One target's view of the entries copied to it.
pub struct Copier<'a> {
    pub target: &'a Store,
}

impl Copier<'_> {
    /// Looks at the target before copying the object version `entry` names: `Some` when no
    /// copy is needed (it is there already, or the target holds a newer version of the key).
    pub async fn precheck_object(
        &self,
        entry: &ReplicationEntry,
    ) -> Result<Option<Outcome>, StorageError> {
        let key = entry.key.as_str();
        match self.target.head(key, None).await? {
            Head::Object(current) if is_copy_of(&current, entry) => {
                Ok(Some(Outcome::AlreadyThere {
                    target_version_id: current.version_id,
                }))
            }
            Head::Object(current)
                if stamped_mtime(&current).is_some_and(|m| m > entry.last_modified_ms) =>
            {
                Ok(Some(self.search(entry).await?))
            }
            Head::DeleteMarker { .. } => self.find_earlier_copy(entry).await,
            _ => Ok(None),
        }
    }

    /// Replicates the delete marker `entry` names as a delete marker on the target.
    pub async fn copy_delete_marker(
        &self,
        entry: &ReplicationEntry,
    ) -> Result<Outcome, StorageError> {
        match self.target.head(&entry.key, None).await? {
            Head::DeleteMarker { version_id } => Ok(Outcome::AlreadyThere {
                target_version_id: version_id,
            }),
            Head::Object(current)
                if stamped_mtime(&current).is_some_and(|m| m > entry.last_modified_ms) =>
            {
                Ok(Outcome::Superseded)
            }
            _ => {
                let written = self.target.put_delete_marker(&entry.key).await?;
                Ok(Outcome::Copied {
                    target_version_id: written.version_id,
                })
            }
        }
    }

    /// Deletes ferry's copy of the source version `entry` names from the target (the source
    /// version was permanently deleted). Nothing to delete is success.
    pub async fn delete_copy(&self, entry: &ReplicationEntry) -> Result<Outcome, StorageError> {
        match self.find_earlier_copy(entry).await? {
            Some(Outcome::AlreadyThere {
                target_version_id: Some(version),
            }) => {
                self.target
                    .delete_version(&entry.key, Some(&version))
                    .await?;
                Ok(Outcome::Copied {
                    target_version_id: Some(version),
                })
            }
            _ => Ok(Outcome::AlreadyThere {
                target_version_id: None,
            }),
        }
    }

    /// After an attempt by a member that lost its partition meanwhile (frozen past its
    /// session, with a write on the wire): if the key's latest version on the target is a copy
    /// of `entry` while the target also holds a copy of a newer source version, that copy
    /// landed out of order, after the new owner's newer one — it is deleted, so the newer copy
    /// is the latest again. (The new owner writes a key's versions in order, so its own copy
    /// of `entry` is never above its copy of a newer one.) Returns the deleted version, if any.
    pub async fn undo_out_of_order(
        &self,
        entry: &ReplicationEntry,
    ) -> Result<Option<String>, StorageError> {
        let Head::Object(latest) = self.target.head(&entry.key, None).await? else {
            return Ok(None);
        };
        if !is_copy_of(&latest, entry) {
            return Ok(None);
        }
        let Some(ours) = latest.version_id else {
            return Ok(None);
        };
        let versions = self.target.key_versions(&entry.key).await?;
        for listed in versions
            .iter()
            .filter(|l| l.kind == EntryKind::Object && l.version_id.as_deref() != Some(&ours))
            .take(SEARCH_LIMIT)
        {
            if let Head::Object(h) = self
                .target
                .head(&entry.key, listed.version_id.as_deref())
                .await?
            {
                if stamped_mtime(&h).is_some_and(|m| m > entry.last_modified_ms) {
                    self.target.delete_version(&entry.key, Some(&ours)).await?;
                    return Ok(Some(ours));
                }
            }
        }
        Ok(None)
    }

    /// The target shows something newer than `entry`: either this entry was copied before
    /// (a redelivery after a crash) — then say where — or it never will be in order.
    async fn search(&self, entry: &ReplicationEntry) -> Result<Outcome, StorageError> {
        Ok(self
            .find_earlier_copy(entry)
            .await?
            .unwrap_or(Outcome::Superseded))
    }

    async fn find_earlier_copy(
        &self,
        entry: &ReplicationEntry,
    ) -> Result<Option<Outcome>, StorageError> {
        let versions = self.target.key_versions(&entry.key).await?;
        for listed in versions
            .iter()
            .filter(|l| {
                l.kind == EntryKind::Object
                    && (entry.kind != EntryKind::Object || l.size == entry.size)
            })
            .take(SEARCH_LIMIT)
        {
            if let Head::Object(h) = self
                .target
                .head(&entry.key, listed.version_id.as_deref())
                .await?
            {
                if is_copy_of(&h, entry) {
                    return Ok(Some(Outcome::AlreadyThere {
                        target_version_id: h.version_id,
                    }));
                }
            }
        }
        Ok(None)
    }
}

/// Whether `head` is ferry's copy of exactly the version `entry` names.
pub fn is_copy_of(head: &ObjectHead, entry: &ReplicationEntry) -> bool {
    stamps::is_copy_of(&head.meta.user, entry)
}

/// The source's headers and user metadata plus ferry's stamps, for the copy of `entry`.
pub fn stamp_meta(head: &ObjectHead, entry: &ReplicationEntry) -> ObjectMeta {
    let mut meta = head.meta.clone();
    Stamps::of(entry, head.etag.as_deref()).write(&mut meta.user);
    meta
}

fn stamped_mtime(head: &ObjectHead) -> Option<i64> {
    stamps::stamped_mtime(&head.meta.user)
}

/// The part size for an object: the configured one, grown to stay within S3's 10,000 parts,
/// rounded up to a whole MiB.
pub fn part_size_for(size: u64, configured: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let needed = size.div_ceil(MAX_PARTS);
    configured.max(needed.div_ceil(MIB) * MIB)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    #[test]
    fn part_size_grows_to_fit_ten_thousand_parts() {
        assert_eq!(part_size_for(100 << 20, 8 << 20), 8 << 20);
        let five_tib: u64 = 5 << 40;
        let size = part_size_for(five_tib, 8 << 20);
        assert!(five_tib.div_ceil(size) <= MAX_PARTS);
        assert_eq!(size % (1 << 20), 0);
    }

    #[test]
    fn hex_and_base64_of_md5() {
        let d = Md5::digest(b"");
        assert_eq!(hex(&d), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(base64(&d), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }
}
