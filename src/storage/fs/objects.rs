//! One object on disk: committing a write (sidecar, then data file, each renamed into place
//! and made durable), looking an object up (a ferry write or an ordinary file), recording an
//! ordinary file's ETag once read, removing one. Keys that collide with other keys, and links
//! on the way, are refused here. Every operation pins the directories it works in
//! ([`super::dirs`]), so concurrent writes and deletes of keys sharing them cannot undo each
//! other.
//!
//! Blocking, like [`super::disk`].

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::disk::{absent, new_id, read_record, sync_dir, Done, Fault, Layout, Temp, Tree};
use super::keys::SIDECAR_SUFFIX;
use super::meta::{Description, Sidecar};
use crate::storage::ErrorKind;

/// A written object not yet in place: its data in a temporary file, and what its sidecar
/// will say.
pub struct Pending {
    pub temp: Temp,
    /// The temporary file after fsync.
    pub data: Metadata,
    /// Unquoted.
    pub etag: String,
    /// Part sizes, for an object made from a multipart upload.
    pub parts: Vec<u64>,
    pub description: Description,
}

impl Pending {
    /// A whole object (one PutObject) written to `temp`: made durable, `md5` its ETag.
    pub fn whole(mut temp: Temp, md5: &[u8], description: Description) -> Done<Self> {
        let data = temp.sync()?;
        Ok(Self {
            temp,
            data,
            etag: super::disk::hex(md5),
            parts: Vec::new(),
            description,
        })
    }
}

/// Puts `pending` in place as the object `comps`: its sidecar first (naming the object it
/// replaces as `prior`), then the data file, each renamed into place and made durable (see
/// [`Sidecar`]). A key that collides with another in either tree is refused before anything
/// changes; a write that fails leaves the previous object as it was. Returns the sidecar
/// written. The caller holds the key's lock.
pub fn commit(layout: &Layout, comps: &[String], pending: Pending) -> Done<Sidecar> {
    let _pinned = layout.pin_key(comps);
    plan(layout, Tree::Meta, comps)?;
    let path = plan(layout, Tree::Data, comps)?;
    let prior = described(layout, comps)?;
    let mut sidecar = Sidecar::new(
        new_id(),
        pending.etag,
        &pending.data,
        pending.parts,
        pending.description,
    );
    // Later than every earlier write here, whatever the system clock did meanwhile.
    sidecar.last_modified_ms = layout.clock.stamp(sidecar.last_modified_ms)?;
    sidecar.prior = prior.map(Box::new);
    write_sidecar(layout, comps, &sidecar)?;
    if let Err(fault) = place(layout, &path, pending.temp) {
        if sidecar.prior.is_none() {
            // Nothing of ferry's was there before: take the record of the failed write away.
            let _ = remove_file(layout, Tree::Meta, comps);
        }
        return Err(fault);
    }
    sidecar.prior = None;
    Ok(sidecar)
}

/// Records an ordinary file at `comps` that ferry has read whole, as it was (`seen`), with
/// the MD5 of its bytes as ETag: its version id stays the one derived from the file. Does
/// nothing if the file has changed or is described meanwhile. The caller holds the key's lock.
pub fn adopt(layout: &Layout, comps: &[String], seen: &Sidecar, md5: &[u8]) -> Done<()> {
    let _pinned = layout.pin_key(comps);
    match lookup(layout, comps, false)? {
        Some((current, _)) if current.is_ordinary() && current.version_id == seen.version_id => {}
        _ => return Ok(()),
    }
    plan(layout, Tree::Meta, comps)?;
    let sidecar = Sidecar {
        etag: super::disk::hex(md5),
        ..seen.clone()
    };
    write_sidecar(layout, comps, &sidecar)
}

/// The key whose `tree` path is `comps` (a sidecar path names its key plus the suffix).
fn key_of(tree: Tree, comps: &[String]) -> String {
    let key = comps.join("/");
    match tree {
        Tree::Meta => key
            .strip_suffix(SIDECAR_SUFFIX)
            .map_or(key.clone(), str::to_string),
        Tree::Data => key,
    }
}

fn refused(message: String) -> Fault {
    Fault::new(ErrorKind::Permanent, message)
}

