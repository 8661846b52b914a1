//! The control protocol, whatever carries it: one request per connection, one line of JSON
//! each way.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::super::board::{Board, StatusReport};

/// Longest request line, newline included.
pub const MAX_REQUEST: usize = 4 * 1024;
/// Longest response line a client reads.
pub const MAX_RESPONSE: usize = 16 << 20;
/// Connections served at once; more are closed at once.
pub const MAX_CLIENTS: usize = 8;
/// The protocol's version, in every response.
pub const PROTOCOL: u32 = 1;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a reload may take: every plugin of the policy is loaded (each compile is bounded at
/// 60 s, one after another).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Time to write a response to a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request: one line of JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Everything `ssm-tether status` shows.
    Status,
    /// Reload every tunnel's plugins, as SIGHUP does.
    Reload,
}

/// A response: one line of JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// [`PROTOCOL`].
    #[serde(default)]
    pub protocol: u32,
    /// Whether the request was carried out (a failed reload is `ok: false`).
    pub ok: bool,
    /// The answer to `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReport>,
    /// The answer to `reload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadReport>,
    /// Why the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    fn error(message: impl Into<String>) -> Self {
        Self {
            protocol: PROTOCOL,
            ok: false,
            status: None,
            reload: None,
            error: Some(message.into()),
        }
    }
}

/// The outcome of a reload, as `run` logs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Whether the new plugins replaced the running ones.
    pub reloaded: bool,
    /// Tunnels that got a new plugin set.
    pub tunnels: usize,
    /// The outcome in words: `plugins reloaded (N tunnel(s))`, or `reload failed; the running
    /// plugins stay: WHY`.
    pub message: String,
}

/// A reload asked for through the control endpoint; whoever owns the reloader answers.
#[derive(Debug)]
pub struct ReloadRequest {
    /// Where the outcome goes.
    pub answer: oneshot::Sender<ReloadReport>,
}

/// What answers the connections a transport accepts: `status` from the board, `reload` by
/// asking through the channel; at most [`MAX_CLIENTS`] at once.
pub(super) struct Service {
    board: Arc<Board>,
    reloads: mpsc::Sender<ReloadRequest>,
    permits: Arc<Semaphore>,
}

impl Service {
    pub(super) fn new(board: Arc<Board>, reloads: mpsc::Sender<ReloadRequest>) -> Self {
        Self {
            board,
            reloads,
            permits: Arc::new(Semaphore::new(MAX_CLIENTS)),
        }
    }

    /// Answers `stream` on a task of its own; closes it at once when [`MAX_CLIENTS`] are
    /// being served.
    pub(super) fn spawn<S>(&self, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return;
        };
        let (board, reloads) = (Arc::clone(&self.board), self.reloads.clone());
        tokio::spawn(async move {
            answer(&mut stream, &board, &reloads).await;
            drop(permit);
        });
    }

    /// Answers `stream` on this task (for a transport that must keep the stream).
    #[cfg(windows)]
    pub(super) async fn answer_here<S>(&self, stream: &mut S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        answer(stream, &self.board, &self.reloads).await;
    }
}

/// Reads one request, answers it, ends the writing side.
async fn answer<S>(stream: &mut S, board: &Board, reloads: &mpsc::Sender<ReloadRequest>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = tokio::time::timeout(REQUEST_TIMEOUT, read_line(&mut *stream, MAX_REQUEST));
    let response = match request.await {
        Err(_) => Response::error("no request within 5 s"),
        Ok(Err(why)) => Response::error(why),
        Ok(Ok(line)) => match serde_json::from_slice::<Request>(&line) {
            Err(err) => Response::error(format!(
                "not a request ({err}); expected {{\"command\":\"status\"}} or \
                 {{\"command\":\"reload\"}}"
            )),
            Ok(Request::Status) => Response {
                protocol: PROTOCOL,
                ok: true,
                status: Some(board.report()),
                reload: None,
                error: None,
            },
            Ok(Request::Reload) => reload(reloads).await,
        },
    };
    let mut line = serde_json::to_vec(&response).unwrap_or_default();
    line.push(b'\n');
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!("control endpoint: the client did not take its answer");
    }
}

async fn reload(reloads: &mpsc::Sender<ReloadRequest>) -> Response {
    let (answer, outcome) = oneshot::channel();
    if reloads.send(ReloadRequest { answer }).await.is_err() {
        return Response::error("reloading is not possible now (shutting down)");
    }
    match tokio::time::timeout(RELOAD_TIMEOUT, outcome).await {
        Ok(Ok(report)) => Response {
            protocol: PROTOCOL,
            ok: report.reloaded,
            status: None,
            reload: Some(report),
            error: None,
        },
        Ok(Err(_)) => Response::error("the reload was abandoned (shutting down)"),
        Err(_) => Response::error("the reload did not finish in time"),
    }
}

/// The client's side: sends `request` on a connected `stream` and reads the response,
/// waiting at most `timeout` for it. The error says what failed.
pub(super) async fn ask<S>(
    stream: &mut S,
    request: Request,
    timeout: Duration,
) -> Result<Response, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut line = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let exchanged = tokio::time::timeout(timeout, async {
        stream
            .write_all(&line)
            .await
            .map_err(|e| format!("write failed: {e}"))?;
        read_line(&mut *stream, MAX_RESPONSE).await
    })
    .await;
    let answer = match exchanged {
        Ok(Ok(answer)) => answer,
        Ok(Err(why)) => return Err(why),
        Err(_) => return Err(format!("no answer within {timeout:?}")),
    };
    serde_json::from_slice(&answer).map_err(|e| format!("not a response: {e}"))
}

/// One line of at most `max` bytes (newline included), without the newline.
async fn read_line(read: impl AsyncRead + Unpin, max: usize) -> Result<Vec<u8>, String> {
    let limit = u64::try_from(max).unwrap_or(u64::MAX);
    let mut reader = tokio::io::BufReader::new(read.take(limit));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("read failed: {e}"))?;
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(line);
    }
    if line.len() >= max {
        return Err(format!("line longer than {max} bytes"));
    }
    // The peer ended its side after a last line without a newline: take it.
    if line.is_empty() {
        Err("no request".to_owned())
    } else {
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_small_json_object() {
        assert_eq!(
            serde_json::to_string(&Request::Status).expect("json"),
            r#"{"command":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"reload"}"#).expect("parses"),
            Request::Reload
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"rm -rf"}"#).is_err());
    }

    #[tokio::test]
    async fn a_line_longer_than_the_bound_is_refused() {
        let long = vec![b'x'; MAX_REQUEST + 10];
        let result = read_line(&long[..], MAX_REQUEST).await;
        assert!(result.is_err(), "{result:?}");
        let ok = read_line(&b"{\"command\":\"status\"}\nrest"[..], MAX_REQUEST).await;
        assert_eq!(ok.expect("a line"), b"{\"command\":\"status\"}");
    }
}
