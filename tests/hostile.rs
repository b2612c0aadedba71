//! Hostile input against the real node binary (issue 8).
//!
//! Each test starts its own node (tests/support), abuses it with a raw client written here
//! with `std::net` (or a `tests/clients/hostile_*.py` script), and then runs a normal job with
//! the stock dispy client (`hostile_job.py`), which must still work. Afterwards the node must
//! be alive, must not have written outside its prefix, and its resident memory (VmRSS of the
//! daemon, read from /proc) must not have grown by more than [`RSS_GROWTH_MAX`]; tests that
//! send memory bombs also bound the peak (VmHWM).
//!
//! Every wait is bounded (socket timeouts, polling deadlines, the harness's client timeout).
//! The raw client builds the protocol's messages with the library (`dispynode::protocol`), in
//! the shapes of dispy-protocol.md §2, and gets the auth prefix the way a client does: a TCP
//! PING, whose PONG carries the node's sign.
//!
//! The end of the file holds property tests (proptest) for message-level encode/decode round
//! trips and the framing.

mod support;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use dispynode::limits::{MAX_PONG_TARGETS, MAX_REQUEST, MAX_UNAUTH_PER_SOURCE};
use dispynode::protocol::auth;
use dispynode::protocol::frame::{self, AUTH_LEN};
use dispynode::protocol::pickle::{self, Value};
use rand::{Rng, RngCore};
use support::{run_against, skip_under_reference, token, Node, NodeOpts, RAW_ESCAPE_CHECKS};

/// Largest growth of the daemon's VmRSS over a test.
const RSS_GROWTH_MAX: u64 = 100 << 20;
/// Largest growth of the daemon's peak RSS (VmHWM) while it is sent memory bombs.
const HWM_GROWTH_MAX: u64 = 256 << 20;
/// Socket timeout of the raw client: far above anything the node should take.
const IO: Duration = Duration::from_secs(15);
/// The CHECK names of hostile_job.py.
const JOB_CHECKS: [&str; 4] = ["replied", "finished", "results", "closed"];

const SKIP: &str = "hostile-input tests are written for this node (the reference unpickles \
                    unauthenticated input and has no limits)";

// ---------------------------------------------------------------------------------------------
// The daemon from outside: memory, descriptors
// ---------------------------------------------------------------------------------------------

/// A field of /proc/<pid>/status in bytes (VmRSS, VmHWM).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    kib * 1024
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The daemon's memory when a test starts.
struct Baseline {
    pid: u32,
    rss: u64,
    hwm: u64,
}

impl Baseline {
    fn take(node: &Node) -> Baseline {
        let pid = node.pid();
        Baseline {
            pid,
            rss: proc_status_bytes(pid, "VmRSS:"),
            hwm: proc_status_bytes(pid, "VmHWM:"),
        }
    }

    fn hwm_growth(&self) -> u64 {
        proc_status_bytes(self.pid, "VmHWM:").saturating_sub(self.hwm)
    }

    fn assert_peak_bounded(&self, node: &Node, what: &str) {
        let growth = self.hwm_growth();
        node.ensure(
            growth < HWM_GROWTH_MAX,
            &format!(
                "{what}: the daemon's peak RSS grew by {:.0} MiB (limit {:.0} MiB)",
                mib(growth),
                mib(HWM_GROWTH_MAX)
            ),
        );
    }
}

/// What every test ends with: the node is alive, wrote nothing outside its prefix, and its
/// resident memory stayed bounded.
fn finish(node: &mut Node, base: &Baseline) {
    node.assert_alive();
    let outside = node.entries_outside_prefix();
    node.ensure(
        outside.is_empty(),
        &format!("the node wrote outside its prefix: {outside:?}"),
    );
    let rss = proc_status_bytes(base.pid, "VmRSS:");
    let growth = rss.saturating_sub(base.rss);
    eprintln!(
        "daemon VmRSS {:.1} -> {:.1} MiB, VmHWM {:.1} -> {:.1} MiB",
        mib(base.rss),
        mib(rss),
        mib(base.hwm),
        mib(proc_status_bytes(base.pid, "VmHWM:"))
    );
    node.ensure(
        growth < RSS_GROWTH_MAX,
        &format!(
            "the daemon's RSS grew by {:.0} MiB over the test (limit {:.0} MiB)",
            mib(growth),
            mib(RSS_GROWTH_MAX)
        ),
    );
}

/// A normal job with the stock client; it must work whatever came before.
fn normal_job(node: &Node, tag: &str) {
    let run = run_against(node, "hostile_job", &["4", "", tag]);
    run.assert_checks(node, &JOB_CHECKS);
}

/// The usual end of a test: a normal job, then `finish`.
fn normal_job_and_finish(node: &mut Node, base: &Baseline, tag: &str) {
    normal_job(node, tag);
    finish(node, base);
}

/// What every test starts with: a node (with `extra` options) and its memory baseline; None
/// under the reference node, whose test is then skipped.
fn start(extra: &[&str]) -> Option<(Node, Baseline)> {
    if skip_under_reference(SKIP) {
        return None;
    }
    let node = Node::start_with(NodeOpts {
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..NodeOpts::default()
    });
    let base = Baseline::take(&node);
    Some((node, base))
}

// ---------------------------------------------------------------------------------------------
// A raw client
// ---------------------------------------------------------------------------------------------

fn node_addr(node: &Node) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, node.port()))
}

fn connect(node: &Node) -> TcpStream {
    let s = TcpStream::connect_timeout(&node_addr(node), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to the node: {e}\n{}", node.log_tail()));
    s.set_read_timeout(Some(IO)).expect("read timeout");
    s.set_write_timeout(Some(IO)).expect("write timeout");
    s
}

fn framed(payload: &[u8]) -> Vec<u8> {
    frame::encode(payload).expect("frame")
}

/// `TAG:` + the pickle of `v`.
fn message(tag: &str, v: &Value) -> Vec<u8> {
    let mut m = format!("{tag}:").into_bytes();
    pickle::encode_into(v, &mut m);
    m
}

/// How an exchange with the node ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// One framed reply.
    Reply(Vec<u8>),
    /// The node closed the connection (possibly after some bytes that are no whole frame).
    Closed,
    /// The node reset the connection.
    Reset,
    /// Nothing within the time allowed.
    TimedOut,
}

impl Outcome {
    fn dropped(&self) -> bool {
        matches!(self, Outcome::Closed | Outcome::Reset)
    }

    /// The reply unpickled, if it is a pickle.
    fn value(&self) -> Option<Value> {
        match self {
            Outcome::Reply(b) => pickle::decode(b).ok(),
            _ => None,
        }
    }

    /// A COMPUTE reply that registers the computation: a pickled int > 0 (the CPU count).
    fn accepted_compute(&self) -> bool {
        matches!(self.value(), Some(Value::Int(n)) if n > 0)
    }
}

fn read_exact_outcome(s: &mut TcpStream, buf: &mut [u8]) -> Result<(), Outcome> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(Outcome::Closed),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Outcome::TimedOut)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(Outcome::Reset),
        }
    }
    Ok(())
}

/// Reads one framed reply, or how the connection ended, waiting at most `limit`.
fn read_outcome(s: &mut TcpStream, limit: Duration) -> Outcome {
    s.set_read_timeout(Some(limit)).expect("read timeout");
    let mut head = [0u8; 4];
    if let Err(o) = read_exact_outcome(s, &mut head) {
        return o;
    }
    let len = u32::from_be_bytes(head) as usize;
    assert!(len <= 1 << 20, "the node sent a {len}-byte reply");
    let mut body = vec![0u8; len];
    match read_exact_outcome(s, &mut body) {
        Ok(()) => Outcome::Reply(body),
        Err(o) => o,
    }
}

/// Sends `data` on a new connection, optionally half-closes, and waits for the node's reply
/// (or for it to drop the connection). Returns the outcome and how long the node took.
fn exchange(node: &Node, data: &[u8], half_close: bool, limit: Duration) -> (Outcome, Duration) {
    let mut s = connect(node);
    // The node may drop us before we are done writing: that is an answer too.
    let _ = s.write_all(data);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let t0 = Instant::now();
    let o = read_outcome(&mut s, limit);
    (o, t0.elapsed())
}

/// Sends one request with `prefix` and returns the node's reply.
fn request(node: &Node, prefix: &[u8], payload: &[u8]) -> Outcome {
    let mut data = prefix.to_vec();
    data.extend_from_slice(&framed(payload));
    exchange(node, &data, false, IO).0
}

