//! Peak-EWMA latency: a moving average that jumps up to a slower sample at
//! once and decays back down over time, so a backend that suddenly slows is
//! avoided immediately and forgiven gradually.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct PeakEwma {
    /// Current estimate, in seconds.
    cost: f64,
    /// Whether `cost` comes from samples or is still the starting guess.
    observed: bool,
    stamp: Instant,
    /// Decay time constant: after `tau` the old estimate weighs 1/e.
    tau: Duration,
}

/// An estimate never decays below this share of itself, so idle backends
/// keep their order among themselves.
const DECAY_FLOOR: f64 = 1.0 / 256.0;

impl PeakEwma {
    /// Starts from `initial`, a guess that decays like any estimate, so a
    /// backend nobody has sent to yet is tried before long.
    pub fn new(initial: Duration, tau: Duration, now: Instant) -> Self {
        PeakEwma {
            cost: initial.as_secs_f64(),
            observed: false,
            stamp: now,
            tau,
        }
    }

    /// Records one latency sample taken at `now`.
    pub fn observe(&mut self, sample: Duration, now: Instant) {
        let rtt = sample.as_secs_f64();
        self.cost = if !self.observed || rtt > self.cost {
            rtt
        } else {
            let w = self.weight(now);
            self.cost * w + rtt * (1.0 - w)
        };
        self.observed = true;
        if now > self.stamp {
            self.stamp = now;
        }
    }

    /// The estimate as of `now`: it decays with the time since the last
    /// sample, so a backend that stops receiving traffic is not shunned
    /// forever after one slow answer.
    pub fn cost(&self, now: Instant) -> f64 {
        self.cost * self.weight(now).max(DECAY_FLOOR)
    }

    /// The estimate, if it comes from samples.
    pub fn measured(&self, now: Instant) -> Option<f64> {
        self.observed.then(|| self.cost(now))
    }

    fn weight(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        (-elapsed / self.tau.as_secs_f64()).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn the_first_sample_replaces_the_starting_guess() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(ms(50), TAU, t0);
        assert_eq!(e.measured(t0), None);
        assert!((e.cost(t0) - 0.050).abs() < 1e-9);
        e.observe(ms(20), t0);
        assert!((e.measured(t0).unwrap() - 0.020).abs() < 1e-9);
    }

    #[test]
    fn a_slower_sample_is_taken_at_once() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(ms(50), TAU, t0);
        e.observe(ms(10), t0);
        e.observe(ms(200), t0 + ms(1));
        assert!((e.cost(t0 + ms(1)) - 0.200).abs() < 1e-9);
    }

    #[test]
    fn faster_samples_pull_the_estimate_down_by_elapsed_time() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(ms(50), TAU, t0);
        e.observe(ms(200), t0);
        // One tau later the old value weighs 1/e.
        e.observe(ms(10), t0 + TAU);
        let w = (-1.0f64).exp();
        let expected = 0.200 * w + 0.010 * (1.0 - w);
        assert!((e.cost(t0 + TAU) - expected).abs() < 1e-9);
        // Samples in quick succession barely move it.
        let mut quick = PeakEwma::new(ms(50), TAU, t0);
        quick.observe(ms(200), t0);
        quick.observe(ms(10), t0 + ms(1));
        assert!(quick.cost(t0 + ms(1)) > 0.199);
    }

    #[test]
    fn an_unmeasured_guess_decays_so_the_backend_gets_tried() {
        let t0 = Instant::now();
        let guess = PeakEwma::new(ms(50), TAU, t0);
        assert!(guess.cost(t0 + TAU * 4) < 0.001);
    }

    #[test]
    fn an_idle_estimate_decays_but_keeps_its_order() {
        let t0 = Instant::now();
        let (mut slow, mut fast) = (
            PeakEwma::new(ms(50), TAU, t0),
            PeakEwma::new(ms(50), TAU, t0),
        );
        slow.observe(ms(200), t0);
        fast.observe(ms(5), t0);
        let later = t0 + Duration::from_secs(30);
        assert!(slow.cost(later) < 0.200);
        assert!(slow.cost(later) > fast.cost(later));
    }
}
