//! AWS's binary event-stream framing (`application/vnd.amazon.eventstream`), as Bedrock's
//! ConverseStream sends it: each message is a prelude (total length, headers length, CRC), headers,
//! a payload and a CRC of the whole. Read incrementally, however the network splits it; a
//! message whose checksums do not match is an error, never guessed at.

/// One decoded message: its string headers and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad event-stream frame: {0}")]
pub struct FrameError(pub String);

/// Collects bytes and hands out complete messages.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

impl Decoder {
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Message>, FrameError> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            if self.buffer.len() < 12 {
                return Ok(out);
            }
            let total = be32(&self.buffer[0..4]) as usize;
            let headers_len = be32(&self.buffer[4..8]) as usize;
            if crc32fast::hash(&self.buffer[0..8]) != be32(&self.buffer[8..12]) {
                return Err(FrameError("prelude checksum mismatch".into()));
            }
            if total < 16 + headers_len || total > 16 * 1024 * 1024 {
                return Err(FrameError(format!(
                    "impossible lengths {total}/{headers_len}"
                )));
            }
            if self.buffer.len() < total {
                return Ok(out);
            }
            let frame: Vec<u8> = self.buffer.drain(..total).collect();
            if crc32fast::hash(&frame[..total - 4]) != be32(&frame[total - 4..]) {
                return Err(FrameError("message checksum mismatch".into()));
            }
            let headers = parse_headers(&frame[12..12 + headers_len])?;
            out.push(Message {
                headers,
                payload: frame[12 + headers_len..total - 4].to_vec(),
            });
        }
    }
}

/// String headers are kept; other value types are skipped by their sizes.
fn parse_headers(mut bytes: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let short = || FrameError("truncated header".into());
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let name_len = *bytes.first().ok_or_else(short)? as usize;
        let name = bytes.get(1..1 + name_len).ok_or_else(short)?;
        let name = String::from_utf8_lossy(name).into_owned();
        bytes = &bytes[1 + name_len..];
        let kind = *bytes.first().ok_or_else(short)?;
        bytes = &bytes[1..];
        let fixed = match kind {
            0 | 1 => Some(0), // true, false
            2 => Some(1),     // byte
            3 => Some(2),     // short
            4 => Some(4),     // integer
            5 | 8 => Some(8), // long, timestamp
            9 => Some(16),    // uuid
            6 | 7 => None,    // byte array, string: 2-byte length
            other => return Err(FrameError(format!("unknown header type {other}"))),
        };
        match fixed {
            Some(n) => bytes = bytes.get(n..).ok_or_else(short)?,
            None => {
                let len_bytes = bytes.get(..2).ok_or_else(short)?;
                let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
                let value = bytes.get(2..2 + len).ok_or_else(short)?;
                if kind == 7 {
                    headers.push((name, String::from_utf8_lossy(value).into_owned()));
                }
                bytes = &bytes[2 + len..];
            }
        }
    }
    Ok(headers)
}

/// Encodes a message with string headers (for tests and the local Bedrock stand-in).
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    for (name, value) in headers {
        head.push(name.len() as u8);
        head.extend_from_slice(name.as_bytes());
        head.push(7);
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value.as_bytes());
    }
    let total = 12 + head.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// However the bytes are split, the same messages come out; a flipped bit is caught.
        #[test]
        fn frames_survive_any_split(
            messages in proptest::collection::vec(("[a-zA-Z]{1,12}", proptest::collection::vec(any::<u8>(), 0..64)), 1..5),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut wire = Vec::new();
            for (kind, payload) in &messages {
                wire.extend(encode(&[(":event-type", kind), (":message-type", "event")], payload));
            }
            let at = cut.index(wire.len() + 1);
            let mut decoder = Decoder::default();
            let mut got = decoder.push(&wire[..at]).unwrap();
            got.extend(decoder.push(&wire[at..]).unwrap());
            prop_assert_eq!(got.len(), messages.len());
            for (m, (kind, payload)) in got.iter().zip(&messages) {
                prop_assert_eq!(m.header(":event-type"), Some(kind.as_str()));
                prop_assert_eq!(&m.payload, payload);
            }
            let mut broken = wire.clone();
            let i = flip.index(broken.len());
            broken[i] ^= 1 << bit;
            let mut decoder = Decoder::default();
            // CRC-32 catches every single flipped bit, in the prelude or the message.
            prop_assert!(decoder.push(&broken).is_err());
        }
    }
}
