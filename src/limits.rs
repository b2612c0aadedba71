//! Every bound on what a peer can make the node spend, in one place.

use std::time::Duration;

use crate::protocol::pickle::Limits;

// Authenticated envelopes (COMPUTE, JOB, ...) are decoded with `pickle::Limits::default()`.

/// Largest request an authenticated client may send; JOB carries the job's arguments inline.
pub const MAX_REQUEST: u64 = 256 << 20;
/// Requests up to this size are read without asking the budget below (the usual ones).
pub const FREE_REQUEST_BYTES: u64 = 1 << 20;
/// Most bytes of larger request bodies the node holds at once (JOB carries its arguments
/// inline); further large requests wait for room, at most `msg_timeout`. A quarter of the
/// host's memory, at least one `MAX_REQUEST`, at most 1 GiB.
pub fn request_budget(physical_memory: u64) -> u64 {
    (physical_memory / 4).clamp(MAX_REQUEST, 1 << 30)
}
/// Largest request without a valid auth prefix: only PING is looked at then.
pub const MAX_UNAUTH_REQUEST: u64 = 4096;
/// Largest reply the node reads from a client (ACKs, acks of files, PULSE answers).
pub const MAX_REPLY: u64 = 1 << 20;
/// Datagrams are read into a buffer of this size (the reference reads 1000 bytes).
pub const MAX_DATAGRAM: usize = 1000;
/// A PING names the client's addresses; answering more than a few would let a forged PING
/// turn the node into a connection amplifier.
pub const MAX_PONG_TARGETS: usize = 4;
/// PONGs being sent at once; a flood of forged PINGs beyond this is dropped, so it cannot
/// make the node hold many sockets.
pub const MAX_PONGS_IN_FLIGHT: usize = 32;
/// Components of a path a client names (dest_path, a file's directory): dispy's own are a
/// few levels deep; a hostile one could ask for thousands of nested directories.
pub const MAX_PATH_COMPONENTS: usize = 32;
/// Connections served at once; further ones wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections from one source (an IPv4 address, an IPv6 /64) that have not yet shown the
/// auth prefix; a newer one closes the oldest of them (`node::unauth_limit`). A real client
/// sends its prefix right after connecting; a peer without the secret could otherwise hold
/// every connection slot.
pub const MAX_UNAUTH_PER_SOURCE: usize = 128;
/// Connections of all sources before their auth prefix; the rest of `MAX_CONNECTIONS` stays
/// for clients that have authenticated.
pub const MAX_UNAUTH_CONNECTIONS: usize = MAX_CONNECTIONS * 3 / 4;
/// Largest frame the Python worker may send (a job result travels in it).
pub const MAX_WORKER_FRAME: usize = 1 << 30;
/// The largest pickled result a function job may return: a worker frame, less room for the
/// frame's other parts.
pub const MAX_RESULT: usize = MAX_WORKER_FRAME - (1 << 20);
/// How long a Python worker may take to start and compile a computation's code.
pub const WORKER_START: Duration = Duration::from_secs(60);
/// How long a computation's cleanup function may run at close.
pub const CLEANUP_TIME: Duration = Duration::from_secs(30);

/// Tight pickle limits for unauthenticated input (PING by TCP or UDP).
pub fn ping_limits() -> Limits {
    Limits {
        max_input: 4096,
        max_depth: 8,
        max_memo: 64,
        max_nodes: 256,
        max_container_len: 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_budget_is_a_quarter_of_memory_within_bounds() {
        assert_eq!(request_budget(0), MAX_REQUEST);
        assert_eq!(request_budget(2 << 30), 512 << 20);
        assert_eq!(request_budget(64 << 30), 1 << 30);
    }
}