/// Makes sure every directory of `comps` (all but the last component) exists in `tree` as a
/// real directory, not a link or a file; returns the last one.
fn prepare_dirs(layout: &Layout, tree: Tree, comps: &[String]) -> Done<PathBuf> {
    let mut dir = layout.base(tree);
    for depth in 1..comps.len() {
        let parent = dir.clone();
        dir.push(&comps[depth - 1]);
        let mut created = false;
        loop {
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => break,
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refused(format!(
                        "{} is a symbolic link; ferry does not follow links out of the store",
                        dir.display()
                    )))
                }
                Ok(_) if tree == Tree::Meta => {
                    return Err(refused(format!(
                        "the key collides with the metadata of object {:?}",
                        key_of(tree, &comps[..depth])
                    )))
                }
                Ok(_) => {
                    return Err(refused(format!(
                        "the key collides with object {:?}, a file where a directory is needed",
                        key_of(tree, &comps[..depth])
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && !created => {
                    created = true;
                    match fs::create_dir(&dir) {
                        Ok(()) => sync_dir(&parent)?,
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(Fault::io("create the directory", &dir, e)),
                    }
                }
                Err(e) => return Err(Fault::io("inspect", &dir, e)),
            }
        }
    }
    Ok(dir)
}

/// Makes the path of `comps` in `tree` ready to receive a file: its directories exist and
/// the path is not a directory of other keys. Returns the path.
fn plan(layout: &Layout, tree: Tree, comps: &[String]) -> Done<PathBuf> {
    let dir = prepare_dirs(layout, tree, comps)?;
    let mut named = comps.to_vec();
    if tree == Tree::Meta {
        if let Some(last) = named.last_mut() {
            last.push_str(SIDECAR_SUFFIX);
        }
    }
    let path = dir.join(&named[named.len() - 1]);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => match first_file_under(&path) {
            Ok(Some(inner)) => {
                named.extend(inner);
                Err(refused(format!(
                    "the key collides with object {:?}: it would need {} to be a file",
                    key_of(tree, &named),
                    path.display()
                )))
            }
            // Only empty directories left behind: they hold nothing, take them away.
            Ok(None) => layout
                .pins
                .remove_empty_tree(&path)
                .map(|()| path.clone())
                .map_err(|e| Fault::io("remove the empty directories", &path, e)),
            Err(e) => Err(Fault::io("inspect", &path, e)),
        },
        // A file or a link is replaced by the rename itself (links are not followed).
        Ok(_) => Ok(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path),
        Err(e) => Err(Fault::io("inspect", &path, e)),
    }
}

/// The relative path of some non-directory under `dir`, if there is one.
fn first_file_under(dir: &Path) -> io::Result<Option<Vec<String>>> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            if let Some(mut inner) = first_file_under(&entry.path())? {
                inner.insert(0, name);
                return Ok(Some(inner));
            }
        } else {
            return Ok(Some(vec![name]));
        }
    }
    Ok(None)
}

/// Renames `temp` to `path` and makes the rename durable. The caller has pinned the
/// directories on the way.
fn place(layout: &Layout, path: &Path, mut temp: Temp) -> Done<()> {
    match temp.rename(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(&layout.root)),
        Err(e) => Err(Fault::io(
            &format!("rename {} to", temp.path().display()),
            path,
            e,
        )),
    }
}

/// Writes `sidecar` as the commit record of `comps`.
fn write_sidecar(layout: &Layout, comps: &[String], sidecar: &Sidecar) -> Done<()> {
    let json = serde_json::to_vec(sidecar).map_err(|e| {
        Fault::new(
            ErrorKind::Permanent,
            format!("cannot encode the metadata: {e}"),
        )
    })?;
    let mut temp = Temp::create(&layout.tmp_dir())?;
    temp.write(&json)?;
    temp.sync()?;
    place(layout, &layout.path(Tree::Meta, comps), temp)
}

/// The sidecar record that describes the data file at `comps` now, if there is one.
fn described(layout: &Layout, comps: &[String]) -> Done<Option<Sidecar>> {
    Ok(lookup(layout, comps, false)?
        .map(|(sidecar, _)| sidecar)
        .filter(|s| !s.is_ordinary()))
}

