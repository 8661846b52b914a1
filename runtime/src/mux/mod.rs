//! The smux v1 client over the data channel's Output byte stream, sans-IO (docs/protocol.md §6.2).
//!
//! Each local TCP connection is one smux stream. Outgoing frames accumulate in one byte
//! stream that the session chops into ≤ 1024-byte Output messages, as the official client does
//! (no alignment to frames); incoming Output payloads are fed back in arbitrary chunks.
//!
//! Close semantics are smux v1's: there is no half-close, so either side's FIN ends the stream
//! in both directions. Unlike the official client (§13 #18), a stream that cannot be opened
//! or that the peer refuses (ConnectToPortError) is reported so the local socket is closed.

use std::collections::{HashSet, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::protocol::smux::{self, Command, Frame, FrameDecoder, SmuxError};

/// What the peer did to a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MuxEvent {
    /// Data for a stream.
    Data(u32, Bytes),
    /// The peer closed a stream (FIN).
    Closed(u32),
}

/// The client side of an smux session.
#[derive(Debug)]
pub struct MuxClient {
    decoder: FrameDecoder,
    next_id: u32,
    open: HashSet<u32>,
    outbound: BytesMut,
    events: VecDeque<MuxEvent>,
    failed: Option<SmuxError>,
}

impl Default for MuxClient {
    fn default() -> Self {
        Self::new()
    }
}

impl MuxClient {
    /// A session with no streams.
    pub fn new() -> Self {
        Self {
            decoder: FrameDecoder::new(),
            // smux bumps its counter by 2 before use: the first client stream is 3.
            next_id: 1,
            open: HashSet::new(),
            outbound: BytesMut::new(),
            events: VecDeque::new(),
            failed: None,
        }
    }

    /// Opens a stream (queues its SYN) and returns its id.
    pub fn open_stream(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(2);
        let id = self.next_id;
        self.open.insert(id);
        Frame::syn(id).encode_into(&mut self.outbound);
        id
    }

    /// Queues data for an open stream, split into PSH frames of smux's default maximum size.
    /// Data for a stream that is no longer open is discarded (the peer closed it).
    pub fn write(&mut self, stream_id: u32, data: &[u8]) {
        if self.open.contains(&stream_id) {
            smux::encode_data(stream_id, data, smux::MAX_FRAME_SIZE, &mut self.outbound);
        }
    }

    /// Closes a stream (queues its FIN) if it is open.
    pub fn close(&mut self, stream_id: u32) {
        if self.open.remove(&stream_id) {
            Frame::fin(stream_id).encode_into(&mut self.outbound);
        }
    }

    /// Queues a keepalive NOP (needed only with agents that keep smux keepalive on).
    pub fn keepalive(&mut self) {
        Frame::nop().encode_into(&mut self.outbound);
    }

    /// Whether a stream is open.
    pub fn is_open(&self, stream_id: u32) -> bool {
        self.open.contains(&stream_id)
    }

    /// Open streams.
    pub fn open_streams(&self) -> usize {
        self.open.len()
    }

    /// Feeds bytes of the agent's smux stream (an Output payload).
    ///
    /// # Errors
    /// The stream is not valid smux v1; the session is dead from then on (as in smux) and every
    /// later call returns the same error.
    pub fn handle_bytes(&mut self, chunk: &[u8]) -> Result<(), SmuxError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        self.decoder.push(chunk);
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => self.on_frame(frame),
                Ok(None) => return Ok(()),
                Err(err) => {
                    self.failed = Some(err.clone());
                    return Err(err);
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        match frame.command {
            Command::Psh if self.open.contains(&frame.stream_id) && !frame.data.is_empty() => {
                self.events
                    .push_back(MuxEvent::Data(frame.stream_id, frame.data));
            }
            Command::Fin => {
                if self.open.remove(&frame.stream_id) {
                    self.events.push_back(MuxEvent::Closed(frame.stream_id));
                }
            }
            // A server never opens streams towards the client in this protocol; smux would
            // queue it for Accept, which nobody calls, so ignoring it is equivalent. Data for
            // unknown streams is read and discarded, as smux does. NOPs only prove liveness.
            Command::Syn | Command::Psh | Command::Nop => {}
        }
    }

