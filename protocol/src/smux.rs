//! xtaci/smux protocol version 1 frames (docs/protocol.md §6.2), sans-IO.
//!
//! In mux mode the data channel's `Output` payloads carry a raw smux byte stream, chopped into
//! ≤ 1024-byte messages with no alignment to smux frames. [`FrameDecoder`] therefore takes
//! arbitrary chunks and yields whole frames.
//!
//! No crate on crates.io speaks xtaci/smux v1 soundly and independently of an I/O runtime
//! (the ports found bundle their own session/stream machinery and executor). The frame format
//! is eight bytes of header, so it lives here, where it can be fuzzed with the rest of the
//! protocol.
//!
//! One faithful quirk: smux reads a data body **only for PSH**. For SYN, FIN and NOP the length
//! field is ignored and no bytes are consumed, exactly as `session.recvLoop` does; a decoder
//! that skipped `len` bytes there would desynchronise from the real peer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The only protocol version the official client and agent speak.
pub const VERSION: u8 = 1;
/// Size of a frame header: `ver:u8 | cmd:u8 | len:u16 LE | sid:u32 LE`.
pub const HEADER_LEN: usize = 8;
/// smux's default `MaxFrameSize`: writers split data into PSH frames of at most this size.
pub const MAX_FRAME_SIZE: usize = 32 * 1024;
/// The most data one PSH frame can announce (the length field is a u16).
pub const MAX_FRAME_DATA: usize = u16::MAX as usize;

/// A smux command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// 0: open a stream.
    Syn,
    /// 1: close a stream (no half-close in v1).
    Fin,
    /// 2: stream data.
    Psh,
    /// 3: keepalive, stream id 0.
    Nop,
}

impl Command {
    /// The wire byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::Syn => 0,
            Self::Fin => 1,
            Self::Psh => 2,
            Self::Nop => 3,
        }
    }
}

/// One smux frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// What the frame does.
    pub command: Command,
    /// The stream it belongs to (client streams are odd, starting at 3; NOP uses 0).
    pub stream_id: u32,
    /// Stream data: non-empty only for PSH, at most [`MAX_FRAME_DATA`] bytes.
    pub data: Bytes,
}

/// Why a smux byte stream is invalid. Both are fatal to the smux session, as in smux itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmuxError {
    /// The version byte is not 1.
    #[error("unsupported smux version {0} (only version 1 is spoken)")]
    UnsupportedVersion(u8),
    /// The command byte is not SYN, FIN, PSH or NOP (UPD, 4, exists only in version 2).
    #[error("invalid smux command {0}")]
    InvalidCommand(u8),
    /// A PSH frame was built with more data than its u16 length field can announce.
    #[error("smux frame data of {0} bytes exceeds the 65535-byte maximum")]
    FrameTooLarge(usize),
}

impl Frame {
    /// SYN: opens `stream_id`.
    pub fn syn(stream_id: u32) -> Self {
        Self {
            command: Command::Syn,
            stream_id,
            data: Bytes::new(),
        }
    }

    /// FIN: closes `stream_id`.
    pub fn fin(stream_id: u32) -> Self {
        Self {
            command: Command::Fin,
            stream_id,
            data: Bytes::new(),
        }
    }

    /// NOP: keepalive on stream 0.
    pub fn nop() -> Self {
        Self {
            command: Command::Nop,
            stream_id: 0,
            data: Bytes::new(),
        }
    }

    /// PSH: `data` on `stream_id`.
    ///
    /// # Errors
    /// [`SmuxError::FrameTooLarge`] if `data` is longer than [`MAX_FRAME_DATA`]; use
    /// [`encode_data`] to split larger writes.
    pub fn psh(stream_id: u32, data: Bytes) -> Result<Self, SmuxError> {
        if data.len() > MAX_FRAME_DATA {
            return Err(SmuxError::FrameTooLarge(data.len()));
        }
        Ok(Self {
            command: Command::Psh,
            stream_id,
            data,
        })
    }

    /// Appends the encoded frame to `buf`. Non-PSH frames are written with length 0 and no
    /// body, whatever `data` holds, because smux never reads a body for them.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        let body: &[u8] = match self.command {
            // `psh` bounds the data; a struct-literal frame with more is cut at the u16 limit
            // rather than writing a length field that disagrees with the body.
            Command::Psh => &self.data[..self.data.len().min(MAX_FRAME_DATA)],
            Command::Syn | Command::Fin | Command::Nop => &[],
        };
        buf.reserve(HEADER_LEN + body.len());
        buf.put_u8(VERSION);
        buf.put_u8(self.command.byte());
        buf.put_u16_le(body.len() as u16);
        buf.put_u32_le(self.stream_id);
        buf.put_slice(body);
    }

    /// The encoded frame.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode_into(&mut buf);
        buf.freeze()
    }
}

