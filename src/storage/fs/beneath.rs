//! Directories of an `fs` location opened *beneath* its root, never through a link: every
//! operation on a key works from a directory handle, so a directory swapped for a link (to
//! `/etc`, say) between a check and an open cannot lead ferry out of the location.
//!
//! The root itself comes from the configuration and is trusted; below it, each directory is
//! opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (Linux 5.6), or one component
//! at a time with `openat(O_NOFOLLOW | O_DIRECTORY)` where that system call is missing or
//! filtered. Files are opened, renamed, removed and inspected relative to the handle, their
//! last component never followed. Blocking, like [`super::disk`].

use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether `openat2` answered ENOSYS or EPERM (an old kernel, a seccomp filter) once: from
/// then on directories are opened one component at a time.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// An open directory under a location's root, with its path (for messages only: nothing is
/// resolved through it).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// One entry of a directory, as `readdir` gives it.
pub struct DirEntry {
    pub name: Vec<u8>,
    /// `None`: the file system does not say (see [`Dir::stat`]).
    pub kind: Option<Kind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    /// A link, FIFO, device or socket: never an object.
    Other,
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a file name with a NUL byte"))
}

/// A single path component: no separator, not `.` or `..`.
fn component(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single file name"),
        ));
    }
    c_name(OsStr::new(name))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;

/// Whether `e` says a link stood where a directory or file was to be opened.
pub fn is_link(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

impl Dir {
    /// The directory at `path`, trusted as it is (a location's root, or ferry's own directory
    /// there).
    pub fn at(path: &Path) -> io::Result<Self> {
        let name = c_name(path.as_os_str())?;
        // SAFETY: `name` is a valid NUL-terminated string; the result is checked.
        let fd = check(unsafe { libc::open(name.as_ptr(), DIR_FLAGS) })?;
        Ok(Self::own(fd, path.to_path_buf()))
    }

    /// The directory `comps` under `root`, through no link; a link on the way is an error
    /// for which [`is_link`] holds, a file on the way is ENOTDIR.
    pub fn open<S: AsRef<str>>(root: &Path, comps: &[S]) -> io::Result<Self> {
        let root = Self::at(root)?;
        if comps.is_empty() {
            return Ok(root);
        }
        root.descend(comps)
    }

    /// The directory `comps` under this one, through no link (as [`Self::open`]).
    pub fn descend<S: AsRef<str>>(&self, comps: &[S]) -> io::Result<Self> {
        if comps.is_empty() {
            return self.try_clone();
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            match self.beneath(comps) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                }
                done => return done,
            }
        }
        let mut dir = self.child(comps[0].as_ref())?;
        for comp in &comps[1..] {
            dir = dir.child(comp.as_ref())?;
        }
        Ok(dir)
    }

    /// `comps` under this directory in one `openat2`.
    fn beneath<S: AsRef<str>>(&self, comps: &[S]) -> io::Result<Self> {
        let mut rel = String::new();
        for comp in comps {
            component(comp.as_ref())?;
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(comp.as_ref());
        }
        let name = c_name(OsStr::new(&rel))?;
        // SAFETY: an all-zero `open_how` is valid (it has only integer fields).
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = DIR_FLAGS as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: the pointers are valid for the call and the size is `how`'s.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                name.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        let fd = check(ret as libc::c_int)?;
        Ok(Self::own(fd, self.path.join(rel)))
    }

    fn own(fd: RawFd, path: PathBuf) -> Self {
        // SAFETY: `fd` was just opened by this process and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self { fd, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// The directory `name` in this one, not through a link.
    pub fn child(&self, name: &str) -> io::Result<Self> {
        let c = component(name)?;
        // SAFETY: valid fd and NUL-terminated name; the result is checked.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                DIR_FLAGS | libc::O_NOFOLLOW,
            )
        })?;
        Ok(Self::own(fd, self.path.join(name)))
    }

    /// Creates the directory `name` here (EEXIST if something is there).
    pub fn mkdir(&self, name: &str) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: valid fd and NUL-terminated name.
        check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o777) }).map(drop)
    }

    /// Opens the file `name` here with `flags` (`O_NOFOLLOW` and `O_CLOEXEC` added; a new
    /// file gets mode 0666 less the umask).
    pub fn open_file(&self, name: &str, flags: libc::c_int) -> io::Result<File> {
        let c = component(name)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid fd and NUL-terminated name; the result is checked.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags,
                0o666 as libc::c_uint,
            )
        })?;
        // SAFETY: a fresh descriptor owned by nothing else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// What `name` here is, not following a link (the link itself is described).
    pub fn stat(&self, name: &str) -> io::Result<Metadata> {
        // O_PATH opens without reading or side effects (a FIFO does not block), and with
        // O_NOFOLLOW a link is the link.
        self.open_file(name, libc::O_PATH)?.metadata()
    }

    /// Renames `name` here to `to` in `dir` (replacing a file there; a link there is replaced,
    /// not followed).
    pub fn rename(&self, name: &str, dir: &Dir, to: &str) -> io::Result<()> {
        let (from, to) = (component(name)?, component(to)?);
        // SAFETY: valid fds and NUL-terminated names.
        check(unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                from.as_ptr(),
                dir.fd.as_raw_fd(),
                to.as_ptr(),
            )
        })
        .map(drop)
    }

    /// Removes the file (or link) `name` here.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: valid fd and NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
    }

    /// Removes the empty directory `name` here.
    pub fn rmdir(&self, name: &str) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: valid fd and NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
            .map(drop)
    }

    /// Makes this directory's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: a valid fd.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) }).map(drop)
    }

    /// The entries of this directory (not `.` and `..`), in no particular order.
    pub fn entries(&self) -> io::Result<Vec<DirEntry>> {
        // A fresh descriptor of the directory: `fdopendir` takes it over and reads from its
        // own offset.
        // SAFETY: valid fd and the static name "."; the result is checked.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), c".".as_ptr(), DIR_FLAGS) })?;
        // SAFETY: `fd` is an open directory; on success the stream owns it.
        let stream = unsafe { libc::fdopendir(fd) };
        if stream.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `fd` is still ours to close.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut out = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local; readdir signals errors only through it.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is open until closedir below.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error() == Some(0) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            // SAFETY: readdir returned a valid entry whose name is NUL-terminated.
            let (name, d_type) = unsafe {
                (
                    CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes().to_vec(),
                    (*entry).d_type,
                )
            };
            if name == b"." || name == b".." {
                continue;
            }
            let kind = match d_type {
                libc::DT_DIR => Some(Kind::Dir),
                libc::DT_REG => Some(Kind::File),
                libc::DT_UNKNOWN => None,
                _ => Some(Kind::Other),
            };
            out.push(DirEntry { name, kind });
        };
        // SAFETY: `stream` is open; this closes it and its descriptor.
        unsafe { libc::closedir(stream) };
        result.map(|()| out)
    }
}

