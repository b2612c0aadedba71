//! Job lifecycle: start (function jobs in the computation's Python worker, program jobs as
//! processes of their own), terminate, finish and deliver the reply; closing computations.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value as Json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;

use super::leftovers;
use super::worker::JobEvent;
use super::{now, Node};
use crate::limits::CLEANUP_TIME;
use crate::net;
use crate::protocol::message::{self, status, Job, JobReply, Output, PICKLED_NONE};
use crate::protocol::pickle::{self, Value};
use crate::results::SavedResult;
use crate::sandbox::cgroup::ComputationCgroup;
use crate::sandbox::{CgroupError, JobCgroup};
use crate::store::{self, Dir};

/// How the exception of a job that the node killed for a limit begins (the client sees it).
const KILLED: &str = "job killed: ";

/// Moves `pid` into `cg`, off the runtime thread: a migration write waits for an RCU grace
/// period (about 8 ms on the benchmark's machine) when no migration happened in the last few
/// ms, and the whole daemon would stall meanwhile.
async fn place(cg: &JobCgroup, pid: i32) -> Result<(), CgroupError> {
    let cg = cg.clone();
    tokio::task::spawn_blocking(move || cg.add_process(pid))
        .await
        .unwrap_or_else(|e| Err(CgroupError::Task(e.to_string())))
}

