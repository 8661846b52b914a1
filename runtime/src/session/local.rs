//! Local TCP connections: one reader task and one writer task per accepted socket, joined to
//! the session driver by channels. The driver never blocks on a local socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Largest single read from a local socket. smux splits it into 32 KiB frames at most and the
/// channel into 1 KiB messages; reading more at once only delays backpressure.
const READ_SIZE: usize = 16 * 1024;

/// Bytes queued for one local writer beyond which the driver stops taking data from the
/// channel (the peer then resends): per-connection memory stays bounded when the local
/// application reads slowly.
pub(crate) const WRITE_HIGH_WATER: usize = 1024 * 1024;

/// How long a closed connection's queued bytes may take to reach a local application that
/// has stopped reading.
const CLOSE_DRAIN: Duration = Duration::from_secs(30);

/// What a reader task reports.
#[derive(Debug)]
pub(crate) enum LocalEvent {
    /// Bytes read from the local application.
    Data(u64, Bytes),
    /// The local application closed its side, or the socket failed.
    Closed(u64),
}

/// The driver's handle on one local connection.
#[derive(Debug)]
pub(crate) struct LocalConn {
    writer: Option<mpsc::UnboundedSender<Bytes>>,
    /// Dropped when the driver lets go of the connection: from then on the writer task has
    /// [`CLOSE_DRAIN`] to hand over what is queued.
    _alive: oneshot::Sender<()>,
    queued: Arc<AtomicUsize>,
    reader: JoinHandle<()>,
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
}

impl LocalConn {
    /// Starts the reader and writer tasks of an accepted socket.
    pub(crate) fn spawn(
        id: u64,
        socket: TcpStream,
        events: mpsc::Sender<LocalEvent>,
        drained: Arc<Notify>,
    ) -> Self {
        // Latency over batching: interactive protocols (SSH, psql) need small writes sent now.
        let _ = socket.set_nodelay(true);
        let (read, write) = socket.into_split();
        let reader = tokio::spawn(read_loop(id, read, events));
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let (alive, released) = oneshot::channel();
        tokio::spawn(write_loop(write, rx, queued.clone(), drained, released));
        Self {
            writer: Some(tx),
            _alive: alive,
            queued,
            reader,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    /// Queues bytes for the local application.
    pub(crate) fn write(&mut self, data: Bytes) {
        if let Some(writer) = &self.writer {
            self.bytes_down += data.len() as u64;
            self.queued.fetch_add(data.len(), Ordering::Relaxed);
            if writer.send(data).is_err() {
                // The writer task ended (local socket failed); the reader reports the close.
                self.writer = None;
            }
        }
    }

    /// Whether the local application has fallen too far behind.
    pub(crate) fn is_saturated(&self) -> bool {
        self.queued.load(Ordering::Relaxed) > WRITE_HIGH_WATER
    }

    /// Closes the connection fully: queued bytes are still written, then the socket closes;
    /// nothing more is read.
    pub(crate) fn close(mut self) {
        self.writer = None;
        self.reader.abort();
    }
}

impl Drop for LocalConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(id: u64, mut read: OwnedReadHalf, events: mpsc::Sender<LocalEvent>) {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    loop {
        buf.reserve(READ_SIZE);
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                // A full channel is backpressure: this task waits, the socket stops being read.
                if events
                    .send(LocalEvent::Data(id, buf.split().freeze()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = events.send(LocalEvent::Closed(id)).await;
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    released: oneshot::Receiver<()>,
) {
    // Once the driver has let go, an application that never reads again must not pin this task
    // and its queue forever.
    let give_up = async {
        let _ = released.await;
        tokio::time::sleep(CLOSE_DRAIN).await;
    };
    tokio::pin!(give_up);
    while let Some(data) = rx.recv().await {
        let failed = tokio::select! {
            result = write.write_all(&data) => result.is_err(),
            () = &mut give_up => true,
        };
        let before = queued.fetch_sub(data.len(), Ordering::Relaxed);
        if before > WRITE_HIGH_WATER && before - data.len() <= WRITE_HIGH_WATER {
            drained.notify_one();
        }
        if failed {
            break;
        }
    }
    // Whatever is still queued will never be written: stop counting it against the driver.
    queued.store(0, Ordering::Relaxed);
    drained.notify_one();
    let _ = write.shutdown().await;
}
