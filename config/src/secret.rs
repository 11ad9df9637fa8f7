//! Bearer tokens kept in files (Kubernetes secrets mount them so): read,
//! trimmed, and refused when empty. The token itself is never put in an
//! error or a log.

use std::path::Path;

/// The most a token file may hold.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Reads the token in `path`, named `field` in errors (such as
/// `admin.token_file`). The path must name a regular file, so that a pipe
/// or a device there is refused rather than waited on.
pub fn read_secret(field: &str, path: &Path) -> Result<String, String> {
    let cannot = |e: &dyn std::fmt::Display| format!("cannot read {field} {}: {e}", path.display());
    let bytes =
        crate::values::read_regular(path, MAX_TOKEN_FILE, "a bearer token takes under 1 KiB")
            .map_err(|e| cannot(&e))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        format!(
            "{field} {} is not UTF-8 text; put the bearer token alone in it",
            path.display()
        )
    })?;
    token(&format!("{field} {}", path.display()), &text)
}

/// A bearer token as given (in a file, or in an environment variable named
/// by `source`): trimmed, not empty, and fit for an `Authorization` field,
/// so visible ASCII only.
pub fn token(source: &str, raw: &str) -> Result<String, String> {
    let token = raw.trim();
    if token.is_empty() {
        return Err(format!("{source} is empty; put the bearer token in it"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{source} holds characters a bearer token cannot (spaces, control characters or non-ASCII); put the token alone in it"
        ));
    }
    Ok(token.to_owned())
}

/// What `check` warns of a token that is easy to guess (the example's
/// placeholder, or fewer than 16 characters), named by `source`; the
/// token itself is not shown.
pub fn weak_token(source: &str, token: &str) -> Option<String> {
    let lower = token.to_ascii_lowercase();
    let why = if ["replace-me", "changeme", "change-me"]
        .iter()
        .any(|p| lower.contains(p))
    {
        "is a placeholder"
    } else if token.len() < 16 {
        "has fewer than 16 characters"
    } else {
        return None;
    };
    Some(format!(
        "{source}: the token {why}, which whoever reaches the listener could guess; make one \
         with `openssl rand -hex 32`"
    ))
}

/// Whether an `Authorization` field's value presents `token` as a bearer
/// token (RFC 6750 §2.1; the scheme's name in any case, RFC 9110 §11.1).
/// The comparison takes the same time wherever the first difference is.
pub fn presents_bearer(authorization: Option<&[u8]>, token: &[u8]) -> bool {
    let presented = authorization
        .and_then(|v| v.split_at_checked(7))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
        .map_or(&b""[..], |(_, rest)| rest.trim_ascii());
    bool::from(subtle::ConstantTimeEq::ct_eq(presented, token))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_placeholder_or_short_token_is_called_weak_without_being_shown() {
        let weak = |t: &str| super::weak_token("admin.token_file", t);
        let placeholder = weak("replace-me-with-a-long-random-token").unwrap();
        assert!(
            placeholder.starts_with("admin.token_file: the token is a placeholder"),
            "{placeholder}"
        );
        assert!(!placeholder.contains("long-random"), "{placeholder}");
        let short = weak("s3cret").unwrap();
        assert!(short.contains("fewer than 16 characters"), "{short}");
        assert!(!short.contains("s3cret"), "{short}");
        assert_eq!(weak("0f4c2a9e1b7d3c5a8e6f0b2d4c6a8e0f"), None);
    }

    #[test]
    fn a_token_is_trimmed_and_an_empty_or_missing_file_says_which_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret\n").unwrap();
        assert_eq!(super::read_secret("x.token_file", &path).unwrap(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        let err = super::read_secret("x.token_file", &path).unwrap_err();
        assert!(
            err.starts_with("x.token_file") && err.contains("is empty"),
            "{err}"
        );
        let err = super::read_secret("x.token_file", &dir.path().join("none")).unwrap_err();
        assert!(err.starts_with("cannot read x.token_file"), "{err}");
        std::fs::write(&path, b"\xff\xfe").unwrap();
        let err = super::read_secret("x.token_file", &path).unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
        for bad in ["two words", "tab\there", "bell\u{7}", "caf\u{e9}"] {
            std::fs::write(&path, bad).unwrap();
            let err = super::read_secret("x.token_file", &path).unwrap_err();
            assert!(
                err.contains("cannot") && !err.contains(bad),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn a_token_path_that_is_no_regular_file_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let err = super::read_secret("x.token_file", dir.path()).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        // A pipe with no writer: opening it to read would wait forever.
        let fifo = crate::fifo(dir.path(), "fifo");
        let err = super::read_secret("x.token_file", &fifo).unwrap_err();
        assert!(
            err.starts_with("cannot read x.token_file") && err.contains("not a regular file"),
            "{err}"
        );
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'a'; 64 * 1024 + 1]).unwrap();
        let err = super::read_secret("x.token_file", &path).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn a_bearer_token_is_read_whatever_the_schemes_case() {
        let token = b"s3cret";
        for ok in [&b"Bearer s3cret"[..], b"bearer s3cret", b"BEARER  s3cret "] {
            assert!(super::presents_bearer(Some(ok), token), "{ok:?}");
        }
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearers3cret",
            b"Basic s3cret",
            b"s3cret",
            b"Bearer ",
            b"",
        ] {
            assert!(!super::presents_bearer(Some(wrong), token), "{wrong:?}");
        }
        assert!(!super::presents_bearer(None, token));
    }
}
