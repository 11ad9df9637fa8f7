//! Backend names — typically ALB DNS names, whose addresses change — are
//! resolved with hickory and re-resolved when their TTL runs out. An address
//! that disappears is retired (in-flight requests finish, no new ones); a new
//! one joins unproven and is probed before it takes traffic.

use crate::health::prober;
use crate::state::AppState;
use crate::topology::{Backend, RegionInfo, peer_for, warn_left_out};
use crate::upstream::PoolShape;
use anyhow::Context;
use edgeroute_config::{DnsConfig, HealthConfig, MAX_BACKENDS_PER_REGION, ProxyConfig};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Dns {
    resolver: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
}

/// Addresses of one name, and when to ask again (`None`: never, an IP literal).
#[derive(Debug)]
pub struct Answer {
    pub addrs: Vec<SocketAddr>,
    pub refresh_at: Option<Instant>,
    /// A family whose lookup failed while the other one answered: its
    /// addresses are unknown, not gone, and `addrs` holds none of them.
    pub unanswered: Option<(Family, String)>,
}

/// An address family, looked up on its own (A or AAAA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn holds(self, addr: &SocketAddr) -> bool {
        addr.is_ipv4() == (self == Family::V4)
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "A (IPv4)",
            Family::V6 => "AAAA (IPv6)",
        })
    }
}

/// What one family's lookup said: its addresses and until when they hold,
/// or why it could not be read. "No such records" is an answer (none).
type FamilyAnswer = Result<(Vec<IpAddr>, Option<Instant>), String>;

fn family_answer(lookup: Result<Lookup, NetError>) -> FamilyAnswer {
    match lookup {
        Ok(lookup) => {
            let ips = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect();
            Ok((ips, Some(lookup.valid_until())))
        }
        Err(e) if e.is_no_records_found() => Ok((Vec::new(), None)),
        Err(e) => Err(e.to_string()),
    }
}

/// Combines the two families' lookups of `host`. One family failing while
/// the other answers is an answer that leaves the failed family unknown;
/// both failing, or no address known at all, is an error.
fn combine(
    host: &str,
    port: u16,
    v4: FamilyAnswer,
    v6: FamilyAnswer,
    now: Instant,
    ttl: (Duration, Duration),
    retry: Duration,
) -> anyhow::Result<Answer> {
    let (min_ttl, max_ttl) = ttl;
    let unanswered = match (&v4, &v6) {
        (Err(a), Err(b)) => anyhow::bail!("cannot resolve {host}: A: {a}; AAAA: {b}"),
        (Err(e), _) => Some((Family::V4, e.clone())),
        (_, Err(e)) => Some((Family::V6, e.clone())),
        _ => None,
    };
    let answered = [v4, v6].into_iter().flatten();
    let (mut addrs, mut valid_until) = (Vec::new(), None::<Instant>);
    for (ips, until) in answered {
        if ips.is_empty() {
            continue;
        }
        addrs.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, port)));
        if let Some(t) = until {
            valid_until = Some(valid_until.map_or(t, |v| v.min(t)));
        }
    }
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        match &unanswered {
            Some((family, e)) => {
                anyhow::bail!(
                    "cannot resolve {host}: {family}: {e}; the other family has no address"
                )
            }
            None => anyhow::bail!("{host} has no address"),
        }
    }
    let ttl = valid_until
        .map_or(min_ttl, |t| t.saturating_duration_since(now))
        .clamp(min_ttl, max_ttl);
    // A failed family is asked again soon, not after the other's TTL.
    let ttl = if unanswered.is_some() {
        ttl.min(retry)
    } else {
        ttl
    };
    Ok(Answer {
        addrs,
        refresh_at: Some(now + ttl),
        unanswered,
    })
}

