//! One object on disk: committing a write (sidecar, then data file, each renamed into place
//! and made durable), looking an object up (a ferry write or an ordinary file), recording an
//! ordinary file's ETag once read, removing one. Keys that collide with other keys, and links
//! on the way, are refused here. Every operation pins the directories it works in
//! ([`super::dirs`]), so concurrent writes and deletes of keys sharing them cannot undo each
//! other.
//!
//! Blocking, like [`super::disk`].

use std::fs::{File, Metadata};
use std::io;
use std::path::PathBuf;

use super::beneath::{is_link, kind_of, Dir, Kind};
use super::disk::{absent, new_id, read_record, Done, Fault, Layout, Temp, Tree};
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
    let meta = plan(layout, Tree::Meta, comps)?;
    let data = plan(layout, Tree::Data, comps)?;
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
    write_sidecar(layout, &meta, &sidecar)?;
    if let Err(fault) = place(&data, pending.temp) {
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
    let meta = plan(layout, Tree::Meta, comps)?;
    let sidecar = Sidecar {
        etag: super::disk::hex(md5),
        ..seen.clone()
    };
    write_sidecar(layout, &meta, &sidecar)
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

/// Where the file of a key goes in one tree: its directory, opened beneath the root, and its
/// name there.
struct Spot {
    dir: Dir,
    name: String,
}

impl Spot {
    fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
}

/// The opened base directory of `tree`.
fn base(layout: &Layout, tree: Tree) -> Done<Dir> {
    layout
        .dir_of(tree, &[])
        .map_err(|e| Fault::io("open the directory", &layout.base(tree), e))
}

/// Makes sure every directory of `comps` (all but the last component) exists in `tree` as a
/// real directory, not a link or a file, and opens the last one: each is opened from the one
/// above without following links, so nothing swapped in meanwhile leads elsewhere.
fn prepare_dirs(layout: &Layout, tree: Tree, comps: &[String]) -> Done<Dir> {
    let mut dir = base(layout, tree)?;
    for depth in 1..comps.len() {
        let name = &comps[depth - 1];
        let mut created = false;
        dir = loop {
            let e = match dir.child(name) {
                Ok(child) => break child,
                Err(e) => e,
            };
            let path = dir.join(name);
            if is_link(&e) || e.raw_os_error() == Some(libc::ENOTDIR) {
                return Err(not_a_directory(&dir, name, tree, &comps[..depth]));
            }
            if e.kind() != io::ErrorKind::NotFound || created {
                return Err(Fault::io("open the directory", &path, e));
            }
            created = true;
            match dir.mkdir(name) {
                Ok(()) => dir
                    .sync()
                    .map_err(|e| Fault::io("fsync the directory", dir.path(), e))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Fault::io("create the directory", &path, e)),
            }
        };
    }
    Ok(dir)
}

/// Why `name` in `dir`, on the way to key `comps` in `tree`, cannot be entered.
fn not_a_directory(dir: &Dir, name: &str, tree: Tree, comps: &[String]) -> Fault {
    let link = dir.stat(name).is_ok_and(|m| m.file_type().is_symlink());
    if link {
        refused(format!(
            "{} is a symbolic link; ferry does not follow links out of the store",
            dir.join(name).display()
        ))
    } else if tree == Tree::Meta {
        refused(format!(
            "the key collides with the metadata of object {:?}",
            key_of(tree, comps)
        ))
    } else {
        refused(format!(
            "the key collides with object {:?}, a file where a directory is needed",
            key_of(tree, comps)
        ))
    }
}

/// Makes the place of `comps` in `tree` ready to receive a file: its directories exist and
/// it is not a directory of other keys.
fn plan(layout: &Layout, tree: Tree, comps: &[String]) -> Done<Spot> {
    let spot = Spot {
        dir: prepare_dirs(layout, tree, comps)?,
        name: layout.file_name(tree, comps),
    };
    match spot.dir.stat(&spot.name) {
        Ok(m) if m.is_dir() => {
            let inner = spot
                .dir
                .child(&spot.name)
                .and_then(|sub| first_file_under(&sub))
                .map_err(|e| Fault::io("inspect", &spot.path(), e))?;
            match inner {
                Some(inner) => {
                    let mut named = comps.to_vec();
                    if let Some(last) = named.last_mut() {
                        last.clone_from(&spot.name);
                    }
                    named.extend(inner);
                    Err(refused(format!(
                        "the key collides with object {:?}: it would need {} to be a file",
                        key_of(tree, &named),
                        spot.path().display()
                    )))
                }
                // Only empty directories left behind: they hold nothing, take them away.
                None => match layout.pins.remove_empty_tree(&spot.dir, &spot.name) {
                    Ok(()) => Ok(spot),
                    Err(e) => Err(Fault::io("remove the empty directories", &spot.path(), e)),
                },
            }
        }
        // A file or a link is replaced by the rename itself (links are not followed).
        Ok(_) => Ok(spot),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(spot),
        Err(e) => Err(Fault::io("inspect", &spot.path(), e)),
    }
}

/// The relative path of some non-directory under `dir`, if there is one.
fn first_file_under(dir: &Dir) -> io::Result<Option<Vec<String>>> {
    for entry in dir.entries()? {
        let name = String::from_utf8_lossy(&entry.name).into_owned();
        let kind = match entry.kind {
            Some(kind) => kind,
            None => kind_of(&dir.stat(&name)?),
        };
        if kind == Kind::Dir {
            if let Some(mut inner) = first_file_under(&dir.child(&name)?)? {
                inner.insert(0, name);
                return Ok(Some(inner));
            }
        } else {
            return Ok(Some(vec![name]));
        }
    }
    Ok(None)
}

