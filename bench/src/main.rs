//! `edgeroute-bench`: throughput and latency against a direct connection and
//! peer proxies, plus routing, swap and failover figures, on loopback.

mod compare;
mod lean;
mod load;
mod origin;
mod report;
mod scenarios;
mod targets;

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Throughput,
    Overhead,
    Regions,
    Swap,
    Failover,
    All,
}

#[derive(Parser)]
#[command(
    name = "edgeroute-bench",
    about = "edgeroute's benchmark suite (loopback only; every run is bounded in time and count)"
)]
struct Cli {
    scenario: Scenario,
    /// Length of each measured run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up per target before the throughput runs.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrent connections of the closed-loop load.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    connections: usize,
    /// Interleaved repetitions per target (throughput), in the orders of a
    /// balanced Latin square: a multiple of the number of targets (twice it
    /// if odd) gives each the same places and neighbours.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    reps: usize,
    /// The client of the throughput and overhead runs: `lean` parses
    /// response heads in place like wrk; `hyper` builds a header map for
    /// each response, which charges a target for the fields its responses
    /// carry.
    #[arg(long, value_enum, default_value = "lean")]
    client: scenarios::Client,
    /// Upper bound on requests in one run.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Table swaps in the swap scenario.
    #[arg(long, default_value_t = 1000)]
    swaps: u64,
    /// Request rates of the overhead scenario.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u64>,
    /// Worker threads (edgeroute, HAProxy) or processes (nginx) of each
    /// proxy in the throughput and overhead runs; the backend keeps one.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    workers: usize,
    /// The edgeroute-proxy binary (default: beside this one).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
}

/// A count that must not be zero.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    targets::stop_on_signals()?;
    let settings = scenarios::Settings {
        client: cli.client,
        duration: cli.duration,
        warmup: cli.warmup,
        connections: cli.connections,
        reps: cli.reps,
        max_requests: cli.max_requests,
        proxy_bin: targets::proxy_bin(cli.proxy_bin.as_deref())?,
        swaps: cli.swaps,
        rates: cli.rates.clone(),
        workers: cli.workers,
    };
    // One load-generator thread, like `wrk -t1`: on a 2-core machine the
    // other core belongs to the target.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let mut results = serde_json::Map::new();
    results.insert("machine".into(), report::machine());
    results.insert("settings".into(), serde_json::json!({
        "duration_s": cli.duration.as_secs_f64(), "connections": cli.connections, "reps": cli.reps,
        "swaps": cli.swaps, "rates": cli.rates, "workers": cli.workers,
        "load_generator": "edgeroute-bench, 1 thread (and a pacer thread for the open loop), HTTP/1.1 keep-alive",
        "client": format!("{:?}", cli.client).to_lowercase(),
    }));
    let all = cli.scenario == Scenario::All;
    let want = |s: Scenario| all || cli.scenario == s;
    rt.block_on(async {
        if want(Scenario::Throughput) {
            results.insert("throughput".into(), scenarios::throughput(&settings).await?);
        }
        if want(Scenario::Overhead) {
            results.insert("overhead".into(), scenarios::overhead(&settings).await?);
        }
        if want(Scenario::Regions) {
            results.insert("regions".into(), scenarios::regions(&settings).await?);
        }
        if want(Scenario::Swap) {
            results.insert("swap".into(), scenarios::swap(&settings).await?);
        }
        if want(Scenario::Failover) {
            results.insert("failover".into(), scenarios::failover(&settings).await?);
        }
        anyhow::Ok(())
    })?;
    results.insert(
        "total_seconds".into(),
        started.elapsed().as_secs_f64().into(),
    );
    if let Some(dir) = cli.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &cli.json,
        serde_json::to_string_pretty(&serde_json::Value::Object(results))?,
    )?;
    println!(
        "\nresults written to {} ({:.0} s in all)",
        cli.json.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
