//! Undelivered job results, kept on disk until the client acknowledges them.
//!
//! The reference node pickles an undeliverable `_JobReply` to `_dispy_job_reply_<uid>.pkl`
//! inside the computation's directory and then loses it on restart (protocol §4.2) and
//! overwrites it when a uid is reused (G11). Here a result is written before the job's slot is
//! freed, into a directory of its own under the state directory, and survives `kill -9`, power
//! loss and restarts:
//!
//! * **Atomic.** Each result is written to a temporary file in the same directory, fsynced,
//!   renamed over its final name and the directory is fsynced. A crash leaves either the old
//!   state or the new one, plus at worst a temporary file that [`ResultStore::open`] deletes.
//! * **Keyed by `(compute_id, uid, hash)`.** uids are Python `id()` values and get reused
//!   (G11); `hash` tells two jobs with the same uid apart, so both results are kept.
//! * **Self-checking.** Every file carries a magic, a format version, explicit lengths and a
//!   SHA-1 over everything else. A torn, truncated or edited file is detected, moved aside as
//!   `<name>.corrupt` (kept for a human to look at, never read again) and reported; it never
//!   stops the node. The digest guards against accidents, not against someone who can write
//!   to the 0700 directory: such a person could run the node's jobs anyway.
//! * **Private.** The directory is mode 0700 and files are 0600: replies hold user data.
//!
//! The payload is opaque here: it is the already-encoded `JOB_REPLY:` body (the pickle of
//! `dispy._JobReply`), so resending is a plain write and this module needs no pickle support.
//!
//! # File format (version 1)
//!
//! ```text
//! offset  size  field
//! 0       8     magic  b"DSPYRES\0"
//! 8       2     version, u16 little-endian (1)
//! 10      2     reserved, 0
//! 12      4     meta_len, u32 LE: length of the JSON metadata
//! 16      8     payload_len, u64 LE
//! 24      20    SHA-1 over bytes 0..24, then the metadata, then the payload
//! 44      ..    metadata: JSON object {compute_id, compute_auth, uid, hash, reply_addr, saved_at}
//! ..      ..    payload
//! ```
//!
//! The file's size must be exactly `44 + meta_len + payload_len`; anything else is corrupt.
//! A future version bumps `version`; files with an unknown version are reported as corrupt
//! rather than misread.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use thiserror::Error;

/// Name of the subdirectory of the state directory that holds the results.
pub const RESULTS_DIR: &str = "results";
const MAGIC: &[u8; 8] = b"DSPYRES\0";
const VERSION: u16 = 1;
const FIXED_LEN: usize = 24;
const DIGEST_LEN: usize = 20;
const HEADER_LEN: usize = FIXED_LEN + DIGEST_LEN;
/// Metadata is a handful of short fields; anything bigger is not ours.
const MAX_META: u32 = 64 * 1024;
const FILE_PREFIX: &str = "res_";
const FILE_SUFFIX: &str = ".dres";
const TEMP_PREFIX: &str = ".tmp_";
const CORRUPT_SUFFIX: &str = ".corrupt";

/// One undelivered job result and what is needed to deliver it or hand it out again.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedResult {
    /// The computation's id, as the client sent it in COMPUTE.
    pub compute_id: i64,
    /// The computation's `auth`, checked by RETRIEVE_JOB / PENDING_JOBS / RESEND_JOB_RESULTS
    /// when the computation itself is gone (closed, zombie, node restarted).
    pub compute_auth: String,
    /// The job's uid (a Python `id()`, reused over time: see `hash`).
    pub uid: i64,
    /// The job's hash; distinguishes jobs that share a uid.
    pub hash: String,
    /// Where JOB_REPLY goes: `compute.scheduler_ip_addr : compute.job_result_port`.
    pub reply_addr: SocketAddr,
    /// The encoded reply: the pickle of `dispy._JobReply` (what follows `JOB_REPLY:`).
    pub payload: Vec<u8>,
    /// When the result was saved, seconds since the Unix epoch.
    pub saved_at: f64,
}

