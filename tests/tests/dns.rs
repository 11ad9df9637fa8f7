//! Backend names are re-resolved on TTL: the proxy follows a changed answer,
//! drains the departed address and probes the new one before use.

use edgeroute_tests::dns::DnsServer;
use edgeroute_tests::{Behaviour, Origin, Proxy, ProxyBuilder, client, eventually};
use hickory_proto::rr::RecordType;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

const NAME: &str = "api.us-east-1.edgeroute.test";

/// A proxy whose one region is `NAME` on `port`, resolved by `dns`, with
/// quick re-resolution and probes.
async fn proxy_resolving(dns: &DnsServer, port: u16) -> Proxy {
    proxy_probing(dns, port, "300ms", "250ms").await
}

/// [`proxy_resolving`], probing every `interval` within `timeout`.
async fn proxy_probing(dns: &DnsServer, port: u16, interval: &str, timeout: &str) -> Proxy {
    proxy_with_health(
        dns,
        port,
        &format!("interval = \"{interval}\"\ntimeout = \"{timeout}\"\n"),
    )
    .await
}

/// A proxy whose one region is `NAME` on `port`, resolved by `dns`, with
/// quick re-resolution and `health` (lines of its `[health]` section).
async fn proxy_with_health(dns: &DnsServer, port: u16, health: &str) -> Proxy {
    ProxyBuilder::new("us-east-1")
        .region_named("us-east-1", &[&format!("{NAME}:{port}")])
        .extra(&format!(
            "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"100ms\"\n\n\
             [health]\njitter = \"0ms\"\n{health}",
            dns.addr
        ))
        .start()
        .await
}

/// Two origins on one port, at two loopback addresses: `old` at
/// 127.0.0.2, which DNS names, and `new` at 127.0.0.3.
async fn two_origins() -> (Origin, Origin, DnsServer) {
    let old = Origin::start_on("us-east-1", SocketAddr::from(([127, 0, 0, 2], 0))).await;
    let port = old.addr.port();
    let new = Origin::start_on("us-east-1", SocketAddr::from(([127, 0, 0, 3], port))).await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &[Ipv4Addr::new(127, 0, 0, 2)]);
    (old, new, dns)
}

