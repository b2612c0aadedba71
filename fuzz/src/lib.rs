//! The fuzz targets' oracles, one public function per target.
//!
//! Each function takes arbitrary bytes, feeds them to one of dispynode's parsers the way the
//! daemon does, and panics when an invariant breaks. A panic, an abort, a timeout or running
//! out of memory is a finding. The same file is compiled into `tests/fuzz_smoke.rs`, which runs
//! every committed seed (`fuzz/seeds/<target>/`) through these functions in `cargo test`, so a
//! reproducer saved there stays a regression test.
//!
//! Only `std` and `dispynode` may be used here (the smoke test has no other dependencies).

use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use dispynode::config::{self, Command};
use dispynode::limits::{self, MAX_REQUEST, MAX_UNAUTH_REQUEST};
use dispynode::net;
use dispynode::protocol::auth;
use dispynode::protocol::frame::{self, FrameError, AUTH_LEN, HEADER_LEN};
use dispynode::protocol::message::{
    self, Compute, ComputeKind, ComputeRequest, Job, JobReply, Ping, XferFile,
};
use dispynode::protocol::pickle::{self, Limits, Value, PAYLOAD_EXPANSION};
use dispynode::store::{self, Dir};

/// The node sign the `request` target authenticates against (from dispy-protocol.md §1.3); with
/// the empty secret its auth code is `ce6483473731ce76075c52bc458f09e757cb3ccb`, which is what
/// `fuzz/seeds/make_seeds.py` puts in front of the `request` seeds.
pub const REQUEST_SIGN: &str = "ebc0978aa007a6ea136a1bd14ea5ab697dcc1da2";

/// Oracles named in `DISPYNODE_FUZZ_SKIP` (comma-separated) are not checked, so that a
/// campaign can look past a known, still open finding (see fuzz/README.md). Only `expansion`
/// is skippable.
fn skipped(oracle: &str) -> bool {
    static SKIP: OnceLock<Vec<String>> = OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("DISPYNODE_FUZZ_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect()
    })
    .iter()
    .any(|s| s == oracle)
}

// ---------------------------------------------------------------------------------------------
// Pickle codec
// ---------------------------------------------------------------------------------------------

/// Constant allowance of the expansion oracle on top of `PAYLOAD_EXPANSION` times the input.
pub const EXPANSION_SLACK: u64 = 1 << 20;

/// Size, depth and string/bytes volume of a decoded tree.
#[derive(Default, Debug)]
struct TreeStats {
    nodes: u64,
    depth: usize,
    payload: u64,
    widest: usize,
}

fn stats(v: &Value) -> TreeStats {
    let mut s = TreeStats::default();
    walk(v, 1, &mut s);
    s
}

fn walk(v: &Value, depth: usize, s: &mut TreeStats) {
    s.nodes += 1;
    s.depth = s.depth.max(depth);
    let d = depth + 1;
    match v {
        Value::Str(x) => s.payload += x.len() as u64,
        Value::Bytes(b) | Value::ByteArray(b) | Value::PickleBuffer(b) | Value::BigInt(b) => {
            s.payload += b.len() as u64
        }
        Value::Global { module, name } => s.payload += (module.len() + name.len()) as u64,
        Value::List(items) | Value::Tuple(items) | Value::Set(items) | Value::FrozenSet(items) => {
            s.widest = s.widest.max(items.len());
            items.iter().for_each(|i| walk(i, d, s));
        }
        Value::Dict(entries) => {
            s.widest = s.widest.max(entries.len());
            for (k, x) in entries {
                walk(k, d, s);
                walk(x, d, s);
            }
        }
        Value::Reduce { callable, args } => {
            walk(callable, d, s);
            walk(args, d, s);
        }
        Value::Object {
            class,
            args,
            kwargs,
            state,
        } => {
            walk(class, d, s);
            s.widest = s.widest.max(args.len()).max(kwargs.len());
            args.iter().for_each(|i| walk(i, d, s));
            for (k, x) in kwargs {
                walk(k, d, s);
                walk(x, d, s);
            }
            if let Some(st) = state {
                walk(st, d, s);
            }
        }
        Value::Build { obj, state } => {
            walk(obj, d, s);
            walk(state, d, s);
        }
        Value::PersistentId(inner) => walk(inner, d, s),
        Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::Extension(_) => {}
    }
}

