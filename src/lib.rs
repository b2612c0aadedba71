//! dispynode: a wire-compatible, hardened node server for dispy clients.
pub mod config;
pub mod limits;
pub mod net;
pub mod node;
pub mod protocol;
pub mod store;
