//! The additional checksums a client may send with a body (`x-amz-checksum-crc32`, `-crc32c`,
//! `-sha1`, `-sha256`, `-crc64nvme`), as a header or in an aws-chunked trailer: computed while
//! the body is read and compared before anything is stored. A mismatch is `BadDigest`, as S3
//! answers it, and nothing is written.

use http::HeaderMap;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Crc32, Crc32c, Crc64Nvme, Sha1, Sha256};
use s3s::{dto, s3_error, S3Result};

/// The algorithms S3 knows, by the suffix of their header name.
const ALGORITHMS: [&str; 5] = ["crc32", "crc32c", "sha1", "sha256", "crc64nvme"];
const PREFIX: &str = "x-amz-checksum-";
/// Headers under [`PREFIX`] that carry no checksum (of CreateMultipartUpload and answers).
const NOT_SUMS: [&str; 3] = ["type", "algorithm", "mode"];

/// What a request says its body's checksums are.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// `(algorithm, base64 value)` from the request's headers.
    headers: Vec<(&'static str, String)>,
    /// The algorithm whose value comes in the trailer (`x-amz-trailer`).
    trailer: Option<&'static str>,
}

impl Claims {
    /// The claims of a request's headers; an unknown algorithm in `x-amz-trailer` is refused.
    pub fn of(headers: &HeaderMap) -> S3Result<Self> {
        let mut claims = Self::default();
        // A checksum this endpoint cannot compute is refused, never taken unverified.
        let unknown = headers.keys().find_map(|name| {
            let suffix = name.as_str().strip_prefix(PREFIX)?;
            let known = ALGORITHMS.contains(&suffix) || NOT_SUMS.contains(&suffix);
            (!known).then_some(suffix)
        });
        if let Some(suffix) = unknown {
            return Err(s3_error!(
                InvalidRequest,
                "{PREFIX}{suffix} is not verified by this endpoint; send one of {}",
                ALGORITHMS.join(", ")
            ));
        }
        for algorithm in ALGORITHMS {
            if let Some(value) = headers.get(format!("{PREFIX}{algorithm}")) {
                let value = value.to_str().map_err(|_| {
                    s3_error!(InvalidRequest, "the {PREFIX}{algorithm} header is not text")
                })?;
                claims.headers.push((algorithm, value.trim().to_string()));
            }
        }
        if let Some(trailer) = headers.get("x-amz-trailer") {
            let name = trailer
                .to_str()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let algorithm = name
                .strip_prefix(PREFIX)
                .and_then(|a| ALGORITHMS.into_iter().find(|known| *known == a))
                .ok_or_else(|| {
                    s3_error!(
                        InvalidRequest,
                        "x-amz-trailer names {name:?}; this endpoint takes a trailing x-amz-checksum-{{{}}}",
                        ALGORITHMS.join(",")
                    )
                })?;
            claims.trailer = Some(algorithm);
        }
        Ok(claims)
    }

    /// A hasher for every algorithm claimed (none: nothing is computed).
    pub fn hasher(&self) -> ChecksumHasher {
        let mut hasher = ChecksumHasher::default();
        let wanted = self.headers.iter().map(|(a, _)| *a).chain(self.trailer);
        for algorithm in wanted {
            match algorithm {
                "crc32" => hasher.crc32 = Some(Crc32::new()),
                "crc32c" => hasher.crc32c = Some(Crc32c::new()),
                "sha1" => hasher.sha1 = Some(Sha1::new()),
                "sha256" => hasher.sha256 = Some(Sha256::new()),
                _ => hasher.crc64nvme = Some(Crc64Nvme::new()),
            }
        }
        hasher
    }

