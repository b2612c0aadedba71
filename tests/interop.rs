//! Interop tests: the stock dispy 4.15.2 client (Python) against the node.
//!
//! Each test starts its own node (fresh temp prefix, own ports) and runs one
//! or more client scripts from `tests/clients/`; the scripts do the checking
//! and print `CHECK <name> ok|FAIL ...` lines, and the test asserts that
//! exactly the expected checks ran and passed, that the node is still alive,
//! and whatever can only be seen from outside (files under the prefix, the
//! node's log).  On failure the client's output and the node's log are shown.
//!
//! `DISPYNODE_IMPL=reference cargo test --test interop` runs the same tests
//! against the original Python dispynode; tests for behaviour the reference
//! gets wrong (documented bugs) are skipped there with a message.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{
    run_against, skip_under_reference, token, ClientRun, Impl, Node, NodeOpts, MANY_JOBS_CHECKS,
    RAW_ESCAPE_CHECKS,
};

/// The directory a job reported as its cwd (INFO dest_dir), checked to be a
/// computation directory under the node's prefix.
fn dest_dir_of(node: &Node, run: &ClientRun) -> PathBuf {
    let dir = run
        .info("dest_dir")
        .unwrap_or_else(|| panic!("no INFO dest_dir line\n{}", run.report()));
    let dir = PathBuf::from(dir);
    let prefix = node
        .prefix()
        .canonicalize()
        .expect("canonicalize the prefix");
    node.ensure(
        dir.is_absolute() && dir.starts_with(&prefix),
        &format!(
            "the job's directory {} is not under the node's prefix {}",
            dir.display(),
            prefix.display()
        ),
    );
    let comps = node
        .computations_dir()
        .canonicalize()
        .unwrap_or_else(|_| node.computations_dir());
    node.ensure(
        dir.parent() == Some(comps.as_path()),
        &format!(
            "the job's directory {} is not directly in {} (<files root>/<scheduler IP>)",
            dir.display(),
            comps.display()
        ),
    );
    dir
}

/// After every computation closed with cleanup: nothing left in the
/// scheduler's directory (it may itself be kept or removed).
fn assert_computations_dir_empty(node: &Node) {
    let dir = node.computations_dir();
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    node.ensure(
        left.is_empty(),
        &format!("left in {} after close: {left:?}", dir.display()),
    );
}

fn assert_gone(node: &Node, dir: &Path) {
    let listing: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    node.ensure(
        !dir.exists(),
        &format!(
            "{} still exists after the client closed (contains {listing:?})",
            dir.display()
        ),
    );
}

fn assert_nothing_outside_prefix(node: &Node) {
    let outside = node.entries_outside_prefix();
    node.ensure(
        outside.is_empty(),
        &format!("the node wrote outside its prefix: {outside:?}"),
    );
}

/// Starts a node with the default options, runs `script` against it, and asserts exactly the
/// `expected` CHECKs passed and the node is alive; the node and the run are returned for any
/// further checks.
fn node_after_script(script: &str, args: &[&str], expected: &[&str]) -> (Node, ClientRun) {
    let mut node = Node::start();
    let run = run_against(&node, script, args);
    run.assert_checks(&node, expected);
    node.assert_alive();
    (node, run)
}

#[test]
fn many_function_jobs() {
    let mut node = Node::start();
    let run = run_against(&node, "many_jobs", &["40"]);
    run.assert_checks(&node, &MANY_JOBS_CHECKS);
    dest_dir_of(&node, &run);
    node.assert_alive();
    assert_nothing_outside_prefix(&node);
}

#[test]
fn exception_traceback() {
    node_after_script(
        "exception",
        &[],
        &[
            "replied",
            "ok_job_status",
            "ok_job_result",
            "ok_job_exception",
            "exc_status",
            "exc_result",
            "exc_text",
            "exc_stdout_kept",
            "exc_stderr_kept",
            "exc_nested_status",
            "exc_nested_text",
            "after_exc_replied",
            "after_exc_result",
            "closed",
        ],
    );
}

#[test]
fn job_stdout_stderr() {
    node_after_script(
        "output",
        &[],
        &[
            "replied",
            "statuses",
            "lines_result",
            "lines_stdout",
            "lines_stderr",
            "lines_types",
            "big_stdout",
            "big_stderr",
            "silent_output",
            "closed",
        ],
    );
}

