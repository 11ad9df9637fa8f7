//! The scenarios. Each returns its JSON and prints its table.

use crate::compare::{self, Comparison, Figures};
use crate::lean;
use crate::load::{self, LoadResult, MakeRequest, OnResponse};
use crate::origin::{self, WriteLog};
use crate::report::{self, median, progress};
use crate::targets::{self, CpuTime, Edgeroute, Process, Scratch};
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The HTTP client of the throughput and overhead runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    /// Response heads parsed in place, like wrk.
    Lean,
    /// hyper's client, which puts each response's fields in a header map.
    Hyper,
}

pub struct Settings {
    pub client: Client,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub reps: usize,
    /// Upper bound on requests per run, whatever the duration.
    pub max_requests: u64,
    pub proxy_bin: PathBuf,
    pub swaps: u64,
    pub rates: Vec<u64>,
    /// Worker threads (edgeroute, HAProxy) or processes (nginx) of each
    /// proxy in the throughput and overhead runs.
    pub workers: usize,
}

fn us(v: u64) -> String {
    v.to_string()
}

/// One nginx backend and every target in front of it, all on loopback.
struct Lineup {
    backend: Process,
    edge: Edgeroute,
    nginx: Option<Process>,
    haproxy: Option<Process>,
    _dir: Scratch,
}

impl Lineup {
    fn start(s: &Settings, scenario: &str) -> anyhow::Result<Self> {
        let d = Scratch::new()?;
        anyhow::ensure!(
            targets::installed("nginx"),
            "the {scenario} scenario needs nginx as the shared backend: {}",
            targets::PEERS_HINT
        );
        let backend = targets::nginx_backend(d.path())?;
        let edge = targets::edgeroute(
            &s.proxy_bin,
            d.path(),
            &[("bench", vec![backend.addr])],
            &targets::table(1, 1, "bench", &[("bench", "active")], false),
            s.workers,
            "",
        )?;
        let nginx = Some(targets::nginx_proxy(d.path(), backend.addr, s.workers)?);
        let haproxy = targets::installed("haproxy")
            .then(|| targets::haproxy(d.path(), backend.addr, s.workers))
            .transpose()?;
        if haproxy.is_none() {
            progress(&format!(
                "HAProxy missing; install the peers with: {}",
                targets::PEERS_HINT
            ));
        }
        Ok(Lineup {
            backend,
            edge,
            nginx,
            haproxy,
            _dir: d,
        })
    }

    /// (name, address, the process whose CPU time counts): for `direct`,
    /// the backend's.
    fn targets(&self) -> Vec<(&'static str, SocketAddr, &Process)> {
        let mut list = vec![
            ("direct", self.backend.addr, &self.backend),
            ("edgeroute", self.edge.process.addr, &self.edge.process),
        ];
        for (name, p) in [("nginx", &self.nginx), ("haproxy", &self.haproxy)] {
            if let Some(p) = p {
                list.push((name, p.addr, p));
            }
        }
        list
    }
}

/// `GET /` back to back on `s.connections` connections, with the client
/// the settings name.
async fn closed_get(
    s: &Settings,
    addr: SocketAddr,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    match s.client {
        Client::Lean => {
            let request = lean::get("/", "bench").into();
            load::closed_lean(addr, s.connections, duration, s.max_requests, request).await
        }
        Client::Hyper => {
            load::closed(
                addr,
                s.connections,
                duration,
                s.max_requests,
                load::get("/"),
                None,
            )
            .await
        }
    }
}

/// One measured run of one target: its load, and the CPU seconds the
/// target, the backend and this load generator spent meanwhile (for
/// `direct` the target is the backend).
struct Run {
    load: LoadResult,
    target: CpuTime,
    backend: CpuTime,
    client: CpuTime,
}

/// `GET /` at `rate` per second, open loop, with the client the settings
/// name.
async fn open_get(s: &Settings, addr: SocketAddr, rate: u64) -> anyhow::Result<LoadResult> {
    let conns = s.connections.min(16);
    match s.client {
        Client::Lean => {
            let request = lean::get("/", "bench").into();
            load::open_lean(addr, rate, conns, s.duration, request).await
        }
        Client::Hyper => load::open(addr, rate, conns, s.duration, load::get("/")).await,
    }
}

