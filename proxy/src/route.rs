//! The route decision: which class a request is, and which region serves it.
//!
//! Everything here is a pure function of the request, the snapshot and the
//! live state passed in, so the rules are property-tested without sockets.

use crate::snapshot::Snapshot;
use crate::topology::Backend;
use edgeroute_config::{MethodClasses, RegionState, RouteRule, RouteTarget};
use rand::Rng;
use std::sync::Arc;
use std::time::Instant;

/// Request header that asks for a read from the primary region.
pub const CONSISTENCY_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-edgeroute-consistency");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Read,
    Write,
}

impl RouteClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Read => "read",
            RouteClass::Write => "write",
        }
    }
}

/// How a request is to be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub class: RouteClass,
    pub target: RouteTarget,
}

/// Classifies requests from the config's method classes and route rules.
pub struct Classifier {
    methods: MethodClasses,
    rules: Vec<RouteRule>,
}

impl Classifier {
    pub fn new(methods: MethodClasses, rules: Vec<RouteRule>) -> Self {
        Classifier { methods, rules }
    }

    /// The first matching rule decides; otherwise reads go to the nearest
    /// region and writes to the primary. A strong-consistency read goes to
    /// the primary too. Whatever else holds, a write's target is the primary
    /// unless a rule explicitly names it a local or nearest route.
    pub fn classify(&self, method: &str, path: &str, strong: bool) -> Plan {
        let mut plan = match self.rules.iter().find(|r| r.matches(method, path)) {
            Some(rule) => Plan {
                class: if rule.target == RouteTarget::Primary {
                    RouteClass::Write
                } else {
                    RouteClass::Read
                },
                target: rule.target,
            },
            None if self.methods.is_read(method) => Plan {
                class: RouteClass::Read,
                target: RouteTarget::Nearest,
            },
            None => Plan {
                class: RouteClass::Write,
                target: RouteTarget::Primary,
            },
        };
        if strong {
            plan.target = RouteTarget::Primary;
        }
        plan
    }
}

/// Why a request is refused before it reaches any backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoTable,
    NoPrimary,
    FailoverInProgress,
    PrimaryDown,
    PrimaryUnavailable,
    LocalUnavailable,
    NoRegionAvailable,
    TableStale,
}

impl Refusal {
    /// Every refusal, for series shown from the start.
    pub const ALL: [Refusal; 8] = [
        Refusal::NoTable,
        Refusal::NoPrimary,
        Refusal::FailoverInProgress,
        Refusal::PrimaryDown,
        Refusal::PrimaryUnavailable,
        Refusal::LocalUnavailable,
        Refusal::NoRegionAvailable,
        Refusal::TableStale,
    ];

    /// Stable code for the JSON body, logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::NoTable => "no_routing_table",
            Refusal::NoPrimary => "no_primary",
            Refusal::FailoverInProgress => "failover_in_progress",
            Refusal::PrimaryDown => "primary_down",
            Refusal::PrimaryUnavailable => "primary_unavailable",
            Refusal::LocalUnavailable => "local_unavailable",
            Refusal::NoRegionAvailable => "no_region_available",
            Refusal::TableStale => "table_stale",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::NoTable => "the proxy has no routing table yet",
            Refusal::NoPrimary => "no primary region is known, so writes cannot be accepted",
            Refusal::FailoverInProgress => {
                "a failover is in progress; writes are held until the new primary is confirmed"
            }
            Refusal::PrimaryDown => "the primary region is marked down",
            Refusal::PrimaryUnavailable => "the primary region has no reachable backend",
            Refusal::LocalUnavailable => "the local region cannot serve this route",
            Refusal::NoRegionAvailable => "no region can serve this request",
            Refusal::TableStale => {
                "the control plane has not confirmed the routing table for longer than table.hold_writes_after; writes are held in case the primary moved"
            }
        }
    }

    /// Seconds a client should wait before retrying.
    pub fn retry_after_secs(self) -> u32 {
        match self {
            Refusal::FailoverInProgress => 2,
            _ => 5,
        }
    }
}

