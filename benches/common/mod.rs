//! What the benchmarks that run ferry as its users do share: arguments, the process, its
//! memory and its admin port.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../tests/support/admin.rs"]
pub mod admin;

#[allow(unused_imports)]
pub use admin::get;

pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `ferry run` on `config`, its log (JSON, at `info`) to `log`. `FERRY_BENCH_BIN` runs
/// another build instead (an earlier commit's, to compare).
pub fn start(config: &Path, log: &Path) -> Child {
    start_logging(config, log, "info")
}

/// [`start`] with the log filter `filter`.
pub fn start_logging(config: &Path, log: &Path, filter: &str) -> Child {
    let bin =
        std::env::var("FERRY_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ferry").into());
    Command::new(bin)
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env("FERRY_LOG", filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start ferry")
}

/// The resident set of `pid` now, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// The peak resident set of `pid` so far, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn admin_port(log: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(port) = admin::port(&std::fs::read_to_string(log).unwrap_or_default()) {
            return port;
        }
        assert!(Instant::now() < deadline, "ferry did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
