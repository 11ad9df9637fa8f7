//! Latency records kept in Route 53 while their region is drained.
//!
//! A latency record has no weight, so draining its region removes it. What
//! puts it back must outlive the command that removed it and be found by
//! any control plane or command line, whatever its history file: it is
//! kept in the hosted zone itself, in the same change batch that removes
//! the records, as a TXT record named `_edgeroute-drained.<API name>`,
//! weighted (weight 0) with the region as its set identifier, one value
//! per kept record. Undrain puts the records back and deletes it in one
//! batch. It routes no traffic; in a public zone anyone can look it up,
//! and it holds what the records did (alias targets, health check ids),
//! no credentials.
//!
//! A value is `"edgeroute-v1" "<base64>" "<base64>" ...`: the record as
//! JSON, base64-encoded and cut into the 255-character strings TXT allows.
//!
//! A drain of weighted records keeps their weight the same way, as the one
//! value `"edgeroute-weight-v1" "<weight>"`: the records stay (at weight
//! 0), and the weight they had is what undrain puts back.

use crate::aws::SavedRecord;
use aws_sdk_route53::types::{ResourceRecord, ResourceRecordSet, RrType};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The first label of the name the records are kept under.
pub const LABEL: &str = "_edgeroute-drained";

/// The first string of each value: the format's version.
const VERSION: &str = "edgeroute-v1";

/// The first string of a kept weight's value.
const WEIGHT_VERSION: &str = "edgeroute-weight-v1";

/// The most characters of one TXT string (RFC 1035 §3.3).
const STRING_MAX: usize = 255;

/// The most characters Route 53 takes in one TXT value.
pub const VALUE_MAX: usize = 4000;

/// How long resolvers may cache the record (no one should ask).
const TTL: i64 = 300;

/// The name the records of `record_name` are kept under, with the final
/// dot Route 53 lists names with.
pub fn name(record_name: &str) -> String {
    format!("{LABEL}.{}.", record_name.trim_end_matches('.'))
}

