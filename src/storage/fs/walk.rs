//! Walks over an `fs` store: listing its objects (ferry's writes and ordinary files), sweeping
//! what crashed processes left in ferry's own directories.
//!
//! Blocking, like [`super::disk`].

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::beneath::{is_link, kind_of, Dir, Kind};
use super::disk::Tree;
use super::disk::{absent, now_ns, Done, Fault, Layout};
use super::keys::SIDECAR_SUFFIX;
use super::keys::{self, RESERVED};
use super::meta::Sidecar;
use super::objects::sidecar_in;
use crate::storage::Listed;

/// Every object whose key starts with `prefix`, sorted by key: ferry's writes, and ordinary
/// files that have not changed for `layout.stable_after` (one still being written waits).
pub fn list(layout: &Layout, prefix: &str) -> Done<Vec<Listed>> {
    let mut listed = Vec::new();
    each(layout, prefix, |l| {
        listed.push(l);
        true
    })?;
    Ok(listed)
}

/// [`list`] one object at a time, in ascending byte order of the keys, until `found` returns
/// false; memory O(entries of the directories on the way), not O(objects). Returns whether
/// the walk reached the end.
pub fn each(layout: &Layout, prefix: &str, found: impl FnMut(Listed) -> bool) -> Done<bool> {
    each_after(layout, prefix, None, found)
}

/// [`each`] from the first key after `after`: files and whole directories that sort before it
/// are passed over unread, so a listing resumed deep in a large tree costs what it returns.
pub fn each_after(
    layout: &Layout,
    prefix: &str,
    after: Option<&str>,
    mut found: impl FnMut(Listed) -> bool,
) -> Done<bool> {
    let now = Stamp {
        now_ns: now_ns() as i64,
        settle_ns: layout.stable_after.as_nanos().min(i64::MAX as u128) as i64,
        after: after.map(str::to_string),
    };
    let root = Dir::at(&layout.root).map_err(|e| Fault::io("list", &layout.root, e))?;
    let meta_base = layout.dir_of(Tree::Meta, &[]).ok();
    let dirs = Dirs {
        data: root,
        meta: meta_base.as_ref().and_then(|m| m.try_clone().ok()),
        meta_base: meta_base.as_ref(),
        comps: Vec::new(),
    };
    walk(&now, &dirs, "", prefix, &mut found)
}

/// A directory of the data tree being walked, and its counterpart in the metadata tree if
/// there was one when the walk entered it.
struct Dirs<'a> {
    data: Dir,
    meta: Option<Dir>,
    /// The metadata tree's top, to look again for `meta` (see [`object_at`]).
    meta_base: Option<&'a Dir>,
    /// Where `data` is, under the root.
    comps: Vec<String>,
}

impl<'a> Dirs<'a> {
    fn child(&self, name: &str) -> std::io::Result<Self> {
        let mut comps = self.comps.clone();
        comps.push(name.to_string());
        Ok(Self {
            data: self.data.child(name)?,
            meta: self.meta.as_ref().and_then(|m| m.child(name).ok()),
            meta_base: self.meta_base,
            comps,
        })
    }

    /// The sidecar of the data file `name` here, if there is one.
    fn sidecar(&self, name: &str) -> Done<Option<Sidecar>> {
        let name = format!("{name}{SIDECAR_SUFFIX}");
        if let Some(meta) = &self.meta {
            return sidecar_in(meta, &name);
        }
        // A ferry write creates its sidecar's directory before its data file: one that is
        // there now may be newer than this walk's look.
        let again = match (self.meta_base, self.comps.is_empty()) {
            (Some(base), false) => base.descend(&self.comps).ok(),
            _ => None,
        };
        match again {
            Some(meta) => sidecar_in(&meta, &name),
            None => Ok(None),
        }
    }
}

/// When a listing looks, how old an ordinary file must be to be listed, and where it starts.
struct Stamp {
    now_ns: i64,
    settle_ns: i64,
    after: Option<String>,
}

impl Stamp {
    /// Whether every key of the directory `sub` (a key prefix ending in `/`) sorts at or
    /// before `after`: then none of it is listed. A key `sub…` and `after` compare as `sub`
    /// and `after` do unless `after` starts with `sub`.
    fn passes_over(&self, sub: &str) -> bool {
        self.after
            .as_deref()
            .is_some_and(|after| sub < after && !after.starts_with(sub))
    }

