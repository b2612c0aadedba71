//! Framing of pycos messages: a 4-byte big-endian length, then the payload. Connections to the
//! node port start with a raw 40-byte auth prefix. Pure: the socket code lives in `net`.

use thiserror::Error;

/// Length of the raw auth prefix that starts every connection to the node port.
pub const AUTH_LEN: usize = 40;
/// Size of the length header of a frame.
pub const HEADER_LEN: usize = 4;
/// FILEXFER chunk size: the client checks each chunk against this exact size (gotcha G4).
pub const FILE_CHUNK: usize = 1_024_000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: u64, limit: u64 },
    #[error("frame truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
}

/// Parses a frame header and checks the announced length against `limit` before anyone
/// allocates a buffer for it.
pub fn parse_header(header: [u8; HEADER_LEN], limit: u64) -> Result<usize, FrameError> {
    let len = u64::from(u32::from_be_bytes(header));
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    // u32 always fits in usize on the 32/64-bit targets we build for.
    Ok(len as usize)
}

/// The 4-byte header for a payload of `len` bytes; payloads must fit in u32.
pub fn header(len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    u32::try_from(len)
        .map(u32::to_be_bytes)
        .map_err(|_| FrameError::TooLarge {
            len: len as u64,
            limit: u64::from(u32::MAX),
        })
}

/// A whole frame (header + payload) in one buffer.
pub fn encode(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(payload.len())?);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Splits one complete frame off the front of `buf`, returning the payload and the rest.
pub fn split(buf: &[u8], limit: u64) -> Result<(&[u8], &[u8]), FrameError> {
    let head: [u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated {
            need: HEADER_LEN,
            have: buf.len(),
        })?;
    let len = parse_header(head, limit)?;
    let rest = &buf[HEADER_LEN..];
    if rest.len() < len {
        return Err(FrameError::Truncated {
            need: len,
            have: rest.len(),
        });
    }
    Ok(rest.split_at(len))
}

/// Splits a request payload `TAG:pickle` into its tag (without the colon) and body.
/// Bare tokens such as `ACK` have no colon and come back as the whole tag.
pub fn split_tag(payload: &[u8]) -> (&[u8], &[u8]) {
    // Tags are short ASCII words; looking further would only cost time on big payloads.
    let window = &payload[..payload.len().min(32)];
    match window.iter().position(|&b| b == b':') {
        Some(i) => (&payload[..i], &payload[i + 1..]),
        None => (payload, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_compute_reply_round_trip() {
        // Session A: the node's reply to COMPUTE is 00 00 00 05 80 05 4b 02 2e.
        let wire = [0, 0, 0, 5, 0x80, 5, 0x4b, 2, 0x2e];
        let (payload, rest) = split(&wire, 100).unwrap();
        assert_eq!(payload, &[0x80, 5, 0x4b, 2, 0x2e]);
        assert!(rest.is_empty());
        assert_eq!(encode(payload).unwrap(), wire);
    }

    #[test]
    fn limits_and_truncation() {
        assert_eq!(
            parse_header([0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                limit: 1 << 20
            })
        );
        assert!(matches!(
            split(&[0, 0], 10),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            split(&[0, 0, 0, 3, 1], 10),
            Err(FrameError::Truncated { .. })
        ));
        assert_eq!(split(&[0, 0, 0, 0], 10).unwrap().0, b"");
    }

    #[test]
    fn tags() {
        assert_eq!(
            split_tag(b"COMPUTE:\x80\x05K\x02."),
            (&b"COMPUTE"[..], &b"\x80\x05K\x02."[..])
        );
        assert_eq!(split_tag(b"ACK"), (&b"ACK"[..], &b""[..]));
        let mut long = vec![b'A'; 100];
        long.push(b':');
        assert_eq!(split_tag(&long).1, b"");
    }
}
