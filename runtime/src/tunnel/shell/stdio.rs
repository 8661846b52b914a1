//! The process's stdin and stdout as one local stream, for a tunnel whose local end is an
//! SSH `ProxyCommand` or a standard-stream session of the AWS CLI.
//!
//! Each direction runs on a thread of its own rather than on tokio's blocking pool: a read
//! of stdin cannot be cancelled, and a runtime that is shut down while one is pending (or
//! while a write to a stdout nobody reads is pending) would wait for it forever. The threads
//! hand data over through channels of a few chunks, so backpressure still reaches the
//! application at the other end of each pipe.
//!
//! Bytes pass unchanged in both directions: unlike the official client, a lone line feed is
//! not rewritten to a carriage return (docs/protocol.md §13) and nothing of ssm-tether's own
//! is written into stdout.

use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;

use super::listener::LocalStream;

/// Largest single read of stdin (the reader task reads at most this much at once anyway).
const READ_SIZE: usize = 16 * 1024;
/// Chunks in flight between a thread and the tunnel, per direction.
const CHANNEL_CHUNKS: usize = 2;

/// The stream, and a receiver that resolves once everything handed to stdout was written
/// (or stdout failed), so that the process does not exit with output still queued.
pub(crate) fn open() -> std::io::Result<(LocalStream, oneshot::Receiver<()>)> {
    let (in_tx, in_rx) = mpsc::channel(CHANNEL_CHUNKS);
    std::thread::Builder::new()
        .name("ssm-tether-stdin".into())
        .spawn(move || read_stdin(&in_tx))?;
    let (out_tx, out_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("ssm-tether-stdout".into())
        .spawn(move || {
            write_stdout(out_rx);
            let _ = done_tx.send(());
        })?;
    let stream = LocalStream {
        read: Box::new(ChannelReader {
            rx: in_rx,
            pending: Bytes::new(),
        }),
        write: Box::new(ChannelWriter {
            tx: PollSender::new(out_tx),
        }),
    };
    Ok((stream, done_rx))
}

fn read_stdin(tx: &mpsc::Sender<Bytes>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                tracing::debug!(error = %err, "reading stdin failed");
                return;
            }
        }
    }
}

fn write_stdout(mut rx: mpsc::Receiver<Bytes>) {
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = rx.blocking_recv() {
        if stdout.write_all(&chunk).is_err() {
            return;
        }
        // stdout is line-buffered; a binary stream must not wait for a newline.
        if rx.is_empty() && stdout.flush().is_err() {
            return;
        }
    }
    let _ = stdout.flush();
}

/// Reads what the stdin thread hands over; the end of the channel is end of file.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    pending: Bytes,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pending.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(chunk) => self.pending = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Hands writes to the stdout thread; a closed channel means stdout failed.
struct ChannelWriter {
    tx: PollSender<Bytes>,
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if ready!(self.tx.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        match self.tx.send_item(Bytes::copy_from_slice(buf)) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(_) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The thread flushes whenever it has caught up.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The thread writes what it has, flushes and ends.
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

/// The process's standard error, written by a thread of its own, for what a remote command
/// writes to its standard error. Bounded: when stderr is not read, further bytes are dropped
/// and counted rather than stalling the tunnel.
#[derive(Default)]
pub(crate) struct StderrSink {
    tx: Option<mpsc::Sender<Bytes>>,
    dropped: u64,
}

impl StderrSink {
    /// Queues `data` for stderr.
    pub(crate) fn write(&mut self, data: Bytes) {
        let tx = self.tx.get_or_insert_with(|| {
            let (tx, mut rx) = mpsc::channel::<Bytes>(64);
            let spawned = std::thread::Builder::new()
                .name("ssm-tether-stderr".into())
                .spawn(move || {
                    let mut stderr = std::io::stderr();
                    while let Some(chunk) = rx.blocking_recv() {
                        if stderr
                            .write_all(&chunk)
                            .and_then(|()| stderr.flush())
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            if let Err(err) = spawned {
                tracing::warn!(error = %err, "cannot start the stderr writer");
            }
            tx
        });
        let len = data.len() as u64;
        if tx.try_send(data).is_err() {
            self.dropped += len;
            tracing::warn!(
                dropped = self.dropped,
                "standard error is not being read; the remote command's error output is dropped"
            );
        }
    }
}