/// What a successful decode under `limits` may hand to the node.
///
/// The Value tree spells some decoder nodes as two (items added to an instance become a
/// `Build` holding a `List`), so depth and node count get a factor of 2 of slack; these checks
/// catch limits that are bypassed, not off-by-ones.
fn check_tree(v: &Value, input_len: usize, limits: &Limits) {
    let s = stats(v);
    assert!(
        s.depth <= 2 * limits.max_depth + 2,
        "decoded tree is {} deep, limit {}",
        s.depth,
        limits.max_depth
    );
    assert!(
        s.nodes <= 2 * limits.max_nodes as u64 + 2,
        "decoded tree has {} values, limit {}",
        s.nodes,
        limits.max_nodes
    );
    assert!(
        s.widest <= limits.max_container_len,
        "a container of {} items, limit {}",
        s.widest,
        limits.max_container_len
    );
    if skipped("expansion") {
        return;
    }
    // The expansion bound of `pickle::PAYLOAD_EXPANSION`: "without memo sharing the tree holds
    // at most ~3x the input ... so 4 leaves room for modest sharing while still stopping a
    // large memoized bytes referenced thousands of times". A peer must not be able to make
    // the node materialize much more string/bytes data than it sent: at most
    // PAYLOAD_EXPANSION times the input, plus EXPANSION_SLACK for small inputs.
    let allowed = (PAYLOAD_EXPANSION as u64)
        .saturating_mul(input_len as u64)
        .saturating_add(EXPANSION_SLACK);
    assert!(
        s.payload <= allowed,
        "a {input_len}-byte pickle decoded into {} bytes of string/bytes data \
         (more than PAYLOAD_EXPANSION = {PAYLOAD_EXPANSION} times its size + {EXPANSION_SLACK})",
        s.payload
    );
}

/// Limits loose enough that re-decoding our own encoding of a tree that passed `limits`
/// never trips them (the encoder writes no memo, so shared values appear expanded).
fn relaxed(limits: &Limits) -> Limits {
    Limits {
        max_input: usize::MAX / 8,
        max_depth: 4 * limits.max_depth + 8,
        max_memo: limits.max_memo,
        max_nodes: 4 * limits.max_nodes + 64,
        max_container_len: limits.max_container_len,
    }
}

/// encode(v) must decode again, and one decode/encode round later the bytes must be stable:
/// `encode(decode(encode(v))) == encode(v)`. (Comparing bytes rather than values keeps NaN
/// and the Object/Build spellings of the same pickle out of the way.)
fn check_round_trip(v: &Value, limits: &Limits) {
    let once = pickle::encode(v);
    let again = match pickle::decode_with(&once, &relaxed(limits)) {
        Ok(x) => x,
        Err(e) => panic!("our own encoding of a decoded value does not decode: {e}"),
    };
    let twice = pickle::encode(&again);
    assert!(
        once == twice,
        "encode/decode is not stable:\n first  {once:02x?}\n second {twice:02x?}"
    );
}

