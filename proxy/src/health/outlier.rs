//! Passive outlier detection: consecutive failures seen on live traffic (5xx
//! responses, failed connects, exchanges the backend broke off or let time
//! out, answers that cannot be read) eject a backend for a while; each
//! repeat ejects it for longer, up to a maximum.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct OutlierPolicy {
    /// Consecutive failures that eject.
    pub consecutive: u32,
    /// First ejection time; the n-th ejection in a row lasts n times this.
    pub base: Duration,
    /// Upper bound on one ejection.
    pub max: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Outlier {
    consecutive: u32,
    /// Ejections in a row, for the backoff; forgotten after a quiet spell.
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// What a recorded failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not (yet) an outlier.
    Kept,
    /// Ejected for this long.
    Ejected(Duration),
    /// Would be ejected, but the region's ejection cap is reached.
    CapReached,
}

impl Outlier {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Records a failure. `may_eject` says whether the region's cap leaves
    /// room for one more ejection; it is asked only when this failure
    /// would eject.
    pub fn record_failure(
        &mut self,
        policy: &OutlierPolicy,
        now: Instant,
        may_eject: impl FnOnce() -> bool,
    ) -> Verdict {
        if self.is_ejected(now) {
            return Verdict::Kept;
        }
        // A backend that stayed in for a full `max` since its last ejection
        // starts again from the base ejection time.
        if let Some(until) = self.ejected_until
            && now.saturating_duration_since(until) > policy.max
        {
            self.ejections = 0;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        if self.consecutive < policy.consecutive {
            return Verdict::Kept;
        }
        if !may_eject() {
            // Said once per streak: the failures after it change nothing
            // until the cap leaves room, when the next one ejects.
            return if self.consecutive == policy.consecutive {
                Verdict::CapReached
            } else {
                Verdict::Kept
            };
        }
        self.ejections += 1;
        self.consecutive = 0;
        let ejected_for = policy.base.saturating_mul(self.ejections).min(policy.max);
        self.ejected_until = Some(now + ejected_for);
        Verdict::Ejected(ejected_for)
    }

    pub fn record_success(&mut self) {
        self.consecutive = 0;
    }

    /// Failures in a row since the last success or ejection.
    pub fn failing(&self) -> bool {
        self.consecutive > 0
    }

    /// Ends an ejection now; the backoff goes on counting it.
    pub fn lift(&mut self, now: Instant) {
        if self.is_ejected(now) {
            self.ejected_until = Some(now);
        }
    }

    /// Nothing to remember: no failure, no ejection.
    pub fn is_blank(&self) -> bool {
        self.consecutive == 0 && self.ejections == 0 && self.ejected_until.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: OutlierPolicy = OutlierPolicy {
        consecutive: 3,
        base: Duration::from_secs(10),
        max: Duration::from_secs(60),
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_cap_is_asked_only_when_a_failure_would_eject() {
        let t0 = Instant::now();
        let mut o = Outlier::default();
        let mut asked = 0;
        for _ in 0..2 {
            o.record_failure(&POLICY, t0, || {
                asked += 1;
                true
            });
        }
        assert_eq!(asked, 0, "two failures of three eject nothing");
        let verdict = o.record_failure(&POLICY, t0, || {
            asked += 1;
            true
        });
        assert_eq!((asked, verdict), (1, Verdict::Ejected(secs(10))));
        o.record_failure(&POLICY, t0 + secs(1), || {
            asked += 1;
            true
        });
        assert_eq!(asked, 1, "a failure while ejected asks nothing");
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut o = Outlier::default();
        assert_eq!(o.record_failure(&POLICY, t0, || true), Verdict::Kept);
        assert_eq!(o.record_failure(&POLICY, t0, || true), Verdict::Kept);
        o.record_success();
        assert_eq!(o.record_failure(&POLICY, t0, || true), Verdict::Kept);
        assert_eq!(o.record_failure(&POLICY, t0, || true), Verdict::Kept);
        assert_eq!(
            o.record_failure(&POLICY, t0, || true),
            Verdict::Ejected(secs(10))
        );
        assert!(o.is_ejected(t0 + secs(9)));
        assert!(
            !o.is_ejected(t0 + secs(10)),
            "re-admitted after its ejection time"
        );
    }

    #[test]
    fn each_repeat_ejects_for_longer_up_to_the_maximum() {
        let mut now = Instant::now();
        let mut o = Outlier::default();
        let mut times = Vec::new();
        for _ in 0..8 {
            let verdict = (0..3)
                .map(|_| o.record_failure(&POLICY, now, || true))
                .last()
                .unwrap();
            let Verdict::Ejected(d) = verdict else {
                panic!("{verdict:?}")
            };
            times.push(d.as_secs());
            now += d;
        }
        assert_eq!(times, [10, 20, 30, 40, 50, 60, 60, 60]);
    }

    #[test]
    fn the_backoff_is_forgotten_after_a_quiet_spell() {
        let mut now = Instant::now();
        let mut o = Outlier::default();
        for _ in 0..3 {
            for _ in 0..3 {
                o.record_failure(&POLICY, now, || true);
            }
            now += secs(60);
        }
        now += secs(120);
        let verdict = (0..3)
            .map(|_| o.record_failure(&POLICY, now, || true))
            .last()
            .unwrap();
        assert_eq!(verdict, Verdict::Ejected(secs(10)));
    }

    #[test]
    fn the_cap_keeps_a_backend_in() {
        let t0 = Instant::now();
        let mut o = Outlier::default();
        for _ in 0..2 {
            o.record_failure(&POLICY, t0, || false);
        }
        assert_eq!(o.record_failure(&POLICY, t0, || false), Verdict::CapReached);
        assert!(!o.is_ejected(t0));
        // Once room frees up, the next failure ejects.
        assert_eq!(
            o.record_failure(&POLICY, t0, || true),
            Verdict::Ejected(secs(10))
        );
    }

    #[test]
    fn a_capped_streak_is_said_once_and_ejects_when_the_cap_leaves_room() {
        let t0 = Instant::now();
        let mut o = Outlier::default();
        assert_eq!(o.record_failure(&POLICY, t0, || false), Verdict::Kept);
        assert_eq!(o.record_failure(&POLICY, t0, || false), Verdict::Kept);
        assert_eq!(o.record_failure(&POLICY, t0, || false), Verdict::CapReached);
        for _ in 0..10 {
            assert_eq!(o.record_failure(&POLICY, t0, || false), Verdict::Kept);
        }
        assert!(o.failing() && !o.is_ejected(t0));
        assert_eq!(
            o.record_failure(&POLICY, t0, || true),
            Verdict::Ejected(secs(10))
        );
        assert!(!o.failing());
        // A new streak after it is said again.
        let later = t0 + secs(11);
        for _ in 0..2 {
            o.record_failure(&POLICY, later, || false);
        }
        assert_eq!(
            o.record_failure(&POLICY, later, || false),
            Verdict::CapReached
        );
    }
}
