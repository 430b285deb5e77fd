//! Walks over an `fs` store: listing its committed objects, sweeping what crashed processes
//! left in ferry's own directories.
//!
//! Blocking, like [`super::disk`].

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::disk::{absent, Done, Fault, Layout};
use super::keys::{self, RESERVED};
use super::objects::read_sidecar;
use crate::storage::Listed;

/// Every committed object whose key starts with `prefix`, sorted by key.
pub fn list(layout: &Layout, prefix: &str) -> Done<Vec<Listed>> {
    let mut listed = Vec::new();
    walk(layout, &layout.root, "", prefix, &mut listed)?;
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(listed)
}

fn walk(layout: &Layout, dir: &Path, rel: &str, prefix: &str, out: &mut Vec<Listed>) -> Done<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // A directory emptied and pruned while we walked holds nothing.
        Err(e) if absent(&e) && !rel.is_empty() => return Ok(()),
        Err(e) => return Err(Fault::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Fault::io("list", dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if rel.is_empty() && name == RESERVED {
            continue;
        }
        let key = format!("{rel}{name}");
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            let sub = format!("{key}/");
            if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                walk(layout, &entry.path(), &sub, prefix, out)?;
            }
        } else if kind.is_file() && key.starts_with(prefix) {
            let Ok(comps) = keys::components(&key) else {
                continue;
            };
            let Some(sidecar) = read_sidecar(layout, &comps)? else {
                continue;
            };
            // DirEntry::metadata does not follow links.
            if entry.metadata().is_ok_and(|data| sidecar.describes(&data)) {
                out.push(sidecar.listed(&key));
            }
        }
    }
    Ok(())
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
