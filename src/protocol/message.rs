//! Typed requests and replies of the node protocol, converted from and to pickle `Value`s.
//! Pure: no I/O. Field names and shapes follow dispy-protocol.md §1.5 and §2.

use thiserror::Error;

use super::pickle::{self, PickleError, Value};

/// The dispy release line whose clients we serve; PINGs of other versions are ignored (G1).
pub const VERSION: &str = "4.15.2";
/// Accept PINGs of the whole 4.15 line.
pub fn version_accepted(v: &str) -> bool {
    v == "4.15" || v.starts_with("4.15.")
}

/// DispyJob statuses a node sends (§3.5).
pub mod status {
    pub const RUNNING: i64 = 6;
    pub const PROVISIONAL: i64 = 7;
    pub const TERMINATED: i64 = 9;
    pub const FINISHED: i64 = 11;
}

#[derive(Debug, Error)]
pub enum MessageError {
    #[error("bad pickle: {0}")]
    Pickle(#[from] PickleError),
    #[error("missing or invalid field {0:?}")]
    Field(&'static str),
    #[error("expected a {0} object")]
    Class(&'static str),
}

fn field<'a>(v: &'a Value, key: &'static str) -> Result<&'a Value, MessageError> {
    v.get(key).ok_or(MessageError::Field(key))
}
fn str_field(v: &Value, key: &'static str) -> Result<String, MessageError> {
    field(v, key)?
        .as_str()
        .map(str::to_owned)
        .ok_or(MessageError::Field(key))
}
fn opt_str_field(v: &Value, key: &'static str) -> Result<Option<String>, MessageError> {
    match v.get(key) {
        None | Some(Value::None) => Ok(None),
        Some(x) => x
            .as_str()
            .map(|s| Some(s.to_owned()))
            .ok_or(MessageError::Field(key)),
    }
}
fn int_field(v: &Value, key: &'static str) -> Result<i64, MessageError> {
    field(v, key)?.as_int().ok_or(MessageError::Field(key))
}
fn port_field(v: &Value, key: &'static str) -> Result<u16, MessageError> {
    u16::try_from(int_field(v, key)?).map_err(|_| MessageError::Field(key))
}
fn bytes_field(v: &Value, key: &'static str) -> Result<Vec<u8>, MessageError> {
    field(v, key)?
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or(MessageError::Field(key))
}
fn class_is(v: &Value, module: &str, name: &'static str) -> Result<(), MessageError> {
    match v.class_name() {
        Some((m, n)) if m == module && n == name => Ok(()),
        _ => Err(MessageError::Class(name)),
    }
}

/// A client's discovery PING (UDP or TCP).
#[derive(Debug, Clone, PartialEq)]
pub struct Ping {
    pub version: String,
    /// None for relayed pings (dispynetrelay), which get a PING back instead of a PONG.
    pub sign: Option<String>,
    pub port: u16,
    pub ip_addrs: Vec<String>,
    pub relay: bool,
}

impl Ping {
    pub fn from_value(v: &Value) -> Result<Self, MessageError> {
        let ip_addrs = match v.get("ip_addrs") {
            Some(x) => x
                .as_seq()
                .ok_or(MessageError::Field("ip_addrs"))?
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            None => Vec::new(),
        };
        Ok(Ping {
            version: str_field(v, "version")?,
            sign: opt_str_field(v, "sign")?,
            port: port_field(v, "port")?,
            ip_addrs,
            relay: v.get("relay").is_some_and(|r| !r.is_none()),
        })
    }
}

/// The PONG dict, with the key order of the capture.
#[derive(Debug, Clone)]
pub struct Pong<'a> {
    pub port: u16,
    pub sign: &'a str,
    pub name: &'a str,
    pub cpus: usize,
    pub platform: &'a str,
    pub auth: &'a [u8],
    pub ip_addr: &'a str,
    pub scheduler_ip_addr: &'a str,
}

impl Pong<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let v = Value::str_dict([
            ("port", Value::Int(i64::from(self.port))),
            ("sign", Value::Str(self.sign.to_owned())),
            ("version", Value::Str(VERSION.to_owned())),
            ("name", Value::Str(self.name.to_owned())),
            ("cpus", Value::Int(self.cpus as i64)),
            ("platform", Value::Str(self.platform.to_owned())),
            // Bytes, not str: the client compares with == against bytes (G2).
            ("auth", Value::Bytes(self.auth.to_vec())),
            ("avail_info", Value::None),
            ("ip_addr", Value::Str(self.ip_addr.to_owned())),
            (
                "scheduler_ip_addr",
                Value::Str(self.scheduler_ip_addr.to_owned()),
            ),
        ]);
        tagged(b"PONG:", &v)
    }
}

