//! The backends this proxy knows, from its config, with their live state.
//!
//! Backends are built once at start-up and shared by every routing snapshot,
//! so their live state (in-flight requests, connect failures, ejection)
//! survives routing-table swaps.

use edgeroute_config::ProxyConfig;
use pingora_core::upstreams::peer::HttpPeer;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One upstream address in one region.
pub struct Backend {
    /// `host:port` as configured, for logs and metrics.
    pub label: String,
    pub region: usize,
    /// A ready-made peer, cloned per request.
    peer: HttpPeer,
    inflight: AtomicU32,
    consecutive_connect_failures: AtomicU32,
    /// Milliseconds since [`Topology::epoch`] until which the backend is out
    /// of rotation; 0 when it is in.
    ejected_until_ms: AtomicU64,
    clock: Instant,
}

impl Backend {
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }

    pub fn address(&self) -> SocketAddr {
        match self.peer._address.as_inet() {
            Some(a) => *a,
            None => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 always means "not ejected".
        self.clock.elapsed().as_millis() as u64 + 1
    }

    /// In rotation: not ejected, or its ejection has run out.
    pub fn is_live(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    /// Counts a failed connect; ejects the backend for `eject_for` once
    /// `eject_after` failures happened in a row. Returns true if it ejected.
    pub fn record_connect_failure(&self, eject_after: u32, eject_for: Duration) -> bool {
        let n = self
            .consecutive_connect_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if n >= eject_after {
            let until = self.now_ms() + eject_for.as_millis() as u64;
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A response arrived: the backend is reachable.
    pub fn record_success(&self) {
        if self.consecutive_connect_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_connect_failures
                .store(0, Ordering::Relaxed);
        }
        if self.ejected_until_ms.load(Ordering::Relaxed) != 0 {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Marks one request as in flight on this backend until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(Arc::clone(self))
    }
}

/// Decrements the backend's in-flight count when dropped.
pub struct InflightGuard(Arc<Backend>);

impl InflightGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct RegionInfo {
    pub name: Arc<str>,
    pub backends: Vec<Arc<Backend>>,
    /// `Host` header override for this region's backends.
    pub host: Option<String>,
}

impl RegionInfo {
    pub fn has_live_backend(&self) -> bool {
        self.backends.iter().any(|b| b.is_live())
    }
}

/// Every configured region and its backends, indexed as in the config.
pub struct Topology {
    pub regions: Vec<RegionInfo>,
    pub local: usize,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot resolve backend {backend} of region {region}: {reason}; check the name or use an IP address"
)]
pub struct ResolveError {
    pub region: String,
    pub backend: String,
    pub reason: String,
}

impl Topology {
    /// Builds the topology, resolving every backend name once.
    pub fn build(cfg: &ProxyConfig) -> Result<Self, ResolveError> {
        let clock = Instant::now();
        let mut regions = Vec::with_capacity(cfg.regions.len());
        for (ri, r) in cfg.regions.iter().enumerate() {
            let mut backends = Vec::with_capacity(r.backends.len());
            for b in &r.backends {
                let label = b.to_string();
                let err = |reason: String| ResolveError {
                    region: r.name.clone(),
                    backend: label.clone(),
                    reason,
                };
                let addr = (b.host.as_str(), b.port)
                    .to_socket_addrs()
                    .map_err(|e| err(e.to_string()))?
                    .next()
                    .ok_or_else(|| err("no address".into()))?;
                let sni = r.sni.clone().unwrap_or_else(|| b.host.clone());
                let mut peer = HttpPeer::new(addr, r.tls, sni);
                peer.options.connection_timeout = Some(cfg.timeouts.connect);
                peer.options.total_connection_timeout = Some(cfg.timeouts.connect * 2);
                peer.options.read_timeout = Some(cfg.timeouts.read);
                peer.options.write_timeout = Some(cfg.timeouts.write);
                peer.options.idle_timeout = Some(cfg.timeouts.pool_idle);
                backends.push(Arc::new(Backend {
                    label,
                    region: ri,
                    peer,
                    inflight: AtomicU32::new(0),
                    consecutive_connect_failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                    clock,
                }));
            }
            regions.push(RegionInfo {
                name: Arc::from(r.name.as_str()),
                backends,
                host: r.host.clone(),
            });
        }
        Ok(Topology {
            regions,
            local: cfg.local_region,
        })
    }

    pub fn region_names(&self) -> impl Iterator<Item = &str> + Clone {
        self.regions.iter().map(|r| &*r.name)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A topology of `n` regions with `per_region` backends on unroutable
    /// loopback ports; nothing connects to them in unit tests.
    pub fn topology(n: usize, per_region: usize) -> Topology {
        let clock = Instant::now();
        let regions = (0..n)
            .map(|ri| RegionInfo {
                name: Arc::from(format!("region-{ri}").as_str()),
                host: None,
                backends: (0..per_region)
                    .map(|bi| {
                        let port = 10_000 + (ri * 100 + bi) as u16;
                        Arc::new(Backend {
                            label: format!("127.0.0.1:{port}"),
                            region: ri,
                            peer: HttpPeer::new(
                                SocketAddr::from(([127, 0, 0, 1], port)),
                                false,
                                String::new(),
                            ),
                            inflight: AtomicU32::new(0),
                            consecutive_connect_failures: AtomicU32::new(0),
                            ejected_until_ms: AtomicU64::new(0),
                            clock,
                        })
                    })
                    .collect(),
            })
            .collect();
        Topology { regions, local: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_eject_after_threshold_and_success_readmits() {
        let t = testing::topology(1, 1);
        let b = &t.regions[0].backends[0];
        assert!(!b.record_connect_failure(3, Duration::from_secs(60)));
        assert!(!b.record_connect_failure(3, Duration::from_secs(60)));
        assert!(b.is_live());
        assert!(b.record_connect_failure(3, Duration::from_secs(60)));
        assert!(!b.is_live());
        assert!(!t.regions[0].has_live_backend());
        b.record_success();
        assert!(b.is_live());
    }

    #[test]
    fn ejection_runs_out() {
        let t = testing::topology(1, 1);
        let b = &t.regions[0].backends[0];
        b.record_connect_failure(1, Duration::ZERO);
        assert!(b.is_live());
    }

    #[test]
    fn inflight_guard_counts() {
        let t = testing::topology(1, 1);
        let b = &t.regions[0].backends[0];
        let g1 = b.start_request();
        let g2 = b.start_request();
        assert_eq!(b.inflight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(b.inflight(), 0);
    }
}