impl Dns {
    pub fn new(cfg: &DnsConfig) -> anyhow::Result<Self> {
        let mut opts = ResolverOpts::default();
        // The proxy schedules re-resolution itself; the resolver's cache
        // must not serve an answer past its TTL.
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        let builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .context("cannot read the system DNS configuration; set dns.nameservers")?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|ns| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = ns.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = ns.port();
                    NameServerConfig::new(ns.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder
            .with_options(opts)
            .build()
            .context("cannot build the DNS resolver")?;
        Ok(Dns {
            resolver,
            min_ttl: cfg.min_ttl,
            max_ttl: cfg.max_ttl,
        })
    }

    pub async fn resolve(&self, host: &str, port: u16) -> anyhow::Result<Answer> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Answer {
                addrs: vec![SocketAddr::new(ip, port)],
                refresh_at: None,
                unanswered: None,
            });
        }
        // Each family on its own: a dual lookup answers with one family
        // when the other fails, which would read as its addresses leaving.
        let (v4, v6) = tokio::join!(
            self.resolver.ipv4_lookup(host),
            self.resolver.ipv6_lookup(host)
        );
        combine(
            host,
            port,
            family_answer(v4),
            family_answer(v6),
            Instant::now(),
            (self.min_ttl, self.max_ttl),
            self.retry(),
        )
    }

    /// How soon a failed lookup is tried again.
    pub fn retry(&self) -> Duration {
        self.min_ttl.max(Duration::from_secs(1))
    }
}

/// Resolves every configured backend once; any failure is fatal at start-up.
pub async fn resolve_all(cfg: &ProxyConfig, dns: &Dns) -> anyhow::Result<Vec<Vec<Answer>>> {
    let mut regions = Vec::with_capacity(cfg.regions.len());
    for (ri, r) in cfg.regions.iter().enumerate() {
        let mut answers = Vec::with_capacity(r.backends.len());
        for (bi, b) in r.backends.iter().enumerate() {
            let answer = dns
                .resolve(&b.host, b.port)
                .await
                .with_context(|| format!("regions[{ri}].backends[{bi}] ({b}, region {}) cannot be resolved; check the name or dns.nameservers", r.name))?;
            if let Some((family, error)) = &answer.unanswered {
                tracing::warn!(region = %r.name, backend = %b, %family, %error, "DNS lookup of one address family failed; starting with the other, and asking again soon");
            }
            answers.push(answer);
        }
        regions.push(answers);
    }
    Ok(regions)
}