/// The node's own announcement (`PING:` from the node, §2.3.5).
pub fn announce(ip_addr: &str, port: u16, sign: &str, scheduler_ip_addr: Option<&str>) -> Vec<u8> {
    let v = Value::str_dict([
        ("ip_addr", Value::Str(ip_addr.to_owned())),
        ("port", Value::Int(i64::from(port))),
        ("sign", Value::Str(sign.to_owned())),
        ("version", Value::Str(VERSION.to_owned())),
        (
            "scheduler_ip_addr",
            scheduler_ip_addr.map_or(Value::None, |s| Value::Str(s.to_owned())),
        ),
    ]);
    tagged(b"PING:", &v)
}

/// `TERMINATED:` sent when the node shuts down (§2.3.4).
pub fn terminated(ip_addr: &str, port: u16, sign: &str) -> Vec<u8> {
    let v = Value::str_dict([
        ("ip_addr", Value::Str(ip_addr.to_owned())),
        ("port", Value::Int(i64::from(port))),
        ("sign", Value::Str(sign.to_owned())),
    ]);
    tagged(b"TERMINATED:", &v)
}

fn tagged(tag: &[u8], v: &Value) -> Vec<u8> {
    let mut out = tag.to_vec();
    pickle::encode_into(v, &mut out);
    out
}

/// Computation kinds (`_Compute.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeKind {
    Function,
    Program,
}

/// `cleanup` of a computation: a function name, or a flag meaning "delete files at close".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    Flag(bool),
    Function(String),
}

impl Cleanup {
    /// The reference deletes transferred files whenever cleanup is truthy.
    pub fn removes_files(&self) -> bool {
        match self {
            Cleanup::Flag(b) => *b,
            Cleanup::Function(name) => !name.is_empty(),
        }
    }
}

/// `dispy._Compute`.
#[derive(Debug, Clone, PartialEq)]
pub struct Compute {
    pub kind: ComputeKind,
    pub name: String,
    pub id: i64,
    pub code: String,
    pub dest_path: Option<String>,
    pub xfer_files: Vec<XferFile>,
    pub setup: Option<String>,
    pub cleanup: Cleanup,
    pub scheduler_ip_addr: String,
    pub scheduler_port: u16,
    pub node_ip_addr: String,
    pub auth: String,
    pub job_result_port: u16,
    pub pulse_interval: Option<f64>,
    pub client_reply_addr: Option<(String, u16)>,
}

