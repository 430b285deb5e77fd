//! TLS for the ingest endpoint (`ingest.tls_cert`, `ingest.tls_key`): PEM files read when the
//! configuration is validated, served by rustls with its safe defaults (TLS 1.2 and 1.3).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// The server side of TLS from a PEM certificate chain and its private key; the error names
/// the file and what is wrong with it.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let unreadable = |path: &Path, e: &dyn std::fmt::Display| {
        format!("cannot read {} as PEM: {e}", path.display())
    };
    let (cert_pem, key_pem) = (pem_file(cert)?, pem_file(key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(cert, &e))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{} holds no PEM private key", key.display())
        }
        e => unreadable(key, &e),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable certificate: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Largest PEM file taken: a certificate chain is a few KiB.
const MAX_PEM: u64 = 1 << 20;

/// The bytes of the PEM file at `path`: a regular file (never a FIFO or a device, which would
/// block or never end) of at most [`MAX_PEM`] bytes.
fn pem_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |why: String| format!("cannot read {}: {why}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| refuse(e.to_string()))?;
    let meta = file.metadata().map_err(|e| refuse(e.to_string()))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.len() > MAX_PEM {
        return Err(refuse(format!(
            "{} bytes; a PEM certificate or key is at most {MAX_PEM}",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM)
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(e.to_string()))?;
    Ok(bytes)
}