/// The sidecar of `comps`, if there is a readable one.
pub fn read_sidecar(layout: &Layout, comps: &[String]) -> Done<Option<Sidecar>> {
    let path = layout.path(Tree::Meta, comps);
    match read_record(&path) {
        Ok(Some(bytes)) => Ok(serde_json::from_slice(&bytes)
            .inspect_err(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable metadata file; the object counts as missing");
            })
            .ok()),
        Ok(None) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!(path = %path.display(), error = %e, "not a metadata file ferry wrote; the object counts as missing");
            Ok(None)
        }
        Err(e) => Err(Fault::io("read", &path, e)),
    }
}

/// Whether every directory on the way to `comps` in `tree` is a real directory (not a link,
/// which could lead out of the store).
fn no_links_on_the_way(layout: &Layout, tree: Tree, comps: &[String]) -> Done<bool> {
    let mut dir = layout.base(tree);
    for comp in &comps[..comps.len() - 1] {
        dir.push(comp);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(false),
            Err(e) if absent(&e) => return Ok(false),
            Err(e) => return Err(Fault::io("inspect", &dir, e)),
        }
    }
    Ok(true)
}

/// The object at `comps`: the sidecar record that describes its data file, or, for an
/// ordinary file no ferry write describes, [`Sidecar::ordinary`]; with `open`, the data file
/// opened for reading. `None` when there is no data file (or a link or directory stands
/// there). The caller holds the key's lock, so no write of the key is half done.
pub fn lookup(
    layout: &Layout,
    comps: &[String],
    open: bool,
) -> Done<Option<(Sidecar, Option<File>)>> {
    if !no_links_on_the_way(layout, Tree::Data, comps)? {
        return Ok(None);
    }
    let path = layout.path(Tree::Data, comps);
    let (data, file) = if open {
        // O_NOFOLLOW: a link swapped in for the last component is no object of the store.
        let file = match File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if absent(&e) || e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
            Err(e) => return Err(Fault::io("open", &path, e)),
        };
        let data = file.metadata().map_err(|e| Fault::io("stat", &path, e))?;
        (data, Some(file))
    } else {
        match fs::symlink_metadata(&path) {
            Ok(data) => (data, None),
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(Fault::io("stat", &path, e)),
        }
    };
    if !data.is_file() {
        return Ok(None);
    }
    // No sidecar directory (or a link there, which is not followed): an ordinary file.
    let sidecar = match no_links_on_the_way(layout, Tree::Meta, comps)? {
        true => read_sidecar(layout, comps)?,
        false => None,
    };
    let record = sidecar
        .and_then(|sidecar| sidecar.matching(&data))
        .unwrap_or_else(|| Sidecar::ordinary(&data));
    Ok(Some((record, file)))
}

/// Removes the object at `comps` (data file first: a sidecar without its data file is no
/// object), then the directories its removal left empty. Nothing there is success. The
/// caller holds the key's lock.
pub fn remove(layout: &Layout, comps: &[String]) -> Done<()> {
    {
        let _pinned = layout.pin_key(comps);
        for tree in [Tree::Data, Tree::Meta] {
            if no_links_on_the_way(layout, tree, comps)? {
                remove_file(layout, tree, comps)?;
            }
        }
    }
    prune(layout, Tree::Meta, comps);
    prune(layout, Tree::Data, comps);
    Ok(())
}

fn remove_file(layout: &Layout, tree: Tree, comps: &[String]) -> Done<()> {
    let path = layout.path(tree, comps);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {}
        Err(e) if absent(&e) => return Ok(()),
        Err(e) => return Err(Fault::io("inspect", &path, e)),
    }
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(&layout.root)),
        Err(e) if absent(&e) => Ok(()),
        Err(e) => Err(Fault::io("remove", &path, e)),
    }
}

/// Removes the directories of `comps` that are empty now and not in use, deepest first.
fn prune(layout: &Layout, tree: Tree, comps: &[String]) {
    for depth in (1..comps.len()).rev() {
        let mut dir = layout.base(tree);
        dir.extend(&comps[..depth]);
        if !layout.pins.remove_if_unused(&dir) {
            return;
        }
    }
}
