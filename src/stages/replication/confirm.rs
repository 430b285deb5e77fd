//! A deletion is carried to the targets only once the source confirms it. An event (or a
//! forged entry) may say a key was deleted when it was not, or no longer is: a delete marker
//! is written to a target only if the source lists that marker (versioned) or shows no object
//! under the key (unversioned), and ferry's copy of a version is deleted only if that version
//! is gone from the source. (The source's versions are listed, not HEADed: servers differ in
//! how they answer a HEAD of a delete marker.)

use super::copier::Outcome;
use crate::model::{EntryKind, ReplicationEntry};
use crate::storage::{ErrorKind, Head, StorageError, Store};

/// `None` if the source confirms the deletion `entry` describes (go on and apply it);
/// `Some(outcome)` if it is not to be applied, or an error if the source contradicts it.
pub async fn deletion(
    source: &Store,
    entry: &ReplicationEntry,
) -> Result<Option<Outcome>, StorageError> {
    let Some(version) = entry.version_id.as_deref() else {
        return match source.head(&entry.key, None).await? {
            Head::Missing | Head::DeleteMarker { .. } => Ok(None),
            // Written again since the delete (its own entry follows), or never deleted.
            Head::Object(_) => Ok(Some(Outcome::Superseded)),
        };
    };
    let listed = source.key_versions(&entry.key).await?;
    let found = listed
        .iter()
        .find(|l| l.version_id.as_deref() == Some(version));
    let contradiction = |message: String| {
        Err(source.local_error(
            "ListObjectVersions",
            &entry.key,
            ErrorKind::Permanent,
            message,
        ))
    };
    match (entry.kind, found.map(|l| l.kind)) {
        (EntryKind::DeleteMarker, Some(EntryKind::DeleteMarker)) => Ok(None),
        // The marker itself was removed since (the key undeleted): nothing to carry over.
        (EntryKind::DeleteMarker, None) => Ok(Some(Outcome::Superseded)),
        (EntryKind::DeleteMarker, Some(_)) => contradiction(format!(
            "source version {version:?} is an object, not a delete marker: the deletion is not applied"
        )),
        (EntryKind::VersionDelete, None) => Ok(None),
        (EntryKind::VersionDelete, Some(_)) => contradiction(format!(
            "source version {version:?} still exists: ferry's copies of it are not deleted"
        )),
        (EntryKind::Object, _) => Ok(None),
    }
}
