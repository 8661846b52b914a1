//! `GET /metrics`, `GET /healthz` and `GET /readyz` over HTTP/1.1 (hyper's server).
//!
//! * `/metrics`: the Prometheus text format (0.0.4).
//! * `/healthz`: `200 ok` while the [`Heartbeat`] is fresh (the event loop runs), else `503`
//!   saying how old the last beat is. Liveness: a supervisor restarts the process on 503.
//! * `/readyz`: `200 {"ready":true}` while every tunnel forwards, else `503` with a JSON body
//!   naming the tunnels that do not and their state. Readiness: take the pod out of service,
//!   do not restart it (the tunnel is recovering on its own).
//!
//! Everything is bounded: at most [`MAX_CONNECTIONS`] connections at once (more are closed
//! at once), request heads of at most 16 KiB read within 5 s, and a connection lives at most
//! a minute. Request bodies are never read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::board::Board;
use super::heartbeat::Heartbeat;
use super::metrics::PROMETHEUS_CONTENT_TYPE;

/// Connections served at once; a scraper and two probes need three.
pub const MAX_CONNECTIONS: usize = 32;
/// Time to read a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection, keep-alive included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Read buffer of a connection (hyper's smallest allowed is 8 KiB): bounds a request head.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The bound listener of the metrics and health endpoints.
#[derive(Debug)]
pub struct HttpEndpoint {
    listener: TcpListener,
    local: SocketAddr,
}

impl HttpEndpoint {
    /// Binds `address` (port 0 picks a free port).
    ///
    /// # Errors
    /// The address is in use or not ours.
    pub async fn bind(address: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let local = listener.local_addr()?;
        Ok(Self { listener, local })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` for `board` until the task is dropped.
    pub async fn serve(self, board: Arc<Board>, heartbeat: Heartbeat) {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                // Closing is the cheapest answer; a scraper retries.
                continue;
            };
            let (board, heartbeat) = (Arc::clone(&board), heartbeat.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let answer = answer(&request, &board, &heartbeat);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .serve_connection(TokioIo::new(stream), service);
                if let Ok(Err(err)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                    tracing::debug!(error = %err, "metrics endpoint: connection failed");
                }
                drop(permit);
            });
        }
    }
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_ready: Vec<NotReady>,
}

#[derive(Serialize)]
struct NotReady {
    tunnel: String,
    state: &'static str,
}

/// The response to one request.
fn answer(
    request: &Request<Incoming>,
    board: &Board,
    heartbeat: &Heartbeat,
) -> Response<Full<Bytes>> {
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".into(),
            head,
        );
    }
    match request.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            PROMETHEUS_CONTENT_TYPE,
            board.metrics().encode_prometheus(),
            head,
        ),
        "/healthz" => {
            let age = heartbeat.age();
            if heartbeat.is_fresh() {
                reply(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    "ok\n".into(),
                    head,
                )
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!(
                        "stale: the event loop's last heartbeat was {:.1}s ago\n",
                        age.as_secs_f64()
                    ),
                    head,
                )
            }
        }
        "/readyz" => {
            let not_ready: Vec<NotReady> = board
                .not_ready()
                .into_iter()
                .map(|(tunnel, state)| NotReady {
                    tunnel,
                    state: state.name(),
                })
                .collect();
            let status = if not_ready.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = Readiness {
                ready: not_ready.is_empty(),
                not_ready,
            };
            let mut json = serde_json::to_string(&body).unwrap_or_default();
            json.push('\n');
            reply(status, "application/json", json, head)
        }
        "/" => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ssm-tether: /metrics /healthz /readyz\n".into(),
            head,
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: /metrics /healthz /readyz\n".into(),
            head,
        ),
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: String,
    head: bool,
) -> Response<Full<Bytes>> {
    let length = body.len();
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}