    /// Compares what was computed over the body with the claims, the trailer's taken from
    /// `trailers` (the aws-chunked body's trailing headers, once it is read whole).
    pub fn verify(&self, computed: &dto::Checksum, trailers: Option<&HeaderMap>) -> S3Result<()> {
        let mut claimed: Vec<(&str, String)> = self.headers.clone();
        if let Some(algorithm) = self.trailer {
            let value = trailers
                .and_then(|t| t.get(format!("{PREFIX}{algorithm}")))
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    s3_error!(
                        InvalidRequest,
                        "x-amz-trailer announced {PREFIX}{algorithm}, but the body's trailer does not carry it"
                    )
                })?;
            claimed.push((algorithm, value.trim().to_string()));
        }
        for (algorithm, value) in claimed {
            if computed_value(computed, algorithm) != Some(value.as_str()) {
                return Err(s3_error!(
                    BadDigest,
                    "the {} you specified did not match the calculated checksum; nothing was stored",
                    algorithm.to_ascii_uppercase()
                ));
            }
        }
        Ok(())
    }
}

fn computed_value<'a>(computed: &'a dto::Checksum, algorithm: &str) -> Option<&'a str> {
    match algorithm {
        "crc32" => computed.checksum_crc32.as_deref(),
        "crc32c" => computed.checksum_crc32c.as_deref(),
        "sha1" => computed.checksum_sha1.as_deref(),
        "sha256" => computed.checksum_sha256.as_deref(),
        _ => computed.checksum_crc64nvme.as_deref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        map
    }

    fn sums(claims: &Claims, body: &[u8]) -> dto::Checksum {
        let mut hasher = claims.hasher();
        hasher.update(body);
        hasher.finalize()
    }

    #[test]
    fn header_checksums_are_compared() {
        // CRC32 of "hello" is 0x3610a686; CRC32C 0x9a71bb4c.
        let claims = Claims::of(&headers(&[
            ("x-amz-checksum-crc32", "NhCmhg=="),
            ("x-amz-checksum-crc32c", "mnG7TA=="),
        ]))
        .expect("claims");
        assert!(claims.verify(&sums(&claims, b"hello"), None).is_ok());
        let err = claims
            .verify(&sums(&claims, b"hellO"), None)
            .expect_err("mismatch");
        assert_eq!(err.code(), &s3s::S3ErrorCode::BadDigest);
    }

    #[test]
    fn trailer_checksums_are_compared_and_must_arrive() {
        let claims =
            Claims::of(&headers(&[("x-amz-trailer", "x-amz-checksum-crc32")])).expect("claims");
        let good = headers(&[("x-amz-checksum-crc32", "NhCmhg==")]);
        assert!(claims.verify(&sums(&claims, b"hello"), Some(&good)).is_ok());
        let bad = headers(&[("x-amz-checksum-crc32", "AAAAAA==")]);
        let err = claims
            .verify(&sums(&claims, b"hello"), Some(&bad))
            .expect_err("mismatch");
        assert_eq!(err.code(), &s3s::S3ErrorCode::BadDigest);
        let err = claims
            .verify(&sums(&claims, b"hello"), None)
            .expect_err("missing trailer");
        assert_eq!(err.code(), &s3s::S3ErrorCode::InvalidRequest);
        let err = Claims::of(&headers(&[("x-amz-trailer", "x-amz-checksum-md4")]))
            .expect_err("unknown algorithm");
        assert_eq!(err.code(), &s3s::S3ErrorCode::InvalidRequest);
        let err = Claims::of(&headers(&[("x-amz-checksum-sha512", "AAAA")]))
            .expect_err("a checksum not computed here");
        assert_eq!(err.code(), &s3s::S3ErrorCode::InvalidRequest);
        assert!(Claims::of(&headers(&[("x-amz-checksum-type", "FULL_OBJECT")])).is_ok());
    }

    #[test]
    fn no_claim_computes_nothing() {
        let claims = Claims::of(&HeaderMap::new()).expect("claims");
        assert_eq!(claims, Claims::default());
        assert!(claims.verify(&sums(&claims, b"x"), None).is_ok());
    }
}
