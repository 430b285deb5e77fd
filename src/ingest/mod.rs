//! The ingest endpoint: the transient source's front door. Clients write with any S3 client
//! (SigV4 with the configured key); each object is stored in the transient location and its
//! replication entry enqueued before the client's request returns, so it is replicated at
//! once instead of at the next scan. Operations outside the served subset get S3's
//! `NotImplemented` error.

mod listing;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use s3s::auth::{S3Auth, SecretKey};
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use service::{Ingest, IngestStats, MAX_BODY};

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
    let mut builder = S3ServiceBuilder::new(ingest);
    builder.set_auth(OneKey {
        access_key_id: config.credentials.access_key_id.clone(),
        secret: SecretKey::from(config.credentials.secret_access_key.clone()),
    });
    let service = builder.build();
    let connections = TaskTracker::new();
    let address: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(listen = ?address, "ingest endpoint ready");
    loop {
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
        let service = service.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = outcome {
                tracing::debug!(%peer, error = %e, "ingest connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
    tracing::info!(
        objects = stats.objects.load(std::sync::atomic::Ordering::Relaxed),
        bytes = stats.bytes.load(std::sync::atomic::Ordering::Relaxed),
        refused = stats.refused.load(std::sync::atomic::Ordering::Relaxed),
        "ingest endpoint stopped"
    );
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
