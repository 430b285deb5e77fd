//! `[ingest]`: the endpoint's address, its buffer, the key clients sign with, and what bounds
//! its connections.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{duration, positive};
use crate::config::raw::RawIngest;
use crate::config::{ConfigError, IngestConfig, LocationConfig, StaticCredentials};

/// Open connections the endpoint serves at once by default; more wait in the listen backlog.
/// Each holds a socket and, while it writes, up to one body buffer.
const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Request bodies held in memory at once by default: eight of the largest.
const DEFAULT_BODY_MEMORY: u64 = 512 << 20;

/// Bytes of parts staged in open multipart uploads by default (an fs buffer): room for a
/// few large uploads at once, not for a client that never completes its uploads.
const DEFAULT_MAX_STAGED: u64 = 100 << 30;

/// `[ingest]`: where it listens, which location it writes to, and the key clients sign with.
pub(super) fn ingest(
    raw: &RawIngest,
    locations: &BTreeMap<String, LocationConfig>,
) -> Result<IngestConfig, ConfigError> {
    let listen = raw.listen.parse().map_err(|_| {
        ConfigError::invalid(
            "ingest.listen",
            format!(
                "{:?} is not an address:port (e.g. \"127.0.0.1:9000\")",
                raw.listen
            ),
        )
    })?;
    let Some(location) = locations.get(&raw.location) else {
        return Err(ConfigError::invalid(
            "ingest.location",
            format!("no location named {:?}", raw.location),
        ));
    };
    if !location.transient {
        return Err(ConfigError::invalid(
            "ingest.location",
            format!(
                "{:?} is not transient: the ingest endpoint writes into a transient buffer that \
                 ferry empties once every target holds the data",
                raw.location
            ),
        ));
    }
    let credentials = match (&raw.access_key_id, &raw.secret_access_key) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => StaticCredentials {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
        },
        _ => {
            return Err(ConfigError::invalid(
                "ingest.access_key_id",
                "access_key_id and secret_access_key are required: clients sign their requests with them",
            ))
        }
    };
    let tls =
        match (&raw.tls_cert, &raw.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(
                crate::stages::populator::ingest::server_config(cert.as_ref(), key.as_ref())
                    .map_err(|e| ConfigError::invalid("ingest.tls_cert", e))?,
            ),
            _ => return Err(ConfigError::invalid(
                "ingest.tls_cert",
                "tls_cert and tls_key go together: the certificate chain and its private key, PEM",
            )),
        };
    let body_memory = super::size(
        "ingest.body_memory",
        raw.body_memory.as_ref(),
        DEFAULT_BODY_MEMORY,
    )?;
    if body_memory < crate::stages::populator::ingest::MAX_BODY as u64 {
        return Err(ConfigError::invalid(
            "ingest.body_memory",
            format!(
                "{body_memory} bytes cannot hold one body of the largest size taken ({} MiB)",
                crate::stages::populator::ingest::MAX_BODY >> 20
            ),
        ));
    }
    let max_staged = super::size(
        "ingest.max_staged",
        raw.max_staged.as_ref(),
        DEFAULT_MAX_STAGED,
    )?;
    if max_staged < crate::stages::populator::ingest::MAX_BODY as u64 {
        return Err(ConfigError::invalid(
            "ingest.max_staged",
            format!(
                "{max_staged} bytes cannot hold one part of the largest size taken ({} MiB)",
                crate::stages::populator::ingest::MAX_BODY >> 20
            ),
        ));
    }
    Ok(IngestConfig {
        tls,
        body_memory,
        max_staged,
        listen,
        location: raw.location.clone(),
        credentials,
        region: raw.region.clone().unwrap_or_else(|| "us-east-1".into()),
        max_connections: positive(
            "ingest.max_connections",
            raw.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            1_000_000,
        )?,
        header_timeout: nonzero(
            "ingest.header_timeout",
            duration(
                "ingest.header_timeout",
                raw.header_timeout.as_deref(),
                "30s",
            )?,
        )?,
    })
}

/// A timeout of zero would close every connection at once.
fn nonzero(key: &str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        Err(ConfigError::invalid(key, "must be longer than 0s"))
    } else {
        Ok(value)
    }
}