impl Compute {
    pub fn from_value(v: &Value) -> Result<Self, MessageError> {
        class_is(v, "dispy", "_Compute")?;
        let kind = match int_field(v, "type")? {
            1 => ComputeKind::Function,
            2 => ComputeKind::Program,
            _ => return Err(MessageError::Field("type")),
        };
        let xfer_files = match v.get("xfer_files") {
            None | Some(Value::None) => Vec::new(),
            Some(x) => x
                .as_seq()
                .ok_or(MessageError::Field("xfer_files"))?
                .iter()
                .map(XferFile::from_value)
                .collect::<Result<_, _>>()?,
        };
        let cleanup = match v.get("cleanup") {
            None | Some(Value::None) => Cleanup::Flag(false),
            Some(Value::Bool(b)) => Cleanup::Flag(*b),
            Some(Value::Str(s)) => Cleanup::Function(s.clone()),
            Some(x) => Cleanup::Flag(x.as_int().ok_or(MessageError::Field("cleanup"))? != 0),
        };
        let client_reply_addr = match v.get("client_reply_addr") {
            None | Some(Value::None) => None,
            Some(x) => {
                let s = x.as_seq().ok_or(MessageError::Field("client_reply_addr"))?;
                match s {
                    [ip, port] => Some((
                        ip.as_str()
                            .ok_or(MessageError::Field("client_reply_addr"))?
                            .to_owned(),
                        port.as_int()
                            .and_then(|p| u16::try_from(p).ok())
                            .ok_or(MessageError::Field("client_reply_addr"))?,
                    )),
                    _ => return Err(MessageError::Field("client_reply_addr")),
                }
            }
        };
        Ok(Compute {
            kind,
            name: str_field(v, "name")?,
            id: int_field(v, "id")?,
            code: opt_str_field(v, "code")?.unwrap_or_default(),
            dest_path: opt_str_field(v, "dest_path")?,
            xfer_files,
            setup: opt_str_field(v, "setup")?.filter(|s| !s.is_empty()),
            cleanup,
            scheduler_ip_addr: str_field(v, "scheduler_ip_addr")?,
            scheduler_port: port_field(v, "scheduler_port")?,
            node_ip_addr: str_field(v, "node_ip_addr")?,
            auth: str_field(v, "auth")?,
            job_result_port: port_field(v, "job_result_port")?,
            pulse_interval: v.get("pulse_interval").and_then(Value::as_f64),
            client_reply_addr,
        })
    }
}

/// `dispy._XferFile` (with its `os.stat_result`).
#[derive(Debug, Clone, PartialEq)]
pub struct XferFile {
    /// Absolute path on the sender, with the sender's separator.
    pub name: String,
    pub dest_path: String,
    pub compute_id: Option<i64>,
    pub size: u64,
    pub mode: u32,
    pub atime: f64,
    pub mtime: f64,
    pub sep: String,
}

impl XferFile {
    pub fn from_value(v: &Value) -> Result<Self, MessageError> {
        class_is(v, "dispy", "_XferFile")?;
        let stat = field(v, "stat_buf")?;
        let (seq, extra) = stat_parts(stat).ok_or(MessageError::Field("stat_buf"))?;
        let at = |i: usize| seq.get(i).and_then(Value::as_int);
        let size = at(6)
            .and_then(|s| u64::try_from(s).ok())
            .ok_or(MessageError::Field("st_size"))?;
        let mode = at(0)
            .and_then(|m| u32::try_from(m).ok())
            .ok_or(MessageError::Field("st_mode"))?;
        let time = |key: &str, i: usize| {
            extra
                .and_then(|d| d.get(key))
                .and_then(Value::as_f64)
                .or_else(|| at(i).map(|t| t as f64))
                .unwrap_or(0.0)
        };
        let sep = opt_str_field(v, "sep")?.unwrap_or_else(|| "/".to_owned());
        Ok(XferFile {
            name: str_field(v, "name")?,
            dest_path: opt_str_field(v, "dest_path")?.unwrap_or_default(),
            compute_id: v.get("compute_id").and_then(Value::as_int),
            size,
            mode,
            atime: time("st_atime", 7),
            mtime: time("st_mtime", 8),
            sep: if sep.is_empty() { "/".to_owned() } else { sep },
        })
    }

    /// The last component of the sender's path, split on the sender's separator (G31).
    pub fn base_name(&self) -> &str {
        self.name
            .rsplit(self.sep.as_str())
            .next()
            .unwrap_or(&self.name)
    }

