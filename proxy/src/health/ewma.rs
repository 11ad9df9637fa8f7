//! Peak-EWMA latency: a moving average that jumps up to a slower sample at
//! once and decays back down over time, so a backend that suddenly slows is
//! avoided immediately and forgiven gradually.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct PeakEwma {
    /// Current estimate, in seconds; `None` until the first sample.
    cost: Option<f64>,
    stamp: Instant,
    /// Decay time constant: after `tau` the old estimate weighs 1/e.
    tau: Duration,
}

impl PeakEwma {
    pub fn new(tau: Duration, now: Instant) -> Self {
        PeakEwma {
            cost: None,
            stamp: now,
            tau,
        }
    }

    /// Records one latency sample taken at `now`.
    pub fn observe(&mut self, sample: Duration, now: Instant) {
        let rtt = sample.as_secs_f64();
        self.cost = Some(match self.cost {
            None => rtt,
            Some(cost) if rtt > cost => rtt,
            Some(cost) => {
                let w = self.weight(now);
                cost * w + rtt * (1.0 - w)
            }
        });
        if now > self.stamp {
            self.stamp = now;
        }
    }

    /// The estimate as of `now`: a peak decays toward the latest samples, so
    /// a backend that stops receiving traffic is not shunned forever.
    pub fn cost(&self, now: Instant) -> Option<f64> {
        self.cost.map(|c| c * self.weight(now).max(0.5_f64.powi(8)))
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
    fn first_sample_sets_the_estimate() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(TAU, t0);
        assert_eq!(e.cost(t0), None);
        e.observe(ms(20), t0);
        assert!((e.cost(t0).unwrap() - 0.020).abs() < 1e-9);
    }

    #[test]
    fn a_slower_sample_is_taken_at_once() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(TAU, t0);
        e.observe(ms(10), t0);
        e.observe(ms(200), t0 + ms(1));
        assert!((e.cost(t0 + ms(1)).unwrap() - 0.200).abs() < 1e-9);
    }

    #[test]
    fn faster_samples_pull_the_estimate_down_by_elapsed_time() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(TAU, t0);
        e.observe(ms(200), t0);
        // One tau later the old value weighs 1/e.
        e.observe(ms(10), t0 + TAU);
        let expected = 0.200 * (-1.0f64).exp() + 0.010 * (1.0 - (-1.0f64).exp());
        assert!((e.cost(t0 + TAU).unwrap() - expected).abs() < 1e-9);
        // Samples in quick succession barely move it.
        let mut quick = PeakEwma::new(TAU, t0);
        quick.observe(ms(200), t0);
        quick.observe(ms(10), t0 + ms(1));
        assert!(quick.cost(t0 + ms(1)).unwrap() > 0.199);
    }

    #[test]
    fn an_idle_estimate_decays_but_keeps_its_order() {
        let t0 = Instant::now();
        let (mut slow, mut fast) = (PeakEwma::new(TAU, t0), PeakEwma::new(TAU, t0));
        slow.observe(ms(200), t0);
        fast.observe(ms(5), t0);
        let later = t0 + Duration::from_secs(30);
        assert!(slow.cost(later).unwrap() < 0.200);
        assert!(slow.cost(later).unwrap() > fast.cost(later).unwrap());
    }
}
