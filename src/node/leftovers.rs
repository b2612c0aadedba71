//! What survives a crash besides saved results: the lock that keeps two nodes off one state
//! directory, and a record of every process the node started, so `--clean` can kill what an
//! earlier run left behind without ever killing a process that is not ours.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use thiserror::Error;

use crate::kernel_files;

#[derive(Debug, Error)]
pub enum LeftoverError {
    #[error("another dispynode (pid {pid}) is using the state directory {dir}")]
    Locked { dir: PathBuf, pid: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> LeftoverError + '_ {
    move |source| LeftoverError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The held lock on the state directory; released when the process exits (even by SIGKILL).
pub struct StateLock {
    _file: File,
}

/// Creates the state directory (0700) and takes its lock, writing our pid into it.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, LeftoverError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_at(dir))?;
    let path = dir.join("lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_at(&path))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(LeftoverError::Locked {
            dir: dir.to_owned(),
            pid: pid.trim().to_owned(),
        });
    }
    f.set_len(0).map_err(io_at(&path))?;
    f.rewind().map_err(io_at(&path))?;
    writeln!(f, "{}", std::process::id()).map_err(io_at(&path))?;
    Ok(StateLock { _file: f })
}

/// The kernel's start time of a process (field 22 of /proc/<pid>/stat), which together with
/// the pid identifies it even after pid reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_field(pid, 19)
}

/// Field `n` (0 = state) after the command name of `/proc/<pid>/stat`.
fn stat_field(pid: i32, n: usize) -> Option<u64> {
    let stat = kernel_files::read(Path::new(&format!("/proc/{pid}/stat"))).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n)?.parse().ok()
}

