//! [`Identity`]: the worker's persistent id, and the file lock that keeps it ours.
//!
//! The master never gives two replicas of one chunk to the same worker id, so the id must
//! survive restarts (reputation follows it) and two workers on one machine must not share one.
//! Each id lives in its own file, `native-<32 hex digits>`; a worker holds an exclusive lock
//! on that file for as long as it runs ([`std::fs::File::try_lock`], an advisory `flock` on
//! Unix, released by the OS when the process dies).
//!
//! Without an explicit file, ids live in a directory ([`default_dir`]) as `identity-0`,
//! `identity-1`, ...: a worker takes the first one whose lock is free, so the first worker on
//! a machine always gets `identity-0`, a second one started beside it `identity-1`, and so on.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use grid_protocol::is_valid_worker_id;

use crate::WorkerError;

/// Most identity files tried in a directory before giving up.
const MAX_IDENTITY_SLOTS: usize = 1024;

/// A worker id together with the locked file it came from. Keep it alive for the whole run:
/// dropping it releases the lock and lets another worker on this machine take the same id.
#[derive(Debug)]
pub struct Identity {
    /// The id sent in every hello.
    worker_id: String,
    /// Where it is stored.
    path: PathBuf,
    /// The open, exclusively locked file; the lock lasts as long as this handle.
    _lock: File,
}

impl Identity {
    /// The identity from `file` if given (see [`Identity::from_file`]), else the first free one
    /// in [`default_dir`] (see [`Identity::from_dir`]).
    pub fn resolve(file: Option<&Path>) -> Result<Self, WorkerError> {
        match file {
            Some(path) => Identity::from_file(path),
            None => Identity::from_dir(&default_dir().ok_or(WorkerError::NoIdentityDir)?),
        }
    }

    /// Read the id in `path`, or create the file with a new id. Fails if another worker holds
    /// the file: two processes must never share an id.
    pub fn from_file(path: &Path) -> Result<Self, WorkerError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|source| WorkerError::Identity {
                path: parent.to_owned(),
                source,
            })?;
        }
        Identity::try_take(path)?.ok_or_else(|| WorkerError::IdentityInUse(path.to_owned()))
    }

    /// The first identity in `dir` (`identity-0`, `identity-1`, ...) that no other running
    /// worker holds; creates the directory and the file as needed.
    pub fn from_dir(dir: &Path) -> Result<Self, WorkerError> {
        fs::create_dir_all(dir).map_err(|source| WorkerError::Identity {
            path: dir.to_owned(),
            source,
        })?;
        for slot in 0..MAX_IDENTITY_SLOTS {
            if let Some(identity) = Identity::try_take(&dir.join(format!("identity-{slot}")))? {
                return Ok(identity);
            }
        }
        Err(WorkerError::Identity {
            path: dir.to_owned(),
            source: std::io::Error::other(format!(
                "all {MAX_IDENTITY_SLOTS} identity files are in use"
            )),
        })
    }

    /// The worker id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The file the id is stored in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lock `path` and read (or write) its id; `None` if another process holds the lock.
    fn try_take(path: &Path) -> Result<Option<Self>, WorkerError> {
        let io_error = |source| WorkerError::Identity {
            path: path.to_owned(),
            source,
        };
        // Open without truncating: the file may be someone else's until we hold the lock.
        // The id is a bearer secret (it names the volunteer's credit and reputation): the
        // file is the owner's only (L3).
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(source)) => return Err(io_error(source)),
        }

        // A file made before (or by hand) keeps its mode otherwise.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io_error)?;
        }

        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io_error)?;
        let stored = text.trim();
        let worker_id = if stored.is_empty() {
            // New file (or one whose creation was interrupted): give it a fresh id.
            let id = new_worker_id();
            file.set_len(0).map_err(io_error)?;
            file.seek(SeekFrom::Start(0)).map_err(io_error)?;
            file.write_all(format!("{id}\n").as_bytes())
                .map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
            id
        } else if is_valid_worker_id(stored) {
            stored.to_owned()
        } else {
            // Never overwrite something we did not write: the operator should look at it.
            return Err(WorkerError::InvalidIdentity(path.to_owned()));
        };
        Ok(Some(Identity {
            worker_id,
            path: path.to_owned(),
            _lock: file,
        }))
    }
}

/// A fresh random id: `native-` and 128 random bits in hex.
pub fn new_worker_id() -> String {
    format!("native-{:032x}", rand::random::<u128>())
}

/// Where identities live without `--identity-file`: `$GRID_WORKER_HOME`, else
/// `$XDG_DATA_HOME/grid-worker`, else `$HOME/.local/share/grid-worker`.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(home) = var("GRID_WORKER_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(data) = var("XDG_DATA_HOME") {
        return Some(PathBuf::from(data).join("grid-worker"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".local/share/grid-worker"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn new_ids_are_valid_and_distinct() {
        let a = new_worker_id();
        let b = new_worker_id();
        assert!(is_valid_worker_id(&a), "{a}");
        assert!(
            a.starts_with("native-") && a.len() == "native-".len() + 32,
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn two_holders_in_one_directory_get_distinct_stable_ids() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::from_dir(dir.path()).unwrap();
        let second = Identity::from_dir(dir.path()).unwrap();
        assert_ne!(first.worker_id(), second.worker_id());
        assert!(first.path().ends_with("identity-0"));
        assert!(second.path().ends_with("identity-1"));
        let (first_id, second_id) = (first.worker_id().to_owned(), second.worker_id().to_owned());

        // Restarting the first worker gives it back its own id; the second still holds its own.
        drop(first);
        let again = Identity::from_dir(dir.path()).unwrap();
        assert_eq!(again.worker_id(), first_id);
        let third = Identity::from_dir(dir.path()).unwrap();
        assert!(third.path().ends_with("identity-2"));
        drop(second);
        drop(third);
        let second_again = Identity::from_dir(dir.path()).unwrap();
        assert_eq!(second_again.worker_id(), second_id);
    }

    #[test]
    fn explicit_file_is_created_reused_and_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/worker.id");
        let held = Identity::from_file(&path).unwrap();
        let id = held.worker_id().to_owned();
        assert_eq!(fs::read_to_string(&path).unwrap().trim(), id);

        assert!(matches!(
            Identity::from_file(&path),
            Err(WorkerError::IdentityInUse(_))
        ));
        drop(held);
        assert_eq!(Identity::from_file(&path).unwrap().worker_id(), id);
    }

    #[cfg(unix)]
    #[test]
    fn identity_files_are_the_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let new = Identity::from_file(&dir.path().join("new.id")).unwrap();
        assert_eq!(mode(new.path()), 0o600);
        // One made before this release, world-readable, is made private when taken.
        let old = dir.path().join("old.id");
        fs::write(&old, "native-0123456789abcdef0123456789abcdef\n").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
        let taken = Identity::from_file(&old).unwrap();
        assert_eq!(mode(taken.path()), 0o600);
        let from_dir = Identity::from_dir(dir.path()).unwrap();
        assert_eq!(mode(from_dir.path()), 0o600);
    }

    #[test]
    fn an_id_written_by_hand_is_used_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        fs::write(&path, "rack-7.node-3\n").unwrap();
        assert_eq!(
            Identity::from_file(&path).unwrap().worker_id(),
            "rack-7.node-3"
        );

        fs::write(&path, "not a valid id").unwrap();
        assert!(matches!(
            Identity::from_file(&path),
            Err(WorkerError::InvalidIdentity(_))
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a valid id");
    }
}
