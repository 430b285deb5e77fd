//! What the endpoint refuses before s3s reads a byte of the body: signatures AWS no longer
//! accepts (SigV2), a credential scope of another region, presigned URLs valid for more than
//! seven days, browser POST uploads (s3s would read the whole form before checking access),
//! and bodies larger than the endpoint takes.

use futures_util::future::BoxFuture;
use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;
use s3s::service::S3Service;
use s3s::{Body, HttpError, HttpResponse};

use super::{MAX_BODY, MAX_OBJECT};

/// The longest a presigned URL may be valid, as AWS allows: seven days.
const MAX_PRESIGNED_SECONDS: u64 = 7 * 24 * 3600;

/// The s3s service behind the checks of [`refusal`].
#[derive(Clone)]
pub struct Gate {
    pub inner: S3Service,
    /// The region clients must sign for (`ingest.region`).
    pub region: String,
}

impl hyper::service::Service<Request<Incoming>> for Gate {
    type Response = HttpResponse;
    type Error = HttpError;
    type Future = BoxFuture<'static, Result<HttpResponse, HttpError>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        match refusal(&req, &self.region) {
            Some(refused) => {
                tracing::debug!(
                    method = %req.method(),
                    path = req.uri().path(),
                    code = refused.code,
                    "ingest request refused before its body"
                );
                Box::pin(std::future::ready(Ok(refused.response())))
            }
            None => hyper::service::Service::call(&self.inner, req),
        }
    }
}

/// An S3 error answered without reading the request's body.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn response(&self) -> HttpResponse {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>",
            self.code,
            xml_escape(&self.message)
        );
        let mut response = HttpResponse::new(Body::from(body));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/xml"),
        );
        // The body was not read: the connection cannot carry another request.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        response
    }
}

/// Why `req` is refused before its body is read, if it is.
pub fn refusal<B>(req: &Request<B>, region: &str) -> Option<Refusal> {
    let query = req.uri().query().unwrap_or_default();
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let authorization = header("authorization").unwrap_or_default();
    if authorization.starts_with("AWS ")
        || (query_value(query, "AWSAccessKeyId").is_some()
            && query_value(query, "Signature").is_some())
    {
        return Some(Refusal::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "The authorization mechanism you have provided is not supported: sign with \
             AWS4-HMAC-SHA256 (SigV4)",
        ));
    }
    let scope = authorization
        .strip_prefix("AWS4-HMAC-SHA256")
        .and_then(|rest| rest.split("Credential=").nth(1))
        .map(|c| c.split([',', ' ']).next().unwrap_or_default().to_string())
        .or_else(|| query_value(query, "X-Amz-Credential"));
    if let Some(scope) = scope {
        // AK/date/region/service/aws4_request
        let signed_for = scope.split('/').nth(2).unwrap_or_default();
        if signed_for != region {
            return Some(Refusal::new(
                StatusCode::BAD_REQUEST,
                "AuthorizationHeaderMalformed",
                format!(
                    "the authorization's region {signed_for:?} is wrong; this endpoint expects {region:?}"
                ),
            ));
        }
    }
    if let Some(expires) = query_value(query, "X-Amz-Expires") {
        match expires.parse::<u64>() {
            Ok(s) if s <= MAX_PRESIGNED_SECONDS => {}
            _ => {
                return Some(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "AuthorizationQueryParametersError",
                    format!(
                        "X-Amz-Expires must be a number of seconds up to {MAX_PRESIGNED_SECONDS} \
                         (7 days); got {expires:?}"
                    ),
                ))
            }
        }
    }
    if req.method() == Method::POST
        && header("content-type").is_some_and(|t| t.starts_with("multipart/form-data"))
    {
        return Some(Refusal::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "browser POST uploads are not served: use PutObject or a multipart upload",
        ));
    }
    // An aws-chunked body's Content-Length counts its chunk signatures; the object's size
    // is the decoded length.
    let size = header("x-amz-decoded-content-length").or_else(|| header("content-length"));
    // A part is held in memory; a PutObject is streamed into the buffer.
    let (limit, what) = if query_value(query, "uploadId").is_some() {
        (
            MAX_BODY as u64,
            "part (parts are held in memory: use smaller parts)",
        )
    } else {
        (
            MAX_OBJECT,
            "PutObject (S3's limit: upload larger objects in parts)",
        )
    };
    if let Some(size) = size {
        match size.parse::<u64>() {
            Ok(n) if n <= limit => {}
            Ok(n) => {
                return Some(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "EntityTooLarge",
                    format!(
                    "a body of {n} bytes is over this endpoint's limit of {limit} bytes per {what}"
                ),
                ))
            }
            Err(_) => {
                return Some(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgument",
                    format!("the body's length {size:?} is not a number"),
                ))
            }
        }
    }
    None
}

