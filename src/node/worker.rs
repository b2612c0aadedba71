//! The daemon's side of the per-computation Python worker (`runner/dispynode_job.py`).
//! The worker is the only process that unpickles client data. We talk to it over its stdin
//! and stdout with frames of `u32 header_len | JSON header | u32 blob_len | blob`.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value as Json};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};

use crate::limits::MAX_WORKER_FRAME;

/// Blobs up to this size are copied into the message's one write.
const INLINE_BLOB: usize = 64 * 1024;

/// The worker's source, embedded so the daemon is one self-contained binary.
pub const WORKER_SOURCE: &str = include_str!("../../runner/dispynode_job.py");

/// What `python3 -c` runs: it reads `WORKER_SOURCE` from stdin ([`source_preamble`]),
/// compiles it in a short-lived child and runs the result, so the parser's garbage never lands
/// in the heap that every job process is forked from (runner/dispynode_boot.py says what that
/// costs, and why the source is not an argument).
pub const BOOT_SOURCE: &str = include_str!("../../runner/dispynode_boot.py");

/// The interpreter's arguments that start a worker.
pub fn worker_args() -> [&'static std::ffi::OsStr; 2] {
    ["-c".as_ref(), BOOT_SOURCE.as_ref()]
}

/// The worker's environment beyond a job's: `LD_BIND_NOW`, so that the dynamic loader resolves
/// every symbol once in the worker. Lazily bound, each job process resolved the C functions it
/// called first (setsid, ...) itself, writing (copying) the pages of the symbol tables: about
/// ten page copies per job. The boot script removes it from the environment again, so that
/// nothing the jobs start inherits it.
pub fn worker_env() -> Vec<(String, String)> {
    vec![("LD_BIND_NOW".to_owned(), "1".to_owned())]
}

/// What the worker reads first on stdin, before any message: `u32 BE length | source`.
pub fn source_preamble() -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + WORKER_SOURCE.len());
    out.extend_from_slice(&(WORKER_SOURCE.len() as u32).to_be_bytes());
    out.extend_from_slice(WORKER_SOURCE.as_bytes());
    out
}

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("could not start the Python worker ({python}): {source}")]
    Spawn {
        python: String,
        source: std::io::Error,
    },
    #[error("the Python worker is gone")]
    Gone,
    #[error("the Python worker did not answer in time")]
    Timeout,
    #[error("the Python worker sent a malformed message: {0}")]
    Protocol(String),
}

/// Everything the daemon learns about a job from the worker.
#[derive(Debug)]
pub enum JobEvent {
    /// Job `id` runs in child `pid`; `held`: the child waits for `release` before any user
    /// code (it was not placed in a cgroup ahead, see `Spare`).
    Started { id: u64, pid: i32, held: bool },
    /// A new spare child (forked ahead for a coming job) to move into a job cgroup of its own
    /// now, with `place_spares` only.
    Spare { pid: i32 },
    Done {
        id: u64,
        header: Json,
        result: Vec<u8>,
    },
    /// The worker exited or its stream broke: every job it ran is over.
    WorkerExited,
}

/// A reply to a control op (`init`, `setup`, `close`).
#[derive(Debug)]
pub struct ControlReply {
    pub ok: bool,
    pub error: Option<String>,
}

pub struct Worker {
    stdin: Arc<tokio::sync::Mutex<ChildStdin>>,
    /// One outstanding control op at a time; its reply is routed here by the reader.
    control: tokio::sync::Mutex<()>,
    pending: Arc<Mutex<Option<oneshot::Sender<ControlReply>>>>,
    child: Mutex<Option<Child>>,
    pub pid: Option<u32>,
    /// Set once the worker is stopped: nothing more is sent (a write could still land in the
    /// pipe of a worker about to die, and no event would ever answer it).
    stopped: std::sync::atomic::AtomicBool,
}

