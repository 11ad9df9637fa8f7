use super::*;
use crate::topology::Backend;
use crate::topology::testing::topology;
use edgeroute_config::{RegionEntry, RoutingTable};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::Arc;
use std::time::Instant;

fn classifier(rules: Vec<RouteRule>) -> Classifier {
    Classifier::new(
        MethodClasses {
            reads: vec!["GET".into(), "HEAD".into(), "OPTIONS".into()],
        },
        rules,
    )
}

fn snapshot(
    states: &[RegionState],
    weights: &[u32],
    primary: Option<usize>,
    failover: bool,
    local: usize,
) -> Snapshot {
    let mut topo = topology(states.len(), 2);
    topo.local = local;
    let table = RoutingTable {
        epoch: 1,
        version: 1,
        primary_region: primary.map(|p| format!("region-{p}")),
        failover_in_progress: failover,
        regions: states
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (s, w))| RegionEntry {
                name: format!("region-{i}"),
                state: *s,
                weight: *w,
                replication_lag_ms: None,
            })
            .collect(),
    };
    Snapshot::build(&topo, table)
}

use RegionState::{Active, Down, Draining};

#[test]
fn methods_and_rules_classify() {
    let c = classifier(vec![
        RouteRule {
            prefix: "/search".into(),
            methods: vec!["POST".into()],
            target: RouteTarget::Nearest,
        },
        RouteRule {
            prefix: "/session".into(),
            methods: vec![],
            target: RouteTarget::Primary,
        },
        RouteRule {
            prefix: "/local".into(),
            methods: vec![],
            target: RouteTarget::Local,
        },
    ]);
    let plan = |m, p, s| c.classify(m, p, s);
    assert_eq!(
        plan("GET", "/x", false),
        Plan {
            class: RouteClass::Read,
            target: RouteTarget::Nearest
        }
    );
    assert_eq!(
        plan("POST", "/x", false),
        Plan {
            class: RouteClass::Write,
            target: RouteTarget::Primary
        }
    );
    assert_eq!(plan("DELETE", "/x", false).class, RouteClass::Write);
    assert_eq!(
        plan("GET", "/x", true),
        Plan {
            class: RouteClass::Read,
            target: RouteTarget::Primary
        }
    );
    assert_eq!(
        plan("POST", "/search/q", false),
        Plan {
            class: RouteClass::Read,
            target: RouteTarget::Nearest
        }
    );
    assert_eq!(
        plan("GET", "/session/1", false),
        Plan {
            class: RouteClass::Write,
            target: RouteTarget::Primary
        }
    );
    assert_eq!(plan("GET", "/local", false).target, RouteTarget::Local);
    // A primary rule takes odd paths too: the primary is always safe.
    for odd in ["/session//1", "/session/./1", "/session/a%2Fb"] {
        assert_eq!(
            plan("GET", odd, false).target,
            RouteTarget::Primary,
            "{odd}"
        );
    }
    assert_eq!(
        plan("GET", "/local/../x", false).target,
        RouteTarget::Nearest
    );

    // A prefix takes whole segments of a path every server reads alike.
    for taken in [
        "/search",
        "/search/",
        "/search/q",
        "/search/q;v=1",
        "/search/a.b/..c",
        "/search/caf%c3%a9",
        "/search/%e2%82%ac100",
        "/search/50%",
        "/search/%zz",
        "/search/\u{e9}t\u{e9}",
        "/search/%ef%bd%81",
    ] {
        assert_eq!(
            plan("POST", taken, false).target,
            RouteTarget::Nearest,
            "{taken}"
        );
    }
    for write in [
        "/searchable",
        "/search/../orders",
        "/search/./q",
        "/search/..;/orders",
        "/search%2f..%2forders",
        "/search/..%2Forders",
        "/search/%2e%2e/orders",
        "/search//q",
        "/search\\..\\orders",
        "/search/..%5corders",
        "/search/%252e%252e/orders",
        "/search/%u002e%u002e/orders",
        "/search/..%00/orders",
        "/search/%c0%ae%c0%ae/orders",
        "/search/%e0%80%ae%e0%80%ae/orders",
        "/search/%f0%80%80%ae%f0%80%80%ae/orders",
        "/search/%ff/orders",
        "/search/%ef%bc%8e%ef%bc%8e/orders",
        "/search/\u{FF0E}\u{FF0E}/orders",
        "/search/\u{2025}/orders",
        "/search/%ef%bc%8forders",
        "/search/%ef%b8%b0/orders",
        "/search/\u{FE30}/orders",
        "/search/\u{2100}",
        "/search;x",
    ] {
        assert_eq!(
            plan("POST", write, false),
            Plan {
                class: RouteClass::Write,
                target: RouteTarget::Primary
            },
            "{write}"
        );
    }
}

