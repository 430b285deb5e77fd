//! The order of an `fs` location's writes: each write's `last_modified_ms` is later than
//! every stamp this location issued before, even when the system clock steps backwards or
//! ferry restarts with a clock behind the last run's. A copy on a target that is stamped with
//! a later time than a new write is "newer" (the write is superseded), so stamps that went
//! back in time would make the newest version look old: it would not be copied, and a
//! transient buffer would delete it.
//!
//! A reservation is kept in `.ferry/clock`: stamps up to it may have been issued, so after a
//! restart every stamp is above it. It is moved ahead ([`RESERVE_MS`]) once a stamp would pass
//! it: one small fsynced write per ten minutes of stamps, not one per write.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::beneath::Dir;
use super::disk::{read_record, Done, Fault, Temp};
use crate::storage::ErrorKind;

/// How far past the current stamp a reservation reaches.
const RESERVE_MS: i64 = 10 * 60 * 1000;

/// A location's stamp source; one per location per process (the location is claimed).
#[derive(Debug)]
pub struct Clock {
    path: PathBuf,
    state: Mutex<Option<State>>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// The last stamp issued.
    last: i64,
    /// Stamps up to here are covered by `.ferry/clock`.
    reserved: i64,
}

impl Clock {
    /// The clock whose reservation is kept at `path` (read on first use).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            state: Mutex::new(None),
        }
    }

    /// The stamp of a write made at `now_ms` (by the system clock): `now_ms`, or one past
    /// the last stamp issued if that is later.
    pub fn stamp(&self, now_ms: i64) -> Done<i64> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = match *guard {
            Some(state) => state,
            None => {
                let reserved = self.load()?;
                State {
                    last: reserved,
                    reserved,
                }
            }
        };
        let stamp = now_ms.max(state.last.saturating_add(1));
        let mut next = State {
            last: stamp,
            reserved: state.reserved,
        };
        if stamp > state.reserved {
            next.reserved = stamp.saturating_add(RESERVE_MS);
            self.store(next.reserved)?;
        }
        *guard = Some(next);
        Ok(stamp)
    }

    /// The directory of the clock file, and the file's name there.
    fn place(&self) -> Done<(Dir, &str)> {
        let parent = self.path.parent().unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("clock");
        let dir = Dir::at(parent).map_err(|e| Fault::io("open the directory", parent, e))?;
        Ok((dir, name))
    }

    /// The reservation on disk; none yet is 0 (any stamp will do).
    fn load(&self) -> Done<i64> {
        let (dir, name) = self.place()?;
        let bytes = read_record(&dir, name).map_err(|e| Fault::io("read", &self.path, e))?;
        let Some(bytes) = bytes else { return Ok(0) };
        String::from_utf8_lossy(&bytes)
            .trim()
            .parse::<i64>()
            .map_err(|e| {
                Fault::new(
                    ErrorKind::Config,
                    format!(
                        "{} does not hold a time in milliseconds ({e}); remove it only if no write of this location is waiting to be replicated",
                        self.path.display()
                    ),
                )
            })
    }

    fn store(&self, reserved: i64) -> Done<()> {
        let (dir, name) = self.place()?;
        let mut temp = Temp::create(&dir)?;
        temp.write(reserved.to_string().as_bytes())?;
        temp.sync()?;
        temp.place_in(&dir, name)?;
        dir.sync()
            .map_err(|e| Fault::io("fsync the directory", dir.path(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_never_go_back_even_across_a_restart_with_the_clock_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clock");
        let clock = Clock::new(path.clone());
        assert_eq!(clock.stamp(1_000_000).expect("stamp"), 1_000_000);
        assert_eq!(clock.stamp(2_000_000).expect("stamp"), 2_000_000);
        // The system clock steps back an hour: stamps go on from the last one.
        assert_eq!(
            clock.stamp(2_000_000 - 3_600_000).expect("stamp"),
            2_000_001
        );
        assert_eq!(clock.stamp(2_000_000).expect("stamp"), 2_000_002);
        // A restart with the clock still behind: above everything issued before.
        let again = Clock::new(path.clone());
        let after = again.stamp(0).expect("stamp");
        assert!(after > 2_000_002, "{after}");
        assert!(after <= 2_000_002 + RESERVE_MS + 1, "{after}");
        // The reservation is written once per RESERVE_MS of stamps, not per write.
        let written = std::fs::metadata(&path)
            .expect("clock file")
            .modified()
            .ok();
        for i in 1..100 {
            again.stamp(i).expect("stamp");
        }
        assert_eq!(
            std::fs::metadata(&path)
                .expect("clock file")
                .modified()
                .ok(),
            written
        );
    }

    #[test]
    fn a_damaged_clock_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clock");
        std::fs::write(&path, "yesterday").expect("write");
        let fault = Clock::new(path).stamp(5).expect_err("refused");
        assert!(fault.message.contains("clock"), "{}", fault.message);
    }
}
