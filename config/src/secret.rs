//! Bearer tokens kept in files (Kubernetes secrets mount them so): read,
//! trimmed, refused when empty, and read again so that a rotated token
//! takes effect without a restart. The token itself is never put in an
//! error or a log.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// What `check` and start-up warn of a token file that users other than
/// its owner may change (writable by its group or by anyone): since the
/// file is read again every 10 s, whoever can write it sets the token.
/// The token itself is not shown.
pub fn writable_by_others(field: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o022 != 0 {
        return Some(format!(
            "{field} {}: other users may write the token file (mode {:o}), and it is read again every 10 s, so they could set the token; make it writable by its owner alone (chmod go-w)",
            path.display(),
            mode & 0o777
        ));
    }
    // Whoever may write the folder may put another file in its place,
    // unless the folder is sticky (as /tmp is).
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty())?;
    let mode = std::fs::metadata(folder).ok()?.permissions().mode();
    (mode & 0o022 != 0 && mode & 0o1000 == 0).then(|| {
        format!(
            "{field} {}: other users may write its folder {} (mode {:o}), so they could put another token file in its place; keep it in a folder writable by its owner alone",
            path.display(),
            folder.display(),
            mode & 0o7777
        )
    })
}

/// How often a token file is read again, when its token is asked for.
pub const TOKEN_RELOAD: Duration = Duration::from_secs(10);

/// How long the token a file held before its last change is still
/// accepted: while a rotated secret reaches every pod (Kubernetes updates
/// a mounted secret within a minute or two), clients that still send the
/// old one are let in.
pub const TOKEN_GRACE: Duration = Duration::from_secs(600);

/// A bearer token kept in a file and read again, at most every
/// [`TOKEN_RELOAD`], when it is asked for: a token rotated in place (a
/// Kubernetes secret updated) takes effect without a restart. A file that
/// can no longer be read, or holds no token, leaves the last token in
/// force (said once in the log, with what is wrong). A token given
/// otherwise (an environment variable) is fixed.
pub struct TokenFile {
    field: &'static str,
    path: Option<PathBuf>,
    state: Mutex<TokenState>,
}

struct TokenState {
    current: String,
    /// The token before the last change, and when it changed.
    previous: Option<(String, Instant)>,
    /// A client offers the token before the last change (the server
    /// refused the one now).
    fallback: bool,
    read_at: Instant,
    /// The last problem logged, not logged again until it changes.
    trouble: Option<String>,
}

impl TokenFile {
    /// The token in `path` (see [`read_secret`]), named `field` in errors
    /// and in the log.
    pub fn open(field: &'static str, path: &Path) -> Result<TokenFile, String> {
        let token = read_secret(field, path)?;
        if let Some(loose) = writable_by_others(field, path) {
            tracing::warn!("{loose}");
        }
        Ok(TokenFile {
            field,
            path: Some(path.to_owned()),
            state: Mutex::new(TokenState::new(token)),
        })
    }

    /// A token that is never read again.
    pub fn fixed(field: &'static str, token: String) -> TokenFile {
        TokenFile {
            field,
            path: None,
            state: Mutex::new(TokenState::new(token)),
        }
    }

    /// The token now.
    pub fn current(&self) -> String {
        self.current_at(Instant::now())
    }

    fn current_at(&self, now: Instant) -> String {
        self.fresh(now, |s| s.current.clone())
    }

    /// The token a client offers: the one now, or, after the server
    /// refused it (see [`Self::refused`]), the one before it within
    /// [`TOKEN_GRACE`] of its change: a client whose secret was updated
    /// before its server's is not locked out meanwhile.
    pub fn offered(&self) -> String {
        self.offered_at(Instant::now())
    }

    fn offered_at(&self, now: Instant) -> String {
        self.fresh(now, |s| match s.grace_token(now) {
            Some(before) if s.fallback => before.to_owned(),
            _ => s.current.clone(),
        })
    }

    /// The tokens to try, in turn, against a server that may not have the
    /// one now yet: the one now, then the one before it within
    /// [`TOKEN_GRACE`] of its change (no state is kept: many servers may
    /// be asked at once).
    pub fn to_try(&self) -> Vec<String> {
        self.to_try_at(Instant::now())
    }

    fn to_try_at(&self, now: Instant) -> Vec<String> {
        self.fresh(now, |s| {
            std::iter::once(s.current.clone())
                .chain(s.grace_token(now).map(str::to_owned))
                .collect()
        })
    }

    /// The server refused the token offered: the other one (now, or the
    /// one before it within [`TOKEN_GRACE`]) is offered next.
    pub fn refused(&self) {
        self.refused_at(Instant::now());
    }

    fn refused_at(&self, now: Instant) {
        self.fresh_mut(now, |s| {
            s.fallback = !s.fallback && s.grace_token(now).is_some();
        });
    }