#[test]
fn depends_and_dest_path() {
    let mut node = Node::start();
    let dest = format!("interop_dest_{}", token());
    let run = run_against(&node, "depends", &[&dest]);
    run.assert_checks(
        &node,
        &[
            "replied",
            "replied2",
            "status",
            "class_dep",
            "func_dep",
            "file_dep",
            "subdir_file_dep",
            "job_dep",
            "multi_chunk_dep",
            "file_mode_kept",
            "file_mtime_kept",
            "dest_path_name",
            "job_path_is_cwd",
            "node_globals",
            "listing",
            "files_on_node_disk",
            "job_dep_removed_after_job",
            "second_job_same_dir",
            "closed",
        ],
    );
    let dir = dest_dir_of(&node, &run);
    node.ensure(
        dir.file_name() == Some(dest.as_ref()),
        &format!("dest_path {dest} not used: {}", dir.display()),
    );
    assert_gone(&node, &dir);
    node.assert_alive();
    assert_nothing_outside_prefix(&node);
}

#[test]
fn setup_and_cleanup_functions() {
    let mut node = Node::start();
    let tok = format!("tok{}", token());
    let run = run_against(&node, "setup", &[&tok]);
    run.assert_checks(
        &node,
        &[
            "replied",
            "status",
            "setup_args_global",
            "setup_token_global",
            "setup_file",
            "closed",
        ],
    );
    // cleanup(base, token) ran at close: it logs through dispynode_logger
    // (or stderr), which ends up in the node's log.
    let needle = format!("INTEROP_CLEANUP_RAN {tok} base=10");
    node.ensure(
        node.wait_log_contains(&needle, Duration::from_secs(10)),
        &format!("cleanup function did not run: no '{needle}' in the node's log"),
    );
    let dir = dest_dir_of(&node, &run);
    assert_gone(&node, &dir);
    node.assert_alive();
    assert_nothing_outside_prefix(&node);
}

