//! `Wire`: GetObject and PutObject as one signed HTTP request each, past the SDK's orchestrator.
//!
//! For a 16 KiB object the SDK's per-request machinery (interceptors, type-erased config
//! bags, endpoint resolution per call, response deserialisers) cost more of ferry's CPU than
//! the copy (docs/design.md, "The SDK's share of a small copy"). The two requests that carry
//! object data are built here instead, from the SDK's own parts: the endpoint is resolved once
//! per bucket by the SDK's S3 resolver, each request is signed by its SigV4 signer and sent by
//! its HTTP connector (the same TLS, connection pool and timeouts). Every other request stays
//! on the SDK, and so does any bucket whose endpoint asks for something other than plain SigV4.
//! Unlike the SDK, this path does not correct its signing time for a skewed clock: a host more
//! than 15 minutes off gets `RequestTimeTooSkewed` (a configuration error) until its clock is
//! right.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat, SdkBody};
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::http::Headers;
use aws_smithy_types::Document;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::kind_for;
use crate::storage::{unquote, ErrorCode, ErrorKind, ObjectHead, ObjectMeta, Written};

/// Credentials this close to their expiry are fetched again before the next request.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// The most of an error response's body read for its code and message.
const ERROR_BODY_MAX: usize = 64 << 10;
/// RFC 3986 unreserved characters; everything else in a query value is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// An object key keeps its `/` (S3 encodes keys as a greedy path label).
const KEY_PATH: &AsciiSet = &QUERY_VALUE.remove(b'/');

/// Why a request failed: the kind the caller branches on and what the server (or the
/// connection) said.
pub struct Failure {
    pub kind: ErrorKind,
    /// The error code of the server's answer, where callers act on it.
    pub code: Option<ErrorCode>,
    pub message: String,
}

impl From<(ErrorKind, String)> for Failure {
    fn from((kind, message): (ErrorKind, String)) -> Self {
        Self {
            kind,
            code: None,
            message,
        }
    }
}

/// Signed GET and PUT of one bucket's objects.
pub struct Wire {
    /// The bucket's URL as the SDK's resolver gives it (path-style or virtual-hosted), no
    /// trailing `/`.
    base: String,
    signing_region: String,
    provider: SharedCredentialsProvider,
    /// The last credentials fetched, reused until [`REFRESH_BEFORE_EXPIRY`] before they expire.
    cached: Mutex<Option<Credentials>>,
    /// Held while fetching, so concurrent requests wait for one fetch rather than each asking.
    fetching: tokio::sync::Mutex<()>,
    connector: SharedHttpConnector,
}

/// Where a bucket's requests go, as the SDK's config would send them.
pub struct Endpoint<'a> {
    pub bucket: &'a str,
    pub region: &'a str,
    /// The endpoint URL the SDK client was given, if any (else AWS's, for `region`).
    pub url: Option<String>,
    pub path_style: bool,
    pub use_fips: bool,
    pub use_dual_stack: bool,
}

impl Wire {
    /// The direct path for `endpoint`, or the reason it does not apply and the SDK must make
    /// these requests too: no credentials provider, no tokio runtime, or an endpoint whose
    /// signing is not SigV4 for `s3` (S3 Express, multi-region access points). Makes no request.
    pub async fn new(
        endpoint: Endpoint<'_>,
        provider: Option<SharedCredentialsProvider>,
        settings: &HttpConnectorSettings,
    ) -> Result<Self, String> {
        let provider = provider.ok_or("no credentials provider")?;
        let params = Params::builder()
            .bucket(endpoint.bucket)
            .region(endpoint.region)
            .set_endpoint(endpoint.url)
            .force_path_style(endpoint.path_style)
            .use_fips(endpoint.use_fips)
            .use_dual_stack(endpoint.use_dual_stack)
            .build()
            .map_err(|e| format!("endpoint parameters: {e}"))?;
        let resolved = DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map_err(|e| format!("endpoint: {}", DisplayErrorContext(&*e)))?;
        let signing_region = signing_region(resolved.properties().get("authSchemes"))
            .ok_or("the endpoint asks for a signing scheme other than SigV4 for s3")?
            .unwrap_or_else(|| endpoint.region.to_string());
        // Built as the SDK builds its default client's (behaviour version 2025-08-07 on):
        // rustls with aws-lc, and the proxy from HTTP(S)_PROXY / NO_PROXY.
        let sleep = aws_smithy_async::rt::sleep::default_async_sleep()
            .ok_or("no async sleep (not in a tokio runtime)")?;
        let connector = aws_smithy_http_client::Connector::builder()
            .connector_settings(settings.clone())
            .sleep_impl(sleep)
            .proxy_config(aws_smithy_http_client::proxy::ProxyConfig::from_env())
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .build();
        let connector = SharedHttpConnector::new(connector);
        Ok(Self {
            base: resolved.url().trim_end_matches('/').to_string(),
            signing_region,
            provider,
            cached: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            connector,
        })
    }

