//! The file-system groundwork of an `fs` store: where things are under the root, how failures
//! are classified, ids, Content-MD5 checks, and temporary files.
//!
//! Every function here (and in the sibling modules that use it) blocks: callers run them on
//! tokio's blocking pool.

use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use md5::{Digest, Md5};

use super::beneath::{is_link, Dir};
use super::clock::Clock;
use super::dirs::{ancestors, DirPins, Pinned};
use super::keys::{RESERVED, SIDECAR_SUFFIX};
use super::multipart::Staged;
use crate::storage::{ErrorCode, ErrorKind};

/// A failed step: its kind and a message naming the path and what the system said.
#[derive(Debug)]
pub struct Fault {
    pub kind: ErrorKind,
    pub message: String,
    /// The condition, in S3's terms, where a caller acts on it.
    pub code: Option<ErrorCode>,
}

pub type Done<T> = Result<T, Fault>;

impl Fault {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            code: None,
        }
    }

    /// A failure S3 would answer with `code`; the message starts with the code's name.
    pub fn coded(kind: ErrorKind, code: ErrorCode, message: impl std::fmt::Display) -> Self {
        Self {
            kind,
            message: format!("{code}: {message}"),
            code: Some(code),
        }
    }

    /// `what` failed on `path`: not found, permission (a configuration problem: every object
    /// would fail the same way), or anything else, e.g. a full disk (worth retrying).
    pub fn io(what: &str, path: &Path, err: io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                ErrorKind::Config
            }
            _ => ErrorKind::Transient,
        };
        Self::new(kind, format!("cannot {what} {}: {err}", path.display()))
    }
}

/// Where things are under a location's root, and what the store's operations share.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    /// The directories operations are working in, which pruning leaves alone.
    pub pins: Arc<DirPins>,
    /// An ordinary file (not written by ferry) is listed once it has not changed for this long.
    pub stable_after: Duration,
    /// The order stamps of ferry's writes here.
    pub clock: Arc<Clock>,
    /// The bytes staged in open multipart uploads here.
    pub staged: Arc<Staged>,
}

/// Which tree a path is in, to name what a collision is with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// `<root>/<key>`: object data.
    Data,
    /// `<root>/.ferry/meta/<key>.json`: sidecars.
    Meta,
}

impl Layout {
    pub fn new(root: PathBuf, stable_after: Duration) -> Self {
        Self {
            clock: Arc::new(Clock::new(root.join(RESERVED).join("clock"))),
            root,
            pins: Arc::default(),
            staged: Arc::default(),
            stable_after,
        }
    }

    /// Pins the directories that hold key `comps` in both trees, for a write or a delete.
    pub fn pin_key(&self, comps: &[String]) -> Pinned {
        let mut dirs = ancestors(&self.base(Tree::Meta), comps);
        dirs.extend(ancestors(&self.base(Tree::Data), comps));
        self.pins.pin(dirs)
    }

    /// ferry's temporary directory, opened.
    pub fn tmp(&self) -> Done<Dir> {
        Dir::open(&self.root, &[RESERVED, "tmp"])
            .map_err(|e| Fault::io("open the directory", &self.tmp_dir(), e))
    }

    /// The directory of `tree` that holds the last of `comps`, opened beneath the root (a
    /// link on the way is an error for which [`is_link`] holds).
    pub fn dir_of(&self, tree: Tree, comps: &[String]) -> io::Result<Dir> {
        let mut path: Vec<&str> = match tree {
            Tree::Data => vec![],
            Tree::Meta => vec![RESERVED, "meta"],
        };
        path.extend(
            comps[..comps.len().saturating_sub(1)]
                .iter()
                .map(String::as_str),
        );
        Dir::open(&self.root, &path)
    }

    /// The name in its directory ([`Self::dir_of`]) of the file of key `comps` in `tree`.
    pub fn file_name(&self, tree: Tree, comps: &[String]) -> String {
        let last = comps.last().map_or("", String::as_str);
        match tree {
            Tree::Data => last.to_string(),
            Tree::Meta => format!("{last}{SIDECAR_SUFFIX}"),
        }
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join(RESERVED).join("tmp")
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.root.join(RESERVED).join("uploads")
    }

    pub fn base(&self, tree: Tree) -> PathBuf {
        match tree {
            Tree::Data => self.root.clone(),
            Tree::Meta => self.root.join(RESERVED).join("meta"),
        }
    }

    /// The path of key `comps` in `tree`.
    pub fn path(&self, tree: Tree, comps: &[String]) -> PathBuf {
        let mut path = self.base(tree);
        path.extend(comps);
        if tree == Tree::Meta {
            path.as_mut_os_string().push(SIDECAR_SUFFIX);
        }
        path
    }
}

