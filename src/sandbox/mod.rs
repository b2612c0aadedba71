//! Everything that isolates a job from the node and from other jobs.
//!
//! * [`spawn`]: the spawn path. The daemon is multi-threaded, so it never applies isolation in a
//!   `pre_exec` hook: it re-executes its own binary as `dispynode __jail <spec> -- <program>
//!   <args…>`; that single-threaded helper ([`jail_main`]) applies the steps below in order,
//!   then `exec`s the job.
//! * [`spawner`]: the same steps for program jobs without the helper's own `exec`: a
//!   single-threaded `dispynode __spawner`, started once, forks a child per job that applies
//!   them and `exec`s the program.
//! * [`cgroup`]: cgroup v2 in the subtree systemd delegated to us (`supervisor/` self-move,
//!   per-job groups with `memory.max`, `pids.max`, `cpu.max`, `cgroup.kill`). The root is a
//!   parameter so the logic is tested on a temp dir.
//! * [`landlock`]: the file-system ruleset (read and execute the system, read and write only the
//!   computation's directory) and signal / abstract-socket scoping.
//! * [`privilege`]: the daemon's own privilege drop (user, groups, every capability) and the
//!   identity switch the helper performs when it runs as root.
//!
//! Syscalls stay in this thin layer; every `unsafe` block carries a `// SAFETY:` comment.

pub mod cgroup;
pub mod landlock;
pub mod privilege;
pub mod spawn;
pub mod spawner;
mod vfork;

pub use self::cgroup::{CgroupError, CgroupEvents, CgroupTree, JobCgroup, Limits, Unavailable};
pub use self::landlock::{probe, LandlockPolicy, LandlockReport};
pub use self::privilege::{drop_daemon_privileges, Dropped, PrivilegeError, ProcStatus};
pub use self::spawn::{
    describe_exit_code, jail_command, jail_main, JailError, JailSpec, Rlimits, JAIL_ARG,
};
pub use self::spawner::{spawner_main, Spawned, Spawner, SpawnerError, SPAWNER_ARG};
