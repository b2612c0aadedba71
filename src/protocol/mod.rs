//! Pure protocol logic: no I/O. Framing, auth codes, the restricted pickle codec
//! and typed messages.
pub mod auth;
pub mod frame;
pub mod message;
pub mod pickle;