/// Picks the region for `target`. `live(r)` says whether region `r` has a
/// backend in rotation, `latency(r)` its measured latency in seconds; regions
/// in the `excluded` bit set were already tried by this request. A primary
/// target yields the table's primary or a refusal, never another region.
pub fn choose_region(
    snap: &Snapshot,
    local: usize,
    target: RouteTarget,
    live: impl Fn(usize) -> bool,
    latency: impl Fn(usize) -> Option<f64>,
    excluded: u64,
) -> Result<usize, Refusal> {
    let usable = |r: usize| excluded & (1 << r) == 0 && live(r);
    match target {
        RouteTarget::Primary => {
            let p = snap.primary.ok_or(Refusal::NoPrimary)?;
            if snap.failover_in_progress {
                return Err(Refusal::FailoverInProgress);
            }
            if snap.states[p] == RegionState::Down {
                return Err(Refusal::PrimaryDown);
            }
            if !usable(p) {
                return Err(Refusal::PrimaryUnavailable);
            }
            Ok(p)
        }
        RouteTarget::Local => {
            if snap.states[local] != RegionState::Down && usable(local) {
                Ok(local)
            } else {
                Err(Refusal::LocalUnavailable)
            }
        }
        RouteTarget::Nearest => {
            let preferred = |r: usize| {
                snap.states[r] == RegionState::Active && snap.weights[r] > 0 && usable(r)
            };
            let last_resort = |r: usize| snap.states[r] != RegionState::Down && usable(r);
            // The nearest other region by measured latency; regions not yet
            // measured come after, in config order.
            let nearest = |ok: &dyn Fn(usize) -> bool| {
                snap.fallback
                    .iter()
                    .copied()
                    .filter(|&r| ok(r))
                    .min_by(|&a, &b| {
                        let (la, lb) = (
                            latency(a).unwrap_or(f64::INFINITY),
                            latency(b).unwrap_or(f64::INFINITY),
                        );
                        la.total_cmp(&lb)
                    })
            };
            if preferred(local) {
                return Ok(local);
            }
            nearest(&preferred)
                .or_else(|| last_resort(local).then_some(local))
                .or_else(|| nearest(&last_resort))
                .ok_or(Refusal::NoRegionAvailable)
        }
    }
}

/// The backend chosen for one attempt.
pub struct Pick<'a> {
    pub index: usize,
    pub backend: &'a Arc<Backend>,
    /// Too few backends were in rotation, so all of them were candidates.
    pub panic: bool,
}

/// Power of two choices by load (peak-EWMA latency times in-flight requests
/// plus one) among backends not yet tried by this request (`tried` is a bit
/// set of indices). Normally only backends in rotation are candidates; when
/// fewer than `panic_threshold` percent of the proven ones (those that have
/// passed a probe) are, every proven backend is (panic mode), so the few
/// left are not overwhelmed. A backend never proven, such as a new address
/// not yet probed or one that never answered, is not one the region lost:
/// it counts for neither. None in rotation: `None`.
pub fn pick_backend<'a>(
    backends: &'a [Arc<Backend>],
    tried: u64,
    panic_threshold: u32,
    now: Instant,
    rng: &mut impl Rng,
) -> Option<Pick<'a>> {
    let (mut healthy, mut proven) = (0usize, 0usize);
    for b in backends {
        if b.in_rotation(now) {
            healthy += 1;
            proven += 1;
        } else if b.is_proven() && !b.is_retired() {
            proven += 1;
        }
    }
    if healthy == 0 {
        return None;
    }
    let panic = healthy * 100 < panic_threshold as usize * proven;
    let eligible = |i: &usize| {
        let b = &backends[*i];
        tried & (1 << *i) == 0
            && !b.is_retired()
            && (b.in_rotation(now) || (panic && b.is_proven()))
    };
    let n = (0..backends.len()).filter(eligible).count();
    let nth = |k: usize| (0..backends.len()).filter(eligible).nth(k);
    let index = match n {
        0 => return None,
        1 => nth(0)?,
        _ => {
            let x = rng.random_range(0..n);
            let mut y = rng.random_range(0..n - 1);
            if y >= x {
                y += 1;
            }
            let (a, b) = (nth(x)?, nth(y)?);
            if backends[b].load(now) < backends[a].load(now) {
                b
            } else {
                a
            }
        }
    };
    Some(Pick {
        index,
        backend: &backends[index],
        panic,
    })
}

/// `tried`, a set of indices into `before`, as indices into `after`: the
/// same backends, wherever a new list puts them (one that left is no
/// longer there to try).
pub fn carry_tried(before: &[Arc<Backend>], tried: u64, after: &[Arc<Backend>]) -> u64 {
    let mut carried = 0;
    for (i, b) in before.iter().enumerate() {
        if tried & (1 << i) != 0
            && let Some(j) = after.iter().position(|a| Arc::ptr_eq(a, b))
        {
            carried |= 1 << j;
        }
    }
    carried
}

#[cfg(test)]
mod tests;
