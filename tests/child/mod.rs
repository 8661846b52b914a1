//! Child processes of the binary and the emulator's admin API, shared by the suites that
//! drive `ssm-tether` as a user does.

#![allow(dead_code, unreachable_pub)] // each suite uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use ssm_tether_e2e::ssm_tether;

/// Stops a child process (its whole process group, if it leads one) with SIGTERM when
/// dropped, so that a failing test leaves nothing behind.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
        }
    }
}

/// `ssm-tether emulator ARGS`, with its endpoint and admin URLs.
pub struct Emulator {
    /// The process.
    pub process: Process,
    /// The SSM API endpoint (`--endpoint-url`).
    pub endpoint: String,
    /// The admin API.
    pub admin: String,
}

/// Starts `ssm-tether emulator ARGS` and waits for its ready line.
pub fn emulator(args: &[&str]) -> Emulator {
    let mut child = ssm_tether()
        .arg("emulator")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the emulator starts");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the ready line");
    let ready: serde_json::Value = serde_json::from_str(&line).expect("ready JSON");
    let url = |key: &str| ready[key].as_str().expect("a URL").to_owned();
    Emulator {
        endpoint: url("endpoint_url"),
        admin: url("admin_url"),
        process: Process(child),
    }
}

/// `METHOD url` (plain HTTP on loopback), the body as JSON.
pub fn http_json(method: &str, url: &str) -> serde_json::Value {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let mut socket = std::net::TcpStream::connect(host).expect("connect");
    write!(
        socket,
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    socket.read_to_string(&mut response).expect("response");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("JSON body ({e}): {body}"))
}

/// `GET url`, the body as JSON.
pub fn get_json(url: &str) -> serde_json::Value {
    http_json("GET", url)
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    probe.local_addr().expect("addr").port()
}

/// Collects a child's output lines on a thread; `join` returns them.
pub fn collect_lines(reader: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        BufReader::new(reader)
            .lines()
            .map_while(Result::ok)
            .collect()
    })
}

/// Sends `SIG<name>` to a child (by `kill`, so that any signal name works).
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "SIG{name} sent");
}

/// A child's output lines as they come, read on a thread.
pub fn line_stream(reader: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}
