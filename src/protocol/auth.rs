//! Signs and auth codes (protocol §1.3). The protocol fixes SHA-1 over `secret + sign`;
//! it is an identity check, not a MAC, which is why TLS is the real protection on untrusted
//! networks.

use sha1::{Digest, Sha1};

use super::frame::AUTH_LEN;

/// The 40 lowercase hex characters of `sha1(secret + sign)`, as the wire carries them.
pub fn auth_code(secret: &str, sign: &str) -> [u8; AUTH_LEN] {
    let mut h = Sha1::new();
    h.update(secret.as_bytes());
    h.update(sign.as_bytes());
    let mut out = [0u8; AUTH_LEN];
    // hex of a 20-byte digest is exactly 40 bytes.
    hex::encode_to_slice(h.finalize(), &mut out).expect("sha1 hex is 40 bytes");
    out
}

/// A node sign: sha1 hex over random bytes and the node's addresses (random per start,
/// not secret).
pub fn make_sign(random: &[u8; 20], addrs: &[String]) -> String {
    let mut h = Sha1::new();
    h.update(random);
    for a in addrs {
        h.update(a.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Constant-time comparison of auth prefixes, so timing tells an attacker nothing.
pub fn same_auth(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_vector() {
        // dispy-protocol.md §1.3: node sign ebc0978a... with secret '' gives ce648347...
        let sign = "ebc0978aa007a6ea136a1bd14ea5ab697dcc1da2";
        assert_eq!(
            &auth_code("", sign),
            b"ce6483473731ce76075c52bc458f09e757cb3ccb"
        );
        // sessB: PONG auth for client sign 38c96713... is da7a9927...
        let client = "38c9671320c37617e9e7c86e9234ffb972bccdb7";
        assert_eq!(
            &auth_code("", client),
            b"da7a99277e546845316793a6748d933c77d08f78"
        );
    }

    #[test]
    fn secret_changes_code() {
        assert_ne!(auth_code("s1", "x"), auth_code("s2", "x"));
        assert!(same_auth(b"abc", b"abc"));
        assert!(!same_auth(b"abc", b"abd"));
        assert!(!same_auth(b"abc", b"ab"));
        let s = make_sign(&[7; 20], &["127.0.0.1".into()]);
        assert_eq!(s.len(), 40);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