fn random_sign() -> String {
    let mut b = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A client PING (dispy-protocol.md §2.3.1): the node answers with a PONG to `port` on each
/// address (at most MAX_PONG_TARGETS of them).
fn ping_value(sign: &str, port: u16, ip_addrs: &[String]) -> Value {
    Value::str_dict([
        ("version", Value::Str("4.15.2".into())),
        ("sign", Value::Str(sign.into())),
        ("port", Value::Int(i64::from(port))),
        ("node_ip_addr", Value::Str("127.0.0.1".into())),
        (
            "ip_addrs",
            Value::List(ip_addrs.iter().map(|a| Value::Str(a.clone())).collect()),
        ),
    ])
}

/// Accepts one connection on `l` within `limit` and reads its one frame.
fn accept_frame(l: &TcpListener, limit: Duration) -> Option<Vec<u8>> {
    l.set_nonblocking(true).expect("nonblocking listener");
    let deadline = Instant::now() + limit;
    loop {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).expect("blocking stream");
                if let Outcome::Reply(b) = read_outcome(&mut s, Duration::from_secs(10)) {
                    return Some(b);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The node's auth prefix, learnt as a client learns it: a TCP PING (with a dummy prefix)
/// whose PONG carries the node's sign; the prefix is sha1(secret + sign). The node must be
/// free (PINGs to a busy node are not answered).
fn node_auth(node: &Node, secret: &str) -> [u8; AUTH_LEN] {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the PONG listener");
    let port = l.local_addr().expect("addr").port();
    let sign = random_sign();
    let ping = message("PING", &ping_value(&sign, port, &["127.0.0.1".into()]));
    let mut s = connect(node);
    s.write_all(&[b'x'; AUTH_LEN]).expect("send prefix");
    s.write_all(&framed(&ping)).expect("send PING");
    drop(s);
    let pong = accept_frame(&l, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no PONG within 20 s\n{}", node.log_tail()));
    let body = pong
        .strip_prefix(b"PONG:".as_slice())
        .unwrap_or_else(|| panic!("not a PONG: {:?}", String::from_utf8_lossy(&pong)));
    let v = pickle::decode(body).expect("PONG pickle");
    assert_eq!(
        v.get("auth").and_then(Value::as_bytes),
        Some(auth::auth_code(secret, &sign).as_slice()),
        "PONG auth"
    );
    let node_sign = v.get("sign").and_then(Value::as_str).expect("PONG sign");
    auth::auth_code(secret, node_sign)
}

/// The port the raw client names as its scheduler port (nobody listens there: replies the
/// node pushes to it fail, which is fine).
fn scheduler_port(node: &Node) -> u16 {
    node.port() - 1
}

/// `dispy._Compute` of a function computation, as the client pickles it (§2.2.1).
fn compute_value(
    node: &Node,
    id: i64,
    auth: &str,
    dest_path: Option<&str>,
    xfer_files: Vec<Value>,
) -> Value {
    let port = Value::Int(i64::from(scheduler_port(node)));
    Value::object(
        "dispy",
        "_Compute",
        Value::str_dict([
            ("type", Value::Int(1)),
            ("name", Value::Str("compute".into())),
            ("id", Value::Int(id)),
            ("code", Value::Str("def compute(n):\n    return n\n".into())),
            (
                "dest_path",
                dest_path.map_or(Value::None, |d| Value::Str(d.into())),
            ),
            ("xfer_files", Value::List(xfer_files)),
            ("reentrant", Value::Bool(false)),
            ("exclusive", Value::Bool(true)),
            ("setup", Value::None),
            ("cleanup", Value::Bool(true)),
            ("setup_args_count", Value::Int(0)),
            ("scheduler_ip_addr", Value::Str("127.0.0.1".into())),
            ("scheduler_port", port.clone()),
            ("node_ip_addr", Value::Str("127.0.0.1".into())),
            ("auth", Value::Str(auth.into())),
            ("job_result_port", port),
            ("pulse_interval", Value::None),
            ("client_reply_addr", Value::None),
        ]),
    )
}

/// `dispy._XferFile` with an `os.stat_result`-like 10-tuple.
fn xfer_value(name: &str, dest_path: &str, size: u64, compute_id: i64) -> Value {
    let t = Value::Int(1_795_759_602);
    Value::object(
        "dispy",
        "_XferFile",
        Value::str_dict([
            ("name", Value::Str(name.into())),
            ("dest_path", Value::Str(dest_path.into())),
            ("compute_id", Value::Int(compute_id)),
            (
                "stat_buf",
                Value::Tuple(vec![
                    Value::Int(0o100644),
                    Value::Int(1),
                    Value::Int(2),
                    Value::Int(1),
                    Value::Int(0),
                    Value::Int(0),
                    Value::Int(size as i64),
                    t.clone(),
                    t.clone(),
                    t,
                ]),
            ),
            ("sep", Value::Str("/".into())),
        ]),
    )
}

/// `dispy._DispyJob_` (§2.2.4) with `args` as the pickled argument tuple.
fn job_value(compute_id: i64, args: Vec<u8>) -> Value {
    Value::object(
        "dispy",
        "_DispyJob_",
        Value::str_dict([
            ("uid", Value::Int(4242)),
            ("hash", Value::Str("e86ed7b6db29558f9cf".into())),
            ("compute_id", Value::Int(compute_id)),
            ("_args", Value::Bytes(args)),
            (
                "_kwargs",
                Value::Bytes(pickle::encode(&Value::Dict(vec![]))),
            ),
            ("xfer_files", Value::List(vec![])),
            ("code", Value::Str(String::new())),
        ]),
    )
}

fn close_value(compute_id: i64, auth: &str) -> Value {
    Value::str_dict([
        ("compute_id", Value::Int(compute_id)),
        ("auth", Value::Str(auth.into())),
        ("node_ip_addr", Value::Str("127.0.0.1".into())),
        ("terminate_pending", Value::Bool(true)),
        ("close", Value::Bool(true)),
    ])
}

/// A registered computation of the raw client.
struct RawComputation {
    id: i64,
    auth: String,
}

fn new_compute_id() -> i64 {
    rand::thread_rng().gen_range(1_000_000_000_000..10_000_000_000_000)
}

/// Registers a function computation (COMPUTE); panics unless the node accepts it.
fn register(node: &Node, prefix: &[u8], dest_path: Option<&str>) -> RawComputation {
    let c = RawComputation {
        id: new_compute_id(),
        auth: random_sign(),
    };
    let o = request(
        node,
        prefix,
        &message(
            "COMPUTE",
            &compute_value(node, c.id, &c.auth, dest_path, vec![]),
        ),
    );
    node.ensure(
        o.accepted_compute(),
        &format!("legitimate COMPUTE refused: {o:?}"),
    );
    c
}

fn close(node: &Node, prefix: &[u8], c: &RawComputation) {
    let o = request(node, prefix, &message("CLOSE", &close_value(c.id, &c.auth)));
    node.ensure(
        o == Outcome::Reply(b"ACK".to_vec()),
        &format!("CLOSE not acknowledged: {o:?}"),
    );
}

/// Follows the FILEXFER ack loop (§2.2.3) sending `data` (which may be shorter or longer
/// than the size `xf` announces). Returns the node's last ack (an int), or how it ended.
fn filexfer(node: &Node, prefix: &[u8], xf: &Value, data: &[u8]) -> Result<i64, Outcome> {
    let mut s = connect(node);
    let mut req = prefix.to_vec();
    req.extend_from_slice(&framed(&message("FILEXFER", xf)));
    s.write_all(&req).map_err(|_| Outcome::Reset)?;
    let mut sent = 0usize;
    loop {
        let o = read_outcome(&mut s, IO);
        let Some(Value::Int(acked)) = o.value() else {
            return Err(o);
        };
        if acked < 0 || acked as usize != sent || sent >= data.len() {
            return Ok(acked);
        }
        let n = (data.len() - sent).min(frame::FILE_CHUNK);
        if s.write_all(&data[sent..sent + n]).is_err() {
            return Err(Outcome::Reset);
        }
        sent += n;
    }
}

// ---------------------------------------------------------------------------------------------
// Pickle bombs
// ---------------------------------------------------------------------------------------------

/// Protocol 4 header.
const P4: &[u8] = b"\x80\x04";

fn bomb(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `k` levels of lists, each holding `n` references to the one below (through the memo):
/// n^k values once expanded, from a few kB of pickle.
fn laughs(n: usize, k: usize) -> Vec<u8> {
    let mut p = P4.to_vec();
    p.extend_from_slice(b"](");
    p.extend(std::iter::repeat_n(b'N', n));
    p.extend_from_slice(b"e\x94");
    for level in 0..k.saturating_sub(1) {
        p.extend_from_slice(b"](");
        for _ in 0..n {
            p.extend_from_slice(&[b'h', level as u8]);
        }
        p.extend_from_slice(b"e\x94");
    }
    p.push(b'.');
    p
}

/// One `size`-byte bytes object, memoized once and referenced `refs` times from a list.
fn memo_repeat(size: usize, refs: usize) -> Vec<u8> {
    let mut p = P4.to_vec();
    p.extend_from_slice(b"]\x94B");
    p.extend_from_slice(&(size as u32).to_le_bytes());
    p.extend(std::iter::repeat_n(b'x', size));
    p.extend_from_slice(b"\x94a(");
    for _ in 0..refs {
        p.extend_from_slice(b"h\x01");
    }
    p.extend_from_slice(b"e.");
    p
}

/// Bombs the decoder must refuse (or decode within its bounds) without a large cost.
fn cheap_bombs() -> Vec<(&'static str, Vec<u8>)> {
    let mut long_binput = P4.to_vec();
    long_binput.push(b'N');
    for k in 0..200_000u32 {
        long_binput.push(b'r');
        long_binput.extend_from_slice(&k.to_le_bytes());
    }
    long_binput.push(b'.');
    let mut many_memo = P4.to_vec();
    many_memo.push(b'(');
    for _ in 0..200_000 {
        many_memo.extend_from_slice(b"N\x94");
    }
    many_memo.extend_from_slice(b"l.");
    let mut huge_list = P4.to_vec();
    huge_list.push(b'(');
    huge_list.extend(std::iter::repeat_n(b'N', 1_100_000));
    huge_list.extend_from_slice(b"l.");
    vec![
        ("deep_tuple1", bomb(&[P4, b"N", &[0x85; 100_000], b"."])),
        (
            "deep_list_append",
            bomb(&[P4, &[b']'; 50_000], &[b'a'; 49_999], b"."]),
        ),
        ("deep_marks", bomb(&[P4, &[b'('; 100_000], b"N."])),
        (
            "deep_dict",
            bomb(&[P4, &b"}K\x01".repeat(30_000), b"}", &[b's'; 30_000], b"."]),
        ),
        ("huge_memo_memoize", many_memo),
        ("huge_memo_long_binput", long_binput),
        ("billion_laughs", laughs(1000, 3)),
        ("laughs_just_under_max_nodes", laughs(998, 2)),
        (
            "dup_doubling",
            bomb(&[P4, b"C\x64", &[b'y'; 100], &b"2\x86".repeat(40), b"."]),
        ),
        ("huge_list", huge_list),
        (
            "binbytes8_claims_2_62",
            bomb(&[P4, b"\x8e", &(1u64 << 62).to_le_bytes(), b"."]),
        ),
        (
            "binunicode8_claims_2_62",
            bomb(&[P4, b"\x8d", &(1u64 << 62).to_le_bytes(), b"."]),
        ),
        (
            "long4_claims_2_gib",
            bomb(&[P4, b"\x8b\xff\xff\xff\x7f", b"."]),
        ),
        (
            "frame_claims_2_63",
            bomb(&[b"\x80\x05\x95", &(1u64 << 63).to_le_bytes(), b"N."]),
        ),
        (
            "int_of_100k_digits",
            bomb(&[b"I", &[b'9'; 100_000], b"\n."]),
        ),
        (
            "evil_global",
            b"cos\nsystem\n(S'touch /tmp/dispynode-hostile-pwned'\ntR.".to_vec(),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// A COMPUTE with a wrong auth prefix gets no reply and registers nothing.
#[test]
fn wrong_auth_prefix_with_compute() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let auth = node_auth(&node, "");
    let id = new_compute_id();
    let compute = message(
        "COMPUTE",
        &compute_value(&node, id, &random_sign(), None, vec![]),
    );
    let mut upper = auth;
    upper.make_ascii_uppercase();
    let mut last = auth;
    last[AUTH_LEN - 1] ^= 1;
    let wrong: [(&str, Vec<u8>); 5] = [
        ("y*40", vec![b'y'; AUTH_LEN]),
        ("zeros", vec![0; AUTH_LEN]),
        ("uppercase hex of the auth", upper.to_vec()),
        ("last byte flipped", last.to_vec()),
        ("auth of another secret", auth::auth_code("x", "y").to_vec()),
    ];
    for (what, prefix) in &wrong {
        let (o, took) = exchange(
            &node,
            &[prefix.as_slice(), &framed(&compute)].concat(),
            true,
            IO,
        );
        node.ensure(
            o.dropped(),
            &format!("COMPUTE with a wrong prefix ({what}) got {o:?} after {took:?}"),
        );
    }
    node.ensure(
        !node.computations_dir().exists()
            || std::fs::read_dir(node.computations_dir()).map_or(0, |d| d.count()) == 0,
        "a computation directory exists after COMPUTEs with wrong prefixes",
    );
    // Positive control: the same message with the right prefix registers the computation.
    let c = register(&node, &auth, None);
    close(&node, &auth, &c);
    normal_job_and_finish(&mut node, &base, "wrong-auth");
}

/// A peer without the secret cannot flood the log: a refused connection's line is logged at
/// most 20 times a minute per kind (journald would otherwise drop every message of the node
/// once its per-service rate limit is hit), and the rest are counted in one line.
#[test]
fn refused_connections_are_logged_at_most_twenty_a_minute() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let kind = "refused request: wrong auth (secret mismatch?)";
    let data = [vec![b'y'; AUTH_LEN], framed(&message("JOB", &Value::None))].concat();
    for i in 0..100 {
        let (o, took) = exchange(&node, &data, true, IO);
        node.ensure(
            o.dropped(),
            &format!("request {i} with a wrong prefix got {o:?} after {took:?}"),
        );
    }
    let summary = format!("80 more lines like \"{kind}\" not logged (at most 20 a minute each)");
    // The count is logged from the node's heartbeat, every 5 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !node.log().contains(&summary) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let log = node.log();
    let lines = log
        .lines()
        .filter(|l| l.contains(kind) && !l.contains("not logged"))
        .count();
    node.ensure(
        lines == 20 && log.contains(&summary),
        &format!(
            "{lines} lines of {kind:?} (want 20), summary {summary:?} present: {}",
            log.contains(&summary)
        ),
    );
    normal_job_and_finish(&mut node, &base, "log-limit");
}

/// A PONG carries sha1(secret + the PING's sign). A PING that carries the node's own sign (read
/// from any earlier PONG) would make the PONG carry the node's auth code, and with it a peer
/// without the secret could run code on the node. Such PINGs, by UDP and by TCP, are refused
/// and logged; PINGs with signs of their own are answered as before, and the secret still
/// guards the node.
#[test]
fn ping_with_the_nodes_own_sign_is_refused() {
    const SECRET: &str = "s3cret-not-known";
    if skip_under_reference("the reference answers such a PING with its auth code") {
        return;
    }
    let mut node = Node::start_with(NodeOpts {
        secret: Some(SECRET.into()),
        ..NodeOpts::default()
    });
    let base = Baseline::take(&node);
    // What an attacker learns from any PONG: the node's sign (the PONG's auth is of no use).
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the PONG listener");
    let port = l.local_addr().expect("addr").port();
    let u = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let ping = |sign: &str| message("PING", &ping_value(sign, port, &["127.0.0.1".into()]));
    u.send_to(&ping(&random_sign()), node_addr(&node))
        .expect("send PING");
    let pong = accept_frame(&l, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no PONG within 20 s\n{}", node.log_tail()));
    let v = pickle::decode(pong.strip_prefix(b"PONG:".as_slice()).expect("a PONG"))
        .expect("PONG pickle");
    let node_sign = v
        .get("sign")
        .and_then(Value::as_str)
        .expect("PONG sign")
        .to_owned();
    let node_auth = auth::auth_code(SECRET, &node_sign);

    // The probe, by UDP and by TCP (any prefix: PINGs are served unauthenticated).
    u.send_to(&ping(&node_sign), node_addr(&node))
        .expect("send PING");
    let mut s = connect(&node);
    s.write_all(&[b'x'; AUTH_LEN]).expect("send prefix");
    s.write_all(&framed(&ping(&node_sign))).expect("send PING");
    drop(s);
    if let Some(pong) = accept_frame(&l, Duration::from_secs(4)) {
        let leaked = pickle::decode(pong.strip_prefix(b"PONG:".as_slice()).unwrap_or(&pong))
            .ok()
            .and_then(|v| v.get("auth").and_then(Value::as_bytes).map(<[u8]>::to_vec));
        node.ensure(
            false,
            &format!(
                "a PING with the node's own sign was answered; its auth is the node's auth \
                 code: {}",
                leaked.as_deref() == Some(node_auth.as_slice())
            ),
        );
    }
    let kind = "refused PING carrying this node's own sign";
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.log().matches(kind).count() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    node.ensure(
        node.log().matches(kind).count() == 2,
        &format!("two lines {kind:?} in the log (UDP and TCP)"),
    );
    // Control: a PING with a sign of its own is still answered (a real client's discovery).
    u.send_to(&ping(&random_sign()), node_addr(&node))
        .expect("send PING");
    node.ensure(
        accept_frame(&l, Duration::from_secs(20)).is_some(),
        "a PING with a sign of its own got no PONG",
    );
    // And the secret still works for the stock client.
    let run = run_against(&node, "hostile_job", &["4", SECRET, "own-sign"]);
    run.assert_checks(&node, &JOB_CHECKS);
    finish(&mut node, &base);
}

/// Random bytes, with no prefix, a wrong one and the right one, are dropped without harm.
#[test]
fn random_bytes() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let auth = node_auth(&node, "");
    let mut rng = rand::thread_rng();
    let tags: [&[u8]; 8] = [
        b"COMPUTE:",
        b"JOB:",
        b"FILEXFER:",
        b"SETUP:",
        b"CLOSE:",
        b"PING:",
        b"TERMINATE_JOB:",
        b"",
    ];
    for i in 0..80 {
        let len = match i % 4 {
            0 => rng.gen_range(0..64),
            1 => rng.gen_range(0..4096),
            _ => rng.gen_range(0..65536),
        };
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        let data = match i % 5 {
            0 => junk,
            1 => [&[b'x'; AUTH_LEN][..], &junk].concat(),
            2 => [&auth[..], &junk].concat(),
            // well-framed random bodies behind each tag, with and without the auth
            3 => [
                &[b'x'; AUTH_LEN][..],
                &framed(&[tags[i % 8], &junk].concat()),
            ]
            .concat(),
            _ => [&auth[..], &framed(&[tags[i % 8], &junk].concat())].concat(),
        };
        let (o, took) = exchange(&node, &data, true, IO);
        node.ensure(
            !matches!(o, Outcome::TimedOut) && !o.accepted_compute(),
            &format!("random input #{i} ({len} bytes) got {o:?} after {took:?}"),
        );
    }
    // Nothing was registered: the node still answers PINGs (a busy node would not).
    node_auth(&node, "");
    normal_job_and_finish(&mut node, &base, "random-bytes");
}

/// A 4 GiB length prefix is refused at the header, with and without the auth; a frame just
/// under the authenticated limit is not allocated up front.
#[test]
fn length_prefix_of_4_gib() {
    // msg_timeout 5 (the default): the refusals below must come well before it.
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let auth = node_auth(&node, "");
    for (what, prefix) in [
        ("unauthenticated", vec![b'x'; AUTH_LEN]),
        ("authenticated", auth.to_vec()),
    ] {
        for half_close in [false, true] {
            let data = [prefix.as_slice(), &[0xff; 4], b"COMPUTE:\x80\x04N."].concat();
            let (o, took) = exchange(&node, &data, half_close, IO);
            node.ensure(
                o.dropped() && took < Duration::from_secs(3),
                &format!(
                    "{what} 0xFFFFFFFF length (half-close {half_close}): {o:?} after {took:?}"
                ),
            );
        }
    }
    // Exactly MAX_REQUEST announced, 64 KiB sent, then silence: dropped after msg_timeout,
    // and the daemon must not have allocated the announced 256 MiB.
    let hwm0 = proc_status_bytes(base.pid, "VmHWM:");
    let mut s = connect(&node);
    let head = frame::header(MAX_REQUEST as usize).expect("header");
    s.write_all(&[&auth[..], &head, b"COMPUTE:", &[0x58; 65536]].concat())
        .expect("send");
    let t0 = Instant::now();
    let o = read_outcome(&mut s, IO);
    let took = t0.elapsed();
    node.ensure(
        o.dropped() && took < Duration::from_secs(5 + 4),
        &format!("a stalled {MAX_REQUEST}-byte frame: {o:?} after {took:?}"),
    );
    let grew = proc_status_bytes(base.pid, "VmHWM:").saturating_sub(hwm0);
    node.ensure(
        grew < 64 << 20,
        &format!(
            "announcing a {MAX_REQUEST}-byte frame raised the daemon's peak RSS by {:.0} MiB",
            mib(grew)
        ),
    );
    normal_job_and_finish(&mut node, &base, "4gib");
}

/// Truncated frames and prefixes: dropped at EOF at once, or after msg_timeout when the
/// client stalls; a complete frame holding a truncated pickle is refused with a reply.
#[test]
fn truncated_frames() {
    let Some((mut node, base)) = start(&["--msg_timeout", "2"]) else {
        return;
    };
    let auth = node_auth(&node, "");
    let compute = message(
        "COMPUTE",
        &compute_value(&node, new_compute_id(), &random_sign(), None, vec![]),
    );
    let whole = framed(&compute);
    let cases: Vec<(String, Vec<u8>)> = vec![
        ("20 bytes of prefix".into(), vec![b'x'; 20]),
        (
            "auth + 2 header bytes".into(),
            [&auth[..], &whole[..2]].concat(),
        ),
        (
            "auth + half a frame".into(),
            [&auth[..], &whole[..whole.len() / 2]].concat(),
        ),
        (
            "auth + all but the last byte".into(),
            [&auth[..], &whole[..whole.len() - 1]].concat(),
        ),
        (
            "no auth + half a frame".into(),
            [&[b'x'; AUTH_LEN][..], &whole[..whole.len() / 2]].concat(),
        ),
    ];
    // Stalled clients are dropped after msg_timeout (2 s); run them side by side.
    let stalled: Vec<_> = cases
        .iter()
        .map(|(what, data)| {
            let mut s = connect(&node);
            s.write_all(data).expect("send");
            let what = what.clone();
            thread::spawn(move || {
                let t0 = Instant::now();
                let o = read_outcome(&mut s, IO);
                (what, o, t0.elapsed())
            })
        })
        .collect();
    for h in stalled {
        let (what, o, took) = h.join().expect("reader thread");
        node.ensure(
            // took counts from this thread's start, after the node's clock began: slack below
            o.dropped() && took >= Duration::from_millis(1000) && took < Duration::from_secs(2 + 4),
            &format!("stalled client ({what}): {o:?} after {took:?} (msg_timeout 2 s)"),
        );
    }
    // The same, with EOF instead of a stall: dropped at once.
    for (what, data) in &cases {
        let (o, took) = exchange(&node, data, true, IO);
        node.ensure(
            o.dropped() && took < Duration::from_secs(1),
            &format!("half-closed client ({what}): {o:?} after {took:?}"),
        );
    }
    // A whole frame holding a truncated pickle: a refusal, not a registration.
    let cut = &compute[..compute.len() - 10];
    let o = request(&node, &auth, cut);
    node.ensure(
        matches!(o, Outcome::Reply(_)) && !o.accepted_compute(),
        &format!("COMPUTE with a truncated pickle: {o:?}"),
    );
    normal_job_and_finish(&mut node, &base, "truncated");
}

/// Clients that send one byte per second are dropped by msg_timeout while a normal job runs.
#[test]
fn one_byte_per_second_is_dropped_while_a_job_runs() {
    let Some((mut node, base)) = start(&["--msg_timeout", "2"]) else {
        return;
    };
    let auth = node_auth(&node, "");
    let compute = framed(&message(
        "COMPUTE",
        &compute_value(&node, new_compute_id(), &random_sign(), None, vec![]),
    ));
    let trickle = |mut s: TcpStream, fast: Vec<u8>, slow: Vec<u8>| {
        thread::spawn(move || {
            let t0 = Instant::now();
            if !fast.is_empty() {
                let _ = s.write_all(&fast);
            }
            s.set_read_timeout(Some(Duration::from_millis(1000)))
                .expect("timeout");
            for b in slow {
                if s.write_all(&[b]).is_err() {
                    return (Outcome::Reset, t0.elapsed());
                }
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(0) => return (Outcome::Closed, t0.elapsed()),
                    Ok(n) => return (Outcome::Reply(buf[..n].to_vec()), t0.elapsed()),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return (Outcome::Reset, t0.elapsed()),
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            (Outcome::TimedOut, t0.elapsed())
        })
    };
    let slow_prefix = trickle(connect(&node), vec![], [&auth[..], &compute].concat());
    let slow_frame = trickle(connect(&node), auth.to_vec(), compute.clone());
    let slow_unauth = trickle(connect(&node), vec![b'x'; AUTH_LEN], compute);
    // Meanwhile a real client gets its jobs done.
    let t0 = Instant::now();
    normal_job(&node, "slowloris");
    let job_time = t0.elapsed();
    for (what, h) in [
        ("prefix at 1 byte/s", slow_prefix),
        ("frame at 1 byte/s after the auth", slow_frame),
        ("frame at 1 byte/s after a wrong prefix", slow_unauth),
    ] {
        let (o, took) = h.join().expect("slow client thread");
        node.ensure(
            o.dropped() && took < Duration::from_secs(2 * 2 + 4),
            &format!("slow client ({what}): {o:?} after {took:?} (msg_timeout 2 s)"),
        );
    }
    eprintln!("the normal job took {job_time:?} next to the slow clients");
    finish(&mut node, &base);
}

/// Pickle bombs in authenticated COMPUTE and JOB requests are refused cheaply.
#[test]
fn pickle_bombs_in_authenticated_requests() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let auth = node_auth(&node, "");
    let marker = Path::new("/tmp/dispynode-hostile-pwned");
    let _ = std::fs::remove_file(marker);
    for (name, p) in cheap_bombs() {
        for tag in ["COMPUTE", "JOB", "SETUP", "FILEXFER"] {
            let payload = [format!("{tag}:").as_bytes(), &p].concat();
            let t0 = Instant::now();
            let o = request(&node, &auth, &payload);
            let took = t0.elapsed();
            node.ensure(
                !matches!(o, Outcome::TimedOut)
                    && !o.accepted_compute()
                    && o != Outcome::Reply(b"ACK".to_vec())
                    && took < Duration::from_secs(10),
                &format!(
                    "{tag} with bomb {name} ({} bytes): {o:?} after {took:?}",
                    p.len()
                ),
            );
            node.assert_alive();
        }
        // The same as a job's arguments stays opaque to the daemon: refused for the unknown
        // computation without being unpickled.
        let job = message("JOB", &job_value(new_compute_id(), p.clone()));
        let o = request(&node, &auth, &job);
        node.ensure(
            o != Outcome::Reply(b"ACK".to_vec()),
            &format!("JOB for an unknown computation with bomb {name} as arguments: {o:?}"),
        );
    }
    node.ensure(!marker.exists(), "the daemon executed a pickle's os.system");
    base.assert_peak_bounded(&node, "pickle bombs");
    normal_job(&node, "bombs");
    base.assert_peak_bounded(&node, "pickle bombs and a job");
    finish(&mut node, &base);
}

/// A 1 MiB `bytes` memoized once and referenced 900 times: a 1 MiB COMPUTE that would decode
/// into 900 MiB. (When the decoder bounded the expansion by Limits::max_input instead of the
/// input's size, the daemon's peak RSS grew by 905 MiB here.)
#[test]
fn pickle_bomb_memo_repeat_keeps_memory_bounded() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let auth = node_auth(&node, "");
    let p = memo_repeat(1 << 20, 900);
    for tag in ["COMPUTE", "JOB"] {
        let t0 = Instant::now();
        let o = request(&node, &auth, &[format!("{tag}:").as_bytes(), &p].concat());
        node.ensure(
            !matches!(o, Outcome::TimedOut)
                && !o.accepted_compute()
                && o != Outcome::Reply(b"ACK".to_vec()),
            &format!(
                "{tag} with a memo-repeat bomb: {o:?} after {:?}",
                t0.elapsed()
            ),
        );
        node.assert_alive();
    }
    normal_job(&node, "memo-repeat");
    base.assert_peak_bounded(&node, "a 1 MiB pickle referencing a 1 MiB bytes 900 times");
    finish(&mut node, &base);
}

/// FILEXFER names and dest_path with `..` and absolute paths, and COMPUTE dest_paths
/// likewise (tests/clients/raw_escape.py), then a normal job.
#[test]
fn path_escapes_then_a_normal_job() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let base_dir = node.base().to_string_lossy().into_owned();
    let run = run_against(&node, "raw_escape", &["", &base_dir]);
    run.assert_checks(&node, &RAW_ESCAPE_CHECKS);
    let escaped = node.find_named("escape_");
    node.ensure(escaped.is_empty(), &format!("escaped files: {escaped:?}"));
    // More names, by the raw client here: a computation and transfers to refuse.
    let auth = node_auth(&node, "");
    let c = register(&node, &auth, Some("hostile_dest"));
    for (name, dest) in [
        ("/client/escape_a.txt", "../../../.."),
        ("/client/escape_b.txt", base_dir.as_str()),
        ("/client/escape_c.txt", "a/../../../../.."),
        ("/client/..", ""),
        ("/client/.", ""),
        ("/client/", ""),
        ("/client/escape_d.txt", "a\0b"),
        ("escape_e\0.txt", ""),
    ] {
        let r = filexfer(&node, &auth, &xfer_value(name, dest, 4, c.id), b"evil");
        node.ensure(
            matches!(r, Ok(n) if n < 0) || matches!(r, Err(ref o) if o.dropped()),
            &format!("FILEXFER name {name:?} dest_path {dest:?}: {r:?}"),
        );
    }
    close(&node, &auth, &c);
    let escaped = node.find_named("escape_");
    node.ensure(escaped.is_empty(), &format!("escaped files: {escaped:?}"));
    normal_job_and_finish(&mut node, &base, "escapes");
}

/// A job of a computation with cleanup=False plants symlinks pointing outside the prefix in
/// its directory; a second computation with the same dest_path then transfers files through
/// them: nothing may be written (or removed) outside the prefix.
#[test]
fn symlink_planted_by_an_earlier_job() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let outside = tempfile::Builder::new()
        .prefix("dispynode-hostile-outside-")
        .tempdir()
        .expect("outside dir");
    std::fs::write(outside.path().join("victim.txt"), "precious\n").expect("victim");
    std::fs::create_dir(outside.path().join("keep")).expect("keep");
    std::fs::write(outside.path().join("keep").join("inner.txt"), "inner\n").expect("inner");
    let listing = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = walk(p)
            .into_iter()
            .map(|e| e.strip_prefix(p).unwrap_or(&e).display().to_string())
            .collect();
        v.sort();
        v
    };
    let before = listing(outside.path());
    let dest = format!("hostile_link_{}", token());
    let out_str = outside.path().to_string_lossy().into_owned();
    let plant = run_against(&node, "hostile_symlink", &["plant", &dest, &out_str]);
    plant.assert_checks(
        &node,
        &["plant_replied", "plant_finished", "planted", "plant_closed"],
    );
    let evil = plant.info("evil_dest").unwrap_or_default() == "True";
    eprintln!("evil_dest planted next to the computation directory: {evil}");
    let mut args = vec!["transfer", dest.as_str(), out_str.as_str()];
    if evil {
        args.push("evil_planted");
    }
    let transfer = run_against(&node, "hostile_symlink", &args);
    let mut expected = vec![
        "pong",
        "compute_through_link_refused",
        "compute_through_sub_refused",
        "compute_same_dest_accepted",
        "xfer_link_dir_refused",
        "xfer_link_dir_deeper_refused",
        "xfer_sub_refused",
        "victim_untouched",
        "close_ack",
    ];
    if evil {
        expected.push("compute_evil_dest_refused");
    }
    transfer.assert_checks(&node, &expected);
    eprintln!(
        "transfer onto the planted file link: {}",
        transfer.info("xfer_onto_file_link").unwrap_or_default()
    );
    let after = listing(outside.path());
    node.ensure(
        before == after,
        &format!("the directory outside the prefix changed: {before:?} -> {after:?}"),
    );
    node.ensure(
        std::fs::read_to_string(outside.path().join("victim.txt"))
            .ok()
            .as_deref()
            == Some("precious\n")
            && std::fs::read_to_string(outside.path().join("keep").join("inner.txt"))
                .ok()
                .as_deref()
                == Some("inner\n"),
        "a file outside the prefix was modified",
    );
    normal_job_and_finish(&mut node, &base, "symlink");
    // The planted links are inside the prefix (evil_dest, if planted, too): remove them so
    // that nothing dangles.
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// With --max_file_size 10k: transfers and computations declaring more are refused, a
/// transfer cut short leaves no file, and a file within the limit arrives.
#[test]
fn file_over_max_file_size() {
    let Some((mut node, base)) = start(&["--max_file_size", "10k"]) else {
        return;
    };
    let auth = node_auth(&node, "");
    // A computation whose depends exceed the limit is refused.
    let big_dep = xfer_value("/client/big_dep.bin", "", 20_000, 0);
    let o = request(
        &node,
        &auth,
        &message(
            "COMPUTE",
            &compute_value(&node, new_compute_id(), &random_sign(), None, vec![big_dep]),
        ),
    );
    node.ensure(
        !o.accepted_compute(),
        &format!("COMPUTE with a 20000-byte depends: {o:?}"),
    );
    let c = register(&node, &auth, Some("hostile_sizes"));
    let dir = node.computations_dir().join("hostile_sizes");
    // Over the limit: refused before any data.
    let r = filexfer(
        &node,
        &auth,
        &xfer_value("/client/big.bin", "", 20_000, c.id),
        &[7; 20_000],
    );
    node.ensure(matches!(r, Ok(-1)), &format!("20000-byte FILEXFER: {r:?}"));
    // u64::MAX bytes announced (as i64 -1 in the stat tuple would not parse: use 2^62).
    let r = filexfer(
        &node,
        &auth,
        &xfer_value("/client/huge.bin", "", 1 << 62, c.id),
        b"x",
    );
    node.ensure(matches!(r, Ok(-1)), &format!("2^62-byte FILEXFER: {r:?}"));
    // Within the limit, but the client sends only part of it and goes away.
    let mut s = connect(&node);
    s.write_all(
        &[
            &auth[..],
            &framed(&message(
                "FILEXFER",
                &xfer_value("/client/cut.bin", "", 5000, c.id),
            )),
        ]
        .concat(),
    )
    .expect("send");
    let first = read_outcome(&mut s, IO);
    node.ensure(
        first.value() == Some(Value::Int(0)),
        &format!("first ack: {first:?}"),
    );
    s.write_all(&[1; 100]).expect("send part");
    drop(s);
    // Within the limit, complete.
    let r = filexfer(
        &node,
        &auth,
        &xfer_value("/client/ok.bin", "", 5000, c.id),
        &[9; 5000],
    );
    node.ensure(matches!(r, Ok(5000)), &format!("5000-byte FILEXFER: {r:?}"));
    thread::sleep(Duration::from_millis(300));
    // (`.tmp` is the jobs' TMPDIR, which the node makes in every computation directory.)
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".tmp")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    node.ensure(
        names == ["ok.bin"],
        &format!("files in {} after the transfers: {names:?}", dir.display()),
    );
    node.ensure(
        std::fs::metadata(dir.join("ok.bin")).map(|m| m.len()).ok() == Some(5000),
        "ok.bin does not have its 5000 bytes",
    );
    close(&node, &auth, &c);
    normal_job_and_finish(&mut node, &base, "max-file-size");
}

/// Depth of the directory trees below: deep enough that a recursive removal overflows a
/// 2 MiB thread stack (tokio's default), far below what the filesystem allows.
const DEEP: usize = 3000;

/// Removes a directory with `rm -rf` when dropped (declare it after the Node, so it runs
/// first): the TempDir holding the node's prefix is removed with std's recursive
/// `remove_dir_all`, which overflows the test's own stack on the trees these tests make.
struct RmRf(std::path::PathBuf);

impl Drop for RmRf {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&self.0)
            .stdin(std::process::Stdio::null())
            .status();
    }
}

