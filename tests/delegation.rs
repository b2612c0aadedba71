//! Per-job cgroups with the real client, on this host: a stand-in for systemd's
//! `Delegate=yes`. The node runs in a mount namespace of its own whose `/sys/fs/cgroup` is the
//! host's cgroup2 mount (here a hybrid host's `/sys/fs/cgroup/unified`), in a fresh cgroup below
//! its root, which it takes as delegated. This host has no controller in cgroup2, so no limit
//! applies (the limits are tested in the systemd VM: `tests/vm/sandbox-limits.sh`), but every
//! step of a job's cgroup is real: the spare moved into a job cgroup before its job comes (or,
//! when jobs come faster, the child held until it is moved), a program job's birth in its
//! cgroup, the kill, the removal.
//!
//! Needs root, `unshare` and a cgroup2 mount; skipped with a message otherwise, and under
//! `DISPYNODE_IMPL=reference` (no cgroups there).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{run_against, skip_under_reference, wait_until, Node, NodeOpts};

/// Moves the shell into a new cgroup below the cgroup2 mount, makes that mount the
/// namespace's `/sys/fs/cgroup`, and execs the node (argv after the script).
const WRAP: &str = r#"set -e
v2=$(findmnt -n -t cgroup2 -o TARGET | head -1)
[ "$v2" = /sys/fs/cgroup ] || mount --bind "$v2" /sys/fs/cgroup
mkdir /sys/fs/cgroup/dispynode-test-$$
echo $$ > /sys/fs/cgroup/dispynode-test-$$/cgroup.procs
exec "$@""#;

/// The host's cgroup2 mount point, if it has one and we may use it.
fn cgroup2_mount() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: per-job cgroups on the host need root (the VM tests cover them)");
        return None;
    }
    let out = Command::new("findmnt")
        .args(["-n", "-t", "cgroup2", "-o", "TARGET"])
        .output()
        .ok()?;
    let mount = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(PathBuf::from);
    if mount.is_none() || Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("SKIP: no cgroup2 mount or no unshare(1) on this host");
        return None;
    }
    mount
}

/// Removes the test's cgroup tree (children first) when dropped: declared before the node, so
/// that it goes after the node's processes.
struct RemoveTree(Option<PathBuf>);

impl Drop for RemoveTree {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = Command::new("find")
                .arg(dir)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                .status();
        }
    }
}

#[test]
fn jobs_run_in_cgroups_of_their_own() {
    if skip_under_reference("the reference node has no cgroups") {
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        return;
    };
    let mut cleanup = RemoveTree(None);
    let wrap = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "bash",
        "-c",
        WRAP,
        "bash",
    ];
    let mut node = Node::start_with(NodeOpts {
        wrap: wrap.iter().map(|s| s.to_string()).collect(),
        ..NodeOpts::default()
    });
    let delegated = mount.join(format!("dispynode-test-{}", node.pid()));
    cleanup.0 = Some(delegated.clone());
    node.ensure(
        node.log().contains("cgroup v2 delegated"),
        "the node took its cgroup as delegated",
    );
    let run = run_against(&node, "cgroups", &["30", "5"]);
    run.assert_checks(
        &node,
        &[
            "all_replied",
            "all_finished",
            "distinct_cgroups",
            "one_computation",
            "one_at_a_time_placed_ahead",
            "closed",
        ],
    );
    // Program jobs: started by the spawner directly in their cgroup (clone3 with
    // CLONE_INTO_CGROUP), one each.
    let run = run_against(&node, "cgroups_program", &["20", "3"]);
    run.assert_checks(
        &node,
        &[
            "all_replied",
            "all_exited_0",
            "distinct_cgroups",
            "one_computation",
            "job_leaves",
            "closed",
        ],
    );
    node.ensure(
        !node.log().contains("CLONE_INTO_CGROUP) unavailable"),
        "the spawner starts program jobs in their cgroup (this kernel has clone3 into a cgroup)",
    );
    // A quick job may end before the daemon reads that it started: not a process of someone
    // else's, nor a failed move.
    let log = node.log();
    for spurious in ["not its own", "could not move"] {
        node.ensure(
            !log.contains(spurious),
            &format!("no warning {spurious:?} in the node's log"),
        );
    }
    // After the closes, nothing is left of the computation's cgroups (they go once their
    // processes have exited).
    let jobs = delegated.join("jobs");
    let left = || {
        std::fs::read_dir(&jobs)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let gone = wait_until(Duration::from_secs(10), || left().is_empty());
    node.ensure(
        gone,
        &format!("no job cgroup left in {}: {:?}", jobs.display(), left()),
    );
    node.assert_alive();
    node.terminate(Duration::from_secs(10))
        .expect("the node stops on SIGTERM");
}
