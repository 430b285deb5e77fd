//! A fault-injecting HTTP/1.1 proxy for S3 traffic on loopback: passes requests through to an
//! upstream server, or answers them with 503 SlowDown, or flips a byte of request bodies
//! (uploads) or of object GET response bodies (downloads), or holds uploads on the wire, as
//! the test switches it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Pass everything through.
    None = 0,
    /// Answer every request with 503 SlowDown, without contacting the upstream.
    SlowDown = 1,
    /// Flip the first byte of every request body (PUT data, uploaded parts); only of requests
    /// to paths containing the [`FaultProxy::only_paths_with`] text when one is set.
    FlipUploads = 2,
    /// Flip the first byte of every object GET response body.
    FlipDownloads = 3,
    /// Answer 503 SlowDown to requests whose path contains the text set with
    /// [`FaultProxy::only_paths_with`]; pass the others.
    SlowDownSome = 4,
    /// Take uploads (PUT requests) to paths containing the [`FaultProxy::only_paths_with`]
    /// text in whole, and hold them — neither forwarded nor answered — until the fault is
    /// switched off; then forward them. A request on the wire when its sender froze.
    HoldSome = 5,
}

/// A running proxy; dropped, it stops accepting.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, to use as an S3 endpoint.
    pub endpoint: String,
    fault: Arc<AtomicU8>,
    /// The path text `SlowDownSome` refuses.
    filter: Arc<std::sync::Mutex<String>>,
    /// Requests seen, and requests the fault touched.
    pub requests: Arc<AtomicU64>,
    pub faulted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let fault = Arc::new(AtomicU8::new(Fault::None as u8));
        let requests = Arc::new(AtomicU64::new(0));
        let faulted = Arc::new(AtomicU64::new(0));
        let filter = Arc::new(std::sync::Mutex::new(String::new()));
        let task = tokio::spawn({
            let state = (
                fault.clone(),
                filter.clone(),
                requests.clone(),
                faulted.clone(),
            );
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let (fault, filter, requests, faulted) = state.clone();
                    tokio::spawn(async move {
                        let _ =
                            serve(client, &upstream, &fault, &filter, &requests, &faulted).await;
                    });
                }
            }
        });
        Self {
            endpoint,
            fault,
            filter,
            requests,
            faulted,
            task,
        }
    }

    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Sets the path text that [`Fault::SlowDownSome`] refuses (URL-encoded, as sent).
    pub fn only_paths_with(&self, text: &str) {
        *self.filter.lock().unwrap_or_else(|p| p.into_inner()) = text.to_string();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One parsed message head.
struct Head {
    raw: Vec<u8>,
    first_line: String,
    content_length: Option<u64>,
    chunked: bool,
}

async fn read_head<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> std::io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        if r.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        raw.push(byte[0]);
        if raw.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let mut lines = text.split("\r\n");
    let first_line = lines.next().unwrap_or_default().to_string();
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    Ok(Some(Head {
        raw,
        first_line,
        content_length,
        chunked,
    }))
}

/// Copies a body of `length` bytes, flipping its first byte if `flip`.
async fn relay_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut BufReader<R>,
    to: &mut W,
    length: u64,
    mut flip: bool,
) -> std::io::Result<()> {
    let mut left = length;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = from.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if flip {
            buf[0] ^= 0x01;
            flip = false;
        }
        to.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// Copies a chunked body as it is (chunk sizes, data, trailer).
async fn relay_chunked<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut BufReader<R>,
    to: &mut W,
) -> std::io::Result<()> {
    loop {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            let mut byte = [0u8; 1];
            if from.read(&mut byte).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            line.push(byte[0]);
        }
        to.write_all(&line).await?;
        let size_text = String::from_utf8_lossy(&line);
        let size =
            u64::from_str_radix(size_text.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        relay_body(from, to, size + 2, false).await?;
        if size == 0 {
            return Ok(());
        }
    }
}

async fn serve(
    client: TcpStream,
    upstream: &str,
    fault: &AtomicU8,
    filter: &std::sync::Mutex<String>,
    requests: &AtomicU64,
    faulted: &AtomicU64,
) -> std::io::Result<()> {
    let (client_read, mut client_write) = client.into_split();
    let mut client_read = BufReader::new(client_read);
    let mut server: Option<(
        BufReader<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    )> = None;
    while let Some(request) = read_head(&mut client_read).await? {
        requests.fetch_add(1, Ordering::Relaxed);
        let mode = fault.load(Ordering::SeqCst);
        let body = request.content_length.unwrap_or(0);
        // The filter, when set, names the paths the *Some faults (and FlipUploads) touch.
        let text = filter.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let filtered = !text.is_empty() && request.first_line.contains(&text);
        let refused_path = mode == Fault::SlowDownSome as u8 && filtered;
        if mode == Fault::SlowDown as u8 || refused_path {
            faulted.fetch_add(1, Ordering::Relaxed);
            relay_body(&mut client_read, &mut tokio::io::sink(), body, false).await?;
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>injected by the test proxy</Message></Error>";
            let response = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: proxy\r\n\r\n{xml}",
                xml.len()
            );
            client_write.write_all(response.as_bytes()).await?;
            continue;
        }
        if server.is_none() {
            let stream = TcpStream::connect(upstream).await?;
            let (r, w) = stream.into_split();
            server = Some((BufReader::new(r), w));
        }
        let Some((server_read, server_write)) = server.as_mut() else {
            return Ok(());
        };
        let method = request
            .first_line
            .split(' ')
            .next()
            .unwrap_or("")
            .to_string();
        let path = request
            .first_line
            .split(' ')
            .nth(1)
            .unwrap_or("")
            .to_string();
        let flip_up = mode == Fault::FlipUploads as u8 && body > 0 && (text.is_empty() || filtered);
        if flip_up {
            faulted.fetch_add(1, Ordering::Relaxed);
        }
        let held = mode == Fault::HoldSome as u8 && method == "PUT" && filtered;
        if held {
            let mut data = Vec::new();
            relay_body(&mut client_read, &mut data, body, false).await?;
            faulted.fetch_add(1, Ordering::Relaxed);
            while fault.load(Ordering::SeqCst) == Fault::HoldSome as u8 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            server_write.write_all(&request.raw).await?;
            server_write.write_all(&data).await?;
        } else {
            server_write.write_all(&request.raw).await?;
            relay_body(&mut client_read, server_write, body, flip_up).await?;
        }

        let Some(response) = read_head(server_read).await? else {
            return Ok(());
        };
        let status: u16 = response
            .first_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (resource, query) = path.split_once('?').unwrap_or((&path, ""));
        let has_key = resource
            .trim_start_matches('/')
            .split_once('/')
            .is_some_and(|(_, key)| !key.is_empty());
        let object_get = method == "GET" && has_key && !query.contains("tagging");
        let no_body = method == "HEAD" || status == 204 || status == 304;
        let length = if no_body {
            0
        } else {
            response.content_length.unwrap_or(0)
        };
        let flip_down =
            mode == Fault::FlipDownloads as u8 && object_get && status == 200 && length > 0;
        if flip_down {
            faulted.fetch_add(1, Ordering::Relaxed);
        }
        client_write.write_all(&response.raw).await?;
        if response.chunked && !no_body {
            relay_chunked(server_read, &mut client_write).await?;
        } else {
            relay_body(server_read, &mut client_write, length, flip_down).await?;
        }
    }
    Ok(())
}