/// How a job ended, before it becomes a `_JobReply`.
pub(crate) enum Outcome {
    /// `killed`: the node killed the job for a limit (why), whatever its `done` says.
    Function {
        header: Json,
        result: Vec<u8>,
        killed: Option<&'static str>,
    },
    Program {
        code: i32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// The node killed the job for a limit (why).
    Killed(&'static str),
    Failed(String),
}

impl Node {
    /// Routes a worker's job events until it exits.
    pub(crate) async fn worker_events(
        self: Arc<Self>,
        compute_id: i64,
        worker_pid: Option<i32>,
        mut rx: UnboundedReceiver<JobEvent>,
    ) {
        // Spares being moved (or moved) into job cgroups of their own ahead of their jobs, by
        // pid; what the move made, once done (see `JobEvent::Spare`).
        let mut spares: HashMap<i32, oneshot::Receiver<Option<JobCgroup>>> = HashMap::new();
        let mut spare_seq = 0u64;
        while let Some(ev) = rx.recv().await {
            match ev {
                JobEvent::Spare { pid } => {
                    let (comp_cg, worker) = self.cgroup_and_worker(compute_id);
                    if comp_cg.is_none()
                        || !worker_pid.is_some_and(|w| leftovers::descends_from(pid, w))
                    {
                        continue;
                    }
                    spare_seq += 1;
                    let Some(cg) = self.leaf_cgroup(comp_cg.as_ref(), &format!("s{spare_seq}"))
                    else {
                        continue;
                    };
                    let (tx, placed) = oneshot::channel();
                    spares.insert(pid, placed);
                    // Its own task: the move may wait several ms, and this computation's
                    // events (a job's done) must not wait for it.
                    tokio::spawn(async move {
                        match place(&cg, pid).await {
                            Ok(()) => {
                                // Known here before the worker can give the spare a job.
                                if tx.send(Some(cg)).is_ok() {
                                    if let Some(w) = worker {
                                        let _ = w.spare_placed(pid).await;
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::warn!(pid, error = %e, "could not move a spare into its cgroup");
                                super::spawning::retire_cgroup(cg);
                                let _ = tx.send(None);
                            }
                        }
                    });
                }
                JobEvent::Started { id, pid, held } => {
                    // Job code can write to this stream too (module doc of the worker): only
                    // this computation's running jobs are believed.
                    if !self.has_job_of(id, compute_id) {
                        continue;
                    }
                    self.record_job_process(pid, worker_pid);
                    if let Some(j) = self.lock().jobs.get_mut(&id) {
                        j.pid = Some(pid);
                    }
                    let (comp_cg, worker) = self.cgroup_and_worker(compute_id);
                    if comp_cg.is_none() {
                        continue;
                    }
                    // A spare placed ahead was checked to be the worker's when it was
                    // announced. It keeps its cgroup if it is in it, or if it has exited
                    // already (a quick job ran there and ended before this event was read);
                    // a live process elsewhere (the spare died, its pid was reused) does not.
                    let ahead = match spares.remove(&pid) {
                        Some(placed) => placed.await.ok().flatten(),
                        None => None,
                    };
                    let ahead = match ahead {
                        Some(cg) if cg.holds_or_exited(pid) => Some(cg),
                        Some(cg) => {
                            super::spawning::retire_cgroup(cg);
                            None
                        }
                        None => None,
                    };
                    let leaf = match ahead {
                        Some(cg) => Some(cg),
                        // Else a held child: place it now, then release it to run user code.
                        None if worker_pid.is_some_and(|w| leftovers::descends_from(pid, w)) => {
                            match self.leaf_cgroup(comp_cg.as_ref(), &format!("f{id}")) {
                                Some(cg) => match place(&cg, pid).await {
                                    Ok(()) => Some(cg),
                                    Err(e) => {
                                        if e.is_no_such_process() {
                                            tracing::debug!(job = id, pid, "the job's process exited before it could be placed");
                                        } else {
                                            tracing::warn!(job = id, error = %e, "could not move the job into its cgroup");
                                        }
                                        super::spawning::retire_cgroup(cg);
                                        None
                                    }
                                },
                                None => None,
                            }
                        }
                        None if !leftovers::process_exists(pid) => {
                            tracing::debug!(
                                job = id,
                                pid,
                                "the job's process exited before its start was read"
                            );
                            None
                        }
                        None => {
                            tracing::warn!(
                                job = id,
                                pid,
                                "the worker reported a process not its own: not placed"
                            );
                            None
                        }
                    };
                    if let Some(cg) = leaf {
                        // Kept by the job if it is still there (it may have ended while we
                        // waited), else ended at once rather than left behind.
                        let unclaimed = match self.lock().jobs.get_mut(&id) {
                            Some(j) => {
                                j.cgroup = Some(cg);
                                None
                            }
                            None => Some(cg),
                        };
                        if let Some(cg) = unclaimed {
                            super::spawning::retire_cgroup(cg);
                        }
                    }
                    if held {
                        if let Some(w) = worker {
                            let _ = w.release_job(id).await;
                        }
                    }
                }
                JobEvent::Done { id, header, result } => {
                    // The first done of one of this computation's jobs counts (job code can
                    // write to this stream too; see also `done_seen`).
                    let (pid, cg) = match self.lock().jobs.get_mut(&id) {
                        Some(j) if j.compute_id == compute_id && !j.done_seen => {
                            j.done_seen = true;
                            (j.pid, j.cgroup.take())
                        }
                        _ => continue,
                    };
                    if let Some(pid) = pid {
                        self.procs.remove(pid);
                    }
                    let killed = cg.and_then(super::spawning::retire_cgroup);
                    let n = self.clone();
                    tokio::spawn(async move {
                        let outcome = Outcome::Function {
                            header,
                            result,
                            killed,
                        };
                        n.finish_job(id, outcome).await
                    });
                }
                JobEvent::WorkerExited => {
                    if let Some(pid) = worker_pid {
                        self.procs.remove(pid);
                    }
                    // Still the computation's worker: it died (killed, out of memory) or its
                    // stream broke, not closed by us. Make sure it is gone (a broken stream
                    // leaves it running jobs nobody hears of), and say so: its jobs end
                    // Terminated and further jobs fail until the client closes.
                    let (_, current) = self.cgroup_and_worker(compute_id);
                    if let Some(w) = current.filter(|w| w.pid.map(|p| p as i32) == worker_pid) {
                        w.kill();
                        tracing::error!(
                            computation = compute_id,
                            "the computation's Python worker is gone: its running jobs end \
                             Terminated, further jobs fail until the client closes it"
                        );
                    }
                    let ids: Vec<u64> = self
                        .lock()
                        .jobs
                        .iter()
                        .filter(|(_, j)| j.compute_id == compute_id)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ids {
                        let n = self.clone();
                        tokio::spawn(async move {
                            n.finish_job(
                                id,
                                Outcome::Failed("the job's Python worker exited".into()),
                            )
                            .await
                        });
                    }
                    break;
                }
            }
        }
    }

    /// The computation's cgroup and worker, if it has them.
    fn cgroup_and_worker(
        &self,
        compute_id: i64,
    ) -> (
        Option<ComputationCgroup>,
        Option<Arc<super::worker::Worker>>,
    ) {
        self.lock()
            .computations
            .get(&compute_id)
            .map(|c| (c.cgroup.clone(), c.worker.clone()))
            .unwrap_or((None, None))
    }

    /// Whether job `id` is one of computation `compute_id`'s.
    fn has_job_of(&self, id: u64, compute_id: i64) -> bool {
        self.lock()
            .jobs
            .get(&id)
            .is_some_and(|j| j.compute_id == compute_id)
    }

    /// Records a job's process for `--clean` once it has run for a while: short jobs, most of
    /// them, then cost no file I/O. Until then the process dies with us anyway: a function
    /// job with its worker (which kills its jobs when its control stream ends), a program
    /// job by the jail's parent-death signal; only what a program started in its first
    /// second can outlive a crash of the daemon unrecorded.
    /// A function job's pid comes from its worker's stream (`parent`: the worker), which job
    /// code can write to: it is recorded only if it is a process of the worker's.
    fn record_job_process(self: &Arc<Self>, pid: i32, parent: Option<i32>) {
        self.procs.note(pid);
        let n = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(leftovers::RECORD_JOBS_AFTER).await;
            // Most jobs have ended by now: nothing to read in /proc for them.
            if !n.procs.is_noted(pid) {
                return;
            }
            if parent.is_none_or(|w| leftovers::descends_from(pid, w)) {
                n.procs.persist(pid);
            } else {
                n.procs.remove(pid);
            }
        });
    }

    pub(crate) async fn start_function_job(self: &Arc<Self>, id: u64, job: &Job) {
        let (worker, hold) = self
            .lock()
            .computations
            .get(&job.compute_id)
            .map(|c| (c.worker.clone(), c.cgroup.is_some()))
            .unwrap_or((None, false));
        // With cgroups the child is held until the daemon has placed it in its job cgroup.
        let header = json!({
            "op": "job", "id": id, "uid": job.uid, "hash": job.hash, "start_time": now(),
            "code": job.code, "args_len": job.args.len(), "hold": hold,
        });
        let started = match worker {
            Some(w) => w
                .start_job(header, &job.args, &job.kwargs)
                .await
                .map_err(|e| e.to_string()),
            None => Err("the computation has no worker".into()),
        };
        if let Err(e) = started {
            self.clone()
                .finish_job(id, Outcome::Failed(format!("could not start the job: {e}")))
                .await;
        }
    }

    /// Runs a program job: `[interpreter] <program> args...` in the computation directory,
    /// in a process group of its own so that termination reaches its children too.
    pub(crate) fn start_program_job(self: &Arc<Self>, id: u64, job: &Job, dir: &std::path::Path) {
        let (program, node_ip, comp_cg) = {
            let st = self.lock();
            match st.computations.get(&job.compute_id) {
                Some(c) => (
                    c.compute.name.clone(),
                    c.compute.node_ip_addr.clone(),
                    c.cgroup.clone(),
                ),
                None => return,
            }
        };
        let args = match message::program_args(&job.args) {
            Ok(a) => a,
            Err(e) => {
                let n = self.clone();
                tokio::spawn(async move {
                    n.finish_job(
                        id,
                        Outcome::Failed(format!("invalid program arguments: {e}")),
                    )
                    .await
                });
                return;
            }
        };
        let mut argv: Vec<String> = Vec::new();
        let lower = program.to_ascii_lowercase();
        if lower.ends_with(".py") {
            argv.push(self.python.exe.clone());
        } else if lower.ends_with(".java") {
            argv.push("java".into());
        }
        argv.push(program);
        argv.extend(args);
        let cgroup = self.leaf_cgroup(comp_cg.as_ref(), &format!("j{id}"));
        // The job's environment: what the reference gives programs (§3.2), nothing of ours.
        let env = vec![
            ("dispy_job_path".to_owned(), dir.display().to_string()),
            ("dispy_node_ip_addr".to_owned(), node_ip),
            ("dispy_node_name".to_owned(), self.cfg.name.clone()),
        ];
        let spec = self.job_spec(
            dir,
            cgroup.as_ref().map(|c| c.path().to_owned()),
            env,
            Some(dir),
        );
        let n = self.clone();
        tokio::spawn(async move { n.run_program_job(id, spec, argv, cgroup).await });
    }

    /// Starts a program job (through the spawner, else the jail helper), waits for it and
    /// finishes it with its exit status and output.
    async fn run_program_job(
        self: Arc<Self>,
        id: u64,
        spec: crate::sandbox::JailSpec,
        argv: Vec<String>,
        cgroup: Option<crate::sandbox::JobCgroup>,
    ) {
        let started = match self.spawner().await {
            Some(sp) => match start_spawned(&sp, spec.clone(), &argv).await {
                // Gone (it died meanwhile) or broken: once more through the helper.
                Err(crate::sandbox::SpawnerError::Gone | crate::sandbox::SpawnerError::Io(_)) => {
                    self.start_jailed(&spec, &argv)
                }
                Err(e) => Err(e.to_string()),
                Ok(s) => Ok(s),
            },
            None => self.start_jailed(&spec, &argv),
        };
        let ProgramProcess {
            pid,
            stdout,
            stderr,
            exit,
        } = match started {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("could not run {}: {e}", argv[0]);
                return self.finish_job(id, Outcome::Failed(msg)).await;
            }
        };
        let terminated = match self.lock().jobs.get_mut(&id) {
            Some(j) => {
                j.pid = pid;
                j.cgroup = cgroup.clone();
                j.terminated
            }
            None => true,
        };
        if let Some(pid) = pid {
            self.record_job_process(pid, None);
            if terminated {
                // Terminated while it was being started (it had no pid to kill then).
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let (out_stop, out_stopped) = oneshot::channel();
        let (err_stop, err_stopped) = oneshot::channel();
        let out_task = tokio::spawn(read_capped(stdout, MAX_PROGRAM_OUTPUT, out_stopped));
        let err_task = tokio::spawn(read_capped(stderr, MAX_PROGRAM_OUTPUT, err_stopped));
        let status = exit.wait().await;
        if let Some(pid) = pid {
            self.procs.remove(pid);
            // Whatever the program left running in its process group goes with it.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // And with a cgroup, whatever left the process group too: then nothing of the job
        // holds its pipes any more.
        let limit_hit = cgroup.and_then(super::spawning::retire_cgroup);
        // Without a cgroup, a process that left the job's session may still hold the pipes
        // open: take what arrived within a short grace period rather than wait for it forever.
        let (stdout, stderr) = tokio::join!(
            collect_output(out_task, out_stop),
            collect_output(err_task, err_stop)
        );
        let uid = self.lock().jobs.get(&id).map(|j| j.uid);
        let (stdout, stdout_dropped) = stdout.kept_noting("stdout", uid);
        let (mut stderr, stderr_dropped) = stderr.kept_noting("stderr", uid);
        for (stream, dropped) in [("stdout", stdout_dropped), ("stderr", stderr_dropped)] {
            if dropped > 0 {
                stderr.extend_from_slice(&truncation_note(stream, dropped));
            }
        }
        let waited = status.map(|status| std::process::Output {
            status,
            stdout,
            stderr,
        });
        let outcome = match waited {
            Ok(out) => {
                use std::os::unix::process::ExitStatusExt;
                let code = out
                    .status
                    .code()
                    .unwrap_or_else(|| -out.status.signal().unwrap_or(0));
                let jail_failed = out
                    .status
                    .code()
                    .and_then(crate::sandbox::describe_exit_code)
                    .is_some()
                    && out.stderr.starts_with(b"dispynode-jail:");
                if jail_failed {
                    Outcome::Failed(String::from_utf8_lossy(&out.stderr).trim().to_owned())
                } else if let Some(reason) = limit_hit {
                    Outcome::Killed(reason)
                } else {
                    Outcome::Program {
                        code,
                        stdout: out.stdout,
                        stderr: out.stderr,
                    }
                }
            }
            Err(e) => Outcome::Failed(format!("waiting for the program failed: {e}")),
        };
        self.finish_job(id, outcome).await;
    }

    /// The jail helper's way: our binary re-exec'd per job (when there is no spawner).
    fn start_jailed(
        &self,
        spec: &crate::sandbox::JailSpec,
        argv: &[String],
    ) -> Result<ProgramProcess, String> {
        let mut child = super::spawning::jailed_command(spec, &argv[0], &argv[1..])
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok(ProgramProcess {
            pid: child.id().and_then(|p| i32::try_from(p).ok()),
            stdout: child.stdout.take().map(|o| Box::new(o) as BoxedRead),
            stderr: child.stderr.take().map(|o| Box::new(o) as BoxedRead),
            exit: ProgramExit::Child(child),
        })
    }

    /// Terminates a running job; its Terminated reply follows through `finish_job`.
    pub(crate) async fn terminate_job(self: &Arc<Self>, id: u64) {
        // Marked terminated before anything is killed: the job's own task may see it exit
        // (and finish it) while this one still waits for the kill, and must then report it
        // Terminated, not as a program that ended by itself.
        let (job_cgroup, worker, pid, kind_program) = {
            let mut st = self.lock();
            let Some(j) = st.jobs.get_mut(&id) else {
                return;
            };
            j.terminated = true;
            let (cid, pid, cg) = (j.compute_id, j.pid, j.cgroup.clone());
            let c = st.computations.get(&cid);
            (
                cg,
                c.and_then(|c| c.worker.clone()),
                pid,
                c.is_some_and(|c| c.worker.is_none()),
            )
        };
        if let Some(cg) = job_cgroup {
            let _ = tokio::task::spawn_blocking(move || cg.kill()).await;
        }
        if kind_program {
            if let Some(pid) = pid {
                // The program runs in its own process group: kill all of it.
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        } else if let Some(w) = worker {
            if w.kill_job(id).await.is_err() {
                // The worker's stream is broken; its jobs die with it. Kill the reported
                // process only if it still is the worker's (a job could have forged it).
                let ours = |p: i32| {
                    w.pid
                        .is_some_and(|wp| leftovers::descends_from(p, wp as i32))
                };
                if let Some(pid) = pid.filter(|p| ours(*p)) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    /// Frees the job's CPU, builds its reply and delivers it to the client; a reply that
    /// cannot be delivered is saved durably before the job counts as over, so a CLOSE (or a
    /// shutdown) waits for it to be either delivered or safe on disk.
    pub(crate) async fn finish_job(self: Arc<Self>, id: u64, outcome: Outcome) {
        let found = {
            let mut st = self.lock();
            match st.jobs.get_mut(&id) {
                Some(j) if !j.finishing => {
                    j.finishing = true;
                    let job = j.clone();
                    // The CPU is free before the reply goes out: the client may send the next
                    // job as soon as it has the reply (G29).
                    st.avail_cpus += 1;
                    let comp = st
                        .computations
                        .get(&job.compute_id)
                        .map(|c| (c.reply_ip.clone(), c.reply_addr, c.compute.auth.clone()));
                    Some((job, comp))
                }
                _ => None,
            }
        };
        let Some((job, comp)) = found else { return };
        self.jobs_changed.notify_waiters();
        let Some((reply_ip, reply_addr, compute_auth)) = comp else {
            self.forget_job(id).await;
            return;
        };
        let end = now();
        let mut reply = JobReply {
            uid: job.uid,
            hash: job.hash.clone(),
            ip_addr: reply_ip,
            status: status::TERMINATED,
            result: PICKLED_NONE.to_vec(),
            stdout: Output::None,
            stderr: Output::None,
            exception: None,
            start_time: job.start_time,
            end_time: end,
        };
        let mut killed = false;
        if !job.terminated {
            match outcome {
                Outcome::Function {
                    header,
                    result,
                    killed: killed_by,
                } => {
                    let text = |k: &str| {
                        header
                            .get(k)
                            .and_then(Json::as_str)
                            .map(|s| Output::Text(s.to_owned()))
                            .unwrap_or(Output::None)
                    };
                    reply.status = header
                        .get("status")
                        .and_then(Json::as_i64)
                        .filter(|s| [status::FINISHED, status::TERMINATED].contains(s))
                        .unwrap_or(status::TERMINATED);
                    reply.result = if result.is_empty() {
                        PICKLED_NONE.to_vec()
                    } else {
                        result
                    };
                    reply.stdout = text("stdout");
                    reply.stderr = text("stderr");
                    reply.exception = header
                        .get("exception")
                        .and_then(Json::as_str)
                        .map(str::to_owned);
                    if let Some(reason) = killed_by {
                        // Its output so far is kept; its status and exception say what happened.
                        reply.status = status::TERMINATED;
                        reply.exception = Some(format!("{KILLED}{reason}"));
                        killed = true;
                    }
                }
                Outcome::Program {
                    code,
                    stdout,
                    stderr,
                } => {
                    // Programs finish with status Finished whatever their exit code (§3.2).
                    reply.status = status::FINISHED;
                    reply.result = pickle::encode(&Value::Int(i64::from(code)));
                    reply.stdout = Output::Bytes(stdout);
                    reply.stderr = Output::Bytes(stderr);
                }
                Outcome::Killed(reason) => {
                    reply.exception = Some(format!("{KILLED}{reason}"));
                    killed = true;
                }
                Outcome::Failed(why) => {
                    reply.exception = Some(why);
                }
            }
        }
        {
            let mut st = self.lock();
            st.jobs_done += 1;
            if let Some(c) = st.computations.get_mut(&job.compute_id) {
                if reply.status == status::FINISHED {
                    c.tally.finished += 1;
                } else {
                    c.tally.terminated += 1;
                    c.tally.killed += u64::from(killed);
                }
            }
        }
        // Per job at debug (see `JobTally`); a job the node killed is worth an operator's look.
        if killed {
            tracing::info!(
                computation = job.compute_id,
                job = job.uid,
                status = reply.status,
                duration = format!("{:.3}", end - job.start_time),
                error = reply.exception.as_deref(),
                "job done: killed by a limit"
            );
        } else {
            tracing::debug!(
                computation = job.compute_id,
                job = job.uid,
                status = reply.status,
                duration = format!("{:.3}", end - job.start_time),
                "job done"
            );
        }
        let payload = pickle::encode(&reply.to_value());
        if self.deliver(&payload, reply_addr, job.uid).await {
            if self.lock().saved_results > 0 {
                // The client is reachable again: send what it missed (§4.2).
                let n = self.clone();
                let computation = (job.compute_id, compute_auth);
                tokio::spawn(async move { n.resend_results(Some(computation)).await });
            }
        } else {
            let saved = SavedResult {
                compute_id: job.compute_id,
                compute_auth,
                uid: job.uid,
                hash: job.hash.clone(),
                reply_addr,
                payload,
                saved_at: now(),
            };
            self.save_result(saved).await;
        }
        self.forget_job(id).await;
    }

    /// The job is over: drop it, release its per-job depends and wake CLOSE waiters.
    async fn forget_job(&self, id: u64) {
        let (dir, to_remove) = {
            let mut st = self.lock();
            let Some(job) = st.jobs.remove(&id) else {
                return;
            };
            let mut to_remove = Vec::new();
            let dir = st.computations.get_mut(&job.compute_id).map(|c| {
                for f in &job.xfer_files {
                    if let Some(n) = c.file_uses.get_mut(f) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            c.file_uses.remove(f);
                            to_remove.push(f.clone());
                        }
                    }
                }
                c.dir.clone()
            });
            (dir, to_remove)
        };
        if let Some(dir) = dir.filter(|_| !to_remove.is_empty()) {
            remove_files(&dir, &to_remove);
        }
        self.jobs_changed.notify_waiters();
    }

    /// Pushes a JOB_REPLY (`payload` is the pickled `_JobReply`) and waits for the ACK.
    pub(crate) async fn deliver(&self, payload: &[u8], addr: SocketAddr, uid: i64) -> bool {
        let mut msg = Vec::with_capacity(payload.len() + 10);
        msg.extend_from_slice(b"JOB_REPLY:");
        msg.extend_from_slice(payload);
        match net::request(addr, &msg, true, self.msg_timeout(), self.tls.as_ref()).await {
            Ok(Some(ack)) if ack == b"ACK" => {
                self.touch();
                true
            }
            Ok(other) => {
                tracing::warn!(
                    client = %addr, job = uid,
                    reply = %String::from_utf8_lossy(other.as_deref().unwrap_or_default()),
                    "client did not accept the job reply"
                );
                false
            }
            Err(e) => {
                tracing::warn!(client = %addr, job = uid, error = %e, "could not deliver the job reply");
                false
            }
        }
    }

    /// Saves an undelivered result durably (temp file, fsync, rename).
    async fn save_result(&self, r: SavedResult) {
        let store = self.results.clone();
        let (cid, uid) = (r.compute_id, r.uid);
        match tokio::task::spawn_blocking(move || store.save(&r)).await {
            Ok(Ok(())) => {
                self.lock().saved_results += 1;
                tracing::info!(
                    computation = cid,
                    job = uid,
                    "job reply saved for later delivery"
                );
            }
            Ok(Err(e)) => {
                tracing::error!(computation = cid, job = uid, error = %e, "could not save an undelivered job reply")
            }
            Err(e) => {
                tracing::error!(computation = cid, job = uid, error = %e, "could not save an undelivered job reply")
            }
        }
    }

    /// Saved results of one computation, `compute_id` with `auth` (empty on any error, which
    /// the store logs). Ids come from the client's clock and can repeat: a result of another
    /// computation with the same id is not this one's.
    pub(crate) async fn saved_for(&self, compute_id: i64, auth: &str) -> Vec<SavedResult> {
        if self.lock().saved_results == 0 {
            return Vec::new();
        }
        let store = self.results.clone();
        let mut saved = tokio::task::spawn_blocking(move || store.for_compute(compute_id))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        saved.retain(|r| r.compute_auth == auth);
        saved
    }

    /// Deletes a result the client acknowledged.
    pub(crate) async fn forget_result(&self, r: &SavedResult) {
        let store = self.results.clone();
        let (cid, uid, hash) = (r.compute_id, r.uid, r.hash.clone());
        if let Ok(Ok(true)) =
            tokio::task::spawn_blocking(move || store.remove(cid, uid, &hash)).await
        {
            let mut st = self.lock();
            st.saved_results = st.saved_results.saturating_sub(1);
        }
    }

    /// Pushes saved results (of one computation, `(id, auth)`, or all) to their clients;
    /// removes each one the client acknowledges.
    pub(crate) async fn resend_results(self: Arc<Self>, computation: Option<(i64, String)>) {
        let Ok(_one) = self.resending.try_lock() else {
            return;
        };
        if self.lock().saved_results == 0 {
            return;
        }
        let all = match computation {
            Some((id, auth)) => self.saved_for(id, &auth).await,
            None => {
                let store = self.results.clone();
                tokio::task::spawn_blocking(move || store.list())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default()
            }
        };
        // Like the reference, at most 64 per pass.
        for r in all.into_iter().take(64) {
            if self.deliver(&r.payload, r.reply_addr, r.uid).await {
                tracing::info!(
                    computation = r.compute_id,
                    job = r.uid,
                    "saved job reply delivered"
                );
                self.forget_result(&r).await;
            }
        }
    }

    pub(crate) async fn wait_jobs_done(&self, compute_id: i64) {
        loop {
            let notified = self.jobs_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self
                .lock()
                .jobs
                .values()
                .any(|j| j.compute_id == compute_id)
            {
                return;
            }
            notified.await;
        }
    }

    /// Removes a computation: its worker runs the cleanup function, its files go unless the
    /// client asked to keep them, and the node becomes free when it was the last one.
    pub(crate) async fn close_computation(self: &Arc<Self>, compute_id: i64) {
        let Some(c) = self.lock().computations.remove(&compute_id) else {
            return;
        };
        if let Some(w) = &c.worker {
            match w
                .control(json!({"op": "close"}), &[], Some(CLEANUP_TIME))
                .await
            {
                Ok(r) if !r.ok => {
                    tracing::warn!(computation = compute_id, error = ?r.error, "cleanup function failed")
                }
                Err(e) => {
                    tracing::warn!(computation = compute_id, error = %e, "worker did not close cleanly")
                }
                _ => {}
            }
            w.reap(Duration::from_secs(2)).await;
        }
        if let Some(cg) = c.cgroup.clone() {
            super::spawning::retire_computation_cgroup(cg).await;
        }
        let shared = self.lock().computations.values().any(|o| o.dir == c.dir);
        let removes_files = c.compute.cleanup.removes_files();
        let files: Vec<PathBuf> = c.file_uses.keys().cloned().collect();
        let dir = c.dir.clone();
        let prefix = self.cfg.dest_path_prefix.clone();
        let sched_dir = prefix.join(&c.compute.scheduler_ip_addr);
        // A large tree takes a while to remove: not on the runtime's only thread.
        let _ = tokio::task::spawn_blocking(move || {
            if !shared {
                // The jobs' private TMPDIR is ours, whatever the client's cleanup setting.
                let _ = store::remove_tree(&dir.join(".tmp"));
            }
            if !removes_files {
                return;
            }
            if shared {
                remove_files(&dir, &files);
            } else if let Err(e) = store::remove_tree(&dir) {
                tracing::warn!(computation = compute_id, dir = %dir.display(), error = %e, "could not remove the computation's files");
            }
            if let Some(parent) = dir.parent() {
                if parent.starts_with(&prefix) && parent != prefix {
                    store::remove_if_empty(parent);
                }
            }
            store::remove_if_empty(&sched_dir);
        })
        .await;
        let t = c.tally;
        tracing::info!(
            computation = compute_id,
            name = %c.compute.name,
            jobs = t.finished + t.terminated,
            finished = t.finished,
            terminated = t.terminated,
            killed = t.killed,
            "computation closed"
        );
        let (free, sched, stop) = {
            let mut st = self.lock();
            let free = st.computations.is_empty();
            let sched = st.scheduler.clone();
            let mut stop = false;
            if free {
                st.scheduler = None;
                if st.serve > 0 {
                    st.serve -= 1;
                }
                stop = st.serve == 0;
            }
            (free, sched, stop)
        };
        if stop {
            tracing::info!("served the configured number of clients");
            self.request_shutdown();
        } else if free {
            if let Some((ip, port)) = sched {
                if let Some(ip) = net::parse_ip(&ip) {
                    let n = self.clone();
                    tokio::spawn(async move { n.announce_to(SocketAddr::new(ip, port)).await });
                }
            }
        }
    }

    /// CLOSE with close=False (the client's resetup_node): a fresh worker, setup again, and
    /// NODE_CLOSED to the scheduler.
    pub(crate) async fn resetup_computation(self: &Arc<Self>, compute_id: i64) {
        let Some((compute, dir, reply_ip, old, cgroup)) =
            self.lock().computations.get_mut(&compute_id).map(|c| {
                c.closing = false;
                c.setup_done = false;
                (
                    c.compute.clone(),
                    c.dir.clone(),
                    c.reply_ip.clone(),
                    c.worker.take(),
                    c.cgroup.clone(),
                )
            })
        else {
            return;
        };
        if let Some(w) = old {
            let _ = w
                .control(json!({"op": "close"}), &[], Some(CLEANUP_TIME))
                .await;
            w.reap(Duration::from_secs(2)).await;
        }
        if compute.kind == message::ComputeKind::Function {
            match self
                .start_worker(&compute, &dir, &reply_ip, cgroup.as_ref())
                .await
            {
                Ok(w) => {
                    if let Some(c) = self.lock().computations.get_mut(&compute_id) {
                        c.worker = Some(w);
                    }
                }
                Err(e) => {
                    tracing::warn!(computation = compute_id, error = %e, "could not restart the worker")
                }
            }
        }
        let addr = self.lock().computations.get(&compute_id).map(|c| {
            (
                c.compute.scheduler_ip_addr.clone(),
                c.compute.scheduler_port,
            )
        });
        if let Some((ip, port)) = addr {
            if let Some(ip) = net::parse_ip(&ip) {
                let v = Value::str_dict([
                    ("node_addr", Value::Str(reply_ip)),
                    ("node_auth", Value::Bytes(self.auth.to_vec())),
                    ("compute_id", Value::Int(compute_id)),
                    ("auth", Value::Str(compute.auth.clone())),
                ]);
                let mut msg = b"NODE_CLOSED:".to_vec();
                pickle::encode_into(&v, &mut msg);
                let _ = net::request(
                    SocketAddr::new(ip, port),
                    &msg,
                    false,
                    self.msg_timeout(),
                    self.tls.as_ref(),
                )
                .await;
            }
        }
    }

    /// Shutdown: terminate every job, deliver what can be delivered, close computations and
    /// say TERMINATED.
    pub(crate) async fn shutdown(self: &Arc<Self>) {
        let ids: Vec<u64> = self.lock().jobs.keys().copied().collect();
        for id in ids {
            self.terminate_job(id).await;
        }
        let comps: Vec<i64> = self.lock().computations.keys().copied().collect();
        for cid in &comps {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.wait_jobs_done(*cid)).await;
        }
        self.announce_terminated().await;
        for cid in comps {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), self.close_computation(cid)).await;
        }
        self.log_suppressed();
        tracing::info!("dispynode stopped");
    }
}

/// Most output kept per stream of a program job; the rest is read and dropped.
const MAX_PROGRAM_OUTPUT: usize = 64 << 20;
/// How long output is still collected after a program exited.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

type BoxedRead = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// A started program job: its pid, its output and how to wait for it.
struct ProgramProcess {
    pid: Option<i32>,
    stdout: Option<BoxedRead>,
    stderr: Option<BoxedRead>,
    exit: ProgramExit,
}

enum ProgramExit {
    /// Started by the jail helper: our child.
    Child(tokio::process::Child),
    /// Started by the spawner: its wait status comes from there.
    Spawned(tokio::sync::oneshot::Receiver<i32>),
}

impl ProgramExit {
    async fn wait(self) -> std::io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        match self {
            ProgramExit::Child(mut c) => c.wait().await,
            ProgramExit::Spawned(rx) => rx
                .await
                .map(std::process::ExitStatus::from_raw)
                .map_err(|_| std::io::Error::other("the spawner exited before the program")),
        }
    }
}

/// Starts a program job through the spawner, with pipes for its stdout and stderr.
async fn start_spawned(
    sp: &crate::sandbox::Spawner,
    spec: crate::sandbox::JailSpec,
    argv: &[String],
) -> Result<ProgramProcess, crate::sandbox::SpawnerError> {
    let (out_r, out_w) = output_pipe()?;
    let (err_r, err_w) = output_pipe()?;
    // Everything that can fail on our side first: after `spawn` the program runs, and an
    // error here would have the caller start it a second time through the helper.
    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(out_r)?;
    let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(err_r)?;
    let spawned = sp.spawn(spec, &argv[0], &argv[1..], out_w, err_w).await?;
    Ok(ProgramProcess {
        pid: Some(spawned.pid),
        stdout: Some(Box::new(stdout)),
        stderr: Some(Box::new(stderr)),
        exit: ProgramExit::Spawned(spawned.exit),
    })
}

/// A pipe for a program's output: our read end non-blocking (for tokio), the program's
/// write end blocking, as programs expect. Made here rather than checked by tokio's
/// `from_owned_fd`, which asks the kernel three more times per pipe.
fn output_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(r.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((r, w))
}

/// What a program wrote to one stream: the first `cap` bytes, and how many more were dropped.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
}

impl Captured {
    /// The kept bytes and the dropped count, logged when output was dropped.
    fn kept_noting(self, stream: &str, job: Option<i64>) -> (Vec<u8>, u64) {
        if self.dropped > 0 {
            tracing::warn!(
                job,
                stream,
                kept = self.kept.len(),
                dropped = self.dropped,
                "program output over the per-stream limit: the rest was dropped"
            );
        }
        (self.kept, self.dropped)
    }
}

/// The line added to a program job's stderr when a stream was cut: the client must see that
/// what it got is not all the program wrote.
fn truncation_note(stream: &str, dropped: u64) -> Vec<u8> {
    format!(
        "\ndispynode: {stream} truncated: the first {} MiB kept, {dropped} more bytes dropped\n",
        MAX_PROGRAM_OUTPUT >> 20
    )
    .into_bytes()
}

/// A program's output on one stream to its end (or until `stop`), the first `cap` bytes kept
/// (the rest is read, counted and dropped, so the program never blocks on a full pipe). Read
/// straight into the kept bytes, grown as output comes: most programs write a line or two,
/// and a fixed 64 KiB buffer per stream and job was mapped and unmapped by musl's allocator
/// every time.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    r: Option<R>,
    cap: usize,
    mut stop: oneshot::Receiver<()>,
) -> Captured {
    use tokio::io::AsyncReadExt;
    let mut out = Captured::default();
    let Some(mut r) = r else { return out };
    let mut dropped = Vec::new();
    loop {
        let room = cap - out.kept.len();
        let kept = &mut out.kept;
        let read = tokio::select! {
            biased;
            read = async {
                if room == 0 {
                    dropped.resize(64 * 1024, 0);
                    r.read(&mut dropped).await.map(|n| (n, true))
                } else {
                    if kept.len() == kept.capacity() {
                        kept.reserve_exact(kept.len().clamp(512, 1 << 20).min(room));
                    }
                    (&mut r).take(room as u64).read_buf(kept).await.map(|n| (n, false))
                }
            } => read,
            // A read in flight is dropped unfinished: tokio's reads consume nothing then.
            _ = &mut stop => return out,
        };
        match read {
            Ok((0, _)) | Err(_) => return out,
            Ok((n, true)) => out.dropped += n as u64,
            Ok(_) => {}
        }
    }
}

