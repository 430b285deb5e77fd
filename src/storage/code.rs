//! The error codes callers act on: S3's names for the conditions, which the `fs` store uses
//! too. A storage error carries one when the server (or the store) named the condition, so
//! callers match on it instead of reading message text.

/// A condition named by an error response, or by the `fs` store for the same condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The body's MD5 or additional checksum is not what the request declared.
    BadDigest,
    /// A Content-MD5 that is not a base64 MD5.
    InvalidDigest,
    /// Throttled, or a limit of open work reached: retry later.
    SlowDown,
    NoSuchKey,
    NoSuchVersion,
    NoSuchUpload,
    NoSuchBucket,
    /// A part named in CompleteMultipartUpload that was not uploaded or has another ETag.
    InvalidPart,
    InvalidPartOrder,
    MalformedXml,
    InvalidArgument,
    /// Fewer body bytes than declared.
    IncompleteBody,
    AccessDenied,
    RequestTimeout,
}

impl ErrorCode {
    /// Every code, for parsing.
    const ALL: [ErrorCode; 14] = [
        Self::BadDigest,
        Self::InvalidDigest,
        Self::SlowDown,
        Self::NoSuchKey,
        Self::NoSuchVersion,
        Self::NoSuchUpload,
        Self::NoSuchBucket,
        Self::InvalidPart,
        Self::InvalidPartOrder,
        Self::MalformedXml,
        Self::InvalidArgument,
        Self::IncompleteBody,
        Self::AccessDenied,
        Self::RequestTimeout,
    ];

    /// S3's name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadDigest => "BadDigest",
            Self::InvalidDigest => "InvalidDigest",
            Self::SlowDown => "SlowDown",
            Self::NoSuchKey => "NoSuchKey",
            Self::NoSuchVersion => "NoSuchVersion",
            Self::NoSuchUpload => "NoSuchUpload",
            Self::NoSuchBucket => "NoSuchBucket",
            Self::InvalidPart => "InvalidPart",
            Self::InvalidPartOrder => "InvalidPartOrder",
            Self::MalformedXml => "MalformedXML",
            Self::InvalidArgument => "InvalidArgument",
            Self::IncompleteBody => "IncompleteBody",
            Self::AccessDenied => "AccessDenied",
            Self::RequestTimeout => "RequestTimeout",
        }
    }

    /// The code an error response names, if it is one callers act on.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_from_its_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(
            ErrorCode::parse("MalformedXML"),
            Some(ErrorCode::MalformedXml)
        );
        assert_eq!(ErrorCode::parse("SomethingElse"), None);
        assert_eq!(ErrorCode::parse(""), None);
    }
}
