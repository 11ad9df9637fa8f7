//! 1,000 table swaps under concurrent load fail no request, and every write
//! lands on the primary of the table that routed it.

use edgeroute_tests::{Origin, ProxyBuilder, table};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_swaps_under_load_fail_no_request() {
    let origins = Arc::new([
        Origin::start(US).await,
        Origin::start(EU).await,
        Origin::start(AP).await,
    ]);
    let proxy = ProxyBuilder::new(US)
        .region(US, &[origins[0].addr])
        .region(EU, &[origins[1].addr])
        .region(AP, &[origins[2].addr])
        // Epoch e's primary is regions[e % 3], from the first table on.
        .table(table(
            1,
            1,
            Some(EU),
            &[(US, "active"), (EU, "active"), (AP, "active")],
        ))
        .extra("[log]\naccess = false\n")
        .start()
        .await;
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

    // Each swap moves the primary (new epoch) and flips a region's state, so
    // both the write target and the read fallback change under load.
    let regions = [US, EU, AP];
    for v in 2..=SWAPS + 1 {
        assert!(
            started.elapsed() < LIMIT,
            "swaps too slow: {v} after {LIMIT:?}"
        );
        let primary = regions[(v % 3) as usize];
        let eu_state = if v % 2 == 0 { "active" } else { "draining" };
        proxy
            .swap_table(&table(
                v,
                v,
                Some(primary),
                &[(US, "active"), (EU, eu_state), (AP, "active")],
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
}