/// One backend, every target in front of it, interleaved repetitions.
pub async fn throughput(s: &Settings) -> anyhow::Result<Value> {
    let lineup = Lineup::start(s, "throughput")?;
    let idle_rss = lineup.edge.process.rss_kib();
    let procs = lineup.targets();
    for (name, addr, _) in &procs {
        progress(&format!("throughput: warming up {name}"));
        closed_get(s, *addr, s.warmup).await?;
    }
    let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    let total = s.reps * procs.len();
    let mut n = 0;
    for rep in 0..s.reps {
        for (name, addr, proc_) in compare::order(procs.len(), rep).map(|i| &procs[i]) {
            n += 1;
            progress(&format!(
                "throughput [{n}/{total}] {name}, repetition {}",
                rep + 1
            ));
            let cpu = || [proc_.cpu(), lineup.backend.cpu(), targets::own_cpu()];
            let before = cpu();
            let load = closed_get(s, *addr, s.duration).await?;
            let after = cpu();
            let [target, backend, client] = std::array::from_fn(|i| after[i] - before[i]);
            runs.entry(name).or_default().push(Run {
                load,
                target,
                backend,
                client,
            });
        }
    }
    let rps = |name: &str| median(runs[name].iter().map(|r| r.load.rps()).collect());
    let direct = rps("direct");
    let mut rows = Vec::new();
    let mut out = serde_json::Map::new();
    for (name, _, _) in &procs {
        let rs = &runs[name];
        let q = |p: f64| median(rs.iter().map(|r| r.load.percentile_us(p) as f64).collect()) as u64;
        let per_request = |cpu: fn(&Run) -> f64| {
            median(
                rs.iter()
                    .map(|run| cpu(run) / run.load.requests.max(1) as f64 * 1e6)
                    .collect(),
            )
        };
        let cpu_us = per_request(|r| r.target.total());
        let kernel_us = per_request(|r| r.target.kernel);
        let backend_us = per_request(|r| r.backend.total());
        let client_us = per_request(|r| r.client.total());
        let errors: u64 = rs.iter().map(|r| r.load.errors).sum();
        let ratio = rps(name) / direct;
        rows.push(vec![
            (*name).to_owned(),
            format!("{:.0}", rps(name)),
            format!("{ratio:.2}"),
            us(q(0.5)),
            us(q(0.99)),
            us(q(0.999)),
            format!("{cpu_us:.1}"),
            format!("{kernel_us:.1}"),
            format!("{backend_us:.1}"),
            format!("{client_us:.1}"),
            errors.to_string(),
        ]);
        out.insert(
            (*name).to_owned(),
            json!({
                "rps_median": rps(name), "ratio_to_direct": ratio,
                "p50_us": q(0.5), "p99_us": q(0.99), "p999_us": q(0.999),
                "cpu_us_per_request": cpu_us, "kernel_cpu_us_per_request": kernel_us,
                "backend_cpu_us_per_request": backend_us,
                "load_generator_cpu_us_per_request": client_us,
                "errors": errors,
                "rps_runs": rs.iter().map(|r| r.load.rps()).collect::<Vec<_>>(),
            }),
        );
    }
    report::table(
        &format!(
            "throughput — {} connections, {:?} x {} interleaved runs in balanced orders, {} worker(s) per proxy, medians (CPU is the target's, for direct the backend's)",
            s.connections, s.duration, s.reps, s.workers
        ),
        &[
            "target",
            "rps",
            "ratio vs direct",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "CPU µs/req",
            "of it kernel",
            "backend CPU µs/req",
            "load gen. CPU µs/req",
            "errors",
        ],
        &rows,
    );
    let figures = |name: &str| -> Vec<Figures> {
        runs[name]
            .iter()
            .map(|r| Figures {
                rps: r.load.ok_rps(),
                p99_us: r.load.percentile_us(0.99) as f64,
                errors: r.load.errors,
            })
            .collect()
    };
    for peer in ["nginx", "haproxy"] {
        if runs.contains_key(peer) {
            let c = Comparison::of(&figures("edgeroute"), &figures(peer));
            println!("{}", c.line(peer));
            out.insert(format!("edgeroute_vs_{peer}"), c.json());
        }
    }
    println!("edgeroute idle RSS: {:.1} MiB", idle_rss as f64 / 1024.0);
    out.insert("edgeroute_idle_rss_kib".into(), idle_rss.into());
    Ok(Value::Object(out))
}

