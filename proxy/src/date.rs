//! The `Date` field of the proxy's answers: its own, and a backend's that
//! came without one (RFC 9110 §6.6.1: a recipient with a clock adds it to
//! a response it forwards).

use http::HeaderValue;
use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

thread_local! {
    /// The second it was made for (Unix seconds), and the value.
    static NOW: RefCell<(u64, HeaderValue)> = const {
        RefCell::new((0, HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")))
    };
}

/// Now, as a `Date` field's value (`Sun, 06 Nov 1994 08:49:37 GMT`):
/// written once a second on each thread.
pub fn now() -> HeaderValue {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    NOW.with_borrow_mut(|(at, value)| {
        if *at != secs {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            if let Ok(made) = HeaderValue::from_str(&text) {
                *value = made;
                *at = secs;
            }
        }
        value.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_now_in_imf_fixdate() {
        let before = SystemTime::now() - Duration::from_secs(1);
        let value = now();
        let text = value.to_str().unwrap();
        assert_eq!(text.len(), 29, "{text}");
        assert!(text.ends_with(" GMT"), "{text}");
        let parsed = httpdate::parse_http_date(text).unwrap();
        assert!(parsed >= before && parsed <= SystemTime::now(), "{text}");
    }
}
