//! The routing table: the one document that tells every proxy where writes
//! go and which regions may serve reads.
//!
//! It is produced by the control plane (or written by hand for a file
//! source) and carries an `epoch`, raised whenever the primary region
//! changes, and a `version`, raised on every change. A proxy admits a table
//! only if it is valid on its own, names only regions the proxy knows, and
//! does not go back in time; otherwise the table is rejected whole.
//!
//! Unknown fields are ignored, so a newer control plane can add fields
//! without older proxies rejecting its tables.

use crate::MAX_REGIONS;
use crate::errors::FieldErrors;
use crate::values;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::path::Path;

/// The largest table file or control-plane answer taken.
pub const MAX_TABLE_BYTES: u64 = 1024 * 1024;

/// Whether a region takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionState {
    /// Serves reads (and writes, if it is the primary).
    Active,
    /// Being emptied: reads go elsewhere when any other region can serve;
    /// writes still reach it while it holds the primary.
    Draining,
    /// Takes no traffic.
    Down,
}

impl RegionState {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Active => "active",
            RegionState::Draining => "draining",
            RegionState::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionEntry {
    pub name: String,
    pub state: RegionState,
    /// Route 53 style weight, 0-255. A region with weight 0 serves reads only
    /// as a last resort, like a draining one.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Aurora replication lag of this region's replica, in milliseconds,
    /// when the source knows it. Informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_lag_ms: Option<u64>,
}

fn default_weight() -> u32 {
    100
}

/// A routing table, as written in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    /// Raised whenever `primary_region` changes; never goes back.
    pub epoch: u64,
    /// Raised on every change to the table.
    pub version: u64,
    /// The region that holds the database writer; `null` when none is
    /// known. Required, `null` included: a table that misspells the key
    /// (unknown keys are ignored, for newer control planes) would
    /// otherwise refuse every write without a word.
    #[serde(deserialize_with = "Option::deserialize")]
    pub primary_region: Option<String>,
    /// While true, writes are refused with 503 and `Retry-After`.
    /// Required, as `primary_region` is: a misspelt key would otherwise
    /// let writes through during a failover without a word.
    pub failover_in_progress: bool,
    pub regions: Vec<RegionEntry>,
}

/// JSON text without the byte-order mark an editor may have put first.
pub(crate) fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// A JSON document (a byte-order mark first is skipped) as a `T`, or what
/// is wrong with it, led by the field at fault when there is one
/// (`regions[0].state: unknown variant ...`).
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut json = serde_json::Deserializer::from_slice(without_bom(bytes));
    let parsed: T = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        // `?` stands for a place the parser had not named yet (a syntax
        // error before a key): the path up to it is what is known.
        let path = e.path().to_string();
        let path = path.trim_end_matches('?').trim_end_matches('.');
        if path.is_empty() {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    json.end().map_err(|e| e.to_string())?;
    Ok(parsed)
}

/// Whether a document that read as a table or topology is written as one:
/// an object, whose `regions` are objects. (serde takes a struct written
/// as the array of its fields' values too, which no document of these
/// is.) The error names the first place that is an array.
pub(crate) fn objects_as_documented(bytes: &[u8]) -> Result<(), String> {
    let doc: serde_json::Value =
        serde_json::from_slice(without_bom(bytes)).map_err(|e| e.to_string())?;
    let not_object = |v: &serde_json::Value| !v.is_object();
    if not_object(&doc) {
        return Err("expected a JSON object with named fields, got an array".into());
    }
    let regions = doc["regions"].as_array().map_or(&[][..], Vec::as_slice);
    match regions.iter().position(not_object) {
        Some(i) => Err(format!(
            "regions[{i}]: expected an object with named fields, got an array"
        )),
        None => Ok(()),
    }
}

/// Why a table was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not JSON, or not a routing table.
    Malformed(String),
    /// Fields with bad values, each with its path.
    Invalid(FieldErrors),
    /// Names a region the proxy has no backends for.
    UnknownRegion(String),
    /// Lower epoch than the table in force: would undo a failover.
    StaleEpoch { got: u64, current: u64 },
    /// Same epoch, lower version, or same version with different content.
    StaleVersion { got: u64, current: u64 },
    /// The primary moved but the epoch did not rise.
    PrimaryChangedWithoutEpoch {
        from: Option<String>,
        to: Option<String>,
    },
}

