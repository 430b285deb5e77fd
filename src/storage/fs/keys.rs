//! Object keys as paths under an `fs` location's root: which keys are refused, and why.
//!
//! A key maps to the path `<root>/<key>` component by component, so only keys whose every
//! component is a plain file name can be stored: nothing may climb out of the root, name the
//! root itself, or land in ferry's own `.ferry` directory.

/// S3's limit on a key's length, in bytes.
pub const MAX_KEY: usize = 1024;
/// The longest file name Linux file systems accept, in bytes.
pub const MAX_COMPONENT: usize = 255;
/// The sidecar of key `k` is `k.json`: its last component must leave room for the suffix.
pub const SIDECAR_SUFFIX: &str = ".json";
/// The first key component ferry keeps for itself (metadata, temporary files, uploads).
pub const RESERVED: &str = ".ferry";

/// The components of `key`, or why it cannot be stored in a directory.
pub fn components(key: &str) -> Result<Vec<String>, String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY {
        return Err(format!(
            "the key is {} bytes long, more than {MAX_KEY}",
            key.len()
        ));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the key contains the control character U+{:04X}",
            c as u32
        ));
    }
    if key.starts_with('/') {
        return Err("the key starts with '/' (an absolute path)".into());
    }
    if key.ends_with('/') {
        return Err("the key ends with '/' (a directory, not an object)".into());
    }
    let parts: Vec<&str> = key.split('/').collect();
    for part in &parts {
        match *part {
            "" => return Err("the key has an empty path component ('//')".into()),
            "." | ".." => return Err(format!("the key has a {part:?} path component")),
            p if p.len() > MAX_COMPONENT => {
                return Err(format!(
                    "the key has a path component of {} bytes, more than {MAX_COMPONENT}",
                    p.len()
                ))
            }
            _ => {}
        }
    }
    if parts[0] == RESERVED {
        return Err(format!(
            "the key's first component {RESERVED:?} is reserved for ferry's own files"
        ));
    }
    let last = parts[parts.len() - 1];
    if last.len() + SIDECAR_SUFFIX.len() > MAX_COMPONENT {
        return Err(format!(
            "the key's last component is {} bytes, more than {} (its metadata file adds {SIDECAR_SUFFIX:?})",
            last.len(),
            MAX_COMPONENT - SIDECAR_SUFFIX.len()
        ));
    }
    Ok(parts.into_iter().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_split_into_components() {
        assert_eq!(components("a").unwrap(), ["a"]);
        assert_eq!(components("a/b c/d.txt").unwrap(), ["a", "b c", "d.txt"]);
        assert_eq!(components("..a/b..").unwrap(), ["..a", "b.."]);
        assert_eq!(components("x/.ferry").unwrap(), ["x", ".ferry"]);
        assert_eq!(components("été/ü").unwrap(), ["été", "ü"]);
    }

    #[test]
    fn keys_that_leave_the_root_or_name_directories_are_refused() {
        for (key, why) in [
            ("", "empty"),
            ("/etc/x", "starts with '/'"),
            ("../x", "\"..\" path component"),
            ("a/../../b", "\"..\" path component"),
            ("a/./b", "\".\" path component"),
            (".", "\".\" path component"),
            ("a//b", "empty path component"),
            ("a/", "ends with '/'"),
            ("a\0b", "U+0000"),
            ("a\nb", "U+000A"),
            ("a\u{7f}", "U+007F"),
            (".ferry/meta/x", "reserved"),
            (".ferry", "reserved"),
        ] {
            let err = components(key).expect_err(key);
            assert!(err.contains(why), "{key:?}: {err}");
        }
    }

    #[test]
    fn length_limits() {
        let long = "a".repeat(MAX_COMPONENT + 1);
        assert!(components(&format!("{long}/b"))
            .unwrap_err()
            .contains("256 bytes"));
        let last = "a".repeat(MAX_COMPONENT - SIDECAR_SUFFIX.len());
        assert!(components(&format!("x/{last}")).is_ok());
        assert!(components(&format!("x/{last}a"))
            .unwrap_err()
            .contains("metadata file"));
        let deep = ["abcdefg"; 128].join("/");
        assert_eq!(deep.len(), MAX_KEY - 1);
        assert!(components(&deep).is_ok());
        assert!(components(&format!("{deep}/x"))
            .unwrap_err()
            .contains("more than 1024"));
    }
}
