use super::*;
use crate::topology::testing::topology;
use edgeroute_config::{RegionEntry, RoutingTable};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

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
}

#[test]
fn reads_prefer_local_then_fall_back_in_order() {
    let all = |_| true;
    let s = snapshot(&[Active, Active, Active], &[100; 3], Some(2), false, 0);
    assert_eq!(choose_region(&s, 0, RouteTarget::Nearest, all, 0), Ok(0));
    let s = snapshot(&[Down, Active, Active], &[100; 3], Some(2), false, 0);
    assert_eq!(choose_region(&s, 0, RouteTarget::Nearest, all, 0), Ok(1));
    let s = snapshot(&[Draining, Active, Active], &[100; 3], Some(2), false, 0);
    assert_eq!(choose_region(&s, 0, RouteTarget::Nearest, all, 0), Ok(1));
    // Weight 0 is treated like draining.
    let s = snapshot(&[Active, Active, Active], &[0, 100, 100], Some(2), false, 0);
    assert_eq!(choose_region(&s, 0, RouteTarget::Nearest, all, 0), Ok(1));
    // No live backend locally.
    let s = snapshot(&[Active, Active, Active], &[100; 3], Some(2), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, |r| r != 0, 0),
        Ok(1)
    );
    // Already tried region 1.
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, |r| r != 0, 0b10),
        Ok(2)
    );
    // Draining regions are a last resort, down regions never.
    let s = snapshot(&[Down, Draining, Down], &[100; 3], None, false, 0);
    assert_eq!(choose_region(&s, 0, RouteTarget::Nearest, all, 0), Ok(1));
    let s = snapshot(&[Down, Down, Down], &[100; 3], None, false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Nearest, all, 0),
        Err(Refusal::NoRegionAvailable)
    );
}

#[test]
fn writes_go_to_the_primary_or_are_refused() {
    let all = |_| true;
    let s = snapshot(&[Active, Active, Active], &[100; 3], Some(1), false, 0);
    assert_eq!(choose_region(&s, 0, RouteTarget::Primary, all, 0), Ok(1));
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, |r| r != 1, 0),
        Err(Refusal::PrimaryUnavailable)
    );
    let s = snapshot(&[Active, Draining, Active], &[100; 3], Some(1), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, all, 0),
        Ok(1),
        "draining primary still takes writes"
    );
    let s = snapshot(&[Active, Down, Active], &[100; 3], Some(1), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, all, 0),
        Err(Refusal::PrimaryDown)
    );
    let s = snapshot(&[Active, Active, Active], &[100; 3], None, false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, all, 0),
        Err(Refusal::NoPrimary)
    );
    let s = snapshot(&[Active, Active, Active], &[100; 3], Some(1), true, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Primary, all, 0),
        Err(Refusal::FailoverInProgress)
    );
}

#[test]
fn local_target_never_leaves_the_local_region() {
    let s = snapshot(&[Down, Active], &[100; 2], Some(1), false, 0);
    assert_eq!(
        choose_region(&s, 0, RouteTarget::Local, |_| true, 0),
        Err(Refusal::LocalUnavailable)
    );
    let s = snapshot(&[Draining, Active], &[100; 2], Some(1), false, 0);
    assert_eq!(choose_region(&s, 0, RouteTarget::Local, |_| true, 0), Ok(0));
}

#[test]
fn backend_pick_skips_tried_and_ejected_and_prefers_fewer_inflight() {
    let topo = topology(1, 3);
    let region = &topo.regions[0];
    let mut rng = StdRng::seed_from_u64(7);
    region.backends[1].record_connect_failure(1, std::time::Duration::from_secs(60));
    for _ in 0..50 {
        let (i, _) = pick_backend(region, 0b001, &mut rng).expect("backend 2 is left");
        assert_eq!(i, 2);
    }
    assert!(pick_backend(region, 0b101, &mut rng).is_none());
    // Of two live backends, the one with fewer requests in flight wins.
    let _busy: Vec<_> = (0..5).map(|_| region.backends[0].start_request()).collect();
    for _ in 0..50 {
        assert_eq!(pick_backend(region, 0, &mut rng).map(|(i, _)| i), Some(2));
    }
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
    ) {
        let n = regions.len();
        let (local, primary) = (local % n, primary.map(|p| p % n));
        let states: Vec<_> = regions.iter().map(|r| r.0).collect();
        let weights: Vec<_> = regions.iter().map(|r| r.1).collect();
        let s = snapshot(&states, &weights, primary, failover, local);
        let c = classifier(rules.into_iter().map(|(prefix, methods, target)| RouteRule { prefix, methods, target }).collect());
        let plan = c.classify(&method, &path, strong);
        let decision = choose_region(&s, local, plan.target, |r| live_mask & (1 << r) != 0, excluded);
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

    /// Nearest reads pick the local region whenever it is active, weighted and live.
    #[test]
    fn reads_stay_local_when_local_can_serve(n in 1usize..6, local in 0usize..6, others in proptest::collection::vec(state(), 6)) {
        let local = local % n;
        let mut states: Vec<_> = others[..n].to_vec();
        states[local] = Active;
        let s = snapshot(&states, &vec![100; n], None, false, local);
        prop_assert_eq!(choose_region(&s, local, RouteTarget::Nearest, |_| true, 0), Ok(local));
    }
}