/// A FILEXFER whose dest_path has 20000 components: the node either refuses it or creates
/// the tree, and then it must survive removing that tree when the computation closes.
#[test]
fn deep_tree_from_filexfer_then_close() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let _rm = RmRf(node.computations_dir());
    let auth = node_auth(&node, "");
    let c = register(&node, &auth, Some("hostile_deep_xfer"));
    let dest = vec!["d"; DEEP].join("/");
    let t0 = Instant::now();
    let r = filexfer(
        &node,
        &auth,
        &xfer_value("/client/deep.txt", &dest, 4, c.id),
        b"deep",
    );
    eprintln!(
        "FILEXFER with {DEEP} components: {r:?} after {:?}",
        t0.elapsed()
    );
    node.assert_alive();
    // CLOSE removes the computation directory (cleanup=True) with the tree in it.
    let o = request(&node, &auth, &message("CLOSE", &close_value(c.id, &c.auth)));
    thread::sleep(Duration::from_millis(500));
    node.assert_alive();
    node.ensure(
        o == Outcome::Reply(b"ACK".to_vec()),
        &format!("CLOSE not acknowledged: {o:?}"),
    );
    let dir = node.computations_dir().join("hostile_deep_xfer");
    node.ensure(
        !dir.exists(),
        &format!("{} still exists after close", dir.display()),
    );
    normal_job_and_finish(&mut node, &base, "deep-xfer");
}