/// Added latency at fixed request rates, measured open loop.
pub async fn overhead(s: &Settings) -> anyhow::Result<Value> {
    let lineup = Lineup::start(s, "overhead")?;
    let list: Vec<(&str, SocketAddr)> = lineup
        .targets()
        .into_iter()
        .map(|(n, a, _)| (n, a))
        .collect();
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for &rate in &s.rates {
        let mut direct = None;
        for (name, addr) in &list {
            progress(&format!("overhead: {name} at {rate} rps"));
            let r = open_get(s, *addr, rate).await?;
            let late_p99 = r.late.value_at_quantile(0.99);
            let (p50, p99, p999) = (
                r.percentile_us(0.5),
                r.percentile_us(0.99),
                r.percentile_us(0.999),
            );
            let base = *direct.get_or_insert((p50, p99, p999));
            let added = |v: u64, b: u64| v as i64 - b as i64;
            rows.push(vec![
                rate.to_string(),
                (*name).to_owned(),
                us(p50),
                us(p99),
                us(p999),
                added(p50, base.0).to_string(),
                added(p99, base.1).to_string(),
                format!("{:.0}", r.rps()),
                us(late_p99),
                r.errors.to_string(),
            ]);
            out.push(json!({"rate": rate, "target": name, "p50_us": p50, "p99_us": p99, "p999_us": p999,
                "added_p50_us": added(p50, base.0), "added_p99_us": added(p99, base.1), "achieved_rps": r.rps(),
                "load_generator_late_p99_us": late_p99, "errors": r.errors}));
        }
    }
    report::table(
        &format!(
            "overhead — open loop, latency from each request's due time, {:?} per rate, {} worker(s) per proxy (load gen. late: how late requests went out on connections idle at their due time)",
            s.duration, s.workers
        ),
        &[
            "rate",
            "target",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "added p50 µs",
            "added p99 µs",
            "achieved rps",
            "load gen. late p99 µs",
            "errors",
        ],
        &rows,
    );
    Ok(Value::Array(out))
}

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];

struct World {
    edge: Edgeroute,
    writes: WriteLog,
    _dir: Scratch,
}

/// Three regions behind an edgeroute for us-east-1; `delays` simulate distance.
fn world(s: &Settings, delays_ms: [u64; 3]) -> anyhow::Result<World> {
    let d = Scratch::new()?;
    let writes: WriteLog = Arc::new(Mutex::new(BTreeMap::new()));
    let mut regions = Vec::new();
    for (name, delay) in REGIONS.iter().zip(delays_ms) {
        let addr = if delay == 0 {
            origin::start(name, Arc::clone(&writes))?
        } else {
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            std_listener.set_nonblocking(true)?;
            let addr = std_listener.local_addr()?;
            let region: Arc<str> = Arc::from(*name);
            std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    if let Ok(l) = tokio::net::TcpListener::from_std(std_listener) {
                        edgeroute_proxy::sim::serve_origin(l, region, Duration::from_millis(delay))
                            .await;
                    }
                });
            });
            addr
        };
        regions.push((*name, vec![addr]));
    }
    let all_active: Vec<(&str, &str)> = REGIONS.iter().map(|r| (*r, "active")).collect();
    let edge = targets::edgeroute(
        &s.proxy_bin,
        d.path(),
        &regions,
        &targets::table(1, 1, REGIONS[0], &all_active, false),
        1,
        "[health]\ninterval = \"500ms\"\ntimeout = \"400ms\"\n",
    )?;
    Ok(World {
        edge,
        writes,
        _dir: d,
    })
}

fn by_region() -> (Arc<Mutex<BTreeMap<String, u64>>>, OnResponse) {
    let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let c = Arc::clone(&counts);
    let f: OnResponse = Arc::new(move |resp| {
        let region = resp
            .headers()
            .get("x-edgeroute-region")
            .and_then(|v| v.to_str().ok())
            .map_or_else(
                || format!("refused ({})", resp.status().as_u16()),
                str::to_owned,
            );
        *c.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(region)
            .or_default() += 1;
    });
    (counts, f)
}

fn post(path: &'static str) -> MakeRequest {
    Arc::new(move |_| {
        Request::post(path)
            .header(http::header::HOST, "bench")
            .body(Empty::<Bytes>::new())
            .expect("static request")
    })
}