impl Rejection {
    /// Every [`Self::reason`], for metrics that show each from the start.
    pub const REASONS: [&'static str; 6] = [
        "malformed",
        "invalid",
        "unknown_region",
        "stale_epoch",
        "stale_version",
        "primary_changed_without_epoch",
    ];

    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::Invalid(_) => "invalid",
            Rejection::UnknownRegion(_) => "unknown_region",
            Rejection::StaleEpoch { .. } => "stale_epoch",
            Rejection::StaleVersion { .. } => "stale_version",
            Rejection::PrimaryChangedWithoutEpoch { .. } => "primary_changed_without_epoch",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed(m) => write!(f, "not a routing table: {m}"),
            Rejection::Invalid(errs) => write!(
                f,
                "invalid routing table: {}",
                errs.to_string().replace('\n', "; ")
            ),
            Rejection::UnknownRegion(r) => write!(
                f,
                "the table names region {r:?}, which this proxy's config does not list; add it to the config or remove it from the table"
            ),
            Rejection::StaleEpoch { got, current } => write!(
                f,
                "epoch {got} is lower than the epoch in force ({current}); a proxy never goes back to an older epoch"
            ),
            Rejection::StaleVersion { got, current } => write!(
                f,
                "version {got} does not advance on the version in force ({current}) within the same epoch; raise version on every change"
            ),
            Rejection::PrimaryChangedWithoutEpoch { from, to } => {
                let name = |r: &Option<String>| {
                    r.as_deref().map_or("none".to_owned(), |r| format!("{r:?}"))
                };
                write!(
                    f,
                    "primary_region changed from {} to {} without raising epoch; raise epoch whenever the primary moves",
                    name(from),
                    name(to)
                )
            }
        }
    }
}

/// Whether `text` is written as [`RoutingTable::routing_digest`] writes
/// a digest: 16 lowercase hexadecimal digits.
pub fn is_digest(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a table says, its epoch and version aside (see
/// [`RoutingTable::routing_digest`]).
#[derive(PartialEq, Serialize)]
struct Said<'a> {
    primary_region: Option<&'a str>,
    failover_in_progress: bool,
    regions: Vec<&'a RegionEntry>,
}

/// What admitting a table did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A new table to put in force.
    Accepted,
    /// The table in force itself (its regions in any order); nothing to
    /// do.
    Unchanged,
    /// Says what the table in force says, under lower numbers (another
    /// control plane replica's numbering of it); nothing to do, and the
    /// table in force keeps its numbers.
    LowerNumbering,
}

impl RoutingTable {
    /// Parse and check a table on its own (no knowledge of the proxy).
    pub fn from_json(bytes: &[u8]) -> Result<Self, Rejection> {
        let table: RoutingTable = from_json(bytes).map_err(|why| {
            // A required key missing is most often one misspelt: name
            // the keys no field took.
            // At most 20 are named, as a rejection names at most 20 fields.
            let (unknown, _) = Self::keys_ignored(bytes);
            match unknown.len() {
                0 => Rejection::Malformed(why),
                1..=20 => Rejection::Malformed(format!(
                    "{why} (keys no field takes: {})",
                    unknown.join(", ")
                )),
                n => Rejection::Malformed(format!(
                    "{why} (keys no field takes: {}, and {} more)",
                    unknown[..20].join(", "),
                    n - 20
                )),
            }
        })?;
        objects_as_documented(bytes).map_err(Rejection::Malformed)?;
        table.validate().map_err(Rejection::Invalid)?;
        Ok(table)
    }