/// How a lenient server could read a path: `%2f`, `%5c` and `\` as `/`,
/// `%2e` as `.`, `;` parameters dropped, empty segments merged and dot
/// segments removed (RFC 3986, 5.2.4).
fn resolved(path: &str) -> String {
    let decoded = path
        .replace("%2f", "/")
        .replace("%2F", "/")
        .replace("%5c", "/")
        .replace("%5C", "/")
        .replace('\\', "/")
        .replace("%2e", ".")
        .replace("%2E", ".");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            name => out.push(name),
        }
    }
    format!("/{}", out.join("/"))
}

#[test]
fn reads_prefer_local_then_fall_back_in_order() {
    let all = |_| true;
    let s = snapshot(&[Active, Active, Active], &[100; 3], Some(2), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, all, |_| None, 0),
        Ok(0)
    );
    let s = snapshot(&[Down, Active, Active], &[100; 3], Some(2), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, all, |_| None, 0),
        Ok(1)
    );
    let s = snapshot(&[Draining, Active, Active], &[100; 3], Some(2), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, all, |_| None, 0),
        Ok(1)
    );
    // Weight 0 is treated like draining.
    let s = snapshot(&[Active, Active, Active], &[0, 100, 100], Some(2), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, all, |_| None, 0),
        Ok(1)
    );
    // No live backend locally.
    let s = snapshot(&[Active, Active, Active], &[100; 3], Some(2), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, |r| r != 0, |_| None, 0),
        Ok(1)
    );
    // Already tried region 1.
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, |r| r != 0, |_| None, 0b10),
        Ok(2)
    );
    // Draining regions are a last resort, down regions never.
    let s = snapshot(&[Down, Draining, Down], &[100; 3], None, false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, all, |_| None, 0),
        Ok(1)
    );
    let s = snapshot(&[Down, Down, Down], &[100; 3], None, false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, all, |_| None, 0),
        Err(Refusal::NoRegionAvailable)
    );
}

#[test]
fn writes_go_to_the_primary_or_are_refused() {
    let all = |_| true;
    let s = snapshot(&[Active, Active, Active], &[100; 3], Some(1), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, all, |_| None, 0),
        Ok(1)
    );
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, |r| r != 1, |_| None, 0),
        Err(Refusal::PrimaryUnavailable)
    );
    let s = snapshot(&[Active, Draining, Active], &[100; 3], Some(1), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, all, |_| None, 0),
        Ok(1),
        "draining primary still takes writes"
    );
    let s = snapshot(&[Active, Down, Active], &[100; 3], Some(1), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, all, |_| None, 0),
        Err(Refusal::PrimaryDown)
    );
    let s = snapshot(&[Active, Active, Active], &[100; 3], None, false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, all, |_| None, 0),
        Err(Refusal::NoPrimary)
    );
    let s = snapshot(&[Active, Active, Active], &[100; 3], Some(1), true, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, all, |_| None, 0),
        Err(Refusal::FailoverInProgress)
    );
}

#[test]
fn local_target_never_leaves_the_local_region() {
    let s = snapshot(&[Down, Active], &[100; 2], Some(1), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Local, |_| true, |_| None, 0),
        Err(Refusal::LocalUnavailable)
    );
    let s = snapshot(&[Draining, Active], &[100; 2], Some(1), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Local, |_| true, |_| None, 0),
        Ok(0)
    );
}

