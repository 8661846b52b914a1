//! A destination to point sessions at: a TCP echo server on loopback. The demo, the
//! benchmarks and the tests all need one; the agent model dials it like any real target.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpListener;

/// Starts a TCP echo server on `127.0.0.1` (a free port) and returns its address. Each
/// connection gets back every byte it sends until it closes; the server runs until the tokio
/// runtime ends.
///
/// # Errors
/// The listener cannot be bound.
pub async fn echo_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    Ok(addr)
}