/// Where reads and writes land, with every region up and with the local one down.
pub async fn regions(s: &Settings) -> anyhow::Result<Value> {
    let w = world(s, [2, 75, 210])?;
    let mut rows = Vec::new();
    let mut out = Vec::new();
    let phases: [(&str, [&str; 3]); 2] = [
        ("all regions active", ["active"; 3]),
        ("us-east-1 down", ["down", "active", "active"]),
    ];
    for (i, (phase, states)) in phases.iter().enumerate() {
        let regions: Vec<(&str, &str)> = REGIONS
            .iter()
            .copied()
            .zip(states.iter().copied())
            .collect();
        if i > 0 {
            targets::swap_table(
                &w.edge.table_handle(),
                &targets::table(1, 1 + i as u64, REGIONS[0], &regions, false),
            )?;
            wait_version(w.edge.admin, 1 + i as u64)?;
        }
        for (kind, make) in [("reads", load::get("/items")), ("writes", post("/orders"))] {
            progress(&format!("regions: {phase}, {kind}"));
            let (counts, on) = by_region();
            let r = load::closed(
                w.edge.process.addr,
                16,
                s.duration.min(Duration::from_secs(3)),
                s.max_requests,
                make,
                Some(on),
            )
            .await?;
            let counts = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let total: u64 = counts.values().sum();
            let share = |region: &str| {
                counts.get(region).copied().unwrap_or(0) as f64 / total.max(1) as f64 * 100.0
            };
            let refused: u64 = counts
                .iter()
                .filter(|(k, _)| k.starts_with("refused"))
                .map(|(_, n)| n)
                .sum();
            rows.push(vec![
                (*phase).to_owned(),
                kind.to_owned(),
                format!("{:.1}%", share(REGIONS[0])),
                format!("{:.1}%", share(REGIONS[1])),
                format!("{:.1}%", share(REGIONS[2])),
                format!("{:.1}%", refused as f64 / total.max(1) as f64 * 100.0),
                r.requests.to_string(),
            ]);
            out.push(json!({"phase": phase, "kind": kind, "by_region": counts, "requests": r.requests, "errors": r.errors}));
        }
    }
    report::table(
        "regions — us-east-1 proxy; simulated distance us-east-1 +2 ms, eu-west-1 +75 ms, ap-southeast-1 +210 ms; primary us-east-1",
        &[
            "phase",
            "requests",
            "us-east-1",
            "eu-west-1",
            "ap-southeast-1",
            "refused (503)",
            "count",
        ],
        &rows,
    );
    Ok(Value::Array(out))
}

