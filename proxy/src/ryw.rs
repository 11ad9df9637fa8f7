//! Read-your-writes. A write's answer carries a cookie holding the time
//! until which its client's reads go to the primary region, which has the
//! write before the replicas do (Aurora's replication lag is under a second,
//! the window defaults to 5 s). The value is that time in Unix
//! milliseconds: wall-clock time, so that a proxy in another region reads a
//! token it did not write the same way. It is no secret and needs none: a
//! client that forges one sends its own reads to the primary, which
//! `x-edgeroute-consistency: strong` lets it do anyway. A token further
//! ahead than the window (and a second for clocks that differ) was not
//! written by a proxy, and is no token.

use crate::fields::Fields;
use cookie::{Cookie, SameSite};
use http::HeaderValue;
use std::time::{SystemTime, UNIX_EPOCH};

/// The configured window and cookie, when the window is not zero.
#[derive(Debug, Clone)]
pub struct ReadYourWrites {
    window_ms: u64,
    /// `name=`, as a `Cookie` field carries it and `Set-Cookie` begins.
    name_eq: String,
    /// What follows the value in `Set-Cookie`: its attributes.
    attributes: String,
}

/// How far apart the clocks of proxies reading each other's tokens may be.
const CLOCK_SKEW_MS: u64 = 1_000;

/// Milliseconds since the Unix epoch at `t` (0 before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ReadYourWrites {
    pub fn new(cfg: &edgeroute_config::ReadYourWrites) -> Option<Self> {
        if cfg.window.is_zero() {
            return None;
        }
        // Whole seconds, rounded up: the browser keeps it no shorter than
        // the window.
        let max_age = cfg.window.as_secs() + u64::from(cfg.window.subsec_nanos() > 0);
        let template = Cookie::build((cfg.cookie.as_str(), "0"))
            .path("/")
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(max_age).unwrap_or(i64::MAX),
            ))
            .http_only(true)
            .same_site(SameSite::Lax)
            .build()
            .to_string();
        let attributes = template
            .split_once(';')
            .map_or(String::new(), |(_, rest)| format!(";{rest}"));
        Some(ReadYourWrites {
            window_ms: u64::try_from(cfg.window.as_millis()).unwrap_or(u64::MAX),
            name_eq: format!("{}=", cfg.cookie),
            attributes,
        })
    }

    /// The `Set-Cookie` value for a write answered at `now`.
    pub fn set_cookie(&self, now: SystemTime) -> HeaderValue {
        let until = unix_ms(now).saturating_add(self.window_ms);
        let text = format!("{}{until}{}", self.name_eq, self.attributes);
        // A token name, digits and fixed attributes: always a valid value.
        HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static(""))
    }

    /// Whether the request's `Cookie` fields hold a token still fresh at
    /// `now` (read only when a token is found). This runs on reads that
    /// carry cookies, which through a CDN are most, and browsers' cookies
    /// run to kilobytes: the token is found by a byte search for its
    /// name, not by parsing every cookie.
    pub fn fresh(&self, fields: &Fields, now: impl FnOnce() -> SystemTime) -> bool {
        let Some(until) = fields.get_all("cookie").find_map(|v| self.token(v)) else {
            return false;
        };
        let now = unix_ms(now());
        now < until && until - now <= self.window_ms.saturating_add(CLOCK_SKEW_MS)
    }

    /// The token's time in one `Cookie` field, if it holds a well-formed
    /// one: `name=digits` as a whole cookie of the list.
    fn token(&self, field: &[u8]) -> Option<u64> {
        memchr::memmem::find_iter(field, self.name_eq.as_bytes()).find_map(|at| {
            let starts_cookie = at == 0 || matches!(field[at - 1], b';' | b' ' | b'\t');
            let value = &field[at + self.name_eq.len()..];
            let value = &value[..memchr::memchr(b';', value).unwrap_or(value.len())];
            let value = value.trim_ascii();
            (starts_cookie && !value.is_empty() && value.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(value).ok()?.parse().ok())
                .flatten()
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
        assert!(r.fresh(&with_cookie(&format!("a=1; {mine}; b=2")), || now));
        assert!(r.fresh(&with_cookie(&format!("bad; ;=x; {mine}")), || now));
        for other in [
            "",
            "a=1",
            "edgeroute-ryw=",
            "edgeroute-ryw=soon",
            "edgeroute-ryw2=99999999999999",
            "=x",
        ] {
            assert!(!r.fresh(&with_cookie(other), || now), "{other:?}");
        }
        assert!(!r.fresh(&Fields::default(), || now));
    }

    proptest! {
        /// The byte search finds what a cookie parser finds: the first
        /// cookie of the name whose value is a number.
        #[test]
        fn the_token_search_agrees_with_a_cookie_parser(
            cookies in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("edgeroute-ryw"),
                        Just("xedgeroute-ryw"),
                        Just("edgeroute-ryw2"),
                        Just("a"),
                    ],
                    "[0-9a-z=]{0,22}",
                ),
                0..5,
            ),
        ) {
            let r = ryw(5000);
            let field = cookies
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ");
            let parsed = cookie::Cookie::split_parse(field.as_str())
                .flatten()
                .filter(|c| c.name() == "edgeroute-ryw")
                .find_map(|c| {
                    let v = c.value();
                    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| v.parse::<u64>().ok())
                        .flatten()
                });
            prop_assert_eq!(r.token(field.as_bytes()), parsed, "{}", field);
        }

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
            prop_assert_eq!(r.fresh(&fields, || read), later < window);
        }

        /// A token further ahead than the window and a second was not
        /// written by a proxy: it sends nothing to the primary.
        #[test]
        fn a_token_from_the_future_is_no_token(
            now in 0u64..4_000_000_000_000,
            window in 1u64..600_000,
            ahead in 0u64..1_200_000,
        ) {
            let r = ryw(window);
            let at = UNIX_EPOCH + Duration::from_millis(now);
            let fields = with_cookie(&format!("edgeroute-ryw={}", now + ahead));
            prop_assert_eq!(r.fresh(&fields, || at), ahead > 0 && ahead <= window + 1_000);
        }
    }
}