/// The output `task` read, once the program's stream ends or, at the latest, OUTPUT_GRACE
/// after the program exited: then whatever arrived until then (a process that left the job's
/// group may hold the pipe open for long).
async fn collect_output(
    mut task: tokio::task::JoinHandle<Captured>,
    stop: oneshot::Sender<()>,
) -> Captured {
    if let Ok(done) = tokio::time::timeout(OUTPUT_GRACE, &mut task).await {
        return done.unwrap_or_default();
    }
    let _ = stop.send(());
    task.await.unwrap_or_default()
}

/// Removes transferred files (paths relative to the computation directory) without following
/// symlinks.
fn remove_files(dir: &std::path::Path, files: &[PathBuf]) {
    let Ok(root) = Dir::open(dir) else { return };
    for f in files {
        let comps: Vec<String> = f
            .parent()
            .map(|p| p.iter().map(|c| c.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let Some(name) = f.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if let Ok(d) = root.subdir(&comps, None) {
            let _ = d.unlink(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read_capped;
    use tokio::io::AsyncWriteExt;
    use tokio::sync::oneshot;

    /// `len` bytes of a pattern that shows any loss or reordering, written in pieces through a
    /// small pipe (as a program's output comes), read by `read_capped` with `cap`.
    async fn through_pipe(len: usize, cap: usize) -> (Vec<u8>, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let (mut w, r) = tokio::io::duplex(1000);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(777) {
                w.write_all(piece).await.unwrap();
            }
        });
        let (_stop, stopped) = oneshot::channel();
        let got = read_capped(Some(r), cap, stopped).await;
        writer.await.unwrap(); // the writer got rid of everything: nothing blocks it
        assert_eq!(got.dropped, (len - got.kept.len()) as u64);
        (data, got.kept)
    }

    #[tokio::test]
    async fn output_under_the_cap_is_kept_whole_and_in_order() {
        let (data, kept) = through_pipe(300_000, 1 << 20).await;
        assert_eq!(kept, data);
        let (data, kept) = through_pipe(5, 1 << 20).await;
        assert_eq!(kept, data);
    }

    #[tokio::test]
    async fn output_over_the_cap_keeps_its_start_and_is_read_to_its_end() {
        let (data, kept) = through_pipe(200_000, 70_000).await;
        assert_eq!(kept, data[..70_000]);
        let (data, kept) = through_pipe(70_000, 70_000).await;
        assert_eq!(kept, data);
    }

    /// Ours for tokio (non-blocking), the program's as programs expect (blocking).
    #[test]
    fn output_pipe_blocks_only_on_the_programs_side() {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::os::fd::AsRawFd;
        let (r, w) = super::output_pipe().unwrap();
        let flags = |fd: i32| OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap());
        assert!(flags(r.as_raw_fd()).contains(OFlag::O_NONBLOCK));
        assert!(!flags(w.as_raw_fd()).contains(OFlag::O_NONBLOCK));
        let cloexec = |fd: i32| fcntl(fd, FcntlArg::F_GETFD).unwrap() & libc::FD_CLOEXEC != 0;
        assert!(cloexec(r.as_raw_fd()) && cloexec(w.as_raw_fd()));
    }

    #[tokio::test]
    async fn no_stream_no_output() {
        let (_stop, stopped) = oneshot::channel();
        let got = read_capped(None::<&[u8]>, 10, stopped).await;
        assert!(got.kept.is_empty() && got.dropped == 0);
    }

    /// A stream whose writer end stays open (a program's background child holds it) gives
    /// what arrived until the stop, not nothing.
    #[tokio::test]
    async fn stopped_before_the_end_keeps_what_arrived() {
        let (mut w, r) = tokio::io::duplex(1000);
        w.write_all(b"two lines\nof output\n").await.unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(read_capped(Some(r), 1 << 20, stopped));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        let got = task.await.unwrap();
        assert_eq!(got.kept, b"two lines\nof output\n");
        drop(w);
    }
}
