//! WebSocket framing after the upgrade (RFC 6455, section 5), over bytes the connection
//! hands in: client frames taken off the front of what reads brought (checked and
//! unmasked in place), and server frame headers (never masked).
//!
//! Pure functions, no I/O: `super::conn` owns the socket and the buffers.

use bytes::{Buf, BytesMut};

/// The longest server frame header: no mask, a 64-bit length.
pub const MAX_HEADER: usize = 10;

/// A frame's opcode (RFC 6455, 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continue,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn code(self) -> u8 {
        match self {
            Self::Continue => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// One client frame, unmasked.
#[derive(Debug)]
pub struct ClientFrame {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: BytesMut,
}

/// Why a client's bytes are not a frame this server takes.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Against RFC 6455 (the connection closes with 1002); the sentence says what.
    Protocol(&'static str),
    /// A payload longer than the limit (1009), known from the header alone.
    TooLarge,
}

/// Takes the next complete frame off the front of `buf`: `None` while `buf` holds only
/// part of one (the header is checked as soon as it is there, so a frame over
/// `max_payload` is refused before its payload arrives). The payload is unmasked in
/// place and split off `buf` (no copy, no allocation).
pub fn next_frame(
    buf: &mut BytesMut,
    max_payload: usize,
) -> Result<Option<ClientFrame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "a frame has reserved bits set, but no extension was agreed",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = match b0 & 0x0F {
        0x0 => Opcode::Continue,
        0x1 => Opcode::Text,
        0x2 => Opcode::Binary,
        0x8 => Opcode::Close,
        0x9 => Opcode::Ping,
        0xA => Opcode::Pong,
        _ => return Err(FrameError::Protocol("a frame has a reserved opcode")),
    };
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol(
            "a client frame is not masked (RFC 6455, section 5.3)",
        ));
    }
    let (len, at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (n as u64, 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::Protocol(
            "a control frame is fragmented or longer than 125 bytes",
        ));
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge);
    }
    let len = len as usize;
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let mask: [u8; 4] = mask.try_into().expect("4 bytes");
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mut payload = buf.split_to(at + 4 + len);
    payload.advance(at + 4);
    unmask(&mut payload, mask);
    Ok(Some(ClientFrame {
        fin,
        opcode,
        payload,
    }))
}

/// XORs `data` with the repeated 4-byte `mask`, eight bytes at a time.
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// The header length of a server frame of `payload` bytes.
pub fn header_len(payload: usize) -> usize {
    match payload {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => MAX_HEADER,
    }
}

/// Writes a final, unmasked frame's header into `out`; returns its length.
pub fn header(opcode: Opcode, payload: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    out[0] = 0x80 | opcode.code();
    let len = header_len(payload);
    match len {
        2 => out[1] = payload as u8,
        4 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

    /// A client frame as tungstenite's client writes it (masked).
    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut frame = match opcode {
            OpCode::Control(_) => Frame::ping(payload.to_vec()),
            OpCode::Data(_) => Frame::message(payload.to_vec(), opcode, fin),
        };
        frame.header_mut().mask = Some(mask);
        let mut out = Vec::new();
        frame.format(&mut out).unwrap();
        out
    }

    proptest! {
        /// Any run of text frames, masked as a client does and cut anywhere, comes back
        /// whole, in order, unmasked, once each part has arrived.
        #[test]
        fn frames_cut_anywhere_come_back_whole(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..70_000usize), 1..5),
            mask in any::<[u8; 4]>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let wire: Vec<u8> = payloads
                .iter()
                .flat_map(|p| client_frame(OpCode::Data(Data::Text), true, p, mask))
                .collect();
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = next_frame(&mut buf, 1 << 20).unwrap() {
                got.push(f.payload.to_vec());
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = next_frame(&mut buf, 1 << 20).unwrap() {
                prop_assert!(f.fin);
                prop_assert_eq!(f.opcode, Opcode::Text);
                got.push(f.payload.to_vec());
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, payloads);
        }

        /// Server headers parse back (tungstenite's parser) to the length they were
        /// written for.
        #[test]
        fn server_headers_say_their_length(len in prop_oneof![0..300usize, 65_000..70_000usize, Just(1 << 20)]) {
            let mut out = [0u8; MAX_HEADER];
            let n = header(Opcode::Text, len, &mut out);
            prop_assert_eq!(n, header_len(len));
            let mut cursor = std::io::Cursor::new(&out[..n]);
            let (head, parsed) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            prop_assert_eq!(parsed, len as u64);
            prop_assert!(head.is_final && head.mask.is_none());
            prop_assert_eq!(head.opcode, OpCode::Data(Data::Text));
        }
    }

    #[test]
    fn broken_frames_are_named() {
        let cases: [(&[u8], FrameError); 5] = [
            (
                &[0x81, 0x02, b'h', b'i'],
                FrameError::Protocol("a client frame is not masked (RFC 6455, section 5.3)"),
            ),
            (
                &[0xC1, 0x80, 0, 0, 0, 0],
                FrameError::Protocol("a frame has reserved bits set, but no extension was agreed"),
            ),
            (
                &[0x83, 0x80, 0, 0, 0, 0],
                FrameError::Protocol("a frame has a reserved opcode"),
            ),
            (
                &[0x09, 0x80, 0, 0, 0, 0],
                FrameError::Protocol("a control frame is fragmented or longer than 125 bytes"),
            ),
            // Over the limit, known from the header before any payload.
            (&[0x81, 0xFE, 0x10, 0x00], FrameError::TooLarge),
        ];
        for (bytes, expected) in cases {
            let mut buf = BytesMut::from(bytes);
            assert_eq!(
                next_frame(&mut buf, 1_000).unwrap_err(),
                expected,
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn control_frames_and_fragments_keep_their_opcode_and_fin() {
        let mask = [1, 2, 3, 4];
        let mut wire = client_frame(OpCode::Data(Data::Text), false, b"ab", mask);
        wire.extend(client_frame(
            OpCode::Control(Control::Ping),
            true,
            b"p",
            mask,
        ));
        wire.extend(client_frame(
            OpCode::Data(Data::Continue),
            true,
            b"cd",
            mask,
        ));
        let mut buf = BytesMut::from(&wire[..]);
        let got: Vec<_> = std::iter::from_fn(|| next_frame(&mut buf, 100).unwrap())
            .map(|f| (f.opcode, f.fin, f.payload.to_vec()))
            .collect();
        assert_eq!(
            got,
            [
                (Opcode::Text, false, b"ab".to_vec()),
                (Opcode::Ping, true, b"p".to_vec()),
                (Opcode::Continue, true, b"cd".to_vec()),
            ]
        );
    }
}