/// What a [`Metadata`] (from [`Dir::stat`]) says a directory entry is.
pub fn kind_of(meta: &Metadata) -> Kind {
    if meta.is_dir() {
        Kind::Dir
    } else if meta.is_file() {
        Kind::File
    } else {
        Kind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, PathBuf, tempfile::TempDir) {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("a/b")).expect("mkdir");
        std::fs::write(outside.path().join("secret"), "s").expect("write");
        let path = root.path().to_path_buf();
        (root, path, outside)
    }

    fn both_ways(test: impl Fn()) {
        NO_OPENAT2.store(false, Ordering::Relaxed);
        test();
        NO_OPENAT2.store(true, Ordering::Relaxed);
        test();
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }

    #[test]
    fn a_link_on_the_way_is_never_followed() {
        both_ways(|| {
            let (_keep, root, outside) = tree();
            symlink(outside.path(), root.join("a/out")).expect("symlink");
            let e = Dir::open(&root, &["a", "out"]).expect_err("a link");
            assert!(
                is_link(&e) || e.raw_os_error() == Some(libc::ENOTDIR),
                "{e}"
            );
            let dir = Dir::open(&root, &["a"]).expect("a real directory");
            let e = dir.open_file("out", libc::O_RDONLY).expect_err("a link");
            assert!(is_link(&e), "{e}");
            assert!(dir.stat("out").expect("the link").file_type().is_symlink());
            std::fs::write(root.join("a/file"), "f").expect("write");
            let e = Dir::open(&root, &["a", "file"]).expect_err("a file");
            assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR), "{e}");
        });
    }

    #[test]
    fn names_that_climb_are_refused() {
        both_ways(|| {
            let (_keep, root, _outside) = tree();
            for comps in [&[".."][..], &["a", ".."], &["a/b"], &[""]] {
                assert!(Dir::open(&root, comps).is_err(), "{comps:?}");
            }
            assert_eq!(
                Dir::open(&root, &["a", "b"]).expect("opens").path(),
                root.join("a/b")
            );
        });
    }

    #[test]
    fn files_are_made_renamed_listed_and_removed_relative_to_the_handle() {
        let (_keep, root, _outside) = tree();
        let a = Dir::open(&root, &["a"]).expect("a");
        let b = a.child("b").expect("b");
        use std::io::Write;
        let mut f = a
            .open_file("t", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
            .expect("create");
        f.write_all(b"x").expect("write");
        a.rename("t", &b, "u").expect("rename");
        assert_eq!(std::fs::read(root.join("a/b/u")).expect("read"), b"x");
        a.mkdir("c").expect("mkdir");
        let mut names: Vec<_> = a
            .entries()
            .expect("entries")
            .into_iter()
            .map(|e| (String::from_utf8_lossy(&e.name).into_owned(), e.kind))
            .collect();
        names.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            names,
            [("b".into(), Some(Kind::Dir)), ("c".into(), Some(Kind::Dir))]
        );
        b.unlink("u").expect("unlink");
        a.rmdir("c").expect("rmdir");
        a.sync().expect("fsync");
        assert!(!root.join("a/c").exists() && !root.join("a/b/u").exists());
    }

    #[test]
    fn a_handle_keeps_its_directory_when_the_path_is_swapped_for_a_link() {
        let (_keep, root, outside) = tree();
        let b = Dir::open(&root, &["a", "b"]).expect("b");
        std::fs::rename(root.join("a"), root.join("moved")).expect("move");
        symlink(outside.path(), root.join("a")).expect("symlink");
        b.open_file("new", libc::O_WRONLY | libc::O_CREAT)
            .expect("create");
        assert!(root.join("moved/b/new").exists());
        assert!(!outside.path().join("b").exists());
    }
}