#[test]
fn reads_fall_back_to_the_nearest_region_by_measured_latency() {
    let all = |_| true;
    let s = snapshot(
        &[Down, Active, Active, Active],
        &[100; 4],
        Some(1),
        false,
        0,
    );
    let ms = [None, Some(0.200), Some(0.080), Some(0.005)];
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, all, |r| ms[r], 0),
        Ok(3)
    );
    // The choice follows the measurements.
    let ms = [None, Some(0.004), Some(0.080), Some(0.300)];
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, all, |r| ms[r], 0),
        Ok(1)
    );
    // Unmeasured regions come after measured ones, in config order.
    let ms = [None, None, Some(0.5), None];
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, all, |r| ms[r], 0),
        Ok(2)
    );
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, all, |_| None, 0),
        Ok(1)
    );
    // Writes ignore latency entirely.
    let ms = [None, Some(9.0), Some(0.001), Some(0.001)];
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, all, |r| ms[r], 0),
        Ok(1)
    );
}

fn shares(backends: &[Arc<Backend>], picks: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Instant::now();
    let mut counts = vec![0usize; backends.len()];
    for _ in 0..picks {
        let pick = pick_backend(backends, 0, 50, now, &mut rng).expect("a backend");
        counts[pick.index] += 1;
    }
    counts.iter().map(|&c| c as f64 / picks as f64).collect()
}

#[test]
fn power_of_two_choices_prefers_faster_backends() {
    let topo = topology(1, 4);
    let backends = topo.regions[0].backends();
    let h = crate::topology::testing::health();
    let now = Instant::now();
    for (b, ms) in backends.iter().zip([5, 20, 50, 100]) {
        b.record_probe(true, Some(std::time::Duration::from_millis(ms)), &h, now);
    }
    // Of a random pair the faster wins: the fastest is in half of all pairs,
    // the second in a third, the third in a sixth, the slowest never wins.
    let got = shares(&backends, 20_000, 42);
    for (g, want) in got.iter().zip([0.5, 1.0 / 3.0, 1.0 / 6.0, 0.0]) {
        assert!((g - want).abs() < 0.02, "shares {got:?}");
    }
    // In-flight requests weigh in: a busy fast backend loses to an idle slower one.
    let _busy: Vec<_> = (0..20).map(|_| backends[0].start_request()).collect();
    let got = shares(&backends, 20_000, 7);
    assert!(got[0] < 0.01, "shares {got:?}");
}

#[test]
fn backend_pick_skips_tried_and_ejected_and_spreads_in_panic() {
    let topo = topology(1, 4);
    let backends = topo.regions[0].backends();
    let mut rng = StdRng::seed_from_u64(7);
    let now = Instant::now();
    let policy = crate::topology::policy(&crate::topology::testing::health());
    let eject = |b: &Arc<Backend>| {
        for _ in 0..3 {
            b.record_failure(None, &policy, now, topo.regions[0].cap(100));
        }
    };
    eject(&backends[1]);
    for _ in 0..200 {
        let p =
            pick_backend(&backends, 0b0001, 50, now, &mut rng).expect("backends 2 and 3 are left");
        assert!(p.index == 2 || p.index == 3);
        assert!(!p.panic);
    }
    assert!(pick_backend(&backends, 0b1101, 50, now, &mut rng).is_none());
    // One of four in rotation is under the 50% threshold: every backend is a candidate.
    eject(&backends[2]);
    eject(&backends[3]);
    let mut seen = [false; 4];
    for _ in 0..200 {
        let p = pick_backend(&backends, 0, 50, now, &mut rng).expect("panic mode");
        assert!(p.panic);
        seen[p.index] = true;
    }
    assert_eq!(seen, [true; 4]);
    // None in rotation: no pick at all.
    eject(&backends[0]);
    assert!(pick_backend(&backends, 0, 50, now, &mut rng).is_none());
}