/// A job writes forged `started`/`done` messages for every job id it can guess into every
/// pipe it holds (its worker's stream to the daemon among them): a job of another computation
/// of the same client still gets its own result, and the node its normal job. The forged
/// `done`s say "job killed: ...", what the client sees of a job the node killed for a limit:
/// the node's log must not take them for one (an operator reads that line).
#[test]
fn job_forging_worker_events() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let run = run_against(&node, "hostile_forge", &[]);
    node.assert_alive();
    run.assert_checks(
        &node,
        &[
            "victim_running",
            "forger_replied",
            "victim_replied",
            "victim_result",
            "closed",
        ],
    );
    // The forger's own job got one of its forged dones: the node took a "job killed" done.
    node.ensure(
        run.stdout.contains("INFO forger=Terminated(9) 'forged'"),
        &format!("the forger's own done was not taken: {}", run.stdout),
    );
    let log = node.log();
    node.ensure(
        !log.contains("killed by a limit") && !log.contains("killed=1"),
        "a forged done was logged as a job killed for a limit",
    );
    normal_job_and_finish(&mut node, &base, "forge");
}

/// A job writes a frame header announcing 4 GiB into its worker's stream to the daemon. The
/// node stops that worker (logged as an error) instead of reading on a broken stream while
/// the worker starts jobs nobody hears of: the jobs end Terminated, the close is answered,
/// and the node is free for the next client (it used to stay taken until restarted).
#[test]
fn job_breaking_its_workers_stream_stops_the_worker() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let run = run_against(&node, "hostile_bad_frame", &[]);
    node.assert_alive();
    run.assert_checks(
        &node,
        &["breaker_terminated", "next_job_terminated", "closed"],
    );
    node.ensure(
        node.log()
            .contains("the computation's Python worker is gone"),
        "no error logged for the stopped worker",
    );
    normal_job_and_finish(&mut node, &base, "bad-frame");
}