/// The JSON metadata block. Kept separate from [`SavedResult`] so the payload is not
/// serialized through JSON and so the on-disk names stay fixed if the struct grows.
#[derive(Serialize, Deserialize)]
struct Meta {
    compute_id: i64,
    compute_auth: String,
    uid: i64,
    hash: String,
    reply_addr: String,
    saved_at: f64,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a directory we can use (a symlink or another file type)")]
    NotADirectory { path: PathBuf },
    /// A saved file failed its checks. It has been renamed to `moved_to` (when that worked)
    /// and will not be read again.
    #[error("corrupt saved result {path} ({reason}); moved to {moved_to:?}")]
    Corrupt {
        path: PathBuf,
        moved_to: Option<PathBuf>,
        reason: String,
    },
    #[error("result too large to save: {0} bytes")]
    TooLarge(usize),
    #[error("cannot encode result metadata: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A corrupt file found by [`ResultStore::scan`], already moved aside.
#[derive(Debug, Clone)]
pub struct CorruptFile {
    pub path: PathBuf,
    /// Where it was moved (`None` if even the rename failed; it is then skipped each scan).
    pub moved_to: Option<PathBuf>,
    pub reason: String,
}

/// What [`ResultStore::scan`] found: the good results and the files it had to move aside.
#[derive(Debug, Default)]
pub struct Scan {
    pub results: Vec<SavedResult>,
    pub corrupt: Vec<CorruptFile>,
}

/// The on-disk store of undelivered results: `<state_dir>/results/`.
///
/// All methods are synchronous and do blocking file I/O with fsync; from async code call them
/// through `tokio::task::spawn_blocking` (or accept the short block: results are rare).
/// Concurrent calls for *different* keys are safe; for the same key the caller serializes
/// (the node does: one job, one reply).
#[derive(Debug)]
pub struct ResultStore {
    dir: PathBuf,
}

/// Makes temporary names unique within the process; the pid makes them unique across
/// processes (only one node uses a state directory, but `--clean` may race an old one).
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl ResultStore {
    /// Opens (creating if needed) `<state_dir>/results/`, forces its mode to 0700, and deletes
    /// temporary files left by a crash in the middle of [`save`](Self::save): such a file was
    /// never renamed, so the save it belonged to never happened as far as anyone was told.
    ///
    /// Refuses a `results` that is a symlink, so a planted link cannot redirect the writes.
    /// Missing parents are created with mode 0700 too; the caller normally creates
    /// `state_dir` itself with the mode it wants.
    pub fn open(state_dir: &Path) -> Result<ResultStore, StoreError> {
        let dir = state_dir.join(RESULTS_DIR);
        let created = fs::symlink_metadata(&dir).is_err();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_at(&dir))?;
        if created {
            // The new directory's own entry must be durable before results rely on it.
            File::open(state_dir)
                .and_then(|d| d.sync_all())
                .map_err(io_at(state_dir))?;
        }
        let md = fs::symlink_metadata(&dir).map_err(io_at(&dir))?;
        if !md.file_type().is_dir() {
            return Err(StoreError::NotADirectory { path: dir });
        }
        if md.permissions().mode() & 0o777 != 0o700 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_at(&dir))?;
        }
        let store = ResultStore { dir };
        let mut removed = false;
        for entry in fs::read_dir(&store.dir).map_err(io_at(&store.dir))? {
            let entry = entry.map_err(io_at(&store.dir))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                let p = entry.path();
                match fs::remove_file(&p) {
                    Ok(()) => removed = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_at(&p)(e)),
                }
            }
        }
        if removed {
            store.sync_dir()?;
        }
        Ok(store)
    }

    /// The directory holding the results.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Saves `r` durably, replacing a result with the same `(compute_id, uid, hash)`.
    ///
    /// When this returns `Ok`, the result survives a crash or power loss: the data was
    /// fsynced before the rename and the directory after it. Only then may the caller free
    /// the job's slot or tell anyone the result is safe.
    pub fn save(&self, r: &SavedResult) -> Result<(), StoreError> {
        let bytes = encode(r)?;
        let final_path = self.path_for(r.compute_id, r.uid, &r.hash);
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}_{seq}", std::process::id()));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_at(&tmp)(e));
        }
        if let Err(e) = fs::rename(&tmp, &final_path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_at(&final_path)(e));
        }
        self.sync_dir()
    }

    /// Deletes a result once the client has acknowledged it. Returns whether it existed;
    /// removing twice is harmless (a resend and a RETRIEVE_JOB may both succeed).
    pub fn remove(&self, compute_id: i64, uid: i64, hash: &str) -> Result<bool, StoreError> {
        let p = self.path_for(compute_id, uid, hash);
        match fs::remove_file(&p) {
            Ok(()) => {
                self.sync_dir()?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_at(&p)(e)),
        }
    }

    /// Reads one result. `Ok(None)` if there is none for this key. A corrupt file is moved
    /// aside and reported as [`StoreError::Corrupt`]; the caller logs it and treats the
    /// result as missing.
    pub fn get(
        &self,
        compute_id: i64,
        uid: i64,
        hash: &str,
    ) -> Result<Option<SavedResult>, StoreError> {
        let p = self.path_for(compute_id, uid, hash);
        match self.read_checked(&p) {
            Ok(Some(r)) if r.compute_id == compute_id && r.uid == uid && r.hash == hash => {
                Ok(Some(r))
            }
            Ok(Some(_)) => Err(self.set_aside(&p, "contents name another job".into())),
            Ok(None) => Ok(None),
            Err(ReadError::Io(e)) => Err(io_at(&p)(e)),
            Err(ReadError::Bad(reason)) => Err(self.set_aside(&p, reason)),
        }
    }

    /// Every saved result, e.g. at startup to rebuild the in-memory index and resend.
    /// Corrupt files are moved aside and logged (`tracing::warn!`); use [`scan`](Self::scan)
    /// to get them as values instead.
    pub fn list(&self) -> Result<Vec<SavedResult>, StoreError> {
        let scan = self.scan_filtered(None)?;
        log_corrupt(&scan.corrupt);
        Ok(scan.results)
    }

    /// Like [`list`](Self::list), returning the corrupt files instead of logging them.
    pub fn scan(&self) -> Result<Scan, StoreError> {
        self.scan_filtered(None)
    }

    /// The saved results of one computation (for PENDING_JOBS, RESEND_JOB_RESULTS and the
    /// resend after a successful reply). Only that computation's files are read.
    pub fn for_compute(&self, compute_id: i64) -> Result<Vec<SavedResult>, StoreError> {
        let scan = self.scan_filtered(Some(compute_id))?;
        log_corrupt(&scan.corrupt);
        Ok(scan.results)
    }

    /// The final name of a result. `hash` comes from the client and may hold anything, so
    /// the name uses its SHA-1 (fixed length, hex only); the ids are decimal. The stored
    /// metadata is checked on reading, so the name is only a lookup key.
    fn path_for(&self, compute_id: i64, uid: i64, hash: &str) -> PathBuf {
        let h = hex::encode(Sha1::digest(hash.as_bytes()));
        self.dir
            .join(format!("{FILE_PREFIX}{compute_id}_{uid}_{h}{FILE_SUFFIX}"))
    }

    fn scan_filtered(&self, compute_id: Option<i64>) -> Result<Scan, StoreError> {
        // "res_12_" cannot match compute 1's "res_1_": the id is followed by '_'.
        let want = compute_id.map(|c| format!("{FILE_PREFIX}{c}_"));
        let mut scan = Scan::default();
        let mut paths = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_at(&self.dir))? {
            let entry = entry.map_err(io_at(&self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with(FILE_PREFIX) || !name.ends_with(FILE_SUFFIX) {
                continue;
            }
            if let Some(w) = &want {
                if !name.starts_with(w.as_str()) {
                    continue;
                }
            }
            paths.push(entry.path());
        }
        // Oldest names first is arbitrary; sort for a deterministic order, then by saved_at.
        paths.sort();
        for p in paths {
            match self.read_checked(&p) {
                Ok(Some(r)) => {
                    if p != self.path_for(r.compute_id, r.uid, &r.hash) {
                        scan.corrupt
                            .push(self.corrupt_entry(&p, "contents name another job".into()));
                    } else if compute_id.is_none_or(|c| c == r.compute_id) {
                        scan.results.push(r);
                    }
                }
                // Removed between read_dir and open: it was delivered meanwhile.
                Ok(None) => {}
                Err(ReadError::Io(e)) => return Err(io_at(&p)(e)),
                Err(ReadError::Bad(reason)) => scan.corrupt.push(self.corrupt_entry(&p, reason)),
            }
        }
        scan.results
            .sort_by(|a, b| a.saved_at.total_cmp(&b.saved_at));
        Ok(scan)
    }

    fn read_checked(&self, p: &Path) -> Result<Option<SavedResult>, ReadError> {
        let mut f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // A symlink planted in our 0700 directory: O_NOFOLLOW gives ELOOP.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(ReadError::Bad("is a symlink".into()))
            }
            Err(e) => return Err(ReadError::Io(e)),
        };
        let md = f.metadata().map_err(ReadError::Io)?;
        if !md.file_type().is_file() {
            return Err(ReadError::Bad("not a regular file".into()));
        }
        let size = usize::try_from(md.len()).map_err(|_| ReadError::Bad("too large".into()))?;
        if size < HEADER_LEN {
            return Err(ReadError::Bad(format!("truncated: {size} bytes")));
        }
        // Check the header's lengths against the real size before reading the rest, so a
        // damaged length cannot make us allocate more than the file holds.
        let mut head = [0u8; HEADER_LEN];
        f.read_exact(&mut head).map_err(ReadError::Io)?;
        let (meta_len, payload_len) = parse_header(&head).map_err(ReadError::Bad)?;
        let expected = (HEADER_LEN as u64 + u64::from(meta_len)).checked_add(payload_len);
        if expected != Some(md.len()) {
            return Err(ReadError::Bad(format!(
                "size {} does not match the header's lengths",
                md.len()
            )));
        }
        let mut body = Vec::with_capacity(size - HEADER_LEN);
        f.read_to_end(&mut body).map_err(ReadError::Io)?;
        if body.len() != size - HEADER_LEN {
            return Err(ReadError::Bad("file changed while reading".into()));
        }
        decode_body(&head, meta_len as usize, body)
            .map(Some)
            .map_err(ReadError::Bad)
    }

    fn corrupt_entry(&self, p: &Path, reason: String) -> CorruptFile {
        let target = corrupt_name(p);
        let moved_to = match fs::rename(p, &target) {
            Ok(()) => {
                let _ = self.sync_dir();
                Some(target)
            }
            Err(_) => None,
        };
        CorruptFile {
            path: p.to_owned(),
            moved_to,
            reason,
        }
    }

    fn set_aside(&self, p: &Path, reason: String) -> StoreError {
        let c = self.corrupt_entry(p, reason);
        StoreError::Corrupt {
            path: c.path,
            moved_to: c.moved_to,
            reason: c.reason,
        }
    }

    /// fsync the directory so a rename or unlink is itself durable, not just the data.
    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&self.dir))
    }
}

