//! Active probe results turned into in or out of rotation: `fall` failures
//! in a row take a backend out, `rise` passes in a row bring it back. A
//! backend that has never passed a probe is unproven: it stays out until its
//! first pass, unless configured to start healthy.

#[derive(Debug, Clone)]
pub struct ProbeState {
    healthy: bool,
    /// Has passed a probe (or was configured to start healthy).
    proven: bool,
    /// Has been probed at least once.
    probed: bool,
    passes: u32,
    failures: u32,
}

impl ProbeState {
    pub fn new(start_healthy: bool) -> Self {
        ProbeState {
            healthy: start_healthy,
            proven: start_healthy,
            probed: false,
            passes: 0,
            failures: 0,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    pub fn is_proven(&self) -> bool {
        self.proven
    }

    pub fn is_probed(&self) -> bool {
        self.probed
    }

    /// Records one probe; returns the new state when it changed.
    pub fn record(&mut self, passed: bool, fall: u32, rise: u32) -> Option<bool> {
        self.probed = true;
        if passed {
            self.failures = 0;
            self.passes += 1;
            let first_pass = !self.proven;
            self.proven = true;
            if !self.healthy && (first_pass || self.passes >= rise) {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.passes = 0;
            self.failures += 1;
            if self.healthy && self.failures >= fall {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_after_fall_failures_and_returns_after_rise_passes() {
        let mut p = ProbeState::new(true);
        assert_eq!(p.record(false, 3, 2), None);
        assert_eq!(p.record(false, 3, 2), None);
        assert!(p.is_healthy());
        assert_eq!(p.record(false, 3, 2), Some(false));
        assert!(!p.is_healthy());
        assert_eq!(p.record(true, 3, 2), None);
        assert_eq!(
            p.record(false, 3, 2),
            None,
            "a failure resets the pass streak"
        );
        assert_eq!(p.record(true, 3, 2), None);
        assert_eq!(p.record(true, 3, 2), Some(true));
    }

    #[test]
    fn an_unproven_backend_stays_out_until_its_first_pass() {
        let mut p = ProbeState::new(false);
        assert!(!p.is_healthy() && !p.is_proven() && !p.is_probed());
        assert_eq!(p.record(false, 3, 2), None);
        assert!(p.is_probed() && !p.is_healthy());
        assert_eq!(p.record(true, 3, 2), Some(true), "the first pass admits it");
        assert!(p.is_proven());
    }
}
