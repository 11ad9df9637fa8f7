//! `Via` (RFC 9110 §7.6.3): the entry the proxy adds to each request it
//! forwards, and how many times a request has passed this region's proxies
//! already, which bounds a loop between regions.
//!
//! A region's proxy may forward a request to another region whose backends
//! are reached through that region's proxy (its ALB, say). While two
//! regions' tables disagree about where a request belongs, each would send
//! it to the other; the `Via` entries each pass adds show the loop, and the
//! proxy refuses a request that has passed its region's proxies
//! [`MAX_PASSES`] times. A request may legitimately come back through the
//! same region a few times (a backend calling another service behind the
//! same proxies and passing the fields on), so one pass is no loop.

use http::{HeaderValue, Version};

use crate::fields::Fields;

/// Passes through this region's proxies after which a request is refused
/// as a loop.
pub const MAX_PASSES: usize = 10;

/// The proxy's `Via` entries, one per protocol a client may speak, and the
/// name they give it: `edgeroute-<local region>`.
#[derive(Debug, Clone)]
pub struct Via {
    name: String,
    http10: HeaderValue,
    http11: HeaderValue,
    http2: HeaderValue,
}

impl Via {
    /// The entries of a proxy in `region` (a region name: lower-case
    /// letters, digits and `-`, a token as `Via` asks).
    pub fn new(region: &str) -> Self {
        let name = format!("edgeroute-{region}");
        let entry = |protocol: &str| {
            HeaderValue::try_from(format!("{protocol} {name}"))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 edgeroute"))
        };
        Via {
            http10: entry("1.0"),
            http11: entry("1.1"),
            http2: entry("2"),
            name,
        }
    }

    /// The name this proxy gives itself in its entries.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry for a request received over `version`: `Via` names the
    /// protocol the proxy received the request with.
    pub fn entry(&self, version: Version) -> &HeaderValue {
        match version {
            Version::HTTP_09 | Version::HTTP_10 => &self.http10,
            Version::HTTP_2 | Version::HTTP_3 => &self.http2,
            _ => &self.http11,
        }
    }

    /// How many entries of the request's `Via` fields name this proxy's
    /// region: the passes through it so far. Entries are read as
    /// `protocol name[:port] [comment]`; names compare whatever their case.
    pub fn passes(&self, fields: &Fields) -> usize {
        fields
            .get_all("via")
            .filter_map(|value| std::str::from_utf8(value).ok())
            .flat_map(crate::h1::list_items)
            .filter(|entry| {
                let mut words = entry.split_ascii_whitespace();
                let _protocol = words.next();
                words.next().is_some_and(|by| {
                    let host = by.rsplit_once(':').map_or(by, |(host, _port)| host);
                    host.eq_ignore_ascii_case(&self.name)
                })
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(lines: &[&str]) -> Fields {
        let mut fields = Fields::with_capacity(lines.len());
        for line in lines {
            fields.push(
                http::HeaderName::from_static("via"),
                HeaderValue::from_str(line).unwrap(),
            );
        }
        fields
    }

    #[test]
    fn the_entry_names_the_protocol_received_and_the_region() {
        let via = Via::new("eu-west-1");
        assert_eq!(via.entry(Version::HTTP_11), "1.1 edgeroute-eu-west-1");
        assert_eq!(via.entry(Version::HTTP_10), "1.0 edgeroute-eu-west-1");
        assert_eq!(via.entry(Version::HTTP_2), "2 edgeroute-eu-west-1");
        assert_eq!(via.name(), "edgeroute-eu-west-1");
    }

    #[test]
    fn passes_count_this_regions_entries_only() {
        let via = Via::new("us-east-1");
        let seen = fields(&[
            "1.1 abc.cloudfront.net (CloudFront), 1.1 edgeroute-us-east-1",
            "2 edgeroute-eu-west-1, HTTP/1.1 EDGEROUTE-US-EAST-1:8080 (a comment)",
            "1.1 edgeroute-us-east-10, 1.1 edgeroute-us-east-1x, edgeroute-us-east-1",
        ]);
        assert_eq!(via.passes(&seen), 2);
        assert_eq!(via.passes(&fields(&[])), 0);
    }

    proptest! {
        /// Whatever other entries surround them, and however the entries
        /// are spread over lines, this region's entries are counted once
        /// each.
        #[test]
        fn passes_are_counted_across_lines_and_neighbours(
            entries in proptest::collection::vec(
                (any::<bool>(), prop_oneof![
                    Just("1.1 edgeroute-eu-west-1"),
                    Just("1.0 proxy.example:3128"),
                    Just("2 abc.cloudfront.net (CloudFront)"),
                    Just("1.1 edgeroute-us-east-1-x"),
                ]),
                0..20,
            ),
            split in 1usize..5,
        ) {
            let via = Via::new("us-east-1");
            let own = via.entry(Version::HTTP_11).to_str().unwrap().to_owned();
            let entries: Vec<String> = entries
                .iter()
                .map(|(ours, other)| if *ours { own.clone() } else { (*other).to_owned() })
                .collect();
            let lines: Vec<String> = entries.chunks(split).map(|c| c.join(", ")).collect();
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let expected = entries.iter().filter(|e| **e == own).count();
            prop_assert_eq!(via.passes(&fields(&lines)), expected);
        }
    }
}
