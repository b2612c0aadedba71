//! dispynode: a wire-compatible, hardened node server for dispy clients.
pub mod assets;
pub mod config;
pub mod kernel_files;
pub mod limits;
pub mod net;
pub mod node;
pub mod protocol;
pub mod results;
pub mod sandbox;
pub mod store;
pub mod systemd;
pub mod tls;
