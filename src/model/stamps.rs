//! The stamps on every copy ferry makes: the source version id, ETag and write time, kept in
//! the copy's user metadata (`ferry-source-*`). Replication writes them and finds its earlier
//! copies by them; the garbage collector checks them before it deletes a transient source's
//! version; the admin API reads them to say which source version a target holds. They are the
//! contract between those stages, so they live here, not in any one of them.

use std::collections::HashMap;

use super::ReplicationEntry;

/// User-metadata names of the stamps (S3 lower-cases metadata names).
pub const STAMP_VERSION: &str = "ferry-source-version-id";
pub const STAMP_ETAG: &str = "ferry-source-etag";
pub const STAMP_MTIME: &str = "ferry-source-mtime";

/// What a copy's stamps say of the source version it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamps {
    /// The source version id (`"null"` for an unversioned source).
    pub version: String,
    /// The source ETag, unquoted; empty when the source did not say.
    pub etag: String,
    /// The source write time, ms since the epoch.
    pub mtime_ms: Option<i64>,
}

impl Stamps {
    /// The stamps of a copy of `entry` whose source ETag is `etag`.
    pub fn of(entry: &ReplicationEntry, etag: Option<&str>) -> Self {
        Self {
            version: source_version(entry),
            etag: etag.unwrap_or_default().to_string(),
            mtime_ms: Some(entry.last_modified_ms),
        }
    }

    /// The stamps in a copy's user metadata, if it is one of ferry's copies.
    pub fn read(user: &HashMap<String, String>) -> Option<Self> {
        Some(Self {
            version: user.get(STAMP_VERSION)?.clone(),
            etag: user.get(STAMP_ETAG).cloned().unwrap_or_default(),
            mtime_ms: user.get(STAMP_MTIME).and_then(|m| m.parse().ok()),
        })
    }

    /// Writes the stamps into `user`.
    pub fn write(&self, user: &mut HashMap<String, String>) {
        user.insert(STAMP_VERSION.into(), self.version.clone());
        user.insert(STAMP_ETAG.into(), self.etag.clone());
        if let Some(mtime) = self.mtime_ms {
            user.insert(STAMP_MTIME.into(), mtime.to_string());
        }
    }
}

/// Whether the user metadata `user` is that of ferry's copy of exactly the version `entry`
/// names (its id, and its ETag where both are known).
pub fn is_copy_of(user: &HashMap<String, String>, entry: &ReplicationEntry) -> bool {
    user.get(STAMP_VERSION) == Some(&source_version(entry))
        && match (&entry.etag, user.get(STAMP_ETAG)) {
            (Some(expected), Some(stamped)) => expected == stamped,
            _ => true,
        }
}

/// The source write time a copy's metadata carries.
pub fn stamped_mtime(user: &HashMap<String, String>) -> Option<i64> {
    user.get(STAMP_MTIME).and_then(|m| m.parse().ok())
}

fn source_version(entry: &ReplicationEntry) -> String {
    entry.version_id.clone().unwrap_or_else(|| "null".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EntryKind;

    fn entry(version: Option<&str>, etag: Option<&str>) -> ReplicationEntry {
        ReplicationEntry {
            schema: crate::model::SCHEMA,
            rule: "r".into(),
            source: "s".into(),
            bucket: "b".into(),
            key: "k".into(),
            version_id: version.map(str::to_string),
            kind: EntryKind::Object,
            size: 1,
            etag: etag.map(str::to_string),
            last_modified_ms: 42,
            targets: vec!["t".into()],
            transient: true,
            enqueued_at_ms: 0,
        }
    }

    #[test]
    fn a_copy_is_recognised_by_its_version_and_etag_only() {
        let v1 = entry(Some("v1"), Some("e1"));
        let mut user = HashMap::from([("origin".to_string(), "x".to_string())]);
        assert!(!is_copy_of(&user, &v1), "no stamps: not ferry's copy");
        Stamps::of(&v1, Some("e1")).write(&mut user);
        assert!(is_copy_of(&user, &v1));
        assert_eq!(stamped_mtime(&user), Some(42));
        assert_eq!(Stamps::read(&user), Some(Stamps::of(&v1, Some("e1"))));
        assert!(
            !is_copy_of(&user, &entry(Some("v2"), Some("e1"))),
            "another version"
        );
        assert!(
            !is_copy_of(&user, &entry(Some("v1"), Some("e2"))),
            "other content"
        );
        assert!(is_copy_of(&user, &entry(Some("v1"), None)), "ETag unknown");
        let mut unversioned = HashMap::new();
        Stamps::of(&entry(None, None), None).write(&mut unversioned);
        assert_eq!(
            unversioned.get(STAMP_VERSION).map(String::as_str),
            Some("null")
        );
        assert!(is_copy_of(&unversioned, &entry(None, None)));
        assert!(
            !is_copy_of(&unversioned, &entry(None, Some("e"))),
            "stamped without an ETag: not a copy of content that has one"
        );
    }
}
