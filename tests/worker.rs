//! Runs the Python worker's own unit tests (tests/python/test_worker.py) as part of
//! `cargo test`, with the same interpreter the node uses by default.

use std::process::Command;

#[test]
fn python_worker_unit_tests() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v", "tests/python/test_worker.py"])
        .current_dir(root)
        .output()
        .expect("python3 must be installed to run the worker tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "worker tests failed:\n{text}");
    assert!(
        text.contains("\nOK"),
        "worker tests did not report OK:\n{text}"
    );
    // The suite must really have run (a filter mistake would run nothing and say OK).
    let ran: usize = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0);
    assert!(
        ran >= 30,
        "expected the worker suite to run at least 30 tests, ran {ran}:\n{text}"
    );
}