    /// GetObject: the version's head from the response headers, and its body as it streams.
    pub async fn get(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(ObjectHead, ByteStream), Failure> {
        let url = self.url(key, version_id);
        let request = http::Request::builder()
            .method("GET")
            .uri(&url)
            .body(SdkBody::empty())
            .map_err(|e| {
                (
                    ErrorKind::Permanent,
                    format!("cannot build the request: {e}"),
                )
            })?;
        let response = self.send(&url, request, SignableBody::Bytes(&[])).await?;
        let head = object_head(response.headers())?;
        Ok((head, ByteStream::new(response.into_body())))
    }

    /// PutObject of `body`, which the server checks against `content_md5` (a signed header;
    /// the payload itself is sent unsigned, as the SDK path does).
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_md5: &str,
        meta: &ObjectMeta,
        tagging: Option<&str>,
    ) -> Result<Written, Failure> {
        let url = self.url(key, None);
        let mut request = http::Request::builder()
            .method("PUT")
            .uri(&url)
            .header("content-length", body.len())
            .header("content-md5", content_md5);
        let fixed = [
            ("content-type", &meta.content_type),
            ("cache-control", &meta.cache_control),
            ("content-disposition", &meta.content_disposition),
            ("content-encoding", &meta.content_encoding),
        ];
        for (name, value) in fixed {
            if let Some(value) = value {
                request = request.header(name, value);
            }
        }
        for (name, value) in &meta.user {
            request = request.header(format!("x-amz-meta-{name}"), value);
        }
        if let Some(tagging) = tagging {
            request = request.header("x-amz-tagging", tagging);
        }
        let request = request.body(SdkBody::from(body)).map_err(|e| {
            let message = format!("cannot build the request (metadata or headers): {e}");
            (ErrorKind::Permanent, message)
        })?;
        let response = self
            .send(&url, request, SignableBody::UnsignedPayload)
            .await?;
        let headers = response.headers();
        Ok(Written {
            version_id: headers.get("x-amz-version-id").map(str::to_string),
            etag: headers.get("etag").map(unquote),
            last_modified_ms: None,
        })
    }

    /// The object's URL: the bucket's, the key percent-encoded as a path, the version as query.
    fn url(&self, key: &str, version_id: Option<&str>) -> String {
        let mut url = format!("{}/{}", self.base, utf8_percent_encode(key, KEY_PATH));
        if let Some(version) = version_id {
            url.push_str("?versionId=");
            url.extend(utf8_percent_encode(version, QUERY_VALUE));
        }
        url
    }

    /// Signs and sends `request` (whose URI is `url`); any answer but 2xx becomes a
    /// [`Failure`] with the server's error code and message.
    async fn send(
        &self,
        url: &str,
        mut request: http::Request<SdkBody>,
        payload: SignableBody<'_>,
    ) -> Result<aws_smithy_runtime_api::client::orchestrator::HttpResponse, Failure> {
        let identity: Identity = self.credentials().await?.into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let unsignable = |e: &dyn std::fmt::Display| {
            (
                ErrorKind::Permanent,
                format!("cannot sign the request: {e}"),
            )
        };
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.signing_region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| unsignable(&e))?
            .into();
        let headers = request
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let signable = SignableRequest::new(request.method().as_str(), url, headers, payload)
            .map_err(|e| unsignable(&e))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| unsignable(&e))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);
        let request = HttpRequest::try_from(request).map_err(|e| unsignable(&e))?;
        let response = self
            .connector
            .call(request)
            .await
            .map_err(|e| connection_failure(&e))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let mut stream = ByteStream::new(response.into_body());
        let mut body = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            body.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY_MAX - body.len())]);
            if body.len() == ERROR_BODY_MAX {
                break;
            }
        }
        let body = String::from_utf8_lossy(&body);
        let code = xml_field(&body, "Code").unwrap_or("");
        let detail = xml_field(&body, "Message").unwrap_or("");
        let message = if code.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status} {code}: {detail}")
        };
        Err(Failure {
            kind: kind_for(status, code),
            code: ErrorCode::parse(code),
            message,
        })
    }

    /// The credentials to sign with: the cached ones while fresh, else fetched once for
    /// everyone waiting.
    async fn credentials(&self) -> Result<Credentials, Failure> {
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        let _fetching = self.fetching.lock().await;
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        let credentials = self.provider.provide_credentials().await.map_err(|e| {
            let message = format!("no credentials: {}", DisplayErrorContext(&e));
            (ErrorKind::Transient, message)
        })?;
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(credentials.clone());
        Ok(credentials)
    }

    fn fresh(&self) -> Option<Credentials> {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let horizon = SystemTime::now() + REFRESH_BEFORE_EXPIRY;
        cached
            .as_ref()
            .filter(|c| c.expiry().is_none_or(|expiry| expiry > horizon))
            .cloned()
    }
}