/// Of 64 addresses, 61 never answered a probe and 3 serve: the 3 are the
/// whole region, not 5% of it, so no request is spread over the dead.
#[test]
fn backends_never_proven_neither_count_toward_panic_mode_nor_take_its_traffic() {
    let mut h = crate::topology::testing::health();
    h.probes = true;
    h.start_healthy = false;
    h.fall = 1;
    let topo = crate::topology::testing::topology_with(1, 64, &h);
    let backends = topo.regions[0].backends();
    let now = Instant::now();
    for b in &backends[..3] {
        b.record_probe(true, None, &h, now);
    }
    for b in &backends[3..] {
        b.record_probe(false, None, &h, now);
    }
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..200 {
        let p = pick_backend(&backends, 0, 50, now, &mut rng).expect("three backends serve");
        assert!(p.index < 3, "picked never-proven backend {}", p.index);
        assert!(!p.panic);
    }
    // Two of the three proven ones fail their probes: one of three is under
    // the threshold, so the region is in panic mode, spread over the three
    // proven backends and nothing else.
    for b in &backends[1..3] {
        b.record_probe(false, None, &h, now);
    }
    let mut seen = [false; 3];
    for _ in 0..300 {
        let p = pick_backend(&backends, 0, 50, now, &mut rng).expect("one backend serves");
        assert!(
            p.panic && p.index < 3,
            "picked {} (panic {})",
            p.index,
            p.panic
        );
        seen[p.index] = true;
    }
    assert_eq!(seen, [true; 3]);
}

/// A retry's set of tried backends follows them into a list DNS swapped in
/// between attempts: the same backends stay tried wherever they now are.
#[test]
fn tried_backends_carry_over_a_swapped_list() {
    let topo = topology(1, 4);
    let before = topo.regions[0].backends();
    let gone = topology(1, 1).regions[0].backends()[0].clone();
    // 0 and 2 tried; the new list drops 0, moves 2 first, adds one.
    let after = vec![
        before[2].clone(),
        gone,
        before[1].clone(),
        before[3].clone(),
    ];
    assert_eq!(carry_tried(&before, 0b0101, &after), 0b0001);
    assert_eq!(carry_tried(&before, 0b1010, &after), 0b1100);
    assert_eq!(carry_tried(&before, 0, &after), 0);
}

fn state() -> impl Strategy<Value = RegionState> {
    prop_oneof![Just(Active), Just(Draining), Just(Down)]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_string()),
        Just("HEAD".to_string()),
        Just("OPTIONS".to_string()),
        Just("POST".to_string()),
        Just("PUT".to_string()),
        Just("PATCH".to_string()),
        Just("DELETE".to_string()),
        "[A-Z]{1,8}",
    ]
}

fn target() -> impl Strategy<Value = RouteTarget> {
    prop_oneof![
        Just(RouteTarget::Local),
        Just(RouteTarget::Primary),
        Just(RouteTarget::Nearest)
    ]
}

