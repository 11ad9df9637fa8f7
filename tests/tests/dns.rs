//! Backend names are re-resolved on TTL: the proxy follows a changed answer,
//! drains the departed address and probes the new one before use.

use edgeroute_tests::dns::DnsServer;
use edgeroute_tests::{Origin, ProxyBuilder, client, eventually};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

const NAME: &str = "api.us-east-1.edgeroute.test";

#[tokio::test]
async fn the_proxy_follows_a_changed_dns_answer_within_the_ttl() {
    // Two origins on one port, at two loopback addresses: what DNS says
    // decides which one a request reaches.
    let old = Origin::start_on("us-east-1", SocketAddr::from(([127, 0, 0, 2], 0))).await;
    let port = old.addr.port();
    let new = Origin::start_on("us-east-1", SocketAddr::from(([127, 0, 0, 3], port))).await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &[Ipv4Addr::new(127, 0, 0, 2)]);

    let proxy = ProxyBuilder::new("us-east-1")
        .region_named("us-east-1", &[&format!("{NAME}:{port}")])
        .extra(&format!(
            "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"100ms\"\n\n[health]\ninterval = \"100ms\"\ntimeout = \"80ms\"\njitter = \"0ms\"\n",
            dns.addr
        ))
        .start()
        .await;
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
    let routing = proxy.routing().await;
    let addrs: Vec<&str> = routing["regions"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addrs,
        [new.addr.to_string()],
        "the old address is gone: {routing}"
    );
    let before = old.seen().len();
    for _ in 0..5 {
        assert_eq!(c.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        old.seen().len(),
        before,
        "no new request reaches the departed address"
    );
}