    /// Directory components of `dest_path`, split on the sender's separator and on '/'.
    pub fn dest_components(&self) -> Vec<&str> {
        self.dest_path
            .split(|c: char| c == '/' || self.sep.contains(c))
            .filter(|c| !c.is_empty())
            .collect()
    }
}

/// `os.stat_result` is REDUCE(os.stat_result, (10-tuple, dict)); be lenient about its shape.
fn stat_parts(v: &Value) -> Option<(&[Value], Option<&Value>)> {
    let args = match v {
        Value::Reduce { args, .. } => args.as_ref(),
        Value::Build { obj, .. } => return stat_parts(obj),
        Value::Tuple(_) | Value::List(_) => return Some((v.as_seq()?, None)),
        _ => return None,
    };
    let a = args.as_seq()?;
    let seq = a.first()?.as_seq()?;
    Some((seq, a.get(1)))
}

/// `dispy._DispyJob_` as sent in JOB and TERMINATE_JOB.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub uid: i64,
    pub hash: String,
    pub compute_id: i64,
    /// A separate pickle of the positional-argument tuple (or list of str for programs).
    pub args: Vec<u8>,
    pub kwargs: Vec<u8>,
    pub xfer_files: Vec<XferFile>,
    pub code: String,
}

impl Job {
    pub fn from_value(v: &Value) -> Result<Self, MessageError> {
        class_is(v, "dispy", "_DispyJob_")?;
        let xfer_files = match v.get("xfer_files") {
            None | Some(Value::None) => Vec::new(),
            Some(x) => x
                .as_seq()
                .ok_or(MessageError::Field("xfer_files"))?
                .iter()
                .map(XferFile::from_value)
                .collect::<Result<_, _>>()?,
        };
        Ok(Job {
            uid: int_field(v, "uid")?,
            hash: str_field(v, "hash")?,
            compute_id: int_field(v, "compute_id")?,
            args: v
                .get("_args")
                .and_then(Value::as_bytes)
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
            kwargs: v
                .get("_kwargs")
                .and_then(Value::as_bytes)
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
            xfer_files,
            code: opt_str_field(v, "code")?.unwrap_or_default(),
        })
    }

    /// Just the identity, for TERMINATE_JOB (whose other fields we do not need).
    pub fn ident_from_value(v: &Value) -> Result<(i64, i64), MessageError> {
        Ok((int_field(v, "uid")?, int_field(v, "compute_id")?))
    }
}

/// Dict requests keyed by `compute_id` (SETUP, CLOSE, JOBS, PENDING_JOBS, RETRIEVE_JOB, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeRequest {
    pub compute_id: i64,
    pub auth: Option<String>,
    pub node_ip_addr: Option<String>,
    pub terminate_pending: bool,
    pub close: bool,
    pub uid: Option<i64>,
    pub hash: Option<String>,
}

impl ComputeRequest {
    pub fn from_value(v: &Value) -> Result<Self, MessageError> {
        Ok(ComputeRequest {
            compute_id: int_field(v, "compute_id")?,
            auth: opt_str_field(v, "auth")?,
            node_ip_addr: opt_str_field(v, "node_ip_addr")?,
            terminate_pending: v
                .get("terminate_pending")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            close: v.get("close").and_then(Value::as_bool).unwrap_or(true),
            uid: v.get("uid").and_then(Value::as_int),
            hash: opt_str_field(v, "hash")?,
        })
    }

    /// SETUP's `setup_args` must be a tuple (§2.2.2).
    pub fn setup_args_ok(v: &Value) -> bool {
        matches!(v.get("setup_args"), Some(Value::Tuple(_)))
    }
}

/// Job output as the reply carries it: str for functions, bytes for programs (G8).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    None,
    Text(String),
    Bytes(Vec<u8>),
}

impl Output {
    fn to_value(&self) -> Value {
        match self {
            Output::None => Value::None,
            Output::Text(s) => Value::Str(s.clone()),
            Output::Bytes(b) => Value::Bytes(b.clone()),
        }
    }
}

