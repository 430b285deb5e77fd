//! The ingest endpoint: the transient source's front door. Clients write with any S3 client
//! (SigV4 with the configured key); each object is stored in the transient location and its
//! replication entry enqueued before the client's request returns, so it is replicated at
//! once instead of at the next scan. Operations outside the served subset get S3's
//! `NotImplemented` error.

mod body;
mod checksum;
mod gate;
mod listing;
mod service;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::auth::{S3Auth, SecretKey};
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use service::{Ingest, IngestStats, BODY_UNIT, MAX_BODY, MAX_OBJECT};
pub use tls::server_config;

use crate::config::IngestConfig;

/// Binds the listening socket (at start, so a taken port stops ferry with a clear error).
pub async fn bind(config: &IngestConfig) -> Result<TcpListener, String> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("ingest endpoint cannot listen on {}: {e}", config.listen))
}

/// Serves S3 requests on `listener` until `shutdown`; then stops accepting and lets open
/// requests finish (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    config: &IngestConfig,
    ingest: Ingest,
    shutdown: CancellationToken,
) {
    let stats = ingest.stats.clone();
    let commits = ingest.commits.clone();
    let mut builder = S3ServiceBuilder::new(ingest);
    builder.set_auth(OneKey {
        access_key_id: config.credentials.access_key_id.clone(),
        secret: SecretKey::from(config.credentials.secret_access_key.clone()),
    });
    let service = gate::Gate {
        inner: builder.build(),
        region: config.region.clone(),
    };
    let connections = TaskTracker::new();
    let address: Option<SocketAddr> = listener.local_addr().ok();
    // A permit per open connection: at the cap, new clients wait in the listen backlog.
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut http = Builder::new();
    // Without a timer hyper never fires its header timeout; with one, a client that sends no
    // (complete) request headers within it — also between keep-alive requests — is dropped.
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    tracing::info!(listen = ?address, max_connections = config.max_connections, tls = tls.is_some(), "ingest endpoint ready");
    loop {
        let Some(slot) = next_slot(&slots, &shutdown, config.max_connections).await else {
            break;
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "ingest endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (service, shutdown, http) = (service.clone(), shutdown.clone(), http.clone());
        let (tls, handshake_within) = (tls.clone(), config.header_timeout);
        connections.spawn(async move {
            let _slot = slot;
            let outcome = match tls {
                None => drive(&http, stream, service, &shutdown).await,
                Some(tls) => {
                    match tokio::time::timeout(handshake_within, tls.accept(stream)).await {
                        Ok(Ok(stream)) => drive(&http, stream, service, &shutdown).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "ingest TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "no TLS handshake within ingest.header_timeout");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = outcome {
                tracing::debug!(%peer, error = %e, "ingest connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
    // Commits of clients that hung up run on: stored objects get their entries.
    commits.close();
    commits.wait().await;
    tracing::info!(
        objects = stats.objects.load(std::sync::atomic::Ordering::Relaxed),
        bytes = stats.bytes.load(std::sync::atomic::Ordering::Relaxed),
        refused = stats.refused.load(std::sync::atomic::Ordering::Relaxed),
        "ingest endpoint stopped"
    );
}

/// Serves one connection's requests until it ends; on shutdown, lets the request under way
/// finish and closes.
async fn drive<I>(
    http: &Builder,
    io: I,
    service: gate::Gate,
    shutdown: &CancellationToken,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        outcome = connection.as_mut() => outcome,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// A connection slot, waiting (with a warning) while all `max` are taken; `None` on shutdown.
async fn next_slot(
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    max: usize,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    tracing::warn!(
        max_connections = max,
        "ingest endpoint: every connection slot is taken; new clients wait (ingest.max_connections)"
    );
    tokio::select! {
        _ = shutdown.cancelled() => None,
        slot = slots.clone().acquire_owned() => slot.ok(),
    }
}

/// The one key pair clients sign with; any other key is refused as S3 does.
struct OneKey {
    access_key_id: String,
    secret: SecretKey,
}

#[async_trait::async_trait]
impl S3Auth for OneKey {
    async fn get_secret_key(&self, access_key: &str) -> s3s::S3Result<SecretKey> {
        if access_key == self.access_key_id {
            Ok(self.secret.clone())
        } else {
            Err(s3s::s3_error!(
                InvalidAccessKeyId,
                "the access key id you provided does not exist in this endpoint's configuration"
            ))
        }
    }
}

/// Shared counters handle.
pub type SharedStats = Arc<IngestStats>;