/// Renames `temp` to `spot` and makes the rename durable. The caller has pinned the
/// directories on the way.
fn place(spot: &Spot, mut temp: Temp) -> Done<()> {
    temp.place_in(&spot.dir, &spot.name)?;
    spot.dir
        .sync()
        .map_err(|e| Fault::io("fsync the directory", spot.dir.path(), e))
}

/// Writes `sidecar` as the commit record of the key whose sidecar goes to `spot`.
fn write_sidecar(layout: &Layout, spot: &Spot, sidecar: &Sidecar) -> Done<()> {
    let json = serde_json::to_vec(sidecar).map_err(|e| {
        Fault::new(
            ErrorKind::Permanent,
            format!("cannot encode the metadata: {e}"),
        )
    })?;
    let mut temp = Temp::create(&layout.tmp()?)?;
    temp.write(&json)?;
    temp.sync()?;
    place(spot, temp)
}

/// The sidecar record that describes the data file at `comps` now, if there is one.
fn described(layout: &Layout, comps: &[String]) -> Done<Option<Sidecar>> {
    Ok(lookup(layout, comps, false)?
        .map(|(sidecar, _)| sidecar)
        .filter(|s| !s.is_ordinary()))
}

/// The directory of `tree` that holds `comps`, or `None` if there is none to look in (it is
/// missing, or a file or a link stands on the way: no object of the store is there).
fn existing_dir(layout: &Layout, tree: Tree, comps: &[String]) -> Done<Option<Dir>> {
    match layout.dir_of(tree, comps) {
        Ok(dir) => Ok(Some(dir)),
        Err(e) if absent(&e) || is_link(&e) => Ok(None),
        Err(e) => Err(Fault::io(
            "open the directory of",
            &layout.path(tree, comps),
            e,
        )),
    }
}

/// The sidecar of `comps`, if there is a readable one.
pub fn read_sidecar(layout: &Layout, comps: &[String]) -> Done<Option<Sidecar>> {
    match existing_dir(layout, Tree::Meta, comps)? {
        Some(dir) => sidecar_in(&dir, &layout.file_name(Tree::Meta, comps)),
        None => Ok(None),
    }
}

/// The sidecar file `name` in the metadata directory `dir`, if there is a readable one.
pub fn sidecar_in(dir: &Dir, name: &str) -> Done<Option<Sidecar>> {
    let path = dir.join(name);
    match read_record(dir, name) {
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

/// The object at `comps`: the sidecar record that describes its data file, or, for an
/// ordinary file no ferry write describes, [`Sidecar::ordinary`]; with `open`, the data file
/// opened for reading. `None` when there is no data file (or a link or directory stands
/// there or on the way). The caller holds the key's lock, so no write of the key is half done.
pub fn lookup(
    layout: &Layout,
    comps: &[String],
    open: bool,
) -> Done<Option<(Sidecar, Option<File>)>> {
    let Some(dir) = existing_dir(layout, Tree::Data, comps)? else {
        return Ok(None);
    };
    let name = layout.file_name(Tree::Data, comps);
    let (data, file) = if open {
        // Not through a link swapped in for the last component: no object of the store.
        let file = match dir.open_file(&name, libc::O_RDONLY | libc::O_NONBLOCK) {
            Ok(file) => file,
            Err(e) if absent(&e) || is_link(&e) => return Ok(None),
            Err(e) => return Err(Fault::io("open", &dir.join(&name), e)),
        };
        let data = file
            .metadata()
            .map_err(|e| Fault::io("stat", &dir.join(&name), e))?;
        (data, Some(file))
    } else {
        match dir.stat(&name) {
            Ok(data) => (data, None),
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(Fault::io("stat", &dir.join(&name), e)),
        }
    };
    if !data.is_file() {
        return Ok(None);
    }
    // No sidecar directory (or a link there, which is not followed): an ordinary file.
    let record = read_sidecar(layout, comps)?
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
            remove_file(layout, tree, comps)?;
        }
    }
    prune(layout, Tree::Meta, comps);
    prune(layout, Tree::Data, comps);
    Ok(())
}

fn remove_file(layout: &Layout, tree: Tree, comps: &[String]) -> Done<()> {
    let Some(dir) = existing_dir(layout, tree, comps)? else {
        return Ok(());
    };
    let name = layout.file_name(tree, comps);
    match dir.stat(&name) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {}
        Err(e) if absent(&e) => return Ok(()),
        Err(e) => return Err(Fault::io("inspect", &dir.join(&name), e)),
    }
    match dir.unlink(&name) {
        Ok(()) => dir
            .sync()
            .map_err(|e| Fault::io("fsync the directory", dir.path(), e)),
        Err(e) if absent(&e) => Ok(()),
        Err(e) => Err(Fault::io("remove", &dir.join(&name), e)),
    }
}

/// Removes the directories of `comps` that are empty now and not in use, deepest first.
fn prune(layout: &Layout, tree: Tree, comps: &[String]) {
    for depth in (1..comps.len()).rev() {
        // The directory above the one to remove, as `dir_of` opens the holder of a key.
        let Ok(parent) = layout.dir_of(tree, &comps[..depth]) else {
            return;
        };
        if !layout.pins.remove_if_unused(&parent, &comps[depth - 1]) {
            return;
        }
    }
}