fn wait_version(admin: SocketAddr, version: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    while targets::table_version(admin) != Some(version) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "table version {version} not in force after 10 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// N table swaps under load: failed requests and the latency impact.
pub async fn swap(s: &Settings) -> anyhow::Result<Value> {
    let w = world(s, [0, 0, 0])?;
    let addr = w.edge.process.addr;
    progress("swap: baseline without swaps");
    let baseline = load::closed(
        addr,
        s.connections,
        s.duration.min(Duration::from_secs(3)),
        s.max_requests,
        load::get("/"),
        None,
    )
    .await?;
    let swaps = s.swaps;
    let admin = w.edge.admin;
    let swapper = {
        let handle = w.edge.table_handle();
        std::thread::spawn(move || -> anyhow::Result<Duration> {
            let start = Instant::now();
            for v in 2..=swaps + 1 {
                let primary = REGIONS[(v % 3) as usize];
                let all: Vec<(&str, &str)> = REGIONS.iter().map(|r| (*r, "active")).collect();
                targets::swap_table(&handle, &targets::table(v, v, primary, &all, false))?;
                wait_version(admin, v)?;
            }
            Ok(start.elapsed())
        })
    };
    progress(&format!("swap: {swaps} swaps under load"));
    // The load runs until the swapper is done, bounded in time and count.
    let done = Arc::new(AtomicU64::new(0));
    let load = {
        let done = Arc::clone(&done);
        let limit = s.max_requests;
        tokio::spawn(async move {
            let mut total: Option<LoadResult> = None;
            while done.load(Ordering::Relaxed) == 0 {
                let r = load::closed(
                    addr,
                    32,
                    Duration::from_millis(500),
                    limit,
                    load::get("/"),
                    None,
                )
                .await?;
                match &mut total {
                    None => total = Some(r),
                    Some(t) => {
                        t.requests += r.requests;
                        t.errors += r.errors;
                        t.elapsed += r.elapsed;
                        t.latency.add(&r.latency).ok();
                    }
                }
            }
            anyhow::Ok(total)
        })
    };
    let took = tokio::task::spawn_blocking(move || {
        swapper
            .join()
            .map_err(|_| anyhow::anyhow!("swapper panicked"))
    })
    .await???;
    done.store(1, Ordering::Relaxed);
    let under = load
        .await??
        .ok_or_else(|| anyhow::anyhow!("no load ran during the swaps"))?;
    let rows = vec![
        vec![
            "baseline".into(),
            "0".into(),
            baseline.requests.to_string(),
            baseline.errors.to_string(),
            us(baseline.percentile_us(0.5)),
            us(baseline.percentile_us(0.99)),
            us(baseline.percentile_us(0.999)),
        ],
        vec![
            format!("{swaps} swaps in {:.1} s", took.as_secs_f64()),
            swaps.to_string(),
            under.requests.to_string(),
            under.errors.to_string(),
            us(under.percentile_us(0.5)),
            us(under.percentile_us(0.99)),
            us(under.percentile_us(0.999)),
        ],
    ];
    report::table(
        "swap — routing-table swaps (new epoch and primary each time) under load",
        &[
            "run",
            "swaps",
            "requests",
            "failed (must be 0)",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
        ],
        &rows,
    );
    Ok(json!({
        "swaps": swaps, "swap_seconds": took.as_secs_f64(),
        "requests": under.requests, "failed": under.errors,
        "p50_us": under.percentile_us(0.5), "p99_us": under.percentile_us(0.99),
        "baseline_p50_us": baseline.percentile_us(0.5), "baseline_p99_us": baseline.percentile_us(0.99),
    }))
}

/// The primary moved under write load: refused window and misrouted writes.
pub async fn failover(s: &Settings) -> anyhow::Result<Value> {
    let w = world(s, [0, 0, 0])?;
    let addr = w.edge.process.addr;
    let all: Vec<(&str, &str)> = REGIONS.iter().map(|r| (*r, "active")).collect();
    let t0 = Instant::now();
    let refused: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let on: OnResponse = {
        let refused = Arc::clone(&refused);
        Arc::new(move |resp| {
            if resp.status() == http::StatusCode::SERVICE_UNAVAILABLE {
                refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(t0.elapsed());
            }
        })
    };
    let hold = Duration::from_millis(500);
    let run_for = hold * 2 + Duration::from_secs(2);
    let load = tokio::spawn(load::closed(
        addr,
        16,
        run_for,
        s.max_requests,
        post("/orders"),
        Some(on),
    ));
    let (edge_admin, handle) = (w.edge.admin, w.edge.table_handle());
    let steps = tokio::task::spawn_blocking(move || -> anyhow::Result<(Duration, Duration)> {
        let write = |t: &Value| targets::swap_table(&handle, t);
        std::thread::sleep(Duration::from_secs(1));
        let hold_at = t0.elapsed();
        write(&targets::table(1, 2, REGIONS[0], &all, true))?;
        wait_version(edge_admin, 2)?;
        std::thread::sleep(hold);
        write(&targets::table(2, 3, REGIONS[1], &all, false))?;
        wait_version(edge_admin, 3)?;
        Ok((hold_at, t0.elapsed()))
    })
    .await??;
    let r = load.await??;
    let refused = refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let window = match (refused.first(), refused.last()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    };
    let primary_of = |epoch: u64| if epoch <= 1 { REGIONS[0] } else { REGIONS[1] };
    let writes = w.writes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let misrouted: u64 = writes
        .iter()
        .filter(|((epoch, region), _)| region != primary_of(*epoch))
        .map(|(_, n)| n)
        .sum();
    let landed: u64 = writes.values().sum();
    let rows = vec![vec![
        r.requests.to_string(),
        landed.to_string(),
        refused.len().to_string(),
        format!("{:.0}", window.as_secs_f64() * 1000.0),
        format!("{:.0}", (steps.1 - steps.0).as_secs_f64() * 1000.0),
        misrouted.to_string(),
    ]];
    report::table(
        "failover — primary us-east-1 → eu-west-1 under write load: writes held while failover_in_progress, then moved with a new epoch",
        &[
            "writes sent",
            "writes landed",
            "refused (503)",
            "refused window ms",
            "failover held ms",
            "misrouted (must be 0)",
        ],
        &rows,
    );
    Ok(json!({
        "writes_sent": r.requests, "writes_landed": landed, "refused": refused.len(),
        "refused_window_ms": window.as_secs_f64() * 1000.0, "misrouted": misrouted,
        "by_epoch_region": writes.iter().map(|((e, r), n)| json!({"epoch": e, "region": r, "writes": n})).collect::<Vec<_>>(),
    }))
}
