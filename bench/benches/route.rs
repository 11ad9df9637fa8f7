//! The route decision plus the backend pick, per request, without sockets.

use criterion::{Criterion, criterion_group, criterion_main};
use edgeroute_config::{ProxyConfig, RouteTarget, RoutingTable};
use edgeroute_proxy::route::{Classifier, choose_region, pick_backend};
use edgeroute_proxy::snapshot::Snapshot;
use edgeroute_proxy::topology::Topology;
use rand::SeedableRng;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

const CONFIG: &str = r#"
local_region = "us-east-1"
[[listeners]]
address = "127.0.0.1:8080"
[[regions]]
name = "us-east-1"
backends = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", "127.0.0.1:9004"]
[[regions]]
name = "eu-west-1"
backends = ["127.0.0.1:9101", "127.0.0.1:9102"]
[[regions]]
name = "ap-southeast-1"
backends = ["127.0.0.1:9201", "127.0.0.1:9202"]
[health]
probes = false
[table]
source = "file"
path = "table.json"
"#;

fn setup() -> (Classifier, Topology, Snapshot) {
    let cfg = ProxyConfig::from_toml(CONFIG, Path::new(".")).expect("valid config");
    let addrs: Vec<Vec<Vec<SocketAddr>>> = cfg
        .regions
        .iter()
        .map(|r| {
            r.backends
                .iter()
                .map(|b| vec![format!("{}:{}", b.host, b.port).parse().expect("ip:port")])
                .collect()
        })
        .collect();
    let topo = Topology::build(&cfg, &addrs);
    let table = RoutingTable::from_json(
        br#"{"epoch":1,"version":1,"primary_region":"eu-west-1","failover_in_progress":false,"regions":[
            {"name":"us-east-1","state":"active"},{"name":"eu-west-1","state":"active"},{"name":"ap-southeast-1","state":"active"}]}"#,
    )
    .expect("valid table");
    let snap = Snapshot::build(&topo, table);
    (
        Classifier::new(cfg.methods.clone(), cfg.routes.clone()),
        topo,
        snap,
    )
}

fn bench(c: &mut Criterion) {
    let (classifier, topo, snap) = setup();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for (name, method) in [
        ("read: classify + region + backend", "GET"),
        ("write: classify + region + backend", "POST"),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let now = Instant::now();
                let plan = classifier.classify(black_box(method), black_box("/orders/42"), false);
                let region = choose_region(
                    &snap,
                    topo.local,
                    plan.target,
                    |r| topo.regions[r].in_rotation(now) > 0,
                    |r| topo.regions[r].latency(now),
                    0,
                )
                .expect("a region");
                let backends = topo.regions[region].backends();
                let pick = pick_backend(&backends, 0, 50, now, &mut rng).expect("a backend");
                black_box((plan.target == RouteTarget::Primary, pick.index))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