/// Target `pickle_decode`: any bytes through the decoder, under the unauthenticated (PING)
/// limits and the defaults used for authenticated envelopes.
pub fn pickle_decode(data: &[u8]) {
    let ping = limits::ping_limits();
    if let Ok(v) = pickle::decode_with(data, &ping) {
        check_tree(&v, data.len(), &ping);
        check_round_trip(&v, &ping);
        // Whatever the tight limits accept, the defaults accept too, with the same result.
        match pickle::decode(data) {
            Ok(w) => assert!(
                pickle::encode(&v) == pickle::encode(&w),
                "ping limits and default limits decode differently"
            ),
            Err(e) => panic!("accepted under the PING limits but not the defaults: {e}"),
        }
    }
    let defaults = Limits::default();
    if let Ok(v) = pickle::decode(data) {
        check_tree(&v, data.len(), &defaults);
        check_round_trip(&v, &defaults);
    }
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

fn check_split(buf: &[u8], limit: u64) -> Option<(&[u8], &[u8])> {
    match frame::split(buf, limit) {
        Ok((payload, rest)) => {
            let announced = u32::from_be_bytes(buf[..HEADER_LEN].try_into().unwrap());
            assert_eq!(payload.len() as u64, u64::from(announced));
            assert!(payload.len() as u64 <= limit);
            assert_eq!(HEADER_LEN + payload.len() + rest.len(), buf.len());
            assert_eq!(
                frame::encode(payload).unwrap(),
                &buf[..HEADER_LEN + payload.len()]
            );
            Some((payload, rest))
        }
        Err(FrameError::TooLarge { len, limit: l }) => {
            assert_eq!(l, limit);
            assert!(len > limit);
            assert!(buf.len() >= HEADER_LEN);
            None
        }
        Err(FrameError::Truncated { need, have }) => {
            assert!(have < need, "truncated but need {need} <= have {have}");
            None
        }
    }
}

fn check_split_tag(payload: &[u8]) -> (&[u8], &[u8]) {
    let (tag, body) = frame::split_tag(payload);
    assert!(payload.starts_with(tag));
    if tag.len() == payload.len() {
        assert!(body.is_empty());
    } else {
        assert!(tag.len() < 32, "tag of {} bytes", tag.len());
        assert!(!tag.contains(&b':'));
        assert_eq!(payload[tag.len()], b':');
        assert_eq!(body, &payload[tag.len() + 1..]);
    }
    (tag, body)
}

/// Target `frame`: a stream of frames split one after the other under the node's limits and
/// under a limit taken from the input, with the tag of each payload.
pub fn frame(data: &[u8]) {
    let small = data.first().map_or(0, |&b| u64::from(b) * 16);
    for limit in [MAX_UNAUTH_REQUEST, MAX_REQUEST, small] {
        let mut buf = data;
        let mut frames = 0;
        while let Some((payload, rest)) = check_split(buf, limit) {
            check_split_tag(payload);
            frames += 1;
            // Every frame consumes its header at least.
            assert!(rest.len() + HEADER_LEN <= buf.len());
            buf = rest;
        }
        assert!(frames <= data.len() / HEADER_LEN);
    }
    // The header helpers agree with each other.
    if let Some(head) = data.get(..HEADER_LEN) {
        let head: [u8; HEADER_LEN] = head.try_into().unwrap();
        if let Ok(len) = frame::parse_header(head, u64::MAX) {
            assert_eq!(frame::header(len).unwrap(), head);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Target `request`: one connection's bytes as the daemon reads them: the 40-byte auth
/// prefix (checked before anything is parsed), one frame under the limit that the prefix
/// selects, then the request's decoder by tag.
pub fn request(data: &[u8]) {
    let node_auth = auth::auth_code("", REQUEST_SIGN);
    let Some((prefix, rest)) = data.split_at_checked(AUTH_LEN) else {
        return;
    };
    let authed = auth::same_auth(prefix, &node_auth);
    let limit = if authed {
        MAX_REQUEST
    } else {
        MAX_UNAUTH_REQUEST
    };
    let Some((payload, _)) = check_split(rest, limit) else {
        return;
    };
    let (tag, body) = check_split_tag(payload);
    if !authed {
        // Without the auth only PING is looked at, with the tight limits.
        if tag == b"PING" {
            ping(body);
        }
        return;
    }
    match tag {
        b"PING" => ping(body),
        b"COMPUTE" => compute(body),
        b"FILEXFER" => xfer_file(body),
        b"JOB" => job(body),
        b"TERMINATE_JOB" => {
            if let Some(v) = decode_envelope(body) {
                let _ = Job::ident_from_value(&v);
            }
        }
        b"SETUP" | b"CLOSE" | b"JOBS" | b"PENDING_JOBS" | b"RETRIEVE_JOB" => compute_request(body),
        _ => {}
    }
}

/// An authenticated envelope as the node decodes it (default limits), checked like
/// `pickle_decode` checks its trees.
fn decode_envelope(body: &[u8]) -> Option<Value> {
    let v = pickle::decode(body).ok()?;
    check_tree(&v, body.len(), &Limits::default());
    Some(v)
}

/// Target `compute`: a `COMPUTE:` body.
pub fn compute(body: &[u8]) {
    let Some(v) = decode_envelope(body) else {
        return;
    };
    let Ok(c) = Compute::from_value(&v) else {
        return;
    };
    assert!(matches!(
        c.kind,
        ComputeKind::Function | ComputeKind::Program
    ));
    let _ = c.cleanup.removes_files();
    for xf in &c.xfer_files {
        check_xfer(xf);
    }
    if let Some(p) = &c.dest_path {
        // make_compute_dir: dest_path relative to <prefix>/<scheduler ip>, split on '/'.
        check_relative(p, "/");
    }
    // The scheduler's directory is named after scheduler_ip_addr once it parses as an IP
    // (make_compute_dir opens it as one component): it must not be a way out either.
    if net::parse_ip(&c.scheduler_ip_addr).is_some()
        && store::check_component(&c.scheduler_ip_addr).is_ok()
    {
        assert_contained(
            std::slice::from_ref(&c.scheduler_ip_addr),
            "scheduler directory",
        );
    }
}

/// Target `xfer_file`: a `FILEXFER:` body.
pub fn xfer_file(body: &[u8]) {
    let Some(v) = decode_envelope(body) else {
        return;
    };
    if let Ok(xf) = XferFile::from_value(&v) {
        check_xfer(&xf);
    }
}

/// Target `job`: a `JOB:` (or `TERMINATE_JOB:`) body.
pub fn job(body: &[u8]) {
    let Some(v) = decode_envelope(body) else {
        return;
    };
    let ident = Job::ident_from_value(&v).ok();
    let Ok(j) = Job::from_value(&v) else { return };
    assert_eq!(ident, Some((j.uid, j.compute_id)));
    for xf in &j.xfer_files {
        check_xfer(xf);
    }
    // Program jobs: the node decodes the argument list itself.
    if let Ok(args) = message::program_args(&j.args) {
        assert!(args.len() <= Limits::default().max_container_len);
    }
}

/// Target `compute_request`: SETUP/CLOSE/JOBS/... dict bodies.
pub fn compute_request(body: &[u8]) {
    let Some(v) = decode_envelope(body) else {
        return;
    };
    let _ = ComputeRequest::setup_args_ok(&v);
    let _ = ComputeRequest::from_value(&v);
}

/// Target `ping`: a `PING:` body (UDP or TCP), decoded with the unauthenticated limits.
pub fn ping(body: &[u8]) {
    let tight = limits::ping_limits();
    let Ok(v) = pickle::decode_with(body, &tight) else {
        return;
    };
    check_tree(&v, body.len(), &tight);
    let Ok(p) = Ping::from_value(&v) else { return };
    let _ = message::version_accepted(&p.version);
    assert!(p.ip_addrs.len() <= tight.max_container_len);
    for a in &p.ip_addrs {
        let _ = net::parse_ip(a);
    }
}

/// Target `job_reply`: a `JOB_REPLY:` body. Whatever decodes as a `_JobReply` must survive
/// `to_value` -> encode -> decode -> `from_value` unchanged.
pub fn job_reply(body: &[u8]) {
    let Some(v) = decode_envelope(body) else {
        return;
    };
    let Ok(r) = JobReply::from_value(&v) else {
        return;
    };
    let msg = r.encode_message();
    let tail = msg
        .strip_prefix(b"JOB_REPLY:".as_slice())
        .expect("JOB_REPLY: prefix");
    let again = pickle::decode(tail).expect("our JOB_REPLY decodes");
    let r2 = JobReply::from_value(&again).expect("our JOB_REPLY is a _JobReply");
    // Compare encodings: start_time may be NaN.
    assert!(
        r2.encode_message() == msg,
        "JobReply round trip changed it: {r:?} -> {r2:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// A path made of `comps` under a root must stay under it, lexically.
fn assert_contained(comps: &[String], what: &str) {
    let root = Path::new("/prefix/127.0.0.1/comp");
    let p: PathBuf = comps.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    assert!(
        p.starts_with(root)
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
        "{what}: components {comps:?} leave the directory: {}",
        p.display()
    );
    assert!(
        p.components().count() == root.components().count() + comps.len(),
        "{what}: components {comps:?} do not each add one level"
    );
}

fn check_relative(path: &str, sep: &str) -> Option<Vec<String>> {
    let comps = store::relative_components(path, sep).ok()?;
    for c in &comps {
        assert!(
            store::check_component(c).is_ok(),
            "relative_components({path:?}, {sep:?}) returned a bad component {c:?}"
        );
        assert!(
            !c.chars().any(|ch| ch == '/' || sep.contains(ch)),
            "component {c:?} still holds a separator"
        );
    }
    assert_contained(&comps, "relative_components");
    Some(comps)
}

/// What on_filexfer does with a file's names: `dest_path` split with the sender's separator,
/// the last component of `name` as the file name.
fn check_xfer(xf: &XferFile) {
    let base = xf.base_name();
    let _ = xf.dest_components();
    let Some(mut comps) = check_relative(&xf.dest_path, &xf.sep) else {
        return;
    };
    if store::check_component(base).is_ok() {
        comps.push(base.to_owned());
        assert_contained(&comps, "FILEXFER target");
    }
}

/// A directory tree with symlinks to look up fuzzed paths in (opened, never written):
/// `root/{a/b, file, link -> outside, a/up -> ../.., a/b/abs -> /}` and `outside/`.
struct Fixture {
    root: PathBuf,
    real_root: PathBuf,
}

/// A per-process scratch directory `<tmp>/<prefix><pid>`. Those of processes that are gone
/// (earlier fuzz runs, earlier `cargo test`s) are removed on the way.
fn scratch_dir(prefix: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(rd) = std::fs::read_dir(&tmp) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(prefix) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    tmp.join(format!("{prefix}{}", std::process::id()))
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let base = scratch_dir("dispynode-fuzz-paths-");
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("a").join("b")).expect("fixture dirs");
        std::fs::create_dir_all(outside.join("a").join("b")).expect("fixture dirs");
        std::fs::write(root.join("file"), b"x").expect("fixture file");
        let link = |target: &Path, at: PathBuf| {
            if std::fs::symlink_metadata(&at).is_err() {
                std::os::unix::fs::symlink(target, at).expect("fixture symlink");
            }
        };
        link(&outside, root.join("link"));
        link(Path::new("../.."), root.join("a").join("up"));
        link(Path::new("/"), root.join("a").join("b").join("abs"));
        let real_root = std::fs::canonicalize(&root).expect("canonical root");
        Fixture { root, real_root }
    })
}

/// Target `store_path`: `sep \n name \n dest_path`. Checks the pure path validation, then
/// resolves the components in a real directory tree with planted symlinks: whatever `Dir`
/// opens must really be inside the root (read back through /proc/self/fd).
pub fn store_path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let sep = parts.next().unwrap_or("").to_owned();
    let name = parts.next().unwrap_or("").to_owned();
    let dest_path = parts.next().unwrap_or("").to_owned();

    let _ = store::check_component(&name);
    let xf = XferFile {
        name: name.clone(),
        dest_path: dest_path.clone(),
        compute_id: Some(1),
        size: 0,
        mode: 0o100644,
        atime: 0.0,
        mtime: 0.0,
        sep: sep.clone(),
    };
    check_xfer(&xf);
    let Some(comps) = check_relative(&dest_path, &sep) else {
        return;
    };
    check_relative(&dest_path, "/");
    if comps.len() > 8 {
        return;
    }
    let f = fixture();
    let root = Dir::open(&f.root).expect("open the fixture root");
    if let Ok(d) = root.subdir(&comps, None) {
        let fd = d.as_fd().as_raw_fd();
        let real = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("readlink fd");
        assert!(
            real.starts_with(&f.real_root),
            "components {comps:?} opened {} outside the root {}",
            real.display(),
            f.real_root.display()
        );
        if store::check_component(&name).is_ok() {
            if let Some((size, _)) = d.file_stat(&name) {
                // Only regular files inside the root: `file` is the one there is.
                assert_eq!(size, 1, "stat of {name:?} under {comps:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

fn config_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = scratch_dir("dispynode-fuzz-config-");
        std::fs::create_dir_all(&d).expect("config fuzz dir");
        d
    })
}

/// Host names in fuzzed files resolve to one documentation address, without any lookup.
fn fixed_resolver(_: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
    Ok(vec![std::net::IpAddr::from([192, 0, 2, 1])])
}

fn parse_config_file(path: &Path) -> Result<config::Config, config::ConfigError> {
    let tmp = config_dir().to_string_lossy().into_owned();
    let env = move |key: &str| (key == "TMPDIR").then(|| tmp.clone());
    let args = [
        "dispynode".to_owned(),
        "--config".to_owned(),
        path.to_string_lossy().into_owned(),
    ];
    match config::parse_args_with(args, 4, &env, &fixed_resolver)? {
        Command::Run(c) => Ok(*c),
        Command::SaveConfig { .. } => panic!("a config file cannot ask for --save_config"),
    }
}

/// Target `config_toml`: the bytes as a `--config` file. Whatever is accepted must be written
/// back by `--save_config` (`Config::to_toml`) as a file that loads to the same configuration.
pub fn config_toml(data: &[u8]) {
    let dir = config_dir();
    let path = dir.join("fuzz.toml");
    std::fs::write(&path, data).expect("write the config file");
    let Ok(c) = parse_config_file(&path) else {
        return;
    };
    let saved = c.to_toml();
    let saved_path = dir.join("saved.toml");
    std::fs::write(&saved_path, &saved).expect("write the saved config");
    let mut c2 = match parse_config_file(&saved_path) {
        Ok(c2) => c2,
        Err(e) => panic!(
            "--save_config output does not load: {e}\n--- input\n{}\n--- saved\n{saved}",
            String::from_utf8_lossy(data)
        ),
    };
    assert_eq!(c2.config_file.as_deref(), Some(saved_path.as_path()));
    c2.config_file = c.config_file.clone();
    assert!(
        c2 == c,
        "--save_config output loads differently:\n{c:?}\n{c2:?}\n--- saved\n{saved}"
    );
}