/// A job (cleanup=True) leaves a 20000-deep directory tree in its computation directory;
/// the node removes the directory at close and must survive it.
#[test]
fn deep_tree_made_by_a_job_then_close() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let _rm = RmRf(node.computations_dir());
    let depth = DEEP.to_string();
    let run = run_against(&node, "hostile_deep", &[&depth]);
    thread::sleep(Duration::from_millis(500));
    node.assert_alive();
    run.assert_checks(&node, &["replied", "finished", "closed"]);
    if let Some(dir) = run.info("dest_dir") {
        node.ensure(
            !Path::new(&dir).exists(),
            &format!("{dir} still exists after close"),
        );
    }
    normal_job_and_finish(&mut node, &base, "deep-job");
}

/// 500 idle connections at once: a normal job still runs while they are open, the node drops
/// them after msg_timeout, and its descriptors go back down.
#[test]
fn five_hundred_idle_connections() {
    let Some((mut node, base)) = start(&["--msg_timeout", "2"]) else {
        return;
    };
    let fds0 = fd_count(base.pid);
    let idle: Vec<TcpStream> = (0..500).map(|_| connect(&node)).collect();
    let t0 = Instant::now();
    normal_job(&node, "idle");
    eprintln!(
        "the normal job took {:?} next to 500 idle connections",
        t0.elapsed()
    );
    // All of them are dropped by the node (EOF on our side), within msg_timeout and a margin
    // (they were accepted while the job ran, at most MAX_CONNECTIONS at a time).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut open = idle;
    for s in &open {
        s.set_nonblocking(true).expect("nonblocking");
    }
    while !open.is_empty() && Instant::now() < deadline {
        let mut b = [0u8; 16];
        // Still open while a read would block; EOF, data or an error end it.
        open.retain_mut(
            |s| matches!(s.read(&mut b), Err(ref e) if e.kind() == ErrorKind::WouldBlock),
        );
        thread::sleep(Duration::from_millis(200));
    }
    node.ensure(
        open.is_empty(),
        &format!("{} idle connections still open after 30 s", open.len()),
    );
    // And the daemon's descriptors go back to where they were.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fds = fd_count(base.pid);
    while fds > fds0 + 16 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        fds = fd_count(base.pid);
    }
    node.ensure(
        fds <= fds0 + 16,
        &format!("the daemon holds {fds} descriptors, {fds0} before the idle connections"),
    );
    finish(&mut node, &base);
}

