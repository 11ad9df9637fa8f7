//! 1,000 table swaps under concurrent load fail no request, and every write
//! lands on the primary of the table that routed it; requests held at a
//! backend while swaps move the primary away and take their region out
//! finish whole.

use edgeroute_tests::{Behaviour, Origin, ProxyBuilder, eventually, table};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
const SWAPS: u64 = 1_000;
const CLIENTS: usize = 6;
/// Upper bound on the whole run, so a regression fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(240);

/// An origin in each region, and a proxy for us-east-1 in front of them
/// whose first table (epoch 1, version 1) has `primary` and every region
/// active; `extra` as [`ProxyBuilder::extra`].
async fn three_regions(primary: &str, extra: &str) -> ([Origin; 3], edgeroute_tests::Proxy) {
    let origins = [
        Origin::start(US).await,
        Origin::start(EU).await,
        Origin::start(AP).await,
    ];
    let proxy = ProxyBuilder::new(US)
        .region(US, &[origins[0].addr])
        .region(EU, &[origins[1].addr])
        .region(AP, &[origins[2].addr])
        .table(table(
            1,
            1,
            Some(primary),
            &[(US, "active"), (EU, "active"), (AP, "active")],
        ))
        .extra(extra)
        .start()
        .await;
    (origins, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_swaps_under_load_fail_no_request() {
    // Epoch e's primary is regions[e % 3], from the first table on.
    let (origins, proxy) = three_regions(EU, "[log]\naccess = false\n").await;
    let origins = Arc::new(origins);
    let url = proxy.url("/load");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let c = edgeroute_tests::client();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < LIMIT && n < 200_000 {
                n += 1;
                let req = if (n + i as u64).is_multiple_of(3) {
                    c.post(&url).body("w")
                } else {
                    c.get(&url)
                };
                match req.send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("request failed with {}", r.status());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    // Each swap moves the primary (new epoch) and flips the local region
    // between active and draining, so both the write target and where
    // reads go change under load.
    let regions = [US, EU, AP];
    for v in 2..=SWAPS + 1 {
        assert!(
            started.elapsed() < LIMIT,
            "swaps too slow: {v} after {LIMIT:?}"
        );
        let primary = regions[(v % 3) as usize];
        let us_state = if v % 2 == 0 { "active" } else { "draining" };
        proxy
            .swap_table(&table(
                v,
                v,
                Some(primary),
                &[(US, us_state), (EU, "active"), (AP, "active")],
            ))
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{SWAPS} swaps, {ok} requests in {:?}", started.elapsed());
    assert_eq!(failed, 0, "requests failed during swaps");
    assert!(
        ok > SWAPS,
        "the load ran alongside the swaps ({ok} requests)"
    );
    assert!(proxy.metric("edgeroute_table_swaps_total").await >= (SWAPS + 1) as f64);

    // Every write went to the primary of the epoch it was routed under.
    let mut writes = 0;
    for origin in origins.iter() {
        for seen in origin.seen().iter().filter(|s| s.method == "POST") {
            let epoch: u64 = seen.header("x-edgeroute-epoch").unwrap().parse().unwrap();
            assert_eq!(
                regions[(epoch % 3) as usize],
                origin.region(),
                "a write of epoch {epoch} reached {}",
                origin.region()
            );
            writes += 1;
        }
    }
    assert!(writes > 0);
    // Reads went elsewhere while the local region drained.
    let reads_away = origins[1..].iter().map(|o| o.count("GET")).sum::<usize>();
    assert!(reads_away > 0, "no read left the draining local region");
}

/// Requests at a backend when tables take its region out (draining, then
/// down) and move the primary away finish whole, answered by the backend
/// they were sent to under the table that routed them; what comes after
/// the swaps follows the new table.
#[tokio::test]
async fn requests_held_at_a_backend_across_swaps_finish_whole() {
    let (origins, proxy) = three_regions(US, "").await;
    origins[0].set(Behaviour::Hold);
    let url = proxy.url("/held");
    let c = edgeroute_tests::client();
    let held: Vec<_> = (0..6)
        .map(|i| {
            let req = if i % 3 == 0 {
                c.post(&url).body("w")
            } else {
                c.get(&url)
            };
            tokio::spawn(req.send())
        })
        .collect();
    eventually(
        "every request is at the us-east-1 backend",
        Duration::from_secs(10),
        || async { origins[0].seen().len() == held.len() },
    )
    .await;

    proxy
        .swap_table(&table(
            2,
            2,
            Some(EU),
            &[(US, "draining"), (EU, "active"), (AP, "active")],
        ))
        .await;
    proxy
        .swap_table(&table(
            3,
            3,
            Some(AP),
            &[(US, "down"), (EU, "active"), (AP, "active")],
        ))
        .await;
    // Routed under the last table while the first ones are still held:
    // the write reaches its primary, the read leaves the region that is down.
    let write = c.post(&url).body("w").send().await.unwrap();
    assert_eq!(write.status(), 200);
    assert_eq!(write.headers()["x-edgeroute-region"], AP);
    let read = c.get(&url).send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert_ne!(read.headers()["x-edgeroute-region"], US);

    origins[0].release(held.len());
    for request in held {
        let answer = request.await.unwrap().unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["x-edgeroute-region"], US);
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["region"], US);
    }
    // Each reached the backend once, the writes under the epoch of the
    // table that sent them to us-east-1.
    let seen = origins[0].seen();
    assert_eq!(seen.len(), 6);
    let writes: Vec<_> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(writes.len(), 2);
    assert!(
        writes
            .iter()
            .all(|w| w.header("x-edgeroute-epoch") == Some("1"))
    );
    assert_eq!(origins[2].count("POST"), 1);
    assert_eq!(
        proxy
            .metric("edgeroute_requests_total{region=\"us-east-1\",route=\"write\",status=\"200\"}")
            .await,
        2.0
    );
}
