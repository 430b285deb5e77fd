//! What an `fs` store keeps beside each object: the sidecar (the commit record of a write) and
//! the headers, user metadata and tags it describes the object with.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

use crate::model::EntryKind;
use crate::storage::{Listed, ObjectHead, ObjectMeta};

/// The sidecar format; a reader that finds another treats the object as not committed.
pub const SIDECAR_SCHEMA: u32 = 1;

/// The headers, user metadata and tags of an object (or of a multipart upload in progress).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// User metadata (`x-amz-meta-*` names without the prefix), sorted for a stable file.
    #[serde(default)]
    pub user: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: Vec<(String, String)>,
}

/// The commit record of one object, only believed while the data file is still the one it
/// describes (size, mtime, inode).
///
/// A write puts its sidecar in place *before* its data file, naming the object it replaces
/// as `prior`: until the data file is renamed over the old one, the old file still matches
/// `prior`, and once it is, the new one matches the record itself. So at every instant the
/// data file is described (or is an ordinary file ferry never wrote), a failed write leaves
/// the previous version readable, and a reader needs no lock to tell which version it sees.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    pub schema: u32,
    /// Fresh for every write, so a reader can ask for exactly the object it saw.
    pub version_id: String,
    /// Unquoted: hex MD5, or `<hex MD5 of the part MD5s>-<parts>` after a multipart upload;
    /// empty for an ordinary file ferry has not read yet ([`Sidecar::ordinary`]).
    pub etag: String,
    pub size: u64,
    pub last_modified_ms: i64,
    /// The data file's modification time (ns since the epoch) and inode when committed: a data
    /// file changed or replaced since (by a crash between the two renames, or by hand) no
    /// longer matches, and the object reads as missing until it is written again.
    pub data_mtime_ns: i64,
    pub data_inode: u64,
    /// Part sizes, in order, when the object was completed from a multipart upload.
    #[serde(default)]
    pub parts: Vec<u64>,
    #[serde(flatten)]
    pub description: Description,
    /// The object this write replaces, while its data file may still be in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<Box<Sidecar>>,
}

impl Description {
    pub fn new(meta: &ObjectMeta, tags: Vec<(String, String)>) -> Self {
        Self {
            content_type: meta.content_type.clone(),
            cache_control: meta.cache_control.clone(),
            content_disposition: meta.content_disposition.clone(),
            content_encoding: meta.content_encoding.clone(),
            user: meta
                .user
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tags,
        }
    }

    pub fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            content_type: self.content_type.clone(),
            cache_control: self.cache_control.clone(),
            content_disposition: self.content_disposition.clone(),
            content_encoding: self.content_encoding.clone(),
            user: self
                .user
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

impl Sidecar {
    /// The record for a data file just written (`data` is its metadata after fsync).
    pub fn new(
        version_id: String,
        etag: String,
        data: &Metadata,
        parts: Vec<u64>,
        description: Description,
    ) -> Self {
        let mtime_ns = mtime_ns(data);
        Self {
            schema: SIDECAR_SCHEMA,
            version_id,
            etag,
            size: data.len(),
            last_modified_ms: mtime_ns.div_euclid(1_000_000),
            data_mtime_ns: mtime_ns,
            data_inode: data.ino(),
            parts,
            description,
            prior: None,
        }
    }

    /// An ordinary file (one no ferry write describes) seen as an object: its version id is
    /// derived from what identifies its content (modification time, inode, size), so it stays
    /// the same while the file does and changes when the file is replaced or written to; its
    /// ETag is not known until the file is read; no headers, metadata or tags.
    pub fn ordinary(data: &Metadata) -> Self {
        let mtime_ns = mtime_ns(data);
        Self {
            schema: SIDECAR_SCHEMA,
            version_id: format!("{:016x}-{:x}-{:x}", mtime_ns, data.ino(), data.len()),
            etag: String::new(),
            size: data.len(),
            last_modified_ms: mtime_ns.div_euclid(1_000_000),
            data_mtime_ns: mtime_ns,
            data_inode: data.ino(),
            parts: Vec::new(),
            description: Description::default(),
            prior: None,
        }
    }

    /// The record that describes `data`: this one, or the object it replaces, if either does.
    pub fn matching(self, data: &Metadata) -> Option<Sidecar> {
        if self.describes(data) {
            return Some(Self {
                prior: None,
                ..self
            });
        }
        self.prior
            .filter(|prior| prior.describes(data))
            .map(|prior| *prior)
    }

    /// Whether this is an ordinary file ferry has not read (no ETag known).
    pub fn is_ordinary(&self) -> bool {
        self.etag.is_empty()
    }

    /// Whether the data file's modification time is at least `age` before `now_ns`.
    pub fn settled(&self, now_ns: i64, age_ns: i64) -> bool {
        now_ns.saturating_sub(self.data_mtime_ns) >= age_ns
    }

    /// Whether `data` (metadata of the data file, not following links) is the file this
    /// record committed.
    pub fn describes(&self, data: &Metadata) -> bool {
        self.schema == SIDECAR_SCHEMA
            && data.is_file()
            && data.len() == self.size
            && mtime_ns(data) == self.data_mtime_ns
            && data.ino() == self.data_inode
    }

    fn etag(&self) -> Option<String> {
        (!self.etag.is_empty()).then(|| self.etag.clone())
    }

    pub fn head(&self) -> ObjectHead {
        ObjectHead {
            size: self.size,
            etag: self.etag(),
            version_id: Some(self.version_id.clone()),
            last_modified_ms: self.last_modified_ms,
            meta: self.description.meta(),
            tag_count: self.description.tags.len() as u32,
        }
    }

    pub fn listed(&self, key: &str) -> Listed {
        Listed {
            key: key.to_string(),
            version_id: Some(self.version_id.clone()),
            kind: EntryKind::Object,
            size: self.size,
            etag: self.etag(),
            last_modified_ms: self.last_modified_ms,
            is_latest: true,
        }
    }
}

pub fn mtime_ns(data: &Metadata) -> i64 {
    data.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(data.mtime_nsec())
}

/// Decodes an `x-amz-tagging` value (URL query syntax, as `encode_tagging` writes it).
pub fn decode_tagging(tagging: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| format!("the tagging {tagging:?} is not percent-encoded UTF-8"))
    };
    tagging
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::encode_tagging;

    #[test]
    fn tagging_decodes_what_encode_tagging_wrote() {
        let tags = vec![
            ("a b".to_string(), "x&y=z".to_string()),
            ("ü+/".to_string(), String::new()),
        ];
        let encoded = encode_tagging(&tags);
        assert_eq!(decode_tagging(encoded.as_deref()).unwrap(), tags);
        assert_eq!(decode_tagging(None).unwrap(), vec![]);
        assert_eq!(
            decode_tagging(Some("k=v+w")).unwrap(),
            vec![("k".to_string(), "v w".to_string())]
        );
        assert!(decode_tagging(Some("k=%ff")).is_err());
    }
}
