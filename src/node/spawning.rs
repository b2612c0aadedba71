//! How the node starts job processes: always through the jail helper (our own binary in its
//! `__jail` mode), with the computation's landlock policy and, where cgroup v2 is delegated,
//! a cgroup of their own.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::Command;

use super::Node;
use crate::sandbox::cgroup::ComputationCgroup;
use crate::sandbox::{
    jail_command, CgroupError, JailSpec, JobCgroup, LandlockPolicy, Limits, Spawner,
};

/// `PATH` of jobs; program jobs get their computation directory in front of it.
const JOB_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

impl Node {
    /// Per-job limits from the configuration (`job_memory_max`, `job_pids_max`, `job_cpu_max`).
    pub(crate) fn job_limits(&self) -> Limits {
        Limits {
            memory_max: self.live().job_memory_max,
            pids_max: self.live().job_pids_max,
            cpu_max_percent: self.live().job_cpu_max,
        }
    }

    /// A command that runs `program args` jailed for the computation in `dir`.
    pub(crate) fn jailed(
        &self,
        dir: &Path,
        cgroup: Option<PathBuf>,
        extra_env: Vec<(String, String)>,
        path_first: Option<&Path>,
        program: &str,
        args: &[&OsStr],
    ) -> Command {
        jailed_command(
            &self.job_spec(dir, cgroup, extra_env, path_first),
            program,
            args,
        )
    }

    /// The jail of a job of the computation in `dir`: its environment, cgroup or rlimits, and
    /// landlock policy.
    pub(crate) fn job_spec(
        &self,
        dir: &Path,
        cgroup: Option<PathBuf>,
        extra_env: Vec<(String, String)>,
        path_first: Option<&Path>,
    ) -> JailSpec {
        // TMPDIR of the jobs: a private directory inside the only place they may write.
        let tmp = dir.join(".tmp");
        let _ = std::fs::create_dir(&tmp);
        let mut spec = JailSpec::new(dir);
        let path = match path_first {
            Some(p) => format!("{}:{JOB_PATH}", p.display()),
            None => JOB_PATH.to_owned(),
        };
        spec.env = JailSpec::standard_env(dir, &path);
        spec.env.extend(extra_env);
        // Without a cgroup of its own, rlimits are the fallback for the configured limits
        // (coarser: RLIMIT_NPROC counts every process of the uid, RLIMIT_AS address space).
        if cgroup.is_none() {
            spec.rlimits.nproc = self.live().job_pids_max;
            spec.rlimits.address_space = self.live().job_memory_max;
        }
        spec.cgroup = cgroup;
        spec.landlock = Some(LandlockPolicy::for_computation(
            dir,
            self.python.prefixes.iter().cloned(),
            self.sandbox.deny.iter().cloned(),
            false,
        ));
        spec
    }

    /// The node's spawner, started if there is none (or the last one died); None if it
    /// cannot be started (program jobs then go through the jail helper).
    pub(crate) async fn spawner(&self) -> Option<Arc<Spawner>> {
        let mut slot = self.spawner.lock().await;
        if let Some(sp) = slot.as_ref().filter(|sp| !sp.is_gone()) {
            return Some(sp.clone());
        }
        match Spawner::start(Path::new("/proc/self/exe")) {
            Ok(sp) => {
                *slot = Some(sp.clone());
                Some(sp)
            }
            Err(e) => {
                tracing::warn!(error = %e, "program jobs go through the jail helper");
                *slot = None;
                None
            }
        }
    }

    /// The cgroup of a new computation, when cgroup v2 is delegated to us.
    pub(crate) fn computation_cgroup(&self, name: &str) -> Option<ComputationCgroup> {
        let tree = self.sandbox.cgroups.as_ref()?;
        match tree.create_computation(name) {
            Ok(cg) => Some(cg),
            Err(e) => {
                tracing::warn!(error = %e, "could not create a computation cgroup; using process groups");
                None
            }
        }
    }

    /// A leaf cgroup for one process of a computation (`worker`, or a program job).
    pub(crate) fn leaf_cgroup(
        &self,
        comp: Option<&ComputationCgroup>,
        leaf: &str,
    ) -> Option<JobCgroup> {
        let made: Result<JobCgroup, CgroupError> = comp?.create_job(leaf, &self.job_limits());
        match made {
            Ok(cg) => Some(cg),
            Err(e) => {
                tracing::warn!(error = %e, "could not create a job cgroup; using the process group");
                None
            }
        }
    }
}

/// The jail helper's command for `spec`: our binary re-exec'd, stdin /dev/null, stdout and
/// stderr piped, killed if dropped.
pub(crate) fn jailed_command<S: AsRef<OsStr>>(
    spec: &JailSpec,
    program: &str,
    args: &[S],
) -> Command {
    let mut cmd = Command::from(jail_command(spec, program, args));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Kills and removes a computation's cgroup (all its leaves are gone or killed with it).
pub(crate) async fn retire_computation_cgroup(cg: ComputationCgroup) {
    let _ = tokio::task::spawn_blocking(move || {
        let _ = cg.kill();
        if let Err(e) = cg.remove() {
            tracing::warn!(error = %e, "could not remove a computation cgroup");
        }
    })
    .await;
}

/// Ends a job's cgroup: reads why the kernel stopped the job, if a limit did, and kills what
/// is left in it (single reads and a write of cgroupfs files, with `cgroup.kill`); the
/// directory is removed afterwards, off the async thread and without anyone waiting for it.
/// The job's reply must not wait for that: `rmdir` fails with EBUSY until the job's processes
/// have finished exiting, and each retry sleeps (5 ms at first), which used to delay every
/// reply under delegation.
pub(crate) fn retire_cgroup(cg: JobCgroup) -> Option<&'static str> {
    let reason = cg.events().reason();
    let killed = cg.kill_at_once();
    tokio::task::spawn_blocking(move || {
        // Without cgroup.kill (or if writing it failed), process by process: that may sleep,
        // so not on the async thread.
        let killed = match killed {
            Ok(true) => Ok(()),
            _ => cg.kill(),
        };
        if let Err(e) = killed {
            tracing::warn!(error = %e, "could not kill a job cgroup");
        }
        if let Err(e) = cg.remove() {
            tracing::warn!(error = %e, "could not remove a job cgroup");
        }
    });
    reason
}
