//! edgeroute against one peer proxy over the interleaved repetitions of a
//! throughput run, and whether the target held: a throughput at
//! least the peer's and a p99 no higher, in the same run.

use crate::report::median;
use serde_json::{Value, json};

/// One repetition's figures for one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Successful requests per second.
    pub rps: f64,
    pub p99_us: f64,
    /// Failed requests (transport failures, answers other than 2xx).
    pub errors: u64,
}

/// edgeroute over the peer, repetition by repetition.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// edgeroute's rps over the peer's, per repetition.
    pub rps: Vec<f64>,
    /// edgeroute's p99 over the peer's, per repetition.
    pub p99: Vec<f64>,
    /// edgeroute's failed requests over the repetitions.
    pub errors: u64,
}

impl Comparison {
    /// Pairs the repetitions in order: each pair ran in the same round, so
    /// its ratio carries the machine's state at that moment for both.
    pub fn of(edge: &[Figures], peer: &[Figures]) -> Self {
        let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
        let pairs = || edge.iter().zip(peer);
        Self {
            rps: pairs().map(|(e, p)| ratio(e.rps, p.rps)).collect(),
            p99: pairs().map(|(e, p)| ratio(e.p99_us, p.p99_us)).collect(),
            errors: pairs().map(|(e, _)| e.errors).sum(),
        }
    }

    pub fn rps_median(&self) -> f64 {
        median(self.rps.clone())
    }

    pub fn p99_median(&self) -> f64 {
        median(self.p99.clone())
    }

    /// The target held in this run: over the repetitions, edgeroute's
    /// throughput was at least the peer's and its p99 no higher, and none
    /// of its requests failed.
    pub fn target_met(&self) -> bool {
        !self.rps.is_empty()
            && self.errors == 0
            && self.rps_median() >= 1.0
            && self.p99_median() <= 1.0
    }

    /// One line for people: medians, then each repetition's spread.
    pub fn line(&self, peer: &str) -> String {
        format!(
            "edgeroute / {peer}: rps {:.2} (per repetition {}), p99 {:.2} ({}): target {}",
            self.rps_median(),
            spread(&self.rps),
            self.p99_median(),
            spread(&self.p99),
            if self.target_met() { "met" } else { "not met" },
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "median_ratio": self.rps_median(),
            "per_repetition": self.rps,
            "p99_median_ratio": self.p99_median(),
            "p99_per_repetition": self.p99,
            "errors": self.errors,
            "target_met": self.target_met(),
        })
    }
}

fn spread(v: &[f64]) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(*r), hi.max(*r))
        });
    if v.is_empty() {
        "none".into()
    } else {
        format!("{lo:.2}-{hi:.2}")
    }
}

/// The order in which repetition `rep` runs `n` targets: rows of a
/// balanced Latin square (Williams). Over `n` repetitions (`2n` for an odd
/// `n`) every target runs once in every place and right after every other
/// target once, so neither a place nor a neighbour favours one of them.
pub fn order(n: usize, rep: usize) -> impl Iterator<Item = usize> {
    // First row 0, 1, n-1, 2, n-2, ...; each row adds one.
    let first = move |i: usize| {
        if i == 0 {
            0
        } else if i % 2 == 1 {
            i.div_ceil(2)
        } else {
            n - i / 2
        }
    };
    let shift = rep % n.max(1);
    let mirrored = n % 2 == 1 && (rep / n.max(1)) % 2 == 1;
    (0..n).map(move |i| {
        let i = if mirrored { n - 1 - i } else { i };
        (first(i) + shift) % n
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(rps: f64, p99_us: f64) -> Figures {
        Figures {
            rps,
            p99_us,
            errors: 0,
        }
    }

    #[test]
    fn repetitions_pair_in_order() {
        let c = Comparison::of(
            &[f(100.0, 500.0), f(90.0, 600.0)],
            &[f(50.0, 1000.0), f(100.0, 300.0)],
        );
        assert_eq!(c.rps, vec![2.0, 0.9]);
        assert_eq!(c.p99, vec![0.5, 2.0]);
    }

    #[test]
    fn the_target_needs_both_throughput_and_p99() {
        let peer = [f(100.0, 1000.0); 3];
        let met = Comparison::of(&[f(101.0, 990.0), f(100.0, 1000.0), f(99.0, 1100.0)], &peer);
        assert!(met.target_met(), "{met:?}");
        // Faster, but a higher p99 in most repetitions.
        let slow_tail = Comparison::of(
            &[f(120.0, 1010.0), f(120.0, 1020.0), f(120.0, 900.0)],
            &peer,
        );
        assert!(!slow_tail.target_met());
        // A lower p99, but slower in most repetitions.
        let slower = Comparison::of(&[f(99.0, 900.0), f(98.0, 900.0), f(130.0, 900.0)], &peer);
        assert!(!slower.target_met());
        assert!(!Comparison::of(&[], &[]).target_met());
        // Faster and quicker, but some of its requests failed.
        let failing = Figures {
            errors: 1,
            ..f(120.0, 900.0)
        };
        assert!(!Comparison::of(&[failing; 3], &peer).target_met());
    }

    #[test]
    fn the_line_names_the_spread_and_the_verdict() {
        let c = Comparison::of(&[f(95.0, 1100.0), f(105.0, 900.0)], &[f(100.0, 1000.0); 2]);
        assert_eq!(
            c.line("nginx"),
            "edgeroute / nginx: rps 1.00 (per repetition 0.95-1.05), p99 1.00 (0.90-1.10): target met"
        );
    }

    #[test]
    fn every_place_and_every_neighbour_comes_once_per_square() {
        for n in 1..=6 {
            let rows = if n % 2 == 1 { 2 * n } else { n };
            let orders: Vec<Vec<usize>> = (0..rows).map(|rep| order(n, rep).collect()).collect();
            for row in &orders {
                let mut sorted = row.clone();
                sorted.sort_unstable();
                assert_eq!(
                    sorted,
                    (0..n).collect::<Vec<_>>(),
                    "each target once: {row:?}"
                );
            }
            let copies = rows / n;
            for place in 0..n {
                let mut count = vec![0; n];
                for row in &orders {
                    count[row[place]] += 1;
                }
                assert!(
                    count.iter().all(|&c| c == copies),
                    "n={n} place {place}: {count:?}"
                );
            }
            if n > 1 {
                let mut after = vec![vec![0; n]; n];
                for row in &orders {
                    for pair in row.windows(2) {
                        after[pair[0]][pair[1]] += 1;
                    }
                }
                for (a, row) in after.iter().enumerate() {
                    for (b, &c) in row.iter().enumerate() {
                        let want = if a == b { 0 } else { copies };
                        assert_eq!(c, want, "n={n}: {b} right after {a}");
                    }
                }
            }
        }
    }
}