/// The percent-decoded value of `name` in a query string.
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    fn code(req: &Request<()>) -> Option<&'static str> {
        refusal(req, "us-east-1").map(|r| r.code)
    }

    const V4: &str = "AWS4-HMAC-SHA256 Credential=k/20261203/us-east-1/s3/aws4_request, \
                      SignedHeaders=host, Signature=abc";

    #[test]
    fn sigv4_for_the_region_passes() {
        let ok = request(
            "PUT",
            "/inbox/x",
            &[("authorization", V4), ("content-length", "5")],
        );
        assert_eq!(code(&ok), None);
    }

    #[test]
    fn sigv2_is_refused_in_headers_and_urls() {
        let header = request("GET", "/inbox/x", &[("authorization", "AWS k:c2ln")]);
        assert_eq!(code(&header), Some("InvalidRequest"));
        let url = request(
            "GET",
            "/inbox/x?AWSAccessKeyId=k&Expires=1&Signature=c2ln",
            &[],
        );
        assert_eq!(code(&url), Some("InvalidRequest"));
    }

    #[test]
    fn another_region_is_refused() {
        let other = V4.replace("us-east-1", "eu-west-3");
        let req = request("GET", "/inbox/x", &[("authorization", &other)]);
        assert_eq!(code(&req), Some("AuthorizationHeaderMalformed"));
        let url = request(
            "GET",
            "/inbox/x?X-Amz-Credential=k%2F20261203%2Feu-west-3%2Fs3%2Faws4_request&X-Amz-Expires=60",
            &[],
        );
        assert_eq!(code(&url), Some("AuthorizationHeaderMalformed"));
    }

    #[test]
    fn presigned_urls_are_valid_for_seven_days_at_most() {
        let url = |expires: &str| {
            request(
                "GET",
                &format!(
                    "/inbox/x?X-Amz-Credential=k%2F20261203%2Fus-east-1%2Fs3%2Faws4_request\
                     &X-Amz-Expires={expires}"
                ),
                &[],
            )
        };
        assert_eq!(code(&url("604800")), None);
        assert_eq!(
            code(&url("604801")),
            Some("AuthorizationQueryParametersError")
        );
        assert_eq!(
            code(&url("999999999999999999999")),
            Some("AuthorizationQueryParametersError")
        );
    }

    #[test]
    fn post_uploads_and_oversized_bodies_are_refused_unread() {
        let post = request(
            "POST",
            "/inbox",
            &[("content-type", "multipart/form-data; boundary=x")],
        );
        assert_eq!(code(&post), Some("NotImplemented"));
        let big = (MAX_BODY as u64 + 1).to_string();
        let part = request(
            "PUT",
            "/inbox/x?partNumber=1&uploadId=abc",
            &[("authorization", V4), ("content-length", &big)],
        );
        assert_eq!(code(&part), Some("EntityTooLarge"));
        let put = request(
            "PUT",
            "/inbox/x",
            &[("authorization", V4), ("content-length", &big)],
        );
        assert_eq!(
            code(&put),
            None,
            "a PutObject is streamed: larger bodies are taken"
        );
        let huge = (MAX_OBJECT + 1).to_string();
        let put = request(
            "PUT",
            "/inbox/x",
            &[("authorization", V4), ("content-length", &huge)],
        );
        assert_eq!(code(&put), Some("EntityTooLarge"));
        // aws-chunked: the decoded length counts, not the framing.
        let framed = (MAX_BODY as u64 + 900).to_string();
        let max = MAX_BODY.to_string();
        let chunked = request(
            "PUT",
            "/inbox/x?partNumber=1&uploadId=abc",
            &[
                ("authorization", V4),
                ("content-length", &framed),
                ("x-amz-decoded-content-length", &max),
            ],
        );
        assert_eq!(code(&chunked), None);
    }
}
