//! File safety, the one way every crate of the workspace writes: atomic writes through a fresh
//! temporary name (never through a link), in-place opens that refuse links and special files,
//! directory locks, and SHA-256 checksums beside the files they vouch for.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing a file failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error (shown in the message, not chained: it would print twice).
        cause: std::io::Error,
    },
    /// A file written by a newer version of the toolkit, whose meaning this build cannot know.
    #[error(
        "{path} was written by a newer memsinks (schema version {found}; this build reads versions up to \
         {current}): read it with that version, or rerun what wrote it with this one"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its `schema_version`.
        found: u32,
        /// The newest version this build reads.
        current: u32,
    },
    /// Another process holds the directory's lock.
    #[error("{dir} is in use by {holder}; wait for it to finish or use another directory")]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// Who holds it (`PID n (command)`).
        holder: String,
    },
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over the target, so a crash leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let io_err = |source| FileError::Io { path: path.to_path_buf(), cause: source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err)?;
    let tmp = temporary_sibling(path, "");
    let result = (|| {
        let mut file = create_new_file(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// Creates `path` for writing as a new regular file, never through a link: whatever stands at
/// `path` (a file a killed writer of this process's PID left, or a symlink someone planted) is
/// removed first (`remove_file` removes a link, not its target), then the file is created with
/// `O_CREAT | O_EXCL`, which fails rather than follow a link created in between.
///
/// # Errors
/// When the name cannot be cleared or the file cannot be created.
pub fn create_new_file(path: &Path) -> std::io::Result<fs::File> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::OpenOptions::new().write(true).create_new(true).open(path)
}

/// Opens `path` for reading and writing in place (created when missing) without following a
/// symlink, and refuses anything that is not a regular file: a directory someone hands over could
/// otherwise point a lock or log file at any file the user can write.
///
/// # Errors
/// When `path` is a symlink, a directory, a device or a pipe, or cannot be opened.
pub fn open_in_place(path: &Path, append: bool) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.read(!append).write(true).create(true).append(append);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: opening a FIFO planted under the name must not wait for a writer.
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| {
        // ELOOP is what O_NOFOLLOW answers for a symlink.
        let is_link = fs::symlink_metadata(path).map(|m| m.file_type().is_symlink()).unwrap_or(false);
        if is_link {
            std::io::Error::other("a symbolic link: memsinks never writes through one (remove the link)")
        } else {
            e
        }
    })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file: memsinks writes only regular files there (remove it)"));
    }
    Ok(file)
}

/// The lock file of a directory held by [`DirLock`].
pub const LOCK_FILE: &str = ".memsinks.lock";

/// An advisory, exclusive lock on a directory (an OS file lock on `DIR/.memsinks.lock`, which
/// holds the owner's PID), held by every command that writes into a run or corpus directory so
/// two writers can never interleave. The OS releases it when the process ends, killed or not, so
/// a stale lock file never blocks anyone; the file itself is left in place (it is ours, and
/// deleting it would race with a newcomer).
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
    dir: PathBuf,
}

impl DirLock {
    /// Locks `dir` (created if missing) for `purpose` (a few words naming the command). A second
    /// holder gets an error naming the PID of the first.
    ///
    /// # Errors
    /// When the directory cannot be created or another process holds the lock.
    pub fn acquire(dir: &Path, purpose: &str) -> Result<Self, FileError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |cause| FileError::Io { path: path.clone(), cause };
        fs::create_dir_all(dir).map_err(io_err)?;
        let mut file = open_in_place(&path, false).map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                // The holder writes its PID just after it locks: a loser that reads in between
                // finds the file empty, so it reads again for a moment before giving up on it.
                let mut holder = String::new();
                for _ in 0..50 {
                    holder = fs::read_to_string(&path).unwrap_or_default();
                    if !holder.trim().is_empty() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                let holder = holder.trim();
                let holder = if holder.is_empty() { "another process".to_string() } else { holder.to_string() };
                return Err(FileError::Locked { dir: dir.to_path_buf(), holder });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        write!(file, "PID {} ({purpose})", std::process::id()).map_err(io_err)?;
        Ok(Self { _file: file, dir: dir.to_path_buf() })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether `dir` is missing or holds nothing but a lock file: the only state in which a command
/// may claim it for new output without overwriting a user's files.
pub fn is_empty_dir(dir: &Path) -> Result<bool, FileError> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|cause| FileError::Io { path: dir.to_path_buf(), cause })?;
                if entry.file_name() != LOCK_FILE {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(cause) => Err(FileError::Io { path: dir.to_path_buf(), cause }),
    }
}

