//! Destination TCP connections of the agent's port session.
//!
//! One task per connection dials, then copies both ways. Received bytes go to the session core
//! over a bounded channel (so a paused or slow data channel stops the reads, like the agent's
//! `IsActive()` check); bytes to write arrive on an unbounded channel. Either direction ending
//! closes the whole connection (no half-close, as `handleDataTransfer` closes both ends).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::AgentControls;
use super::port::Destination;

/// How much one destination read takes: smux's `MaxFrameSize`, so each read becomes at most
/// one PSH frame, as `io.Copy` into a smux stream does.
const READ_SIZE: usize = ssm_tether_protocol::smux::MAX_FRAME_SIZE;

/// Identifies one destination connection: a unique id, and the smux stream id it serves
/// (0 in basic mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnKey {
    /// Unique for the life of the agent, so late events of a closed connection are ignored.
    pub(crate) id: u64,
    /// The smux stream id, or 0.
    pub(crate) stream_id: u32,
}

/// The outcome of a dial.
#[derive(Debug)]
pub(crate) enum DialEvent {
    /// Connected to `addr`.
    Connected {
        /// Which connection.
        key: ConnKey,
        /// The peer address actually connected to.
        addr: String,
    },
    /// The dial failed (or was refused by fault injection).
    Failed {
        /// Which connection.
        key: ConnKey,
        /// Why.
        error: String,
    },
}

/// Data read from a destination.
#[derive(Debug)]
pub(crate) enum DestEvent {
    /// Bytes read.
    Data {
        /// Which connection.
        key: ConnKey,
        /// The bytes.
        data: Bytes,
    },
    /// The destination closed its side or the read failed.
    Closed {
        /// Which connection.
        key: ConnKey,
        /// `EOF` or the read error.
        reason: String,
    },
}

/// Dials `dest` and copies until either side ends. Returns when the connection is closed.
pub(crate) async fn run(
    key: ConnKey,
    dest: Destination,
    controls: Arc<AgentControls>,
    mut writes: mpsc::UnboundedReceiver<Bytes>,
    dial_events: mpsc::UnboundedSender<DialEvent>,
    reads: mpsc::Sender<DestEvent>,
) {
    if controls.refuse_destination.load(Ordering::Relaxed) {
        let _ = dial_events.send(DialEvent::Failed {
            key,
            error: format!("dial tcp {dest}: connect: connection refused (refuse_destination)"),
        });
        return;
    }
    // `connect` resolves the host and tries each address in order, like Go's net.Dial.
    let stream = match TcpStream::connect((dest.host.as_str(), dest.port)).await {
        Ok(stream) => stream,
        Err(err) => {
            let _ = dial_events.send(DialEvent::Failed {
                key,
                error: format!("dial tcp {dest}: {err}"),
            });
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let addr = stream
        .peer_addr()
        .map_or_else(|_| dest.to_string(), |a| a.to_string());
    let _ = dial_events.send(DialEvent::Connected { key, addr });
    let (mut rd, mut wr) = stream.into_split();

    let reader = async {
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        loop {
            buf.reserve(READ_SIZE);
            let reason = match rd.read_buf(&mut buf).await {
                Ok(0) => "EOF".to_owned(),
                Ok(_) => {
                    let data = buf.split().freeze();
                    if reads.send(DestEvent::Data { key, data }).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(err) => err.to_string(),
            };
            let _ = reads.send(DestEvent::Closed { key, reason }).await;
            return;
        }
    };
    let writer = async {
        // Ends when the core drops the sender (stream FIN, DisconnectToPort, session end)
        // after everything queued before it has been written.
        while let Some(data) = writes.recv().await {
            if let Err(err) = wr.write_all(&data).await {
                return Some(err.to_string());
            }
        }
        let _ = wr.shutdown().await;
        None
    };
    // Full close on either end: dropping both halves closes the socket.
    tokio::select! {
        () = reader => {}
        failed = writer => {
            if let Some(reason) = failed {
                // The core still has this connection: tell it, so the client gets a FIN.
                let _ = reads.send(DestEvent::Closed { key, reason }).await;
            }
        }
    }
}
