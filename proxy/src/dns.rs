//! Backend names — typically ALB DNS names, whose addresses change — are
//! resolved with hickory and re-resolved when their TTL runs out. An address
//! that disappears is retired (in-flight requests finish, no new ones); a new
//! one joins unproven and is probed before it takes traffic.

use crate::health::prober;
use crate::state::AppState;
use crate::topology::{Backend, peer_for, warn_left_out};
use crate::upstream::PoolShape;
use anyhow::Context;
use edgeroute_config::{DnsConfig, MAX_BACKENDS_PER_REGION, ProxyConfig};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Dns {
    resolver: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
}

/// Addresses of one name, and when to ask again (`None`: never, an IP literal).
pub struct Answer {
    pub addrs: Vec<SocketAddr>,
    pub refresh_at: Option<Instant>,
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
            });
        }
        let lookup = self
            .resolver
            .lookup_ip(host)
            .await
            .with_context(|| format!("cannot resolve {host}"))?;
        let now = Instant::now();
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(now)
            .clamp(self.min_ttl, self.max_ttl);
        let mut addrs: Vec<SocketAddr> =
            lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        addrs.sort();
        addrs.dedup();
        anyhow::ensure!(!addrs.is_empty(), "{host} has no address");
        Ok(Answer {
            addrs,
            refresh_at: Some(now + ttl),
        })
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
                .with_context(|| format!("regions[{ri}].backends[{bi}] ({b}) of region {}; check the name or dns.nameservers", r.name))?;
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
            match dns.resolve(&b.host, b.port).await {
                Ok(answer) => {
                    refresh_at[bi] = answer.refresh_at;
                    apply(&state, region, &b.to_string(), &b.host, &answer.addrs);
                }
                Err(e) => {
                    // Keep the addresses we have; try again soon.
                    state
                        .metrics
                        .dns_failures
                        .with_label_values(&[&*state.topology.regions[region].name])
                        .inc();
                    tracing::warn!(region = %cfg.regions[region].name, backend = %b, error = %format!("{e:#}"), "DNS refresh failed; keeping the known addresses");
                    refresh_at[bi] = Some(now + dns.min_ttl.max(Duration::from_secs(1)));
                }
            }
        }
    }
}

/// Makes the region's backends for `label` exactly `addrs`: existing ones
/// keep their state, new ones start unproven (while the region has room:
/// [`MAX_BACKENDS_PER_REGION`]), missing ones are retired.
fn apply(state: &Arc<AppState>, region: usize, label: &str, host: &str, addrs: &[SocketAddr]) {
    let info = &state.topology.regions[region];
    let current = info.backends();
    let mut next: Vec<Arc<Backend>> = Vec::with_capacity(current.len());
    let mut changed = false;
    for b in current.iter() {
        if b.label != label || addrs.contains(&b.addr) {
            next.push(Arc::clone(b));
        } else {
            b.retire();
            state.metrics.address_left(&info.name, b);
            changed = true;
            tracing::info!(region = &*info.name, backend = label, address = %b.addr, "address left DNS; draining it");
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
            tracing::info!(region = &*info.name, backend = label, address = %addr, "new address in DNS; probing it before use");
            prober::spawn(Arc::clone(state), Arc::clone(&backend));
            next.push(backend);
            changed = true;
        }
    }
    if left_out > 0 {
        warn_left_out(&info.name, left_out);
    }
    if changed {
        info.set_backends(next);
    }
}
