//! What a long-running edgeroute process asks of the system at start.

/// Raises the process's soft limit on open files to its hard limit (each
/// connection, a client's, a backend's or a proxy's long poll, takes a
/// descriptor), and answers the limit in force.
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; taking it as 1024");
            return 1024;
        }
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit to its hard limit; keeping the soft one");
            soft
        }
    }
}

/// The name of the CPU time series.
const CPU_SECONDS: &str = "process_cpu_seconds_total";

/// The `process_*` series as every Prometheus exporter gives them (the
/// `prometheus` crate's collector), but for the CPU time, which that
/// collector counts in whole seconds: a rate over a minute of a process at
/// 1% of a core would read 0 or 1.7%. Here it is the process's user and
/// system time in microseconds (`getrusage`), all threads.
pub struct ProcessMetrics {
    process: prometheus::process_collector::ProcessCollector,
    cpu: prometheus::Counter,
    /// One scrape moves `cpu` at a time.
    moving: std::sync::Mutex<()>,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        ProcessMetrics {
            process: prometheus::process_collector::ProcessCollector::for_self(),
            cpu: prometheus::Counter::new(
                CPU_SECONDS,
                "Total user and system CPU time spent in seconds.",
            )
            .expect("static metric definition"),
            moving: std::sync::Mutex::new(()),
        }
    }
}

/// User and system CPU time of the whole process, in seconds.
fn cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(seconds(usage.user_time()) + seconds(usage.system_time()))
}

impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut descs: Vec<_> = self
            .process
            .desc()
            .into_iter()
            .filter(|d| d.fq_name != CPU_SECONDS)
            .collect();
        descs.extend(self.cpu.desc());
        descs
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Some(now) = cpu_seconds() {
            let _one = self.moving.lock().unwrap_or_else(|p| p.into_inner());
            let counted = self.cpu.get();
            if now > counted {
                self.cpu.inc_by(now - counted);
            }
        }
        let mut families: Vec<_> = self
            .process
            .collect()
            .into_iter()
            .filter(|f| f.name() != CPU_SECONDS)
            .collect();
        families.extend(self.cpu.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;

    /// The CPU time is counted in fractions of a second, once.
    #[test]
    fn cpu_time_is_counted_to_the_microsecond() {
        let metrics = ProcessMetrics::default();
        // Work until the process has used a twentieth of a second.
        let mut x = 0u64;
        for i in 0..u64::MAX {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            if i % 100_000 == 0 && cpu_seconds().is_some_and(|s| s >= 0.05) {
                break;
            }
        }
        std::hint::black_box(x);
        let before = cpu_seconds().expect("getrusage");
        let families = metrics.collect();
        let after = cpu_seconds().expect("getrusage");
        let cpu: Vec<_> = families
            .iter()
            .filter(|f| f.name() == CPU_SECONDS)
            .collect();
        assert_eq!(cpu.len(), 1, "one family");
        assert_eq!(
            cpu[0].get_field_type(),
            prometheus::proto::MetricType::COUNTER
        );
        let counted = cpu[0].get_metric()[0].get_counter().get_value();
        assert!(
            before <= counted && counted <= after,
            "{before} <= {counted} <= {after}"
        );
        assert!(
            families
                .iter()
                .any(|f| f.name() == "process_resident_memory_bytes")
        );
        let names: Vec<&str> = metrics.desc().iter().map(|d| d.fq_name.as_str()).collect();
        assert_eq!(
            names.iter().filter(|n| **n == CPU_SECONDS).count(),
            1,
            "{names:?}"
        );
    }
}
