//! Cost of the scan feed versus the size of the source: for each size N, a source directory of
//! N files (1,000 per directory) is scanned and replicated to an fs target by one ferry on
//! the embedded queue; it prints the first pass's time, the time of a pass that finds nothing
//! new, LIST pages per pass, ferry's peak RSS over the run, the progress store's size, and
//! after a restart the time until a pass is done again.
//!
//!     cargo bench --bench scan -- [--sizes 20000,100000,200000]
//!
//! `FERRY_BENCH_BIN=path/to/ferry` measures another build the same way.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::admin::metric;
use common::{admin_port, peak_rss_mib, start_logging};

fn sizes() -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![20_000, 100_000, 200_000])
}

/// Writes `n` small files under `root`, 1,000 per directory, dated a minute ago (stable).
fn fill(root: &Path, n: usize) {
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    for i in 0..n {
        let dir = root.join(format!("d{:05}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir).expect("create a source directory");
        }
        let path = dir.join(format!("f{:04}", i % 1000));
        std::fs::write(&path, format!("object {i}\n")).expect("write a source file");
        let file = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_modified(old).expect("set mtime");
    }
}

/// Waits until `name` reaches `at_least`; returns when.
async fn reach(port: u16, name: &str, at_least: f64, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if metric(port, name).await >= at_least {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {name} ≥ {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(dir: &Path) -> String {
    format!(
        r#"
[queue]
kind = "embedded"
path = "{d}/queue"
partitions = 4

[locations.src]
kind = "fs"
path = "{d}/src"
stable_after = "1s"

[locations.dst]
kind = "fs"
path = "{d}/dst"

[[rules]]
name = "all"
source = "src"
targets = ["dst"]

[populator]
feeds = ["scan"]
scan_interval = "1s"

[admin]
listen = "127.0.0.1:0"
"#,
        d = dir.display()
    )
}

struct Row {
    n: usize,
    first_pass_s: f64,
    idle_pass_s: f64,
    pages: f64,
    pages_first: f64,
    peak_mib: f64,
    settled_mib: f64,
    store_mib: f64,
    restart_s: f64,
}

async fn measure(n: usize) -> Row {
    let dir = tempfile::Builder::new()
        .prefix("ferry-scan-bench-")
        .tempdir()
        .expect("tempdir");
    fill(&dir.path().join("src"), n);
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config(dir.path())).expect("config");
    let log = dir.path().join("ferry.log");
    let filter = "info,ferry::stages::populator=debug";
    let mut ferry = start_logging(&path, &log, filter);
    let port = admin_port(&log).await;
    let started = Instant::now();
    let timeout = Duration::from_secs(60 + n as u64 / 500);
    let first = reach(port, "ferry_scan_passes_total", 1.0, timeout).await;
    let enqueued = metric(port, "ferry_entries_enqueued_total").await;
    assert_eq!(enqueued as usize, n, "the first pass enqueues every file");
    let pages_first = metric(port, "ferry_scan_list_requests_total").await;
    reach(port, "ferry_entries_completed_total", n as f64, timeout * 4).await;
    // Two more passes that find nothing new (1 s apart), with nothing else to do.
    let passes = metric(port, "ferry_scan_passes_total").await;
    let second = reach(port, "ferry_scan_passes_total", passes + 1.0, timeout).await;
    let pages_before = metric(port, "ferry_scan_list_requests_total").await;
    let third = reach(port, "ferry_scan_passes_total", passes + 2.0, timeout).await;
    let idle = third
        .duration_since(second)
        .saturating_sub(Duration::from_secs(1));
    let pages = metric(port, "ferry_scan_list_requests_total").await - pages_before;
    let peak = peak_rss_mib(ferry.id());
    let settled = common::rss_mib(ferry.id());
    assert_eq!(
        metric(port, "ferry_entries_enqueued_total").await as usize,
        n,
        "nothing enqueued twice"
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &ferry.id().to_string()])
        .status();
    let _ = ferry.wait();
    let store = std::fs::metadata(dir.path().join("queue/scan-progress.redb"))
        .map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64);
    let restarted = Instant::now();
    let mut ferry = start_logging(&path, &log, filter);
    let port = admin_port(&log).await;
    reach(port, "ferry_scan_passes_total", 1.0, timeout).await;
    let restart_s = restarted.elapsed().as_secs_f64();
    assert_eq!(
        metric(port, "ferry_entries_enqueued_total").await,
        0.0,
        "nothing enqueued again after a restart"
    );
    let _ = ferry.kill();
    let _ = ferry.wait();
    Row {
        n,
        first_pass_s: first.duration_since(started).as_secs_f64(),
        idle_pass_s: idle.as_secs_f64(),
        pages,
        pages_first,
        peak_mib: peak,
        settled_mib: settled,
        store_mib: store,
        restart_s,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("| source files | first pass | its pages | pass, nothing new | its pages | peak RSS | RSS then | progress store | restart to a pass done |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes() {
        let r = measure(n).await;
        println!(
            "| {} | {:.1} s | {:.0} | {:.2} s | {:.0} | {:.0} MiB | {:.0} MiB | {:.1} MiB | {:.1} s |",
            r.n,
            r.first_pass_s,
            r.pages_first,
            r.idle_pass_s,
            r.pages,
            r.peak_mib,
            r.settled_mib,
            r.store_mib,
            r.restart_s
        );
    }
}