/// Appends `data` for `stream_id` as PSH frames of at most `max_frame_size` bytes (clamped to
/// 1..=[`MAX_FRAME_DATA`]), as smux's `Stream.Write` does. Empty data writes nothing.
pub fn encode_data(stream_id: u32, data: &[u8], max_frame_size: usize, buf: &mut BytesMut) {
    let size = max_frame_size.clamp(1, MAX_FRAME_DATA);
    buf.reserve(data.len() + data.len().div_ceil(size) * HEADER_LEN);
    for chunk in data.chunks(size) {
        buf.put_u8(VERSION);
        buf.put_u8(Command::Psh.byte());
        buf.put_u16_le(chunk.len() as u16);
        buf.put_u32_le(stream_id);
        buf.put_slice(chunk);
    }
}

/// Incremental decoder for a smux byte stream split arbitrarily into chunks.
///
/// Feed chunks with [`push`](Self::push) and drain frames with
/// [`next_frame`](Self::next_frame). After an error the stream is unusable (smux closes the
/// session); the decoder keeps returning that error.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    failed: Option<SmuxError>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(chunk);
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// A version other than 1 or an unknown command; the error repeats on every later call.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SmuxError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        // smux checks the version before the command.
        if header[0] != VERSION {
            return Err(self.fail(SmuxError::UnsupportedVersion(header[0])));
        }
        let command = match header[1] {
            0 => Command::Syn,
            1 => Command::Fin,
            2 => Command::Psh,
            3 => Command::Nop,
            other => return Err(self.fail(SmuxError::InvalidCommand(other))),
        };
        let length = usize::from(u16::from_le_bytes([header[2], header[3]]));
        let stream_id = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let body = if command == Command::Psh { length } else { 0 };
        if self.buf.len() < HEADER_LEN + body {
            self.buf.reserve(HEADER_LEN + body - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let data = self.buf.split_to(body).freeze();
        Ok(Some(Frame {
            command,
            stream_id,
            data,
        }))
    }

    fn fail(&mut self, err: SmuxError) -> SmuxError {
        self.buf = BytesMut::new();
        self.failed = Some(err.clone());
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(frame: &Frame) -> String {
        hex::encode(frame.encode())
    }

    #[test]
    fn examples_from_protocol_md() {
        assert_eq!(hex(&Frame::syn(3)), "0100000003000000");
        let psh = Frame::psh(3, Bytes::from_static(b"hello")).expect("small");
        assert_eq!(hex(&psh), "01020500030000006865 6c6c6f".replace(' ', ""));
        assert_eq!(hex(&Frame::fin(3)), "0101000003000000");
        assert_eq!(hex(&Frame::nop()), "0103000000000000");
    }

    #[test]
    fn decodes_frames_packed_and_split() {
        let stream = hex::decode(concat!(
            "0100000003000000",
            "01020500030000006865",
            "6c6c6f",
            "0101000003000000",
            "0103000000000000",
        ))
        .expect("hex");
        let mut decoder = FrameDecoder::new();
        let mut frames = Vec::new();
        for byte in stream {
            decoder.push(&[byte]);
            while let Some(frame) = decoder.next_frame().expect("valid") {
                frames.push(frame);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::syn(3),
                Frame::psh(3, Bytes::from_static(b"hello")).expect("small"),
                Frame::fin(3),
                Frame::nop(),
            ]
        );
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn non_psh_length_is_ignored_like_smux() {
        // A SYN announcing 5 bytes is followed directly by the next header.
        let stream = hex::decode("01000500050000000103000000000000").expect("hex");
        let mut decoder = FrameDecoder::new();
        decoder.push(&stream);
        assert_eq!(decoder.next_frame(), Ok(Some(Frame::syn(5))));
        assert_eq!(decoder.next_frame(), Ok(Some(Frame::nop())));
        assert_eq!(decoder.next_frame(), Ok(None));
    }

    #[test]
    fn bad_version_and_command_are_fatal() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&hex::decode("0200000003000000").expect("hex"));
        assert_eq!(decoder.next_frame(), Err(SmuxError::UnsupportedVersion(2)));
        decoder.push(&Frame::nop().encode());
        assert_eq!(decoder.next_frame(), Err(SmuxError::UnsupportedVersion(2)));

        let mut decoder = FrameDecoder::new();
        decoder.push(&hex::decode("0104000003000000").expect("hex"));
        assert_eq!(decoder.next_frame(), Err(SmuxError::InvalidCommand(4)));
    }

    #[test]
    fn large_writes_split_at_the_frame_size() {
        let data = vec![7u8; MAX_FRAME_SIZE * 2 + 10];
        let mut buf = BytesMut::new();
        encode_data(5, &data, MAX_FRAME_SIZE, &mut buf);
        let mut decoder = FrameDecoder::new();
        decoder.push(&buf);
        let mut sizes = Vec::new();
        while let Some(frame) = decoder.next_frame().expect("valid") {
            assert_eq!((frame.command, frame.stream_id), (Command::Psh, 5));
            sizes.push(frame.data.len());
        }
        assert_eq!(sizes, vec![MAX_FRAME_SIZE, MAX_FRAME_SIZE, 10]);
        assert_eq!(
            Frame::psh(1, Bytes::from(vec![0; MAX_FRAME_DATA + 1])),
            Err(SmuxError::FrameTooLarge(MAX_FRAME_DATA + 1))
        );
    }
}
