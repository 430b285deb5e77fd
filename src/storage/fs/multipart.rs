//! Multipart uploads to an `fs` store: parts staged under `.ferry/uploads/<upload id>/`,
//! joined in order into one data file (streamed, never whole in memory) on completion.
//!
//! Blocking, like [`super::disk`]. Answers follow S3's: an unknown upload is NotFound, a part
//! list that does not match what was uploaded is refused for good.

use std::fs;
use std::io::{self, Read, Write};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::beneath::{is_link, Dir};
use super::disk::{absent, hex, new_id, read_record, verify_md5, Done, Fault, Layout, Temp};
use super::keys::RESERVED;
use super::meta::Description;
use super::objects::Pending;
use crate::storage::{unquote, ErrorCode, ErrorKind};

/// S3's part numbers.
const PART_NUMBERS: RangeInclusive<i32> = 1..=10_000;
/// Parts are copied into the object in pieces of this size.
const COPY_CHUNK: usize = 1 << 20;
/// The record of an upload, beside its parts.
const UPLOAD_FILE: &str = "upload.json";

/// What an upload will make, recorded when it starts.
#[derive(Serialize, Deserialize)]
struct Upload {
    key: String,
    #[serde(flatten)]
    description: Description,
}

fn no_such_upload(id: &str, why: &str) -> Fault {
    Fault::coded(
        ErrorKind::NotFound,
        ErrorCode::NoSuchUpload,
        format_args!("upload {id:?} {why}"),
    )
}

/// The path of the staging directory of upload `id` (ids are ferry's own hex strings:
/// anything else, which could name a path elsewhere, is no upload of ours).
fn staging(layout: &Layout, id: &str) -> Done<PathBuf> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(no_such_upload(id, "is not an upload id of this store"));
    }
    Ok(layout.uploads_dir().join(id))
}

fn uploads(layout: &Layout) -> Done<Dir> {
    Dir::open(&layout.root, &[RESERVED, "uploads"])
        .map_err(|e| Fault::io("open the directory", &layout.uploads_dir(), e))
}

/// The staging directory, opened, and record of upload `id`, which must be for `key`.
fn load(layout: &Layout, key: &str, id: &str) -> Done<(Dir, Upload)> {
    let path = staging(layout, id)?;
    let dir = match uploads(layout)?.child(id) {
        Ok(dir) => dir,
        Err(e) if absent(&e) || is_link(&e) => {
            return Err(no_such_upload(id, "does not exist (completed or aborted)"))
        }
        Err(e) => return Err(Fault::io("open the directory", &path, e)),
    };
    let path = dir.join(UPLOAD_FILE);
    let bytes = match read_record(&dir, UPLOAD_FILE) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err(no_such_upload(id, "does not exist (completed or aborted)")),
        Err(e) => return Err(Fault::io("read", &path, e)),
    };
    let upload: Upload = serde_json::from_slice(&bytes).map_err(|e| {
        Fault::new(
            ErrorKind::Permanent,
            format!("the upload record {} is unreadable: {e}", path.display()),
        )
    })?;
    if upload.key != key {
        return Err(no_such_upload(id, &format!("is for key {:?}", upload.key)));
    }
    Ok((dir, upload))
}

/// The bytes of the parts staged in a store's open uploads, and the most it takes
/// (`ingest.max_staged`): parts are the one thing a client can pile up on disk without ever
/// completing an object.
#[derive(Debug)]
pub struct Staged {
    bytes: AtomicU64,
    limit: AtomicU64,
}

impl Default for Staged {
    fn default() -> Self {
        Self {
            bytes: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
        }
    }
}

impl Staged {
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Room for a part of `new` bytes that replaces one of `old` (0: none); SlowDown if it
    /// would take the total past the limit (a part no larger than the one it replaces always
    /// fits).
    fn take(&self, new: u64, old: u64) -> Done<()> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bytes| {
                let next = bytes.saturating_sub(old).saturating_add(new);
                (new <= old || next <= limit).then_some(next)
            })
            .map(drop)
            .map_err(|bytes| {
                Fault::coded(
                    ErrorKind::Transient,
                    ErrorCode::SlowDown,
                    format_args!(
                        "{bytes} bytes are staged in open multipart uploads and a part of {new} more would pass the limit of {limit} (ingest.max_staged); complete or abort uploads"
                    ),
                )
            })
    }

    /// Takes back what [`Self::take`] did.
    fn untake(&self, new: u64, old: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bytes| {
                Some(bytes.saturating_sub(new).saturating_add(old))
            });
    }

    fn release(&self, bytes: u64) {
        self.untake(bytes, 0);
    }
}