/// The client's calls on one node: `submit_node`, `node_jobs(from_node=True)` (JOBS),
/// `resetup_node` (CLOSE with close=False: cleanup, then the client's SETUP again) and
/// `close_node(terminate_pending=True)` while a job runs (it ends Terminated); a CLOSE for
/// another node address is refused.
#[test]
fn node_calls_of_the_client() {
    if skip_under_reference(
        "in setup-process mode without psutil the reference cannot terminate the job close_node \
         ends (protocol G17); jobs after its resetup sometimes stay Created",
    ) {
        return;
    }
    let mut node = Node::start();
    let tok = format!("calls{}", token());
    let run = run_against(&node, "node_calls", &[&tok]);
    run.assert_checks(
        &node,
        &[
            "node",
            "submit_node",
            "node_jobs_from_node",
            "running_job",
            "resetup_node",
            "setup_ran_again",
            "close_elsewhere_ignored",
            "close_node",
            "close_node_terminates",
        ],
    );
    // cleanup ran once for resetup_node and once for close_node, not again at the
    // client's close (the computation was gone by then).
    let needle = format!("INTEROP_NODE_CALLS_CLEANUP {tok}");
    let twice = support::wait_until(Duration::from_secs(10), || {
        node.log().matches(&needle).count() >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let count = node.log().matches(&needle).count();
    node.ensure(
        twice && count == 2,
        &format!("cleanup ran {count} times, want 2 (resetup_node, close_node)"),
    );
    node.assert_alive();
    assert_nothing_outside_prefix(&node);
}

#[test]
fn provisional_result_and_send_file_to_running_job() {
    node_after_script(
        "provisional",
        &[],
        &[
            "provisional_status",
            "provisional_result",
            "not_finished_yet",
            "send_file_to_node",
            "final_replied",
            "final_status",
            "final_result",
            "closed",
        ],
    );
}

#[test]
fn send_file_from_job() {
    let mut node = Node::start();
    let run = run_against(&node, "sendfile", &[]);
    run.assert_checks(
        &node,
        &[
            "replied",
            "status",
            "big_send_rc",
            "big_received",
            "exact_chunk_send_rc",
            "exact_chunk_received",
            "subdir_send_rc",
            "subdir_received",
            "closed",
        ],
    );
    for (name, size) in [
        ("big.bin", 2_500_000u64),
        ("exact_chunk.bin", 1_024_000),
        ("outdir/small.bin", 3000),
    ] {
        let len = std::fs::metadata(run.cwd().join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        node.ensure(
            len == size,
            &format!("{name} in the client's cwd has {len} bytes, want {size}"),
        );
    }
    node.assert_alive();
}

#[test]
fn program_computation() {
    let (node, _) = node_after_script(
        "program",
        &[],
        &[
            "replied",
            "status",
            "exit_code_3",
            "stdout_3",
            "stderr_3",
            "exception_3",
            "exit_code_0",
            "stdout_0",
            "closed",
        ],
    );
    assert_nothing_outside_prefix(&node);
    if node.implementation() == Impl::Ours {
        // The jobs were started by the node's spawner (one, kept for later jobs), not by the
        // jail helper's fallback.
        let spawners = children_with_arg(node.pid(), "__spawner");
        assert_eq!(
            spawners.len(),
            1,
            "spawner processes of the node: {spawners:?}"
        );
    }
}

/// A program job's output when a process that left the job's group holds the script's
/// stdout (what arrived is kept: it used to come back empty), and when a stream is over the
/// node's 64 MiB per stream (the client is told in stderr what was dropped).
#[test]
fn program_output_held_open_or_over_the_limit() {
    if skip_under_reference("the reference keeps a program's whole output, and waits for it") {
        return;
    }
    // `sleep 37.<digits>`: a process name no other test's has.
    let mark = format!("37.{}", u32::from_str_radix(&token(), 16).unwrap_or(1));
    let (mut node, _) = node_after_script(
        "program_output",
        &[&mark],
        &["held_output", "big_kept", "big_noted", "closed"],
    );
    let log = node.log();
    node.ensure(
        log.contains("program output over the per-stream limit"),
        "the node did not log the dropped output",
    );
    node.assert_alive();
}

/// What a function job leaves running (a Popen'd `sleep`, a fork of itself) ends with the
/// job, as a program job's process group does; with cgroups the job's cgroup goes too.
#[test]
fn function_job_leftovers_end_with_the_job() {
    if skip_under_reference("the reference leaves a job's children running") {
        return;
    }
    let mark = format!("41.{}", u32::from_str_radix(&token(), 16).unwrap_or(1));
    node_after_script(
        "job_leftovers",
        &[&mark],
        &["job", "leftovers_gone", "closed"],
    );
}

/// Children of `parent` with `arg` on their command line.
fn children_with_arg(parent: u32, arg: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(parent) && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

const CANCEL_CHECKS: [&str; 11] = [
    "jobs_running",
    "job_pids_alive",
    "cancel_rc",
    "cancel_replied",
    "cancel_status",
    "cancel_result",
    "job_processes_gone",
    "slots_freed",
    "after_cancel_results",
    "closed",
    // only with --grandchild
    "grandchildren_gone",
];

#[test]
fn cancel_running_job() {
    node_after_script("cancel", &[], &CANCEL_CHECKS[..10]);
}

#[test]
fn cancel_running_job_with_setup() {
    if skip_under_reference(
        "in setup-process mode without psutil the reference never replies to a cancel (protocol G17)",
    ) {
        return;
    }
    node_after_script("cancel", &["--setup"], &CANCEL_CHECKS[..10]);
}

#[test]
fn cancel_kills_grandchildren() {
    if skip_under_reference(
        "the reference signals only the job's direct child; its children survive (protocol §3.4)",
    ) {
        return;
    }
    node_after_script("cancel", &["--grandchild"], &CANCEL_CHECKS);
}

#[test]
fn two_clients_one_after_the_other() {
    let mut node = Node::start();
    let first = run_against(&node, "many_jobs", &["6", "first"]);
    first.assert_checks(&node, &MANY_JOBS_CHECKS);
    dest_dir_of(&node, &first);
    node.assert_alive();
    let second = run_against(&node, "many_jobs", &["6", "second"]);
    second.assert_checks(&node, &MANY_JOBS_CHECKS);
    dest_dir_of(&node, &second);
    node.assert_alive();
}

const FILES_CHECKS: [&str; 6] = [
    "replied",
    "status",
    "same_dir",
    "data",
    "files_before_close",
    "closed",
];

#[test]
fn files_removed_after_close() {
    let mut node = Node::start();
    // a computation without dest_path (a per-computation temp dir) ...
    let run = run_against(&node, "files", &["-", "clean"]);
    run.assert_checks(&node, &FILES_CHECKS);
    let dir = dest_dir_of(&node, &run);
    assert_gone(&node, &dir);
    // ... and one with a dest_path
    let dest = format!("interop_clean_{}", token());
    let run = run_against(&node, "files", &[&dest, "clean"]);
    run.assert_checks(&node, &FILES_CHECKS);
    let dir = dest_dir_of(&node, &run);
    node.ensure(
        dir.file_name() == Some(dest.as_ref()),
        &format!("dest_path {dest} not used: {}", dir.display()),
    );
    assert_gone(&node, &dir);
    assert_computations_dir_empty(&node);
    node.assert_alive();
    assert_nothing_outside_prefix(&node);
}

#[test]
fn files_kept_with_cleanup_false() {
    let mut node = Node::start();
    let run = run_against(&node, "files", &["-", "keep"]);
    run.assert_checks(&node, &FILES_CHECKS);
    let dir = dest_dir_of(&node, &run);
    let mut listing: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    listing.sort();
    node.ensure(
        listing == ["data.txt", "job_output_1.txt", "job_output_2.txt"],
        &format!(
            "with cleanup=False {} should keep its files, has {listing:?}",
            dir.display()
        ),
    );
    node.assert_alive();
}

fn node_with_secret(secret: &str) -> Node {
    Node::start_with(NodeOpts {
        secret: Some(secret.into()),
        ..NodeOpts::default()
    })
}

/// A client with the right `secret` gets its job done, and the node lives on.
fn secret_client_ok(node: &mut Node, secret: &str) {
    let run = run_against(node, "secret", &[secret, "ok"]);
    run.assert_checks(node, &["replied", "result", "closed"]);
    node.assert_alive();
}

#[test]
fn secret_matching() {
    let mut node = node_with_secret("s3cret");
    secret_client_ok(&mut node, "s3cret");
}

#[test]
fn secret_mismatch_gets_no_node() {
    let mut node = node_with_secret("s3cret");
    let run = run_against(&node, "secret", &["not-the-secret", "refused"]);
    run.assert_checks(&node, &["no_reply", "not_run", "no_node"]);
    node.assert_alive();
    // the node is unaffected: a client with the right secret still works
    secret_client_ok(&mut node, "s3cret");
}

#[test]
fn max_file_size_limits_transfers() {
    let mut node = Node::start_with(NodeOpts {
        max_file_size: Some("10k".into()),
        ..NodeOpts::default()
    });
    let run = run_against(&node, "max_file_size", &["too_big"]);
    run.assert_checks(&node, &["no_reply", "not_run"]);
    node.assert_alive();
    let run = run_against(&node, "max_file_size", &["send_back"]);
    run.assert_checks(
        &node,
        &[
            "replied",
            "status",
            "big_refused",
            "small_sent",
            "client_files",
            "closed",
        ],
    );
    node.assert_alive();
}

#[test]
fn path_escapes_refused() {
    if skip_under_reference(
        "the reference never sanitises dest_path / xf.dest_path / xf.name (protocol G18)",
    ) {
        return;
    }
    let mut node = node_with_secret("esc-secret");
    let base = node.base().to_string_lossy().into_owned();
    let run = run_against(&node, "raw_escape", &["esc-secret", &base]);
    run.assert_checks(&node, &RAW_ESCAPE_CHECKS);
    node.assert_alive();
    assert_nothing_outside_prefix(&node);
    let escaped = node.find_named("escape_");
    node.ensure(
        escaped.is_empty(),
        &format!("files from refused requests exist: {escaped:?}"),
    );
}

#[test]
fn junk_traffic_does_not_break_the_node() {
    let mut node = node_with_secret("junk-secret");
    let base = node.base().to_string_lossy().into_owned();
    let strict = node.implementation() == Impl::Ours;
    let mut args = vec!["junk-secret", base.as_str()];
    let mut expected = vec![
        "pong_before",
        "wrong_auth_no_reply",
        "bad_compute_pickle_refused",
        "bad_job_refused",
        "setup_unknown_compute_refused",
        "xfer_unknown_compute_refused",
        "pong_after",
        "pong_after_auth",
    ];
    if strict {
        args.push("--strict");
        expected.extend([
            "udp_pong_after",
            "udp_pickle_not_executed",
            "tcp_pickle_not_executed",
        ]);
    } else {
        eprintln!(
            "reference node: not checking UDP discovery after junk nor pickle execution \
             (the reference unpickles unauthenticated UDP datagrams and its UDP task dies on a bad PING)"
        );
    }
    let run = run_against(&node, "junk", &args);
    run.assert_checks(&node, &expected);
    node.assert_alive();
    // and a real client still gets its jobs done
    secret_client_ok(&mut node, "junk-secret");
}

#[test]
fn node_exits_on_sigterm() {
    let mut node = Node::start();
    let run = run_against(&node, "many_jobs", &["4"]);
    run.assert_checks(&node, &MANY_JOBS_CHECKS);
    dest_dir_of(&node, &run);
    node.assert_alive();
    match node.terminate(Duration::from_secs(10)) {
        Ok(_) => {}
        Err(e) if node.implementation() == Impl::Reference => {
            // Observed in about 1 run in 5: the reference logs "received
            // signal 15", then its main thread stays in time.sleep() and the
            // shutdown task it scheduled from the signal handler does not
            // complete.  A reference bug, not a behaviour to require.
            eprintln!("reference node: {e} (known reference bug); not checking further");
            return;
        }
        Err(e) => node.ensure(false, &e),
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.port()));
    node.ensure(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the node's port still accepts connections after it exited",
    );
}