#[tokio::test]
async fn the_proxy_follows_a_changed_dns_answer_within_the_ttl() {
    // Two origins on one port, at two loopback addresses: what DNS says
    // decides which one a request reaches.
    let (old, new, dns) = two_origins().await;
    let port = old.addr.port();

    let proxy = proxy_resolving(&dns, port).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(old.seen().len(), 3);
    assert_eq!(new.seen().len(), 0);

    dns.set(NAME, &[Ipv4Addr::new(127, 0, 0, 3)]);
    // TTL is 1 s: allow a few re-resolutions and a probe round.
    eventually(
        "requests reach the new address",
        Duration::from_secs(15),
        || async {
            c.get(proxy.url("/x"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
                && !new.seen().is_empty()
        },
    )
    .await;
    assert!(new.probes() >= 1, "the new address was probed before use");
    eventually(
        "the old address is gone once the new one serves",
        Duration::from_secs(15),
        || async { addrs_of(&proxy.routing().await) == [new.addr.to_string()] },
    )
    .await;
    served_without(
        &c,
        &proxy,
        5,
        &old,
        "no new request reaches the departed address",
    )
    .await;
}

/// A lookup that fails for one address family (SERVFAIL for A) while the
/// other answers leaves that family's addresses unknown, not gone: the
/// proxy keeps them, counts the failure, and follows the family again
/// once it answers.
#[tokio::test]
async fn a_failed_lookup_of_one_address_family_keeps_its_addresses() {
    let v4 = Origin::start_on("us-east-1", SocketAddr::from(([127, 0, 0, 2], 0))).await;
    let port = v4.addr.port();
    let v6 = Origin::start_on("us-east-1", SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await;
    let dns = DnsServer::start().await;
    let both = [
        IpAddr::from([127, 0, 0, 2]),
        IpAddr::from(Ipv6Addr::LOCALHOST),
    ];
    dns.set_ips(NAME, &both);
    let proxy = proxy_resolving(&dns, port).await;
    let all = vec![v4.addr.to_string(), v6.addr.to_string()];
    assert_eq!(addrs_of(&proxy.routing().await), all);

    dns.fail(NAME, RecordType::A);
    let failures = "edgeroute_dns_failures_total{region=\"us-east-1\"}";
    // Two failed refreshes: the first one's outcome is in place.
    eventually(
        "two DNS refreshes fail for A",
        Duration::from_secs(15),
        || async { proxy.metric(failures).await >= 2.0 },
    )
    .await;
    assert_eq!(
        addrs_of(&proxy.routing().await),
        all,
        "the IPv4 address stays while its lookup fails"
    );
    // The IPv6 address goes dark (an IPv4-only service behind a
    // dual-stack name): the IPv4 address serves every request.
    v6.stop();
    let c = client();
    eventually(
        "requests reach the IPv4 address alone",
        Duration::from_secs(15),
        || async {
            let before = v4.seen().len();
            c.get(proxy.url("/x"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
                && v4.seen().len() > before
        },
    )
    .await;
    let on_v4 = v4.seen().len();
    for _ in 0..5 {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        v4.seen().len(),
        on_v4 + 5,
        "the IPv4 address served them all"
    );

    // A answers again, now with no IPv4 address at all: that is followed.
    dns.set_ips(NAME, &[IpAddr::from(Ipv6Addr::LOCALHOST)]);
    eventually(
        "the IPv4 address leaves once A answers without it",
        Duration::from_secs(15),
        || async { addrs_of(&proxy.routing().await) == [v6.addr.to_string()] },
    )
    .await;
}

/// `/ready` waits for the first probes at start-up only: an address DNS
/// brings later is probed before it takes traffic, while the proxy stays
/// ready and serves on the addresses it has.
#[tokio::test]
async fn an_address_that_joins_later_does_not_take_the_proxy_out_of_ready() {
    let old = Origin::start_on("us-east-1", SocketAddr::from(([127, 0, 0, 2], 0))).await;
    let port = old.addr.port();
    // The new address accepts connections and never answers: its first
    // probe lasts the whole probe timeout.
    let silent = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 3], port))).unwrap();
    let dns = DnsServer::start().await;
    dns.set(NAME, &[Ipv4Addr::new(127, 0, 0, 2)]);
    let proxy = proxy_probing(&dns, port, "60s", "30s").await;
    let c = client();
    let ready = || async {
        c.get(proxy.admin_url("/ready"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(ready().await, 200);

    dns.set(
        NAME,
        &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
    );
    let both = vec![old.addr.to_string(), format!("127.0.0.3:{port}")];
    eventually("the new address joins", Duration::from_secs(15), || async {
        addrs_of(&proxy.routing().await) == both
    })
    .await;
    // Its probe has 30 s to go.
    assert_eq!(
        ready().await,
        200,
        "a new address does not unready the proxy"
    );
    assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    drop(silent);
}

/// The first region's backends in `/routing`, in address order: address,
/// whether in rotation, whether departing.
fn backends_of(routing: &serde_json::Value) -> Vec<(String, bool, bool)> {
    let mut backends: Vec<_> = routing["regions"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["live"].as_bool().unwrap(),
                b["departing"].as_bool().unwrap(),
            )
        })
        .collect();
    backends.sort();
    backends
}

/// Two loopback origins on one port: `old` at 127.0.0.2, serving, and
/// `new` at 127.0.0.3, whose probes fail; DNS names `old`, and a proxy
/// probing every `interval` follows it.
async fn old_and_failing_new(interval: &str) -> (Origin, Origin, DnsServer, Proxy) {
    let (old, new, dns) = two_origins().await;
    let port = old.addr.port();
    new.set_health(503);
    let proxy = proxy_probing(&dns, port, interval, "100ms").await;
    (old, new, dns, proxy)
}

/// [`old_and_failing_new`], probing every 5 s (so the departed address
/// may serve on for 3 rounds), once DNS has moved the name to `new`: `old`
/// departs, `new` is not in rotation.
async fn old_departing() -> (Origin, Origin, DnsServer, Proxy) {
    let (old, new, dns, proxy) = old_and_failing_new("5s").await;
    dns.set(NAME, &[Ipv4Addr::new(127, 0, 0, 3)]);
    let (o, n) = (old.addr.to_string(), new.addr.to_string());
    eventually(
        "the old address departs, the new one is not in rotation",
        Duration::from_secs(15),
        || async {
            backends_of(&proxy.routing().await)
                == [(o.clone(), true, true), (n.clone(), false, false)]
        },
    )
    .await;
    (old, new, dns, proxy)
}

/// `new` passes its probes from now on; waits until it is the only
/// address left, in rotation.
async fn only_new_left(new: &Origin, proxy: &Proxy) {
    new.set_health(200);
    let n = new.addr.to_string();
    eventually(
        "only the new address is left",
        Duration::from_secs(15),
        || async { backends_of(&proxy.routing().await) == [(n.clone(), true, false)] },
    )
    .await;
}

/// When every address of a name changes at once, the departed one serves
/// on while the new one is not yet in rotation, and drains once it is: the
/// region is never empty in between.
#[tokio::test]
async fn a_departed_address_serves_on_until_a_new_one_of_its_name_is_in_rotation() {
    let (old, new, _dns, proxy) = old_departing().await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(old.seen().len(), 5, "the departed address served");
    assert!(new.seen().is_empty());

    // The new address passes its probes: the departed one drains.
    only_new_left(&new, &proxy).await;
    for _ in 0..5 {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(new.seen().len(), 5);
    assert_eq!(
        old.seen().len(),
        5,
        "no request reached the drained address"
    );
}

/// A name that stops answering (SERVFAIL) while its departed address
/// serves on keeps its last answer: the departed address still serves
/// until the new one is in rotation, and then drains.
#[tokio::test]
async fn a_failing_lookup_while_an_address_departs_keeps_the_last_answer() {
    let (old, new, dns, proxy) = old_departing().await;
    let (o, n) = (old.addr.to_string(), new.addr.to_string());
    dns.fail(NAME, RecordType::A);
    eventually(
        "the lookup failure is counted",
        Duration::from_secs(15),
        || async {
            proxy
                .metric("edgeroute_dns_failures_total{region=\"us-east-1\"}")
                .await
                >= 1.0
        },
    )
    .await;
    assert_eq!(
        backends_of(&proxy.routing().await),
        [(o.clone(), true, true), (n.clone(), false, false)],
        "the last answer stands"
    );
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(old.seen().len(), 3, "the departed address serves on");
    only_new_left(&new, &proxy).await;
    for _ in 0..3 {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(new.seen().len(), 3);
}

/// A departed address serves on for a bounded time: if no new address of
/// its name passes its probes by then, it drains all the same.
#[tokio::test]
async fn a_departed_address_serves_on_for_a_bounded_time() {
    let (old, _new, dns, proxy) = old_and_failing_new("200ms").await;
    dns.set(NAME, &[Ipv4Addr::new(127, 0, 0, 3)]);
    let n = format!("127.0.0.3:{}", old.addr.port());
    eventually(
        "only the new address is left",
        Duration::from_secs(15),
        || async { backends_of(&proxy.routing().await) == [(n.clone(), false, false)] },
    )
    .await;
    let log = proxy.log();
    assert!(
        log.contains("it serves on until one is") && log.contains("served on for its grace"),
        "{log}"
    );
    let status = client().get(proxy.url("/x")).send().await.unwrap().status();
    assert_eq!(status, 503, "nothing of the region is in rotation");
}

/// An address that leaves DNS and comes back keeps its record: one ejected
/// for failing live requests is still ejected on its return, not let back
/// in by its next passing probe.
#[tokio::test]
async fn an_address_back_in_dns_keeps_its_ejection() {
    let good = Origin::start_on("us-east-1", SocketAddr::from(([127, 0, 0, 2], 0))).await;
    let port = good.addr.port();
    let bad = Origin::start_on("us-east-1", SocketAddr::from(([127, 0, 0, 3], port))).await;
    // Probes pass; requests get 500. The good address answers 20 ms late,
    // so that the backend pick (the lower latency of two) sends requests
    // to the failing one, whatever the first pick was.
    bad.set_status(500);
    good.set_delay(Duration::from_millis(20));
    let dns = DnsServer::start().await;
    let both = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
    dns.set(NAME, &both);
    let proxy = proxy_with_health(
        &dns,
        port,
        "interval = \"300ms\"\ntimeout = \"250ms\"\neject_after = 2\neject_for = \"60s\"\n",
    )
    .await;
    let (g, b) = (good.addr.to_string(), bad.addr.to_string());
    let ejected = |routing: &serde_json::Value| {
        routing["regions"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["address"] == b.as_str() && x["ejected"] == true)
    };
    let c = client();
    eventually(
        "the failing address is ejected",
        Duration::from_secs(15),
        || async {
            c.get(proxy.url("/x")).send().await.ok();
            ejected(&proxy.routing().await)
        },
    )
    .await;

    dns.set(NAME, &both[..1]);
    eventually(
        "the failing address leaves",
        Duration::from_secs(15),
        || async { addrs_of(&proxy.routing().await) == [g.clone()] },
    )
    .await;
    dns.set(NAME, &both);
    eventually(
        "the failing address is back",
        Duration::from_secs(15),
        || async { addrs_of(&proxy.routing().await).len() == 2 },
    )
    .await;
    // Its probes pass all along; it is still ejected.
    let before = bad.probes();
    eventually(
        "the returned address is probed",
        Duration::from_secs(15),
        || async { bad.probes() > before + 1 },
    )
    .await;
    assert!(ejected(&proxy.routing().await), "{}", proxy.routing().await);
    // Its passing probe is not logged as its return to rotation.
    let log = proxy.log();
    assert!(
        log.contains("still ejected, in rotation once its ejection ends"),
        "{log}"
    );
    served_without(
        &c,
        &proxy,
        10,
        &bad,
        "no request reached the ejected address",
    )
    .await;
}

/// An address that left DNS with a request still on it shows as draining,
/// in `/routing` and in its in-flight gauge, until the request finishes.
#[tokio::test]
async fn a_draining_address_shows_until_its_requests_finish() {
    let (old, new, dns) = two_origins().await;
    let port = old.addr.port();
    let proxy = proxy_resolving(&dns, port).await;
    old.set(Behaviour::Hold);
    let held = tokio::spawn({
        let url = proxy.url("/slow");
        async move { client().get(url).send().await.map(|r| r.status()) }
    });
    eventually(
        "the request reaches the old address",
        Duration::from_secs(15),
        || async { old.seen().len() == 1 },
    )
    .await;
    dns.set(NAME, &[Ipv4Addr::new(127, 0, 0, 3)]);
    let o = old.addr.to_string();
    let draining = |routing: &serde_json::Value| -> Vec<(String, u64)> {
        routing["regions"][0]["draining"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["address"].as_str().unwrap().to_owned(),
                    d["inflight"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    eventually(
        "the old address drains",
        Duration::from_secs(15),
        || async {
            let r = proxy.routing().await;
            addrs_of(&r) == [new.addr.to_string()] && draining(&r) == [(o.clone(), 1)]
        },
    )
    .await;
    let gauge = format!(
        "edgeroute_backend_inflight{{address=\"{o}\",backend=\"{NAME}:{port}\",region=\"us-east-1\"}}"
    );
    assert_eq!(proxy.metric(&gauge).await, 1.0);

    old.release(1);
    assert_eq!(held.await.unwrap().unwrap(), 200);
    eventually("nothing drains", Duration::from_secs(15), || async {
        draining(&proxy.routing().await).is_empty()
    })
    .await;
}

/// Sends `n` requests through `proxy`, each answered 200, none of them
/// reaching `origin` (`why` says why none may).
async fn served_without(c: &reqwest::Client, proxy: &Proxy, n: usize, origin: &Origin, why: &str) {
    let before = origin.seen().len();
    for _ in 0..n {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(origin.seen().len(), before, "{why}");
}

/// The addresses of the first region's backends, in `/routing`.
fn addrs_of(routing: &serde_json::Value) -> Vec<String> {
    routing["regions"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_owned())
        .collect()
}

/// A region holds at most 64 backends, counting every address its names
/// resolve to (the per-request sets of tried backends are 64-bit masks):
/// the addresses past that get no traffic, at start-up and when a changed
/// answer brings new ones, and every request is still served.
#[tokio::test]
async fn a_region_takes_at_most_64_of_the_addresses_its_names_resolve_to() {
    let ip = |i: u8| Ipv4Addr::new(127, 0, 1, i);
    let first = Origin::start_on("us-east-1", SocketAddr::from((ip(1), 0))).await;
    let port = first.addr.port();
    let mut origins = vec![first];
    for i in 2..=74 {
        origins.push(Origin::start_on("us-east-1", SocketAddr::from((ip(i), port))).await);
    }
    let dns = DnsServer::start().await;
    let answer = |from: u8| (from..from + 70).map(ip).collect::<Vec<_>>();
    dns.set(NAME, &answer(1));

    let proxy = proxy_resolving(&dns, port).await;
    let listed = |from: u8, to: u8| {
        (from..=to)
            .map(|i| format!("{}:{port}", ip(i)))
            .collect::<Vec<_>>()
    };
    assert_eq!(addrs_of(&proxy.routing().await), listed(1, 64));
    let c = client();
    for _ in 0..200 {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    let served = |range: std::ops::RangeInclusive<usize>| {
        origins[range].iter().map(|o| o.seen().len()).sum::<usize>()
    };
    assert_eq!(served(0..=63), 200);
    assert_eq!(
        served(64..=73),
        0,
        "no request reaches an address past the limit"
    );

    // 1–4 leave the answer and 71–74 come in: 4 of the 10 new addresses
    // fill the room the departed ones leave.
    dns.set(NAME, &answer(5));
    let mut expected = listed(5, 64);
    expected.extend(listed(65, 68));
    eventually(
        "the changed answer is followed up to the limit",
        Duration::from_secs(15),
        || async { addrs_of(&proxy.routing().await) == expected },
    )
    .await;
    for _ in 0..200 {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        served(68..=73),
        0,
        "no request reaches an address past the limit"
    );
}

/// Each address a backend name resolves to has its own
/// `edgeroute_backend_up` series: one address down and one up shows as
/// such, not as whichever was written last.
#[tokio::test]
async fn each_address_of_a_backend_name_has_its_own_gauges() {
    let up = Origin::start_on("us-east-1", SocketAddr::from(([127, 0, 0, 2], 0))).await;
    let port = up.addr.port();
    // Nothing listens on 127.0.0.3 at that port: its probes fail.
    let dns = DnsServer::start().await;
    dns.set(
        NAME,
        &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
    );
    let proxy = proxy_resolving(&dns, port).await;
    let series = |ip: &str, name: &str| {
        format!("{name}{{address=\"{ip}:{port}\",backend=\"{NAME}:{port}\",region=\"us-east-1\"}}")
    };
    eventually(
        "one address in rotation, the other out",
        Duration::from_secs(15),
        || async {
            proxy
                .metric(&series("127.0.0.2", "edgeroute_backend_up"))
                .await
                == 1.0
                && proxy
                    .metric(&series("127.0.0.3", "edgeroute_backend_up"))
                    .await
                    == 0.0
        },
    )
    .await;
    let text = proxy.metrics().await;
    for name in ["edgeroute_backend_up", "edgeroute_backend_inflight"] {
        let rows = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .count();
        assert_eq!(rows, 2, "{name}:\n{text}");
    }
}