/// Authenticated requests of 250 MiB on eight connections at once (2 GiB): the node holds at
/// most its request budget (a quarter of the host's memory, at most 1 GiB) of such bodies at a
/// time, the others wait for room, and every one is answered.
#[test]
fn large_requests_at_once_stay_within_the_budget() {
    // Long enough for the requests that wait for room (msg_timeout bounds that wait).
    let Some((mut node, base)) = start(&["--msg_timeout", "20"]) else {
        return;
    };
    let auth = node_auth(&node, "");
    const EACH: usize = 250 << 20;
    const N: usize = 8;
    // A JOB whose pickle is garbage: read whole, then refused ("Invalid job").
    let mut body = b"JOB:".to_vec();
    body.resize(EACH, b'x');
    let data = Arc::new([auth.as_slice(), &framed(&body)].concat());
    drop(body);
    // All but the last byte first, so that without a budget the node would hold all six
    // bodies at once; the last bytes go once the node had time to read what it may.
    let go = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let (data, go) = (data.clone(), go.clone());
            let mut s = connect(&node);
            thread::spawn(move || {
                let (most, last) = data.split_at(data.len() - 1);
                let _ = s.write_all(most);
                while !go.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(10));
                }
                let _ = s.write_all(last);
                read_outcome(&mut s, Duration::from_secs(60))
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(6));
    go.store(true, Ordering::SeqCst);
    let outcomes: Vec<Outcome> = threads
        .into_iter()
        .map(|t| t.join().expect("sender"))
        .collect();
    node.ensure(
        outcomes.iter().all(|o| matches!(o, Outcome::Reply(_))),
        &format!(
            "each large request gets its answer: {:?}",
            outcomes
                .iter()
                .map(|o| match o {
                    Outcome::Reply(b) =>
                        format!("reply {:?}", String::from_utf8_lossy(&b[..b.len().min(40)])),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
        ),
    );
    let growth = base.hwm_growth();
    eprintln!(
        "daemon peak RSS grew by {:.0} MiB for {N} x 250 MiB",
        mib(growth)
    );
    node.ensure(
        growth < (1 << 30) + (128 << 20),
        &format!(
            "the daemon's peak RSS grew by {:.0} MiB for {N} requests of 250 MiB at once (budget \
             at most 1024 MiB)",
            mib(growth)
        ),
    );
    normal_job_and_finish(&mut node, &base, "budget");
}

/// Idle connections from one source that never send the auth prefix (slowloris): the node keeps
/// at most MAX_UNAUTH_PER_SOURCE of them, closing the oldest as newer ones come, so one peer
/// without the secret cannot hold the node's connection slots; a real client, which sends its
/// prefix at once, is served meanwhile, also from the same address (five_hundred_idle_connections).
#[test]
fn idle_connections_from_one_source_are_capped() {
    let Some((mut node, base)) = start(&["--msg_timeout", "20"]) else {
        return;
    };
    const N: usize = 400;
    let from = SocketAddr::from(([127, 0, 0, 2], 0));
    let open_from = |src: SocketAddr| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.bind(&src.into()).expect("bind 127.0.0.2");
        s.connect_timeout(&node_addr(&node).into(), Duration::from_secs(5))
            .expect("connect");
        TcpStream::from(s)
    };
    let mut idle: Vec<TcpStream> = (0..N).map(|_| open_from(from)).collect();
    for s in &idle {
        s.set_nonblocking(true).expect("nonblocking");
    }
    // The node accepts them all at once (far below MAX_CONNECTIONS) and closes the oldest.
    let deadline = Instant::now() + Duration::from_secs(10);
    let still_open = |idle: &mut Vec<TcpStream>| {
        let mut b = [0u8; 16];
        idle.retain_mut(
            |s| matches!(s.read(&mut b), Err(ref e) if e.kind() == ErrorKind::WouldBlock),
        );
        idle.len()
    };
    while still_open(&mut idle) > MAX_UNAUTH_PER_SOURCE && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    node.ensure(
        idle.len() == MAX_UNAUTH_PER_SOURCE,
        &format!(
            "{} of {N} idle connections from one source still open (want {MAX_UNAUTH_PER_SOURCE}, \
             msg_timeout is 20 s)",
            idle.len()
        ),
    );
    node.ensure(
        node.log()
            .contains("closed the oldest connection still waiting for its auth prefix"),
        "the log says why connections were closed",
    );
    // The newest are the ones kept: a real client is served while they are open.
    let t0 = Instant::now();
    normal_job(&node, "slowloris");
    eprintln!(
        "the normal job took {:?} next to {} idle connections",
        t0.elapsed(),
        idle.len()
    );
    drop(idle);
    finish(&mut node, &base);
}