    fn before_start(&self, key: &str) -> bool {
        self.after.as_deref().is_some_and(|after| key <= after)
    }
}

/// One entry of a directory, named as it sorts among the keys: a directory `d` holds the
/// keys `d/...`, so it sorts as `d/` (after `d.txt`, before `d0`).
struct Entry {
    sorts_as: String,
    name: String,
    dir: bool,
}

/// The entries of `dir` in key order (directories and regular files: links and the like
/// are no objects).
fn sorted_entries(dir: &Dir, rel: &str) -> Done<Vec<Entry>> {
    let read = dir
        .entries()
        .map_err(|e| Fault::io("list", dir.path(), e))?;
    let mut entries = Vec::new();
    for entry in read {
        let Ok(name) = String::from_utf8(entry.name) else {
            continue;
        };
        if rel.is_empty() && name == RESERVED {
            continue;
        }
        let kind = match entry.kind {
            Some(kind) => kind,
            None => match dir.stat(&name) {
                Ok(meta) => kind_of(&meta),
                Err(_) => continue,
            },
        };
        let sorts_as = match kind {
            Kind::Dir => format!("{name}/"),
            Kind::File => name.clone(),
            Kind::Other => continue,
        };
        entries.push(Entry {
            sorts_as,
            name,
            dir: kind == Kind::Dir,
        });
    }
    entries.sort_unstable_by(|a, b| a.sorts_as.cmp(&b.sorts_as));
    Ok(entries)
}

fn walk(
    now: &Stamp,
    dirs: &Dirs,
    rel: &str,
    prefix: &str,
    found: &mut impl FnMut(Listed) -> bool,
) -> Done<bool> {
    let dir = &dirs.data;
    for entry in sorted_entries(dir, rel)? {
        let key = format!("{rel}{}", entry.name);
        if entry.dir {
            let sub = format!("{key}/");
            if !(sub.starts_with(prefix) || prefix.starts_with(&sub)) || now.passes_over(&sub) {
                continue;
            }
            let inner = match dirs.child(&entry.name) {
                Ok(inner) => inner,
                // Emptied and pruned while we walked, or swapped for a link or a file: it
                // holds no object of the store.
                Err(e) if absent(&e) || is_link(&e) => continue,
                Err(e) => return Err(Fault::io("list", &dir.join(&entry.name), e)),
            };
            if !walk(now, &inner, &sub, prefix, found)? {
                return Ok(false);
            }
            continue;
        }
        if !key.starts_with(prefix) || now.before_start(&key) {
            continue;
        }
        if keys::components(&key).is_err() {
            continue;
        }
        if let Some(record) = object_at(dirs, &entry.name)? {
            if (!record.is_ordinary() || record.settled(now.now_ns, now.settle_ns))
                && !found(record.listed(&key))
            {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The object whose data file is `name` in `dirs`, without the key's lock: the data file is
/// looked at before its sidecar, so a write that completes in between is seen through the
/// sidecar's `prior` (see [`super::meta::Sidecar`]). If the file matches no record and has
/// changed since it was looked at, a write is under way: the next listing sees its outcome.
fn object_at(dirs: &Dirs, name: &str) -> Done<Option<Sidecar>> {
    let dir = &dirs.data;
    let stat = || match dir.stat(name) {
        Ok(data) if data.is_file() => Ok(Some(data)),
        Ok(_) => Ok(None),
        Err(e) if absent(&e) => Ok(None),
        Err(e) => Err(Fault::io("stat", &dir.join(name), e)),
    };
    let Some(data) = stat()? else {
        return Ok(None);
    };
    if let Some(record) = dirs.sidecar(name)?.and_then(|s| s.matching(&data)) {
        return Ok(Some(record));
    }
    let ordinary = Sidecar::ordinary(&data);
    Ok(stat()?
        .map(|again| Sidecar::ordinary(&again))
        .filter(|again| again.version_id == ordinary.version_id))
}

/// Removes entries of `dir` not modified for `age`: what a crashed process left behind.
pub fn remove_stale(dir: &Path, age: Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|elapsed| elapsed > age);
        if old {
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match removed {
                Ok(()) => tracing::info!(path = %path.display(), "removed a stale leftover"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale leftover")
                }
            }
        }
    }
}