/// Re-resolves the names of one region whenever an answer's TTL runs out,
/// and swaps the region's backend list when addresses change.
pub async fn refresh_region(
    state: Arc<AppState>,
    dns: Arc<Dns>,
    region: usize,
    mut refresh_at: Vec<Option<Instant>>,
) {
    let cfg = &state.config;
    let configured = &cfg.regions[region].backends;
    let name = &*state.topology.regions[region].name;
    // Per backend name: its lookups are failing. A streak is logged when it
    // starts and when it ends; the counter takes every failure.
    let mut failing = vec![false; configured.len()];
    loop {
        let Some(next) = refresh_at.iter().flatten().min().copied() else {
            return; // only IP literals
        };
        tokio::select! {
            _ = state.lifecycle.shutdown_started() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        let now = Instant::now();
        for (bi, b) in configured.iter().enumerate() {
            if refresh_at[bi].is_none_or(|t| t > now) {
                continue;
            }
            let label = b.to_string();
            let failure = match dns.resolve(&b.host, b.port).await {
                Ok(answer) => {
                    refresh_at[bi] = answer.refresh_at;
                    let unknown = answer.unanswered.as_ref().map(|(family, _)| *family);
                    apply(&state, region, &label, &b.host, &answer.addrs, unknown);
                    answer.unanswered.map(|(family, error)| {
                        format!("{family} lookup: {error}; keeping its known addresses")
                    })
                }
                Err(e) => {
                    // Keep the addresses we have; try again soon.
                    refresh_at[bi] = Some(now + dns.retry());
                    Some(format!("{e:#}; keeping the known addresses"))
                }
            };
            match (failure, failing[bi]) {
                (Some(error), was_failing) => {
                    state.metrics.dns_failures.with_label_values(&[name]).inc();
                    if was_failing {
                        tracing::debug!(region = name, backend = %b, %error, "DNS refresh failed again");
                    } else {
                        tracing::warn!(region = name, backend = %b, %error, retry_in = ?dns.retry(), "DNS refresh failed; logged again when it answers (edgeroute_dns_failures_total counts each failure)");
                    }
                    failing[bi] = true;
                }
                (None, true) => {
                    tracing::info!(region = name, backend = %b, "DNS answers again");
                    failing[bi] = false;
                }
                (None, false) => {}
            }
        }
    }
}

/// How long an address that left DNS serves on while no other address of
/// its name is in rotation: time for a new address's first probes (three
/// rounds), after which it goes whatever they said.
fn departure_grace(health: &HealthConfig) -> Duration {
    (health.interval + health.jitter) * 3 + health.timeout
}

/// Makes the region's backends for `label` exactly `addrs`: existing ones
/// keep their state, new ones start unproven (while the region has room:
/// [`MAX_BACKENDS_PER_REGION`]), missing ones are retired. A missing one
/// that is in rotation while no address of its name that stays or joins
/// is departs instead: it serves on until one is, for
/// [`departure_grace`] (noticed at its next probe: [`settle`]) and while
/// the region has room, so a name whose addresses all change at once is
/// not empty while the new ones are probed. `unknown`: a family whose
/// lookup failed, whose addresses stay as they are.
fn apply(
    state: &Arc<AppState>,
    region: usize,
    label: &str,
    host: &str,
    addrs: &[SocketAddr],
    unknown: Option<Family>,
) {
    let info = &state.topology.regions[region];
    let _membership = info.membership.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let current = info.backends();
    let mut next: Vec<Arc<Backend>> = Vec::with_capacity(current.len());
    let mut leaving: Vec<&Arc<Backend>> = Vec::new();
    let mut changed = false;
    for b in current.iter() {
        if b.label != label {
            next.push(Arc::clone(b));
        } else if unknown.is_some_and(|f| f.holds(&b.addr)) && !b.is_departing() {
            // Its family's lookup failed: unknown, not gone.
            next.push(Arc::clone(b));
        } else if addrs.contains(&b.addr) {
            if b.stay() {
                tracing::info!(region = &*info.name, backend = label, address = %b.addr, "departing address back in DNS");
                changed = true;
            }
            next.push(Arc::clone(b));
        } else {
            leaving.push(b);
        }
    }
    let mut left_out = 0;
    for addr in addrs {
        if !current.iter().any(|b| b.label == label && b.addr == *addr) {
            if next.len() >= MAX_BACKENDS_PER_REGION {
                left_out += 1;
                continue;
            }
            let backend = Arc::new(Backend::new(
                label.to_owned(),
                *addr,
                region,
                peer_for(&state.config, region, host, *addr),
                &state.config.health,
                PoolShape::of(&state.config),
                state.topology.clock,
            ));
            let memory = state.config.health.max_eject_for;
            match info.recall_left(label, *addr, now, memory) {
                Some(record) => {
                    backend.take_record(record);
                    tracing::info!(region = &*info.name, backend = label, address = %addr, ejected = backend.is_ejected(now), "address back in DNS; probing it before use, its record of failures and ejections kept");
                }
                None => {
                    tracing::info!(region = &*info.name, backend = label, address = %addr, "new address in DNS; probing it before use")
                }
            }
            prober::spawn(Arc::clone(state), Arc::clone(&backend));
            next.push(backend);
            changed = true;
        }
    }
    let name_serves = next.iter().any(|b| b.label == label && b.in_rotation(now));
    let grace = departure_grace(&state.config.health);
    for b in leaving {
        // Room permitting: a region holds at most MAX_BACKENDS_PER_REGION.
        let room = next.len() < MAX_BACKENDS_PER_REGION;
        if room && !name_serves && b.in_rotation(now) && !b.departure_over(now) {
            if b.depart(now + grace) {
                tracing::info!(region = &*info.name, backend = label, address = %b.addr, grace = ?grace, "address left DNS while no other address of its name is in rotation; it serves on until one is");
                changed = true;
            }
            next.push(Arc::clone(b));
        } else {
            retire(state, info, b, now, "address left DNS; draining it");
            changed = true;
        }
    }
    if left_out > 0 {
        warn_left_out(&info.name, left_out);
    }
    if changed {
        store(state, info, next, now);
    }
}

/// Makes `list` the region's backends, lifting the ejections a shorter
/// list would hold beyond the region's rules
/// ([`RegionInfo::store_holding_ejections`]).
fn store(state: &AppState, info: &RegionInfo, list: Vec<Arc<Backend>>, now: Instant) {
    let max_percent = state.config.health.max_ejection_percent;
    for b in info.store_holding_ejections(list, max_percent, now) {
        tracing::info!(region = &*info.name, backend = %b.label, address = %b.addr, "ejection lifted: with the region's backends changed it was past health.max_ejection_percent, or left no backend in rotation");
    }
}

/// Retires the region's departing addresses of `label` that are done
/// serving on: another address of the name is in rotation, they are out
/// of it themselves, or their time has run out. Asked by the probes.
pub fn settle(state: &AppState, region: usize, label: &str) {
    let info = &state.topology.regions[region];
    // Another address of the name serves.
    let serves = |list: &[Arc<Backend>], now: Instant| {
        list.iter()
            .any(|b| b.label == label && !b.is_departing() && b.in_rotation(now))
    };
    let done = |name_serves: bool, b: &Backend, now: Instant| {
        b.is_departing() && (name_serves || !b.in_rotation(now) || b.departure_over(now))
    };
    let settles = |list: &[Arc<Backend>], now: Instant| {
        let name_serves = serves(list, now);
        list.iter()
            .any(|b| b.label == label && done(name_serves, b, now))
    };
    if !settles(&info.backends(), Instant::now()) {
        return;
    }
    let _membership = info.membership.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let current = info.backends();
    let name_serves = serves(&current, now);
    let mut next = Vec::with_capacity(current.len());
    for b in current.iter() {
        if b.label == label && done(name_serves, b, now) {
            let why = if name_serves {
                "another address of its name is in rotation; the departed address drains"
            } else if b.departure_over(now) {
                "departed address served on for its grace; draining it"
            } else {
                "departed address out of rotation; draining it"
            };
            retire(state, info, b, now, why);
        } else {
            next.push(Arc::clone(b));
        }
    }
    store(state, info, next, now);
}

fn retire(state: &AppState, info: &RegionInfo, b: &Arc<Backend>, now: Instant, why: &'static str) {
    b.retire();
    info.drain(b);
    // Should the address come back, it comes back with its record.
    info.remember_left(b, now, state.config.health.max_eject_for);
    state.metrics.address_left(&info.name, b);
    tracing::info!(region = &*info.name, backend = %b.label, address = %b.addr, "{why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));
    const RETRY: Duration = Duration::from_secs(2);

    fn ips(list: &[&str], until: Instant) -> FamilyAnswer {
        Ok((
            list.iter().map(|s| s.parse().unwrap()).collect(),
            Some(until),
        ))
    }

    fn none() -> FamilyAnswer {
        Ok((Vec::new(), None))
    }

    fn failed() -> FamilyAnswer {
        Err("SERVFAIL".to_owned())
    }

    fn run(v4: FamilyAnswer, v6: FamilyAnswer, now: Instant) -> anyhow::Result<Answer> {
        combine("api.example.com", 443, v4, v6, now, TTL, RETRY)
    }

    #[test]
    fn both_families_answer_together_with_the_shorter_ttl() {
        let now = Instant::now();
        let v4 = ips(&["10.0.0.2", "10.0.0.1"], now + Duration::from_secs(60));
        let v6 = ips(&["2001:db8::1"], now + Duration::from_secs(30));
        let a = run(v4, v6, now).unwrap();
        let want: Vec<SocketAddr> = ["10.0.0.1:443", "10.0.0.2:443", "[2001:db8::1]:443"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(a.addrs, want);
        assert_eq!(a.refresh_at, Some(now + Duration::from_secs(30)));
        assert!(a.unanswered.is_none());
    }

    #[test]
    fn a_family_with_no_records_is_an_answer_of_none() {
        let now = Instant::now();
        let a = run(
            ips(&["10.0.0.1"], now + Duration::from_secs(900)),
            none(),
            now,
        )
        .unwrap();
        assert_eq!(a.addrs, ["10.0.0.1:443".parse().unwrap()]);
        assert!(a.unanswered.is_none());
        assert_eq!(a.refresh_at, Some(now + TTL.1), "TTL clamped to max_ttl");
    }

    #[test]
    fn a_failed_family_is_unknown_and_asked_again_soon() {
        let now = Instant::now();
        let a = run(
            failed(),
            ips(&["2001:db8::1"], now + Duration::from_secs(60)),
            now,
        )
        .unwrap();
        assert_eq!(a.addrs, ["[2001:db8::1]:443".parse().unwrap()]);
        let (family, error) = a.unanswered.expect("the A lookup failed");
        assert_eq!(family, Family::V4);
        assert_eq!(error, "SERVFAIL");
        assert_eq!(a.refresh_at, Some(now + RETRY));
        let a = run(
            ips(&["10.0.0.1"], now + Duration::from_secs(60)),
            failed(),
            now,
        )
        .unwrap();
        assert_eq!(a.unanswered.map(|u| u.0), Some(Family::V6));
    }

    #[test]
    fn nothing_known_is_an_error_that_keeps_what_the_proxy_has() {
        let now = Instant::now();
        let e = run(failed(), failed(), now).unwrap_err().to_string();
        assert!(e.contains("A: SERVFAIL; AAAA: SERVFAIL"), "{e}");
        let e = run(failed(), none(), now).unwrap_err().to_string();
        assert!(e.contains("A (IPv4): SERVFAIL"), "{e}");
        let e = run(none(), none(), now).unwrap_err().to_string();
        assert_eq!(e, "api.example.com has no address");
    }

    #[test]
    fn family_tells_the_addresses_it_holds() {
        let v4: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert!(Family::V4.holds(&v4) && !Family::V4.holds(&v6));
        assert!(Family::V6.holds(&v6) && !Family::V6.holds(&v4));
    }
}

#[cfg(test)]
mod apply_tests {
    use super::*;
    use crate::topology::Topology;
    use pingora_core::connectors::TransportConnector;

    /// A proxy's state whose one region's name resolved to `addrs`, all
    /// of them in rotation. Probes of later addresses run once an hour
    /// (their first, at once, fails: nothing listens on port 1).
    fn state_with(addrs: &[SocketAddr]) -> Arc<AppState> {
        let config = ProxyConfig::from_toml(
            "local_region = \"us-east-1\"\n[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
             [[regions]]\nname = \"us-east-1\"\nbackends = [\"api.test:1\"]\n\
             [table]\nsource = \"file\"\npath = \"table.json\"\n\
             [health]\ninterval = \"1h\"\ntimeout = \"1s\"\n",
            std::path::Path::new("/etc/edgeroute"),
        )
        .expect("a valid config");
        let topology = Topology::build(&config, &[vec![addrs.to_vec()]]);
        let now = Instant::now();
        for b in topology.regions[0].backends().iter() {
            b.record_probe(true, None, &config.health, now);
        }
        Arc::new(AppState::new(
            config,
            topology,
            None,
            TransportConnector::new(None),
        ))
    }

    fn v4(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x7f01_0000 + i), 1))
    }

    fn departing(state: &AppState) -> usize {
        let list = state.topology.regions[0].backends();
        list.iter().filter(|b| b.is_departing()).count()
    }

    /// Departing addresses count toward the region's 64: a name whose 40
    /// addresses all change keeps 24 of the old ones serving, not 40.
    #[tokio::test]
    async fn departing_addresses_keep_within_the_region_limit() {
        let old: Vec<SocketAddr> = (0..40).map(v4).collect();
        let new: Vec<SocketAddr> = (100..140).map(v4).collect();
        let state = state_with(&old);
        apply(&state, 0, "api.test:1", "api.test", &new, None);
        let list = state.topology.regions[0].backends();
        assert_eq!(list.len(), MAX_BACKENDS_PER_REGION);
        assert_eq!(departing(&state), MAX_BACKENDS_PER_REGION - 40);
    }

    /// A family whose lookup failed keeps its addresses as they are: one
    /// departing goes on departing, one staying stays.
    #[tokio::test]
    async fn a_failed_family_brings_no_departed_address_back() {
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 1));
        let state = state_with(&[v4(1)]);
        apply(&state, 0, "api.test:1", "api.test", &[v4(2), v6], None);
        assert_eq!(departing(&state), 1, "the old address departs");
        // A fails; AAAA answers as before.
        apply(&state, 0, "api.test:1", "api.test", &[v6], Some(Family::V4));
        let list = state.topology.regions[0].backends();
        let addrs: Vec<SocketAddr> = list.iter().map(|b| b.addr).collect();
        assert!(addrs.contains(&v4(1)) && addrs.contains(&v4(2)) && addrs.contains(&v6));
        assert_eq!(departing(&state), 1, "still departing");
        assert!(list.iter().any(|b| b.addr == v4(1) && b.is_departing()));
    }
}
