//! The two halves of an accepted socket: a writer task draining the socket's queue, and the
//! reader loop that feeds the relay (and, by reading, answers pings).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::OtherSide;
use super::forward::{Reorder, deliver, forward};
use crate::events::Side;
use crate::service::Service;
use crate::sessions::{Outbound, Peer, Session};

/// How long a socket we closed may take to finish the close handshake.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Writes queued frames; stops after a close. Flushes only when the queue is empty so a burst
/// costs one write syscall, not one per frame.
pub(super) async fn writer(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    peer: Peer,
) {
    while let Some(out) = rx.recv().await {
        let result = match out {
            Outbound::Frame(frame) => {
                if peer.is_black_holed() {
                    continue;
                }
                match sink.feed(Message::Binary(frame)).await {
                    Ok(()) if rx.is_empty() => sink.flush().await,
                    other => other,
                }
            }
            Outbound::Abort => {
                peer.kill.notify_one();
                return;
            }
            Outbound::Close(code, reason) => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
                tokio::time::sleep(CLOSE_LINGER).await;
                peer.kill.notify_one();
                return;
            }
        };
        if result.is_err() {
            peer.kill.notify_one();
            return;
        }
    }
}

/// Reads frames until the socket ends; returns a description of why.
pub(super) async fn reader(
    service: &Service,
    session: &Session,
    side: Side,
    peer: &Peer,
    stream: &mut SplitStream<WebSocket>,
    reorder: &mut Reorder,
) -> String {
    let mut close_reason = None;
    loop {
        if peer.is_black_holed() {
            // Not reading also means no pongs: the peer sees a silent, open connection.
            tokio::select! {
                _ = peer.kill.notified() => return "killed while black-holed".to_owned(),
                _ = peer.wake.notified() => continue,
            }
        }
        let hold_deadline = reorder.held.as_ref().map(|(_, at)| *at);
        tokio::select! {
            biased;
            _ = peer.kill.notified() => {
                return close_reason.unwrap_or_else(|| "closed by the service".to_owned());
            }
            _ = peer.wake.notified() => {}
            _ = sleep_until(hold_deadline) => {
                if let Some((frame, _)) = reorder.held.take() {
                    deliver(service, session, side.other(), frame).await;
                }
            }
            message = stream.next() => match message {
                Some(Ok(Message::Binary(frame))) => {
                    forward(service, session, side, frame, reorder).await;
                }
                Some(Ok(Message::Close(frame))) => {
                    close_reason = Some(match frame {
                        Some(f) => format!("peer sent close {} {}", f.code, f.reason),
                        None => "peer sent close".to_owned(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return format!("read error: {err}"),
                None => return close_reason.unwrap_or_else(|| "connection ended".to_owned()),
            },
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
