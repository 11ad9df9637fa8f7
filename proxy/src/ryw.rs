//! Read-your-writes. A write's answer carries a cookie holding the time
//! until which its client's reads go to the primary region, which has the
//! write before the replicas do (Aurora's replication lag is under a second,
//! the window defaults to 5 s). The value is that time in Unix
//! milliseconds: wall-clock time, so that a proxy in another region reads a
//! token it did not write the same way. It is no secret and needs none: a
//! client that forges one sends its own reads to the primary, which
//! `x-edgeroute-consistency: strong` lets it do anyway.

use crate::fields::Fields;
use cookie::{Cookie, SameSite};
use http::HeaderValue;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The configured window and cookie, when the window is not zero.
#[derive(Debug, Clone)]
pub struct ReadYourWrites {
    window: Duration,
    cookie: String,
}

/// Milliseconds since the Unix epoch at `t` (0 before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ReadYourWrites {
    pub fn new(cfg: &edgeroute_config::ReadYourWrites) -> Option<Self> {
        (!cfg.window.is_zero()).then(|| ReadYourWrites {
            window: cfg.window,
            cookie: cfg.cookie.clone(),
        })
    }

    /// The `Set-Cookie` value for a write answered at `now`.
    pub fn set_cookie(&self, now: SystemTime) -> HeaderValue {
        let until =
            unix_ms(now).saturating_add(u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX));
        let cookie = Cookie::build((self.cookie.as_str(), until.to_string()))
            .path("/")
            // Whole seconds, rounded up: the browser keeps it no shorter
            // than the window.
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(self.window.as_secs() + u64::from(self.window.subsec_nanos() > 0))
                    .unwrap_or(i64::MAX),
            ))
            .http_only(true)
            .same_site(SameSite::Lax)
            .build();
        // A token name and digits: always a valid field value.
        HeaderValue::try_from(cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
    }

    /// Whether the request's `Cookie` fields hold a token still fresh at
    /// `now`. Malformed cookies are skipped, as a browser's neighbours'
    /// may be.
    pub fn fresh(&self, fields: &Fields, now: SystemTime) -> bool {
        let now = unix_ms(now);
        fields.get_all("cookie").any(|value| {
            let Ok(text) = std::str::from_utf8(value) else {
                return false;
            };
            Cookie::split_parse(text).flatten().any(|c| {
                c.name() == self.cookie && c.value().parse::<u64>().is_ok_and(|until| now < until)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ReadYourWrites;
    use crate::fields::Fields;
    use proptest::prelude::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn ryw(window_ms: u64) -> ReadYourWrites {
        ReadYourWrites::new(&edgeroute_config::ReadYourWrites {
            window: Duration::from_millis(window_ms),
            cookie: "edgeroute-ryw".into(),
        })
        .expect("a window")
    }

    fn with_cookie(value: &str) -> Fields {
        let mut fields = Fields::default();
        fields.push(
            http::HeaderName::from_static("cookie"),
            http::HeaderValue::from_str(value).unwrap(),
        );
        fields
    }

    /// The `name=value` of a `Set-Cookie` value, as a browser sends it back.
    fn sent_back(set_cookie: &http::HeaderValue) -> String {
        set_cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn the_cookie_names_its_time_and_keeps_for_the_window() {
        let at = UNIX_EPOCH + Duration::from_millis(1_000_000);
        let set = ryw(1500).set_cookie(at);
        let text = set.to_str().unwrap();
        assert!(text.starts_with("edgeroute-ryw=1001500;"), "{text}");
        for attribute in ["Path=/", "Max-Age=2", "HttpOnly", "SameSite=Lax"] {
            assert!(text.contains(attribute), "{attribute} in {text}");
        }
    }

    #[test]
    fn other_and_malformed_cookies_are_no_token() {
        let r = ryw(5000);
        let now = SystemTime::now();
        let mine = sent_back(&r.set_cookie(now));
        assert!(r.fresh(&with_cookie(&format!("a=1; {mine}; b=2")), now));
        assert!(r.fresh(&with_cookie(&format!("bad; ;=x; {mine}")), now));
        for other in [
            "",
            "a=1",
            "edgeroute-ryw=",
            "edgeroute-ryw=soon",
            "edgeroute-ryw2=99999999999999",
            "=x",
        ] {
            assert!(!r.fresh(&with_cookie(other), now), "{other:?}");
        }
        assert!(!r.fresh(&Fields::default(), now));
    }

    proptest! {
        /// A token minted at `t` sends reads to the primary exactly while
        /// less than the window has passed.
        #[test]
        fn a_token_is_fresh_for_its_window_only(
            t in 0u64..4_000_000_000_000,
            window in 1u64..600_000,
            later in 0u64..1_200_000,
        ) {
            let r = ryw(window);
            let minted = UNIX_EPOCH + Duration::from_millis(t);
            let fields = with_cookie(&sent_back(&r.set_cookie(minted)));
            let read = minted + Duration::from_millis(later);
            prop_assert_eq!(r.fresh(&fields, read), later < window);
        }
    }
}