/// `dispy._JobReply`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobReply {
    pub uid: i64,
    pub hash: String,
    pub ip_addr: String,
    pub status: i64,
    /// A pickle of the result, opaque to the node.
    pub result: Vec<u8>,
    pub stdout: Output,
    pub stderr: Output,
    pub exception: Option<String>,
    pub start_time: f64,
    pub end_time: f64,
}

/// `pickle.dumps(None)`: the result of terminated jobs.
pub const PICKLED_NONE: &[u8] = b"\x80\x04N.";

impl JobReply {
    pub fn to_value(&self) -> Value {
        Value::object(
            "dispy",
            "_JobReply",
            Value::str_dict([
                ("uid", Value::Int(self.uid)),
                ("hash", Value::Str(self.hash.clone())),
                ("ip_addr", Value::Str(self.ip_addr.clone())),
                ("status", Value::Int(self.status)),
                ("result", Value::Bytes(self.result.clone())),
                ("stdout", self.stdout.to_value()),
                ("stderr", self.stderr.to_value()),
                (
                    "exception",
                    self.exception.clone().map_or(Value::None, Value::Str),
                ),
                ("start_time", Value::Float(self.start_time)),
                ("end_time", Value::Float(self.end_time)),
            ]),
        )
    }

    /// `JOB_REPLY:` + pickle, as pushed to the client.
    pub fn encode_message(&self) -> Vec<u8> {
        tagged(b"JOB_REPLY:", &self.to_value())
    }

    pub fn from_value(v: &Value) -> Result<Self, MessageError> {
        class_is(v, "dispy", "_JobReply")?;
        let out = |key: &'static str| -> Result<Output, MessageError> {
            Ok(match v.get(key) {
                None | Some(Value::None) => Output::None,
                Some(Value::Str(s)) => Output::Text(s.clone()),
                Some(Value::Bytes(b)) => Output::Bytes(b.clone()),
                Some(_) => return Err(MessageError::Field(key)),
            })
        };
        Ok(JobReply {
            uid: int_field(v, "uid")?,
            hash: str_field(v, "hash")?,
            ip_addr: str_field(v, "ip_addr")?,
            status: int_field(v, "status")?,
            result: bytes_field(v, "result")?,
            stdout: out("stdout")?,
            stderr: out("stderr")?,
            exception: opt_str_field(v, "exception")?,
            start_time: v.get("start_time").and_then(Value::as_f64).unwrap_or(0.0),
            end_time: v.get("end_time").and_then(Value::as_f64).unwrap_or(0.0),
        })
    }
}

