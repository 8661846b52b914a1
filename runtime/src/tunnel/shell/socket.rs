//! Data-channel WebSockets: a reader task and a writer task per socket, so that a socket
//! whose peer stops reading (a black hole) never blocks the tunnel: the core sees its
//! writes stop making progress and treats it as dead.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::Input;
use crate::transport::connect::DataSocket;
use crate::tunnel::core::{OutFrame, PING_PAYLOAD, SocketClose, SocketId};

/// How long a graceful close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

enum WriterCommand {
    Frames(Vec<OutFrame>),
    Close,
}

/// The shell's handle on one socket.
pub(super) struct Socket {
    writer: mpsc::UnboundedSender<WriterCommand>,
    reader: JoinHandle<()>,
    writer_task: JoinHandle<()>,
}

impl Socket {
    /// Starts the tasks of an open socket.
    pub(super) fn spawn(
        id: SocketId,
        socket: DataSocket,
        data: mpsc::Sender<Input>,
        control: mpsc::UnboundedSender<Input>,
    ) -> Self {
        let (sink, stream) = socket.split();
        let reader = tokio::spawn(read_loop(id, stream, data));
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_task = tokio::spawn(write_loop(id, sink, rx, control));
        Self {
            writer: tx,
            reader,
            writer_task,
        }
    }

    /// Queues frames; the core bounds how many bytes are queued.
    pub(super) fn send(&self, frames: Vec<OutFrame>) {
        let _ = self.writer.send(WriterCommand::Frames(frames));
    }

    /// Closes the socket: after what is queued and with a close frame, or at once.
    pub(super) fn close(self, graceful: bool) {
        self.reader.abort();
        if graceful {
            let _ = self.writer.send(WriterCommand::Close);
        } else {
            self.writer_task.abort();
        }
    }
}

async fn read_loop(id: SocketId, mut stream: SplitStream<DataSocket>, data: mpsc::Sender<Input>) {
    let close = loop {
        let input = match stream.next().await {
            Some(Ok(Message::Binary(frame))) => Input::Frame(id, frame),
            Some(Ok(
                Message::Ping(_) | Message::Pong(_) | Message::Text(_) | Message::Frame(_),
            )) => Input::SocketActivity(id),
            Some(Ok(Message::Close(frame))) => {
                break match frame {
                    Some(frame) => SocketClose::Closed {
                        code: u16::from(frame.code),
                        reason: frame.reason.to_string(),
                    },
                    None => SocketClose::ClosedWithoutCode,
                };
            }
            // The limits of `transport::connect::socket_config`: the peer breaks the protocol,
            // so this socket goes (the session is resumed on a new one).
            Some(Err(tungstenite::Error::Capacity(err))) => {
                break SocketClose::Failed(format!("oversized message from the service: {err}"));
            }
            Some(Err(err)) => break SocketClose::Failed(err.to_string()),
            None => break SocketClose::Ended,
        };
        // A full channel is backpressure on a flooding peer: this socket is read no faster
        // than the tunnel handles its frames.
        if data.send(input).await.is_err() {
            return;
        }
    };
    let _ = data.send(Input::SocketClosed(id, close)).await;
}

async fn write_loop(
    id: SocketId,
    mut sink: SplitSink<DataSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<WriterCommand>,
    control: mpsc::UnboundedSender<Input>,
) {
    while let Some(command) = rx.recv().await {
        let mut frames = match command {
            WriterCommand::Frames(frames) => frames,
            WriterCommand::Close => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    let _ = sink
                        .send(Message::Close(Some(
                            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                                code: CloseCode::Normal,
                                reason: "".into(),
                            },
                        )))
                        .await;
                    let _ = sink.close().await;
                })
                .await;
                return;
            }
        };
        // Everything already queued goes out with one flush.
        let mut close_after = false;
        while let Ok(more) = rx.try_recv() {
            match more {
                WriterCommand::Frames(more) => frames.extend(more),
                WriterCommand::Close => {
                    close_after = true;
                    break;
                }
            }
        }
        let mut bytes = 0;
        let written = async {
            for frame in frames {
                bytes += frame.len();
                let message = match frame {
                    OutFrame::Binary(frame) => Message::Binary(frame),
                    OutFrame::Ping => Message::Ping(Bytes::from_static(PING_PAYLOAD)),
                };
                sink.feed(message).await?;
            }
            sink.flush().await
        }
        .await;
        match written {
            Ok(()) => {
                let _ = control.send(Input::SocketFlushed(id, bytes));
            }
            Err(err) => {
                let _ = control.send(Input::SocketClosed(
                    id,
                    SocketClose::Failed(err.to_string()),
                ));
                return;
            }
        }
        if close_after {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
            return;
        }
    }
}
