//! Restricted, non-executing pickle codec.
//!
//! dispy clients speak pickle (§1.5 of `dispy-protocol.md`): every message body is
//! `pickle.dumps(obj, HIGHEST_PROTOCOL)`, so a CPython ≥ 3.8 client sends protocol 5 with
//! FRAME, MEMOIZE and STACK_GLOBAL, and user data inside envelopes may use any older form.
//! The node must read those messages without ever running anything a client names, so this
//! module decodes *any* protocol 0–5 stream into a plain [`Value`] tree:
//!
//! * `GLOBAL`/`STACK_GLOBAL` become [`Value::Global`] (nothing is imported),
//! * `REDUCE` becomes [`Value::Reduce`] (nothing is called),
//! * `NEWOBJ`/`NEWOBJ_EX`/`INST`/`OBJ` become [`Value::Object`] and a later `BUILD` fills its
//!   `state` (no `__setstate__` runs).
//!
//! Decoding is hardened against hostile input (the node decodes envelopes from the network):
//! every resource is bounded by [`Limits`], every failure is a typed [`PickleError`], and no
//! input can make it panic, loop forever or allocate by a length it has not seen in the input.
//!
//! The encoder writes the few shapes the node sends (plain data and `dispy._JobReply`-style
//! instances) as protocol 4 without FRAME and without memo: the smallest form that both
//! Python 3.7 and current clients load (verified in the captures).
//!
//! Everything here is pure: bytes in, values out, no I/O.
//!
//! Where decoding deliberately differs from CPython's `pickle.loads`:
//! * data after STOP is an error (a frame holds exactly one pickle), and so is a reference
//!   cycle (a list containing itself), which a tree cannot represent;
//! * Python 2 `str` (STRING, BINSTRING, SHORT_BINSTRING) becomes `Str` lossily instead of
//!   failing on non-ASCII bytes;
//! * items added to instances or REDUCE results (list/dict subclasses, `OrderedDict`) are
//!   recorded as a [`Value::Build`] instead of calling `extend`/`__setitem__`;
//! * Python 2 names in protocol 0–2 pickles (`__builtin__`, `copy_reg`) are kept as
//!   written, not mapped to their Python 3 names, and well-known REDUCEs (`set`,
//!   `bytearray`, `_codecs.encode` for protocol 2 bytes) stay Reduce records;
//! * int literals in the text opcodes are limited to 4300 digits in every base.

use std::collections::HashMap;

/// A decoded pickle: plain data plus inert records of what the pickle *would* have called.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An int that does not fit `i64`: little-endian two's complement bytes, minimal length
    /// (as in `LONG1`/`LONG4`). The decoder only produces this for values outside `i64`.
    BigInt(Vec<u8>),
    Float(f64),
    /// Text. Invalid UTF-8 and lone surrogates (which CPython writes with `surrogatepass`)
    /// are replaced by U+FFFD, one replacement per bad character.
    Str(String),
    Bytes(Vec<u8>),
    ByteArray(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Insertion order kept. Duplicate keys (only hostile pickles have them) are merged the
    /// way Python's dict does: the first key keeps its place, the last value wins.
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    FrozenSet(Vec<Value>),
    Global {
        module: String,
        name: String,
    },
    /// REDUCE: callable(*args), never executed
    Reduce {
        callable: Box<Value>,
        args: Box<Value>,
    },
    /// NEWOBJ / NEWOBJ_EX (cls.__new__(cls, *args, **kwargs)) plus the state given by a later BUILD
    ///
    /// `INST` and `OBJ` (protocols 0 and 1) also decode to this, with their arguments in `args`.
    Object {
        class: Box<Value>,
        args: Vec<Value>,
        kwargs: Vec<(Value, Value)>,
        state: Option<Box<Value>>,
    },
    /// BUILD applied to something that is not an Object (e.g. a Reduce)
    ///
    /// Also used, with a `List`/`Dict`/`Set` state, for the items that `APPEND(S)`,
    /// `SETITEM(S)` or `ADDITEMS` add to something that is not a plain list, dict or set:
    /// instances of list/dict subclasses and REDUCE results such as `OrderedDict` or
    /// `defaultdict`. That keeps such user data decodable instead of failing the whole message.
    Build {
        obj: Box<Value>,
        state: Box<Value>,
    },
    PersistentId(Box<Value>),
    Extension(i32),
    /// An in-band `pickle.PickleBuffer`. The decoder never produces it (CPython writes in-band
    /// buffers as plain bytes or bytearray); the encoder writes it as bytes.
    PickleBuffer(Vec<u8>),
}

impl Value {
    /// Looks up a `str` key: in a Dict, or in the state of an Object/Build (the instance
    /// attributes a BUILD sets). Returns `None` for anything else.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(entries) => dict_lookup(entries, key),
            Value::Object {
                state: Some(state), ..
            } => state_lookup(state, key),
            // A second BUILD (or added items) wraps the instance; look at the newest state
            // first, then at what it wraps.
            Value::Build { obj, state } => state_lookup(state, key).or_else(|| obj.get(key)),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An `Int`, or a `Bool` as 0/1 (Python's bool is an int).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// A `Float`, or an `Int`/`Bool` converted (Python accepts ints wherever floats go, e.g.
    /// `pulse_interval`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            // Precision loss above 2^53 is what Python's float(int) does too.
            #[allow(clippy::cast_precision_loss)]
            Value::Int(n) => Some(*n as f64),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }

    /// The bytes of a `Bytes`, `ByteArray` or `PickleBuffer`.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) | Value::ByteArray(b) | Value::PickleBuffer(b) => Some(b),
            _ => None,
        }
    }

    /// Only a real `Bool`: callers that accept Python truthiness must say so themselves.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The items of a `List` or `Tuple`.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// The entries of a `Dict`.
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }

    /// `(module, name)` of the class of an Object, or of the callable of a Reduce, when that
    /// is a Global. Sees through a Build wrapper.
    pub fn class_name(&self) -> Option<(&str, &str)> {
        let class = match self {
            Value::Object { class, .. } => class,
            Value::Reduce { callable, .. } => callable,
            Value::Build { obj, .. } => return obj.class_name(),
            _ => return None,
        };
        match class.as_ref() {
            Value::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// A Dict with `str` keys, in the given order.
    pub fn str_dict<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
        Value::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (Value::Str(k.to_owned()), v))
                .collect(),
        )
    }

    /// A Global reference `module.name`.
    pub fn global(module: &str, name: &str) -> Value {
        Value::Global {
            module: module.to_owned(),
            name: name.to_owned(),
        }
    }

    /// An instance of `module.name` rebuilt the way plain Python classes are pickled:
    /// `cls.__new__(cls)` (no args) and then BUILD with `state` (normally a str-keyed Dict,
    /// the instance `__dict__`).
    pub fn object(module: &str, name: &str, state: Value) -> Value {
        Value::Object {
            class: Box::new(Value::global(module, name)),
            args: Vec::new(),
            kwargs: Vec::new(),
            state: Some(Box::new(state)),
        }
    }
}

/// Last match wins, as it would in a Python dict built from these entries (decoded dicts
/// have unique keys anyway; hand-built ones might not).
fn dict_lookup<'v>(entries: &'v [(Value, Value)], key: &str) -> Option<&'v Value> {
    entries
        .iter()
        .rev()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// The BUILD state is the instance dict, or `(dict, slotstate)` for classes with
/// `__slots__`; look in both.
fn state_lookup<'v>(state: &'v Value, key: &str) -> Option<&'v Value> {
    match state {
        Value::Dict(entries) => dict_lookup(entries, key),
        Value::Tuple(parts) => match parts.as_slice() {
            [dict, slots] => state_lookup_dict(dict, key).or_else(|| state_lookup_dict(slots, key)),
            _ => None,
        },
        _ => None,
    }
}

fn state_lookup_dict<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    match v {
        Value::Dict(entries) => dict_lookup(entries, key),
        _ => None,
    }
}

/// Why a pickle was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    #[error("pickle data is truncated")]
    Truncated,
    #[error("unknown pickle opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    #[error("unsupported pickle protocol {0}")]
    UnsupportedProtocol(u8),
    #[error("pickle stack underflow")]
    StackUnderflow,
    #[error("pickle opcode needs a MARK but there is none")]
    NoMark,
    #[error("pickle memo has no entry {0}")]
    BadMemoKey(u64),
    #[error("pickle nesting is deeper than the limit")]
    TooDeep,
    #[error("pickle memo has more entries than the limit")]
    MemoTooLarge,
    #[error("pickle of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("pickle container is longer than the limit")]
    ContainerTooLarge,
    #[error("pickle expands to more values than the limit")]
    TooManyNodes,
    #[error("pickle expands to more string/bytes data than the limit")]
    PayloadTooLarge,
    #[error("pickle contains a reference cycle")]
    Cycle,
    #[error("pickle uses an out-of-band buffer, which is not available")]
    OutOfBandBuffer,
    #[error("pickle has data after STOP")]
    TrailingData,
    #[error("invalid pickle: {0}")]
    Invalid(&'static str),
}

type Result<T> = std::result::Result<T, PickleError>;

/// Resource bounds for [`decode_with`]. Each one turns a way a hostile peer could make the
/// node burn memory or CPU into a typed error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted pickle, in bytes. The frame layer has already buffered the message,
    /// so this is a backstop: decoded strings and bytes are copied once out of the input, and
    /// the string/bytes data of the decoded tree (after memo references are expanded) may be
    /// at most [`PAYLOAD_EXPANSION`] times this. Job envelopes carry the job's pickled
    /// arguments as `bytes`, so it must leave room for large arguments.
    pub max_input: usize,
    /// Deepest nesting of the decoded tree, and most MARKs open at once. The tree is built,
    /// dropped and encoded recursively, so this bounds native stack use: keep it in the
    /// hundreds. dispy's envelopes nest fewer than 10 levels.
    pub max_depth: usize,
    /// Most memo entries. Each one is a map entry, and `LONG_BINPUT` keys are chosen by the
    /// peer.
    pub max_memo: usize,
    /// Most values: nodes allocated while decoding, references pushed on the stack, and
    /// values in the final tree once memo references are expanded into copies. The last one
    /// stops "billion laughs" pickles (a memoized list referenced many times, nested) before
    /// anything is expanded.
    pub max_nodes: usize,
    /// Most items in one list, tuple, dict or set.
    pub max_container_len: usize,
}

/// The decoded tree's string/bytes data may be at most this many times `max_input`. Without
/// memo sharing the tree holds at most ~3× the input (a latin-1 byte or an invalid UTF-8 byte
/// becomes 2–3 bytes of UTF-8), so 4 leaves room for modest sharing while still stopping a
/// large memoized `bytes` referenced thousands of times.
pub const PAYLOAD_EXPANSION: usize = 4;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Job arguments travel inside the JOB envelope as bytes and may be 100 MB; dispy
            // itself has no limit. 256 MiB keeps those working while bounding the work.
            max_input: 256 << 20,
            max_depth: 100,
            max_memo: 100_000,
            max_nodes: 1_000_000,
            max_container_len: 1_000_000,
        }
    }
}

/// Highest protocol CPython (3.8+) writes and this decoder reads.
const HIGHEST_PROTOCOL: u8 = 5;

/// CPython's default `sys.get_int_max_str_digits()`: int literals in text opcodes longer than
/// this are rejected, which also keeps the quadratic base conversion cheap.
const MAX_INT_DIGITS: usize = 4300;

/// CPython's pickler batches APPENDS/SETITEMS/ADDITEMS in groups of this size.
const BATCH_SIZE: usize = 1000;

/// Opcodes of pickle protocols 0–5 (names as in CPython's `pickle.py`).
mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const PERSID: u8 = b'P';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const INST: u8 = b'i';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const OBJ: u8 = b'o';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const EXT1: u8 = 0x82;
    pub const EXT2: u8 = 0x83;
    pub const EXT4: u8 = 0x84;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
}

// ---------------------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------------------

/// Decodes one complete pickle with [`Limits::default`].
pub fn decode(data: &[u8]) -> Result<Value> {
    decode_with(data, &Limits::default())
}

/// Decodes one complete pickle: exactly one STOP, at the very end of `data`.
pub fn decode_with(data: &[u8], limits: &Limits) -> Result<Value> {
    if data.len() > limits.max_input {
        return Err(PickleError::TooLarge(data.len()));
    }
    let mut decoder = Decoder {
        data,
        pos: 0,
        limits,
        arena: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        pushes: 0,
    };
    let root = decoder.run()?;
    Materializer::new(decoder.arena, limits, data.len()).run(root)
}

/// Index of a node in the decoder's arena.
type NodeId = usize;

/// One value under construction. Containers refer to their items by arena index, so that a
/// container memoized while empty and filled later (which is how CPython writes every list,
/// dict and set) is seen with its final contents through every memo reference; the tree is
/// only materialized at STOP.
#[derive(Debug)]
enum Node {
    /// A value with no children (scalars, strings, bytes, Global, Extension).
    Leaf(Value),
    List(Vec<NodeId>),
    Tuple(Vec<NodeId>),
    Dict(Vec<(NodeId, NodeId)>),
    Set(Vec<NodeId>),
    FrozenSet(Vec<NodeId>),
    Reduce {
        callable: NodeId,
        args: NodeId,
    },
    Object {
        class: NodeId,
        /// Always a `Node::Tuple` (checked when the object is created; tuples never change).
        args: NodeId,
        kwargs: Vec<(NodeId, NodeId)>,
        state: Option<NodeId>,
    },
    Build {
        obj: NodeId,
        state: NodeId,
    },
    /// APPEND(S) onto something that is not a list.
    ListItems {
        obj: NodeId,
        items: Vec<NodeId>,
    },
    /// SETITEM(S) onto something that is not a dict.
    DictItems {
        obj: NodeId,
        entries: Vec<(NodeId, NodeId)>,
    },
    /// ADDITEMS onto something that is not a set.
    SetItems {
        obj: NodeId,
        items: Vec<NodeId>,
    },
    PersistentId(NodeId),
    /// Left behind once a node has been moved out (while wrapping, or while materializing).
    Taken,
}

impl Node {
    /// The `i`-th outgoing reference, in the order [`Materializer::construct`] consumes them.
    fn child(&self, i: usize) -> Option<NodeId> {
        fn pair(entries: &[(NodeId, NodeId)], i: usize) -> Option<NodeId> {
            entries
                .get(i / 2)
                .map(|&(k, v)| if i % 2 == 0 { k } else { v })
        }
        match self {
            Node::Leaf(_) | Node::Taken => None,
            Node::List(v) | Node::Tuple(v) | Node::Set(v) | Node::FrozenSet(v) => v.get(i).copied(),
            Node::Dict(entries) => pair(entries, i),
            Node::Reduce { callable, args } => [*callable, *args].get(i).copied(),
            Node::Build { obj, state } => [*obj, *state].get(i).copied(),
            Node::Object {
                class,
                args,
                kwargs,
                state,
            } => match i {
                0 => Some(*class),
                1 => Some(*args),
                _ => {
                    let i = i - 2;
                    if i < kwargs.len() * 2 {
                        pair(kwargs, i)
                    } else if i == kwargs.len() * 2 {
                        *state
                    } else {
                        None
                    }
                }
            },
            Node::ListItems { obj, items } | Node::SetItems { obj, items } => match i {
                0 => Some(*obj),
                _ => items.get(i - 1).copied(),
            },
            Node::DictItems { obj, entries } => match i {
                0 => Some(*obj),
                _ => pair(entries, i - 1),
            },
            Node::PersistentId(inner) => (i == 0).then_some(*inner),
        }
    }

    /// String/bytes data this node holds itself, for the expansion budget.
    fn payload(&self) -> usize {
        match self {
            Node::Leaf(Value::Str(s)) => s.len(),
            Node::Leaf(Value::Bytes(b) | Value::ByteArray(b) | Value::BigInt(b)) => b.len(),
            Node::Leaf(Value::Global { module, name }) => module.len().saturating_add(name.len()),
            _ => 0,
        }
    }
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    limits: &'a Limits,
    arena: Vec<Node>,
    /// The value stack. Items above the topmost mark belong to that mark (CPython's "fence").
    stack: Vec<NodeId>,
    /// Stack lengths at each open MARK (CPython's separate mark stack).
    marks: Vec<usize>,
    memo: HashMap<u64, NodeId>,
    /// References pushed or copied so far, bounded by `max_nodes` (GET and DUP push without
    /// allocating a node, so the arena bound alone would not cap the stack).
    pushes: usize,
}

impl<'a> Decoder<'a> {
    /// Runs until STOP and returns the root node.
    fn run(&mut self) -> Result<NodeId> {
        loop {
            let opcode = self.read_u8()?;
            match opcode {
                op::PROTO => {
                    let version = self.read_u8()?;
                    if version > HIGHEST_PROTOCOL {
                        return Err(PickleError::UnsupportedProtocol(version));
                    }
                }
                // With the whole pickle in memory a frame is only a promise of how many bytes
                // follow; CPython checks that much and so do we.
                op::FRAME => {
                    let len = self.read_u64()?;
                    self.check_available(len)?;
                }
                op::STOP => {
                    let root = self.pop()?;
                    // Anything left on the stack is ignored, as CPython does.
                    if self.pos != self.data.len() {
                        return Err(PickleError::TrailingData);
                    }
                    return Ok(root);
                }
                op::MARK => {
                    if self.marks.len() >= self.limits.max_depth {
                        return Err(PickleError::TooDeep);
                    }
                    self.marks.push(self.stack.len());
                }
                op::POP => self.pop_or_pop_mark()?,
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::DUP => {
                    let top = self.top()?;
                    self.push(top)?;
                }

                op::NONE => self.push_leaf(Value::None)?,
                op::NEWTRUE => self.push_leaf(Value::Bool(true))?,
                op::NEWFALSE => self.push_leaf(Value::Bool(false))?,
                op::INT => {
                    let line = self.read_line()?;
                    let v = parse_int_opcode(line)?;
                    self.push_leaf(v)?;
                }
                op::BININT => {
                    let n = i32::from_le_bytes(self.read_array()?);
                    self.push_leaf(Value::Int(i64::from(n)))?;
                }
                op::BININT1 => {
                    let n = self.read_u8()?;
                    self.push_leaf(Value::Int(i64::from(n)))?;
                }
                op::BININT2 => {
                    let n = u16::from_le_bytes(self.read_array()?);
                    self.push_leaf(Value::Int(i64::from(n)))?;
                }
                op::LONG => {
                    let line = self.read_line()?;
                    let digits = line.strip_suffix(b"L").unwrap_or(line);
                    let v = parse_py_int(digits).ok_or(PickleError::Invalid("bad LONG literal"))?;
                    self.push_leaf(v)?;
                }
                op::LONG1 => {
                    let len = self.read_u8()?;
                    let bytes = self.take(u64::from(len))?;
                    self.push_leaf(int_from_le(bytes.to_vec()))?;
                }
                op::LONG4 => {
                    let len = self.read_signed_len()?;
                    let bytes = self.take(len)?;
                    self.push_leaf(int_from_le(bytes.to_vec()))?;
                }
                op::FLOAT => {
                    let line = self.read_line()?;
                    let f = parse_float(line)?;
                    self.push_leaf(Value::Float(f))?;
                }
                op::BINFLOAT => {
                    let f = f64::from_be_bytes(self.read_array()?);
                    self.push_leaf(Value::Float(f))?;
                }

                // Python 2 `str`: CPython 3 decodes it as ASCII by default; we keep the text
                // lossily rather than fail.
                op::STRING => {
                    let line = self.read_line()?;
                    let bytes = unquote_string(line)?;
                    self.push_leaf(Value::Str(utf8_lossy(&bytes)))?;
                }
                op::BINSTRING => {
                    let len = self.read_signed_len()?;
                    let bytes = self.take(len)?;
                    self.push_leaf(Value::Str(utf8_lossy(bytes)))?;
                }
                op::SHORT_BINSTRING => {
                    let len = self.read_u8()?;
                    let bytes = self.take(u64::from(len))?;
                    self.push_leaf(Value::Str(utf8_lossy(bytes)))?;
                }
                op::UNICODE => {
                    let line = self.read_line()?;
                    let s = raw_unicode_escape_decode(line)?;
                    self.push_leaf(Value::Str(s))?;
                }
                op::SHORT_BINUNICODE => {
                    let len = self.read_u8()?;
                    self.push_str(u64::from(len))?;
                }
                op::BINUNICODE => {
                    let len = u32::from_le_bytes(self.read_array()?);
                    self.push_str(u64::from(len))?;
                }
                op::BINUNICODE8 => {
                    let len = self.read_u64()?;
                    self.push_str(len)?;
                }
                op::SHORT_BINBYTES => {
                    let len = self.read_u8()?;
                    let bytes = self.take(u64::from(len))?;
                    self.push_leaf(Value::Bytes(bytes.to_vec()))?;
                }
                op::BINBYTES => {
                    let len = u32::from_le_bytes(self.read_array()?);
                    let bytes = self.take(u64::from(len))?;
                    self.push_leaf(Value::Bytes(bytes.to_vec()))?;
                }
                op::BINBYTES8 => {
                    let len = self.read_u64()?;
                    let bytes = self.take(len)?;
                    self.push_leaf(Value::Bytes(bytes.to_vec()))?;
                }
                op::BYTEARRAY8 => {
                    let len = self.read_u64()?;
                    let bytes = self.take(len)?;
                    self.push_leaf(Value::ByteArray(bytes.to_vec()))?;
                }
                op::NEXT_BUFFER => return Err(PickleError::OutOfBandBuffer),
                // Marks the top buffer read-only: nothing to do for a copy, but the stack
                // must hold something, as in CPython.
                op::READONLY_BUFFER => {
                    self.top()?;
                }

                op::EMPTY_LIST => self.push_node(Node::List(Vec::new()))?,
                op::LIST => {
                    let items = self.pop_mark()?;
                    self.check_container(items.len())?;
                    self.push_node(Node::List(items))?;
                }
                op::APPEND => {
                    let item = self.pop()?;
                    let target = self.top()?;
                    self.add_list_items(target, vec![item])?;
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    self.add_list_items(target, items)?;
                }
                op::EMPTY_TUPLE => self.push_node(Node::Tuple(Vec::new()))?,
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.check_container(items.len())?;
                    self.push_node(Node::Tuple(items))?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(opcode - op::TUPLE1) + 1;
                    let items = self.pop_n(n)?;
                    self.push_node(Node::Tuple(items))?;
                }
                op::EMPTY_DICT => self.push_node(Node::Dict(Vec::new()))?,
                op::DICT => {
                    let items = self.pop_mark()?;
                    let entries = pairs(items)?;
                    self.check_container(entries.len())?;
                    self.push_node(Node::Dict(entries))?;
                }
                op::SETITEM => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let target = self.top()?;
                    self.add_dict_items(target, vec![(key, value)])?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    let entries = pairs(items)?;
                    let target = self.top()?;
                    self.add_dict_items(target, entries)?;
                }
                op::EMPTY_SET => self.push_node(Node::Set(Vec::new()))?,
                op::ADDITEMS => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    self.add_set_items(target, items)?;
                }
                op::FROZENSET => {
                    let items = self.pop_mark()?;
                    self.check_container(items.len())?;
                    self.push_node(Node::FrozenSet(items))?;
                }

