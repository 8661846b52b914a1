//! Local connections: one reader task and one writer task per bound connection. The reader
//! reads while its session's upload gate is open; the writer writes what the core queued
//! and reports every batch it wrote, which is how the core knows each backlog.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::Input;
use super::listener::LocalStream;
use crate::tunnel::core::ConnId;

/// Largest single read from a local connection. smux splits it into 32 KiB frames at most
/// and the channel into 1 KiB messages; reading more at once only delays backpressure.
const READ_SIZE: usize = 16 * 1024;
/// Bytes written before the writer reports them (it reports sooner when its queue runs dry).
const REPORT_EVERY: usize = 64 * 1024;
/// How long a closed connection's queued bytes may take to reach an application that has
/// stopped reading.
pub(crate) const CLOSE_DRAIN: Duration = Duration::from_secs(30);

/// The shell's handle on one bound connection.
pub(super) struct LocalConn {
    writer: Option<mpsc::UnboundedSender<Bytes>>,
    /// Dropped when the connection is closed: the writer then has [`CLOSE_DRAIN`] left.
    released: Option<oneshot::Sender<()>>,
    reader: JoinHandle<()>,
    writer_task: JoinHandle<()>,
}

impl LocalConn {
    /// Starts the tasks of a connection.
    pub(super) fn spawn(
        id: ConnId,
        stream: LocalStream,
        gate: watch::Receiver<bool>,
        data: mpsc::Sender<Input>,
        control: mpsc::UnboundedSender<Input>,
    ) -> Self {
        let reader = tokio::spawn(read_loop(id, stream.read, gate, data, control.clone()));
        let (tx, rx) = mpsc::unbounded_channel();
        let (released, release) = oneshot::channel();
        let writer_task = tokio::spawn(write_loop(id, stream.write, rx, control, release));
        Self {
            writer: Some(tx),
            released: Some(released),
            reader,
            writer_task,
        }
    }

    /// Queues bytes for the application.
    pub(super) fn write(&self, data: Bytes) {
        if let Some(writer) = &self.writer {
            // A writer that ended (socket failed) has reported the close already.
            let _ = writer.send(data);
        }
    }

    /// Stops reading; writes what is queued first (bounded by [`CLOSE_DRAIN`]) if `drain`,
    /// else closes at once.
    pub(super) fn close(mut self, drain: bool) {
        self.reader.abort();
        self.writer = None;
        self.released = None;
        if !drain {
            self.writer_task.abort();
        }
    }
}

impl Drop for LocalConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(
    id: ConnId,
    mut read: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    mut gate: watch::Receiver<bool>,
    data: mpsc::Sender<Input>,
    control: mpsc::UnboundedSender<Input>,
) {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    loop {
        if gate.wait_for(|open| *open).await.is_err() {
            return;
        }
        buf.reserve(READ_SIZE);
        match read.read_buf(&mut buf).await {
            // The input ended; the output may go on (a shell still has a command to run).
            // Through the data queue, behind the last bytes read: on the control queue the
            // end could overtake them, and they would be lost.
            Ok(0) => {
                let _ = data.send(Input::LocalEof(id)).await;
                return;
            }
            Err(_) => break,
            Ok(_) => {
                // A full channel is backpressure: this task waits, the socket stops being read.
                if data
                    .send(Input::LocalData(id, buf.split().freeze()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = control.send(Input::LocalClosed(id));
}

async fn write_loop(
    id: ConnId,
    mut write: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    control: mpsc::UnboundedSender<Input>,
    release: oneshot::Receiver<()>,
) {
    // Once the connection is closed, an application that never reads again must not pin this
    // task and its queue forever.
    let give_up = async {
        let _ = release.await;
        tokio::time::sleep(CLOSE_DRAIN).await;
    };
    tokio::pin!(give_up);
    let mut unreported = 0usize;
    loop {
        let next = match rx.try_recv() {
            Ok(data) => Some(data),
            Err(mpsc::error::TryRecvError::Empty) => {
                // The queue ran dry: tell the core everything is written before waiting.
                if unreported > 0 {
                    let _ = control.send(Input::LocalWritten(id, std::mem::take(&mut unreported)));
                }
                rx.recv().await
            }
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        };
        let Some(data) = next else { break };
        let failed = tokio::select! {
            result = write.write_all(&data) => result.is_err(),
            () = &mut give_up => true,
        };
        if failed {
            let _ = control.send(Input::LocalClosed(id));
            return;
        }
        unreported += data.len();
        if unreported >= REPORT_EVERY {
            let _ = control.send(Input::LocalWritten(id, std::mem::take(&mut unreported)));
        }
    }
    if unreported > 0 {
        let _ = control.send(Input::LocalWritten(id, unreported));
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), write.shutdown()).await;
}
