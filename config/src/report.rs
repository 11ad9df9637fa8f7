//! What a proxy reports to the control plane (`POST /v1/report`): the table
//! it routes on and what its own probes measure of every region. The
//! control plane uses the first to confirm that every proxy moved to a new
//! epoch, and the second as the proxies' vote on a region's health.

use serde::{Deserialize, Serialize};

/// Longest proxy id accepted.
pub const MAX_PROXY_ID: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyReport {
    /// Stable for the life of the process: host name and process id.
    pub id: String,
    /// The proxy's local region.
    pub region: String,
    /// Epoch and version of the table in force; 0 before the first table.
    pub epoch: u64,
    pub version: u64,
    /// [`RoutingTable::routing_digest`] of the table in force (absent
    /// before the first table, and from proxies of older releases): a
    /// control plane replica that numbers the same table lower takes these
    /// numbers, so that several replicas behind one address agree.
    ///
    /// [`RoutingTable::routing_digest`]: crate::RoutingTable::routing_digest
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<String>,
    /// Every configured region as this proxy measures it.
    pub regions: Vec<RegionHealth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionHealth {
    pub name: String,
    /// Backends the proxy knows in the region.
    pub backends: u32,
    /// Backends passing probes and not ejected.
    pub in_rotation: u32,
}

impl RegionHealth {
    /// The proxy can serve nothing from this region.
    pub fn unhealthy(&self) -> bool {
        self.backends > 0 && self.in_rotation == 0
    }
}

/// A character that shows nothing but can change how text around it
/// shows: zero-width ones, direction marks and overrides, the soft
/// hyphen, the byte-order mark.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

impl ProxyReport {
    /// Parses and checks a report; the message says what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let mut report: ProxyReport =
            serde_json::from_slice(bytes).map_err(|e| format!("not a proxy report: {e}"))?;
        if report.id.is_empty() || report.id.len() > MAX_PROXY_ID {
            return Err(format!(
                "id must be 1 to {MAX_PROXY_ID} characters, got {}",
                report.id.len()
            ));
        }
        // Printed in the runbook commands' timelines: visible text only,
        // with none of the invisible characters (zero-width, direction
        // overrides) that would let one id pass for another there.
        if report.id.chars().any(|c| c.is_control() || invisible(c)) {
            return Err(format!(
                "id must hold no control characters and no invisible ones (zero-width, direction marks), got {:?}",
                report.id
            ));
        }
        if let Some(digest) = &report.routing
            && !crate::table::is_digest(digest)
        {
            return Err(format!(
                "routing must be the table's digest, 16 lowercase hexadecimal digits, got {digest:?}"
            ));
        }
        if report.regions.len() > crate::MAX_REGIONS {
            return Err(format!(
                "at most {} regions, got {}",
                crate::MAX_REGIONS,
                report.regions.len()
            ));
        }
        let names = std::iter::once(&report.region).chain(report.regions.iter().map(|r| &r.name));
        for name in names {
            if !crate::proxy::valid_region_name(name) {
                return Err(format!(
                    "region names are AWS regions such as \"us-east-1\", got {name:?}"
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for r in &report.regions {
            if !seen.insert(r.name.as_str()) {
                return Err(format!("region {:?} is reported twice", r.name));
            }
        }
        // A proxy that counted the two from two readings of its list (as
        // older ones did) may report more in rotation than it knows, when
        // DNS changed between: taken as all of them.
        for r in &mut report.regions {
            r.in_rotation = r.in_rotation.min(r.backends);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_bad_ones_say_why() {
        let r = ProxyReport {
            id: "host/1".into(),
            region: "us-east-1".into(),
            epoch: 3,
            version: 9,
            routing: Some("0123456789abcdef".into()),
            regions: vec![RegionHealth {
                name: "us-east-1".into(),
                backends: 2,
                in_rotation: 0,
            }],
        };
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(ProxyReport::from_json(&json).unwrap(), r);
        assert!(r.regions[0].unhealthy());
        // `r` changed by `change`, as the control plane reads it.
        let read = |change: &dyn Fn(&mut ProxyReport)| {
            let mut changed = r.clone();
            change(&mut changed);
            ProxyReport::from_json(&serde_json::to_vec(&changed).unwrap())
        };
        let said = |change: &dyn Fn(&mut ProxyReport)| read(change).unwrap_err();
        assert!(said(&|r| r.id.clear()).contains("id must be"));
        assert!(said(&|r| r.region = "Mars".into()).contains("\"Mars\""));
        assert!(ProxyReport::from_json(b"{").is_err());
        for digest in [
            "",
            "0123456789abcde",
            "0123456789abcdefa",
            "0123456789abcdeg",
            "0123456789ABCDEF",
        ] {
            assert!(
                said(&|r| r.routing = Some(digest.into())).contains("16 lowercase hexadecimal"),
                "{digest:?}"
            );
        }
        assert_eq!(read(&|r| r.routing = None).unwrap().routing, None);
        // A report that contradicts itself.
        assert!(said(&|r| r.regions.push(r.regions[0].clone())).contains("reported twice"));
        assert!(said(&|r| r.id = "host\n\u{1b}[2J/1".into()).contains("no control characters"));
        for hidden in ["proxy-a\u{202E}1", "proxy\u{200B}-a", "\u{FEFF}proxy-a"] {
            assert!(
                said(&|r| r.id = hidden.into()).contains("no invisible ones"),
                "{hidden:?}"
            );
        }
        let taken = read(&|r| r.regions[0].in_rotation = 3).unwrap();
        let mut all = r.clone();
        all.regions[0].in_rotation = 2;
        assert_eq!(taken, all, "more in rotation than known: all of them");
    }
}