enum ReadError {
    Io(io::Error),
    Bad(String),
}

fn log_corrupt(list: &[CorruptFile]) {
    for c in list {
        tracing::warn!(file = %c.path.display(), moved_to = ?c.moved_to, reason = %c.reason,
            "corrupt saved job result set aside");
    }
}

/// `<name>.corrupt`, or `<name>.corrupt.N` if that exists (a file corrupt twice is kept twice).
fn corrupt_name(p: &Path) -> PathBuf {
    let base = p.as_os_str().to_owned();
    let mut n = 0u32;
    loop {
        let mut candidate = base.clone();
        candidate.push(CORRUPT_SUFFIX);
        if n > 0 {
            candidate.push(format!(".{n}"));
        }
        let candidate = PathBuf::from(candidate);
        if fs::symlink_metadata(&candidate).is_err() || n >= 1000 {
            return candidate;
        }
        n += 1;
    }
}

fn encode(r: &SavedResult) -> Result<Vec<u8>, StoreError> {
    let meta = Meta {
        compute_id: r.compute_id,
        compute_auth: r.compute_auth.clone(),
        uid: r.uid,
        hash: r.hash.clone(),
        reply_addr: r.reply_addr.to_string(),
        // JSON has no NaN or infinity; a nonsense clock must not make the save fail.
        saved_at: if r.saved_at.is_finite() {
            r.saved_at
        } else {
            0.0
        },
    };
    let meta = serde_json::to_vec(&meta)?;
    let meta_len = u32::try_from(meta.len())
        .ok()
        .filter(|&l| l <= MAX_META)
        .ok_or(StoreError::TooLarge(meta.len()))?;
    let payload_len =
        u64::try_from(r.payload.len()).map_err(|_| StoreError::TooLarge(r.payload.len()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + meta.len() + r.payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    let mut h = Sha1::new();
    h.update(&out[..FIXED_LEN]);
    h.update(&meta);
    h.update(&r.payload);
    out.extend_from_slice(&h.finalize());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&r.payload);
    Ok(out)
}

/// Checks magic and version and returns `(meta_len, payload_len)`.
fn parse_header(head: &[u8; HEADER_LEN]) -> Result<(u32, u64), String> {
    if &head[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let version = u16::from_le_bytes([head[8], head[9]]);
    if version != VERSION {
        return Err(format!("unknown format version {version}"));
    }
    let meta_len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    if meta_len > MAX_META {
        return Err(format!("metadata length {meta_len} too large"));
    }
    let mut pl = [0u8; 8];
    pl.copy_from_slice(&head[16..24]);
    Ok((meta_len, u64::from_le_bytes(pl)))
}

fn decode_body(
    head: &[u8; HEADER_LEN],
    meta_len: usize,
    mut body: Vec<u8>,
) -> Result<SavedResult, String> {
    if body.len() < meta_len {
        return Err("truncated metadata".into());
    }
    let mut h = Sha1::new();
    h.update(&head[..FIXED_LEN]);
    h.update(&body);
    if h.finalize().as_slice() != &head[FIXED_LEN..HEADER_LEN] {
        return Err("checksum mismatch (torn or modified file)".into());
    }
    let meta: Meta =
        serde_json::from_slice(&body[..meta_len]).map_err(|e| format!("bad metadata: {e}"))?;
    let reply_addr: SocketAddr = meta
        .reply_addr
        .parse()
        .map_err(|_| format!("bad reply address {:?}", meta.reply_addr))?;
    let payload = body.split_off(meta_len);
    Ok(SavedResult {
        compute_id: meta.compute_id,
        compute_auth: meta.compute_auth,
        uid: meta.uid,
        hash: meta.hash,
        reply_addr,
        payload,
        saved_at: meta.saved_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn result(compute_id: i64, uid: i64, hash: &str, payload: &[u8]) -> SavedResult {
        SavedResult {
            compute_id,
            compute_auth: format!("auth{compute_id}"),
            uid,
            hash: hash.to_owned(),
            reply_addr: "127.0.0.1:51347".parse().expect("addr"),
            payload: payload.to_vec(),
            saved_at: 1_700_000_000.5 + uid as f64,
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn only_result_file(store: &ResultStore) -> PathBuf {
        let names: Vec<String> = files(store.dir())
            .into_iter()
            .filter(|n| n.ends_with(FILE_SUFFIX))
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        store.dir().join(&names[0])
    }

    #[test]
    fn save_get_list_remove() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        let a = result(7, 100, "aa11", b"\x80\x04pickle-a.");
        let b = result(7, 101, "bb22", b"");
        let c = result(8, 100, "cc33", &[0u8; 5000]);
        for r in [&a, &b, &c] {
            s.save(r).expect("save");
        }
        assert_eq!(s.get(7, 100, "aa11").expect("get"), Some(a.clone()));
        assert_eq!(s.get(7, 101, "bb22").expect("get"), Some(b.clone()));
        assert_eq!(s.get(7, 100, "wrong").expect("get"), None);
        assert_eq!(s.list().expect("list").len(), 3);
        let seven = s.for_compute(7).expect("for_compute");
        assert_eq!(seven, vec![a.clone(), b.clone()]);
        assert_eq!(s.for_compute(8).expect("for_compute"), vec![c.clone()]);
        assert!(s.for_compute(70).expect("for_compute").is_empty());

        // Saving again replaces.
        let a2 = SavedResult {
            payload: b"newer".to_vec(),
            ..a.clone()
        };
        s.save(&a2).expect("save");
        assert_eq!(s.get(7, 100, "aa11").expect("get"), Some(a2));
        assert_eq!(s.list().expect("list").len(), 3);

        assert!(s.remove(7, 100, "aa11").expect("remove"));
        assert!(!s.remove(7, 100, "aa11").expect("remove twice"));
        assert_eq!(s.get(7, 100, "aa11").expect("get"), None);
        assert_eq!(s.for_compute(7).expect("for_compute"), vec![b]);
        // Nothing but result files is left behind.
        assert!(files(s.dir())
            .iter()
            .all(|n| n.starts_with(FILE_PREFIX) && n.ends_with(FILE_SUFFIX)));
    }

    #[test]
    fn survives_reopen_and_cleans_crash_leftovers() {
        let t = tempfile::tempdir().expect("tempdir");
        let r = result(1, 2, "h", b"payload");
        {
            let s = ResultStore::open(t.path()).expect("open");
            s.save(&r).expect("save");
            // A crash between create and rename leaves a temp file, possibly half written.
            fs::write(
                s.dir().join(format!("{TEMP_PREFIX}999_0")),
                b"DSPYRES\0\x01",
            )
            .expect("write temp");
            assert_eq!(s.list().expect("list"), vec![r.clone()]);
        }
        let s = ResultStore::open(t.path()).expect("reopen");
        assert_eq!(s.list().expect("list"), vec![r]);
        assert!(files(s.dir()).iter().all(|n| !n.starts_with(TEMP_PREFIX)));
    }

    /// Runs only as the child of `sigkill_mid_save_loses_nothing_saved`: saves results in a
    /// loop until killed.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os("DISPYNODE_RESULTS_CRASH_DIR") else {
            return;
        };
        let s = ResultStore::open(Path::new(&dir)).expect("open");
        for i in 0..1_000_000 {
            let payload = vec![(i % 251) as u8; 64 * 1024 + i as usize % 1000];
            s.save(&result(1, i, &format!("h{i}"), &payload))
                .expect("save");
        }
    }

    #[test]
    fn sigkill_mid_save_loses_nothing_saved() {
        let t = tempfile::tempdir().expect("tempdir");
        let exe = std::env::current_exe().expect("test binary");
        let mut child = std::process::Command::new(exe)
            .args(["--exact", "results::tests::crash_child", "--nocapture"])
            .env("DISPYNODE_RESULTS_CRASH_DIR", t.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        let dir = t.path().join(RESULTS_DIR);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let n = fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            if n >= 30 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "child saved nothing");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");

        let s = ResultStore::open(t.path()).expect("reopen");
        assert!(files(s.dir()).iter().all(|n| !n.starts_with(TEMP_PREFIX)));
        let scan = s.scan().expect("scan");
        assert!(scan.corrupt.is_empty(), "{:?}", scan.corrupt);
        assert!(scan.results.len() >= 29, "{}", scan.results.len());
        for r in &scan.results {
            assert_eq!(r.hash, format!("h{}", r.uid));
            assert_eq!(r.payload.len(), 64 * 1024 + r.uid as usize % 1000);
            assert!(r.payload.iter().all(|&b| b == (r.uid % 251) as u8));
        }
    }

    #[test]
    fn uid_reuse_with_another_hash_keeps_both() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        let first = result(3, 140_000_000_000, "first", b"one");
        let second = result(3, 140_000_000_000, "second", b"two");
        s.save(&first).expect("save");
        s.save(&second).expect("save");
        assert_eq!(s.for_compute(3).expect("list").len(), 2);
        assert_eq!(
            s.get(3, 140_000_000_000, "first").expect("get"),
            Some(first)
        );
        assert!(s.remove(3, 140_000_000_000, "second").expect("remove"));
        assert_eq!(s.for_compute(3).expect("list").len(), 1);
    }

    #[test]
    fn hostile_hash_and_negative_ids_stay_inside_the_directory() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        let r = result(-5, -1, "../../etc/passwd\0/x", b"p");
        s.save(&r).expect("save");
        assert_eq!(s.get(-5, -1, &r.hash).expect("get"), Some(r.clone()));
        assert_eq!(s.for_compute(-5).expect("list"), vec![r]);
        assert_eq!(files(t.path()), vec![RESULTS_DIR.to_owned()]);
    }

    #[test]
    fn ipv6_reply_address_round_trips() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        let mut r = result(1, 1, "h", b"x");
        r.reply_addr = "[fe80::1%2]:51347".parse().expect("addr");
        s.save(&r).expect("save");
        assert_eq!(s.get(1, 1, "h").expect("get"), Some(r));
    }

    fn assert_set_aside(s: &ResultStore, path: &Path) {
        let scan = s.scan().expect("scan");
        assert!(scan.results.is_empty());
        assert_eq!(scan.corrupt.len(), 1, "{:?}", scan.corrupt);
        let moved = scan.corrupt[0].moved_to.clone().expect("moved aside");
        assert!(moved.to_string_lossy().ends_with(CORRUPT_SUFFIX));
        assert!(moved.exists());
        assert!(!path.exists());
        // Never looked at again.
        let again = s.scan().expect("scan");
        assert!(again.results.is_empty() && again.corrupt.is_empty());
    }

    #[test]
    fn truncated_file_is_detected_and_moved_aside() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        s.save(&result(1, 2, "h", &[7u8; 1000])).expect("save");
        let p = only_result_file(&s);
        let bytes = fs::read(&p).expect("read");
        fs::write(&p, &bytes[..bytes.len() - 1]).expect("truncate");
        assert_set_aside(&s, &p);
    }

    #[test]
    fn flipped_byte_anywhere_is_detected() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        s.save(&result(1, 2, "h", b"some payload")).expect("save");
        let p = only_result_file(&s);
        let good = fs::read(&p).expect("read");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            fs::write(&p, &bad).expect("write");
            let err = s.get(1, 2, "h").expect_err("must be detected");
            assert!(matches!(err, StoreError::Corrupt { .. }), "byte {i}: {err}");
            assert!(!p.exists());
            // Clean up the set-aside copy for the next round.
            for n in files(s.dir()) {
                if n.contains(CORRUPT_SUFFIX) {
                    fs::remove_file(s.dir().join(n)).expect("rm");
                }
            }
        }
    }

    #[test]
    fn garbage_empty_and_huge_length_files_are_set_aside() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        let name = |i: i64| s.path_for(1, i, "h");
        fs::write(name(1), b"").expect("write");
        fs::write(name(2), b"not a result file at all, just text").expect("write");
        let mut huge = Vec::from(&MAGIC[..]);
        huge.extend_from_slice(&VERSION.to_le_bytes());
        huge.extend_from_slice(&[0, 0]);
        huge.extend_from_slice(&16u32.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&[0u8; DIGEST_LEN]);
        fs::write(name(3), &huge).expect("write");
        let scan = s.scan().expect("scan");
        assert!(scan.results.is_empty());
        assert_eq!(scan.corrupt.len(), 3);
        assert!(scan.corrupt.iter().all(|c| c.moved_to.is_some()));
    }

    #[test]
    fn file_renamed_to_another_key_is_not_trusted() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        s.save(&result(1, 2, "h", b"x")).expect("save");
        fs::rename(s.path_for(1, 2, "h"), s.path_for(1, 3, "h")).expect("rename");
        assert!(matches!(s.get(1, 3, "h"), Err(StoreError::Corrupt { .. })));
        s.save(&result(1, 2, "h", b"x")).expect("save");
        fs::rename(s.path_for(1, 2, "h"), s.path_for(1, 4, "h")).expect("rename");
        let scan = s.scan().expect("scan");
        assert!(scan.results.is_empty());
        assert_eq!(scan.corrupt.len(), 1);
    }

    #[test]
    fn unknown_version_is_reported_not_misread() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        s.save(&result(1, 2, "h", b"x")).expect("save");
        let p = only_result_file(&s);
        let mut b = fs::read(&p).expect("read");
        b[8] = 2;
        fs::write(&p, &b).expect("write");
        match s.get(1, 2, "h") {
            Err(StoreError::Corrupt { reason, .. }) => assert!(reason.contains("version")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn symlinks_are_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        let target = t.path().join("elsewhere");
        fs::write(&target, b"secret").expect("write");
        symlink(&target, s.path_for(1, 2, "h")).expect("symlink");
        assert!(matches!(s.get(1, 2, "h"), Err(StoreError::Corrupt { .. })));
        assert_eq!(fs::read(&target).expect("read"), b"secret");

        let t2 = tempfile::tempdir().expect("tempdir");
        symlink(t.path(), t2.path().join(RESULTS_DIR)).expect("symlink");
        assert!(matches!(
            ResultStore::open(t2.path()),
            Err(StoreError::NotADirectory { .. })
        ));
    }

    #[test]
    fn many_results() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        for i in 0..300 {
            let payload = vec![(i % 251) as u8; (i as usize) * 7];
            s.save(&result(i % 3, i, &format!("h{i}"), &payload))
                .expect("save");
        }
        let all = s.list().expect("list");
        assert_eq!(all.len(), 300);
        for r in &all {
            assert_eq!(r.payload.len(), r.uid as usize * 7);
            assert!(r.payload.iter().all(|&b| b == (r.uid % 251) as u8));
        }
        // Ordered by saved_at.
        assert!(all.windows(2).all(|w| w[0].saved_at <= w[1].saved_at));
        assert_eq!(s.for_compute(1).expect("list").len(), 100);
        for i in (0..300).step_by(2) {
            assert!(s.remove(i % 3, i, &format!("h{i}")).expect("remove"));
        }
        assert_eq!(s.list().expect("list").len(), 150);
    }

    #[test]
    fn permissions_are_private() {
        let t = tempfile::tempdir().expect("tempdir");
        // A pre-existing directory with loose permissions is tightened.
        let dir = t.path().join(RESULTS_DIR);
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let s = ResultStore::open(t.path()).expect("open");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(s.dir()), 0o700);
        s.save(&result(1, 2, "h", b"x")).expect("save");
        assert_eq!(mode(&only_result_file(&s)), 0o600);

        let fresh = tempfile::tempdir().expect("tempdir");
        let nested = fresh.path().join("state");
        let s = ResultStore::open(&nested).expect("open creates parents");
        assert_eq!(mode(s.dir()), 0o700);
    }

    #[test]
    fn nan_clock_does_not_break_saving() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = ResultStore::open(t.path()).expect("open");
        let mut r = result(1, 2, "h", b"x");
        r.saved_at = f64::NAN;
        s.save(&r).expect("save");
        assert_eq!(
            s.get(1, 2, "h").expect("get").map(|r| r.saved_at),
            Some(0.0)
        );
    }
}