/// The bytes of the parts staged in the upload directory `dir`.
fn staged_in(dir: &std::path::Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Counts the staged bytes of every open upload again (at start, and after a sweep removed
/// abandoned ones), correcting any drift of the running count.
pub fn recount(layout: &Layout) {
    let Ok(uploads) = fs::read_dir(layout.uploads_dir()) else {
        return;
    };
    let bytes = uploads
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| staged_in(&e.path()))
        .sum();
    layout.staged.bytes.store(bytes, Ordering::Relaxed);
}

/// Open uploads an `fs` store keeps at once: each holds disk until completed, aborted or
/// swept, so a client cannot open them without bound.
pub const MAX_OPEN_UPLOADS: usize = 1000;

pub fn create(layout: &Layout, key: &str, description: Description) -> Done<String> {
    let uploads = uploads(layout)?;
    let open = uploads
        .entries()
        .map_err(|e| Fault::io("list", uploads.path(), e))?
        .len();
    if open >= MAX_OPEN_UPLOADS {
        return Err(Fault::coded(
            ErrorKind::Transient,
            ErrorCode::SlowDown,
            format_args!(
                "{MAX_OPEN_UPLOADS} multipart uploads are open; complete or abort some (uploads left for 7 days are removed)"
            ),
        ));
    }
    let id = new_id();
    uploads
        .mkdir(&id)
        .map_err(|e| Fault::io("create the directory", &uploads.join(&id), e))?;
    let dir = uploads
        .child(&id)
        .map_err(|e| Fault::io("open the directory", &uploads.join(&id), e))?;
    let upload = Upload {
        key: key.to_string(),
        description,
    };
    let json = serde_json::to_vec(&upload).map_err(|e| {
        Fault::new(
            ErrorKind::Permanent,
            format!("cannot encode the upload: {e}"),
        )
    })?;
    let path = dir.join(UPLOAD_FILE);
    dir.open_file(UPLOAD_FILE, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
        .and_then(|mut file| {
            file.write_all(&json)?;
            file.sync_all()
        })
        .and_then(|()| dir.sync())
        .and_then(|()| uploads.sync())
        .map_err(|e| Fault::io("write", &path, e))?;
    Ok(id)
}

/// Stages part `number` after checking it against `content_md5`; returns its hex MD5.
pub fn upload_part(
    layout: &Layout,
    key: &str,
    id: &str,
    number: i32,
    body: &[u8],
    content_md5: &str,
) -> Done<String> {
    if !PART_NUMBERS.contains(&number) {
        return Err(Fault::coded(
            ErrorKind::Permanent,
            ErrorCode::InvalidArgument,
            format_args!("part number {number} is not between 1 and 10000"),
        ));
    }
    let (dir, _) = load(layout, key, id)?;
    let md5 = verify_md5(body, content_md5)?;
    let name = format!("{number}.part");
    let old = dir.stat(&name).map_or(0, |m| m.len());
    let new = body.len() as u64;
    layout.staged.take(new, old)?;
    let staged = (|| {
        let mut temp = Temp::create(&dir)?;
        temp.write(body)?;
        // Durable before the client hears 200: it may discard its copy of the part then.
        temp.sync()?;
        temp.place_in(&dir, &name)?;
        dir.sync()
            .map_err(|e| Fault::io("fsync the directory", dir.path(), e))
    })();
    if let Err(fault) = staged {
        layout.staged.untake(new, old);
        return Err(fault);
    }
    Ok(hex(&md5))
}

/// Joins the `(part number, ETag)` parts, in order, into a temporary file, checking each
/// part's MD5 against the ETag named for it. The ETag is S3's multipart one: hex MD5 of the
/// parts' binary MD5s, dash, part count.
pub fn assemble(layout: &Layout, key: &str, id: &str, parts: &[(i32, String)]) -> Done<Pending> {
    let refuse = |code, message: String| Fault::coded(ErrorKind::Permanent, code, message);
    if parts.is_empty() {
        return Err(refuse(
            ErrorCode::MalformedXml,
            "completing an upload needs at least one part".into(),
        ));
    }
    if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(refuse(
            ErrorCode::InvalidPartOrder,
            "the parts must be listed in ascending order, each once".into(),
        ));
    }
    let (dir, upload) = load(layout, key, id)?;
    let mut temp = Temp::create(&layout.tmp()?)?;
    let mut buffer = vec![0u8; COPY_CHUNK];
    let mut digests = Vec::with_capacity(parts.len() * 16);
    let mut part_sizes = Vec::with_capacity(parts.len());
    for (number, etag) in parts {
        let name = format!("{number}.part");
        let path = dir.join(&name);
        let mut file = match dir.open_file(&name, libc::O_RDONLY | libc::O_NONBLOCK) {
            Ok(file) if file.metadata().is_ok_and(|m| m.is_file()) => file,
            Ok(_) => {
                return Err(refuse(
                    ErrorCode::InvalidPart,
                    format!("part {number} is not a file"),
                ))
            }
            Err(e) if absent(&e) || is_link(&e) => {
                return Err(refuse(
                    ErrorCode::InvalidPart,
                    format!("part {number} was not uploaded"),
                ))
            }
            Err(e) => return Err(Fault::io("open", &path, e)),
        };
        let mut md5 = Md5::new();
        let mut size = 0u64;
        loop {
            let n = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fault::io("read", &path, e)),
            };
            md5.update(&buffer[..n]);
            temp.write(&buffer[..n])?;
            size += n as u64;
        }
        let md5 = md5.finalize();
        if hex(&md5) != unquote(etag) {
            return Err(refuse(
                ErrorCode::InvalidPart,
                format!(
                    "part {number} has ETag {}, the request names {etag}",
                    hex(&md5)
                ),
            ));
        }
        digests.extend_from_slice(&md5);
        part_sizes.push(size);
    }
    let data = temp.sync()?;
    Ok(Pending {
        temp,
        data,
        etag: format!("{}-{}", hex(&Md5::digest(&digests)), parts.len()),
        parts: part_sizes,
        description: upload.description,
    })
}

/// Removes upload `id` and its parts.
pub fn abort(layout: &Layout, key: &str, id: &str) -> Done<()> {
    load(layout, key, id)?;
    let dir = staging(layout, id)?;
    let bytes = staged_in(&dir);
    fs::remove_dir_all(&dir).map_err(|e| Fault::io("remove", &dir, e))?;
    layout.staged.release(bytes);
    Ok(())
}

/// Removes the staging directory of a completed upload (a leftover is swept later).
pub fn discard(layout: &Layout, id: &str) {
    if let Ok(dir) = staging(layout, id) {
        let bytes = staged_in(&dir);
        match fs::remove_dir_all(&dir) {
            Ok(()) => layout.staged.release(bytes),
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove a completed upload's parts")
            }
        }
    }
}