    /// Reads a table file: a regular file of at most [`MAX_TABLE_BYTES`]
    /// (so a path to a pipe or a device cannot hang or exhaust the reader).
    pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
        crate::values::read_regular(
            path,
            MAX_TABLE_BYTES,
            &format!("a routing table of {MAX_REGIONS} regions takes a few KiB"),
        )
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => std::io::Error::new(
                e.kind(),
                format!("{e}; table.path must name the routing table's JSON file"),
            ),
            _ => e,
        })
    }

    /// Field-level checks: names, weights, the primary is one of the regions,
    /// epoch and version within a signed 64-bit integer (what fencing columns
    /// and the metrics hold).
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut e = FieldErrors::default();
        for (field, value) in [("epoch", self.epoch), ("version", self.version)] {
            if value > i64::MAX as u64 {
                e.push(
                    field,
                    format!("must be at most {} (2^63 - 1), got {value}", i64::MAX),
                );
            }
        }
        if !values::region_count(&mut e, self.regions.len()) {
            return Err(e);
        }
        let mut names = HashSet::new();
        for (i, r) in self.regions.iter().enumerate() {
            values::region_entry(&mut e, i, &r.name, Some(r.weight), &mut names);
        }
        if let Some(p) = &self.primary_region
            && !self.regions.iter().any(|r| &r.name == p)
        {
            e.push(
                "primary_region",
                format!("must be one of the table's regions, got {p:?}"),
            );
        }
        e.finish(|| ())
    }

    /// The keys of a table's JSON that no field takes, by path
    /// (`regions[0].wieght`): a table ignores them, so that a newer
    /// control plane's can carry more, but in a table written by hand each
    /// is more likely a misspelling (`check` warns of them). Empty for
    /// text that is no table.
    pub fn unknown_keys(bytes: &[u8]) -> Vec<String> {
        match Self::keys_ignored(bytes) {
            (unknown, true) => unknown,
            (_, false) => Vec::new(),
        }
    }

    /// The keys no field takes, as far as the text was read, and whether
    /// it read as a table.
    fn keys_ignored(bytes: &[u8]) -> (Vec<String>, bool) {
        let mut unknown = Vec::new();
        let mut json = serde_json::Deserializer::from_slice(without_bom(bytes));
        let read: Result<RoutingTable, _> = serde_ignored::deserialize(&mut json, |path| {
            // `regions.0.x` as the table's field paths are written: `regions[0].x`.
            let mut named = String::new();
            for part in path.to_string().split('.') {
                if !named.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                    named.push_str(&format!("[{part}]"));
                } else {
                    if !named.is_empty() {
                        named.push('.');
                    }
                    named.push_str(part);
                }
            }
            unknown.push(named);
        });
        let read = read.is_ok();
        (unknown, read)
    }

    /// Where writes go, in a few words: the primary, and whether writes
    /// are held (for `check`'s summaries).
    pub fn writes_summary(&self) -> String {
        format!(
            "primary {}{}",
            self.primary_region.as_deref().unwrap_or("none"),
            if self.failover_in_progress {
                ", failover in progress: writes held"
            } else {
                ""
            }
        )
    }

    /// The same table, whatever the order its regions are listed in (a
    /// table written by hand and reordered says nothing new).
    fn same_content(&self, other: &RoutingTable) -> bool {
        (self.epoch, self.version) == (other.epoch, other.version) && self.said() == other.said()
    }

    /// What the table says, its epoch and version aside: the primary,
    /// whether writes are held, and the regions in name order.
    fn said(&self) -> Said<'_> {
        let mut regions: Vec<&RegionEntry> = self.regions.iter().collect();
        regions.sort_by(|a, b| a.name.cmp(&b.name));
        Said {
            primary_region: self.primary_region.as_deref(),
            failover_in_progress: self.failover_in_progress,
            regions,
        }
    }

    /// Whether `other` routes exactly as this table does, whatever its
    /// epoch and version: the same primary, writes held or not, and the
    /// same regions in the same states at the same weights, in any order.
    /// Replication lags, which the proxy shows but does not route by, may
    /// differ.
    pub fn routes_as(&self, other: &RoutingTable) -> bool {
        let (a, b) = (self.said(), other.said());
        fn routed<'a>(r: &&'a RegionEntry) -> (&'a str, RegionState, u32) {
            (&r.name, r.state, r.weight)
        }
        (a.primary_region, a.failover_in_progress) == (b.primary_region, b.failover_in_progress)
            && a.regions
                .iter()
                .map(routed)
                .eq(b.regions.iter().map(routed))
    }

    /// A digest of what the table says, its epoch and version aside (lags
    /// included; regions in any order): equal for two tables exactly when
    /// they say the same, but for a collision of SHA-256's first 64 bits.
    /// A proxy names it with the table it routes on, so that a control
    /// plane replica can tell a table of another replica's numbering that
    /// says what its own says; 16 lowercase hexadecimal digits.
    pub fn routing_digest(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(&self.said()).unwrap_or_default();
        sha2::Sha256::digest(&json)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn region(&self, name: &str) -> Option<&RegionEntry> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Decide whether `self` may replace `current` on a proxy that knows
    /// `known_regions`. `self` must already have passed [`validate`].
    ///
    /// [`validate`]: RoutingTable::validate
    pub fn admit<'a>(
        &self,
        current: Option<&RoutingTable>,
        known_regions: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<Admission, Rejection> {
        for r in &self.regions {
            if !known_regions.clone().into_iter().any(|k| k == r.name) {
                return Err(Rejection::UnknownRegion(r.name.clone()));
            }
        }
        let Some(cur) = current else {
            return Ok(Admission::Accepted);
        };
        if self.same_content(cur) {
            return Ok(Admission::Unchanged);
        }
        // Nothing new, under lower numbers than those in force (the same
        // table as another control plane replica numbers it, say, maybe
        // with lags read a moment apart): the table in force stays, and
        // nothing is refused.
        if self.routes_as(cur) && (self.epoch, self.version) < (cur.epoch, cur.version) {
            return Ok(Admission::LowerNumbering);
        }
        if self.epoch < cur.epoch {
            return Err(Rejection::StaleEpoch {
                got: self.epoch,
                current: cur.epoch,
            });
        }
        if self.epoch == cur.epoch {
            if self.primary_region != cur.primary_region {
                return Err(Rejection::PrimaryChangedWithoutEpoch {
                    from: cur.primary_region.clone(),
                    to: self.primary_region.clone(),
                });
            }
            if self.version <= cur.version {
                return Err(Rejection::StaleVersion {
                    got: self.version,
                    current: cur.version,
                });
            }
        }
        Ok(Admission::Accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_rejection_reason_is_listed() {
        let all = [
            Rejection::Malformed(String::new()),
            Rejection::Invalid(crate::FieldErrors::default()),
            Rejection::UnknownRegion(String::new()),
            Rejection::StaleEpoch { got: 1, current: 2 },
            Rejection::StaleVersion { got: 1, current: 2 },
            Rejection::PrimaryChangedWithoutEpoch {
                from: None,
                to: None,
            },
        ];
        let reasons: Vec<&str> = all.iter().map(Rejection::reason).collect();
        assert_eq!(reasons, Rejection::REASONS);
    }

    const KNOWN: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];

    fn table(epoch: u64, version: u64, primary: Option<&str>) -> RoutingTable {
        RoutingTable {
            epoch,
            version,
            primary_region: primary.map(str::to_owned),
            failover_in_progress: false,
            regions: KNOWN
                .iter()
                .map(|n| RegionEntry {
                    name: (*n).into(),
                    state: RegionState::Active,
                    weight: 100,
                    replication_lag_ms: None,
                })
                .collect(),
        }
    }

    #[test]
    fn primary_region_is_required_null_included_and_a_bom_is_skipped() {
        let regions = r#""regions":[{"name":"us-east-1","state":"active"}]"#;
        let missing = format!(
            r#"{{"epoch":1,"version":1,"primary":"us-east-1","failover_in_progress":false,{regions}}}"#
        );
        match RoutingTable::from_json(missing.as_bytes()) {
            Err(Rejection::Malformed(e)) => assert_eq!(
                e,
                "missing field `primary_region` at line 1 column 124 (keys no field takes: primary)"
            ),
            other => panic!("{other:?}"),
        }
        // So is failover_in_progress: misspelt, writes would go on
        // during a failover.
        let misspelt = format!(
            r#"{{"epoch":1,"version":1,"primary_region":null,"failover_in_progres":true,{regions}}}"#
        );
        match RoutingTable::from_json(misspelt.as_bytes()) {
            Err(Rejection::Malformed(e)) => assert!(
                e.starts_with("missing field `failover_in_progress`")
                    && e.ends_with("(keys no field takes: failover_in_progres)"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        let regions = format!(r#""failover_in_progress":false,{regions}"#);
        let null = format!(r#"{{"epoch":1,"version":1,"primary_region":null,{regions}}}"#);
        assert_eq!(
            RoutingTable::from_json(null.as_bytes())
                .unwrap()
                .primary_region,
            None
        );
        let named = format!(r#"{{"epoch":1,"version":1,"primary_region":"us-east-1",{regions}}}"#);
        let with_bom = [&b"\xEF\xBB\xBF"[..], named.as_bytes()].concat();
        assert_eq!(
            RoutingTable::from_json(&with_bom)
                .unwrap()
                .primary_region
                .as_deref(),
            Some("us-east-1")
        );
    }

    #[test]
    fn epochs_and_versions_fit_a_signed_64_bit_integer() {
        let mut t = table(i64::MAX as u64, i64::MAX as u64, Some("us-east-1"));
        assert_eq!(t.validate(), Ok(()));
        t.epoch += 1;
        t.version = u64::MAX;
        let e = t.validate().unwrap_err().to_string();
        assert!(
            e.contains("epoch: must be at most 9223372036854775807")
                && e.contains("version: must be at most"),
            "{e}"
        );
    }

    #[test]
    fn too_many_regions_are_one_error_not_one_per_region() {
        let mut t = table(1, 1, None);
        t.regions = (0..10_000)
            .map(|i| RegionEntry {
                name: format!("bad name {i}"),
                state: RegionState::Active,
                weight: 100,
                replication_lag_ms: None,
            })
            .collect();
        let e = t.validate().unwrap_err();
        assert_eq!(e.len(), 1, "{e}");
        assert!(e.to_string().contains("at most 64 regions"), "{e}");
    }

    #[test]
    fn a_table_file_is_a_regular_file_of_at_most_a_mebibyte() {
        let dir = tempfile::tempdir().unwrap();
        let err = RoutingTable::read_file(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let path = dir.path().join("table.json");
        std::fs::write(&path, vec![b' '; MAX_TABLE_BYTES as usize]).unwrap();
        assert_eq!(
            RoutingTable::read_file(&path).unwrap().len() as u64,
            MAX_TABLE_BYTES
        );
        std::fs::write(&path, vec![b' '; MAX_TABLE_BYTES as usize + 1]).unwrap();
        let err = RoutingTable::read_file(&path).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn parses_the_documented_format_and_ignores_unknown_fields() {
        let t = RoutingTable::from_json(
            br#"{"epoch": 3, "version": 17, "primary_region": "us-east-1", "failover_in_progress": false,
                 "generated_by": "a newer control plane",
                 "regions": [{"name": "us-east-1", "state": "active", "weight": 100},
                             {"name": "eu-west-1", "state": "draining", "weight": 0, "replication_lag_ms": 120},
                             {"name": "ap-southeast-1", "state": "down"}]}"#,
        )
        .expect("valid table");
        assert_eq!(t.epoch, 3);
        assert_eq!(
            t.region("eu-west-1").map(|r| r.state),
            Some(RegionState::Draining)
        );
        assert_eq!(t.region("ap-southeast-1").map(|r| r.weight), Some(100));
    }

    #[test]
    fn malformed_and_invalid_tables_say_why() {
        assert!(matches!(
            RoutingTable::from_json(b"{not json"),
            Err(Rejection::Malformed(_))
        ));
        // The field at fault leads the message.
        let said = |json: &[u8]| match RoutingTable::from_json(json) {
            Err(Rejection::Malformed(why)) => why,
            other => panic!("{other:?}"),
        };
        let why = said(br#"{"epoch": 1, "version": 1, "primary_region": null, "failover_in_progress": false, "regions": [{"name": "x", "state": "sideways"}]}"#);
        assert!(
            why.starts_with("regions[0].state: unknown variant `sideways`"),
            "{why}"
        );
        let why = said(br#"{"epoch": 1, "version": 1, "primary_region": null, "failover_in_progress": "no", "regions": []}"#);
        assert!(
            why.starts_with(
                "failover_in_progress: invalid type: string \"no\", expected a boolean"
            ),
            "{why}"
        );
        let why = said(br#"{"epoch": 1, "version": 1, "primary_region": null, "failover_in_progress": false, "regions": []} x"#);
        assert!(why.contains("trailing characters"), "{why}");
        let err = RoutingTable::from_json(
            br#"{"epoch": 1, "version": 1, "primary_region": "mars-1", "failover_in_progress": false,
                 "regions": [{"name": "us-east-1", "state": "active", "weight": 300},
                             {"name": "us-east-1", "state": "active"}]}"#,
        )
        .expect_err("three problems");
        let Rejection::Invalid(errs) = err else {
            panic!("{err:?}")
        };
        let text = errs.to_string();
        assert_eq!(errs.len(), 3, "{text}");
        assert!(
            text.contains("regions[0].weight: must be 0-255, got 300"),
            "{text}"
        );
        assert!(text.contains("regions[1].name"), "{text}");
        assert!(
            text.contains("primary_region: must be one of the table's regions, got \"mars-1\""),
            "{text}"
        );
    }

    #[test]
    fn a_malformed_tables_unknown_keys_are_named_up_to_20() {
        let keys: Vec<String> = (0..25).map(|i| format!("\"k{i:02}\": 1")).collect();
        let text = format!("{{\"epoch\": 1, {}}}", keys.join(", "));
        let Err(Rejection::Malformed(why)) = RoutingTable::from_json(text.as_bytes()) else {
            panic!("malformed")
        };
        assert!(
            why.ends_with("(keys no field takes: k00, k01, k02, k03, k04, k05, k06, k07, k08, k09, k10, k11, k12, k13, k14, k15, k16, k17, k18, k19, and 5 more)"),
            "{why}"
        );
    }

    #[test]
    fn a_table_written_as_arrays_is_malformed() {
        let said = |json: &[u8]| match RoutingTable::from_json(json) {
            Err(Rejection::Malformed(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            said(br#"[3, 7, "us-east-1", false, [{"name": "us-east-1", "state": "active"}]]"#),
            "expected a JSON object with named fields, got an array"
        );
        assert_eq!(
            said(br#"{"epoch": 3, "version": 7, "primary_region": null, "failover_in_progress": false,
                      "regions": [{"name": "us-east-1", "state": "active"}, ["eu-west-1", "active", 100]]}"#),
            "regions[1]: expected an object with named fields, got an array"
        );
    }

    #[test]
    fn keys_no_field_takes_are_named_by_path() {
        let keys = RoutingTable::unknown_keys(
            br#"{"epoch": 1, "version": 1, "primary_region": null, "failover_in_progress": false,
                 "regions": [{"name": "us-east-1", "state": "active", "wieght": 5}], "note": 1}"#,
        );
        assert_eq!(keys, ["regions[0].wieght", "note"]);
        assert!(RoutingTable::unknown_keys(b"{not json").is_empty());
    }

    #[test]
    fn admission_rules() {
        let cur = table(2, 10, Some("us-east-1"));
        let ok = |t: &RoutingTable| t.admit(Some(&cur), KNOWN);
        assert_eq!(ok(&cur.clone()), Ok(Admission::Unchanged));
        let mut reordered = cur.clone();
        reordered.regions.reverse();
        assert_eq!(ok(&reordered), Ok(Admission::Unchanged));
        let mut one_less = cur.clone();
        one_less.regions.pop();
        assert_eq!(
            ok(&one_less),
            Err(Rejection::StaleVersion {
                got: 10,
                current: 10
            })
        );
        assert_eq!(
            ok(&table(2, 11, Some("us-east-1"))),
            Ok(Admission::Accepted)
        );
        assert_eq!(ok(&table(3, 1, Some("eu-west-1"))), Ok(Admission::Accepted));
        // Lower numbers are refused when the table says something else...
        let drained = |epoch, version| {
            let mut t = table(epoch, version, Some("us-east-1"));
            t.regions[1].state = RegionState::Draining;
            t
        };
        assert_eq!(
            ok(&drained(1, 99)),
            Err(Rejection::StaleEpoch { got: 1, current: 2 })
        );
        assert_eq!(
            ok(&drained(2, 9)),
            Err(Rejection::StaleVersion {
                got: 9,
                current: 10
            })
        );
        // ...and say nothing new when it says what the table in force
        // says (another replica's numbering), in any region order.
        let mut lower = table(1, 99, Some("us-east-1"));
        lower.regions.reverse();
        assert_eq!(ok(&lower), Ok(Admission::LowerNumbering));
        assert_eq!(
            ok(&table(2, 9, Some("us-east-1"))),
            Ok(Admission::LowerNumbering)
        );
        // Lags, which no request is routed by, may differ then (read by
        // two replicas a moment apart); under the same numbers they may not.
        let mut lagging = table(2, 9, Some("us-east-1"));
        lagging.regions[0].replication_lag_ms = Some(120);
        assert!(lagging.routes_as(&cur));
        assert_ne!(lagging.routing_digest(), cur.routing_digest());
        assert_eq!(ok(&lagging), Ok(Admission::LowerNumbering));
        lagging.version = 10;
        assert_eq!(
            ok(&lagging),
            Err(Rejection::StaleVersion {
                got: 10,
                current: 10
            })
        );
        // Higher numbers for the same content are taken, so that proxies
        // of several replicas end on the highest numbering.
        assert_eq!(ok(&table(3, 1, Some("us-east-1"))), Ok(Admission::Accepted));
        let mut same_version_changed = cur.clone();
        same_version_changed.failover_in_progress = true;
        assert_eq!(
            ok(&same_version_changed),
            Err(Rejection::StaleVersion {
                got: 10,
                current: 10
            })
        );
        for text in [&b"{\"epoch\": 2, \"version\": "[..], b"{1: 2}"] {
            let Err(Rejection::Malformed(why)) = RoutingTable::from_json(text) else {
                panic!("malformed")
            };
            assert!(!why.starts_with('?'), "{why}");
        }
        let moved = ok(&table(2, 11, Some("eu-west-1"))).unwrap_err();
        assert!(matches!(
            moved,
            Rejection::PrimaryChangedWithoutEpoch { .. }
        ));
        assert!(
            moved
                .to_string()
                .starts_with("primary_region changed from \"us-east-1\" to \"eu-west-1\" without"),
            "{moved}"
        );
        let to_none = ok(&table(2, 11, None)).unwrap_err().to_string();
        assert!(to_none.contains("to none without"), "{to_none}");
        let mut unknown = table(5, 1, None);
        unknown.regions.push(RegionEntry {
            name: "sa-east-1".into(),
            state: RegionState::Active,
            weight: 1,
            replication_lag_ms: None,
        });
        assert_eq!(
            unknown.admit(Some(&cur), KNOWN),
            Err(Rejection::UnknownRegion("sa-east-1".into()))
        );
    }

    #[test]
    fn the_routing_digest_leaves_out_the_numbers_and_the_order_alone() {
        let base = table(2, 10, Some("us-east-1"));
        let digest = base.routing_digest();
        assert!(is_digest(&digest), "{digest}");
        let mut renumbered = table(7, 3, Some("us-east-1"));
        renumbered.regions.reverse();
        assert!(renumbered.routes_as(&base));
        assert_eq!(renumbered.routing_digest(), digest);
        let changes: [fn(&mut RoutingTable); 6] = [
            |t| t.primary_region = Some("eu-west-1".into()),
            |t| t.primary_region = None,
            |t| t.failover_in_progress = true,
            |t| t.regions[0].state = RegionState::Down,
            |t| t.regions[0].weight = 99,
            |t| t.regions[0].replication_lag_ms = Some(0),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut t = base.clone();
            change(&mut t);
            // A lag (the last change) is said, but not routed by.
            assert_eq!(t.routes_as(&base), i == changes.len() - 1, "change {i}");
            assert_ne!(t.routing_digest(), digest, "change {i}");
        }
    }

    /// A table read from JSON is written back as JSON that reads as the
    /// same table: nothing it was admitted with is lost or changed on the
    /// way to the proxies and the control plane's own reads.
    fn reads_back_the_same(t: &RoutingTable) -> Result<(), TestCaseError> {
        let written = serde_json::to_vec(t).expect("a table is JSON");
        prop_assert_eq!(RoutingTable::from_json(&written), Ok(t.clone()));
        Ok(())
    }

    /// What a table's rules admit, said apart from the code: epoch and
    /// version below 2^63, 1 to 64 regions of valid names listed once,
    /// weights 0-255, and a primary that is null or one of them.
    fn admissible(t: &serde_json::Value) -> bool {
        let regions = t["regions"].as_array().unwrap();
        let names: Vec<&str> = regions
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        let good_name = |n: &str| {
            !n.is_empty()
                && !n.starts_with('-')
                && !n.ends_with('-')
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        let unique = names.iter().collect::<HashSet<_>>().len() == names.len();
        ["epoch", "version"]
            .iter()
            .all(|k| t[k].as_u64().unwrap() <= i64::MAX as u64)
            && (1..=MAX_REGIONS).contains(&regions.len())
            && names.iter().all(|n| good_name(n))
            && unique
            && regions.iter().all(|r| r["weight"].as_u64().unwrap() <= 255)
            && t["primary_region"]
                .as_str()
                .is_none_or(|p| names.contains(&p))
    }

    /// A table's JSON from a few values near each rule's edges.
    fn near_the_rules() -> impl Strategy<Value = serde_json::Value> {
        let count = prop_oneof![
            Just(0u64),
            Just(7),
            Just(i64::MAX as u64),
            Just(i64::MAX as u64 + 1)
        ];
        let name = proptest::sample::select(vec![
            "us-east-1",
            "eu-west-1",
            "ap-southeast-1",
            "sim-3",
            "EU-west-1",
            "-eu",
            "eu-",
            "",
            "eu west",
        ]);
        let region = (
            name.clone(),
            proptest::sample::select(vec!["active", "draining", "down"]),
            prop_oneof![Just(0u64), Just(100), Just(255), Just(256)],
        )
            .prop_map(|(name, state, weight)| {
                serde_json::json!({ "name": name, "state": state, "weight": weight })
            });
        let regions = prop_oneof![
            1 => Just(Vec::new()),
            20 => proptest::collection::vec(region.clone(), 1..5),
            1 => proptest::collection::vec(region, MAX_REGIONS + 1..MAX_REGIONS + 2),
        ];
        (
            count.clone(),
            count,
            proptest::option::of(name),
            any::<bool>(),
            regions,
        )
            .prop_map(|(epoch, version, primary, failover, regions)| {
                serde_json::json!({
                    "epoch": epoch, "version": version, "primary_region": primary,
                    "failover_in_progress": failover, "regions": regions,
                })
            })
    }

    proptest! {
        /// Whatever bytes arrive as a table, parsing never panics (random
        /// bytes are all but never a table; what is admitted reads back
        /// the same, which the next properties reach).
        #[test]
        fn any_bytes_are_parsed_without_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            if let Ok(t) = RoutingTable::from_json(&bytes) {
                reads_back_the_same(&t)?;
            }
        }

        /// Text of a table's tokens shuffled and cut likewise.
        #[test]
        fn a_tables_tokens_shuffled_are_parsed_without_a_panic(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "{", "}", "[", "]", ",", ":", "\"epoch\"", "\"version\"",
                    "\"primary_region\"", "\"failover_in_progress\"", "\"regions\"",
                    "\"name\"", "\"state\"", "\"weight\"", "\"us-east-1\"", "\"active\"",
                    "\"down\"", "null", "1", "0", "-1", "18446744073709551616", "256", "true",
                    "false",
                ]),
                0..40,
            ),
        ) {
            let text = parts.concat();
            if let Ok(t) = RoutingTable::from_json(text.as_bytes()) {
                reads_back_the_same(&t)?;
            }
        }

        /// A table's JSON with one cut, deletion, byte or token changed
        /// (some of them still tables) is refused, or admitted as a table
        /// that reads back the same.
        #[test]
        fn a_table_changed_in_one_place_is_a_table_that_reads_back_the_same_or_a_rejection(
            json in near_the_rules(),
            at in any::<prop::sample::Index>(),
            len in 0usize..12,
            change in 0u8..4,
            byte in any::<u8>(),
            token in proptest::sample::select(vec![
                "{", "}", "[", "]", ",", ":", "\"", "null", "1", "-1", "256", "\"weight\": 0",
                "\"state\"", "\"down\"", "\"x\": {}", " ", "\u{feff}",
            ]),
        ) {
            let mut bytes = serde_json::to_vec(&json).unwrap();
            let i = at.index(bytes.len());
            match change {
                0 => bytes.truncate(i),
                1 => {
                    let end = (i + len).min(bytes.len());
                    bytes.drain(i..end);
                }
                2 => bytes[i] = byte,
                _ => {
                    bytes.splice(i..i, token.bytes());
                }
            }
            if let Ok(t) = RoutingTable::from_json(&bytes) {
                reads_back_the_same(&t)?;
            }
        }

        /// A table of the right shape is admitted exactly when its values
        /// keep every rule; admitted, it holds what was sent; refused, it
        /// is refused as invalid (not as malformed), naming each field.
        #[test]
        fn a_table_is_admitted_exactly_when_its_values_keep_the_rules(json in near_the_rules()) {
            let bytes = serde_json::to_vec(&json).unwrap();
            match RoutingTable::from_json(&bytes) {
                Ok(t) => {
                    prop_assert!(admissible(&json), "admitted: {}", json);
                    prop_assert_eq!(serde_json::to_value(&t).unwrap(), json);
                }
                Err(Rejection::Invalid(errs)) => {
                    prop_assert!(!admissible(&json), "refused: {} ({})", json, errs);
                    prop_assert!(!errs.is_empty());
                }
                Err(other) => prop_assert!(false, "{} refused as {:?}", json, other),
            }
        }

        /// Whatever sequence of tables arrives, the epoch in force never
        /// decreases, the primary only changes together with a higher
        /// epoch, and within one epoch a new table has a higher version.
        #[test]
        fn epoch_in_force_never_goes_back(
            steps in proptest::collection::vec(
                (
                    (0u64..6, 0u64..6),
                    proptest::option::of(0usize..3),
                    proptest::bool::ANY,
                    proptest::option::of(0u64..2),
                ),
                1..40,
            )
        ) {
            let mut in_force: Option<RoutingTable> = None;
            for ((epoch, version), primary, drained, lag) in steps {
                let mut t = table(epoch, version, primary.map(|i| KNOWN[i]));
                if drained {
                    t.regions[1].state = RegionState::Draining;
                }
                t.regions[0].replication_lag_ms = lag;
                let admitted = t.admit(in_force.as_ref(), KNOWN);
                // And the other way: a table that moves forward is taken
                // (the first always; then a higher epoch, or the same
                // epoch and primary at a higher version).
                let forward = in_force.as_ref().is_none_or(|old| {
                    t.epoch > old.epoch
                        || (t.epoch == old.epoch
                            && t.primary_region == old.primary_region
                            && t.version > old.version)
                });
                prop_assert_eq!(forward, admitted == Ok(Admission::Accepted), "{:?} over {:?}", t, in_force);
                // A table that does not move forward is refused unless it
                // says what the table in force says: the very table, or a
                // lower numbering of it.
                if let (false, Some(old)) = (forward, &in_force) {
                    let numbers = |t: &RoutingTable| (t.epoch, t.version);
                    let expected = if numbers(&t) == numbers(old)
                        && t.routing_digest() == old.routing_digest()
                    {
                        Some(Admission::Unchanged)
                    } else if t.routes_as(old) && numbers(&t) < numbers(old) {
                        Some(Admission::LowerNumbering)
                    } else {
                        None
                    };
                    prop_assert_eq!(expected, admitted.clone().ok(), "{:?} over {:?}", t, in_force);
                }
                if let Ok(Admission::Accepted) = admitted {
                    if let Some(old) = &in_force {
                        prop_assert!(t.epoch >= old.epoch);
                        if t.primary_region != old.primary_region {
                            prop_assert!(t.epoch > old.epoch);
                        }
                        if t.epoch == old.epoch {
                            prop_assert!(t.version > old.version);
                        }
                    }
                    in_force = Some(t);
                }
            }
        }
    }
}