/// The temporary name under which this process writes `path` before renaming it into place:
/// `.NAME.tmp-PID` followed by `suffix` (for writers that insist on an extension), in the same
/// directory. Every writer of this workspace uses it, so [`is_temporary_name`] recognises what a
/// killed writer left behind.
pub fn temporary_sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}{suffix}", std::process::id()))
}

/// Whether a file name is one made by [`temporary_sibling`].
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// The checksum file beside `path` (`NAME.sha256`), holding `path`'s SHA-256 in hex.
pub fn checksum_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Records `digest` (from [`file_sha256`]) as the checksum of `path`, atomically.
pub fn write_checksum(path: &Path, digest: &str) -> Result<(), FileError> {
    write_atomic(&checksum_path(path), digest.as_bytes())
}

/// Writes `bytes` to `path` atomically ([`write_atomic`]) and then its checksum beside it
/// ([`write_checksum`]): a file whose checksum is missing or differs was cut short or edited.
pub fn write_atomic_checked(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic(path, bytes)?;
    write_checksum(path, &sha256_hex(bytes))
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// What a file's checksum says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChecksumCheck {
    /// No checksum to check against (none expected and none recorded).
    NoChecksum,
    /// The file's SHA-256 equals the checksum.
    Matches,
    /// It does not: the file is truncated, damaged or another one.
    Differs {
        /// The file's SHA-256.
        found: String,
        /// The checksum it was checked against.
        expected: String,
    },
}

/// Checks `path` against `expected` (a SHA-256 in hex, e.g. a pinned one) or, when that is
/// `None`, against the checksum recorded beside it by [`write_checksum`].
///
/// # Errors
/// When `path` cannot be read.
pub fn check_checksum(path: &Path, expected: Option<&str>) -> Result<ChecksumCheck, FileError> {
    let recorded = fs::read_to_string(checksum_path(path)).ok();
    let Some(expected) = expected.map(str::to_string).or(recorded) else { return Ok(ChecksumCheck::NoChecksum) };
    let expected = expected.trim().to_ascii_lowercase();
    let found = file_sha256(path)?;
    Ok(if found == expected { ChecksumCheck::Matches } else { ChecksumCheck::Differs { found, expected } })
}

/// SHA-256 of a file's bytes, as lower-case hex.
pub fn file_sha256(path: &Path) -> Result<String, FileError> {
    use sha2::{Digest, Sha256};
    let mut file = fs::File::open(path).map_err(|cause| FileError::Io { path: path.to_path_buf(), cause })?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|cause| FileError::Io { path: path.to_path_buf(), cause })?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Checks the `schema_version` of a file the toolkit wrote (`results.json`, `eval.json`,
/// `train.json`, `manifest.json`): versions up to `current` are read (0 is a file written before
/// versions were recorded; serde's defaults fill the fields it lacks), a newer one is refused.
pub fn check_schema(path: &Path, found: u32, current: u32) -> Result<(), FileError> {
    if found > current {
        return Err(FileError::NewerSchema { path: path.to_path_buf(), found, current });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_versions_up_to_the_current_are_read_newer_ones_refused() {
        let path = Path::new("results.json");
        assert!(check_schema(path, 0, 1).is_ok() && check_schema(path, 1, 1).is_ok());
        let err = check_schema(path, 2, 1).unwrap_err().to_string();
        assert!(err.contains("results.json") && err.contains("version 2") && err.contains("up to 1"), "{err}");
    }

    #[test]
    fn a_second_lock_on_a_directory_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "train").unwrap();
        let err = DirLock::acquire(dir.path(), "eval").unwrap_err().to_string();
        assert!(err.contains(&format!("PID {} (train)", std::process::id())), "{err}");
        assert!(is_empty_dir(dir.path()).unwrap(), "the lock file counts as content");
        drop(first);
        DirLock::acquire(dir.path(), "eval").unwrap();
        std::fs::write(dir.path().join("x"), "").unwrap();
        assert!(!is_empty_dir(dir.path()).unwrap());
        assert!(is_empty_dir(&dir.path().join("missing")).unwrap());
    }
}
