//! The admin API's command-line client: `ferry status`, `ferry failed`, `ferry targets` ask a
//! running ferry over HTTP and print a table (or the JSON with `--json`).

pub mod commands;
mod render;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::{header, Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long one admin request may take: listing reads whole state topics, which takes a
/// while on a big deployment, but a CLI must not hang forever on a stuck server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("admin URL {url:?} is not valid: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot reach the admin server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{method} {path}: no answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { method: Method, path: String },
    #[error("{method} {path}: HTTP {status}: {message}")]
    Refused {
        method: Method,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{method} {path}: the answer is not JSON: {reason}")]
    NotJson {
        method: Method,
        path: String,
        reason: String,
    },
}

/// A client of one ferry's admin server.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// `base` is like `http://127.0.0.1:9410`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let uri: Uri =
            base.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| ClientError::Url {
                    url: base.clone(),
                    reason: e.to_string(),
                })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ClientError::Url {
                url: base,
                reason: "expected http://HOST:PORT".into(),
            });
        }
        Ok(Self {
            base,
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        self.send(Method::POST, path, body).await
    }

    /// Whether the server is ready, with its readiness report (503 is an answer, not an error).
    pub async fn readiness(&self) -> Result<Value, ClientError> {
        match self.get("/readyz").await {
            Err(ClientError::Refused {
                status: 503,
                message,
                ..
            }) => serde_json::from_str(&message).map_err(|e| ClientError::NotJson {
                method: Method::GET,
                path: "/readyz".into(),
                reason: e.to_string(),
            }),
            other => other,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method.clone()).uri(&url);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let payload = match body {
            Some(b) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| ClientError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let response =
                self.http
                    .request(request)
                    .await
                    .map_err(|e| ClientError::Unreachable {
                        url: self.base.clone(),
                        reason: source_chain(&e),
                    })?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: self.base.clone(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                method: method.clone(),
                path: path.to_string(),
            })??;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or(text);
            return Err(ClientError::Refused {
                method,
                path: path.to_string(),
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::NotJson {
            method,
            path: path.to_string(),
            reason: e.to_string(),
        })
    }
}

/// An error with its causes, e.g. "client error (Connect): tcp connect error: Connection refused".
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Percent-encodes one query value or path segment.
pub fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Percent-encodes a key for the objects route, keeping its `/` separators.
pub fn encode_key(key: &str) -> String {
    key.split('/').map(encode).collect::<Vec<_>>().join("/")
}