/// Decodes the program arguments of a program job: a pickled list of str (§3.2).
pub fn program_args(pickled: &[u8]) -> Result<Vec<String>, MessageError> {
    if pickled.is_empty() {
        return Ok(Vec::new());
    }
    let v = pickle::decode(pickled)?;
    v.as_seq()
        .ok_or(MessageError::Field("_args"))?
        .iter()
        .map(|a| {
            a.as_str()
                .map(str::to_owned)
                .ok_or(MessageError::Field("_args"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pickled by the real dispy 4.15.2 client classes on CPython 3.11 (protocol 5, FRAME,
    /// MEMOIZE, STACK_GLOBAL, os.stat_result by REDUCE).
    const COMPUTE_HEX: &str = "800595e0020000000000008c056469737079948c085f436f6d707574659493942981947d94288c0474797065944b018c046e616d65948c07636f6d70757465948c026964948a06d01a9f1ba2018c04636f6465948c1d64656620636f6d70757465286e293a0a2020202072657475726e206e0a948c09646573745f70617468948c066d7964657374948c0a786665725f66696c6573945d9468008c095f5866657246696c659493942981947d942868068c182f746d702f7665632f7375622f737562646174612e74787494680b8c03737562948c0a636f6d707574655f6964948a06d01a9f1ba2018c08737461745f627566948c026f73948c0b737461745f726573756c74949394284da4814ad8c298004d00fe4b014b004b004b084af21d096b4af21d096b4a273a096b74947d94288c0873745f6174696d65944741dac2477c8000008c0873745f6d74696d65944741dac2477c8000008c0873745f6374696d65944741dac24e89cd0ee58c0b73745f6174696d655f6e73948a0800f434fbd7d1eb188c0b73745f6d74696d655f6e73948a0800f434fbd7d1eb188c0b73745f6374696d655f6e73948a089c16824c69d8eb188c0a73745f626c6b73697a65944d00108c0973745f626c6f636b73944b088c0773745f72646576944b0075869452948c03736570948c012f947562618c097265656e7472616e7494898c096578636c757369766594888c05736574757094682b8c07636c65616e757094682c8c1073657475705f617267735f636f756e74944b008c117363686564756c65725f69705f61646472948c093132372e302e302e31948c0e7363686564756c65725f706f7274944d04748c0c6e6f64655f69705f6164647294682f8c0461757468948c2836636431363463323937313564366362666535646438366136383562303463393035326266626431948c0f6a6f625f726573756c745f706f7274944d04748c0e70756c73655f696e74657276616c944e8c11636c69656e745f7265706c795f61646472944e75622e";
    const JOB_HEX: &str = "8005950d020000000000008c056469737079948c0a5f44697370794a6f625f9493942981947d94288c03756964948a06e0b39517107f8c0468617368948c0c613162326333643465356636948c0a636f6d707574655f6964948a06d01a9f1ba2018c055f6172677394431080059505000000000000004b0285942e948c075f6b77617267739443178005950c000000000000007d948c016b948c017694732e948c0a786665725f66696c6573945d9468008c095f5866657246696c659493942981947d94288c046e616d65948c182f746d702f7665632f7375622f737562646174612e747874948c09646573745f70617468948c037375629468088a06d01a9f1ba2018c08737461745f627566948c026f73948c0b737461745f726573756c74949394284da4814ad8c298004d00fe4b014b004b004b084af21d096b4af21d096b4a273a096b74947d94288c0873745f6174696d65944741dac2477c8000008c0873745f6d74696d65944741dac2477c8000008c0873745f6374696d65944741dac24e89cd0ee58c0b73745f6174696d655f6e73948a0800f434fbd7d1eb188c0b73745f6d74696d655f6e73948a0800f434fbd7d1eb188c0b73745f6374696d655f6e73948a089c16824c69d8eb188c0a73745f626c6b73697a65944d00108c0973745f626c6f636b73944b088c0773745f72646576944b0075869452948c03736570948c012f947562618c04636f6465948c009475622e";

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn decodes_a_real_compute() {
        let v = pickle::decode(&unhex(COMPUTE_HEX)).unwrap();
        let c = Compute::from_value(&v).unwrap();
        assert_eq!(c.kind, ComputeKind::Function);
        assert_eq!(c.name, "compute");
        assert_eq!(c.id, 1795759741648);
        assert_eq!(c.code, "def compute(n):\n    return n\n");
        assert_eq!(c.dest_path.as_deref(), Some("mydest"));
        assert_eq!(c.setup.as_deref(), Some("setup"));
        assert_eq!(c.cleanup, Cleanup::Function("cleanup".into()));
        assert_eq!(
            (
                c.scheduler_ip_addr.as_str(),
                c.scheduler_port,
                c.job_result_port
            ),
            ("127.0.0.1", 29700, 29700)
        );
        assert_eq!(c.auth, "6cd164c29715d6cbfe5dd86a685b04c9052bfbd1");
        assert_eq!(c.client_reply_addr, None);
        let xf = &c.xfer_files[0];
        assert_eq!(xf.name, "/tmp/vec/sub/subdata.txt");
        assert_eq!(xf.base_name(), "subdata.txt");
        assert_eq!(xf.dest_components(), vec!["sub"]);
        assert_eq!(xf.size, 8);
        assert_eq!(xf.mode & 0o170000, 0o100000);
        assert_eq!(xf.mtime as i64, 1795759602);
        assert_eq!(xf.compute_id, Some(1795759741648));
    }

    #[test]
    fn decodes_a_real_job() {
        let v = pickle::decode(&unhex(JOB_HEX)).unwrap();
        let j = Job::from_value(&v).unwrap();
        assert_eq!(j.uid, 139707091891168);
        assert_eq!(j.hash, "a1b2c3d4e5f6");
        assert_eq!(j.compute_id, 1795759741648);
        assert_eq!(
            pickle::decode(&j.args).unwrap(),
            Value::Tuple(vec![Value::Int(2)])
        );
        assert_eq!(j.xfer_files.len(), 1);
        assert_eq!(
            Job::ident_from_value(&v).unwrap(),
            (139707091891168, 1795759741648)
        );
    }

    #[test]
    fn wrong_class_is_refused() {
        let v = pickle::decode(&unhex(JOB_HEX)).unwrap();
        assert!(matches!(
            Compute::from_value(&v),
            Err(MessageError::Class("_Compute"))
        ));
        assert!(Job::from_value(&Value::None).is_err());
    }

    #[test]
    fn job_reply_round_trip() {
        let r = JobReply {
            uid: 42,
            hash: "ab".into(),
            ip_addr: "127.0.0.1".into(),
            status: status::FINISHED,
            result: pickle::encode(&Value::Int(7)),
            stdout: Output::Text("out\n".into()),
            stderr: Output::Bytes(b"err".to_vec()),
            exception: None,
            start_time: 1.5,
            end_time: 2.5,
        };
        let msg = r.encode_message();
        assert!(msg.starts_with(b"JOB_REPLY:\x80\x04cdispy\n_JobReply\n"));
        let v = pickle::decode(&msg[b"JOB_REPLY:".len()..]).unwrap();
        assert_eq!(JobReply::from_value(&v).unwrap(), r);
    }

    #[test]
    fn ping_and_pong() {
        let ping = Value::str_dict([
            ("version", Value::Str("4.15.2".into())),
            ("sign", Value::Str("abc".into())),
            ("port", Value::Int(51347)),
            ("node_ip_addr", Value::Str("127.0.0.1".into())),
            (
                "ip_addrs",
                Value::List(vec![Value::Str("127.0.0.1".into())]),
            ),
        ]);
        let p = Ping::from_value(&ping).unwrap();
        assert_eq!(
            (p.port, p.sign.as_deref(), p.relay),
            (51347, Some("abc"), false)
        );
        assert_eq!(p.ip_addrs, vec!["127.0.0.1"]);
        assert!(
            version_accepted("4.15.2")
                && version_accepted("4.15.3")
                && !version_accepted("4.14.0")
                && !version_accepted("4.150")
        );
        let pong = Pong {
            port: 1,
            sign: "s",
            name: "n",
            cpus: 2,
            platform: "p",
            auth: b"xx",
            ip_addr: "1.2.3.4",
            scheduler_ip_addr: "5.6.7.8",
        }
        .encode();
        let v = pickle::decode(&pong[5..]).unwrap();
        assert_eq!(v.get("auth"), Some(&Value::Bytes(b"xx".to_vec())));
        assert_eq!(v.get("cpus").and_then(Value::as_int), Some(2));
        assert_eq!(v.get("version").and_then(Value::as_str), Some(VERSION));
    }

    #[test]
    fn program_arguments() {
        let args = pickle::encode(&Value::List(vec![
            Value::Str("a".into()),
            Value::Str("b c".into()),
        ]));
        assert_eq!(program_args(&args).unwrap(), vec!["a", "b c"]);
        assert!(program_args(&pickle::encode(&Value::List(vec![Value::Int(1)]))).is_err());
        assert!(program_args(b"").unwrap().is_empty());
    }
}