    /// The next thing the peer did.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        self.events.pop_front()
    }

    /// Bytes of outgoing smux stream waiting to be sent.
    pub fn outbound_len(&self) -> usize {
        self.outbound.len()
    }

    /// Takes up to `max` bytes of the outgoing smux stream (one Output message's worth).
    pub fn take_outbound(&mut self, max: usize) -> Option<Bytes> {
        if self.outbound.is_empty() {
            return None;
        }
        let n = self.outbound.len().min(max);
        Some(self.outbound.split_to(n).freeze())
    }

    /// Puts bytes taken by [`take_outbound`](Self::take_outbound) back at the front, when they
    /// could not be sent (the data channel's window was full).
    pub fn untake_outbound(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        let mut joined = BytesMut::with_capacity(bytes.len() + self.outbound.len());
        joined.extend_from_slice(&bytes);
        joined.extend_from_slice(&self.outbound);
        self.outbound = joined;
    }

    /// Discards everything buffered in either direction (the data channel was replaced by a
    /// new session, which starts a new smux session).
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mux: &mut MuxClient) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = mux.take_outbound(1024) {
            assert!(chunk.len() <= 1024);
            out.extend_from_slice(&chunk);
        }
        out
    }

    #[test]
    fn streams_are_odd_from_three_and_frames_match_protocol_md() {
        let mut mux = MuxClient::new();
        assert_eq!(mux.open_stream(), 3);
        mux.write(3, b"hello");
        mux.close(3);
        assert_eq!(mux.open_stream(), 5);
        assert_eq!(
            hex::encode(drain(&mut mux)),
            concat!(
                "0100000003000000",
                "01020500030000006865",
                "6c6c6f",
                "0101000003000000",
                "0100000005000000",
            )
        );
        // Closed streams take no more data.
        mux.write(3, b"late");
        assert_eq!(mux.outbound_len(), 0);
    }

    #[test]
    fn peer_frames_in_arbitrary_chunks_become_events() {
        let mut mux = MuxClient::new();
        let id = mux.open_stream();
        drain(&mut mux);
        let mut stream = BytesMut::new();
        Frame::psh(id, Bytes::from_static(b"abc"))
            .expect("small")
            .encode_into(&mut stream);
        Frame::psh(99, Bytes::from_static(b"ignored"))
            .expect("small")
            .encode_into(&mut stream);
        Frame::nop().encode_into(&mut stream);
        Frame::fin(id).encode_into(&mut stream);
        for byte in stream.iter() {
            mux.handle_bytes(&[*byte]).expect("valid");
        }
        assert_eq!(
            mux.poll_event(),
            Some(MuxEvent::Data(id, Bytes::from_static(b"abc")))
        );
        assert_eq!(mux.poll_event(), Some(MuxEvent::Closed(id)));
        assert_eq!(mux.poll_event(), None);
        assert!(!mux.is_open(id));
        // Our close after the peer's FIN writes nothing.
        mux.close(id);
        assert_eq!(mux.outbound_len(), 0);
    }

    #[test]
    fn protocol_errors_are_sticky() {
        let mut mux = MuxClient::new();
        assert_eq!(
            mux.handle_bytes(&[2, 0, 0, 0, 3, 0, 0, 0]),
            Err(SmuxError::UnsupportedVersion(2))
        );
        assert!(mux.handle_bytes(&Frame::nop().encode()).is_err());
    }

    #[test]
    fn untaken_bytes_go_back_in_front() {
        let mut mux = MuxClient::new();
        let id = mux.open_stream();
        mux.write(id, &[7; 3000]);
        let first = mux.take_outbound(1024).expect("bytes");
        let total = mux.outbound_len() + first.len();
        mux.untake_outbound(first.clone());
        assert_eq!(mux.outbound_len(), total);
        assert_eq!(mux.take_outbound(1024), Some(first));
    }
}