                op::GLOBAL => {
                    let module = self.read_utf8_line()?;
                    let name = self.read_utf8_line()?;
                    self.push_leaf(Value::Global { module, name })?;
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let module = self.leaf_str(module)?;
                    let name = self.leaf_str(name)?;
                    self.push_leaf(Value::Global { module, name })?;
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.push_node(Node::Reduce { callable, args })?;
                }
                op::BUILD => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    self.apply_build(target, state)?;
                }
                op::NEWOBJ => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.expect_tuple(args)?;
                    self.push_node(Node::Object {
                        class,
                        args,
                        kwargs: Vec::new(),
                        state: None,
                    })?;
                }
                op::NEWOBJ_EX => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.expect_tuple(args)?;
                    // `__new__` sees the kwargs as they are now: copy the entries.
                    let kwargs = match self.node(kwargs)? {
                        Node::Dict(entries) => entries.clone(),
                        _ => return Err(PickleError::Invalid("NEWOBJ_EX kwargs is not a dict")),
                    };
                    self.count_refs(kwargs.len().saturating_mul(2))?;
                    self.push_node(Node::Object {
                        class,
                        args,
                        kwargs,
                        state: None,
                    })?;
                }
                op::INST => {
                    let module = self.read_utf8_line()?;
                    let name = self.read_utf8_line()?;
                    let items = self.pop_mark()?;
                    let class = self.alloc(Node::Leaf(Value::Global { module, name }))?;
                    self.push_instance(class, items)?;
                }
                op::OBJ => {
                    let items = self.pop_mark()?;
                    let Some((&class, args)) = items.split_first() else {
                        return Err(PickleError::StackUnderflow);
                    };
                    self.push_instance(class, args.to_vec())?;
                }

                op::PUT => {
                    let line = self.read_line()?;
                    let key = parse_memo_key(line)?;
                    self.memo_put(key)?;
                }
                op::BINPUT => {
                    let key = self.read_u8()?;
                    self.memo_put(u64::from(key))?;
                }
                op::LONG_BINPUT => {
                    let key = u32::from_le_bytes(self.read_array()?);
                    self.memo_put(u64::from(key))?;
                }
                op::MEMOIZE => {
                    let key =
                        u64::try_from(self.memo.len()).map_err(|_| PickleError::MemoTooLarge)?;
                    self.memo_put(key)?;
                }
                op::GET => {
                    let line = self.read_line()?;
                    let key = parse_memo_key(line)?;
                    self.memo_get(key)?;
                }
                op::BINGET => {
                    let key = self.read_u8()?;
                    self.memo_get(u64::from(key))?;
                }
                op::LONG_BINGET => {
                    let key = u32::from_le_bytes(self.read_array()?);
                    self.memo_get(u64::from(key))?;
                }

                op::PERSID => {
                    let line = self.read_line()?;
                    if !line.is_ascii() {
                        return Err(PickleError::Invalid("PERSID id is not ASCII"));
                    }
                    let id = self.alloc(Node::Leaf(Value::Str(utf8_lossy(line))))?;
                    self.push_node(Node::PersistentId(id))?;
                }
                op::BINPERSID => {
                    let id = self.pop()?;
                    self.push_node(Node::PersistentId(id))?;
                }
                op::EXT1 => {
                    let code = self.read_u8()?;
                    self.push_ext(i32::from(code))?;
                }
                op::EXT2 => {
                    let code = u16::from_le_bytes(self.read_array()?);
                    self.push_ext(i32::from(code))?;
                }
                op::EXT4 => {
                    let code = i32::from_le_bytes(self.read_array()?);
                    self.push_ext(code)?;
                }
                other => return Err(PickleError::UnknownOpcode(other)),
            }
        }
    }

    // --- input -------------------------------------------------------------------------

    fn remaining(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or_default()
    }

    /// Fails unless `len` more bytes are present; the check every declared length goes
    /// through before anything is allocated for it.
    fn check_available(&self, len: u64) -> Result<usize> {
        let len = usize::try_from(len).map_err(|_| PickleError::Truncated)?;
        if len > self.remaining().len() {
            return Err(PickleError::Truncated);
        }
        Ok(len)
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8]> {
        let len = self.check_available(len)?;
        let (bytes, _) = self.remaining().split_at(len);
        self.pos += len;
        Ok(bytes)
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N as u64)?;
        bytes.try_into().map_err(|_| PickleError::Truncated)
    }

    fn read_u8(&mut self) -> Result<u8> {
        let [b] = self.read_array()?;
        Ok(b)
    }

    fn read_u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.read_array()?))
    }

    /// The signed 4-byte lengths of BINSTRING and LONG4; negative ones are invalid.
    fn read_signed_len(&mut self) -> Result<u64> {
        let len = i32::from_le_bytes(self.read_array()?);
        u64::try_from(len).map_err(|_| PickleError::Invalid("negative length"))
    }

    /// The argument of a text opcode, without its newline.
    fn read_line(&mut self) -> Result<&'a [u8]> {
        let rest = self.remaining();
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated)?;
        let (line, _) = rest.split_at(end);
        self.pos += end + 1;
        Ok(line)
    }

    /// Module and class names: CPython decodes them as strict UTF-8.
    fn read_utf8_line(&mut self) -> Result<String> {
        let line = self.read_line()?;
        std::str::from_utf8(line)
            .map(str::to_owned)
            .map_err(|_| PickleError::Invalid("global name is not UTF-8"))
    }

    // --- stack, marks, memo ------------------------------------------------------------

    /// Items at or below the topmost mark are not reachable by plain pops.
    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn count_refs(&mut self, n: usize) -> Result<()> {
        self.pushes = self.pushes.saturating_add(n);
        if self.pushes > self.limits.max_nodes {
            return Err(PickleError::TooManyNodes);
        }
        Ok(())
    }

    fn push(&mut self, id: NodeId) -> Result<()> {
        self.count_refs(1)?;
        self.stack.push(id);
        Ok(())
    }

    fn alloc(&mut self, node: Node) -> Result<NodeId> {
        if self.arena.len() >= self.limits.max_nodes {
            return Err(PickleError::TooManyNodes);
        }
        self.arena.push(node);
        Ok(self.arena.len() - 1)
    }

    fn push_node(&mut self, node: Node) -> Result<()> {
        let id = self.alloc(node)?;
        self.push(id)
    }

    fn push_leaf(&mut self, value: Value) -> Result<()> {
        self.push_node(Node::Leaf(value))
    }

    fn push_str(&mut self, len: u64) -> Result<()> {
        let bytes = self.take(len)?;
        self.push_leaf(Value::Str(utf8_lossy(bytes)))
    }

    fn push_ext(&mut self, code: i32) -> Result<()> {
        if code <= 0 {
            return Err(PickleError::Invalid("EXT code <= 0"));
        }
        self.push_leaf(Value::Extension(code))
    }

    /// INST/OBJ: `class(*args)`, recorded as an Object whose args are a fresh tuple.
    fn push_instance(&mut self, class: NodeId, args: Vec<NodeId>) -> Result<()> {
        self.check_container(args.len())?;
        let args = self.alloc(Node::Tuple(args))?;
        self.push_node(Node::Object {
            class,
            args,
            kwargs: Vec::new(),
            state: None,
        })
    }

    fn pop(&mut self) -> Result<NodeId> {
        if self.stack.len() <= self.fence() {
            return Err(PickleError::StackUnderflow);
        }
        self.stack.pop().ok_or(PickleError::StackUnderflow)
    }

    fn top(&self) -> Result<NodeId> {
        if self.stack.len() <= self.fence() {
            return Err(PickleError::StackUnderflow);
        }
        self.stack
            .last()
            .copied()
            .ok_or(PickleError::StackUnderflow)
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<NodeId>> {
        let available = self.stack.len().saturating_sub(self.fence());
        if available < n {
            return Err(PickleError::StackUnderflow);
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    /// POP removes the top item, or the topmost mark when no item sits above it (CPython
    /// keeps marks on a separate stack and does the same).
    fn pop_or_pop_mark(&mut self) -> Result<()> {
        if self.marks.last() == Some(&self.stack.len()) {
            self.marks.pop();
            Ok(())
        } else {
            self.pop().map(drop)
        }
    }

    /// Removes the topmost mark and returns the items above it.
    fn pop_mark(&mut self) -> Result<Vec<NodeId>> {
        let mark = self.marks.pop().ok_or(PickleError::NoMark)?;
        if mark > self.stack.len() {
            return Err(PickleError::Invalid("mark above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let top = self.top()?;
        if !self.memo.contains_key(&key) && self.memo.len() >= self.limits.max_memo {
            return Err(PickleError::MemoTooLarge);
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        let id = *self.memo.get(&key).ok_or(PickleError::BadMemoKey(key))?;
        self.push(id)
    }

    // --- nodes -------------------------------------------------------------------------

    fn node(&self, id: NodeId) -> Result<&Node> {
        self.arena
            .get(id)
            .ok_or(PickleError::Invalid("dangling reference"))
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut Node> {
        self.arena
            .get_mut(id)
            .ok_or(PickleError::Invalid("dangling reference"))
    }

    fn check_container(&self, len: usize) -> Result<()> {
        if len > self.limits.max_container_len {
            return Err(PickleError::ContainerTooLarge);
        }
        Ok(())
    }

    fn leaf_str(&self, id: NodeId) -> Result<String> {
        match self.node(id)? {
            Node::Leaf(Value::Str(s)) => Ok(s.clone()),
            _ => Err(PickleError::Invalid("STACK_GLOBAL needs two str")),
        }
    }

    fn expect_tuple(&self, id: NodeId) -> Result<()> {
        match self.node(id)? {
            Node::Tuple(_) => Ok(()),
            _ => Err(PickleError::Invalid("NEWOBJ args is not a tuple")),
        }
    }

    /// Whether items added by APPENDS/SETITEMS/ADDITEMS or state set by BUILD can be
    /// recorded on this node. True for instances and call results, whose Python type may
    /// well be a list/dict subclass or have `__setstate__`; false for built-in values, on
    /// which CPython itself fails.
    fn is_opaque(node: &Node) -> bool {
        matches!(
            node,
            Node::Reduce { .. }
                | Node::Object { .. }
                | Node::Build { .. }
                | Node::ListItems { .. }
                | Node::DictItems { .. }
                | Node::SetItems { .. }
                | Node::PersistentId(_)
        )
    }

    /// Replaces node `target` by `make(moved)`, where `moved` is a new node holding the old
    /// contents. Every reference to `target` (stack, memo, containers) then sees the
    /// wrapper, just as Python's references see the mutated object.
    fn wrap(&mut self, target: NodeId, make: impl FnOnce(NodeId) -> Node) -> Result<()> {
        let moved = self.alloc(Node::Taken)?;
        let old = std::mem::replace(self.node_mut(target)?, Node::Taken);
        *self.node_mut(moved)? = old;
        *self.node_mut(target)? = make(moved);
        Ok(())
    }

    fn add_list_items(&mut self, target: NodeId, items: Vec<NodeId>) -> Result<()> {
        let max = self.limits.max_container_len;
        let node = self.node_mut(target)?;
        match node {
            Node::List(list) | Node::ListItems { items: list, .. } => {
                if list.len().saturating_add(items.len()) > max {
                    return Err(PickleError::ContainerTooLarge);
                }
                list.extend(items);
                Ok(())
            }
            other if Self::is_opaque(other) => {
                self.check_container(items.len())?;
                self.wrap(target, |obj| Node::ListItems { obj, items })
            }
            _ => Err(PickleError::Invalid("APPEND to a value that is not a list")),
        }
    }

    fn add_dict_items(&mut self, target: NodeId, new: Vec<(NodeId, NodeId)>) -> Result<()> {
        let max = self.limits.max_container_len;
        let node = self.node_mut(target)?;
        match node {
            Node::Dict(entries) | Node::DictItems { entries, .. } => {
                if entries.len().saturating_add(new.len()) > max {
                    return Err(PickleError::ContainerTooLarge);
                }
                entries.extend(new);
                Ok(())
            }
            other if Self::is_opaque(other) => {
                self.check_container(new.len())?;
                self.wrap(target, |obj| Node::DictItems { obj, entries: new })
            }
            _ => Err(PickleError::Invalid(
                "SETITEM on a value that is not a dict",
            )),
        }
    }

    fn add_set_items(&mut self, target: NodeId, items: Vec<NodeId>) -> Result<()> {
        let max = self.limits.max_container_len;
        let node = self.node_mut(target)?;
        match node {
            Node::Set(set) | Node::SetItems { items: set, .. } => {
                if set.len().saturating_add(items.len()) > max {
                    return Err(PickleError::ContainerTooLarge);
                }
                set.extend(items);
                Ok(())
            }
            other if Self::is_opaque(other) => {
                self.check_container(items.len())?;
                self.wrap(target, |obj| Node::SetItems { obj, items })
            }
            _ => Err(PickleError::Invalid(
                "ADDITEMS on a value that is not a set",
            )),
        }
    }

    /// BUILD: the first one fills an Object's state; later ones, and BUILD on anything else
    /// that could have `__setstate__`, wrap the target in a Build. On built-in values
    /// CPython's default BUILD only accepts a state of `None` (or `(None, {})`) and does
    /// nothing; anything else fails there, and here.
    fn apply_build(&mut self, target: NodeId, state: NodeId) -> Result<()> {
        let noop_state = self.is_noop_state(state)?;
        let node = self.node_mut(target)?;
        match node {
            Node::Object {
                state: slot @ None, ..
            } => {
                *slot = Some(state);
                Ok(())
            }
            other if Self::is_opaque(other) => self.wrap(target, |obj| Node::Build { obj, state }),
            _ if noop_state => Ok(()),
            _ => Err(PickleError::Invalid("BUILD on a built-in value")),
        }
    }

    /// `None`, or `(None, slotstate)` with an empty slot-state dict.
    fn is_noop_state(&self, state: NodeId) -> Result<bool> {
        Ok(match self.node(state)? {
            Node::Leaf(Value::None) => true,
            Node::Tuple(parts) => match parts.as_slice() {
                [dict, slots] => {
                    matches!(self.node(*dict)?, Node::Leaf(Value::None))
                        && matches!(self.node(*slots)?, Node::Dict(e) if e.is_empty())
                }
                _ => false,
            },
            _ => false,
        })
    }
}

/// Groups a MARK's items into key/value pairs (DICT, SETITEMS).
fn pairs(items: Vec<NodeId>) -> Result<Vec<(NodeId, NodeId)>> {
    if items.len() % 2 != 0 {
        return Err(PickleError::Invalid("odd number of items for a dict"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut iter = items.into_iter();
    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
        out.push((k, v));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Materialization: arena -> Value tree
// ---------------------------------------------------------------------------------------

/// Turns the arena into a [`Value`] tree in two passes.
///
/// Pass 1 (iterative DFS from the root) finds cycles and computes, per node, the size,
/// string/bytes volume and depth of its *expanded* subtree, saturating, so a memo bomb is
/// rejected before anything is copied. It also counts the references to each node.
///
/// Pass 2 builds the tree (recursion bounded by `max_depth`), constructing each node once:
/// a node referenced `n` times is cloned for the first `n - 1` references and moved into the
/// last one, so a large unshared `bytes` is never copied again.
struct Materializer<'l> {
    arena: Vec<Node>,
    limits: &'l Limits,
    /// Size of the pickle being decoded: the decoded strings and bytes may be at most
    /// [`PAYLOAD_EXPANSION`] times this, so a small pickle that references one big `bytes`
    /// many times cannot make us allocate much more than it sent.
    input_len: usize,
    /// References still to be served, per node.
    remaining: Vec<u32>,
    /// Values of shared nodes, kept until their last reference takes them.
    cache: HashMap<NodeId, Value>,
}

impl<'l> Materializer<'l> {
    fn new(arena: Vec<Node>, limits: &'l Limits, input_len: usize) -> Self {
        Materializer {
            arena,
            limits,
            input_len,
            remaining: Vec::new(),
            cache: HashMap::new(),
        }
    }

    fn run(mut self, root: NodeId) -> Result<Value> {
        self.analyze(root)?;
        self.value(root)
    }

    fn child(&self, id: NodeId, i: usize) -> Option<NodeId> {
        self.arena.get(id).and_then(|n| n.child(i))
    }

    fn analyze(&mut self, root: NodeId) -> Result<()> {
        const WHITE: u8 = 0;
        const GRAY: u8 = 1;
        const BLACK: u8 = 2;
        let n = self.arena.len();
        let max_depth = self.limits.max_depth;
        let max_nodes = u64::try_from(self.limits.max_nodes).unwrap_or(u64::MAX);
        // Small pickles may still expand a little (shared short strings are normal).
        let allowed = self.input_len.min(self.limits.max_input).max(64 * 1024);
        let max_payload =
            u64::try_from(allowed.saturating_mul(PAYLOAD_EXPANSION)).unwrap_or(u64::MAX);

        let mut color = vec![WHITE; n];
        let mut refs = vec![0u32; n];
        let mut size = vec![0u64; n];
        let mut payload = vec![0u64; n];
        let mut depth = vec![0usize; n];

        let set = |v: &mut [u8], i: NodeId, c: u8| -> Result<()> {
            *v.get_mut(i)
                .ok_or(PickleError::Invalid("dangling reference"))? = c;
            Ok(())
        };
        let get = |v: &[u8], i: NodeId| v.get(i).copied();

        set(&mut color, root, GRAY)?;
        if let Some(r) = refs.get_mut(root) {
            *r = 1;
        }
        // (node, index of its next child): the path from the root, i.e. the current depth.
        let mut path: Vec<(NodeId, usize)> = vec![(root, 0)];
        while let Some((id, next)) = path.last_mut() {
            let id = *id;
            if let Some(c) = self.child(id, *next) {
                *next += 1;
                if let Some(r) = refs.get_mut(c) {
                    *r = r.saturating_add(1);
                }
                match get(&color, c) {
                    Some(WHITE) => {
                        if path.len() >= max_depth {
                            return Err(PickleError::TooDeep);
                        }
                        set(&mut color, c, GRAY)?;
                        path.push((c, 0));
                    }
                    Some(GRAY) => return Err(PickleError::Cycle),
                    Some(_) => {}
                    None => return Err(PickleError::Invalid("dangling reference")),
                }
                continue;
            }
            // All children done: fold their totals into this node's.
            let node = self
                .arena
                .get(id)
                .ok_or(PickleError::Invalid("dangling reference"))?;
            let mut s: u64 = 1;
            let mut p = u64::try_from(node.payload()).unwrap_or(u64::MAX);
            let mut d: usize = 0;
            let mut i = 0;
            while let Some(c) = node.child(i) {
                s = s.saturating_add(size.get(c).copied().unwrap_or(0));
                p = p.saturating_add(payload.get(c).copied().unwrap_or(0));
                d = d.max(depth.get(c).copied().unwrap_or(0));
                i += 1;
            }
            let d = d + 1;
            if d > max_depth {
                return Err(PickleError::TooDeep);
            }
            if s > max_nodes {
                return Err(PickleError::TooManyNodes);
            }
            if p > max_payload {
                return Err(PickleError::PayloadTooLarge);
            }
            if let (Some(sz), Some(pl), Some(dp)) =
                (size.get_mut(id), payload.get_mut(id), depth.get_mut(id))
            {
                *sz = s;
                *pl = p;
                *dp = d;
            }
            set(&mut color, id, BLACK)?;
            path.pop();
        }
        self.remaining = refs;
        Ok(())
    }

    /// The value of node `id` for one of its references.
    fn value(&mut self, id: NodeId) -> Result<Value> {
        let remaining = self
            .remaining
            .get_mut(id)
            .ok_or(PickleError::Invalid("dangling reference"))?;
        *remaining = remaining.saturating_sub(1);
        let last = *remaining == 0;
        let cached = if last {
            self.cache.remove(&id)
        } else {
            self.cache.get(&id).cloned()
        };
        if let Some(v) = cached {
            return Ok(v);
        }
        let node = std::mem::replace(
            self.arena
                .get_mut(id)
                .ok_or(PickleError::Invalid("dangling reference"))?,
            Node::Taken,
        );
        let v = self.construct(node)?;
        if !last {
            self.cache.insert(id, v.clone());
        }
        Ok(v)
    }

    fn values(&mut self, ids: Vec<NodeId>) -> Result<Vec<Value>> {
        ids.into_iter().map(|c| self.value(c)).collect()
    }

    fn entries(&mut self, ids: Vec<(NodeId, NodeId)>) -> Result<Vec<(Value, Value)>> {
        ids.into_iter()
            .map(|(k, v)| Ok((self.value(k)?, self.value(v)?)))
            .collect()
    }

    fn boxed(&mut self, id: NodeId) -> Result<Box<Value>> {
        self.value(id).map(Box::new)
    }

    fn construct(&mut self, node: Node) -> Result<Value> {
        Ok(match node {
            Node::Leaf(v) => v,
            Node::List(items) => Value::List(self.values(items)?),
            Node::Tuple(items) => Value::Tuple(self.values(items)?),
            Node::Dict(entries) => Value::Dict(dedup_entries(self.entries(entries)?)),
            Node::Set(items) => Value::Set(dedup_items(self.values(items)?)),
            Node::FrozenSet(items) => Value::FrozenSet(dedup_items(self.values(items)?)),
            Node::Reduce { callable, args } => Value::Reduce {
                callable: self.boxed(callable)?,
                args: self.boxed(args)?,
            },
            Node::Object {
                class,
                args,
                kwargs,
                state,
            } => Value::Object {
                class: self.boxed(class)?,
                args: match self.value(args)? {
                    Value::Tuple(items) => items,
                    other => vec![other],
                },
                kwargs: dedup_entries(self.entries(kwargs)?),
                state: state.map(|s| self.boxed(s)).transpose()?,
            },
            Node::Build { obj, state } => Value::Build {
                obj: self.boxed(obj)?,
                state: self.boxed(state)?,
            },
            Node::ListItems { obj, items } => Value::Build {
                obj: self.boxed(obj)?,
                state: Box::new(Value::List(self.values(items)?)),
            },
            Node::DictItems { obj, entries } => Value::Build {
                obj: self.boxed(obj)?,
                state: Box::new(Value::Dict(dedup_entries(self.entries(entries)?))),
            },
            Node::SetItems { obj, items } => Value::Build {
                obj: self.boxed(obj)?,
                state: Box::new(Value::Set(dedup_items(self.values(items)?))),
            },
            Node::PersistentId(inner) => Value::PersistentId(self.boxed(inner)?),
            Node::Taken => return Err(PickleError::Invalid("node used after it was taken")),
        })
    }
}

/// A hashable stand-in for the Python keys that compare equal across types
/// (`1 == 1.0 == True`), used to merge duplicate dict keys and set items.
#[derive(Hash, PartialEq, Eq)]
enum KeyRepr<'v> {
    None,
    Int(i64),
    Big(&'v [u8]),
    Float(u64),
    Str(&'v str),
    Bytes(&'v [u8]),
    Tuple(Vec<KeyRepr<'v>>),
    Global(&'v str, &'v str),
}

/// `None` for values that are unhashable in Python or not worth merging (NaN, objects):
/// those are kept as they are.
fn key_repr(v: &Value) -> Option<KeyRepr<'_>> {
    Some(match v {
        Value::None => KeyRepr::None,
        Value::Bool(b) => KeyRepr::Int(i64::from(*b)),
        Value::Int(n) => KeyRepr::Int(*n),
        Value::BigInt(b) => KeyRepr::Big(b),
        Value::Float(f) => {
            if f.is_nan() {
                return None;
            }
            // Integral floats in i64 range equal the int (and -0.0 == 0).
            // -2^63 as f64 is exact.
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            let min = i64::MIN as f64;
            #[allow(clippy::cast_possible_truncation)]
            if f.fract() == 0.0 && *f >= min && *f < -min {
                KeyRepr::Int(*f as i64)
            } else {
                KeyRepr::Float(f.to_bits())
            }
        }
        Value::Str(s) => KeyRepr::Str(s),
        Value::Bytes(b) => KeyRepr::Bytes(b),
        Value::Tuple(items) => KeyRepr::Tuple(items.iter().map(key_repr).collect::<Option<_>>()?),
        Value::FrozenSet(_) => return None,
        Value::Global { module, name } => KeyRepr::Global(module, name),
        _ => return None,
    })
}

/// For each item, the index of an earlier item with an equal key, if any.
fn duplicates<'v>(keys: impl Iterator<Item = &'v Value>) -> Option<Vec<Option<usize>>> {
    let mut first: HashMap<KeyRepr<'v>, usize> = HashMap::new();
    let mut dup_of = Vec::new();
    let mut any = false;
    for (i, k) in keys.enumerate() {
        let d = key_repr(k).and_then(|r| match first.entry(r) {
            std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(i);
                None
            }
        });
        any |= d.is_some();
        dup_of.push(d);
    }
    any.then_some(dup_of)
}

/// Python dict semantics: the first key keeps its place, the last value wins.
fn dedup_entries(entries: Vec<(Value, Value)>) -> Vec<(Value, Value)> {
    if entries.len() < 2 {
        return entries;
    }
    let Some(dup_of) = duplicates(entries.iter().map(|(k, _)| k)) else {
        return entries;
    };
    let mut out: Vec<(Value, Value)> = Vec::with_capacity(entries.len());
    let mut out_index = vec![0usize; entries.len()];
    for (i, (k, v)) in entries.into_iter().enumerate() {
        match dup_of.get(i).copied().flatten() {
            Some(j) => {
                let slot = out_index.get(j).copied().and_then(|o| out.get_mut(o));
                if let Some(slot) = slot {
                    slot.1 = v;
                }
            }
            None => {
                if let Some(o) = out_index.get_mut(i) {
                    *o = out.len();
                }
                out.push((k, v));
            }
        }
    }
    out
}

/// Python set semantics: the first of equal items stays.
fn dedup_items(items: Vec<Value>) -> Vec<Value> {
    if items.len() < 2 {
        return items;
    }
    let Some(dup_of) = duplicates(items.iter()) else {
        return items;
    };
    items
        .into_iter()
        .zip(dup_of)
        .filter_map(|(v, d)| d.is_none().then_some(v))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Scalar decoding helpers
// ---------------------------------------------------------------------------------------

/// An int from little-endian two's complement bytes (LONG1/LONG4): `Int` when it fits,
/// otherwise `BigInt` with redundant sign bytes removed.
fn int_from_le(bytes: Vec<u8>) -> Value {
    let bytes = trim_sign_bytes(bytes);
    match le_to_i64(&bytes) {
        Some(n) => Value::Int(n),
        None => Value::BigInt(bytes),
    }
}

/// Removes redundant sign-extension bytes from little-endian two's complement.
fn trim_sign_bytes(mut bytes: Vec<u8>) -> Vec<u8> {
    while let [.., prev, last] = bytes.as_slice() {
        let redundant = (*last == 0 && prev & 0x80 == 0) || (*last == 0xff && prev & 0x80 != 0);
        if !redundant {
            break;
        }
        bytes.pop();
    }
    bytes
}

/// Sign-extends at most 8 little-endian two's complement bytes (none is 0).
fn le_to_i64(bytes: &[u8]) -> Option<i64> {
    if bytes.len() > 8 {
        return None;
    }
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut buf = if negative { [0xff; 8] } else { [0; 8] };
    for (dst, src) in buf.iter_mut().zip(bytes) {
        *dst = *src;
    }
    Some(i64::from_le_bytes(buf))
}

/// The INT opcode, as CPython's C unpickler reads it: first like C `strtol(s, 0)` (so
/// `010` is octal), and `00`/`01` (any two-character 0 or 1) are the protocol 0 bools;
/// failing that, like Python's `int(s, 0)`.
fn parse_int_opcode(line: &[u8]) -> Result<Value> {
    if let Some(n) = parse_strtol(line) {
        if line.len() == 2 && (n == 0 || n == 1) {
            return Ok(Value::Bool(n == 1));
        }
        return Ok(Value::Int(n));
    }
    parse_py_int(line).ok_or(PickleError::Invalid("bad INT literal"))
}

/// C `strtol(s, &end, 0)` that must consume the whole line and not overflow.
fn parse_strtol(line: &[u8]) -> Option<i64> {
    let s = line.trim_ascii_start();
    let (negative, s) = split_sign(s);
    let (radix, digits) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (16, rest),
        [b'0', rest @ ..] if !rest.is_empty() => (8, rest),
        _ => (10, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: i64 = 0;
    for &c in digits {
        let d = i64::from(char::from(c).to_digit(radix)?);
        n = n.checked_mul(i64::from(radix))?;
        n = if negative {
            n.checked_sub(d)?
        } else {
            n.checked_add(d)?
        };
    }
    Some(n)
}

fn split_sign(s: &[u8]) -> (bool, &[u8]) {
    match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    }
}

/// Python's `int(s, 0)` for ASCII text (LONG and the INT fallback): surrounding
/// whitespace, a sign, `0x`/`0o`/`0b` prefixes, `_` between digits, no leading zeros in
/// decimal (unlike `strtol`, `010` is an error). At most [`MAX_INT_DIGITS`] digits, like
/// CPython's default limit.
fn parse_py_int(text: &[u8]) -> Option<Value> {
    let s = text.trim_ascii();
    let (negative, s) = split_sign(s);
    let (radix, mut digits, prefixed) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (16u32, rest, true),
        [b'0', b'o' | b'O', rest @ ..] => (8, rest, true),
        [b'0', b'b' | b'B', rest @ ..] => (2, rest, true),
        _ => (10, s, false),
    };
    if prefixed {
        // `0x_ff` is allowed: one underscore right after the prefix.
        if let [b'_', rest @ ..] = digits {
            digits = rest;
        }
    }
    // Digits with single underscores between them.
    let mut clean = Vec::with_capacity(digits.len());
    let mut prev_underscore = true;
    for &c in digits {
        if c == b'_' {
            if prev_underscore {
                return None;
            }
            prev_underscore = true;
            continue;
        }
        clean.push(u8::try_from(char::from(c).to_digit(radix)?).ok()?);
        prev_underscore = false;
    }
    if clean.is_empty() || prev_underscore || clean.len() > MAX_INT_DIGITS {
        return None;
    }
    if radix == 10 && clean.len() > 1 && clean.first() == Some(&0) && clean.iter().any(|&d| d != 0)
    {
        return None;
    }
    // Magnitude in little-endian u32 limbs: schoolbook, fine for <= 4300 digits.
    let mut limbs: Vec<u32> = Vec::new();
    for d in clean {
        let mut carry = u64::from(d);
        for limb in &mut limbs {
            let t = u64::from(*limb) * u64::from(radix) + carry;
            *limb = t as u32; // low 32 bits
            carry = t >> 32;
        }
        if carry != 0 {
            limbs.push(carry as u32); // carry < radix <= 16
        }
    }
    let mut bytes: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    bytes.push(0); // room for the sign bit
    if negative {
        // Two's complement: invert and add one.
        let mut carry = true;
        for b in &mut bytes {
            *b = !*b;
            if carry {
                let (v, overflow) = b.overflowing_add(1);
                *b = v;
                carry = overflow;
            }
        }
    }
    Some(int_from_le(bytes))
}

/// The FLOAT opcode: CPython's `PyOS_string_to_double` accepts no surrounding whitespace
/// and raises on overflow (`1e999`), but accepts `inf`/`nan`.
fn parse_float(line: &[u8]) -> Result<f64> {
    let bad = PickleError::Invalid("bad FLOAT literal");
    let text = std::str::from_utf8(line).map_err(|_| bad.clone())?;
    let f: f64 = text.parse().map_err(|_| bad.clone())?;
    if f.is_infinite() {
        let word = text.trim_start_matches(['+', '-']).to_ascii_lowercase();
        if word != "inf" && word != "infinity" {
            return Err(PickleError::Invalid("FLOAT literal overflows"));
        }
    }
    Ok(f)
}

/// Memo keys of PUT/GET are decimal text.
fn parse_memo_key(line: &[u8]) -> Result<u64> {
    let text =
        std::str::from_utf8(line.trim_ascii()).map_err(|_| PickleError::Invalid("bad memo key"))?;
    text.parse()
        .map_err(|_| PickleError::Invalid("bad memo key"))
}

/// Decodes a protocol 2+ string: UTF-8, where CPython's `surrogatepass` may have written
/// lone surrogates as `ED A0..BF xx`. Each bad character becomes one U+FFFD. Valid input
/// (the normal case) is checked and copied once.
fn utf8_lossy(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(bytes.len() + 16);
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (valid, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                out.push(char::REPLACEMENT_CHARACTER);
                let skip = match bad {
                    [0xED, b1, b2, ..]
                        if (0xA0..=0xBF).contains(b1) && (0x80..=0xBF).contains(b2) =>
                    {
                        3
                    }
                    _ => e.error_len().unwrap_or(bad.len()),
                };
                rest = bad.get(skip..).unwrap_or_default();
            }
        }
    }
}

/// The UNICODE opcode's `raw-unicode-escape`: bytes are Latin-1 characters, except that
/// a backslash run of odd length followed by `u`/`U` starts a `\uXXXX`/`\UXXXXXXXX`
/// escape. Lone surrogates become U+FFFD.
fn raw_unicode_escape_decode(bytes: &[u8]) -> Result<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        if c != b'\\' {
            out.push(char::from(c));
            i += 1;
            continue;
        }
        let run = bytes
            .get(i..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| b == b'\\')
            .count();
        i += run;
        let count = match bytes.get(i) {
            Some(b'u') if run % 2 == 1 => 4,
            Some(b'U') if run % 2 == 1 => 8,
            _ => {
                out.extend(std::iter::repeat_n('\\', run));
                continue;
            }
        };
        out.extend(std::iter::repeat_n('\\', run - 1));
        let hex = bytes
            .get(i + 1..i + 1 + count)
            .ok_or(PickleError::Invalid("truncated \\u escape"))?;
        let mut ch: u32 = 0;
        for &h in hex {
            let d = char::from(h)
                .to_digit(16)
                .ok_or(PickleError::Invalid("truncated \\u escape"))?;
            ch = (ch << 4) | d;
        }
        if ch > 0x10_FFFF {
            return Err(PickleError::Invalid("\\U escape out of range"));
        }
        out.push(char::from_u32(ch).unwrap_or(char::REPLACEMENT_CHARACTER));
        i += 1 + count;
    }
    Ok(out)
}

/// The STRING opcode's argument: quoted with `'` or `"` and escaped as Python's
/// `codecs.escape_decode` reads it.
fn unquote_string(line: &[u8]) -> Result<Vec<u8>> {
    let inner = match line {
        [q @ (b'\'' | b'"'), inner @ .., last] if q == last => inner,
        _ => return Err(PickleError::Invalid("STRING argument is not quoted")),
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut iter = inner.iter().copied().peekable();
    while let Some(c) = iter.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(e) = iter.next() else {
            return Err(PickleError::Invalid("trailing \\ in STRING"));
        };
        match e {
            b'\n' => {}
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match iter.peek() {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            iter.next();
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' => {
                let hi = iter.next().and_then(|h| char::from(h).to_digit(16));
                let lo = iter.next().and_then(|h| char::from(h).to_digit(16));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(((hi << 4) | lo) as u8),
                    _ => return Err(PickleError::Invalid("invalid \\x escape in STRING")),
                }
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------

/// Encodes `v` as a complete protocol 4 pickle (no FRAME, no memo).
///
/// Protocol 4 is what every Python 3 client can load (3.7 lacks protocol 5), and without
/// memo or FRAME the output is a plain function of the value (a value that occurs twice is
/// written twice). `ByteArray` and `PickleBuffer` are written as bytes (BYTEARRAY8 is
/// protocol 5). Globals use the text `GLOBAL` opcode, the capture-verified form, unless a
/// name contains a newline (then STACK_GLOBAL). Objects are written as
/// `class, args, NEWOBJ[_EX], state, BUILD`, which CPython loads as a real instance.
///
/// # Panics
/// Only on values no pickle can hold: a `BigInt` of 2 GiB or more.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(v, &mut out);
    out
}

/// Appends the pickle of `v` (see [`encode`]) to `out`.
pub fn encode_into(v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(&[op::PROTO, 4]);
    write_value(v, out);
    out.push(op::STOP);
}

/// A complete pickle of one int: the node's FILEXFER acknowledgements and COMPUTE reply.
pub fn encode_int(n: i64) -> Vec<u8> {
    encode(&Value::Int(n))
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::None => out.push(op::NONE),
        Value::Bool(true) => out.push(op::NEWTRUE),
        Value::Bool(false) => out.push(op::NEWFALSE),
        Value::Int(n) => write_int(*n, out),
        Value::BigInt(bytes) => {
            let bytes = trim_sign_bytes(bytes.clone());
            match le_to_i64(&bytes) {
                Some(n) => write_int(n, out),
                None => write_long(&bytes, out),
            }
        }
        Value::Float(f) => {
            out.push(op::BINFLOAT);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) => write_sized(
            s.as_bytes(),
            [op::SHORT_BINUNICODE, op::BINUNICODE, op::BINUNICODE8],
            out,
        ),
        Value::Bytes(b) | Value::ByteArray(b) | Value::PickleBuffer(b) => {
            write_sized(b, [op::SHORT_BINBYTES, op::BINBYTES, op::BINBYTES8], out)
        }
        Value::List(items) => {
            out.push(op::EMPTY_LIST);
            for batch in items.chunks(BATCH_SIZE) {
                if let [single] = batch {
                    write_value(single, out);
                    out.push(op::APPEND);
                } else {
                    out.push(op::MARK);
                    batch.iter().for_each(|item| write_value(item, out));
                    out.push(op::APPENDS);
                }
            }
        }
        Value::Tuple(items) => write_tuple(items, out),
        Value::Dict(entries) => {
            out.push(op::EMPTY_DICT);
            write_dict_items(entries, out);
        }
        Value::Set(items) => {
            out.push(op::EMPTY_SET);
            for batch in items.chunks(BATCH_SIZE) {
                out.push(op::MARK);
                batch.iter().for_each(|item| write_value(item, out));
                out.push(op::ADDITEMS);
            }
        }
        Value::FrozenSet(items) => {
            out.push(op::MARK);
            items.iter().for_each(|item| write_value(item, out));
            out.push(op::FROZENSET);
        }
        Value::Global { module, name } => {
            if module.contains('\n') || name.contains('\n') {
                // The text form cannot carry a newline; STACK_GLOBAL can.
                write_value(&Value::Str(module.clone()), out);
                write_value(&Value::Str(name.clone()), out);
                out.push(op::STACK_GLOBAL);
            } else {
                out.push(op::GLOBAL);
                out.extend_from_slice(module.as_bytes());
                out.push(b'\n');
                out.extend_from_slice(name.as_bytes());
                out.push(b'\n');
            }
        }
        Value::Reduce { callable, args } => {
            write_value(callable, out);
            write_value(args, out);
            out.push(op::REDUCE);
        }
        Value::Object {
            class,
            args,
            kwargs,
            state,
        } => {
            write_value(class, out);
            write_tuple(args, out);
            if kwargs.is_empty() {
                out.push(op::NEWOBJ);
            } else {
                out.push(op::EMPTY_DICT);
                write_dict_items(kwargs, out);
                out.push(op::NEWOBJ_EX);
            }
            if let Some(state) = state {
                write_value(state, out);
                out.push(op::BUILD);
            }
        }
        Value::Build { obj, state } => {
            write_value(obj, out);
            write_value(state, out);
            out.push(op::BUILD);
        }
        Value::PersistentId(id) => {
            write_value(id, out);
            out.push(op::BINPERSID);
        }
        Value::Extension(code) => match (u8::try_from(*code), u16::try_from(*code)) {
            (Ok(c), _) => out.extend_from_slice(&[op::EXT1, c]),
            (_, Ok(c)) => {
                out.push(op::EXT2);
                out.extend_from_slice(&c.to_le_bytes());
            }
            _ => {
                out.push(op::EXT4);
                out.extend_from_slice(&code.to_le_bytes());
            }
        },
    }
}

/// The smallest int opcode, as CPython's pickler chooses it.
fn write_int(n: i64, out: &mut Vec<u8>) {
    if let Ok(b) = u8::try_from(n) {
        out.extend_from_slice(&[op::BININT1, b]);
    } else if let Ok(w) = u16::try_from(n) {
        out.push(op::BININT2);
        out.extend_from_slice(&w.to_le_bytes());
    } else if let Ok(d) = i32::try_from(n) {
        out.push(op::BININT);
        out.extend_from_slice(&d.to_le_bytes());
    } else {
        write_long(&trim_sign_bytes(n.to_le_bytes().to_vec()), out);
    }
}

fn write_long(bytes: &[u8], out: &mut Vec<u8>) {
    if let Ok(len) = u8::try_from(bytes.len()) {
        out.extend_from_slice(&[op::LONG1, len]);
    } else {
        let len = i32::try_from(bytes.len()).expect("a BigInt of 2 GiB or more cannot be pickled");
        out.push(op::LONG4);
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(bytes);
}

/// Writes a length-prefixed string or bytes with the 1-, 4- or 8-byte length opcode.
fn write_sized(data: &[u8], ops: [u8; 3], out: &mut Vec<u8>) {
    let [short, long4, long8] = ops;
    if let Ok(len) = u8::try_from(data.len()) {
        out.extend_from_slice(&[short, len]);
    } else if let Ok(len) = u32::try_from(data.len()) {
        out.push(long4);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        out.push(long8);
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(data);
}

fn write_tuple(items: &[Value], out: &mut Vec<u8>) {
    match items {
        [] => out.push(op::EMPTY_TUPLE),
        [a] => {
            write_value(a, out);
            out.push(op::TUPLE1);
        }
        [a, b] => {
            write_value(a, out);
            write_value(b, out);
            out.push(op::TUPLE2);
        }
        [a, b, c] => {
            write_value(a, out);
            write_value(b, out);
            write_value(c, out);
            out.push(op::TUPLE3);
        }
        _ => {
            out.push(op::MARK);
            items.iter().for_each(|item| write_value(item, out));
            out.push(op::TUPLE);
        }
    }
}

/// SETITEMS batches (SETITEM for a lone entry) onto the dict on top of the stack.
fn write_dict_items(entries: &[(Value, Value)], out: &mut Vec<u8>) {
    for batch in entries.chunks(BATCH_SIZE) {
        if let [(k, v)] = batch {
            write_value(k, out);
            write_value(v, out);
            out.push(op::SETITEM);
        } else {
            out.push(op::MARK);
            for (k, v) in batch {
                write_value(k, out);
                write_value(v, out);
            }
            out.push(op::SETITEMS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write as _;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    use Value as V;

    fn s(x: &str) -> Value {
        V::Str(x.to_owned())
    }

    fn f(bits: u64) -> Value {
        V::Float(f64::from_bits(bits))
    }

    fn g(module: &str, name: &str) -> Value {
        Value::global(module, name)
    }

    fn t(items: Vec<Value>) -> Value {
        V::Tuple(items)
    }

    fn ints(items: &[i64]) -> Vec<Value> {
        items.iter().map(|&n| V::Int(n)).collect()
    }

    fn reduce(callable: Value, args: Value) -> Value {
        V::Reduce {
            callable: Box::new(callable),
            args: Box::new(args),
        }
    }

    fn build(obj: Value, state: Value) -> Value {
        V::Build {
            obj: Box::new(obj),
            state: Box::new(state),
        }
    }

    fn unhex(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("test hex"))
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Runs `script` with python3, `input` on stdin (the script must read all of stdin
    /// before writing), and returns stdout.
    fn python(script: &str, input: &str, pythonpath: Option<&Path>) -> String {
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(script)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = pythonpath {
            cmd.env("PYTHONPATH", path);
        }
        let mut child = cmd
            .spawn()
            .expect("python3 must be installed to run this test");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("write to python3");
        let out = child.wait_with_output().expect("python3 output");
        assert!(
            out.status.success(),
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("python3 prints UTF-8")
    }

    /// Loads each pickle with CPython and returns `repr()` of each object, one per line.
    fn python_reprs(pickles: &[Vec<u8>]) -> Vec<String> {
        let input: Vec<String> = pickles.iter().map(|p| hex(p)).collect();
        let script = "import sys, pickle\n\
                      lines = sys.stdin.read().split()\n\
                      for h in lines:\n    print(ascii(pickle.loads(bytes.fromhex(h))))\n";
        python(script, &input.join("\n"), None)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    // ----- golden vectors from CPython ---------------------------------------------------

    /// Pickles written by CPython 3.11.7 `pickle.dumps(value, protocol)` and the value each
    /// must decode to (generated from the same Python object).
    fn golden_plain() -> Vec<(&'static str, Vec<u8>, Value)> {
        let ints = V::List(vec![
            V::Int(0),
            V::Int(1),
            V::Int(-1),
            V::Int(255),
            V::Int(256),
            V::Int(65535),
            V::Int(65536),
            V::Int(-129),
            V::Int(2147483647),
            V::Int(-2147483648),
            V::Int(2147483648),
            V::Int(9223372036854775807),
            V::Int(i64::MIN),
            V::BigInt(vec![0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00]),
            V::BigInt(vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff]),
            V::BigInt(vec![
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
            ]),
            V::BigInt(vec![
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0,
            ]),
        ]);
        let floats = V::List(vec![
            f(0x0000000000000000),
            f(0xbff8000000000000),
            f(0x7e37e43c8800759c),
            f(0x7ff0000000000000),
            f(0xfff0000000000000),
            f(0x400921fb54442d18),
            f(0x0000000000000001),
        ]);
        let texts = V::List(vec![s("h\u{e9}llo w\u{f6}rld \u{2603} \u{1f600}"), s(""), s("a\\b\u{a}c\u{0}\u{d}\u{1a}"), s("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), s("lone \u{FFFD} surrogate")]);
        let bytes = V::List(vec![V::Bytes(b"\x00\xff abc".to_vec()), V::Bytes(b"".to_vec()), V::Bytes(b"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\
            yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\
            yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy".to_vec())]);
        let nested = V::Dict(vec![
            (
                s("a"),
                V::List(vec![
                    V::Int(1),
                    V::Tuple(vec![V::Int(2), V::Int(3)]),
                    V::Set(vec![V::Int(4), V::Int(5)]),
                    V::FrozenSet(vec![V::Int(6)]),
                ]),
            ),
            (s("b"), V::Tuple(vec![])),
            (s("c"), V::Tuple(vec![V::Int(1)])),
            (
                s("d"),
                V::Tuple(vec![V::Int(1), V::Int(2), V::Int(3), V::Int(4)]),
            ),
            (s("e"), V::None),
            (s("f"), V::Bool(true)),
            (s("g"), V::Bool(false)),
            (
                s("h"),
                V::Dict(vec![(s("x"), V::List(vec![V::List(vec![])]))]),
            ),
        ]);
        let nested_nosets = V::Dict(vec![
            (
                s("a"),
                V::List(vec![V::Int(1), V::Tuple(vec![V::Int(2), V::Int(3)])]),
            ),
            (s("b"), V::Tuple(vec![])),
            (s("c"), V::Tuple(vec![V::Int(1)])),
            (
                s("d"),
                V::Tuple(vec![V::Int(1), V::Int(2), V::Int(3), V::Int(4)]),
            ),
            (s("e"), V::None),
            (s("f"), V::Bool(true)),
            (s("g"), V::Bool(false)),
            (
                s("h"),
                V::Dict(vec![(s("x"), V::List(vec![V::List(vec![])]))]),
            ),
        ]);
        let shared = V::List(vec![
            V::List(vec![V::Int(1), s("two")]),
            V::List(vec![V::Int(1), s("two")]),
            V::Tuple(vec![V::List(vec![V::Int(1), s("two")])]),
        ]);
        let mutated = V::List(vec![
            V::Dict(vec![(s("k"), s("v"))]),
            V::Dict(vec![(s("inner"), V::Dict(vec![(s("k"), s("v"))]))]),
        ]);
        let bools = V::List(vec![V::Bool(true), V::Bool(false)]);
        let many = V::List((0..1001).map(|i| V::Int(i % 256)).collect());
        let manyd = V::Dict((0..1001).map(|i| (V::Int(i), V::Int(i % 256))).collect());
        let empties = V::List(vec![
            V::List(vec![]),
            V::Dict(vec![]),
            V::Tuple(vec![]),
            V::Set(vec![]),
            V::FrozenSet(vec![]),
        ]);
        let bytearray = V::ByteArray(b"xyz".to_vec());
        vec![
            (
                "ints/p0",
                b"(lp0\nI0\naI1\naI-1\naI255\naI256\naI65535\naI65536\naI-129\naI2147483647\naI-2147483648\
                \naL2147483648L\naL9223372036854775807L\naL-9223372036854775808L\naL9223372036854775808L\
                \naL-9223372036854775809L\naL1267650600228229401496703205376L\naL-1267650600228229401496\
                703205376L\na.".to_vec(),
                ints.clone(),
            ),
            (
                "ints/p1",
                b"]q\x00(K\x00K\x01J\xff\xff\xff\xffK\xffM\x00\x01M\xff\xffJ\x00\x00\x01\x00J\x7f\xff\xff\
                \xffJ\xff\xff\xff\x7fJ\x00\x00\x00\x80L2147483648L\nL9223372036854775807L\nL-92233720368\
                54775808L\nL9223372036854775808L\nL-9223372036854775809L\nL12676506002282294014967032053\
                76L\nL-1267650600228229401496703205376L\ne.".to_vec(),
                ints.clone(),
            ),
            (
                "ints/p2",
                b"\x80\x02]q\x00(K\x00K\x01J\xff\xff\xff\xffK\xffM\x00\x01M\xff\xffJ\x00\x00\x01\x00J\x7f\
                \xff\xff\xffJ\xff\xff\xff\x7fJ\x00\x00\x00\x80\x8a\x05\x00\x00\x00\x80\x00\x8a\x08\xff\
                \xff\xff\xff\xff\xff\xff\x7f\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80\x8a\x09\x00\x00\x00\
                \x00\x00\x00\x00\x80\x00\x8a\x09\xff\xff\xff\xff\xff\xff\xff\x7f\xff\x8a\x0d\x00\x00\x00\
                \x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x8a\x0d\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
                \x00\x00\xf0e.".to_vec(),
                ints.clone(),
            ),
            (
                "ints/p3",
                b"\x80\x03]q\x00(K\x00K\x01J\xff\xff\xff\xffK\xffM\x00\x01M\xff\xffJ\x00\x00\x01\x00J\x7f\
                \xff\xff\xffJ\xff\xff\xff\x7fJ\x00\x00\x00\x80\x8a\x05\x00\x00\x00\x80\x00\x8a\x08\xff\
                \xff\xff\xff\xff\xff\xff\x7f\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80\x8a\x09\x00\x00\x00\
                \x00\x00\x00\x00\x80\x00\x8a\x09\xff\xff\xff\xff\xff\xff\xff\x7f\xff\x8a\x0d\x00\x00\x00\
                \x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x8a\x0d\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
                \x00\x00\xf0e.".to_vec(),
                ints.clone(),
            ),
            (
                "ints/p4",
                b"\x80\x04\x95y\x00\x00\x00\x00\x00\x00\x00]\x94(K\x00K\x01J\xff\xff\xff\xffK\xffM\x00\x01\
                M\xff\xffJ\x00\x00\x01\x00J\x7f\xff\xff\xffJ\xff\xff\xff\x7fJ\x00\x00\x00\x80\x8a\x05\
                \x00\x00\x00\x80\x00\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f\x8a\x08\x00\x00\x00\x00\x00\
                \x00\x00\x80\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00\x8a\x09\xff\xff\xff\xff\xff\xff\
                \xff\x7f\xff\x8a\x0d\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x8a\x0d\x00\x00\
                \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xf0e.".to_vec(),
                ints.clone(),
            ),
            (
                "ints/p5",
                b"\x80\x05\x95y\x00\x00\x00\x00\x00\x00\x00]\x94(K\x00K\x01J\xff\xff\xff\xffK\xffM\x00\x01\
                M\xff\xffJ\x00\x00\x01\x00J\x7f\xff\xff\xffJ\xff\xff\xff\x7fJ\x00\x00\x00\x80\x8a\x05\
                \x00\x00\x00\x80\x00\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f\x8a\x08\x00\x00\x00\x00\x00\
                \x00\x00\x80\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00\x8a\x09\xff\xff\xff\xff\xff\xff\
                \xff\x7f\xff\x8a\x0d\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x8a\x0d\x00\x00\
                \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xf0e.".to_vec(),
                ints.clone(),
            ),
            (
                "floats/p0",
                b"(lp0\nF0.0\naF-1.5\naF1e+300\naFinf\naF-inf\naF3.141592653589793\naF5e-324\na.".to_vec(),
                floats.clone(),
            ),
            (
                "floats/p1",
                b"]q\x00(G\x00\x00\x00\x00\x00\x00\x00\x00G\xbf\xf8\x00\x00\x00\x00\x00\x00G~7\xe4<\x88\
                \x00u\x9cG\x7f\xf0\x00\x00\x00\x00\x00\x00G\xff\xf0\x00\x00\x00\x00\x00\x00G@\x09!\xfbTD\
                -\x18G\x00\x00\x00\x00\x00\x00\x00\x01e.".to_vec(),
                floats.clone(),
            ),
            (
                "floats/p2",
                b"\x80\x02]q\x00(G\x00\x00\x00\x00\x00\x00\x00\x00G\xbf\xf8\x00\x00\x00\x00\x00\x00G~7\xe4\
                <\x88\x00u\x9cG\x7f\xf0\x00\x00\x00\x00\x00\x00G\xff\xf0\x00\x00\x00\x00\x00\x00G@\x09!\
                \xfbTD-\x18G\x00\x00\x00\x00\x00\x00\x00\x01e.".to_vec(),
                floats.clone(),
            ),
            (
                "floats/p4",
                b"\x80\x04\x95D\x00\x00\x00\x00\x00\x00\x00]\x94(G\x00\x00\x00\x00\x00\x00\x00\x00G\xbf\
                \xf8\x00\x00\x00\x00\x00\x00G~7\xe4<\x88\x00u\x9cG\x7f\xf0\x00\x00\x00\x00\x00\x00G\xff\
                \xf0\x00\x00\x00\x00\x00\x00G@\x09!\xfbTD-\x18G\x00\x00\x00\x00\x00\x00\x00\x01e.".to_vec(),
                floats.clone(),
            ),
            (
                "floats/p5",
                b"\x80\x05\x95D\x00\x00\x00\x00\x00\x00\x00]\x94(G\x00\x00\x00\x00\x00\x00\x00\x00G\xbf\
                \xf8\x00\x00\x00\x00\x00\x00G~7\xe4<\x88\x00u\x9cG\x7f\xf0\x00\x00\x00\x00\x00\x00G\xff\
                \xf0\x00\x00\x00\x00\x00\x00G@\x09!\xfbTD-\x18G\x00\x00\x00\x00\x00\x00\x00\x01e.".to_vec(),
                floats.clone(),
            ),
            (
                "texts/p0",
                b"(lp0\nVh\xe9llo w\xf6rld \\u2603 \\U0001f600\np1\naV\np2\naVa\\u005cb\\u000ac\\u0000\\u0\
                00d\\u001a\np3\naVxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxx\np4\naVlone \\ud800 surrogate\np5\na.".to_vec(),
                texts.clone(),
            ),
            (
                "texts/p1",
                b"]q\x00(X\x16\x00\x00\x00h\xc3\xa9llo w\xc3\xb6rld \xe2\x98\x83 \xf0\x9f\x98\x80q\x01X\
                \x00\x00\x00\x00q\x02X\x08\x00\x00\x00a\\b\nc\x00\x0d\x1aq\x03X\x00\x01\x00\x00xxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxq\x04X\x12\x00\
                \x00\x00lone \xed\xa0\x80 surrogateq\x05e.".to_vec(),
                texts.clone(),
            ),
            (
                "texts/p2",
                b"\x80\x02]q\x00(X\x16\x00\x00\x00h\xc3\xa9llo w\xc3\xb6rld \xe2\x98\x83 \xf0\x9f\x98\x80q\
                \x01X\x00\x00\x00\x00q\x02X\x08\x00\x00\x00a\\b\nc\x00\x0d\x1aq\x03X\x00\x01\x00\x00xxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxq\x04X\x12\
                \x00\x00\x00lone \xed\xa0\x80 surrogateq\x05e.".to_vec(),
                texts.clone(),
            ),
            (
                "texts/p3",
                b"\x80\x03]q\x00(X\x16\x00\x00\x00h\xc3\xa9llo w\xc3\xb6rld \xe2\x98\x83 \xf0\x9f\x98\x80q\
                \x01X\x00\x00\x00\x00q\x02X\x08\x00\x00\x00a\\b\nc\x00\x0d\x1aq\x03X\x00\x01\x00\x00xxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxq\x04X\x12\
                \x00\x00\x00lone \xed\xa0\x80 surrogateq\x05e.".to_vec(),
                texts.clone(),
            ),
            (
                "texts/p4",
                b"\x80\x04\x95G\x01\x00\x00\x00\x00\x00\x00]\x94(\x8c\x16h\xc3\xa9llo w\xc3\xb6rld \xe2\
                \x98\x83 \xf0\x9f\x98\x80\x94\x8c\x00\x94\x8c\x08a\\b\nc\x00\x0d\x1a\x94X\x00\x01\x00\
                \x00xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\x94\
                \x8c\x12lone \xed\xa0\x80 surrogate\x94e.".to_vec(),
                texts.clone(),
            ),
            (
                "texts/p5",
                b"\x80\x05\x95G\x01\x00\x00\x00\x00\x00\x00]\x94(\x8c\x16h\xc3\xa9llo w\xc3\xb6rld \xe2\
                \x98\x83 \xf0\x9f\x98\x80\x94\x8c\x00\x94\x8c\x08a\\b\nc\x00\x0d\x1a\x94X\x00\x01\x00\
                \x00xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\x94\
                \x8c\x12lone \xed\xa0\x80 surrogate\x94e.".to_vec(),
                texts.clone(),
            ),
            (
                "bytes/p3",
                b"\x80\x03]q\x00(C\x06\x00\xff abcq\x01C\x00q\x02B\x00\x01\x00\x00yyyyyyyyyyyyyyyyyyyyyyyy\
                yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\
                yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\
                yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyq\x03e.".to_vec(),
                bytes.clone(),
            ),
            (
                "bytes/p4",
                b"\x80\x04\x95\x17\x01\x00\x00\x00\x00\x00\x00]\x94(C\x06\x00\xff abc\x94C\x00\x94B\x00\
                \x01\x00\x00yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\
                yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\
                yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\
                yyyy\x94e.".to_vec(),
                bytes.clone(),
            ),
            (
                "bytes/p5",
                b"\x80\x05\x95\x17\x01\x00\x00\x00\x00\x00\x00]\x94(C\x06\x00\xff abc\x94C\x00\x94B\x00\
                \x01\x00\x00yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\
                yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\
                yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\
                yyyy\x94e.".to_vec(),
                bytes.clone(),
            ),
            (
                "nested/p4",
                b"\x80\x04\x95]\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01K\x02K\x03\x86\
                \x94\x8f\x94(K\x04K\x05\x90(K\x06\x91\x94e\x8c\x01b\x94)\x8c\x01c\x94K\x01\x85\x94\x8c\
                \x01d\x94(K\x01K\x02K\x03K\x04t\x94\x8c\x01e\x94N\x8c\x01f\x94\x88\x8c\x01g\x94\x89\x8c\
                \x01h\x94}\x94\x8c\x01x\x94]\x94]\x94asu.".to_vec(),
                nested.clone(),
            ),
            (
                "nested/p5",
                b"\x80\x05\x95]\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01K\x02K\x03\x86\
                \x94\x8f\x94(K\x04K\x05\x90(K\x06\x91\x94e\x8c\x01b\x94)\x8c\x01c\x94K\x01\x85\x94\x8c\
                \x01d\x94(K\x01K\x02K\x03K\x04t\x94\x8c\x01e\x94N\x8c\x01f\x94\x88\x8c\x01g\x94\x89\x8c\
                \x01h\x94}\x94\x8c\x01x\x94]\x94]\x94asu.".to_vec(),
                nested.clone(),
            ),
            (
                "nested_nosets/p0",
                b"(dp0\nVa\np1\n(lp2\nI1\na(I2\nI3\ntp3\nasVb\np4\n(tsVc\np5\n(I1\ntp6\nsVd\np7\n(I1\nI2\n\
                I3\nI4\ntp8\nsVe\np9\nNsVf\np10\nI01\nsVg\np11\nI00\nsVh\np12\n(dp13\nVx\np14\n(lp15\n(l\
                p16\nass.".to_vec(),
                nested_nosets.clone(),
            ),
            (
                "nested_nosets/p1",
                b"}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01(K\x02K\x03tq\x03eX\x01\x00\x00\x00bq\x04)X\
                \x01\x00\x00\x00cq\x05(K\x01tq\x06X\x01\x00\x00\x00dq\x07(K\x01K\x02K\x03K\x04tq\x08X\
                \x01\x00\x00\x00eq\x09NX\x01\x00\x00\x00fq\nI01\nX\x01\x00\x00\x00gq\x0bI00\nX\x01\x00\
                \x00\x00hq\x0c}q\x0dX\x01\x00\x00\x00xq\x0e]q\x0f]q\x10asu.".to_vec(),
                nested_nosets.clone(),
            ),
            (
                "nested_nosets/p2",
                b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02K\x03\x86q\x03eX\x01\x00\x00\x00b\
                q\x04)X\x01\x00\x00\x00cq\x05K\x01\x85q\x06X\x01\x00\x00\x00dq\x07(K\x01K\x02K\x03K\x04t\
                q\x08X\x01\x00\x00\x00eq\x09NX\x01\x00\x00\x00fq\n\x88X\x01\x00\x00\x00gq\x0b\x89X\x01\
                \x00\x00\x00hq\x0c}q\x0dX\x01\x00\x00\x00xq\x0e]q\x0f]q\x10asu.".to_vec(),
                nested_nosets.clone(),
            ),
            (
                "nested_nosets/p3",
                b"\x80\x03}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02K\x03\x86q\x03eX\x01\x00\x00\x00b\
                q\x04)X\x01\x00\x00\x00cq\x05K\x01\x85q\x06X\x01\x00\x00\x00dq\x07(K\x01K\x02K\x03K\x04t\
                q\x08X\x01\x00\x00\x00eq\x09NX\x01\x00\x00\x00fq\n\x88X\x01\x00\x00\x00gq\x0b\x89X\x01\
                \x00\x00\x00hq\x0c}q\x0dX\x01\x00\x00\x00xq\x0e]q\x0f]q\x10asu.".to_vec(),
                nested_nosets.clone(),
            ),
            (
                "shared/p0",
                b"(lp0\n(lp1\nI1\naVtwo\np2\naag1\na(g1\ntp3\na.".to_vec(),
                shared.clone(),
            ),
            (
                "shared/p1",
                b"]q\x00(]q\x01(K\x01X\x03\x00\x00\x00twoq\x02eh\x01(h\x01tq\x03e.".to_vec(),
                shared.clone(),
            ),
            (
                "shared/p2",
                b"\x80\x02]q\x00(]q\x01(K\x01X\x03\x00\x00\x00twoq\x02eh\x01h\x01\x85q\x03e.".to_vec(),
                shared.clone(),
            ),
            (
                "shared/p3",
                b"\x80\x03]q\x00(]q\x01(K\x01X\x03\x00\x00\x00twoq\x02eh\x01h\x01\x85q\x03e.".to_vec(),
                shared.clone(),
            ),
            (
                "shared/p4",
                b"\x80\x04\x95\x17\x00\x00\x00\x00\x00\x00\x00]\x94(]\x94(K\x01\x8c\x03two\x94eh\x01h\x01\
                \x85\x94e.".to_vec(),
                shared.clone(),
            ),
            (
                "shared/p5",
                b"\x80\x05\x95\x17\x00\x00\x00\x00\x00\x00\x00]\x94(]\x94(K\x01\x8c\x03two\x94eh\x01h\x01\
                \x85\x94e.".to_vec(),
                shared.clone(),
            ),
            (
                "mutated/p0",
                b"(lp0\n(dp1\nVk\np2\nVv\np3\nsa(dp4\nVinner\np5\ng1\nsa.".to_vec(),
                mutated.clone(),
            ),
            (
                "mutated/p2",
                b"\x80\x02]q\x00(}q\x01X\x01\x00\x00\x00kq\x02X\x01\x00\x00\x00vq\x03s}q\x04X\x05\x00\x00\
                \x00innerq\x05h\x01se.".to_vec(),
                mutated.clone(),
            ),
            (
                "mutated/p4",
                b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00]\x94(}\x94\x8c\x01k\x94\x8c\x01v\x94s}\x94\
                \x8c\x05inner\x94h\x01se.".to_vec(),
                mutated.clone(),
            ),
            (
                "mutated/p5",
                b"\x80\x05\x95\x1d\x00\x00\x00\x00\x00\x00\x00]\x94(}\x94\x8c\x01k\x94\x8c\x01v\x94s}\x94\
                \x8c\x05inner\x94h\x01se.".to_vec(),
                mutated.clone(),
            ),
            (
                "bools/p0",
                b"(lp0\nI01\naI00\na.".to_vec(),
                bools.clone(),
            ),
            (
                "bools/p2",
                b"\x80\x02]q\x00(\x88\x89e.".to_vec(),
                bools.clone(),
            ),
            (
                "many/p2",
                unhex(concat!(
                    "80025d7100284b004b014b024b034b044b054b064b074b084b094b0a4b0b4b0c4b0d4b0e4b0f4b10",
                    "4b114b124b134b144b154b164b174b184b194b1a4b1b4b1c4b1d4b1e4b1f4b204b214b224b234b24",
                    "4b254b264b274b284b294b2a4b2b4b2c4b2d4b2e4b2f4b304b314b324b334b344b354b364b374b38",
                    "4b394b3a4b3b4b3c4b3d4b3e4b3f4b404b414b424b434b444b454b464b474b484b494b4a4b4b4b4c",
                    "4b4d4b4e4b4f4b504b514b524b534b544b554b564b574b584b594b5a4b5b4b5c4b5d4b5e4b5f4b60",
                    "4b614b624b634b644b654b664b674b684b694b6a4b6b4b6c4b6d4b6e4b6f4b704b714b724b734b74",
                    "4b754b764b774b784b794b7a4b7b4b7c4b7d4b7e4b7f4b804b814b824b834b844b854b864b874b88",
                    "4b894b8a4b8b4b8c4b8d4b8e4b8f4b904b914b924b934b944b954b964b974b984b994b9a4b9b4b9c",
                    "4b9d4b9e4b9f4ba04ba14ba24ba34ba44ba54ba64ba74ba84ba94baa4bab4bac4bad4bae4baf4bb0",
                    "4bb14bb24bb34bb44bb54bb64bb74bb84bb94bba4bbb4bbc4bbd4bbe4bbf4bc04bc14bc24bc34bc4",
                    "4bc54bc64bc74bc84bc94bca4bcb4bcc4bcd4bce4bcf4bd04bd14bd24bd34bd44bd54bd64bd74bd8",
                    "4bd94bda4bdb4bdc4bdd4bde4bdf4be04be14be24be34be44be54be64be74be84be94bea4beb4bec",
                    "4bed4bee4bef4bf04bf14bf24bf34bf44bf54bf64bf74bf84bf94bfa4bfb4bfc4bfd4bfe4bff4b00",
                    "4b014b024b034b044b054b064b074b084b094b0a4b0b4b0c4b0d4b0e4b0f4b104b114b124b134b14",
                    "4b154b164b174b184b194b1a4b1b4b1c4b1d4b1e4b1f4b204b214b224b234b244b254b264b274b28",
                    "4b294b2a4b2b4b2c4b2d4b2e4b2f4b304b314b324b334b344b354b364b374b384b394b3a4b3b4b3c",
                    "4b3d4b3e4b3f4b404b414b424b434b444b454b464b474b484b494b4a4b4b4b4c4b4d4b4e4b4f4b50",
                    "4b514b524b534b544b554b564b574b584b594b5a4b5b4b5c4b5d4b5e4b5f4b604b614b624b634b64",
                    "4b654b664b674b684b694b6a4b6b4b6c4b6d4b6e4b6f4b704b714b724b734b744b754b764b774b78",
                    "4b794b7a4b7b4b7c4b7d4b7e4b7f4b804b814b824b834b844b854b864b874b884b894b8a4b8b4b8c",
                    "4b8d4b8e4b8f4b904b914b924b934b944b954b964b974b984b994b9a4b9b4b9c4b9d4b9e4b9f4ba0",
                    "4ba14ba24ba34ba44ba54ba64ba74ba84ba94baa4bab4bac4bad4bae4baf4bb04bb14bb24bb34bb4",
                    "4bb54bb64bb74bb84bb94bba4bbb4bbc4bbd4bbe4bbf4bc04bc14bc24bc34bc44bc54bc64bc74bc8",
                    "4bc94bca4bcb4bcc4bcd4bce4bcf4bd04bd14bd24bd34bd44bd54bd64bd74bd84bd94bda4bdb4bdc",
                    "4bdd4bde4bdf4be04be14be24be34be44be54be64be74be84be94bea4beb4bec4bed4bee4bef4bf0",
                    "4bf14bf24bf34bf44bf54bf64bf74bf84bf94bfa4bfb4bfc4bfd4bfe4bff4b004b014b024b034b04",
                    "4b054b064b074b084b094b0a4b0b4b0c4b0d4b0e4b0f4b104b114b124b134b144b154b164b174b18",
                    "4b194b1a4b1b4b1c4b1d4b1e4b1f4b204b214b224b234b244b254b264b274b284b294b2a4b2b4b2c",
                    "4b2d4b2e4b2f4b304b314b324b334b344b354b364b374b384b394b3a4b3b4b3c4b3d4b3e4b3f4b40",
                    "4b414b424b434b444b454b464b474b484b494b4a4b4b4b4c4b4d4b4e4b4f4b504b514b524b534b54",
                    "4b554b564b574b584b594b5a4b5b4b5c4b5d4b5e4b5f4b604b614b624b634b644b654b664b674b68",
                    "4b694b6a4b6b4b6c4b6d4b6e4b6f4b704b714b724b734b744b754b764b774b784b794b7a4b7b4b7c",
                    "4b7d4b7e4b7f4b804b814b824b834b844b854b864b874b884b894b8a4b8b4b8c4b8d4b8e4b8f4b90",
                    "4b914b924b934b944b954b964b974b984b994b9a4b9b4b9c4b9d4b9e4b9f4ba04ba14ba24ba34ba4",
                    "4ba54ba64ba74ba84ba94baa4bab4bac4bad4bae4baf4bb04bb14bb24bb34bb44bb54bb64bb74bb8",
                    "4bb94bba4bbb4bbc4bbd4bbe4bbf4bc04bc14bc24bc34bc44bc54bc64bc74bc84bc94bca4bcb4bcc",
                    "4bcd4bce4bcf4bd04bd14bd24bd34bd44bd54bd64bd74bd84bd94bda4bdb4bdc4bdd4bde4bdf4be0",
                    "4be14be24be34be44be54be64be74be84be94bea4beb4bec4bed4bee4bef4bf04bf14bf24bf34bf4",
                    "4bf54bf64bf74bf84bf94bfa4bfb4bfc4bfd4bfe4bff4b004b014b024b034b044b054b064b074b08",
                    "4b094b0a4b0b4b0c4b0d4b0e4b0f4b104b114b124b134b144b154b164b174b184b194b1a4b1b4b1c",
                    "4b1d4b1e4b1f4b204b214b224b234b244b254b264b274b284b294b2a4b2b4b2c4b2d4b2e4b2f4b30",
                    "4b314b324b334b344b354b364b374b384b394b3a4b3b4b3c4b3d4b3e4b3f4b404b414b424b434b44",
                    "4b454b464b474b484b494b4a4b4b4b4c4b4d4b4e4b4f4b504b514b524b534b544b554b564b574b58",
                    "4b594b5a4b5b4b5c4b5d4b5e4b5f4b604b614b624b634b644b654b664b674b684b694b6a4b6b4b6c",
                    "4b6d4b6e4b6f4b704b714b724b734b744b754b764b774b784b794b7a4b7b4b7c4b7d4b7e4b7f4b80",
                    "4b814b824b834b844b854b864b874b884b894b8a4b8b4b8c4b8d4b8e4b8f4b904b914b924b934b94",
                    "4b954b964b974b984b994b9a4b9b4b9c4b9d4b9e4b9f4ba04ba14ba24ba34ba44ba54ba64ba74ba8",
                    "4ba94baa4bab4bac4bad4bae4baf4bb04bb14bb24bb34bb44bb54bb64bb74bb84bb94bba4bbb4bbc",
                    "4bbd4bbe4bbf4bc04bc14bc24bc34bc44bc54bc64bc74bc84bc94bca4bcb4bcc4bcd4bce4bcf4bd0",
                    "4bd14bd24bd34bd44bd54bd64bd74bd84bd94bda4bdb4bdc4bdd4bde4bdf4be04be14be24be34be4",
                    "4be54be64be765284be8652e",
                )),
                many.clone(),
            ),
            (
                "many/p5",
                unhex(concat!(
                    "800595d9070000000000005d94284b004b014b024b034b044b054b064b074b084b094b0a4b0b4b0c",
                    "4b0d4b0e4b0f4b104b114b124b134b144b154b164b174b184b194b1a4b1b4b1c4b1d4b1e4b1f4b20",
                    "4b214b224b234b244b254b264b274b284b294b2a4b2b4b2c4b2d4b2e4b2f4b304b314b324b334b34",
                    "4b354b364b374b384b394b3a4b3b4b3c4b3d4b3e4b3f4b404b414b424b434b444b454b464b474b48",
                    "4b494b4a4b4b4b4c4b4d4b4e4b4f4b504b514b524b534b544b554b564b574b584b594b5a4b5b4b5c",
                    "4b5d4b5e4b5f4b604b614b624b634b644b654b664b674b684b694b6a4b6b4b6c4b6d4b6e4b6f4b70",
                    "4b714b724b734b744b754b764b774b784b794b7a4b7b4b7c4b7d4b7e4b7f4b804b814b824b834b84",
                    "4b854b864b874b884b894b8a4b8b4b8c4b8d4b8e4b8f4b904b914b924b934b944b954b964b974b98",
                    "4b994b9a4b9b4b9c4b9d4b9e4b9f4ba04ba14ba24ba34ba44ba54ba64ba74ba84ba94baa4bab4bac",
                    "4bad4bae4baf4bb04bb14bb24bb34bb44bb54bb64bb74bb84bb94bba4bbb4bbc4bbd4bbe4bbf4bc0",
                    "4bc14bc24bc34bc44bc54bc64bc74bc84bc94bca4bcb4bcc4bcd4bce4bcf4bd04bd14bd24bd34bd4",
                    "4bd54bd64bd74bd84bd94bda4bdb4bdc4bdd4bde4bdf4be04be14be24be34be44be54be64be74be8",
                    "4be94bea4beb4bec4bed4bee4bef4bf04bf14bf24bf34bf44bf54bf64bf74bf84bf94bfa4bfb4bfc",
                    "4bfd4bfe4bff4b004b014b024b034b044b054b064b074b084b094b0a4b0b4b0c4b0d4b0e4b0f4b10",
                    "4b114b124b134b144b154b164b174b184b194b1a4b1b4b1c4b1d4b1e4b1f4b204b214b224b234b24",
                    "4b254b264b274b284b294b2a4b2b4b2c4b2d4b2e4b2f4b304b314b324b334b344b354b364b374b38",
                    "4b394b3a4b3b4b3c4b3d4b3e4b3f4b404b414b424b434b444b454b464b474b484b494b4a4b4b4b4c",
                    "4b4d4b4e4b4f4b504b514b524b534b544b554b564b574b584b594b5a4b5b4b5c4b5d4b5e4b5f4b60",
                    "4b614b624b634b644b654b664b674b684b694b6a4b6b4b6c4b6d4b6e4b6f4b704b714b724b734b74",
                    "4b754b764b774b784b794b7a4b7b4b7c4b7d4b7e4b7f4b804b814b824b834b844b854b864b874b88",
                    "4b894b8a4b8b4b8c4b8d4b8e4b8f4b904b914b924b934b944b954b964b974b984b994b9a4b9b4b9c",
                    "4b9d4b9e4b9f4ba04ba14ba24ba34ba44ba54ba64ba74ba84ba94baa4bab4bac4bad4bae4baf4bb0",
                    "4bb14bb24bb34bb44bb54bb64bb74bb84bb94bba4bbb4bbc4bbd4bbe4bbf4bc04bc14bc24bc34bc4",
                    "4bc54bc64bc74bc84bc94bca4bcb4bcc4bcd4bce4bcf4bd04bd14bd24bd34bd44bd54bd64bd74bd8",
                    "4bd94bda4bdb4bdc4bdd4bde4bdf4be04be14be24be34be44be54be64be74be84be94bea4beb4bec",
                    "4bed4bee4bef4bf04bf14bf24bf34bf44bf54bf64bf74bf84bf94bfa4bfb4bfc4bfd4bfe4bff4b00",
                    "4b014b024b034b044b054b064b074b084b094b0a4b0b4b0c4b0d4b0e4b0f4b104b114b124b134b14",
                    "4b154b164b174b184b194b1a4b1b4b1c4b1d4b1e4b1f4b204b214b224b234b244b254b264b274b28",
                    "4b294b2a4b2b4b2c4b2d4b2e4b2f4b304b314b324b334b344b354b364b374b384b394b3a4b3b4b3c",
                    "4b3d4b3e4b3f4b404b414b424b434b444b454b464b474b484b494b4a4b4b4b4c4b4d4b4e4b4f4b50",
                    "4b514b524b534b544b554b564b574b584b594b5a4b5b4b5c4b5d4b5e4b5f4b604b614b624b634b64",
                    "4b654b664b674b684b694b6a4b6b4b6c4b6d4b6e4b6f4b704b714b724b734b744b754b764b774b78",
                    "4b794b7a4b7b4b7c4b7d4b7e4b7f4b804b814b824b834b844b854b864b874b884b894b8a4b8b4b8c",
                    "4b8d4b8e4b8f4b904b914b924b934b944b954b964b974b984b994b9a4b9b4b9c4b9d4b9e4b9f4ba0",
                    "4ba14ba24ba34ba44ba54ba64ba74ba84ba94baa4bab4bac4bad4bae4baf4bb04bb14bb24bb34bb4",
                    "4bb54bb64bb74bb84bb94bba4bbb4bbc4bbd4bbe4bbf4bc04bc14bc24bc34bc44bc54bc64bc74bc8",
                    "4bc94bca4bcb4bcc4bcd4bce4bcf4bd04bd14bd24bd34bd44bd54bd64bd74bd84bd94bda4bdb4bdc",
                    "4bdd4bde4bdf4be04be14be24be34be44be54be64be74be84be94bea4beb4bec4bed4bee4bef4bf0",
                    "4bf14bf24bf34bf44bf54bf64bf74bf84bf94bfa4bfb4bfc4bfd4bfe4bff4b004b014b024b034b04",
                    "4b054b064b074b084b094b0a4b0b4b0c4b0d4b0e4b0f4b104b114b124b134b144b154b164b174b18",
                    "4b194b1a4b1b4b1c4b1d4b1e4b1f4b204b214b224b234b244b254b264b274b284b294b2a4b2b4b2c",
                    "4b2d4b2e4b2f4b304b314b324b334b344b354b364b374b384b394b3a4b3b4b3c4b3d4b3e4b3f4b40",
                    "4b414b424b434b444b454b464b474b484b494b4a4b4b4b4c4b4d4b4e4b4f4b504b514b524b534b54",
                    "4b554b564b574b584b594b5a4b5b4b5c4b5d4b5e4b5f4b604b614b624b634b644b654b664b674b68",
                    "4b694b6a4b6b4b6c4b6d4b6e4b6f4b704b714b724b734b744b754b764b774b784b794b7a4b7b4b7c",
                    "4b7d4b7e4b7f4b804b814b824b834b844b854b864b874b884b894b8a4b8b4b8c4b8d4b8e4b8f4b90",
                    "4b914b924b934b944b954b964b974b984b994b9a4b9b4b9c4b9d4b9e4b9f4ba04ba14ba24ba34ba4",
                    "4ba54ba64ba74ba84ba94baa4bab4bac4bad4bae4baf4bb04bb14bb24bb34bb44bb54bb64bb74bb8",
                    "4bb94bba4bbb4bbc4bbd4bbe4bbf4bc04bc14bc24bc34bc44bc54bc64bc74bc84bc94bca4bcb4bcc",
                    "4bcd4bce4bcf4bd04bd14bd24bd34bd44bd54bd64bd74bd84bd94bda4bdb4bdc4bdd4bde4bdf4be0",
                    "4be14be24be34be44be54be64be765284be8652e",
                )),
                many.clone(),
            ),
            (
                "manyd/p4",
                unhex(concat!(
                    "80049594120000000000007d94284b004b004b014b014b024b024b034b034b044b044b054b054b06",
                    "4b064b074b074b084b084b094b094b0a4b0a4b0b4b0b4b0c4b0c4b0d4b0d4b0e4b0e4b0f4b0f4b10",
                    "4b104b114b114b124b124b134b134b144b144b154b154b164b164b174b174b184b184b194b194b1a",
                    "4b1a4b1b4b1b4b1c4b1c4b1d4b1d4b1e4b1e4b1f4b1f4b204b204b214b214b224b224b234b234b24",
                    "4b244b254b254b264b264b274b274b284b284b294b294b2a4b2a4b2b4b2b4b2c4b2c4b2d4b2d4b2e",
                    "4b2e4b2f4b2f4b304b304b314b314b324b324b334b334b344b344b354b354b364b364b374b374b38",
                    "4b384b394b394b3a4b3a4b3b4b3b4b3c4b3c4b3d4b3d4b3e4b3e4b3f4b3f4b404b404b414b414b42",
                    "4b424b434b434b444b444b454b454b464b464b474b474b484b484b494b494b4a4b4a4b4b4b4b4b4c",
                    "4b4c4b4d4b4d4b4e4b4e4b4f4b4f4b504b504b514b514b524b524b534b534b544b544b554b554b56",
                    "4b564b574b574b584b584b594b594b5a4b5a4b5b4b5b4b5c4b5c4b5d4b5d4b5e4b5e4b5f4b5f4b60",
                    "4b604b614b614b624b624b634b634b644b644b654b654b664b664b674b674b684b684b694b694b6a",
                    "4b6a4b6b4b6b4b6c4b6c4b6d4b6d4b6e4b6e4b6f4b6f4b704b704b714b714b724b724b734b734b74",
                    "4b744b754b754b764b764b774b774b784b784b794b794b7a4b7a4b7b4b7b4b7c4b7c4b7d4b7d4b7e",
                    "4b7e4b7f4b7f4b804b804b814b814b824b824b834b834b844b844b854b854b864b864b874b874b88",
                    "4b884b894b894b8a4b8a4b8b4b8b4b8c4b8c4b8d4b8d4b8e4b8e4b8f4b8f4b904b904b914b914b92",
                    "4b924b934b934b944b944b954b954b964b964b974b974b984b984b994b994b9a4b9a4b9b4b9b4b9c",
                    "4b9c4b9d4b9d4b9e4b9e4b9f4b9f4ba04ba04ba14ba14ba24ba24ba34ba34ba44ba44ba54ba54ba6",
                    "4ba64ba74ba74ba84ba84ba94ba94baa4baa4bab4bab4bac4bac4bad4bad4bae4bae4baf4baf4bb0",
                    "4bb04bb14bb14bb24bb24bb34bb34bb44bb44bb54bb54bb64bb64bb74bb74bb84bb84bb94bb94bba",
                    "4bba4bbb4bbb4bbc4bbc4bbd4bbd4bbe4bbe4bbf4bbf4bc04bc04bc14bc14bc24bc24bc34bc34bc4",
                    "4bc44bc54bc54bc64bc64bc74bc74bc84bc84bc94bc94bca4bca4bcb4bcb4bcc4bcc4bcd4bcd4bce",
                    "4bce4bcf4bcf4bd04bd04bd14bd14bd24bd24bd34bd34bd44bd44bd54bd54bd64bd64bd74bd74bd8",
                    "4bd84bd94bd94bda4bda4bdb4bdb4bdc4bdc4bdd4bdd4bde4bde4bdf4bdf4be04be04be14be14be2",
                    "4be24be34be34be44be44be54be54be64be64be74be74be84be84be94be94bea4bea4beb4beb4bec",
                    "4bec4bed4bed4bee4bee4bef4bef4bf04bf04bf14bf14bf24bf24bf34bf34bf44bf44bf54bf54bf6",
                    "4bf64bf74bf74bf84bf84bf94bf94bfa4bfa4bfb4bfb4bfc4bfc4bfd4bfd4bfe4bfe4bff4bff4d00",
                    "014b004d01014b014d02014b024d03014b034d04014b044d05014b054d06014b064d07014b074d08",
                    "014b084d09014b094d0a014b0a4d0b014b0b4d0c014b0c4d0d014b0d4d0e014b0e4d0f014b0f4d10",
                    "014b104d11014b114d12014b124d13014b134d14014b144d15014b154d16014b164d17014b174d18",
                    "014b184d19014b194d1a014b1a4d1b014b1b4d1c014b1c4d1d014b1d4d1e014b1e4d1f014b1f4d20",
                    "014b204d21014b214d22014b224d23014b234d24014b244d25014b254d26014b264d27014b274d28",
                    "014b284d29014b294d2a014b2a4d2b014b2b4d2c014b2c4d2d014b2d4d2e014b2e4d2f014b2f4d30",
                    "014b304d31014b314d32014b324d33014b334d34014b344d35014b354d36014b364d37014b374d38",
                    "014b384d39014b394d3a014b3a4d3b014b3b4d3c014b3c4d3d014b3d4d3e014b3e4d3f014b3f4d40",
                    "014b404d41014b414d42014b424d43014b434d44014b444d45014b454d46014b464d47014b474d48",
                    "014b484d49014b494d4a014b4a4d4b014b4b4d4c014b4c4d4d014b4d4d4e014b4e4d4f014b4f4d50",
                    "014b504d51014b514d52014b524d53014b534d54014b544d55014b554d56014b564d57014b574d58",
                    "014b584d59014b594d5a014b5a4d5b014b5b4d5c014b5c4d5d014b5d4d5e014b5e4d5f014b5f4d60",
                    "014b604d61014b614d62014b624d63014b634d64014b644d65014b654d66014b664d67014b674d68",
                    "014b684d69014b694d6a014b6a4d6b014b6b4d6c014b6c4d6d014b6d4d6e014b6e4d6f014b6f4d70",
                    "014b704d71014b714d72014b724d73014b734d74014b744d75014b754d76014b764d77014b774d78",
                    "014b784d79014b794d7a014b7a4d7b014b7b4d7c014b7c4d7d014b7d4d7e014b7e4d7f014b7f4d80",
                    "014b804d81014b814d82014b824d83014b834d84014b844d85014b854d86014b864d87014b874d88",
                    "014b884d89014b894d8a014b8a4d8b014b8b4d8c014b8c4d8d014b8d4d8e014b8e4d8f014b8f4d90",
                    "014b904d91014b914d92014b924d93014b934d94014b944d95014b954d96014b964d97014b974d98",
                    "014b984d99014b994d9a014b9a4d9b014b9b4d9c014b9c4d9d014b9d4d9e014b9e4d9f014b9f4da0",
                    "014ba04da1014ba14da2014ba24da3014ba34da4014ba44da5014ba54da6014ba64da7014ba74da8",
                    "014ba84da9014ba94daa014baa4dab014bab4dac014bac4dad014bad4dae014bae4daf014baf4db0",
                    "014bb04db1014bb14db2014bb24db3014bb34db4014bb44db5014bb54db6014bb64db7014bb74db8",
                    "014bb84db9014bb94dba014bba4dbb014bbb4dbc014bbc4dbd014bbd4dbe014bbe4dbf014bbf4dc0",
                    "014bc04dc1014bc14dc2014bc24dc3014bc34dc4014bc44dc5014bc54dc6014bc64dc7014bc74dc8",
                    "014bc84dc9014bc94dca014bca4dcb014bcb4dcc014bcc4dcd014bcd4dce014bce4dcf014bcf4dd0",
                    "014bd04dd1014bd14dd2014bd24dd3014bd34dd4014bd44dd5014bd54dd6014bd64dd7014bd74dd8",
                    "014bd84dd9014bd94dda014bda4ddb014bdb4ddc014bdc4ddd014bdd4dde014bde4ddf014bdf4de0",
                    "014be04de1014be14de2014be24de3014be34de4014be44de5014be54de6014be64de7014be74de8",
                    "014be84de9014be94dea014bea4deb014beb4dec014bec4ded014bed4dee014bee4def014bef4df0",
                    "014bf04df1014bf14df2014bf24df3014bf34df4014bf44df5014bf54df6014bf64df7014bf74df8",
                    "014bf84df9014bf94dfa014bfa4dfb014bfb4dfc014bfc4dfd014bfd4dfe014bfe4dff014bff4d00",
                    "024b004d01024b014d02024b024d03024b034d04024b044d05024b054d06024b064d07024b074d08",
                    "024b084d09024b094d0a024b0a4d0b024b0b4d0c024b0c4d0d024b0d4d0e024b0e4d0f024b0f4d10",
                    "024b104d11024b114d12024b124d13024b134d14024b144d15024b154d16024b164d17024b174d18",
                    "024b184d19024b194d1a024b1a4d1b024b1b4d1c024b1c4d1d024b1d4d1e024b1e4d1f024b1f4d20",
                    "024b204d21024b214d22024b224d23024b234d24024b244d25024b254d26024b264d27024b274d28",
                    "024b284d29024b294d2a024b2a4d2b024b2b4d2c024b2c4d2d024b2d4d2e024b2e4d2f024b2f4d30",
                    "024b304d31024b314d32024b324d33024b334d34024b344d35024b354d36024b364d37024b374d38",
                    "024b384d39024b394d3a024b3a4d3b024b3b4d3c024b3c4d3d024b3d4d3e024b3e4d3f024b3f4d40",
                    "024b404d41024b414d42024b424d43024b434d44024b444d45024b454d46024b464d47024b474d48",
                    "024b484d49024b494d4a024b4a4d4b024b4b4d4c024b4c4d4d024b4d4d4e024b4e4d4f024b4f4d50",
                    "024b504d51024b514d52024b524d53024b534d54024b544d55024b554d56024b564d57024b574d58",
                    "024b584d59024b594d5a024b5a4d5b024b5b4d5c024b5c4d5d024b5d4d5e024b5e4d5f024b5f4d60",
                    "024b604d61024b614d62024b624d63024b634d64024b644d65024b654d66024b664d67024b674d68",
                    "024b684d69024b694d6a024b6a4d6b024b6b4d6c024b6c4d6d024b6d4d6e024b6e4d6f024b6f4d70",
                    "024b704d71024b714d72024b724d73024b734d74024b744d75024b754d76024b764d77024b774d78",
                    "024b784d79024b794d7a024b7a4d7b024b7b4d7c024b7c4d7d024b7d4d7e024b7e4d7f024b7f4d80",
                    "024b804d81024b814d82024b824d83024b834d84024b844d85024b854d86024b864d87024b874d88",
                    "024b884d89024b894d8a024b8a4d8b024b8b4d8c024b8c4d8d024b8d4d8e024b8e4d8f024b8f4d90",
                    "024b904d91024b914d92024b924d93024b934d94024b944d95024b954d96024b964d97024b974d98",
                    "024b984d99024b994d9a024b9a4d9b024b9b4d9c024b9c4d9d024b9d4d9e024b9e4d9f024b9f4da0",
                    "024ba04da1024ba14da2024ba24da3024ba34da4024ba44da5024ba54da6024ba64da7024ba74da8",
                    "024ba84da9024ba94daa024baa4dab024bab4dac024bac4dad024bad4dae024bae4daf024baf4db0",
                    "024bb04db1024bb14db2024bb24db3024bb34db4024bb44db5024bb54db6024bb64db7024bb74db8",
                    "024bb84db9024bb94dba024bba4dbb024bbb4dbc024bbc4dbd024bbd4dbe024bbe4dbf024bbf4dc0",
                    "024bc04dc1024bc14dc2024bc24dc3024bc34dc4024bc44dc5024bc54dc6024bc64dc7024bc74dc8",
                    "024bc84dc9024bc94dca024bca4dcb024bcb4dcc024bcc4dcd024bcd4dce024bce4dcf024bcf4dd0",
                    "024bd04dd1024bd14dd2024bd24dd3024bd34dd4024bd44dd5024bd54dd6024bd64dd7024bd74dd8",
                    "024bd84dd9024bd94dda024bda4ddb024bdb4ddc024bdc4ddd024bdd4dde024bde4ddf024bdf4de0",
                    "024be04de1024be14de2024be24de3024be34de4024be44de5024be54de6024be64de7024be74de8",
                    "024be84de9024be94dea024bea4deb024beb4dec024bec4ded024bed4dee024bee4def024bef4df0",
                    "024bf04df1024bf14df2024bf24df3024bf34df4024bf44df5024bf54df6024bf64df7024bf74df8",
                    "024bf84df9024bf94dfa024bfa4dfb024bfb4dfc024bfc4dfd024bfd4dfe024bfe4dff024bff4d00",
                    "034b004d01034b014d02034b024d03034b034d04034b044d05034b054d06034b064d07034b074d08",
                    "034b084d09034b094d0a034b0a4d0b034b0b4d0c034b0c4d0d034b0d4d0e034b0e4d0f034b0f4d10",
                    "034b104d11034b114d12034b124d13034b134d14034b144d15034b154d16034b164d17034b174d18",
                    "034b184d19034b194d1a034b1a4d1b034b1b4d1c034b1c4d1d034b1d4d1e034b1e4d1f034b1f4d20",
                    "034b204d21034b214d22034b224d23034b234d24034b244d25034b254d26034b264d27034b274d28",
                    "034b284d29034b294d2a034b2a4d2b034b2b4d2c034b2c4d2d034b2d4d2e034b2e4d2f034b2f4d30",
                    "034b304d31034b314d32034b324d33034b334d34034b344d35034b354d36034b364d37034b374d38",
                    "034b384d39034b394d3a034b3a4d3b034b3b4d3c034b3c4d3d034b3d4d3e034b3e4d3f034b3f4d40",
                    "034b404d41034b414d42034b424d43034b434d44034b444d45034b454d46034b464d47034b474d48",
                    "034b484d49034b494d4a034b4a4d4b034b4b4d4c034b4c4d4d034b4d4d4e034b4e4d4f034b4f4d50",
                    "034b504d51034b514d52034b524d53034b534d54034b544d55034b554d56034b564d57034b574d58",
                    "034b584d59034b594d5a034b5a4d5b034b5b4d5c034b5c4d5d034b5d4d5e034b5e4d5f034b5f4d60",
                    "034b604d61034b614d62034b624d63034b634d64034b644d65034b654d66034b664d67034b674d68",
                    "034b684d69034b694d6a034b6a4d6b034b6b4d6c034b6c4d6d034b6d4d6e034b6e4d6f034b6f4d70",
                    "034b704d71034b714d72034b724d73034b734d74034b744d75034b754d76034b764d77034b774d78",
                    "034b784d79034b794d7a034b7a4d7b034b7b4d7c034b7c4d7d034b7d4d7e034b7e4d7f034b7f4d80",
                    "034b804d81034b814d82034b824d83034b834d84034b844d85034b854d86034b864d87034b874d88",
                    "034b884d89034b894d8a034b8a4d8b034b8b4d8c034b8c4d8d034b8d4d8e034b8e4d8f034b8f4d90",
                    "034b904d91034b914d92034b924d93034b934d94034b944d95034b954d96034b964d97034b974d98",
                    "034b984d99034b994d9a034b9a4d9b034b9b4d9c034b9c4d9d034b9d4d9e034b9e4d9f034b9f4da0",
                    "034ba04da1034ba14da2034ba24da3034ba34da4034ba44da5034ba54da6034ba64da7034ba74da8",
                    "034ba84da9034ba94daa034baa4dab034bab4dac034bac4dad034bad4dae034bae4daf034baf4db0",
                    "034bb04db1034bb14db2034bb24db3034bb34db4034bb44db5034bb54db6034bb64db7034bb74db8",
                    "034bb84db9034bb94dba034bba4dbb034bbb4dbc034bbc4dbd034bbd4dbe034bbe4dbf034bbf4dc0",
                    "034bc04dc1034bc14dc2034bc24dc3034bc34dc4034bc44dc5034bc54dc6034bc64dc7034bc74dc8",
                    "034bc84dc9034bc94dca034bca4dcb034bcb4dcc034bcc4dcd034bcd4dce034bce4dcf034bcf4dd0",
                    "034bd04dd1034bd14dd2034bd24dd3034bd34dd4034bd44dd5034bd54dd6034bd64dd7034bd74dd8",
                    "034bd84dd9034bd94dda034bda4ddb034bdb4ddc034bdc4ddd034bdd4dde034bde4ddf034bdf4de0",
                    "034be04de1034be14de2034be24de3034be34de4034be44de5034be54de6034be64de7034be77528",
                    "4de8034be8752e",
                )),
                manyd.clone(),
            ),
            (
                "empties/p4",
                b"\x80\x04\x95\x0f\x00\x00\x00\x00\x00\x00\x00]\x94(]\x94}\x94)\x8f\x94(\x91\x94e.".to_vec(),
                empties.clone(),
            ),
            (
                "empties/p5",
                b"\x80\x05\x95\x0f\x00\x00\x00\x00\x00\x00\x00]\x94(]\x94}\x94)\x8f\x94(\x91\x94e.".to_vec(),
                empties.clone(),
            ),
            (
                "bytearray/p5",
                b"\x80\x05\x95\x0e\x00\x00\x00\x00\x00\x00\x00\x96\x03\x00\x00\x00\x00\x00\x00\x00xyz\x94.".to_vec(),
                bytearray.clone(),
            ),
        ]
    }

    #[test]
    fn golden_plain_vectors_decode_like_cpython() {
        let cases = golden_plain();
        assert_eq!(cases.len(), 44);
        for (name, data, want) in cases {
            assert_eq!(decode(&data), Ok(want), "{name}");
        }
    }

    /// CPython pickles whose REDUCE/NEWOBJ/BUILD structure is checked by hand.
    fn golden_structured() -> Vec<(&'static str, &'static [u8], Result<Value>)> {
        let codecs = reduce(
            g("_codecs", "encode"),
            t(vec![s("\u{0}\u{ff} abc"), s("latin1")]),
        );
        let stat_dict = Value::str_dict([
            ("st_atime", V::Float(100.5)),
            ("st_mtime", V::Float(200.25)),
            ("st_ctime", V::Float(300.0)),
            ("st_atime_ns", V::Int(100_500_000_000)),
            ("st_mtime_ns", V::Int(200_250_000_000)),
            ("st_ctime_ns", V::Int(300_000_000_000)),
            ("st_blksize", V::Int(4096)),
            ("st_blocks", V::Int(8)),
            ("st_rdev", V::Int(0)),
        ]);
        let stat = reduce(
            g("os", "stat_result"),
            t(vec![
                t(ints(&[33188, 2, 3, 1, 0, 0, 12, 100, 200, 300])),
                stat_dict,
            ]),
        );
        let pt_state = Value::str_dict([("x", V::Int(1)), ("y", s("a"))]);
        let pt = Value::object("__main__", "Pt", pt_state.clone());
        let pt_p0 = build(
            reduce(
                g("copy_reg", "_reconstructor"),
                t(vec![
                    g("__main__", "Pt"),
                    g("__builtin__", "object"),
                    V::None,
                ]),
            ),
            pt_state,
        );
        let kw = V::Object {
            class: Box::new(g("__main__", "KW")),
            args: vec![V::Int(1)],
            kwargs: vec![(s("k"), V::Int(2))],
            state: Some(Box::new(Value::str_dict([("z", V::Int(3))]))),
        };
        let listsub = build(
            build(
                V::Object {
                    class: Box::new(g("__main__", "L")),
                    args: vec![],
                    kwargs: vec![],
                    state: None,
                },
                V::List(ints(&[1, 2])),
            ),
            Value::str_dict([("attr", V::Int(3))]),
        );
        let ordered = build(
            reduce(g("collections", "OrderedDict"), t(vec![])),
            Value::str_dict([("a", V::Int(1)), ("b", V::Int(2))]),
        );
        vec![
            (
                "codecs_bytes/p0",
                b"c_codecs\nencode\np0\n(V\\u0000\xff abc\np1\nVlatin1\np2\ntp3\nRp4\n.",
                Ok(codecs.clone()),
            ),
            (
                "codecs_bytes/p2",
                b"\x80\x02c_codecs\nencode\nq\x00X\x07\x00\x00\x00\x00\xc3\xbf abcq\x01X\x06\x00\
                \x00\x00latin1q\x02\x86q\x03Rq\x04.",
                Ok(codecs),
            ),
            (
                "empty_bytes/p2",
                b"\x80\x02c__builtin__\nbytes\nq\x00)Rq\x01.",
                Ok(reduce(g("__builtin__", "bytes"), t(vec![]))),
            ),
            (
                "set_reduce/p2",
                b"\x80\x02c__builtin__\nset\nq\x00]q\x01(K\x04K\x05e\x85q\x02Rq\x03.",
                Ok(reduce(
                    g("__builtin__", "set"),
                    t(vec![V::List(ints(&[4, 5]))]),
                )),
            ),
            (
                "set_reduce/p3",
                b"\x80\x03cbuiltins\nset\nq\x00]q\x01(K\x04K\x05e\x85q\x02Rq\x03.",
                Ok(reduce(
                    g("builtins", "set"),
                    t(vec![V::List(ints(&[4, 5]))]),
                )),
            ),
            (
                "bytearray_reduce/p2",
                b"\x80\x02c__builtin__\nbytearray\nq\x00c_codecs\nencode\nq\x01X\x03\x00\x00\x00x\
                yzq\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05\x85q\x06Rq\x07.",
                Ok(reduce(
                    g("__builtin__", "bytearray"),
                    t(vec![reduce(
                        g("_codecs", "encode"),
                        t(vec![s("xyz"), s("latin1")]),
                    )]),
                )),
            ),
            (
                "bytearray_reduce/p4",
                b"\x80\x04\x95$\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x09bytearray\
                \x94\x93\x94C\x03xyz\x94\x85\x94R\x94.",
                Ok(reduce(
                    g("builtins", "bytearray"),
                    t(vec![V::Bytes(b"xyz".to_vec())]),
                )),
            ),
            (
                "stat/p0",
                b"cos\nstat_result\np0\n((I33188\nI2\nI3\nI1\nI0\nI0\nI12\nI100\nI200\nI300\ntp1\n\
                (dp2\nVst_atime\np3\nF100.5\nsVst_mtime\np4\nF200.25\nsVst_ctime\np5\nF300.0\nsVs\
                t_atime_ns\np6\nL100500000000L\nsVst_mtime_ns\np7\nL200250000000L\nsVst_ctime_ns\
                \np8\nL300000000000L\nsVst_blksize\np9\nI4096\nsVst_blocks\np10\nI8\nsVst_rdev\n\
                p11\nI0\nstp12\nRp13\n.",
                Ok(stat.clone()),
            ),
            (
                "stat/p2",
                b"\x80\x02cos\nstat_result\nq\x00(M\xa4\x81K\x02K\x03K\x01K\x00K\x00K\x0cKdK\xc8\
                M,\x01tq\x01}q\x02(X\x08\x00\x00\x00st_atimeq\x03G@Y \x00\x00\x00\x00\x00X\x08\
                \x00\x00\x00st_mtimeq\x04G@i\x08\x00\x00\x00\x00\x00X\x08\x00\x00\x00st_ctimeq\
                \x05G@r\xc0\x00\x00\x00\x00\x00X\x0b\x00\x00\x00st_atime_nsq\x06\x8a\x05\x00MDf\
                \x17X\x0b\x00\x00\x00st_mtime_nsq\x07\x8a\x05\x80\x82\xd4\x9f.X\x0b\x00\x00\x00s\
                t_ctime_nsq\x08\x8a\x05\x00\xb8d\xd9EX\n\x00\x00\x00st_blksizeq\x09M\x00\x10X\x09\
                \x00\x00\x00st_blocksq\nK\x08X\x07\x00\x00\x00st_rdevq\x0bK\x00u\x86q\x0cRq\x0d.",
                Ok(stat.clone()),
            ),
            (
                "stat/p4",
                b"\x80\x04\x95\xdc\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x0bstat_result\
                \x94\x93\x94(M\xa4\x81K\x02K\x03K\x01K\x00K\x00K\x0cKdK\xc8M,\x01t\x94}\x94(\x8c\
                \x08st_atime\x94G@Y \x00\x00\x00\x00\x00\x8c\x08st_mtime\x94G@i\x08\x00\x00\x00\
                \x00\x00\x8c\x08st_ctime\x94G@r\xc0\x00\x00\x00\x00\x00\x8c\x0bst_atime_ns\x94\
                \x8a\x05\x00MDf\x17\x8c\x0bst_mtime_ns\x94\x8a\x05\x80\x82\xd4\x9f.\x8c\x0bst_ct\
                ime_ns\x94\x8a\x05\x00\xb8d\xd9E\x8c\nst_blksize\x94M\x00\x10\x8c\x09st_blocks\
                \x94K\x08\x8c\x07st_rdev\x94K\x00u\x86\x94R\x94.",
                Ok(stat.clone()),
            ),
            (
                "stat/p5",
                b"\x80\x05\x95\xdc\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x0bstat_result\
                \x94\x93\x94(M\xa4\x81K\x02K\x03K\x01K\x00K\x00K\x0cKdK\xc8M,\x01t\x94}\x94(\x8c\
                \x08st_atime\x94G@Y \x00\x00\x00\x00\x00\x8c\x08st_mtime\x94G@i\x08\x00\x00\x00\
                \x00\x00\x8c\x08st_ctime\x94G@r\xc0\x00\x00\x00\x00\x00\x8c\x0bst_atime_ns\x94\
                \x8a\x05\x00MDf\x17\x8c\x0bst_mtime_ns\x94\x8a\x05\x80\x82\xd4\x9f.\x8c\x0bst_ct\
                ime_ns\x94\x8a\x05\x00\xb8d\xd9E\x8c\nst_blksize\x94M\x00\x10\x8c\x09st_blocks\
                \x94K\x08\x8c\x07st_rdev\x94K\x00u\x86\x94R\x94.",
                Ok(stat),
            ),
            (
                "pt/p0",
                b"ccopy_reg\n_reconstructor\np0\n(c__main__\nPt\np1\nc__builtin__\nobject\np2\nN\
                tp3\nRp4\n(dp5\nVx\np6\nI1\nsVy\np7\nVa\np8\nsb.",
                Ok(pt_p0),
            ),
            (
                "pt/p2",
                b"\x80\x02c__main__\nPt\nq\x00)\x81q\x01}q\x02(X\x01\x00\x00\x00xq\x03K\x01X\x01\
                \x00\x00\x00yq\x04X\x01\x00\x00\x00aq\x05ub.",
                Ok(pt.clone()),
            ),
            (
                "pt/p4",
                b"\x80\x04\x95)\x00\x00\x00\x00\x00\x00\x00\x8c\x08__main__\x94\x8c\x02Pt\x94\x93\
                \x94)\x81\x94}\x94(\x8c\x01x\x94K\x01\x8c\x01y\x94\x8c\x01a\x94ub.",
                Ok(pt.clone()),
            ),
            (
                "pt/p5",
                b"\x80\x05\x95)\x00\x00\x00\x00\x00\x00\x00\x8c\x08__main__\x94\x8c\x02Pt\x94\x93\
                \x94)\x81\x94}\x94(\x8c\x01x\x94K\x01\x8c\x01y\x94\x8c\x01a\x94ub.",
                Ok(pt),
            ),
            (
                "kw/p4 (NEWOBJ_EX)",
                b"\x80\x04\x95,\x00\x00\x00\x00\x00\x00\x00\x8c\x08__main__\x94\x8c\x02KW\x94\x93\
                \x94K\x01\x85\x94}\x94\x8c\x01k\x94K\x02s\x92\x94}\x94\x8c\x01z\x94K\x03sb.",
                Ok(kw),
            ),
            (
                "listsub/p2",
                b"\x80\x02c__main__\nL\nq\x00)\x81q\x01(K\x01K\x02e}q\x02X\x04\x00\x00\x00attrq\
                \x03K\x03sb.",
                Ok(listsub.clone()),
            ),
            (
                "listsub/p5",
                b"\x80\x05\x95(\x00\x00\x00\x00\x00\x00\x00\x8c\x08__main__\x94\x8c\x01L\x94\x93\
                \x94)\x81\x94(K\x01K\x02e}\x94\x8c\x04attr\x94K\x03sb.",
                Ok(listsub),
            ),
            (
                "ordered/p0",
                b"ccollections\nOrderedDict\np0\n(tRp1\nVa\np2\nI1\nsVb\np3\nI2\ns.",
                Ok(ordered.clone()),
            ),
            (
                "ordered/p4",
                b"\x80\x04\x950\x00\x00\x00\x00\x00\x00\x00\x8c\x0bcollections\x94\x8c\x0bOrdere\
                dDict\x94\x93\x94)R\x94(\x8c\x01a\x94K\x01\x8c\x01b\x94K\x02u.",
                Ok(ordered),
            ),
            ("cycle/p0", b"(lp0\ng0\na.", Err(PickleError::Cycle)),
            (
                "cycle/p2",
                b"\x80\x02]q\x00h\x00a.",
                Err(PickleError::Cycle),
            ),
            (
                "cycle/p5",
                b"\x80\x05\x95\x06\x00\x00\x00\x00\x00\x00\x00]\x94h\x00a.",
                Err(PickleError::Cycle),
            ),
            (
                "selfref/p2",
                b"\x80\x02c__main__\nPt\nq\x00)\x81q\x01}q\x02X\x02\x00\x00\x00meq\x03h\x01sb.",
                Err(PickleError::Cycle),
            ),
            (
                "selfref/p5",
                b"\x80\x05\x95!\x00\x00\x00\x00\x00\x00\x00\x8c\x08__main__\x94\x8c\x02Pt\x94\x93\
                \x94)\x81\x94}\x94\x8c\x02me\x94h\x03sb.",
                Err(PickleError::Cycle),
            ),
        ]
    }

    #[test]
    fn golden_structured_vectors_decode_as_inert_data() {
        for (name, data, want) in golden_structured() {
            assert_eq!(decode(data), want, "{name}");
        }
    }

    #[test]
    fn accessors_see_through_object_and_build_state() {
        let cases: HashMap<_, _> = golden_structured()
            .into_iter()
            .map(|(name, data, _)| (name, decode(data)))
            .collect();
        let pt = cases["pt/p5"].as_ref().expect("pt decodes");
        assert_eq!(pt.class_name(), Some(("__main__", "Pt")));
        assert_eq!(pt.get("x").and_then(Value::as_int), Some(1));
        assert_eq!(pt.get("y").and_then(Value::as_str), Some("a"));
        assert_eq!(pt.get("missing"), None);
        let pt0 = cases["pt/p0"].as_ref().expect("pt/p0 decodes");
        assert_eq!(pt0.class_name(), Some(("copy_reg", "_reconstructor")));
        assert_eq!(pt0.get("y").and_then(Value::as_str), Some("a"));
        let listsub = cases["listsub/p5"].as_ref().expect("listsub decodes");
        assert_eq!(listsub.class_name(), Some(("__main__", "L")));
        assert_eq!(listsub.get("attr").and_then(Value::as_int), Some(3));
        let stat = cases["stat/p5"].as_ref().expect("stat decodes");
        assert_eq!(stat.class_name(), Some(("os", "stat_result")));
        let V::Reduce { args, .. } = stat else {
            panic!("stat_result is a Reduce")
        };
        let args = args.as_seq().expect("args tuple");
        assert_eq!(args[0].as_seq().map(|s| s[6].as_int()), Some(Some(12)));
        assert_eq!(
            args[1].get("st_mtime").and_then(Value::as_f64),
            Some(200.25)
        );
    }

    /// A `dispy._Compute` as the 3.11 client sends it (protocol 5: FRAME, MEMOIZE, BINGET,
    /// STACK_GLOBAL), built by pickling an instance of a stand-in `dispy` module with the
    /// attributes of the sessB capture.
    const COMPUTE_P5: &str = concat!(
        "800595f1030000000000008c056469737079948c085f436f6d707574659493942981947d94288c04",
        "74797065944b018c046e616d65948c07636f6d70757465948c026964948a06d01a9f1ba2018c0463",
        "6f6465948c5d64656620636f6d70757465286e293a0a2020202072657475726e206e202a20320a0a",
        "6465662073657475702862617365293a0a2020202072657475726e20300a0a64656620636c65616e",
        "75702862617365293a0a20202020706173730a948c09646573745f70617468948c066d7964657374",
        "948c0a786665725f66696c6573945d942868008c095f5866657246696c659493942981947d942868",
        "068c1e2f746d702f6469737079746573742f636c69656e742f646174612e74787494680b8c00948c",
        "0a636f6d707574655f6964948a06d01a9f1ba2018c08737461745f627566948c026f73948c0b7374",
        "61745f726573756c74949394284da4814a55e09a004d00fe4b014b004b004b0c4af61d096b4af21d",
        "096b4af21d096b74947d94288c0873745f6174696d65944741dac2477d9000008c0873745f6d7469",
        "6d65944741dac2477ca000008c0873745f6374696d65944741dac2477ca000008c0b73745f617469",
        "6d655f6e73948a0880ce86f8d8d1eb188c0b73745f6d74696d655f6e73948a0800590219d8d1eb18",
        "8c0b73745f6374696d655f6e73948a0800590219d8d1eb188c0a73745f626c6b73697a65944d0010",
        "8c0973745f626c6f636b73944b088c0773745f72646576944b0075869452948c03736570948c012f",
        "94756268102981947d942868068c252f746d702f6469737079746573742f636c69656e742f737562",
        "2f737562646174612e74787494680b8c037375629468158a06d01a9f1ba20168166819284da4814a",
        "74e09a004d00fe4b014b004b004b084af61d096b4af21d096b4af21d096b74947d9428681c4741da",
        "c2477d900000681d4741dac2477ca00000681e4741dac2477ca00000681f8a0880ce86f8d8d1eb18",
        "68208a0800590219d8d1eb1868218a0800590219d8d1eb1868224d001068234b0868244b00758694",
        "5294682768287562658c097265656e7472616e7494898c096578636c757369766594888c05736574",
        "75709468338c07636c65616e75709468348c1073657475705f617267735f636f756e74944b018c11",
        "7363686564756c65725f69705f61646472948c093132372e302e302e31948c0e7363686564756c65",
        "725f706f7274944d04748c0c6e6f64655f69705f616464729468378c0461757468948c2836636431",
        "363463323937313564366362666535646438366136383562303463393035326266626431948c0f6a",
        "6f625f726573756c745f706f7274944d04748c0e70756c73655f696e74657276616c944e8c11636c",
        "69656e745f7265706c795f61646472944e75622e",
    );

    #[test]
    fn decodes_a_capture_like_compute() {
        let data = unhex(COMPUTE_P5);
        // The opcodes the real client uses, which this test is about.
        assert_eq!(&data[..3], b"\x80\x05\x95");
        let c = decode(&data).expect("_Compute decodes");
        assert_eq!(c.class_name(), Some(("dispy", "_Compute")));
        let int = |k: &str| c.get(k).and_then(Value::as_int);
        let text = |k: &str| c.get(k).and_then(Value::as_str);
        assert_eq!(int("type"), Some(1));
        assert_eq!(text("name"), Some("compute"));
        assert_eq!(int("id"), Some(1_795_759_741_648));
        assert!(text("code").expect("code").starts_with("def compute(n):\n"));
        assert_eq!(text("dest_path"), Some("mydest"));
        assert_eq!(c.get("reentrant").and_then(Value::as_bool), Some(false));
        assert_eq!(c.get("exclusive").and_then(Value::as_bool), Some(true));
        // 'setup' the value is a BINGET of the memoized key 'setup'.
        assert_eq!(text("setup"), Some("setup"));
        assert_eq!(text("cleanup"), Some("cleanup"));
        assert_eq!(int("setup_args_count"), Some(1));
        assert_eq!(text("scheduler_ip_addr"), Some("127.0.0.1"));
        assert_eq!(int("scheduler_port"), Some(29700));
        assert_eq!(text("node_ip_addr"), Some("127.0.0.1"));
        assert_eq!(
            text("auth"),
            Some("6cd164c29715d6cbfe5dd86a685b04c9052bfbd1")
        );
        assert_eq!(int("job_result_port"), Some(29700));
        assert!(c.get("pulse_interval").is_some_and(Value::is_none));
        assert!(c.get("client_reply_addr").is_some_and(Value::is_none));

        let files = c
            .get("xfer_files")
            .and_then(Value::as_seq)
            .expect("xfer_files");
        assert_eq!(files.len(), 2);
        let want = [
            ("/tmp/dispytest/client/data.txt", "", 12, 10_149_973),
            (
                "/tmp/dispytest/client/sub/subdata.txt",
                "sub",
                8,
                10_150_004,
            ),
        ];
        for (file, (name, dest, size, ino)) in files.iter().zip(want) {
            assert_eq!(file.class_name(), Some(("dispy", "_XferFile")));
            assert_eq!(file.get("name").and_then(Value::as_str), Some(name));
            assert_eq!(file.get("dest_path").and_then(Value::as_str), Some(dest));
            assert_eq!(file.get("sep").and_then(Value::as_str), Some("/"));
            assert_eq!(
                file.get("compute_id").and_then(Value::as_int),
                Some(1_795_759_741_648)
            );
            let stat = file.get("stat_buf").expect("stat_buf");
            assert_eq!(stat.class_name(), Some(("os", "stat_result")));
            let V::Reduce { args, .. } = stat else {
                panic!("stat_result is a REDUCE")
            };
            let [seq, extra] = args.as_seq().expect("(tuple, dict)") else {
                panic!("stat_result args are (tuple, dict)")
            };
            let seq = seq.as_seq().expect("10-tuple");
            assert_eq!(seq.len(), 10);
            assert_eq!(seq[0].as_int(), Some(33188));
            assert_eq!(seq[1].as_int(), Some(ino));
            assert_eq!(seq[6].as_int(), Some(size));
            assert_eq!(
                extra.get("st_mtime").and_then(Value::as_f64),
                Some(1_795_759_602.5)
            );
            assert_eq!(
                extra.get("st_atime_ns").and_then(Value::as_int),
                Some(1_795_759_606_250_000_000)
            );
        }
    }

    // ----- hand-written opcode cases (expected values checked against CPython 3.11) ------

    #[test]
    fn text_opcodes_follow_cpython() {
        let cases: Vec<(&[u8], Value)> = vec![
            (b"S'a\\x41\\101\\n\\'q\\\\'\n.", s("aAA\n'q\\")),
            (b"S\"x\"\n.", s("x")),
            (b"U\x03abc.", s("abc")),
            (b"T\x03\x00\x00\x00abc.", s("abc")),
            // CPython 3 would fail here (ASCII by default); we keep the text.
            (b"\x80\x02U\x02\xc3\xa9.", s("\u{e9}")),
            (
                b"I123456789012345678901234567890\n.",
                V::BigInt(vec![
                    0xd2, 0x0a, 0x3f, 0x4e, 0xee, 0xe0, 0x73, 0xc3, 0xf6, 0x0f, 0xe9, 0x8e, 0x01,
                ]),
            ),
            (
                b"I-123456789012345678901234567890\n.",
                V::BigInt(vec![
                    0x2e, 0xf5, 0xc0, 0xb1, 0x11, 0x1f, 0x8c, 0x3c, 0x09, 0xf0, 0x16, 0x71, 0xfe,
                ]),
            ),
            (
                b"I9223372036854775808\n.",
                V::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0x80, 0]),
            ),
            (b"I-9223372036854775808\n.", V::Int(i64::MIN)),
            (b"L0x10\n.", V::Int(16)),
            (b"L10L\n.", V::Int(10)),
            (b"L-5L\n.", V::Int(-5)),
            (b"I0o17\n.", V::Int(15)),
            (b"I0b101\n.", V::Int(5)),
            (b"I010\n.", V::Int(8)),
            (b"I 12 \n.", V::Int(12)),
            (b"I1_0\n.", V::Int(10)),
            (b"I00\n.", V::Bool(false)),
            (b"I01\n.", V::Bool(true)),
            (b"I-0\n.", V::Bool(false)),
            (b"I+1\n.", V::Bool(true)),
            (b"I 1\n.", V::Bool(true)),
            (b"I1\n.", V::Int(1)),
            (b"I0\n.", V::Int(0)),
            (b"F-inf\n.", V::Float(f64::NEG_INFINITY)),
            (b"F1.5e3\n.", V::Float(1500.0)),
            (
                b"Va\\\\u0041\\u00e9\\U0001F600\n.",
                s("a\\\\u0041\u{e9}\u{1f600}"),
            ),
            (b"V\\\n.", s("\\")),
            (b"V\\ud800x\n.", s("\u{fffd}x")),
            (b"Pabc\n.", V::PersistentId(Box::new(s("abc")))),
            (b"\x80\x02K\x05Q.", V::PersistentId(Box::new(V::Int(5)))),
            (b"\x82\x05.", V::Extension(5)),
            (b"\x83\x00\x01.", V::Extension(256)),
            (b"\x84\x00\x00\x01\x00.", V::Extension(65536)),
        ];
        for (data, want) in cases {
            assert_eq!(decode(data), Ok(want), "{}", String::from_utf8_lossy(data));
        }
        assert!(matches!(decode(b"Fnan\n."), Ok(V::Float(f)) if f.is_nan()));
        for bad in [
            &b"S'abc\n."[..],
            b"S'\\'\n.",
            b"S'\\x4'\n.",
            b"L010\n.",
            b"I1__0\n.",
            b"I_1\n.",
            b"F1e999\n.",
            b"F 1.5\n.",
            b"V\\u12\n.",
            b"cmod\nna\xffme\n.",
            b"\x82\x00.",
            b"\x84\xff\xff\xff\xff.",
            b"Pab\xffc\n.",
        ] {
            assert!(
                matches!(decode(bad), Err(PickleError::Invalid(_))),
                "{} -> {:?}",
                String::from_utf8_lossy(bad),
                decode(bad)
            );
        }
    }

    #[test]
    fn stack_memo_and_object_opcodes_follow_cpython() {
        let object = |args: Vec<Value>| V::Object {
            class: Box::new(g("mod", "cls")),
            args,
            kwargs: vec![],
            state: None,
        };
        let cases: Vec<(&[u8], Value)> = vec![
            (b"(K\x01K\x02imod\ncls\n.", object(ints(&[1, 2]))),
            (b"(cmod\ncls\nK\x01o.", object(ints(&[1]))),
            (b"K\x01K\x020.", V::Int(1)),
            (b"K\x01(K\x02K\x031.", V::Int(1)),
            (b"K\x012\x86.", t(ints(&[1, 1]))),
            (b"K\x01(0.", V::Int(1)),
            (b"K\x01K\x02.", V::Int(2)),
            (b"(N.", V::None),
            (b"K\x01p5\n0g5\n.", V::Int(1)),
            (b"K\x01r\x05\x00\x00\x00j\x05\x00\x00\x00.", V::Int(1)),
            // MEMOIZE stores at len(memo), whatever keys came before.
            (b"K\x01\x94K\x02h\x00\x94h\x01.", V::Int(1)),
            (b"K\x01q\x07\x94K\x02h\x01.", V::Int(1)),
            (
                b"(K\x01K\x02K\x03K\x04d.",
                V::Dict(vec![(V::Int(1), V::Int(2)), (V::Int(3), V::Int(4))]),
            ),
            (b"(K\x01K\x02l.", V::List(ints(&[1, 2]))),
            (b"(K\x01K\x02K\x03t.", t(ints(&[1, 2, 3]))),
            // Python dict/set semantics: True == 1, first key kept, last value wins.
            (
                b"}(K\x01K\x02\x88K\x03u.",
                V::Dict(vec![(V::Int(1), V::Int(3))]),
            ),
            (
                b"}(\x8c\x01aK\x01\x8c\x01bK\x02\x8c\x01aK\x03u.",
                V::Dict(vec![(s("a"), V::Int(3)), (s("b"), V::Int(2))]),
            ),
            (b"\x8f(K\x01K\x01\x88\x90.", V::Set(ints(&[1]))),
            (
                b"(G?\xf0\x00\x00\x00\x00\x00\x00K\x01\x91.",
                V::FrozenSet(vec![V::Float(1.0)]),
            ),
            // BUILD with a None state (and an empty slot state) on a built-in value is a
            // no-op; anything else fails in CPython.
            (b"]Nb.", V::List(vec![])),
            (b"]N}\x86b.", V::List(vec![])),
            (b"C\x01a\x98.", V::Bytes(b"a".to_vec())),
            (
                b"\x80\x05\x96\x03\x00\x00\x00\x00\x00\x00\x00xyz.",
                V::ByteArray(b"xyz".to_vec()),
            ),
            (b"\x80\x02\x8a\x00.", V::Int(0)),
            (b"\x80\x02\x8a\x02\xff\x00.", V::Int(255)),
            (
                b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.",
                V::Int(0),
            ),
            (b"\x80\x02\x8a\x01\xff.", V::Int(-1)),
            (b"\x80\x02\x8b\x01\x00\x00\x00\x80.", V::Int(-128)),
            // A Reduce given state and items twice: nested Builds, newest outside.
            (
                b"cm\nf\n)R}(K\x01K\x02ub\x88b.",
                build(
                    build(
                        reduce(g("m", "f"), t(vec![])),
                        V::Dict(vec![(V::Int(1), V::Int(2))]),
                    ),
                    V::Bool(true),
                ),
            ),
        ];
        for (data, want) in cases {
            assert_eq!(decode(data), Ok(want), "{}", String::from_utf8_lossy(data));
        }
        let errors: Vec<(&[u8], PickleError)> = vec![
            (b"", PickleError::Truncated),
            (b"N", PickleError::Truncated),
            (b"N.N", PickleError::TrailingData),
            (b"(.", PickleError::StackUnderflow),
            (b".", PickleError::StackUnderflow),
            (b"a.", PickleError::StackUnderflow),
            (b"K\x01(a.", PickleError::StackUnderflow),
            (b"e.", PickleError::NoMark),
            (b"1.", PickleError::NoMark),
            (b"h\x07.", PickleError::BadMemoKey(7)),
            (b"g99\n.", PickleError::BadMemoKey(99)),
            (b"\x80\x06N.", PickleError::UnsupportedProtocol(6)),
            (b"\x80\x04\xff.", PickleError::UnknownOpcode(0xff)),
            (b"\x00.", PickleError::UnknownOpcode(0)),
            (b"Z.", PickleError::UnknownOpcode(b'Z')),
            (b"\x80\x05\x97.", PickleError::OutOfBandBuffer),
            (b"\x98.", PickleError::StackUnderflow),
        ];
        for (data, want) in errors {
            assert_eq!(decode(data), Err(want), "{}", String::from_utf8_lossy(data));
        }
        for bad in [
            &b"]\x88b."[..],
            b"]\x8c\x01x\x93.",
            b"K\x01\x85K\x02a.",
            b"(K\x01K\x02K\x03d.",
            b"}(K\x01u.",
            b"NK\x01\x81.",
            b"N)K\x01\x92.",
            b"K\x01(K\x02\x90.",
            b"\x80\x02\x8b\xff\xff\xff\xff.",
            b"\x80\x02T\xff\xff\xff\xff.",
        ] {
            assert!(
                matches!(decode(bad), Err(PickleError::Invalid(_))),
                "{} -> {:?}",
                String::from_utf8_lossy(bad),
                decode(bad)
            );
        }
    }

    #[test]
    fn memoized_container_is_seen_with_its_final_contents() {
        // A dict memoized and put in a list while empty, filled later through the memo.
        let mut p = b"\x80\x04".to_vec();
        p.extend_from_slice(b"]\x94"); // list L (memo 0)
        p.extend_from_slice(b"}\x94"); // dict D (memo 1), on the stack
        p.extend_from_slice(b"a"); // L.append(D) while D is still empty
        p.extend_from_slice(b"h\x01(\x8c\x01kK\x01u"); // D['k'] = 1 through the memo
        p.extend_from_slice(b"0"); // pop D
        p.extend_from_slice(b"h\x01a"); // L.append(D) again
        p.extend_from_slice(b".");
        let d = V::Dict(vec![(s("k"), V::Int(1))]);
        assert_eq!(decode(&p), Ok(V::List(vec![d.clone(), d])));

        // An Object referenced before its BUILD shows the state everywhere.
        let mut p = b"\x80\x04]".to_vec();
        p.extend_from_slice(b"cm\nC\n)\x81\x94"); // obj (memo 0)
        p.extend_from_slice(b"a"); // list.append(obj)
        p.extend_from_slice(b"h\x00}\x8c\x01aK\x01sb0"); // obj.__dict__ = {'a': 1}, pop obj
        p.extend_from_slice(b"h\x00a."); // list.append(obj)
        let obj = Value::object("m", "C", Value::str_dict([("a", V::Int(1))]));
        assert_eq!(decode(&p), Ok(V::List(vec![obj.clone(), obj])));
    }

    // ----- hostile input -----------------------------------------------------------------

    fn all_golden_bytes() -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = golden_plain().into_iter().map(|(_, d, _)| d).collect();
        all.extend(golden_structured().into_iter().map(|(_, d, _)| d.to_vec()));
        all.push(unhex(COMPUTE_P5));
        all
    }

    #[test]
    fn every_truncation_is_an_error() {
        for data in all_golden_bytes() {
            for cut in 0..data.len() {
                let r = decode(&data[..cut]);
                assert!(
                    r.is_err(),
                    "prefix of {cut} bytes of {data:?} decoded: {r:?}"
                );
            }
        }
    }

    fn assert_fast<T>(limit: Duration, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let r = f();
        assert!(start.elapsed() < limit, "took {:?}", start.elapsed());
        r
    }

    #[test]
    fn deep_nesting_is_rejected_quickly() {
        let n = 100_000;
        let marks = [b"\x80\x04".to_vec(), vec![b'('; n], b"N.".to_vec()].concat();
        let lists = [vec![b']'; n], vec![b'a'; n - 1], b".".to_vec()].concat();
        let tuples = [b"N".to_vec(), vec![0x85; n], b".".to_vec()].concat();
        let list_marks = [
            b"]".to_vec(),
            b"(]".repeat(n),
            b"e".repeat(n),
            b".".to_vec(),
        ]
        .concat();
        for data in [marks, lists, tuples, list_marks] {
            let r = assert_fast(Duration::from_secs(2), || decode(&data));
            assert_eq!(r, Err(PickleError::TooDeep));
        }
        // Just inside the limit is fine.
        let limits = Limits::default();
        let ok = [
            b"N".to_vec(),
            vec![0x85; limits.max_depth - 1],
            b".".to_vec(),
        ]
        .concat();
        assert!(decode(&ok).is_ok());
        let too_deep = [b"N".to_vec(), vec![0x85; limits.max_depth], b".".to_vec()].concat();
        assert_eq!(decode(&too_deep), Err(PickleError::TooDeep));
        // Many siblings are not depth.
        let wide = [b"\x80\x04".to_vec(), vec![b']'; n], b".".to_vec()].concat();
        assert_eq!(decode(&wide), Ok(V::List(vec![])));
    }

    /// A list memoized, then a list of 10 references to it, memoized, 40 times over:
    /// 10^40 values if expanded.
    fn memo_bomb(levels: u8, fanout: usize) -> Vec<u8> {
        let mut p = b"\x80\x04](K\x01K\x02e\x94".to_vec();
        for level in 1..=levels {
            p.extend_from_slice(b"](");
            for _ in 0..fanout {
                p.extend_from_slice(&[b'h', level - 1]);
            }
            p.extend_from_slice(b"e\x94");
        }
        p.push(b'.');
        p
    }

    #[test]
    fn memo_bomb_fails_fast() {
        let data = memo_bomb(40, 10);
        assert!(data.len() < 1000);
        let r = assert_fast(Duration::from_secs(1), || decode(&data));
        assert_eq!(r, Err(PickleError::TooManyNodes));
        // The same shape within the limits expands normally, sharing included.
        let small = decode(&memo_bomb(2, 3)).expect("small bomb");
        let leaf = V::List(ints(&[1, 2]));
        let mid = V::List(vec![leaf.clone(), leaf.clone(), leaf]);
        assert_eq!(small, V::List(vec![mid.clone(), mid.clone(), mid]));
    }

    #[test]
    fn shared_large_bytes_cannot_be_expanded_past_the_payload_budget() {
        let limits = Limits {
            max_input: 1 << 20,
            ..Limits::default()
        };
        let big = |copies: usize| {
            let mut p = b"\x80\x04](\x8e".to_vec();
            p.extend_from_slice(&(512u64 << 10).to_le_bytes());
            p.extend(std::iter::repeat_n(b'x', 512 << 10));
            p.push(op::MEMOIZE);
            p.extend(b"h\x00".repeat(copies - 1));
            p.extend_from_slice(b"e.");
            p
        };
        // 9 copies of 512 KiB exceed 4 x 1 MiB.
        assert_eq!(
            decode_with(&big(9), &limits),
            Err(PickleError::PayloadTooLarge)
        );
        let v = decode_with(&big(2), &limits).expect("2 copies fit");
        assert_eq!(v.as_seq().map(<[Value]>::len), Some(2));
    }

    #[test]
    fn declared_lengths_beyond_the_input_are_truncated_without_allocating() {
        let mut cases = Vec::new();
        for opcode in [op::BINBYTES8, op::BINUNICODE8, op::BYTEARRAY8, op::FRAME] {
            for len in [1u64 << 62, u64::MAX, 100] {
                let mut p = vec![0x80, 5, opcode];
                p.extend_from_slice(&len.to_le_bytes());
                p.extend_from_slice(b"abc.");
                cases.push(p);
            }
        }
        for opcode in [op::BINBYTES, op::BINUNICODE, op::BINSTRING, op::LONG4] {
            let mut p = vec![0x80, 5, opcode];
            p.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
            p.extend_from_slice(b"abc.");
            cases.push(p);
        }
        cases.push(b"\x80\x05C\xffabc.".to_vec());
        cases.push(b"\x80\x05\x8a\xffabc.".to_vec());
        for p in cases {
            let r = assert_fast(Duration::from_millis(500), || decode(&p));
            assert_eq!(r, Err(PickleError::Truncated), "{p:?}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let tiny = Limits {
            max_input: 64,
            max_depth: 4,
            max_memo: 2,
            max_nodes: 10,
            max_container_len: 3,
        };
        assert_eq!(
            decode_with(&[b'N'; 65], &tiny),
            Err(PickleError::TooLarge(65))
        );
        assert_eq!(
            decode_with(b"K\x01q\x00q\x00q\x00q\x01q\x01.", &tiny),
            Ok(V::Int(1)),
            "overwriting existing keys does not grow the memo"
        );
        assert_eq!(
            decode_with(b"K\x01q\x01q\x02q\x03.", &tiny),
            Err(PickleError::MemoTooLarge)
        );
        assert_eq!(
            decode_with(b"](K\x01K\x02K\x03K\x04e.", &tiny),
            Err(PickleError::ContainerTooLarge)
        );
        assert_eq!(
            decode_with(b"](K\x01K\x02eK\x03aK\x04a.", &tiny),
            Err(PickleError::ContainerTooLarge)
        );
        assert_eq!(
            decode_with(b"(K\x01K\x02K\x03K\x04t.", &tiny),
            Err(PickleError::ContainerTooLarge)
        );
        assert_eq!(
            decode_with(b"(K\x01K\x02K\x03K\x04K\x05K\x06K\x07K\x08d.", &tiny),
            Err(PickleError::ContainerTooLarge)
        );
        assert_eq!(decode_with(b"(((((N.", &tiny), Err(PickleError::TooDeep));
        assert_eq!(
            decode_with(b"NNNNNNNNNNN.", &tiny),
            Err(PickleError::TooManyNodes)
        );
        assert_eq!(
            decode_with(b"N2222222222.", &tiny),
            Err(PickleError::TooManyNodes),
            "references count even without new nodes"
        );
    }

    #[test]
    fn large_bytes_are_decoded_quickly() {
        let size = 32 << 20;
        let mut p = b"\x80\x05\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x8c\x01a\x8e".to_vec();
        p.extend_from_slice(&(size as u64).to_le_bytes());
        let payload_at = p.len();
        p.extend((0..size).map(|i| (i % 251) as u8));
        p.extend_from_slice(b"s.");
        let v = assert_fast(Duration::from_secs(3), || decode(&p)).expect("big bytes");
        let b = v.get("a").and_then(Value::as_bytes).expect("bytes");
        assert_eq!(b, &p[payload_at..payload_at + size]);
    }

    // ----- encoder -----------------------------------------------------------------------

    #[test]
    fn encoder_writes_the_minimal_protocol_4_forms() {
        assert_eq!(encode_int(0), b"\x80\x04K\x00.");
        assert_eq!(encode_int(12), b"\x80\x04K\x0c.");
        assert_eq!(encode_int(256), b"\x80\x04M\x00\x01.");
        assert_eq!(encode_int(-1), b"\x80\x04J\xff\xff\xff\xff.");
        assert_eq!(
            encode_int(1 << 31),
            b"\x80\x04\x8a\x05\x00\x00\x00\x80\x00."
        );
        assert_eq!(
            encode_int(i64::MIN),
            b"\x80\x04\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80."
        );
        assert_eq!(encode(&V::None), b"\x80\x04N.");
        assert_eq!(encode(&V::Bool(true)), b"\x80\x04\x88.");
        assert_eq!(
            encode(&V::Float(1.5)),
            b"\x80\x04G?\xf8\x00\x00\x00\x00\x00\x00."
        );
        assert_eq!(encode(&V::ByteArray(b"ab".to_vec())), b"\x80\x04C\x02ab.");
        assert_eq!(
            encode(&V::BigInt(vec![0xff, 0xff])),
            b"\x80\x04J\xff\xff\xff\xff.",
            "non-minimal BigInt is normalized"
        );
        assert_eq!(
            encode(&Value::object(
                "dispy",
                "_JobReply",
                Value::str_dict([("uid", V::Int(1))])
            )),
            b"\x80\x04cdispy\n_JobReply\n)\x81}\x8c\x03uidK\x01sb."
        );
        let mut out = b"prefix".to_vec();
        encode_into(&V::None, &mut out);
        assert_eq!(out, b"prefix\x80\x04N.");
    }

    #[test]
    fn cpython_loads_what_we_encode() {
        let long_list = V::List((0..2500).map(V::Int).collect());
        let long_dict = V::Dict((0..1001).map(|i| (V::Int(i), V::None)).collect());
        let cases: Vec<(Value, String)> = vec![
            (V::Int(0), "0".into()),
            (V::Int(-1), "-1".into()),
            (V::Int(300), "300".into()),
            (V::Int(70_000), "70000".into()),
            (V::Int(-70_000), "-70000".into()),
            (V::Int(1 << 40), "1099511627776".into()),
            (V::Int(i64::MIN), "-9223372036854775808".into()),
            (V::Int(i64::MAX), "9223372036854775807".into()),
            (
                V::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0, 1]),
                "18446744073709551616".into(),
            ),
            (
                V::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0, 0xc0]),
                "-1180591620717411303424".into(),
            ),
            (V::Float(1.5), "1.5".into()),
            (V::Float(f64::INFINITY), "inf".into()),
            (V::Float(-0.0), "-0.0".into()),
            (
                s("\u{e9}\u{2603}\u{1f600}"),
                "'\\xe9\\u2603\\U0001f600'".into(),
            ),
            (s(&"q".repeat(300)), format!("'{}'", "q".repeat(300))),
            (V::Bytes(b"\x00ab".to_vec()), "b'\\x00ab'".into()),
            (V::Bytes(vec![b'z'; 300]), format!("b'{}'", "z".repeat(300))),
            (V::ByteArray(b"xyz".to_vec()), "b'xyz'".into()),
            (V::PickleBuffer(b"pb".to_vec()), "b'pb'".into()),
            (t(vec![]), "()".into()),
            (t(ints(&[1])), "(1,)".into()),
            (t(ints(&[1, 2])), "(1, 2)".into()),
            (t(ints(&[1, 2, 3])), "(1, 2, 3)".into()),
            (t(ints(&[1, 2, 3, 4])), "(1, 2, 3, 4)".into()),
            (V::List(vec![]), "[]".into()),
            (V::List(ints(&[7])), "[7]".into()),
            (
                long_list,
                format!(
                    "[{}]",
                    (0..2500)
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            (V::Dict(vec![]), "{}".into()),
            (
                Value::str_dict([
                    ("a", V::Int(1)),
                    ("b", V::List(vec![V::None, V::Bool(true), V::Bool(false)])),
                ]),
                "{'a': 1, 'b': [None, True, False]}".into(),
            ),
            (
                long_dict,
                format!(
                    "{{{}}}",
                    (0..1001)
                        .map(|i| format!("{i}: None"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            (V::Set(vec![]), "set()".into()),
            (V::Set(ints(&[1, 2])), "{1, 2}".into()),
            (V::FrozenSet(ints(&[2])), "frozenset({2})".into()),
            (g("builtins", "len"), "<built-in function len>".into()),
            (
                reduce(
                    g("builtins", "complex"),
                    t(vec![V::Float(1.0), V::Float(2.0)]),
                ),
                "(1+2j)".into(),
            ),
            (
                build(
                    reduce(g("types", "SimpleNamespace"), t(vec![])),
                    Value::str_dict([("a", V::Int(1))]),
                ),
                "namespace(a=1)".into(),
            ),
            (
                V::Object {
                    class: Box::new(g("builtins", "complex")),
                    args: vec![V::Float(1.0), V::Float(2.0)],
                    kwargs: vec![],
                    state: None,
                },
                "(1+2j)".into(),
            ),
            (
                V::Object {
                    class: Box::new(g("builtins", "int")),
                    args: vec![s("10")],
                    kwargs: vec![(s("base"), V::Int(16))],
                    state: None,
                },
                "16".into(),
            ),
        ];
        let pickles: Vec<Vec<u8>> = cases.iter().map(|(v, _)| encode(v)).collect();
        let reprs = python_reprs(&pickles);
        assert_eq!(reprs.len(), cases.len());
        for ((v, want), got) in cases.iter().zip(&reprs) {
            assert_eq!(got, want, "{v:?}");
        }
        // And every one of them reads back through our own decoder.
        for ((v, _), p) in cases.iter().zip(&pickles) {
            let back = decode(p).expect("decode our own pickle");
            match v {
                V::ByteArray(b) | V::PickleBuffer(b) => assert_eq!(back, V::Bytes(b.clone())),
                V::BigInt(b) => assert_eq!(back, int_from_le(b.clone())),
                _ => assert_eq!(&back, v),
            }
        }
    }

    #[test]
    fn cpython_loads_a_job_reply_as_a_real_dispy_instance() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("dispy.py"),
            "class _JobReply(object):\n    pass\n",
        )
        .expect("write dispy.py");
        let reply = Value::object(
            "dispy",
            "_JobReply",
            Value::str_dict([
                ("uid", V::Int(139_691_763_807_312)),
                ("hash", s("d8b20361f75c5a3b20")),
                ("ip_addr", s("127.0.0.1")),
                ("status", V::Int(5)),
                ("result", V::Bytes(b"\x80\x04N.".to_vec())),
                ("stdout", s("out\n")),
                ("stderr", s("")),
                ("exception", V::None),
                ("start_time", V::Float(1.5)),
                ("end_time", V::Float(2.5)),
            ]),
        );
        let data = encode(&reply);
        assert!(data.starts_with(b"\x80\x04cdispy\n_JobReply\n)\x81}"));
        assert!(data.ends_with(b"b."));
        let script = "import sys, pickle\n\
                      o = pickle.loads(bytes.fromhex(sys.stdin.read()))\n\
                      print(type(o).__module__, type(o).__qualname__, sorted(vars(o).items()))\n";
        let out = python(script, &hex(&data), Some(dir.path()));
        assert_eq!(
            out.trim_end(),
            "dispy _JobReply [('end_time', 2.5), ('exception', None), \
             ('hash', 'd8b20361f75c5a3b20'), ('ip_addr', '127.0.0.1'), \
             ('result', b'\\x80\\x04N.'), ('start_time', 1.5), ('status', 5), \
             ('stderr', ''), ('stdout', 'out\\n'), ('uid', 139691763807312)]"
        );
        assert_eq!(decode(&data), Ok(reply));
    }

    // ----- property tests ----------------------------------------------------------------

    /// Plain data CPython can load without any import: what the cross-check uses.
    fn plain_value(with_bytes: bool) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(V::None),
            any::<bool>().prop_map(V::Bool),
            any::<i64>().prop_map(V::Int),
            (0u8..=255).prop_map(|n| V::Int(i64::from(n))),
            prop::collection::vec(any::<u8>(), 9..24).prop_map(int_from_le),
            any::<f64>()
                .prop_filter("NaN != NaN", |f| !f.is_nan())
                .prop_map(V::Float),
            any::<String>().prop_map(V::Str),
            "[a-z\\\\\n\r\u{0}\u{1a}]{0,8}".prop_map(V::Str),
        ];
        let leaf = if with_bytes {
            prop_oneof![
                4 => leaf,
                1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(V::Bytes),
            ]
            .boxed()
        } else {
            leaf.boxed()
        };
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(V::List),
                prop::collection::vec(inner.clone(), 0..8).prop_map(V::Tuple),
                prop::collection::btree_map(any::<String>(), inner.clone(), 0..6)
                    .prop_map(|m| V::Dict(m.into_iter().map(|(k, v)| (V::Str(k), v)).collect())),
                prop::collection::btree_map(any::<i64>(), inner, 0..6)
                    .prop_map(|m| V::Dict(m.into_iter().map(|(k, v)| (V::Int(k), v)).collect())),
            ]
        })
    }

    /// Everything the encoder writes, including the inert object records.
    fn any_value() -> impl Strategy<Value = Value> {
        let name = "[a-z_.\n]{1,8}";
        let leaf = prop_oneof![
            plain_value(true),
            (name, name).prop_map(|(module, name)| V::Global { module, name }),
            (1..=i32::MAX).prop_map(V::Extension),
        ];
        leaf.prop_recursive(3, 48, 6, |inner| {
            let str_entries = prop::collection::btree_map("[a-z]{1,5}", inner.clone(), 0..4)
                .prop_map(|m| {
                    m.into_iter()
                        .map(|(k, v)| (V::Str(k), v))
                        .collect::<Vec<_>>()
                });
            prop_oneof![
                prop::collection::btree_set(any::<i64>(), 0..6)
                    .prop_map(|s| V::Set(s.into_iter().map(V::Int).collect())),
                prop::collection::btree_set("[a-z]{0,4}", 0..6)
                    .prop_map(|s| V::FrozenSet(s.into_iter().map(V::Str).collect())),
                (inner.clone(), inner.clone()).prop_map(|(c, a)| reduce(c, a)),
                (
                    inner.clone(),
                    prop::collection::vec(inner.clone(), 0..4),
                    str_entries,
                    prop::option::of(inner.clone()),
                )
                    .prop_map(|(class, args, kwargs, state)| V::Object {
                        class: Box::new(class),
                        args,
                        kwargs,
                        state: state.map(Box::new),
                    }),
                (inner.clone(), inner.clone(), inner.clone())
                    .prop_map(|(c, a, st)| build(reduce(c, a), st)),
                inner.clone().prop_map(|v| V::PersistentId(Box::new(v))),
                prop::collection::vec(inner, 0..6).prop_map(V::List),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn round_trip(v in any_value()) {
            prop_assert_eq!(decode(&encode(&v)), Ok(v));
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&data);
        }

        #[test]
        fn random_opcode_streams_never_panic(
            ops in prop::collection::vec(
                prop_oneof![
                    3 => prop::sample::select(
                        b"().012FIJKLMNPQRSTUVXabcdegh\x8cijlopqrstu}]G\x80\x81\x82\x83\x84\x85\x86\
                        \x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96\x97\x98BC\n"
                            .to_vec()
                    ),
                    1 => any::<u8>(),
                ],
                0..300,
            )
        ) {
            let _ = decode(&ops);
            let mut with_stop = ops;
            with_stop.push(b'.');
            let _ = decode(&with_stop);
        }

        #[test]
        fn mutated_cpython_pickles_never_panic(
            case in 0usize..1000,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let all = all_golden_bytes();
            let mut data = all[case % all.len()].clone();
            for (at, byte) in edits {
                let i = at.index(data.len());
                data[i] = byte;
            }
            let _ = decode(&data);
        }
    }

    /// Our encoder -> CPython -> CPython's encoder (protocols 0-5, memo, FRAME) -> our
    /// decoder, on generated plain data.
    #[test]
    fn cpython_round_trip_of_generated_values() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let mut values = Vec::new();
        let mut protocols = Vec::new();
        for i in 0..150 {
            let with_bytes = i % 2 == 0;
            let tree = plain_value(with_bytes)
                .new_tree(&mut runner)
                .expect("generate a value");
            values.push(tree.current());
            // Protocols 0-2 write bytes as REDUCE(_codecs.encode, ...), so they only get
            // values without bytes.
            protocols.push(if with_bytes { 3 + i % 3 } else { i % 3 });
        }
        let input: Vec<String> = values
            .iter()
            .zip(&protocols)
            .map(|(v, p)| format!("{p} {}", hex(&encode(v))))
            .collect();
        let script = "import sys, pickle\n\
                      lines = sys.stdin.read().splitlines()\n\
                      for line in lines:\n\
                      \x20   p, h = line.split(' ')\n\
                      \x20   print(pickle.dumps(pickle.loads(bytes.fromhex(h)), protocol=int(p)).hex())\n";
        let out = python(script, &input.join("\n"), None);
        let outs: Vec<&str> = out.lines().collect();
        assert_eq!(outs.len(), values.len());
        for ((v, p), h) in values.iter().zip(&protocols).zip(outs) {
            assert_eq!(decode(&unhex(h)).as_ref(), Ok(v), "protocol {p}: {h}");
        }
    }
}