proptest! {
    /// For any table, liveness, request and route rules: a request classified
    /// as a write is routed to the table's primary or refused, never elsewhere.
    #[test]
    fn a_write_is_never_routed_off_the_primary(
        regions in proptest::collection::vec((state(), 0u32..3), 1..6),
        primary in proptest::option::of(0usize..6),
        failover in any::<bool>(),
        local in 0usize..6,
        live_mask in any::<u64>(),
        excluded in any::<u64>(),
        method in method(),
        path in "/[a-z]{0,6}",
        strong in any::<bool>(),
        rules in proptest::collection::vec(("/[a-z]{0,3}", proptest::collection::vec(method(), 0..2), target()), 0..3),
        latencies in proptest::collection::vec(proptest::option::of(0.0f64..1.0), 6),
    ) {
        let n = regions.len();
        let (local, primary) = (local % n, primary.map(|p| p % n));
        let states: Vec<_> = regions.iter().map(|r| r.0).collect();
        let weights: Vec<_> = regions.iter().map(|r| r.1).collect();
        let s = snapshot(&states, &weights, primary, failover, local);
        let c = classifier(rules.into_iter().map(|(prefix, methods, target)| RouteRule { prefix, methods, target }).collect());
        let plan = c.classify(&method, &path, strong);
        let decision = choose_region(&s, local, plan.target, |r| live_mask & (1 << r) != 0, |r| latencies[r], excluded);
        if plan.class == RouteClass::Write || plan.target == RouteTarget::Primary {
            prop_assert_eq!(plan.target, RouteTarget::Primary);
            if let Ok(r) = decision {
                prop_assert_eq!(Some(r), primary);
                prop_assert!(!failover);
            }
        }
        if let Ok(r) = decision {
            prop_assert!(s.states[r] != RegionState::Down || plan.target == RouteTarget::Primary);
            prop_assert!(live_mask & (1 << r) != 0, "chose a region with no live backend");
            prop_assert!(excluded & (1 << r) == 0, "chose a region already tried");
        }
    }

    /// A rule for `/search` takes no path that a server could resolve to
    /// something outside `/search`, however its segments are written.
    #[test]
    fn a_rule_takes_only_paths_that_resolve_under_its_prefix(
        pieces in proptest::collection::vec(
            proptest::sample::select(vec!["/", "/..", "/.", "search", "orders", ".", "..", "%2f", "%2F", "%2e", "%5c", "\\", ";x", "a"]),
            0..8,
        ),
        start in proptest::sample::select(vec!["/", "/search"]),
    ) {
        let path = format!("{start}{}", pieces.concat());
        let c = classifier(vec![RouteRule {
            prefix: "/search".into(),
            methods: vec!["POST".into()],
            target: RouteTarget::Nearest,
        }]);
        if c.classify("POST", &path, false).target == RouteTarget::Nearest {
            let r = resolved(&path);
            prop_assert!(r == "/search" || r.starts_with("/search/"), "{} resolves to {}", path, r);
        }
    }

    /// Nearest reads pick the local region whenever it is active, weighted and live.
    #[test]
    fn reads_stay_local_when_local_can_serve(n in 1usize..6, local in 0usize..6, others in proptest::collection::vec(state(), 6)) {
        let local = local % n;
        let mut states: Vec<_> = others[..n].to_vec();
        states[local] = Active;
        let s = snapshot(&states, &vec![100; n], None, false, local);
        prop_assert_eq!(choose_region(&s, local, RouteTarget::Nearest, |_| true, |_| None, 0), Ok(local));
    }

    /// The chosen backend is in rotation unless the region is in panic mode,
    /// and never one that has not passed a probe: panic mode counts and
    /// spreads over the proven backends only.
    #[test]
    fn an_out_of_rotation_backend_is_never_chosen_outside_panic_mode(
        n in 1usize..10,
        unproven_mask in any::<u16>(),
        ejected_mask in any::<u16>(),
        unhealthy_mask in any::<u16>(),
        tried in any::<u16>(),
        threshold in 0u32..=100,
        seed in any::<u64>(),
    ) {
        let mut h = crate::topology::testing::health();
        h.probes = true;
        h.start_healthy = false;
        h.fall = 1;
        let topo = crate::topology::testing::topology_with(1, n, &h);
        let backends = topo.regions[0].backends();
        let now = Instant::now();
        let policy = crate::topology::policy(&h);
        for (i, b) in backends.iter().enumerate() {
            if unproven_mask & (1 << i) != 0 {
                continue;
            }
            b.record_probe(true, None, &h, now);
            if ejected_mask & (1 << i) != 0 {
                for _ in 0..3 {
                    b.record_failure(None, &policy, now, topo.regions[0].cap(100));
                }
            }
            if unhealthy_mask & (1 << i) != 0 {
                b.record_probe(false, None, &h, now);
            }
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let healthy = backends.iter().filter(|b| b.in_rotation(now)).count();
        let proven = backends.iter().filter(|b| b.is_proven()).count();
        prop_assert_eq!(proven, (0..n).filter(|i| unproven_mask & (1 << i) == 0).count());
        match pick_backend(&backends, u64::from(tried), threshold, now, &mut rng) {
            Some(p) => {
                prop_assert!(tried & (1 << p.index) == 0, "picked a backend already tried");
                prop_assert!(p.backend.is_proven(), "picked a backend that never passed a probe");
                if !p.panic {
                    prop_assert!(p.backend.in_rotation(now), "picked an ejected or unhealthy backend outside panic mode");
                }
                prop_assert_eq!(p.panic, healthy * 100 < threshold as usize * proven);
            }
            None => {
                // Only when nothing is in rotation or every candidate was tried.
                let panic = healthy * 100 < threshold as usize * proven;
                let untried = backends.iter().enumerate().any(|(i, b)| {
                    tried & (1 << i) == 0 && (b.in_rotation(now) || (panic && healthy > 0 && b.is_proven()))
                });
                prop_assert!(!untried, "no pick although an untried candidate was left");
            }
        }
    }
}
