//! Talking to a test ferry's admin server: its port from the log, raw GETs, and the `ferry`
//! command-line client run as a process.

use std::io::{Read, Write};
use std::process::Command;

/// The admin server's port, from its start-up log line.
pub fn port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("admin server ready"))?;
    let at = line.find("127.0.0.1:")? + "127.0.0.1:".len();
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// `GET path` on the admin server: (status code, body).
pub async fn get(port: u16, path: &str) -> (u16, String) {
    request(port, "GET", path, &[]).await
}

/// `METHOD path` with extra `headers` on the admin server: (status code, body).
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let host = if extra.to_ascii_lowercase().contains("host:") {
        String::new()
    } else {
        "Host: 127.0.0.1\r\n".to_string()
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\n{host}{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.write_all(request.as_bytes()).expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
    .await
    .expect("joined")
}

/// `GET path` answered 200 with JSON: the JSON.
pub async fn get_json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = get(port, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// What one run of the `ferry` CLI did.
pub struct Cli {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `ferry ARGS…` against the admin server on `port`.
pub async fn cli(port: u16, args: &[&str]) -> Cli {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(&args)
            .env("FERRY_ADMIN", format!("http://127.0.0.1:{port}"))
            .env_remove("FERRY_ADMIN_TOKEN")
            .output()
            .expect("run the ferry CLI");
        Cli {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("joined")
}

/// Runs `ferry ARGS…` and expects it to succeed: its output.
pub async fn cli_ok(port: u16, args: &[&str]) -> String {
    let run = cli(port, args).await;
    assert_eq!(
        run.code,
        Some(0),
        "ferry {args:?} failed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    run.stdout
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    ferry::client::encode(value)
}

/// A counter or gauge from `/metrics` (0 until it appears).
pub async fn metric(port: u16, name: &str) -> f64 {
    let (_, body) = get(port, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