/// A fresh identifier: nanoseconds since the epoch and 64 random bits, in hex (sorts by time).
pub fn new_id() -> String {
    format!("{:016x}{:016x}", now_ns(), fastrand::u64(..))
}

/// Nanoseconds since the epoch, by the system clock (as file modification times are).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `body` against `content_md5` (base64, as S3's Content-MD5); returns its MD5.
pub fn verify_md5(body: &[u8], content_md5: &str) -> Done<[u8; 16]> {
    let expected = decode_md5(content_md5)?;
    let md5: [u8; 16] = Md5::digest(body).into();
    check_md5(&expected, md5)
}

/// The 16 bytes of a base64 Content-MD5 header.
pub fn decode_md5(content_md5: &str) -> Done<[u8; 16]> {
    let expected = base64::engine::general_purpose::STANDARD
        .decode(content_md5)
        .ok()
        .filter(|d| d.len() == 16)
        .ok_or_else(|| {
            Fault::coded(
                ErrorKind::Permanent,
                ErrorCode::InvalidDigest,
                format_args!("the Content-MD5 {content_md5:?} is not a base64 MD5"),
            )
        })?;
    let mut md5 = [0u8; 16];
    md5.copy_from_slice(&expected);
    Ok(md5)
}

/// `md5` (of the data received) must be `expected` (its Content-MD5): S3's BadDigest if not.
pub fn check_md5(expected: &[u8; 16], md5: [u8; 16]) -> Done<[u8; 16]> {
    if md5 != *expected {
        return Err(Fault::coded(
            ErrorKind::Transient,
            ErrorCode::BadDigest,
            format_args!(
                "the Content-MD5 you specified did not match what was received \
                 (expected {}, received data has {})",
                hex(expected),
                hex(&md5)
            ),
        ));
    }
    Ok(md5)
}

/// A temporary file, removed when dropped unless it was moved into place.
pub struct Temp {
    dir: Dir,
    name: String,
    pub file: File,
    placed: bool,
}

impl Temp {
    /// A new file in `dir` (ferry's temporary directory, or an upload's staging directory).
    pub fn create(dir: &Dir) -> Done<Self> {
        let name = format!("{}.tmp", new_id());
        let file = dir
            .open_file(&name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
            .map_err(|e| Fault::io("create the temporary file", &dir.join(&name), e))?;
        let dir = dir
            .try_clone()
            .map_err(|e| Fault::io("open the directory", dir.path(), e))?;
        Ok(Self {
            dir,
            name,
            file,
            placed: false,
        })
    }

    pub fn write(&mut self, data: &[u8]) -> Done<()> {
        self.file
            .write_all(data)
            .map_err(|e| Fault::io("write", &self.path(), e))
    }

    /// Flushes the data to disk and says what the file is now.
    pub fn sync(&mut self) -> Done<Metadata> {
        self.file
            .sync_all()
            .map_err(|e| Fault::io("fsync", &self.path(), e))?;
        self.file
            .metadata()
            .map_err(|e| Fault::io("stat", &self.path(), e))
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Renames the file to `name` in `dir`, without the directory fsync (the caller syncs
    /// the directory when the name must survive a crash); from then on it is no longer
    /// removed when dropped.
    pub fn place_in(&mut self, dir: &Dir, name: &str) -> Done<()> {
        self.dir.rename(&self.name, dir, name).map_err(|e| {
            Fault::io(
                &format!("rename {} to", self.path().display()),
                &dir.join(name),
                e,
            )
        })?;
        self.placed = true;
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.placed {
            let _ = self.dir.unlink(&self.name);
        }
    }
}

/// The largest record file (sidecar, upload record) ferry reads: its own are a few KiB (S3
/// caps user metadata at 2 KiB and tags at 10).
pub const MAX_RECORD: u64 = 1 << 20;

/// The whole of the small regular file `name` in `dir` — not through a link, never a FIFO
/// or device, at most [`MAX_RECORD`] bytes (an `InvalidData` error beyond) — or `None` if
/// there is nothing there.
pub fn read_record(dir: &Dir, name: &str) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = match dir.open_file(name, libc::O_RDONLY | libc::O_NONBLOCK) {
        Ok(file) => file,
        Err(e) if absent(&e) => return Ok(None),
        Err(e) if is_link(&e) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a record file: a symbolic link",
            ))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not a record file: {}",
                if meta.is_file() {
                    format!("{} bytes, more than {MAX_RECORD}", meta.len())
                } else {
                    "not a regular file".to_string()
                }
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_RECORD + 1).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Not there, or a file stands where a directory of the path should be.
pub fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}
