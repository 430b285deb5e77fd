//! The directories of an `fs` store that writes and deletes share: creating the ones a key
//! needs, and pruning the ones a delete left empty, without one undoing the other.
//!
//! Keys under one prefix share directories, so a write of `a/x` and a delete of `a/y` race
//! for `a/`: the delete may prune `a/` between the write creating it and renaming into it,
//! or between another delete's unlink and its directory fsync. Every operation that works
//! inside a directory first *pins* it (and each directory above it); pruning removes only
//! directories nobody has pinned, under the same lock, so within one process a pinned
//! directory that exists stays until it is unpinned.
//!
//! Blocking, like [`super::disk`].

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::beneath::{kind_of, Dir, Kind};

/// The pinned directories of one store, with how many operations hold each.
#[derive(Default, Debug)]
pub struct DirPins {
    pinned: Mutex<HashMap<PathBuf, usize>>,
}

/// Directories held until dropped.
#[must_use = "the directories are unpinned when this is dropped"]
pub struct Pinned {
    pins: Arc<DirPins>,
    dirs: Vec<PathBuf>,
}

impl DirPins {
    fn table(&self) -> MutexGuard<'_, HashMap<PathBuf, usize>> {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `dirs` until the guard is dropped.
    pub fn pin(self: &Arc<Self>, dirs: Vec<PathBuf>) -> Pinned {
        let mut table = self.table();
        for dir in &dirs {
            *table.entry(dir.clone()).or_default() += 1;
        }
        Pinned {
            pins: self.clone(),
            dirs,
        }
    }

    /// Removes the directory `name` in `parent` if it is empty and not pinned (the parent's
    /// entry made durable). Returns whether it was removed.
    pub fn remove_if_unused(&self, parent: &Dir, name: &str) -> bool {
        let table = self.table();
        if table.contains_key(&parent.join(name)) {
            return false;
        }
        if parent.rmdir(name).is_err() {
            return false;
        }
        drop(table);
        let _ = parent.sync();
        true
    }

    /// Removes the directory `name` in `parent` and the directories under it, which must
    /// hold nothing else and be pinned by nobody; fails (leaving what is left) if one is not
    /// empty or pinned.
    pub fn remove_empty_tree(&self, parent: &Dir, name: &str) -> io::Result<()> {
        let dir = parent.child(name)?;
        for entry in dir.entries()? {
            let inner = String::from_utf8_lossy(&entry.name).into_owned();
            let kind = match entry.kind {
                Some(kind) => kind,
                None => kind_of(&dir.stat(&inner)?),
            };
            if kind == Kind::Dir {
                self.remove_empty_tree(&dir, &inner)?;
            }
        }
        if self.remove_if_unused(parent, name) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                "in use by another write",
            ))
        }
    }

    #[cfg(test)]
    pub fn pinned_count(&self) -> usize {
        self.table().len()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut table = self.pins.table();
        for dir in &self.dirs {
            if let Some(count) = table.get_mut(dir) {
                *count -= 1;
                if *count == 0 {
                    table.remove(dir);
                }
            }
        }
    }
}

/// The directories from `base` down to the one that holds the last of `comps`, `base`
/// excluded.
pub fn ancestors(base: &Path, comps: &[String]) -> Vec<PathBuf> {
    let mut dir = base.to_path_buf();
    let mut out = Vec::with_capacity(comps.len().saturating_sub(1));
    for comp in &comps[..comps.len().saturating_sub(1)] {
        dir.push(comp);
        out.push(dir.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_directory_is_not_pruned_until_released() {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let dir = tmp.path().join("a");
        std::fs::create_dir(&dir).expect("mkdir");
        let pins = Arc::new(DirPins::default());
        let parent = Dir::at(tmp.path()).expect("open");
        let first = pins.pin(vec![dir.clone()]);
        let second = pins.pin(vec![dir.clone()]);
        assert!(!pins.remove_if_unused(&parent, "a"));
        drop(first);
        assert!(!pins.remove_if_unused(&parent, "a"), "still pinned once");
        drop(second);
        assert_eq!(pins.pinned_count(), 0);
        assert!(pins.remove_if_unused(&parent, "a"));
        assert!(!dir.exists());
    }

    #[test]
    fn ancestors_stop_above_the_last_component() {
        let comps: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            ancestors(Path::new("/r"), &comps),
            [PathBuf::from("/r/a"), PathBuf::from("/r/a/b")]
        );
        assert!(ancestors(Path::new("/r"), &comps[..1]).is_empty());
    }
}