/// The TXT record that keeps `records` of `region`, drained from
/// `record_name`.
pub fn record(
    record_name: &str,
    region: &str,
    records: &[SavedRecord],
) -> Result<ResourceRecordSet, String> {
    let values = records
        .iter()
        .map(|r| {
            let value = encode(r);
            if value.len() > VALUE_MAX {
                return Err(format!(
                    "its {} record is too large to keep in Route 53 ({} characters encoded, {VALUE_MAX} at most)",
                    r.rr_type,
                    value.len()
                ));
            }
            ResourceRecord::builder()
                .value(value)
                .build()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    kept_record(record_name, region, values)
}

/// A TXT record of `values` under [`name`], for `region`.
fn kept_record(
    record_name: &str,
    region: &str,
    values: Vec<ResourceRecord>,
) -> Result<ResourceRecordSet, String> {
    ResourceRecordSet::builder()
        .name(name(record_name))
        .r#type(RrType::Txt)
        .set_identifier(region)
        .weight(0)
        .ttl(TTL)
        .set_resource_records(Some(values))
        .build()
        .map_err(|e| e.to_string())
}

/// The TXT record that keeps the weight `weight` of `region`'s weighted
/// records of `record_name`, drained to 0.
pub fn weight_record(
    record_name: &str,
    region: &str,
    weight: i64,
) -> Result<ResourceRecordSet, String> {
    kept_record(
        record_name,
        region,
        vec![
            ResourceRecord::builder()
                .value(format!("\"{WEIGHT_VERSION}\" \"{weight}\""))
                .build()
                .map_err(|e| e.to_string())?,
        ],
    )
}

/// The weight a TXT record of [`weight_record`] keeps; `None` when it
/// keeps records instead.
pub fn weight(kept: &ResourceRecordSet) -> Option<Result<i64, String>> {
    let value = kept.resource_records().first()?.value();
    let strings = strings(value).ok()?;
    let (&first, rest) = strings.split_first()?;
    (first == WEIGHT_VERSION).then(|| {
        match rest {
            [weight] => weight.parse::<i64>().ok().filter(|w| (0..=255).contains(w)),
            _ => None,
        }
        .ok_or_else(|| format!("{value:?} keeps no weight of 0 to 255"))
    })
}

/// The records a TXT record of [`record`] keeps.
pub fn records(kept: &ResourceRecordSet) -> Result<Vec<SavedRecord>, String> {
    kept.resource_records()
        .iter()
        .map(|v| decode(v.value()))
        .collect()
}

/// One record as a TXT value.
fn encode(record: &SavedRecord) -> String {
    let json = serde_json::to_vec(record).expect("a kept record serializes");
    let text = STANDARD.encode(json);
    let mut value = format!("\"{VERSION}\"");
    // Base64 is ASCII: any cut is at a character boundary.
    for chunk in text.as_bytes().chunks(STRING_MAX) {
        value.push_str(" \"");
        value.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        value.push('"');
    }
    value
}

/// A TXT value's strings, as written here: quoted, with no space or quote
/// inside, one space apart.
fn strings(value: &str) -> Result<Vec<&str>, String> {
    value
        .split_ascii_whitespace()
        .map(|s| {
            s.strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .ok_or_else(|| format!("{s:?} is not a quoted TXT string"))
        })
        .collect()
}

/// A TXT value of [`encode`] as the record it keeps.
fn decode(value: &str) -> Result<SavedRecord, String> {
    let text = match strings(value)?.split_first() {
        Some((&VERSION, rest)) => rest.concat(),
        Some((other, _)) => {
            return Err(format!(
                "kept in format {other:?}, which this version does not read (it reads {VERSION:?})"
            ));
        }
        None => return Err("an empty value".into()),
    };
    let json = STANDARD
        .decode(text)
        .map_err(|e| format!("not base64: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("not a kept record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::SavedAlias;
    use proptest::prelude::*;

    fn alias_a() -> SavedRecord {
        SavedRecord {
            name: "api.example.com.".into(),
            rr_type: "A".into(),
            set_identifier: Some("eu-west-1".into()),
            region: Some("eu-west-1".into()),
            health_check_id: Some("hc-1".into()),
            ttl: None,
            values: vec![],
            alias: Some(SavedAlias {
                hosted_zone_id: "Z32O12XQLNTSW2".into(),
                dns_name: "alb-eu.eu-west-1.elb.amazonaws.com.".into(),
                evaluate_target_health: true,
            }),
        }
    }

    #[test]
    fn records_are_kept_under_one_name_per_api_name_with_the_region_as_identifier() {
        assert_eq!(
            name("api.example.com"),
            "_edgeroute-drained.api.example.com."
        );
        assert_eq!(name("api.example.com."), name("api.example.com"));
        let kept = record("api.example.com", "eu-west-1", &[alias_a()]).unwrap();
        assert_eq!(kept.name(), "_edgeroute-drained.api.example.com.");
        assert_eq!(kept.r#type(), &RrType::Txt);
        assert_eq!(kept.set_identifier(), Some("eu-west-1"));
        assert_eq!(kept.weight(), Some(0));
        assert_eq!(records(&kept).unwrap(), [alias_a()]);
    }

    #[test]
    fn a_drained_weight_is_kept_in_the_same_place() {
        let kept = weight_record("api.example.com", "eu-west-1", 40).unwrap();
        assert_eq!(kept.name(), "_edgeroute-drained.api.example.com.");
        assert_eq!(kept.set_identifier(), Some("eu-west-1"));
        assert_eq!(weight(&kept), Some(Ok(40)));
        let records_kept = record("api.example.com", "eu-west-1", &[alias_a()]).unwrap();
        assert_eq!(weight(&records_kept), None);
        let bad = kept_record(
            "api.example.com",
            "eu-west-1",
            vec![
                ResourceRecord::builder()
                    .value("\"edgeroute-weight-v1\" \"900\"")
                    .build()
                    .unwrap(),
            ],
        )
        .unwrap();
        assert!(
            weight(&bad)
                .unwrap()
                .unwrap_err()
                .contains("no weight of 0 to 255")
        );
    }

    #[test]
    fn a_value_that_is_not_ours_is_named() {
        for (value, says) in [
            ("\"edgeroute-v9\" \"e30=\"", "does not read"),
            ("\"edgeroute-v1\" \"!!\"", "not base64"),
            ("\"edgeroute-v1\" \"e30=\"", "not a kept record"),
            ("edgeroute-v1", "not a quoted TXT string"),
            ("", "empty"),
        ] {
            let err = decode(value).unwrap_err();
            assert!(err.contains(says), "{value:?}: {err}");
        }
    }

    #[test]
    fn a_record_too_large_for_one_value_is_refused() {
        let mut big = alias_a();
        big.alias = None;
        big.values = (0..400).map(|i| format!("192.0.2.{}", i % 256)).collect();
        let err = record("api.example.com", "eu-west-1", &[big]).unwrap_err();
        assert!(err.contains("too large to keep in Route 53"), "{err}");
    }

    fn saved_record() -> impl Strategy<Value = SavedRecord> {
        let text = "[ -~]{0,60}";
        (
            (text, "A|AAAA|CNAME", proptest::option::of(text)),
            (proptest::option::of(text), proptest::option::of(text)),
            (
                proptest::option::of(0i64..=2_147_483_647),
                proptest::collection::vec(text, 0..8),
                proptest::option::of((text, text, any::<bool>())),
            ),
        )
            .prop_map(
                |(
                    (name, rr_type, set_identifier),
                    (region, health_check_id),
                    (ttl, values, alias),
                )| SavedRecord {
                    name,
                    rr_type,
                    set_identifier,
                    region,
                    health_check_id,
                    ttl,
                    values,
                    alias: alias.map(|(hosted_zone_id, dns_name, evaluate_target_health)| {
                        SavedAlias {
                            hosted_zone_id,
                            dns_name,
                            evaluate_target_health,
                        }
                    }),
                },
            )
    }

    proptest! {
        /// Whatever a record holds, it comes back as it was, from strings
        /// TXT and Route 53 take.
        #[test]
        fn a_kept_record_comes_back_as_it_was(record in saved_record()) {
            let value = encode(&record);
            prop_assert!(value.len() <= VALUE_MAX, "{}", value.len());
            for s in value.split(' ') {
                prop_assert!(s.len() <= STRING_MAX + 2, "{s}");
                prop_assert!(s.starts_with('"') && s.ends_with('"'));
            }
            prop_assert_eq!(decode(&value).unwrap(), record);
        }
    }
}