    /// Whether an `Authorization` field's value presents the token now, or
    /// the one before it within [`TOKEN_GRACE`] of its change (see
    /// [`presents_bearer`]).
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        self.accepts_at(authorization, Instant::now())
    }

    fn accepts_at(&self, authorization: Option<&[u8]>, now: Instant) -> bool {
        self.fresh(now, |s| {
            // Both compared, in constant time each.
            let current = presents_bearer(authorization, s.current.as_bytes());
            let before = s
                .grace_token(now)
                .is_some_and(|t| presents_bearer(authorization, t.as_bytes()));
            current | before
        })
    }

    /// `f` of the state, after reading the file again if it is due.
    fn fresh<T>(&self, now: Instant, f: impl FnOnce(&TokenState) -> T) -> T {
        self.fresh_mut(now, |s| f(s))
    }

    fn fresh_mut<T>(&self, now: Instant, f: impl FnOnce(&mut TokenState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &self.path
            && now.duration_since(state.read_at) >= TOKEN_RELOAD
        {
            state.read_at = now;
            match read_secret(self.field, path) {
                Ok(token) if token != state.current => {
                    let old = std::mem::replace(&mut state.current, token);
                    state.previous = Some((old, now));
                    state.fallback = false;
                    state.trouble = None;
                    tracing::info!(
                        field = self.field,
                        "a new token is in force; the one before it stays good for {} more minutes (accepted, or offered again should the new one be refused)",
                        TOKEN_GRACE.as_secs() / 60
                    );
                }
                Ok(_) => state.trouble = None,
                Err(e) => {
                    if state.trouble.as_deref() != Some(e.as_str()) {
                        tracing::warn!(
                            field = self.field,
                            "{e}; the token read before stays in force"
                        );
                        state.trouble = Some(e);
                    }
                }
            }
        }
        f(&mut state)
    }
}

impl TokenState {
    /// The token before the last change, within [`TOKEN_GRACE`] of it.
    fn grace_token(&self, now: Instant) -> Option<&str> {
        self.previous
            .as_ref()
            .filter(|(_, at)| now.duration_since(*at) < TOKEN_GRACE)
            .map(|(t, _)| t.as_str())
    }

    fn new(token: String) -> TokenState {
        TokenState {
            current: token,
            previous: None,
            fallback: false,
            read_at: Instant::now(),
            trouble: None,
        }
    }
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
    fn a_token_file_is_read_again_and_the_token_before_is_accepted_for_a_while() {
        use super::{TOKEN_GRACE, TOKEN_RELOAD, TokenFile};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token\n").unwrap();
        let file = TokenFile::open("x.token_file", &path).unwrap();
        let start = std::time::Instant::now();
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();
        assert!(file.accepts_at(Some(&bearer("first-token")), start));
        std::fs::write(&path, "second-token\n").unwrap();
        // Not read again before it is due.
        assert_eq!(file.current_at(start), "first-token");
        assert!(!file.accepts_at(Some(&bearer("second-token")), start));
        let reread = start + TOKEN_RELOAD;
        assert_eq!(file.current_at(reread), "second-token");
        assert!(file.accepts_at(Some(&bearer("second-token")), reread));
        assert!(
            file.accepts_at(Some(&bearer("first-token")), reread),
            "the token before, within the grace"
        );
        assert!(!file.accepts_at(Some(&bearer("third-token")), reread));
        // A client offers the new token; refused, the one before; refused
        // again, the new one.
        assert_eq!(file.offered_at(reread), "second-token");
        file.refused_at(reread);
        assert_eq!(file.offered_at(reread), "first-token");
        file.refused_at(reread);
        assert_eq!(file.offered_at(reread), "second-token");
        file.refused_at(reread);
        // Both, in turn, with no state between askers.
        assert_eq!(file.to_try_at(reread), ["second-token", "first-token"]);
        // A file that cannot be read leaves the token in force.
        std::fs::remove_file(&path).unwrap();
        let later = reread + TOKEN_GRACE;
        assert_eq!(file.current_at(later), "second-token");
        assert!(file.accepts_at(Some(&bearer("second-token")), later));
        assert!(
            !file.accepts_at(Some(&bearer("first-token")), later),
            "the token before, after the grace"
        );
        assert_eq!(file.offered_at(later), "second-token", "after the grace");
        assert_eq!(file.to_try_at(later), ["second-token"], "after the grace");
        // A fixed token is never read again.
        let fixed = TokenFile::fixed("x", "env-token".into());
        assert_eq!(fixed.current_at(later + TOKEN_RELOAD), "env-token");
    }

    #[test]
    fn a_token_file_others_may_write_is_warned_of() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token-s3cret\n").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        for (mode, warned) in [(0o600, false), (0o644, false), (0o664, true), (0o646, true)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let warning = super::writable_by_others("x.token_file", &path);
            assert_eq!(warning.is_some(), warned, "{mode:o}: {warning:?}");
            if let Some(w) = warning {
                assert!(
                    w.contains(&format!("mode {mode:o}")) && !w.contains("s3cret"),
                    "{w}"
                );
            }
        }
        // A folder others may write, unless it is sticky.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let warning = super::writable_by_others("x.token_file", &path).expect("warned");
        assert!(warning.contains("its folder"), "{warning}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(super::writable_by_others("x.token_file", &path), None);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
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
