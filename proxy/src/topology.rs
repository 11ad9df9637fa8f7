//! The backends this proxy knows, with their live state.
//!
//! A backend is one address of one configured `host:port` in one region. Its
//! live state — in-flight requests, probe health, outlier ejection, peak-EWMA
//! latency — lives here, shared by every routing snapshot, so it survives
//! routing-table swaps. A region's backend list is itself swapped whole when
//! DNS answers change; backends that stay keep their state.

use crate::health::outlier::Verdict;
use crate::health::{Outlier, OutlierPolicy, PeakEwma, ProbeState};
use crate::upstream::{IdlePool, PoolShape};
use arc_swap::ArcSwap;
use edgeroute_config::{HealthConfig, MAX_BACKENDS_PER_REGION, ProxyConfig};
use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Latency assumed for a backend with no sample yet: moderate, so a new
/// backend is not preferred over a known fast one, and decaying like any
/// estimate, so it is tried before long.
pub const DEFAULT_RTT: Duration = Duration::from_millis(50);

struct Live {
    probe: ProbeState,
    outlier: Outlier,
    ewma: PeakEwma,
}

/// One upstream address in one region.
pub struct Backend {
    /// `host:port` as configured, for logs and metrics.
    pub label: String,
    pub addr: SocketAddr,
    pub region: usize,
    peer: HttpPeer,
    inflight: AtomicU32,
    // Lock-free mirrors of `live`, read on every pick.
    probe_healthy: AtomicBool,
    /// Has passed a probe (or started healthy): a candidate in panic mode.
    proven: AtomicBool,
    /// Milliseconds since `clock` until which the backend is ejected; 0: not.
    ejected_until_ms: AtomicU64,
    /// Its last ejection was for 5xx answers (it answers, badly), not for
    /// failing to answer.
    ejected_for_answers: AtomicBool,
    /// Its address left DNS: no new requests.
    retired: AtomicBool,
    /// Its address left DNS while no other address of its name was in
    /// rotation: it serves on until one is, or until this time
    /// (milliseconds since `clock`, plus one; 0: not departing).
    departing_until_ms: AtomicU64,
    /// Its last exchange failed: the next success has a streak to end.
    failing: AtomicBool,
    clock: Instant,
    live: Mutex<Live>,
    /// Keep-alive connections to it, idle until the next request.
    pub idle: IdlePool,
}