/// The signing region the endpoint's first auth scheme names (`Some(None)`: none named, sign
/// for the configured region), or `None` if that scheme is not SigV4 for `s3`.
fn signing_region(schemes: Option<&Document>) -> Option<Option<String>> {
    let Some(Document::Array(schemes)) = schemes else {
        return Some(None);
    };
    let Some(Document::Object(first)) = schemes.first() else {
        return Some(None);
    };
    let field = |name: &str| match first.get(name) {
        Some(Document::String(value)) => Some(value.as_str()),
        _ => None,
    };
    if field("name") != Some("sigv4") || field("signingName").is_some_and(|n| n != "s3") {
        return None;
    }
    Some(field("signingRegion").map(str::to_string))
}

/// A failure before any answer: timed out, or the server could not be reached.
fn connection_failure(err: &ConnectorError) -> Failure {
    if err.is_timeout() {
        (ErrorKind::Unreachable, "timed out".to_string()).into()
    } else if err.is_io() {
        let message = format!("cannot reach the server: {}", DisplayErrorContext(err));
        (ErrorKind::Unreachable, message).into()
    } else {
        (ErrorKind::Transient, DisplayErrorContext(err).to_string()).into()
    }
}

/// A GetObject response's headers as ferry's [`ObjectHead`].
fn object_head(headers: &Headers) -> Result<ObjectHead, Failure> {
    let text = |name: &str| headers.get(name).map(str::to_string);
    let size = match headers.get("content-length") {
        Some(length) => length.parse().map_err(|_| {
            let message = format!("response has an unreadable Content-Length {length:?}");
            (ErrorKind::Transient, message)
        })?,
        None => 0,
    };
    let last_modified_ms = headers
        .get("last-modified")
        .and_then(|t| DateTime::from_str(t, DateTimeFormat::HttpDate).ok())
        .and_then(|t| t.to_millis().ok())
        .unwrap_or(0);
    let user: HashMap<String, String> = headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.strip_prefix("x-amz-meta-")?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    Ok(ObjectHead {
        size,
        etag: headers.get("etag").map(unquote),
        version_id: text("x-amz-version-id"),
        last_modified_ms,
        meta: ObjectMeta {
            content_type: text("content-type"),
            cache_control: text("cache-control"),
            content_disposition: text("content-disposition"),
            content_encoding: text("content-encoding"),
            user,
        },
        tag_count: headers
            .get("x-amz-tagging-count")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    })
}

/// The text of the first `<name>…</name>` in an S3 error document, entities left as they are
/// (it only goes into an error message).
fn xml_field<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(&body[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_slashes_and_versions_are_query_encoded() {
        let key = utf8_percent_encode("a dir/ü+x?.txt", KEY_PATH).to_string();
        assert_eq!(key, "a%20dir/%C3%BC%2Bx%3F.txt");
        let version = utf8_percent_encode("3/Lw+k=", QUERY_VALUE).to_string();
        assert_eq!(version, "3%2FLw%2Bk%3D");
    }

    #[test]
    fn error_documents_give_their_code_and_message() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code>\
                    <Message>The key does not exist</Message><Key>k</Key></Error>";
        assert_eq!(xml_field(body, "Code"), Some("NoSuchKey"));
        assert_eq!(xml_field(body, "Message"), Some("The key does not exist"));
        assert_eq!(xml_field("<html>Bad Gateway</html>", "Code"), None);
    }

    #[test]
    fn only_plain_sigv4_for_s3_is_signed_here() {
        let scheme = |name: &str, signing: &str| {
            let mut object = HashMap::new();
            object.insert("name".to_string(), Document::String(name.into()));
            object.insert("signingName".to_string(), Document::String(signing.into()));
            object.insert("signingRegion".to_string(), Document::String("eu-1".into()));
            Document::Array(vec![Document::Object(object)])
        };
        let sigv4 = scheme("sigv4", "s3");
        assert_eq!(signing_region(Some(&sigv4)), Some(Some("eu-1".into())));
        let express = scheme("sigv4-s3express", "s3express");
        assert_eq!(signing_region(Some(&express)), None);
        let sigv4a = scheme("sigv4a", "s3");
        assert_eq!(signing_region(Some(&sigv4a)), None);
        assert_eq!(signing_region(None), Some(None));
    }
}
