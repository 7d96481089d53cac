//! Task logs on disk: rotation under the spec's `[logs]` limits, and the readers (tail,
//! follow) that see through rotation.
//!
//! A task writes its output straight into `stdout.log` and `stderr.log` in its sandbox, through
//! descriptors it inherited (opened with `O_APPEND`), so it keeps running and logging while the
//! agent is down. That rules out rename-and-reopen rotation: the agent cannot make the task
//! reopen anything. Rotation is therefore copy-then-truncate, as logrotate's `copytruncate`
//! does: `stdout.log` is copied to `stdout.log.1` (older copies shift to `.2`, ...; the oldest
//! beyond `max_files` is deleted), then truncated; the task's next append lands at offset 0.
//! The price is that what the task writes between the copy and the truncation (microseconds)
//! is lost. Sizes are checked every `CHECK_INTERVAL`, so a live file can pass `max_size` by
//! what the task writes in that time.

use canopy_core::spec::LogsSpec;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the agent compares each task's logs with their limit.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The `index`-th rotated copy of a log: `stdout.log.1` is the most recent.
pub fn rotated(path: &Path, index: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// Rotates `path` when it is larger than `limits.max_size`. True when it did.
pub fn rotate_if_needed(path: &Path, limits: &LogsSpec) -> std::io::Result<bool> {
    let length = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if length <= limits.max_size.0 {
        return Ok(false);
    }
    // Oldest first, so nothing is overwritten; the copy pushed beyond max_files goes.
    for index in (1..=limits.max_files).rev() {
        match std::fs::rename(rotated(path, index), rotated(path, index + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    remove_if_present(&rotated(path, limits.max_files + 1))?;
    if limits.max_files > 0 {
        // Copied under a temporary name and renamed, so a reader never sees half a copy.
        let partial = rotated(path, 0);
        std::fs::copy(path, &partial)?;
        std::fs::rename(&partial, rotated(path, 1))?;
    }
    File::options().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Keeps rotating the task's two logs under `limits`; never returns (the caller drops it when
/// the task ends).
pub async fn keep_rotating(logs: [PathBuf; 2], limits: LogsSpec) -> std::convert::Infallible {
    loop {
        for path in &logs {
            match rotate_if_needed(path, &limits) {
                Ok(true) => tracing::debug!(path = %path.display(), "log rotated"),
                Ok(false) => {}
                Err(error) => tracing::warn!(path = %path.display(), %error, "cannot rotate log"),
            }
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

/// The last `bytes` of a log, reaching back into its rotated copies when the live file is
/// shorter, and the live file's length at the time (where a follower goes on from).
pub fn tail(path: &Path, bytes: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut newest = Vec::new();
    (&mut file).take(length - start).read_to_end(&mut newest)?;
    let mut parts = vec![newest];
    let mut wanted = bytes.saturating_sub(length);
    let mut index = 1;
    while wanted > 0 {
        let Ok(mut older) = File::open(rotated(path, index)) else { break };
        let older_length = older.metadata()?.len();
        let start = older_length.saturating_sub(wanted);
        older.seek(SeekFrom::Start(start))?;
        let mut part = Vec::new();
        older.take(older_length - start).read_to_end(&mut part)?;
        wanted -= part.len() as u64;
        parts.push(part);
        index += 1;
    }
    parts.reverse();
    Ok((parts.concat(), length))
}

/// Which file a path names at one moment: a rotation replaces `.1` with a new file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    inode: u64,
    modified_ns: i64,
    modified_s: i64,
}

fn identity(path: &Path) -> Option<(Identity, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((Identity { inode: meta.ino(), modified_s: meta.mtime(), modified_ns: meta.mtime_nsec() }, meta.len()))
}

/// Reads what is appended to a log, across rotations: when `.1` is replaced, the rest of what
/// was being read is at the same offsets in the new `.1` (it is a copy of the live file), and
/// the live file starts again at 0. A live file that shrinks without a new `.1` (rotation with
/// `max_files = 0`) is read again from 0.
pub struct Follower {
    path: PathBuf,
    position: u64,
    newest_rotated: Option<Identity>,
}

impl Follower {
    /// Follows `path` from `position` in the live file.
    pub fn new(path: &Path, position: u64) -> Follower {
        let newest_rotated = identity(&rotated(path, 1)).map(|(id, _)| id);
        Follower { path: path.to_path_buf(), position, newest_rotated }
    }

    /// Where the next read starts in the live file.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// What was appended since the last call, at most `limit` bytes; empty when nothing was.
    pub fn read_new(&mut self, limit: u64) -> std::io::Result<Vec<u8>> {
        let live_length = match std::fs::metadata(&self.path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if let Some((newest, rotated_length)) = identity(&rotated(&self.path, 1))
            && Some(newest) != self.newest_rotated
        {
            // Between the copy and the truncation the live file still holds what `.1` holds:
            // wait for the truncation rather than reading it twice.
            if live_length >= rotated_length && rotated_length > 0 {
                return Ok(Vec::new());
            }
            self.newest_rotated = Some(newest);
            let rest = read_range(&rotated(&self.path, 1), self.position, rotated_length)?;
            self.position = 0;
            if !rest.is_empty() {
                return Ok(rest);
            }
        }
        if live_length < self.position {
            self.position = 0;
        }
        let end = live_length.min(self.position + limit);
        let bytes = read_range(&self.path, self.position, end)?;
        self.position += bytes.len() as u64;
        Ok(bytes)
    }
}

fn read_range(path: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    if end <= start {
        return Ok(Vec::new());
    }
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(end - start).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_core::quantity::Bytes;
    use std::io::Write;

    fn limits(max_size: u64, max_files: u32) -> LogsSpec {
        LogsSpec { max_size: Bytes(max_size), max_files }
    }

    fn append(path: &Path, text: &str) {
        let mut file = File::options().create(true).append(true).open(path).expect("open");
        file.write_all(text.as_bytes()).expect("write");
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn a_log_under_its_limit_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stdout.log");
        assert!(!rotate_if_needed(&log, &limits(10, 2)).expect("missing log"), "no log, nothing to do");
        append(&log, "0123456789");
        assert!(!rotate_if_needed(&log, &limits(10, 2)).expect("rotate"));
        assert_eq!(read(&log), "0123456789");
    }

    #[test]
    fn rotation_shifts_copies_and_keeps_at_most_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stdout.log");
        // A writer that keeps its descriptor across rotations, as a task does.
        let mut writer = File::options().create(true).append(true).open(&log).expect("open");
        for round in 1..=4 {
            writer.write_all(format!("round {round} output\n").as_bytes()).expect("write");
            assert!(rotate_if_needed(&log, &limits(8, 2)).expect("rotate"), "round {round}");
            assert_eq!(read(&log), "", "truncated");
        }
        assert_eq!(read(&rotated(&log, 1)), "round 4 output\n");
        assert_eq!(read(&rotated(&log, 2)), "round 3 output\n");
        assert!(!rotated(&log, 3).exists(), "only max_files copies are kept");
        assert!(!rotated(&log, 0).exists(), "no partial copy left behind");
        // O_APPEND: the writer's next line lands at the start of the truncated file.
        writer.write_all(b"after\n").expect("write");
        assert_eq!(read(&log), "after\n");
    }

    #[test]
    fn with_no_rotated_files_a_full_log_is_only_truncated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stderr.log");
        append(&log, "too much output\n");
        assert!(rotate_if_needed(&log, &limits(4, 0)).expect("rotate"));
        assert_eq!(read(&log), "");
        assert!(!rotated(&log, 1).exists());
    }

    #[test]
    fn tail_reaches_into_rotated_copies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stdout.log");
        append(&log, "one\ntwo\n");
        rotate_if_needed(&log, &limits(4, 2)).expect("rotate");
        append(&log, "three\n");
        assert_eq!(tail(&log, 6).expect("tail"), (b"three\n".to_vec(), 6));
        assert_eq!(tail(&log, 10).expect("tail"), (b"two\nthree\n".to_vec(), 6));
        assert_eq!(tail(&log, 1000).expect("tail").0, b"one\ntwo\nthree\n");
        assert_eq!(
            tail(&dir.path().join("nothing.log"), 10).expect_err("missing").kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_follower_reads_appends_and_sees_through_rotation_without_loss_or_repeat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stdout.log");
        append(&log, "old\n");
        let (_, end) = tail(&log, 0).expect("tail");
        let mut follower = Follower::new(&log, end);
        assert_eq!(follower.read_new(1024).expect("read"), b"");
        append(&log, "a\n");
        assert_eq!(follower.read_new(1024).expect("read"), b"a\n");
        // Written after the follower's last read, then rotated away before its next one.
        append(&log, "b\n");
        rotate_if_needed(&log, &limits(4, 1)).expect("rotate");
        append(&log, "c\n");
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.extend(follower.read_new(1024).expect("read"));
        }
        assert_eq!(String::from_utf8_lossy(&seen), "b\nc\n");
        // Reads are bounded by the limit and resume where they stopped.
        append(&log, "0123456789");
        assert_eq!(follower.read_new(4).expect("read"), b"0123");
        assert_eq!(follower.read_new(100).expect("read"), b"456789");
        assert_eq!(follower.position(), 2 + 10);
    }

    #[test]
    fn a_follower_restarts_at_zero_when_the_log_shrinks_without_a_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stdout.log");
        append(&log, "0123456789");
        let mut follower = Follower::new(&log, 10);
        rotate_if_needed(&log, &limits(4, 0)).expect("rotate");
        append(&log, "new\n");
        assert_eq!(follower.read_new(1024).expect("read"), b"new\n");
    }

    #[test]
    fn a_follower_waits_while_a_rotation_is_half_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stdout.log");
        append(&log, "abc\n");
        let mut follower = Follower::new(&log, 4);
        // The copy exists but the live file is not truncated yet.
        std::fs::copy(&log, rotated(&log, 1)).expect("copy");
        assert_eq!(follower.read_new(1024).expect("read"), b"");
        File::options().write(true).open(&log).expect("open").set_len(0).expect("truncate");
        append(&log, "d\n");
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.extend(follower.read_new(1024).expect("read"));
        }
        assert_eq!(seen, b"d\n");
    }
}
