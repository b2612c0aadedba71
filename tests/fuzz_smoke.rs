//! The fuzz targets' oracles (`fuzz/src/lib.rs`) over the committed seeds (`fuzz/seeds/`), in
//! the normal test suite: no nightly, no libFuzzer, a second or so.
//!
//! * every seed of every target goes through its oracle (a reproducer saved in
//!   `fuzz/seeds/<target>/` is a regression test from then on);
//! * seeds named `dispy-*` are exactly what the dispy 4.15.2 client sends (written by
//!   `fuzz/seeds/make_seeds.py` with dispy's own classes) and must decode into their message.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

use dispynode::protocol::message::{Compute, ComputeRequest, Job, JobReply, Ping, XferFile};
use dispynode::protocol::pickle::{self, Value};

type Oracle = fn(&[u8]);

const TARGETS: [(&str, Oracle); 11] = [
    ("pickle_decode", checks::pickle_decode),
    ("frame", checks::frame),
    ("request", checks::request),
    ("compute", checks::compute),
    ("xfer_file", checks::xfer_file),
    ("job", checks::job),
    ("compute_request", checks::compute_request),
    ("ping", checks::ping),
    ("job_reply", checks::job_reply),
    ("store_path", checks::store_path),
    ("config_toml", checks::config_toml),
];

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("seeds")
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = seeds_dir().join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("dir entry");
            let data = std::fs::read(e.path()).expect("read seed");
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    out.sort();
    out
}

/// Runs every seed of `target` through its oracle, reporting all failures at once.
fn run_seeds(target: &str, oracle: Oracle) {
    let mut failures = Vec::new();
    let all = seeds(target);
    assert!(!all.is_empty(), "no seeds for {target}");
    let total = all.len();
    for (name, data) in all {
        if let Err(e) = std::panic::catch_unwind(|| oracle(&data)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let msg: String = msg.chars().take(400).collect();
            failures.push(format!("{target}/{name}: {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} seeds fail the {target} fuzz oracle:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

macro_rules! seed_tests {
    ($($target:ident),* $(,)?) => {
        /// One test per fuzz target: its committed seeds through its oracle.
        mod seeds {
            $(
                #[test]
                fn $target() {
                    super::run_seeds(stringify!($target), super::checks::$target);
                }
            )*
        }
    };
}

seed_tests!(
    pickle_decode,
    frame,
    request,
    compute,
    xfer_file,
    job,
    compute_request,
    ping,
    job_reply,
    store_path,
    config_toml,
);

fn decode(target: &str, name: &str, data: &[u8]) -> Value {
    pickle::decode(data).unwrap_or_else(|e| panic!("{target}/{name} does not decode: {e}"))
}

/// What the real client sends decodes into the message the node expects.
#[test]
fn dispy_seeds_decode_into_their_messages() {
    let mut checked = 0;
    for (target, _) in TARGETS {
        for (name, data) in seeds(target) {
            if !name.starts_with("dispy-") {
                continue;
            }
            let v = decode(target, &name, &data);
            let ok = match target {
                "compute" => Compute::from_value(&v).map(drop).map_err(|e| e.to_string()),
                "xfer_file" => XferFile::from_value(&v)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                "job" => Job::from_value(&v).map(drop).map_err(|e| e.to_string()),
                "compute_request" => ComputeRequest::from_value(&v)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                "ping" => Ping::from_value(&v).map(drop).map_err(|e| e.to_string()),
                "job_reply" => JobReply::from_value(&v)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                other => panic!("dispy- seed in {other}"),
            };
            if let Err(e) = ok {
                panic!("{target}/{name}: a real dispy message is refused: {e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} dispy- seeds");
}

/// Spot checks that the seeds are what make_seeds.py says they are.
#[test]
fn seed_contents() {
    let s: Vec<_> = seeds("compute")
        .into_iter()
        .filter(|(n, _)| n == "dispy-func-depends")
        .collect();
    let v = decode("compute", "dispy-func-depends", &s[0].1);
    let c = Compute::from_value(&v).expect("compute");
    assert_eq!(c.dest_path.as_deref(), Some("mydest"));
    assert_eq!(c.xfer_files.len(), 2);
    assert_eq!(c.xfer_files[0].base_name(), "subdata.txt");
    assert_eq!(c.xfer_files[0].size, 8);

    let s: Vec<_> = seeds("ping")
        .into_iter()
        .filter(|(n, _)| n == "dispy-relay")
        .collect();
    let p = Ping::from_value(&decode("ping", "dispy-relay", &s[0].1)).expect("ping");
    assert!(p.relay && p.sign.is_none());

    let s: Vec<_> = seeds("job")
        .into_iter()
        .filter(|(n, _)| n == "dispy-program")
        .collect();
    let j = Job::from_value(&decode("job", "dispy-program", &s[0].1)).expect("job");
    assert_eq!(
        dispynode::protocol::message::program_args(&j.args).expect("program args"),
        vec!["-c", "echo hi", "a b"]
    );
}
