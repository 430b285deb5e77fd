//! Walks over an `fs` store: listing its objects (ferry's writes and ordinary files), sweeping
//! what crashed processes left in ferry's own directories.
//!
//! Blocking, like [`super::disk`].

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::disk::{absent, now_ns, Done, Fault, Layout};
use super::keys::{self, RESERVED};
use super::meta::Sidecar;
use super::objects::read_sidecar;
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
    walk(layout, &now, &layout.root, "", prefix, &mut found)
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

/// The entries of `dir` in key order; `None` if the directory is gone.
fn sorted_entries(dir: &Path, rel: &str) -> Done<Option<Vec<Entry>>> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        // A directory emptied and pruned while we walked holds nothing.
        Err(e) if absent(&e) && !rel.is_empty() => return Ok(None),
        Err(e) => return Err(Fault::io("list", dir, e)),
    };
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| Fault::io("list", dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if rel.is_empty() && name == RESERVED {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() || kind.is_file() {
            let sorts_as = if kind.is_dir() {
                format!("{name}/")
            } else {
                name.clone()
            };
            entries.push(Entry {
                sorts_as,
                name,
                dir: kind.is_dir(),
            });
        }
    }
    entries.sort_unstable_by(|a, b| a.sorts_as.cmp(&b.sorts_as));
    Ok(Some(entries))
}

fn walk(
    layout: &Layout,
    now: &Stamp,
    dir: &Path,
    rel: &str,
    prefix: &str,
    found: &mut impl FnMut(Listed) -> bool,
) -> Done<bool> {
    let Some(entries) = sorted_entries(dir, rel)? else {
        return Ok(true);
    };
    for entry in entries {
        let key = format!("{rel}{}", entry.name);
        let path = dir.join(&entry.name);
        if entry.dir {
            let sub = format!("{key}/");
            if (sub.starts_with(prefix) || prefix.starts_with(&sub))
                && !now.passes_over(&sub)
                && !walk(layout, now, &path, &sub, prefix, found)?
            {
                return Ok(false);
            }
            continue;
        }
        if !key.starts_with(prefix) || now.before_start(&key) {
            continue;
        }
        let Ok(comps) = keys::components(&key) else {
            continue;
        };
        if let Some(record) = object_at(layout, &path, &comps)? {
            if (!record.is_ordinary() || record.settled(now.now_ns, now.settle_ns))
                && !found(record.listed(&key))
            {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The object whose data file is `path` (key `comps`), without the key's lock: the data
/// file is looked at before its sidecar, so a write that completes in between is seen through
/// the sidecar's `prior` (see [`super::meta::Sidecar`]). If the file matches no record and has
/// changed since it was looked at, a write is under way: the next listing sees its outcome.
fn object_at(layout: &Layout, path: &Path, comps: &[String]) -> Done<Option<Sidecar>> {
    let stat = |path: &Path| match fs::symlink_metadata(path) {
        Ok(data) if data.is_file() => Ok(Some(data)),
        Ok(_) => Ok(None),
        Err(e) if absent(&e) => Ok(None),
        Err(e) => Err(Fault::io("stat", path, e)),
    };
    let Some(data) = stat(path)? else {
        return Ok(None);
    };
    if let Some(record) = read_sidecar(layout, comps)?.and_then(|s| s.matching(&data)) {
        return Ok(Some(record));
    }
    let ordinary = Sidecar::ordinary(&data);
    Ok(stat(path)?
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
