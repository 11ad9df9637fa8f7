//! Bearer tokens kept in files (Kubernetes secrets mount them so): read,
//! trimmed, and refused when empty. The token itself is never put in an
//! error or a log.

use std::path::Path;

/// Reads the token in `path`, named `field` in errors (such as
/// `admin.token_file`).
pub fn read_secret(field: &str, path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {field} {}: {e}", path.display()))?;
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

#[cfg(test)]
mod tests {
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
        for bad in ["two words", "tab\there", "bell\u{7}", "caf\u{e9}"] {
            std::fs::write(&path, bad).unwrap();
            let err = super::read_secret("x.token_file", &path).unwrap_err();
            assert!(
                err.contains("cannot") && !err.contains(bad),
                "{bad:?}: {err}"
            );
        }
    }
}