/// UDP garbage and forged PINGs: the node keeps answering real PINGs, executes nothing, and
/// sends at most MAX_PONG_TARGETS PONGs for a PING that lists many addresses.
#[test]
fn udp_garbage_and_forged_pings() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let node_udp = node_addr(&node);
    let u = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut rng = rand::thread_rng();
    let marker = Path::new("/tmp/dispynode-hostile-udp-pwned");
    let _ = std::fs::remove_file(marker);
    let evil = b"PING:cos\nsystem\n(S'touch /tmp/dispynode-hostile-udp-pwned'\ntR.".to_vec();
    let mut junk: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"PING:".to_vec(),
        b"PING:\x80\x04N.".to_vec(),
        evil,
        [b"PING:".as_slice(), &laughs(30, 3)].concat(),
        [b"PING:".as_slice(), P4, &[0x85; 900], b"."].concat(),
        [b"PING:".as_slice(), &memo_repeat(900, 40)].concat(),
        message(
            "PING",
            &Value::str_dict([("version", Value::Str("4.15.2".into()))]),
        ),
        message("PING", &ping_value("s", 0, &[])),
        message("PING", &Value::List(vec![Value::Int(1); 60])),
        b"TERMINATED:junk".to_vec(),
        b"PULSE:\x80\x04N.".to_vec(),
    ];
    for _ in 0..300 {
        let len = rng.gen_range(0..1500);
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        if rng.gen_bool(0.3) {
            d.splice(0..0, b"PING:".iter().copied());
        }
        junk.push(d);
    }
    junk.push(vec![b'P'; 65_000]);
    for d in &junk {
        let _ = u.send_to(d, node_udp);
    }
    thread::sleep(Duration::from_millis(500));
    node.assert_alive();
    node.ensure(
        !marker.exists(),
        "the daemon executed a UDP PING's os.system",
    );

    // Forged PINGs listing many addresses: PONGs go to at most MAX_PONG_TARGETS of them.
    // Listeners on 127.0.0.2..=127.0.0.101, all on the same port.
    let probe = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let port = probe.local_addr().expect("addr").port();
    let mut listeners = vec![probe];
    for i in 3..=101 {
        listeners.push(
            TcpListener::bind(format!("127.0.0.{i}:{port}"))
                .unwrap_or_else(|e| panic!("bind 127.0.0.{i}:{port}: {e}")),
        );
    }
    let addrs: Vec<String> = (2..=101).map(|i| format!("127.0.0.{i}")).collect();
    let count_pongs = |listeners: &[TcpListener], wait: Duration| -> (usize, HashSet<String>) {
        let deadline = Instant::now() + wait;
        let mut n = 0;
        let mut to = HashSet::new();
        for l in listeners {
            l.set_nonblocking(true).expect("nonblocking");
        }
        while Instant::now() < deadline {
            for l in listeners {
                while let Ok((mut s, _)) = l.accept() {
                    s.set_nonblocking(false).expect("blocking");
                    if let Outcome::Reply(b) = read_outcome(&mut s, Duration::from_secs(5)) {
                        assert!(
                            b.starts_with(b"PONG:"),
                            "not a PONG: {:?}",
                            String::from_utf8_lossy(&b)
                        );
                    }
                    n += 1;
                    to.insert(l.local_addr().expect("addr").ip().to_string());
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        (n, to)
    };
    // 60 addresses (a PING's list may hold 64 under the unauthenticated pickle limits), by
    // UDP and by TCP; then 100 addresses, more than the limits let through at all.
    for (what, list) in [("60", &addrs[..60]), ("100", &addrs[..])] {
        let ping = message("PING", &ping_value(&random_sign(), port, list));
        let _ = u.send_to(&ping, node_udp);
        let (n, to) = count_pongs(&listeners, Duration::from_secs(3));
        node.ensure(
            n <= MAX_PONG_TARGETS,
            &format!(
                "a UDP PING listing {what} addresses made the node connect {n} times ({to:?})"
            ),
        );
        if what == "60" {
            node.ensure(
                n >= 1,
                "no PONG at all to a well-formed UDP PING listing 60 addresses",
            );
        }
        let mut s = connect(&node);
        let _ = s.write_all(&[&[b'x'; AUTH_LEN][..], &framed(&ping)].concat());
        drop(s);
        let (n, to) = count_pongs(&listeners, Duration::from_secs(3));
        node.ensure(
            n <= MAX_PONG_TARGETS,
            &format!(
                "a TCP PING listing {what} addresses made the node connect {n} times ({to:?})"
            ),
        );
    }
    // The same address 60 times: one PONG.
    let same: Vec<String> = vec!["127.0.0.2".into(); 60];
    let _ = u.send_to(
        &message("PING", &ping_value(&random_sign(), port, &same)),
        node_udp,
    );
    let (n, _) = count_pongs(&listeners, Duration::from_secs(3));
    node.ensure(n <= 1, &format!("60 copies of one address: {n} PONGs"));
    drop(listeners);
    // Real discovery still works, and so does a job.
    node_auth(&node, "");
    normal_job_and_finish(&mut node, &base, "udp");
}

/// A flood of forged UDP PINGs whose addresses never answer (connects hang): each PING
/// costs the node up to MAX_PONG_TARGETS outgoing connections for up to msg_timeout, and the
/// total must stay bounded too, or a few thousand spoofable datagrams exhaust its
/// descriptors.
#[test]
fn forged_ping_flood_keeps_descriptors_bounded() {
    let Some((mut node, base)) = start(&[]) else {
        return;
    };
    let fds0 = fd_count(base.pid);
    // Listeners that never accept, with the smallest backlog, on 127.0.0.2..=5 and one port:
    // once their backlog is full, connects to them hang (SYNs are dropped) until the node's
    // msg_timeout (5 s).
    let sink = |ip: &str, port: u16| -> TcpListener {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let a: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
        s.bind(&a.into())
            .unwrap_or_else(|e| panic!("bind {a}: {e}"));
        s.listen(0).expect("listen");
        s.into()
    };
    let first = sink("127.0.0.2", 0);
    let port = first.local_addr().expect("addr").port();
    let mut sinks = vec![first];
    for i in 3..=5 {
        sinks.push(sink(&format!("127.0.0.{i}"), port));
    }
    let targets: Vec<String> = (2..=5).map(|i| format!("127.0.0.{i}")).collect();
    let u = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let peak = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), base.pid);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(fd_count(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let t0 = Instant::now();
    let mut sent = 0;
    for i in 0..3000 {
        let ping = message("PING", &ping_value(&random_sign(), port, &targets));
        if u.send_to(&ping, node_addr(&node)).is_ok() {
            sent += 1;
        }
        if i % 200 == 199 {
            thread::sleep(Duration::from_millis(10));
        }
    }
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "{sent} forged PINGs in {:?}: the daemon's descriptors went from {fds0} to a peak of {peak}",
        t0.elapsed()
    );
    drop(sinks);
    // Let the hanging connects time out before the normal job.
    thread::sleep(Duration::from_secs(6));
    normal_job_and_finish(&mut node, &base, "ping-flood");
    node.ensure(
        peak <= fds0 + 1024,
        &format!(
            "a flood of forged PINGs made the daemon hold {peak} descriptors at once ({fds0} before): \
             outgoing PONG connections are not bounded in number"
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// Property tests: message-level encode/decode round trips, framing
// ---------------------------------------------------------------------------------------------

mod props {
    use super::*;
    use dispynode::protocol::frame::{split, split_tag, FrameError, HEADER_LEN};
    use dispynode::protocol::message::{
        program_args, status, Cleanup, Compute, ComputeKind, ComputeRequest, Job, JobReply, Output,
        Ping, Pong, XferFile,
    };
    use dispynode::store;
    use proptest::prelude::*;

    fn finite() -> impl Strategy<Value = f64> {
        any::<f64>().prop_filter("finite", |f| f.is_finite())
    }

    fn output() -> impl Strategy<Value = Output> {
        prop_oneof![
            Just(Output::None),
            any::<String>().prop_map(Output::Text),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Output::Bytes),
        ]
    }

    prop_compose! {
        fn job_reply()(
            uid in any::<i64>(),
            hash in "[0-9a-f]{0,20}",
            ip_addr in "[0-9.:a-f]{0,39}",
            status in prop_oneof![Just(status::RUNNING), Just(status::PROVISIONAL),
                                  Just(status::TERMINATED), Just(status::FINISHED), any::<i64>()],
            result in prop::collection::vec(any::<u8>(), 0..200),
            stdout in output(),
            stderr in output(),
            exception in prop::option::of(any::<String>()),
            start_time in finite(),
            end_time in finite(),
        ) -> JobReply {
            JobReply { uid, hash, ip_addr, status, result, stdout, stderr, exception, start_time, end_time }
        }
    }

    /// A path a client may name: components, `.`, `..`, separators, absolute forms.
    fn client_path() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                "[a-z0-9_]{1,6}",
                Just(".".to_string()),
                Just("..".to_string()),
                Just("".to_string()),
                Just("C:".to_string()),
                "[\\\\/.\\x00 ]{1,3}",
            ],
            0..6,
        )
        .prop_flat_map(|parts| {
            prop_oneof![Just("/"), Just("\\"), Just("")].prop_map(move |lead| {
                let body = parts.join("/");
                format!("{lead}{body}")
            })
        })
    }

    fn xfer_of(
        name: String,
        dest_path: String,
        sep: String,
        size: u64,
        mode: u32,
        mtime: f64,
    ) -> Value {
        Value::object(
            "dispy",
            "_XferFile",
            Value::str_dict([
                ("name", Value::Str(name)),
                ("dest_path", Value::Str(dest_path)),
                ("compute_id", Value::Int(7)),
                (
                    "stat_buf",
                    Value::Reduce {
                        callable: Box::new(Value::global("os", "stat_result")),
                        args: Box::new(Value::Tuple(vec![
                            Value::Tuple(vec![
                                Value::Int(i64::from(mode)),
                                Value::Int(1),
                                Value::Int(2),
                                Value::Int(1),
                                Value::Int(0),
                                Value::Int(0),
                                Value::Int(size as i64),
                                Value::Int(mtime as i64),
                                Value::Int(mtime as i64),
                                Value::Int(mtime as i64),
                            ]),
                            Value::str_dict([
                                ("st_atime", Value::Float(mtime)),
                                ("st_mtime", Value::Float(mtime)),
                            ]),
                        ])),
                    },
                ),
                ("sep", Value::Str(sep)),
            ]),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// JobReply: to_value -> encode -> decode -> from_value is the identity.
        #[test]
        fn job_reply_round_trip(r in job_reply()) {
            let bytes = pickle::encode(&r.to_value());
            let back = JobReply::from_value(&pickle::decode(&bytes).unwrap()).unwrap();
            prop_assert_eq!(&back, &r);
            let msg = r.encode_message();
            prop_assert!(msg.starts_with(b"JOB_REPLY:"));
            let again = JobReply::from_value(&pickle::decode(&msg[10..]).unwrap()).unwrap();
            prop_assert_eq!(again, r);
        }

        /// A `_Compute` as the client pickles it decodes to its fields.
        #[test]
        fn compute_round_trip(
            id in any::<i64>(),
            prog in any::<bool>(),
            name in "[a-z_/.]{1,12}",
            code in any::<String>(),
            dest_path in prop::option::of("[a-z0-9_/.]{0,20}"),
            setup in prop::option::of("[a-z_]{1,8}"),
            cleanup in prop_oneof![any::<bool>().prop_map(Cleanup::Flag), "[a-z_]{1,8}".prop_map(Cleanup::Function)],
            sched_port in any::<u16>(),
            result_port in any::<u16>(),
            pulse in prop::option::of(finite()),
            reply_addr in prop::option::of(("[0-9.]{7,15}", any::<u16>())),
            nfiles in 0usize..4,
        ) {
            let files: Vec<Value> = (0..nfiles)
                .map(|i| xfer_of(format!("/c/f{i}.txt"), format!("d{i}"), "/".into(), i as u64 * 10, 0o100644, 1.5))
                .collect();
            let v = Value::object("dispy", "_Compute", Value::str_dict([
                ("type", Value::Int(if prog { 2 } else { 1 })),
                ("name", Value::Str(name.clone())),
                ("id", Value::Int(id)),
                ("code", Value::Str(code.clone())),
                ("dest_path", dest_path.clone().map_or(Value::None, Value::Str)),
                ("xfer_files", Value::List(files)),
                ("reentrant", Value::Bool(false)),
                ("exclusive", Value::Bool(true)),
                ("setup", setup.clone().map_or(Value::None, Value::Str)),
                ("cleanup", match &cleanup { Cleanup::Flag(b) => Value::Bool(*b), Cleanup::Function(f) => Value::Str(f.clone()) }),
                ("setup_args_count", Value::Int(0)),
                ("scheduler_ip_addr", Value::Str("10.0.0.1".into())),
                ("scheduler_port", Value::Int(i64::from(sched_port))),
                ("node_ip_addr", Value::Str("10.0.0.2".into())),
                ("auth", Value::Str("abc".into())),
                ("job_result_port", Value::Int(i64::from(result_port))),
                ("pulse_interval", pulse.map_or(Value::None, Value::Float)),
                ("client_reply_addr", reply_addr.clone().map_or(Value::None, |(ip, p)| Value::Tuple(vec![Value::Str(ip), Value::Int(i64::from(p))]))),
            ]));
            let c = Compute::from_value(&pickle::decode(&pickle::encode(&v)).unwrap()).unwrap();
            prop_assert_eq!(c.kind, if prog { ComputeKind::Program } else { ComputeKind::Function });
            prop_assert_eq!(c.id, id);
            prop_assert_eq!(&c.name, &name);
            prop_assert_eq!(&c.code, &code);
            prop_assert_eq!(&c.dest_path, &dest_path);
            prop_assert_eq!(&c.setup, &setup);
            prop_assert_eq!(&c.cleanup, &cleanup);
            prop_assert_eq!((c.scheduler_port, c.job_result_port), (sched_port, result_port));
            prop_assert_eq!(c.pulse_interval, pulse);
            prop_assert_eq!(c.client_reply_addr, reply_addr);
            prop_assert_eq!(c.xfer_files.len(), nfiles);
            for (i, xf) in c.xfer_files.iter().enumerate() {
                prop_assert_eq!(xf.base_name(), format!("f{i}.txt"));
                prop_assert_eq!(xf.size, i as u64 * 10);
            }
        }

        /// `_XferFile` with os.stat_result: names, sizes, modes and times survive; the
        /// node's view of the target path never leaves the computation directory.
        #[test]
        fn xfer_file_round_trip(
            name in client_path(),
            dest_path in client_path(),
            sep in prop_oneof![Just("/".to_string()), Just("\\".to_string())],
            size in 0u64..(1 << 50),
            mode in any::<u32>(),
            mtime in 0f64..4e9,
        ) {
            let v = xfer_of(name.clone(), dest_path.clone(), sep.clone(), size, mode, mtime);
            let xf = XferFile::from_value(&pickle::decode(&pickle::encode(&v)).unwrap()).unwrap();
            prop_assert_eq!(&xf.name, &name);
            prop_assert_eq!(&xf.dest_path, &dest_path);
            prop_assert_eq!(&xf.sep, &sep);
            prop_assert_eq!((xf.size, xf.mode), (size, mode));
            prop_assert_eq!(xf.mtime, mtime);
            if let Ok(comps) = store::relative_components(&xf.dest_path, &xf.sep) {
                let mut p = std::path::PathBuf::from("/root");
                for c in &comps {
                    prop_assert!(store::check_component(c).is_ok(), "bad component {:?}", c);
                    p.push(c);
                }
                if store::check_component(xf.base_name()).is_ok() {
                    p.push(xf.base_name());
                }
                prop_assert!(
                    p.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_))),
                    "{:?} {:?} -> {}", dest_path, name, p.display()
                );
                prop_assert!(p.starts_with("/root"));
            }
        }

        /// `_DispyJob_`: identity, opaque argument bytes, and program arguments.
        #[test]
        fn job_round_trip(
            uid in any::<i64>(),
            compute_id in any::<i64>(),
            hash in "[0-9a-f]{0,20}",
            args in prop::collection::vec(any::<String>(), 0..5),
            kwargs in prop::collection::vec(any::<u8>(), 0..50),
            code in any::<String>(),
        ) {
            let pickled_args = pickle::encode(&Value::List(args.iter().cloned().map(Value::Str).collect()));
            let v = Value::object("dispy", "_DispyJob_", Value::str_dict([
                ("uid", Value::Int(uid)),
                ("hash", Value::Str(hash.clone())),
                ("compute_id", Value::Int(compute_id)),
                ("_args", Value::Bytes(pickled_args.clone())),
                ("_kwargs", Value::Bytes(kwargs.clone())),
                ("xfer_files", Value::List(vec![])),
                ("code", Value::Str(code.clone())),
            ]));
            let decoded = pickle::decode(&pickle::encode(&v)).unwrap();
            let j = Job::from_value(&decoded).unwrap();
            prop_assert_eq!(Job::ident_from_value(&decoded).unwrap(), (uid, compute_id));
            prop_assert_eq!((j.uid, j.compute_id, &j.hash, &j.code), (uid, compute_id, &hash, &code));
            prop_assert_eq!(&j.args, &pickled_args);
            prop_assert_eq!(&j.kwargs, &kwargs);
            prop_assert_eq!(program_args(&j.args).unwrap(), args);
        }

        /// PING dicts (client, relayed) and the node's PONG.
        #[test]
        fn ping_and_pong_round_trip(
            sign in prop::option::of("[0-9a-f]{40}"),
            port in any::<u16>(),
            addrs in prop::collection::vec("[0-9.]{7,15}", 0..10),
            relay in any::<bool>(),
            cpus in 0usize..1024,
            name in any::<String>(),
        ) {
            let mut entries = vec![
                ("version", Value::Str("4.15.2".into())),
                ("sign", sign.clone().map_or(Value::None, Value::Str)),
                ("port", Value::Int(i64::from(port))),
                ("ip_addrs", Value::List(addrs.iter().cloned().map(Value::Str).collect())),
            ];
            if relay {
                entries.push(("relay", Value::Str("y".into())));
            }
            let body = pickle::encode(&Value::str_dict(entries));
            let p = Ping::from_value(&pickle::decode_with(&body, &dispynode::limits::ping_limits()).unwrap()).unwrap();
            prop_assert_eq!(p.sign, sign);
            prop_assert_eq!(p.port, port);
            prop_assert_eq!(p.ip_addrs, addrs);
            prop_assert_eq!(p.relay, relay);
            let auth = auth::auth_code("s", "x");
            let pong = Pong { port, sign: "abc", name: &name, cpus, platform: "Linux", auth: &auth,
                              ip_addr: "10.0.0.2", scheduler_ip_addr: "10.0.0.1" }.encode();
            let v = pickle::decode(pong.strip_prefix(b"PONG:".as_slice()).unwrap()).unwrap();
            prop_assert_eq!(v.get("name").and_then(Value::as_str), Some(name.as_str()));
            prop_assert_eq!(v.get("cpus").and_then(Value::as_int), Some(cpus as i64));
            prop_assert_eq!(v.get("port").and_then(Value::as_int), Some(i64::from(port)));
            prop_assert_eq!(v.get("auth").and_then(Value::as_bytes), Some(auth.as_slice()));
        }

        /// SETUP/CLOSE/JOBS dicts.
        #[test]
        fn compute_request_round_trip(
            compute_id in any::<i64>(),
            auth_s in prop::option::of("[0-9a-f]{40}"),
            terminate_pending in any::<bool>(),
            close in any::<bool>(),
            uid in prop::option::of(any::<i64>()),
        ) {
            let mut entries = vec![
                ("compute_id", Value::Int(compute_id)),
                ("auth", auth_s.clone().map_or(Value::None, Value::Str)),
                ("node_ip_addr", Value::Str("10.0.0.2".into())),
                ("terminate_pending", Value::Bool(terminate_pending)),
                ("close", Value::Bool(close)),
                ("setup_args", Value::Tuple(vec![])),
            ];
            if let Some(u) = uid {
                entries.push(("uid", Value::Int(u)));
            }
            let v = pickle::decode(&pickle::encode(&Value::str_dict(entries))).unwrap();
            prop_assert!(ComputeRequest::setup_args_ok(&v));
            let r = ComputeRequest::from_value(&v).unwrap();
            prop_assert_eq!(r.compute_id, compute_id);
            prop_assert_eq!(r.auth, auth_s);
            prop_assert_eq!((r.terminate_pending, r.close, r.uid), (terminate_pending, close, uid));
        }

        /// frame::encode / split: a frame comes back whole with the rest untouched, under the
        /// limit; over it it is TooLarge, and any cut of it is Truncated.
        #[test]
        fn frame_encode_split(
            payload in prop::collection::vec(any::<u8>(), 0..2000),
            rest in prop::collection::vec(any::<u8>(), 0..50),
            limit in 0u64..3000,
            cut in any::<prop::sample::Index>(),
        ) {
            let f = frame::encode(&payload).unwrap();
            prop_assert_eq!(f.len(), HEADER_LEN + payload.len());
            let buf = [f.as_slice(), &rest].concat();
            match split(&buf, limit) {
                Ok((p, r)) => {
                    prop_assert!(payload.len() as u64 <= limit);
                    prop_assert_eq!(p, payload.as_slice());
                    prop_assert_eq!(r, rest.as_slice());
                }
                Err(FrameError::TooLarge { len, .. }) => {
                    prop_assert!(payload.len() as u64 > limit);
                    prop_assert_eq!(len, payload.len() as u64);
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
            let at = cut.index(f.len());
            let truncated = matches!(split(&f[..at], u64::MAX), Err(FrameError::Truncated { .. }));
            prop_assert!(truncated, "a frame cut at {} of {} bytes", at, f.len());
        }

        /// split_tag takes the tag off `TAG:body` and leaves bare tokens whole.
        #[test]
        fn tags(tag in "[A-Z_]{1,20}", body in prop::collection::vec(any::<u8>(), 0..100)) {
            let payload = [tag.as_bytes(), b":", &body].concat();
            prop_assert_eq!(split_tag(&payload), (tag.as_bytes(), body.as_slice()));
            prop_assert_eq!(split_tag(tag.as_bytes()), (tag.as_bytes(), &b""[..]));
        }
    }
}