/// Whether a process `pid` exists (a zombie not yet reaped counts).
pub fn process_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` is a child or grandchild of `ancestor` (a Python worker forks its jobs
/// itself or through its zygote). Pids that a worker reports come from a stream job code can
/// write to: the daemon signals or records one only after this check.
pub fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut p = pid;
    for _ in 0..2 {
        match stat_field(p, 1).and_then(|pp| i32::try_from(pp).ok()) {
            Some(pp) if pp == ancestor => return true,
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

/// Records of the processes the node started: `<state_dir>/procs/<pid>` holding the start time.
pub struct ProcRecords {
    dir: PathBuf,
    /// The pids of this run that are recorded or noted: true once their file is written.
    live: Mutex<HashMap<i32, bool>>,
}

/// How long a job runs before its record is written (see `Node::record_job_process`): the
/// record matters for what outlives a crash of the daemon, which a job that ends within this
/// time does not.
pub const RECORD_JOBS_AFTER: Duration = Duration::from_secs(1);

impl ProcRecords {
    pub fn open(state_dir: &Path) -> Result<ProcRecords, LeftoverError> {
        let dir = state_dir.join("procs");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_at(&dir))?;
        Ok(ProcRecords {
            dir,
            live: Mutex::default(),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<i32, bool>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, pid: i32) -> bool {
        match start_time(pid) {
            Some(t) => fs::write(self.dir.join(pid.to_string()), t.to_string()).is_ok(),
            None => false,
        }
    }

    /// Records a process (group leader) we started. Best effort: a failure only weakens
    /// --clean.
    pub fn add(&self, pid: i32) {
        let mut live = self.live();
        let written = self.write(pid);
        live.insert(pid, written);
    }

    /// Notes a process in memory only; [`ProcRecords::persist`] records it if it is still
    /// noted by then.
    pub fn note(&self, pid: i32) {
        self.live().insert(pid, false);
    }

    /// Whether a process is noted and not yet recorded (nor removed: ended).
    pub fn is_noted(&self, pid: i32) -> bool {
        self.live().get(&pid) == Some(&false)
    }

    /// Writes the record of a noted process that has not been removed meanwhile.
    pub fn persist(&self, pid: i32) {
        let mut live = self.live();
        if live.get(&pid) == Some(&false) {
            let written = self.write(pid);
            live.insert(pid, written);
        }
    }

    /// Forgets a process that has ended (and its record, if one was written).
    pub fn remove(&self, pid: i32) {
        if self.live().remove(&pid) == Some(true) {
            let _ = fs::remove_file(self.dir.join(pid.to_string()));
        }
    }

    /// Recorded processes that still run (same pid and start time), and stale records.
    fn scan(&self) -> (Vec<i32>, Vec<PathBuf>) {
        let mut alive = Vec::new();
        let mut stale = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return (alive, stale);
        };
        for e in entries.flatten() {
            let path = e.path();
            let pid: Option<i32> = e.file_name().to_str().and_then(|n| n.parse().ok());
            let recorded: Option<u64> = fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            match (pid, recorded) {
                (Some(pid), Some(t)) if start_time(pid) == Some(t) => alive.push(pid),
                _ => stale.push(path),
            }
        }
        (alive, stale)
    }

    /// Processes of an earlier run that are still alive.
    pub fn leftovers(&self) -> Vec<i32> {
        self.scan().0
    }

    /// Kills (SIGKILL, whole process group) every recorded process that is verifiably ours and
    /// clears the records. Returns how many were killed.
    pub fn kill_leftovers(&self) -> usize {
        let (alive, stale) = self.scan();
        for pid in &alive {
            let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            let _ = fs::remove_file(self.dir.join(pid.to_string()));
        }
        for p in stale {
            let _ = fs::remove_file(p);
        }
        alive.len()
    }
}

/// `--clean`: removes everything under the prefix except the state directory itself.
pub fn clean_prefix(prefix: &Path, state_dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    let Ok(entries) = fs::read_dir(prefix) else {
        return Ok(0);
    };
    for e in entries.flatten() {
        let p = e.path();
        if state_dir.starts_with(&p) {
            continue;
        }
        crate::store::remove_tree(&p)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn descent_is_checked_over_two_generations() {
        // sh (child of this test) -> sleep (grandchild); our own parent is no descendant.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let me = std::process::id() as i32;
        let child = sh.id() as i32;
        assert!(descends_from(child, me));
        assert!(descends_from(grandchild, me));
        assert!(descends_from(grandchild, child));
        assert!(!descends_from(me, child));
        assert!(!descends_from(child, grandchild));
        assert!(!descends_from(
            std::os::unix::process::parent_id() as i32,
            me
        ));
        assert!(!descends_from(1, me));
        assert!(!descends_from(i32::MAX, me));
        let _ = nix::sys::signal::kill(Pid::from_raw(grandchild), Signal::SIGKILL);
        sh.wait().unwrap();
    }

    #[test]
    fn lock_is_exclusive_and_released() {
        let d = tempfile::tempdir().unwrap();
        let l = lock_state_dir(d.path()).unwrap();
        // flock locks belong to the open file description: a second open conflicts.
        match lock_state_dir(d.path()) {
            Err(LeftoverError::Locked { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        drop(l);
        assert!(lock_state_dir(d.path()).is_ok());
    }

    #[test]
    fn records_identify_processes_and_kill_only_ours() {
        let d = tempfile::tempdir().unwrap();
        let recs = ProcRecords::open(d.path()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        recs.add(pid);
        // A record whose start time does not match is not ours: never killed.
        fs::write(d.path().join("procs").join("1"), "12345").unwrap();
        assert_eq!(recs.leftovers(), vec![pid]);
        assert_eq!(recs.kill_leftovers(), 1);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        assert!(fs::read_dir(d.path().join("procs"))
            .unwrap()
            .next()
            .is_none());
        assert!(start_time(1).is_some(), "pid 1 has a start time");
    }

    #[test]
    fn noted_processes_are_recorded_only_when_persisted() {
        let d = tempfile::tempdir().unwrap();
        let recs = ProcRecords::open(d.path()).unwrap();
        let me = std::process::id() as i32;
        let file = d.path().join("procs").join(me.to_string());
        assert!(!recs.is_noted(me));
        recs.note(me);
        assert!(!file.exists(), "a noted process has no file yet");
        assert!(recs.is_noted(me));
        recs.persist(me);
        assert!(file.exists(), "persist writes the record");
        assert!(!recs.is_noted(me), "recorded, no longer only noted");
        recs.remove(me);
        assert!(!file.exists(), "remove unlinks a written record");
        // Removed before persist: nothing is ever written.
        recs.note(me);
        recs.remove(me);
        assert!(!recs.is_noted(me), "an ended process is not noted");
        recs.persist(me);
        assert!(!file.exists(), "persist after remove must not write");
    }

    #[test]
    fn clean_keeps_the_state_dir() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join(".dispynode");
        fs::create_dir_all(state.join("results")).unwrap();
        fs::create_dir_all(d.path().join("127.0.0.1/1_abc")).unwrap();
        fs::write(d.path().join("127.0.0.1/1_abc/f"), b"x").unwrap();
        assert_eq!(clean_prefix(d.path(), &state).unwrap(), 1);
        assert!(state.join("results").exists());
        assert!(!d.path().join("127.0.0.1").exists());
    }
}