impl Backend {
    pub fn new(
        label: String,
        addr: SocketAddr,
        region: usize,
        peer: HttpPeer,
        health: &HealthConfig,
        pool: PoolShape,
        clock: Instant,
    ) -> Self {
        let start_healthy = health.start_healthy || !health.probes;
        let idle_timeout = peer.options.idle_timeout.unwrap_or(Duration::from_secs(60));
        Backend {
            label,
            addr,
            region,
            peer,
            idle: IdlePool::new(idle_timeout, pool),
            inflight: AtomicU32::new(0),
            probe_healthy: AtomicBool::new(start_healthy),
            proven: AtomicBool::new(start_healthy),
            ejected_until_ms: AtomicU64::new(0),
            ejected_for_answers: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            departing_until_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            clock,
            live: Mutex::new(Live {
                probe: ProbeState::new(start_healthy),
                outlier: Outlier::default(),
                // Backends created together start with equal estimates.
                ewma: PeakEwma::new(DEFAULT_RTT, health.latency_decay, clock),
            }),
        }
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        // The state stays consistent even if a holder panicked: every update
        // is a single assignment.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }

    pub fn peer_template(&self) -> &HttpPeer {
        &self.peer
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    fn ms_since_clock(&self, t: Instant) -> u64 {
        // +1 so that 0 always means "not ejected".
        t.saturating_duration_since(self.clock).as_millis() as u64 + 1
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.ms_since_clock(now) < until
    }

    pub fn probe_healthy(&self) -> bool {
        self.probe_healthy.load(Ordering::Relaxed)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Marks it departing until `until`, unless it is already; whether it
    /// was not.
    pub fn depart(&self, until: Instant) -> bool {
        self.departing_until_ms
            .compare_exchange(
                0,
                self.ms_since_clock(until),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Its address is back in DNS: no longer departing. Whether it was.
    pub fn stay(&self) -> bool {
        self.departing_until_ms.swap(0, Ordering::Relaxed) != 0
    }

    pub fn is_departing(&self) -> bool {
        self.departing_until_ms.load(Ordering::Relaxed) != 0
    }

    /// Departing, and its time to serve on has run out.
    pub fn departure_over(&self, now: Instant) -> bool {
        let until = self.departing_until_ms.load(Ordering::Relaxed);
        until != 0 && self.ms_since_clock(now) >= until
    }

    /// In rotation: passes its probes, is not ejected, is still in DNS.
    pub fn in_rotation(&self, now: Instant) -> bool {
        self.probe_healthy() && !self.is_ejected(now) && !self.is_retired()
    }

    /// Has passed a probe at least once (or started healthy). A backend
    /// never proven is not one the region lost: it neither counts toward
    /// panic mode nor gets its traffic.
    pub fn is_proven(&self) -> bool {
        self.proven.load(Ordering::Relaxed)
    }

    pub fn is_probed(&self) -> bool {
        self.live().probe.is_probed()
    }

    /// The peak-EWMA latency estimate in seconds; before any sample, a
    /// decaying [`DEFAULT_RTT`].
    pub fn latency(&self, now: Instant) -> f64 {
        self.live().ewma.cost(now)
    }

    /// The estimate, if it comes from samples.
    pub fn measured_latency(&self, now: Instant) -> Option<f64> {
        self.live().ewma.measured(now)
    }

    /// Load for balancing: latency weighted by the requests already waiting.
    pub fn load(&self, now: Instant) -> f64 {
        self.latency(now) * f64::from(self.inflight() + 1)
    }

    /// A probe finished. Returns the new rotation state when it changed.
    pub fn record_probe(
        &self,
        passed: bool,
        latency: Option<Duration>,
        health: &HealthConfig,
        now: Instant,
    ) -> Option<bool> {
        let mut live = self.live();
        if let Some(l) = latency {
            live.ewma.observe(l, now);
        }
        let change = live.probe.record(passed, health.fall, health.rise);
        self.probe_healthy
            .store(live.probe.is_healthy(), Ordering::Relaxed);
        self.proven.store(live.probe.is_proven(), Ordering::Relaxed);
        change
    }

    /// A response header arrived from this backend. A 5xx is a failure;
    /// any other answer is a success once it has all come (see
    /// [`Self::record_success`]).
    pub fn record_response(
        &self,
        status: u16,
        latency: Duration,
        policy: &OutlierPolicy,
        now: Instant,
        cap: Cap<'_>,
    ) -> Verdict {
        let mut live = self.live();
        live.ewma.observe(latency, now);
        if status >= 500 {
            self.failure(&mut live, policy, now, cap, true)
        } else {
            Verdict::Kept
        }
    }

    /// An answer came whole: it ends a streak of failures. (No lock is
    /// taken unless there is one.)
    pub fn record_success(&self) {
        if self.failing.load(Ordering::Relaxed) {
            let mut live = self.live();
            live.outlier.record_success();
            self.failing.store(false, Ordering::Relaxed);
        }
    }

    /// A failure on live traffic other than a 5xx answer: connecting to
    /// this backend failed, or an exchange failed on its side after the
    /// request went out (it reset or closed the connection, let a timeout
    /// pass, or sent an answer that cannot be read). One whose answer's
    /// head did not come in time also counts as an answer that took as long
    /// as the wait (`slow`), which it did at the least.
    pub fn record_failure(
        &self,
        slow: Option<Duration>,
        policy: &OutlierPolicy,
        now: Instant,
        cap: Cap<'_>,
    ) -> Verdict {
        let mut live = self.live();
        if let Some(took) = slow {
            live.ewma.observe(took, now);
        }
        self.failure(&mut live, policy, now, cap, false)
    }

    /// The region's cap is asked only when this failure would eject, and
    /// its lock is held until the ejection shows in `ejected_until_ms`:
    /// two backends failing at once cannot both take the cap's last place.
    fn failure(
        &self,
        live: &mut Live,
        policy: &OutlierPolicy,
        now: Instant,
        cap: Cap<'_>,
        answered: bool,
    ) -> Verdict {
        let mut permit = None;
        let verdict = live.outlier.record_failure(policy, now, || {
            permit = cap.permit(answered, now);
            permit.is_some()
        });
        self.mirror(&live.outlier);
        if matches!(verdict, Verdict::Ejected(_)) {
            self.ejected_for_answers.store(answered, Ordering::Relaxed);
        }
        drop(permit);
        verdict
    }

    /// Copies what picks read of `outlier` (its streak, its ejection) to
    /// the lock-free mirrors; called with `live` held.
    fn mirror(&self, outlier: &Outlier) {
        self.failing.store(outlier.failing(), Ordering::Relaxed);
        if let Some(until) = outlier.ejected_until() {
            self.ejected_until_ms
                .store(self.ms_since_clock(until), Ordering::Relaxed);
        }
    }

    /// Ends its ejection now (the backoff goes on counting it).
    fn lift_ejection(&self, now: Instant) {
        let mut live = self.live();
        live.outlier.lift(now);
        self.mirror(&live.outlier);
    }

    /// Its record of failures and ejections, when there is one: kept for a
    /// while after its address leaves DNS, so that an address coming back
    /// does not come back with a clean record.
    pub fn outlier_record(&self) -> Option<FailureRecord> {
        let live = self.live();
        (!live.outlier.is_blank()).then(|| FailureRecord {
            outlier: live.outlier.clone(),
            for_answers: self.ejected_for_answers.load(Ordering::Relaxed),
        })
    }

    /// Takes on the record of an earlier backend at the same address.
    pub fn take_record(&self, record: FailureRecord) {
        let mut live = self.live();
        self.ejected_for_answers
            .store(record.for_answers, Ordering::Relaxed);
        self.mirror(&record.outlier);
        live.outlier = record.outlier;
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
    /// The name as the `x-edgeroute-region` field value.
    pub name_header: HeaderValue,
    backends: ArcSwap<Vec<Arc<Backend>>>,
    /// `Host` header override for this region's backends.
    pub host: Option<HeaderValue>,
    /// Held from an ejection's check against the cap until it is in force.
    ejecting: Mutex<()>,
    /// Held while the backend list is read, changed and stored again (DNS
    /// answers and departing addresses settling).
    pub membership: Mutex<()>,
    /// The failure records of addresses that left DNS, and when they left.
    left: Mutex<Vec<Left>>,
    /// Backends retired from the list, while requests on them finish.
    draining: Mutex<Vec<Weak<Backend>>>,
}

/// The record of an address that left DNS.
struct Left {
    label: String,
    addr: SocketAddr,
    record: FailureRecord,
    at: Instant,
}

/// A backend's record of live-traffic failures and ejections.
#[derive(Debug, Clone)]
pub struct FailureRecord {
    outlier: Outlier,
    /// Its last ejection was for 5xx answers.
    for_answers: bool,
}

/// A region's ejection cap (`health.max_ejection_percent`), as a failing
/// backend asks it.
#[derive(Clone, Copy)]
pub struct Cap<'a> {
    region: &'a RegionInfo,
    max_percent: u32,
}

impl<'a> Cap<'a> {
    /// Leave for one more ejection, held until the ejection is recorded;
    /// `None` when the cap is reached (see [`RegionInfo::may_eject`]).
    fn permit(self, answered: bool, now: Instant) -> Option<MutexGuard<'a, ()>> {
        let guard = self
            .region
            .ejecting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.region
            .may_eject(self.max_percent, answered, now)
            .then_some(guard)
    }
}

impl RegionInfo {
    /// `name` and `host` come from a validated configuration: a region name
    /// and a `Host` value are always valid field values.
    pub fn new(name: &str, backends: Vec<Arc<Backend>>, host: Option<&str>) -> Self {
        RegionInfo {
            name: Arc::from(name),
            name_header: HeaderValue::from_str(name)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            backends: ArcSwap::from_pointee(backends),
            host: host.and_then(|h| HeaderValue::from_str(h).ok()),
            ejecting: Mutex::new(()),
            membership: Mutex::new(()),
            left: Mutex::new(Vec::new()),
            draining: Mutex::new(Vec::new()),
        }
    }

    /// The region's ejection cap at `max_percent` of its backends.
    pub fn cap(&self, max_percent: u32) -> Cap<'_> {
        Cap {
            region: self,
            max_percent,
        }
    }

    /// Keeps the failure record of `b`, whose address left DNS, for
    /// `memory` (at most [`MAX_BACKENDS_PER_REGION`] records, the oldest
    /// going first).
    pub fn remember_left(&self, b: &Backend, now: Instant, memory: Duration) {
        let Some(record) = b.outlier_record() else {
            return;
        };
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        left.retain(|l| {
            now.saturating_duration_since(l.at) < memory && (l.label != b.label || l.addr != b.addr)
        });
        if left.len() >= MAX_BACKENDS_PER_REGION {
            left.remove(0);
        }
        left.push(Left {
            label: b.label.clone(),
            addr: b.addr,
            record,
            at: now,
        });
    }

    /// The failure record of `label` at `addr`, if it left DNS within
    /// `memory`; taken, not copied.
    pub fn recall_left(
        &self,
        label: &str,
        addr: SocketAddr,
        now: Instant,
        memory: Duration,
    ) -> Option<FailureRecord> {
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        let i = left
            .iter()
            .position(|l| l.label == label && l.addr == addr)?;
        let l = left.remove(i);
        (now.saturating_duration_since(l.at) < memory).then_some(l.record)
    }

    /// `b` left the list: shown as draining while requests on it finish.
    pub fn drain(&self, b: &Arc<Backend>) {
        let mut draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        draining.retain(|w| w.upgrade().is_some_and(|d| d.inflight() > 0));
        draining.push(Arc::downgrade(b));
    }

    /// Retired backends with requests still in flight on them.
    pub fn draining(&self) -> Vec<Arc<Backend>> {
        let mut draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        let mut busy = Vec::new();
        draining.retain(|w| match w.upgrade() {
            Some(b) if b.inflight() > 0 => {
                busy.push(b);
                true
            }
            _ => false,
        });
        busy
    }

    /// The current backend list (one atomic load).
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    pub fn set_backends(&self, backends: Vec<Arc<Backend>>) {
        self.backends.store(Arc::new(backends));
    }

    pub fn in_rotation(&self, now: Instant) -> usize {
        self.rotation(now).1
    }

    /// How many backends the region has, and how many of them are in
    /// rotation, from one reading of its list (DNS may change it between
    /// two).
    pub fn rotation(&self, now: Instant) -> (usize, usize) {
        let backends = self.backends.load();
        let live = backends.iter().filter(|b| b.in_rotation(now)).count();
        (backends.len(), live)
    }

    pub fn has_live_backend(&self) -> bool {
        let now = Instant::now();
        self.backends.load().iter().any(|b| b.in_rotation(now))
    }

    /// Whether one more ejection keeps within `max_percent` of the region's
    /// backends (one backend may always be). For 5xx answers (`answered`),
    /// also whether it leaves a backend in rotation: the region's own
    /// answers, even 5xx, serve its clients better than a refusal, so they
    /// never empty it; a backend that gives no answer at all (it cannot be
    /// reached, breaks off, or lets a timeout pass) may be its last.
    /// (Probes, which ask each backend whether it can serve, may empty a
    /// region too.)
    pub fn may_eject(&self, max_percent: u32, answered: bool, now: Instant) -> bool {
        let backends = self.backends.load();
        let ejected = backends.iter().filter(|b| b.is_ejected(now)).count();
        let cap = (backends.len() * max_percent as usize / 100).max(1);
        ejected < cap && (!answered || backends.iter().filter(|b| b.in_rotation(now)).count() > 1)
    }

    /// Makes `list` the region's backends, held to the rules ejections
    /// keep when they are made ([`Self::may_eject`]), which a list that
    /// shrank may break: at most `max_percent` of it ejected (one always
    /// may be), and not its last backend that answers for 5xx answers
    /// alone. Ejections that break them are lifted, those ending soonest
    /// first. Returns the backends lifted.
    pub fn store_holding_ejections(
        &self,
        list: Vec<Arc<Backend>>,
        max_percent: u32,
        now: Instant,
    ) -> Vec<Arc<Backend>> {
        let lifted = {
            // Held while the list is judged and stored, so no ejection
            // counts against the list being replaced; released before the
            // backends' own locks are taken (a failing backend takes its
            // own, then this one).
            let _ejecting = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
            let mut ejected: Vec<&Arc<Backend>> = list
                .iter()
                .filter(|b| !b.is_retired() && b.is_ejected(now))
                .collect();
            ejected.sort_by_key(|b| b.ejected_until_ms.load(Ordering::Relaxed));
            let cap = (list.len() * max_percent as usize / 100).max(1);
            let over = ejected.len().saturating_sub(cap);
            let mut lifted: Vec<Arc<Backend>> = ejected.drain(..over).cloned().collect();
            let serves = |b: &Arc<Backend>| {
                b.in_rotation(now)
                    || (b.probe_healthy()
                        && !b.is_retired()
                        && lifted.iter().any(|l| Arc::ptr_eq(l, b)))
            };
            if !list.iter().any(serves) {
                // Every backend out: one that only answered badly comes back.
                if let Some(b) = ejected
                    .into_iter()
                    .find(|b| b.probe_healthy() && b.ejected_for_answers.load(Ordering::Relaxed))
                {
                    lifted.push(Arc::clone(b));
                }
            }
            self.set_backends(list);
            lifted
        };
        for b in &lifted {
            b.lift_ejection(now);
        }
        lifted
    }

    /// The region's measured latency: its fastest backend in rotation, in
    /// seconds; `None` before any sample.
    pub fn latency(&self, now: Instant) -> Option<f64> {
        self.backends
            .load()
            .iter()
            .filter(|b| b.in_rotation(now))
            .filter_map(|b| b.measured_latency(now))
            .reduce(f64::min)
    }
}

/// Every configured region and its backends, indexed as in the config.
pub struct Topology {
    pub regions: Vec<RegionInfo>,
    pub local: usize,
    /// Common origin of the backends' millisecond clocks.
    pub clock: Instant,
}

/// Options every peer of a region shares.
pub fn peer_for(cfg: &ProxyConfig, region: usize, host: &str, addr: SocketAddr) -> HttpPeer {
    let r = &cfg.regions[region];
    let sni = r.sni.clone().unwrap_or_else(|| host.to_owned());
    let mut peer = HttpPeer::new(addr, r.tls, sni);
    peer.options.connection_timeout = Some(cfg.timeouts.connect);
    peer.options.total_connection_timeout = Some(cfg.timeouts.connect * 2);
    peer.options.read_timeout = Some(cfg.timeouts.read);
    peer.options.write_timeout = Some(cfg.timeouts.write);
    peer.options.idle_timeout = Some(cfg.timeouts.pool_idle);
    peer
}

pub fn policy(health: &HealthConfig) -> OutlierPolicy {
    OutlierPolicy {
        consecutive: health.eject_after,
        base: health.eject_for,
        max: health.max_eject_for,
    }
}

/// Says that a region's names resolved to more addresses than a region may
/// hold ([`MAX_BACKENDS_PER_REGION`], as the per-request sets of tried
/// backends are 64-bit masks), and how many were left out.
pub fn warn_left_out(region: &str, left_out: usize) {
    tracing::warn!(
        region,
        left_out,
        limit = MAX_BACKENDS_PER_REGION,
        "the region's backend names resolve to more addresses than a region may hold; \
         the addresses past the limit get no traffic (list fewer names, or names with fewer addresses)"
    );
}

impl Topology {
    /// Builds the topology from already resolved addresses: for each region,
    /// for each configured backend, its addresses, at most
    /// [`MAX_BACKENDS_PER_REGION`] in all (the first, in the configured
    /// order).
    pub fn build(cfg: &ProxyConfig, resolved: &[Vec<Vec<SocketAddr>>]) -> Self {
        let clock = Instant::now();
        let regions = cfg
            .regions
            .iter()
            .enumerate()
            .map(|(ri, r)| {
                let addrs: Vec<(&edgeroute_config::Backend, SocketAddr)> = r
                    .backends
                    .iter()
                    .zip(&resolved[ri])
                    .flat_map(|(b, addrs)| addrs.iter().map(move |a| (b, *a)))
                    .collect();
                if addrs.len() > MAX_BACKENDS_PER_REGION {
                    warn_left_out(&r.name, addrs.len() - MAX_BACKENDS_PER_REGION);
                }
                let backends = addrs
                    .into_iter()
                    .take(MAX_BACKENDS_PER_REGION)
                    .map(|(b, a)| {
                        Arc::new(Backend::new(
                            b.to_string(),
                            a,
                            ri,
                            peer_for(cfg, ri, &b.host, a),
                            &cfg.health,
                            PoolShape::of(cfg),
                            clock,
                        ))
                    })
                    .collect();
                RegionInfo::new(&r.name, backends, r.host.as_deref())
            })
            .collect();
        Topology {
            regions,
            local: cfg.local_region,
            clock,
        }
    }

    pub fn region_names(&self) -> impl Iterator<Item = &str> + Clone {
        self.regions.iter().map(|r| &*r.name)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn health() -> HealthConfig {
        HealthConfig {
            probes: false,
            start_healthy: true,
            path: "/health".into(),
            listener_path: Some("/health".into()),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            jitter: Duration::ZERO,
            fall: 3,
            rise: 2,
            expected_status: (200, 399),
            eject_after: 3,
            eject_for: Duration::from_secs(10),
            max_eject_for: Duration::from_secs(300),
            max_ejection_percent: 100,
            panic_threshold: 50,
            latency_decay: Duration::from_secs(10),
        }
    }

    /// A topology of `n` regions with `per_region` backends on loopback ports
    /// nothing listens on; unit tests never connect to them.
    pub fn topology(n: usize, per_region: usize) -> Topology {
        topology_with(n, per_region, &health())
    }

    /// [`topology`] with backends made under `h` (with probes on and
    /// `start_healthy` off, each starts unproven).
    pub fn topology_with(n: usize, per_region: usize, h: &HealthConfig) -> Topology {
        let clock = Instant::now();
        let regions = (0..n)
            .map(|ri| {
                let backends = (0..per_region)
                    .map(|bi| {
                        let port = 10_000 + (ri * 100 + bi) as u16;
                        let addr = SocketAddr::from(([127, 0, 0, 1], port));
                        Arc::new(Backend::new(
                            format!("127.0.0.1:{port}"),
                            addr,
                            ri,
                            HttpPeer::new(addr, false, String::new()),
                            h,
                            PoolShape {
                                lists: crate::upstream::Lists::PerThread,
                                max_idle: 128,
                            },
                            clock,
                        ))
                    })
                    .collect();
                RegionInfo::new(&format!("region-{ri}"), backends, None)
            })
            .collect();
        Topology {
            regions,
            local: 0,
            clock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ejects `b` of `region` with three failures at `at`: 5xx answers
    /// (`answered`) or failures to answer.
    fn eject(region: &RegionInfo, b: &Backend, answered: bool, at: Instant) {
        let p = policy(&testing::health());
        for _ in 0..3 {
            if answered {
                b.record_response(503, Duration::from_millis(1), &p, at, region.cap(100));
            } else {
                b.record_failure(None, &p, at, region.cap(100));
            }
        }
        assert!(b.is_ejected(at));
    }

    /// A list that shrank to its ejected backends is held to the rules
    /// ejections keep when made: the cap, and 5xx never emptying it; a
    /// backend that does not answer may be the last one out.
    #[test]
    fn a_shrunk_list_keeps_the_ejection_cap_and_a_backend_that_answers() {
        let t = testing::topology(1, 4);
        let region = &t.regions[0];
        let all = region.backends();
        let t0 = Instant::now();
        // 1 fails to connect, 2 and 3 answer 5xx; 2's ejection ends last.
        eject(region, &all[1], false, t0);
        eject(region, &all[2], true, t0 + Duration::from_secs(1));
        eject(region, &all[3], true, t0);
        let ejected = |list: &[Arc<Backend>]| list.iter().filter(|b| b.is_ejected(t0)).count();
        assert_eq!(ejected(&all), 3);
        // The whole list as it stands: three of four is past 50%; one of
        // those ending soonest (1 and 3) is lifted.
        let lifted = region.store_holding_ejections(all.to_vec(), 50, t0);
        assert_eq!(lifted.len(), 1, "cap 2 of 4");
        assert!(Arc::ptr_eq(&lifted[0], &all[1]) || Arc::ptr_eq(&lifted[0], &all[3]));
        assert_eq!(ejected(&all), 2);
        // DNS leaves only 2: one of one may be ejected, but for 5xx it is
        // not the last that answers.
        let only = vec![Arc::clone(&all[2])];
        assert_eq!(
            region.store_holding_ejections(only.clone(), 50, t0).len(),
            1
        );
        assert!(only[0].in_rotation(t0));
        // One that gave no answer stays out, even as the last.
        let other = testing::topology(1, 2);
        let silent = Arc::clone(&other.regions[0].backends()[1]);
        eject(&other.regions[0], &silent, false, t0);
        assert!(
            other.regions[0]
                .store_holding_ejections(vec![Arc::clone(&silent)], 50, t0)
                .is_empty()
        );
        assert!(silent.is_ejected(t0));
    }

    /// Storing a list does not hold the region's ejection lock while it
    /// waits for a backend's own: a backend failing at that moment holds
    /// its own and asks for the region's (the other order would deadlock).
    #[test]
    fn storing_a_list_waits_for_no_backend_while_holding_the_ejection_lock() {
        let t = testing::topology(1, 2);
        let region = &t.regions[0];
        let all = region.backends();
        let t0 = Instant::now();
        eject(region, &all[0], false, t0);
        eject(region, &all[1], false, t0);
        std::thread::scope(|scope| {
            // A failing backend's own lock, held (and let go, should an
            // assertion fail, before the scope waits for its thread).
            let held = all[0].live();
            // Two of two ejected is past 50%: storing lifts the first,
            // which waits for its backend's lock.
            let storing = scope.spawn(|| region.store_holding_ejections(all.to_vec(), 50, t0));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Arc::ptr_eq(&region.backends(), &all) {
                assert!(Instant::now() < deadline, "the list was never stored");
                std::thread::yield_now();
            }
            // The region's lock comes free while the store still waits for
            // the backend's (it cannot finish while `held` is held).
            while region.ejecting.try_lock().is_err() {
                assert!(
                    Instant::now() < deadline,
                    "the ejection lock is held while the store waits"
                );
                std::thread::yield_now();
            }
            assert!(!storing.is_finished(), "the store did not wait");
            drop(held);
            assert_eq!(storing.join().unwrap().len(), 1);
        });
    }

    #[test]
    fn a_left_address_record_is_kept_for_its_memory_and_taken_once() {
        let t = testing::topology(1, 2);
        let region = &t.regions[0];
        let (b, clean) = (&region.backends()[0], &region.backends()[1]);
        let p = policy(&testing::health());
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(None, &p, t0, region.cap(100));
        }
        assert!(b.is_ejected(t0));
        let memory = Duration::from_secs(300);
        region.remember_left(b, t0, memory);
        region.remember_left(clean, t0, memory);
        // Nothing kept of a clean record.
        assert!(
            region
                .recall_left(&clean.label, clean.addr, t0, memory)
                .is_none()
        );
        // Past its memory: forgotten.
        let late = t0 + memory;
        assert!(region.recall_left(&b.label, b.addr, late, memory).is_none());
        region.remember_left(b, t0, memory);
        let record = region
            .recall_left(&b.label, b.addr, t0, memory)
            .expect("kept");
        assert!(
            region.recall_left(&b.label, b.addr, t0, memory).is_none(),
            "taken once"
        );
        // A new backend at the address takes it on: still ejected.
        let again = testing::topology(1, 1).regions[0].backends()[0].clone();
        assert!(!again.is_ejected(t0));
        again.take_record(record);
        assert!(again.is_ejected(t0) && !again.in_rotation(t0));
    }

    #[test]
    fn failures_eject_after_the_threshold_and_ejection_runs_out() {
        let t = testing::topology(1, 1);
        let b = &t.regions[0].backends()[0];
        let p = policy(&testing::health());
        let t0 = Instant::now();
        let cap = t.regions[0].cap(100);
        assert_eq!(b.record_failure(None, &p, t0, cap), Verdict::Kept);
        assert_eq!(
            b.record_response(502, Duration::from_millis(1), &p, t0, cap),
            Verdict::Kept
        );
        assert!(b.in_rotation(t0));
        assert_eq!(
            b.record_failure(None, &p, t0, cap),
            Verdict::Ejected(Duration::from_secs(10))
        );
        assert!(!b.in_rotation(t0));
        assert!(b.in_rotation(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn probes_move_a_backend_in_and_out() {
        let t = testing::topology(1, 1);
        let b = &t.regions[0].backends()[0];
        let mut h = testing::health();
        h.fall = 2;
        let now = Instant::now();
        assert_eq!(b.record_probe(false, None, &h, now), None);
        assert_eq!(b.record_probe(false, None, &h, now), Some(false));
        assert!(!b.in_rotation(now));
        assert!(!t.regions[0].has_live_backend());
        b.record_probe(true, Some(Duration::from_millis(3)), &h, now);
        assert_eq!(
            b.record_probe(true, Some(Duration::from_millis(3)), &h, now),
            Some(true)
        );
        assert!(b.in_rotation(now));
        assert!((b.latency(now) - 0.003).abs() < 1e-6);
    }

    #[test]
    fn the_ejection_cap_counts_the_region() {
        let t = testing::topology(1, 4);
        let r = &t.regions[0];
        let now = Instant::now();
        assert!(r.may_eject(50, true, now));
        for b in r.backends().iter().take(2) {
            eject(r, b, false, now);
        }
        assert!(
            !r.may_eject(50, false, now),
            "2 of 4 ejected is the 50% cap"
        );
        assert!(r.may_eject(75, true, now));
        let one = testing::topology(1, 1);
        assert!(
            one.regions[0].may_eject(0, false, now),
            "one may always be ejected for giving no answer"
        );
        assert!(
            !one.regions[0].may_eject(100, true, now),
            "but not the last in rotation for its 5xx answers"
        );
        // Three of four ejected: the last in rotation stays for 5xx.
        eject(r, &r.backends()[2], false, now);
        assert!(!r.may_eject(100, true, now));
        assert!(r.may_eject(100, false, now));
    }

    #[test]
    fn backends_failing_at_once_never_eject_past_the_cap() {
        let p = policy(&testing::health());
        for round in 0..200 {
            let t = testing::topology(1, 8);
            let r = &t.regions[0];
            let backends = r.backends();
            let start = std::sync::Barrier::new(backends.len());
            let now = Instant::now();
            let ejected = std::thread::scope(|s| {
                let runs: Vec<_> = backends
                    .iter()
                    .map(|b| {
                        let start = &start;
                        s.spawn(move || {
                            b.record_failure(None, &p, now, r.cap(50));
                            b.record_failure(None, &p, now, r.cap(50));
                            start.wait();
                            b.record_failure(None, &p, now, r.cap(50))
                        })
                    })
                    .collect();
                runs.into_iter()
                    .map(|run| run.join().expect("the thread ran to its end"))
                    .filter(|verdict| matches!(verdict, Verdict::Ejected(_)))
                    .count()
            });
            assert_eq!(ejected, 4, "round {round}: 50% of 8 is 4 ejections");
            let shown = backends.iter().filter(|b| b.is_ejected(now)).count();
            assert_eq!(shown, 4, "round {round}");
        }
    }

    #[test]
    fn inflight_guard_counts() {
        let t = testing::topology(1, 1);
        let b = &t.regions[0].backends()[0];
        let g1 = b.start_request();
        let g2 = b.start_request();
        assert_eq!(b.inflight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(b.inflight(), 0);
    }
}