impl Worker {
    /// Starts the worker with `cmd` (the jailed interpreter) and routes its job events to
    /// `events`. Its stdin and stdout are our control stream; its stderr goes to our log.
    pub fn spawn(
        mut cmd: Command,
        events: mpsc::UnboundedSender<JobEvent>,
    ) -> Result<Arc<Worker>, WorkerError> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| WorkerError::Spawn {
                python: "python".to_owned(),
                source,
            })?;
        let stdin = child.stdin.take().ok_or(WorkerError::Gone)?;
        let stdout = child.stdout.take().ok_or(WorkerError::Gone)?;
        let pending: Arc<Mutex<Option<oneshot::Sender<ControlReply>>>> = Arc::default();
        let stdin = Arc::new(tokio::sync::Mutex::new(stdin));
        // The source goes first: every message waits for this lock, taken here.
        let mut first = stdin
            .clone()
            .try_lock_owned()
            .map_err(|_| WorkerError::Gone)?;
        tokio::spawn(async move {
            // A failed write means the worker is gone, which the next send reports.
            let _ = first.write_all(&source_preamble()).await;
            let _ = first.flush().await;
        });
        let w = Arc::new(Worker {
            stdin,
            control: tokio::sync::Mutex::new(()),
            pending: pending.clone(),
            pid: child.id(),
            child: Mutex::new(Some(child)),
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(read_events(stdout, pending, events));
        Ok(w)
    }

    async fn send(&self, header: &Json, blob: &[&[u8]]) -> Result<(), WorkerError> {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(WorkerError::Gone);
        }
        let h = serde_json::to_vec(header).map_err(|e| WorkerError::Protocol(e.to_string()))?;
        let blob_len: usize = blob.iter().map(|b| b.len()).sum();
        // A small message goes in one write (the worker wakes once, reads it whole); a large
        // blob is written from where it is rather than copied.
        let inline = blob_len <= INLINE_BLOB;
        let mut msg = Vec::with_capacity(8 + h.len() + if inline { blob_len } else { 0 });
        msg.extend_from_slice(&(h.len() as u32).to_be_bytes());
        msg.extend_from_slice(&h);
        msg.extend_from_slice(
            &(u32::try_from(blob_len)
                .map_err(|_| WorkerError::Protocol("blob too large".into()))?)
            .to_be_bytes(),
        );
        if inline {
            for b in blob {
                msg.extend_from_slice(b);
            }
        }
        let mut w = self.stdin.lock().await;
        w.write_all(&msg).await.map_err(|_| WorkerError::Gone)?;
        if !inline {
            for b in blob {
                w.write_all(b).await.map_err(|_| WorkerError::Gone)?;
            }
        }
        w.flush().await.map_err(|_| WorkerError::Gone)
    }

    /// Sends a control op and waits for its reply (`limit` None: as long as it takes).
    pub async fn control(
        &self,
        header: Json,
        blob: &[u8],
        limit: Option<Duration>,
    ) -> Result<ControlReply, WorkerError> {
        let _one = self.control.lock().await;
        let (tx, rx) = oneshot::channel();
        *self.pending.lock().map_err(|_| WorkerError::Gone)? = Some(tx);
        self.send(&header, &[blob]).await?;
        match limit {
            Some(l) => match tokio::time::timeout(l, rx).await {
                Err(_) => Err(WorkerError::Timeout),
                Ok(r) => r.map_err(|_| WorkerError::Gone),
            },
            None => rx.await.map_err(|_| WorkerError::Gone),
        }
    }

    pub async fn start_job(
        &self,
        header: Json,
        args: &[u8],
        kwargs: &[u8],
    ) -> Result<(), WorkerError> {
        self.send(&header, &[args, kwargs]).await
    }

    /// Tells the worker that spare `pid` is in a job cgroup of its own: a job given to it
    /// needs no `hold`.
    pub async fn spare_placed(&self, pid: i32) -> Result<(), WorkerError> {
        self.send(&json!({"op": "placed", "pid": pid}), &[]).await
    }

    /// Lets a held job child (placed in its cgroup meanwhile) run user code.
    pub async fn release_job(&self, id: u64) -> Result<(), WorkerError> {
        self.send(&json!({"op": "release", "id": id}), &[]).await
    }

    pub async fn kill_job(&self, id: u64) -> Result<(), WorkerError> {
        self.send(&json!({"op": "kill", "id": id}), &[]).await
    }

    /// Kills the worker and with it (EOF on its stdin) its job children; nothing is sent to
    /// it any more.
    pub fn kill(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut c) = self.child.lock() {
            if let Some(mut child) = c.take() {
                let _ = child.start_kill();
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            }
        }
    }

    /// Waits (bounded) for the worker to exit by itself, then makes sure it is gone.
    pub async fn reap(&self, limit: Duration) {
        let child = self.child.lock().ok().and_then(|mut c| c.take());
        if let Some(mut child) = child {
            if tokio::time::timeout(limit, child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}

/// The `pid` of a worker event, if it is one.
fn pid_in(header: &Json) -> Option<i32> {
    header
        .get("pid")
        .and_then(Json::as_i64)
        .and_then(|p| i32::try_from(p).ok())
}

async fn read_events(
    stdout: ChildStdout,
    pending: Arc<Mutex<Option<oneshot::Sender<ControlReply>>>>,
    events: mpsc::UnboundedSender<JobEvent>,
) {
    let mut r = BufReader::with_capacity(1 << 16, stdout);
    loop {
        let (header, blob) = match read_message(&mut r).await {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                // Job code can write to this stream too; whatever it wrote, the stream is
                // lost from here on (worker_events then stops the worker).
                tracing::error!(error = %e, "unreadable message from the Python worker");
                break;
            }
        };
        let ev = header
            .get("ev")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        match ev.as_str() {
            "init" | "setup" | "closed" => {
                let reply = ControlReply {
                    ok: header.get("ok").and_then(Json::as_bool).unwrap_or(false),
                    error: header
                        .get("error")
                        .and_then(Json::as_str)
                        .map(str::to_owned),
                };
                if let Some(tx) = pending.lock().ok().and_then(|mut p| p.take()) {
                    let _ = tx.send(reply);
                }
            }
            "started" => {
                let id = header.get("id").and_then(Json::as_u64);
                let pid = pid_in(&header);
                // Not stated (never from this worker): held, so a `release` is always sent.
                let held = header.get("held").and_then(Json::as_bool).unwrap_or(true);
                if let (Some(id), Some(pid)) = (id, pid) {
                    let _ = events.send(JobEvent::Started { id, pid, held });
                }
            }
            "spare" => {
                if let Some(pid) = pid_in(&header) {
                    let _ = events.send(JobEvent::Spare { pid });
                }
            }
            "done" => {
                if let Some(id) = header.get("id").and_then(Json::as_u64) {
                    let _ = events.send(JobEvent::Done {
                        id,
                        header,
                        result: blob,
                    });
                }
            }
            other => tracing::warn!(event = other, "unknown event from the Python worker"),
        }
    }
    // Dropping a pending sender wakes its waiter with an error.
    if let Ok(mut p) = pending.lock() {
        p.take();
    }
    let _ = events.send(JobEvent::WorkerExited);
}

async fn read_message<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<(Json, Vec<u8>)> {
    let hlen = r.read_u32().await? as usize;
    if hlen > MAX_WORKER_FRAME {
        return Err(std::io::Error::other("header too large"));
    }
    let mut h = vec![0u8; hlen];
    r.read_exact(&mut h).await?;
    let blen = r.read_u32().await? as usize;
    if blen > MAX_WORKER_FRAME {
        return Err(std::io::Error::other("blob too large"));
    }
    let mut blob = vec![0u8; blen];
    r.read_exact(&mut blob).await?;
    let header = serde_json::from_slice(&h).map_err(std::io::Error::other)?;
    Ok((header, blob))
}

/// Collects `Started` pids so a terminate can be routed by job id.
pub type Pids = HashMap<u64, i32>;
