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

    /// The range the true median ratio of throughput lies in, with its
    /// confidence (see [`median_interval`]).
    pub fn rps_interval(&self) -> Option<Interval> {
        median_interval(&self.rps, LEVEL)
    }

    pub fn p99_interval(&self) -> Option<Interval> {
        median_interval(&self.p99, LEVEL)
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

    /// One line for people: medians, the range each median lies in, then
    /// each repetition's spread.
    pub fn line(&self, peer: &str) -> String {
        let range = |i: Option<Interval>| match i {
            Some(i) => format!(
                "{:.0}% interval {:.2}-{:.2}; ",
                i.confidence * 100.0,
                i.low,
                i.high
            ),
            None => String::new(),
        };
        format!(
            "edgeroute / {peer}: rps {:.2} ({}per repetition {}), p99 {:.2} ({}{}): target {}",
            self.rps_median(),
            range(self.rps_interval()),
            spread(&self.rps),
            self.p99_median(),
            range(self.p99_interval()),
            spread(&self.p99),
            if self.target_met() { "met" } else { "not met" },
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "median_ratio": self.rps_median(),
            "median_ratio_interval": self.rps_interval().map(Interval::json),
            "per_repetition": self.rps,
            "p99_median_ratio": self.p99_median(),
            "p99_median_ratio_interval": self.p99_interval().map(Interval::json),
            "p99_per_repetition": self.p99,
            "errors": self.errors,
            "target_met": self.target_met(),
        })
    }
}

/// The least confidence asked of a median's interval.
const LEVEL: f64 = 0.9;

/// A range that holds the true median of what was sampled with the given
/// confidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
    pub confidence: f64,
}

impl Interval {
    fn json(self) -> Value {
        json!({"low": self.low, "high": self.high, "confidence": self.confidence})
    }
}

/// The narrowest range between two order statistics of `v` that holds the
/// median of the distribution `v` was drawn from with a confidence of at
/// least `level` (the sign test's interval: the median lies below the
/// `k`-th smallest of `n` values unless at least `k` of them fall below
/// it, each with even odds). It assumes the values are independent draws,
/// as the pairs of a run are to the extent the machine's noise is. None if
/// `v` is too short for `level` (fewer than 5 values for 90%).
pub fn median_interval(v: &[f64], level: f64) -> Option<Interval> {
    let n = v.len();
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    // P(X < k) for X ~ Binomial(n, 1/2), as k grows from 0. Each term
    // is kept as its logarithm: 2^-n itself is below the smallest double
    // past n = 1074, while the terms that matter are not.
    let mut below = 0.0;
    let mut ln_term = -(n as f64) * std::f64::consts::LN_2;
    let mut best = None;
    for k in 1..=n / 2 {
        below += ln_term.exp();
        ln_term += ((n - (k - 1)) as f64 / k as f64).ln();
        let confidence = 1.0 - 2.0 * below;
        if confidence < level {
            break;
        }
        best = Some(Interval {
            low: sorted[k - 1],
            high: sorted[n - k],
            confidence,
        });
    }
    best
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
        let edge: Vec<Figures> = (0..8)
            .map(|i| f(90.0 + 5.0 * f64::from(i), 1000.0 - 10.0 * f64::from(i)))
            .collect();
        let c = Comparison::of(&edge, &[f(100.0, 1000.0); 8]);
        assert_eq!(
            c.line("nginx"),
            "edgeroute / nginx: rps 1.08 (93% interval 0.95-1.20; per repetition 0.90-1.25), \
             p99 0.96 (93% interval 0.94-0.99; 0.93-1.00): target met"
        );
    }

    /// Binomial(n, 1/2) tail sums, added up the long way.
    fn coverage(n: usize, k: usize) -> f64 {
        let choose =
            |n: usize, r: usize| (0..r).fold(1.0, |c, i| c * (n - i) as f64 / (i + 1) as f64);
        let below: f64 = (0..k).map(|i| choose(n, i)).sum::<f64>() / 2f64.powi(n as i32);
        1.0 - 2.0 * below
    }

    #[test]
    fn the_median_s_interval_is_the_narrowest_with_enough_confidence() {
        // 8 values: the 2nd to the 7th smallest hold the median with
        // 1 - 2 * 9/256 = 93.0%; the 3rd to the 6th only with 71.1%.
        let v = [1.3, 0.8, 1.1, 0.9, 1.0, 1.2, 0.7, 1.05];
        let i = median_interval(&v, 0.9).expect("8 values are enough for 90%");
        assert_eq!((i.low, i.high), (0.8, 1.2));
        assert!((i.confidence - (1.0 - 18.0 / 256.0)).abs() < 1e-12, "{i:?}");
        // Asking for 95% widens it to the extremes (99.2%).
        let i = median_interval(&v, 0.95).expect("enough for 95%");
        assert_eq!((i.low, i.high), (0.7, 1.3));
        // 4 values never reach 90%: the widest range holds it with 87.5%.
        assert_eq!(median_interval(&v[..4], 0.9), None);
        assert_eq!(median_interval(&[], 0.9), None);
    }

    /// Past the range of 2^-n (n > 1074) the interval is still the one a
    /// normal approximation gives: about 1.645 standard deviations of the
    /// count below the median, each side.
    #[test]
    fn a_long_sample_keeps_a_true_interval() {
        let n = 2000usize;
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let i = median_interval(&v, 0.9).expect("enough values");
        assert!((0.9..0.92).contains(&i.confidence), "{i:?}");
        let k = i.low as usize + 1;
        let normal = n as f64 / 2.0 - 1.645 * (n as f64).sqrt() / 2.0;
        assert!((k as f64 - normal).abs() < 2.0, "k={k}, normal {normal}");
        assert_eq!(i.high as usize, n - k);
    }

    #[test]
    fn the_interval_s_confidence_is_the_binomial_one_at_every_size() {
        for n in 1..40 {
            let v: Vec<f64> = (0..n).map(|i| f64::from(i as u32)).collect();
            let want = (1..=n / 2).filter(|&k| coverage(n, k) >= 0.9).max();
            let got = median_interval(&v, 0.9);
            match (want, got) {
                (None, None) => {}
                (Some(k), Some(i)) => {
                    assert_eq!((i.low, i.high), ((k - 1) as f64, (n - k) as f64), "n={n}");
                    assert!((i.confidence - coverage(n, k)).abs() < 1e-9, "n={n}: {i:?}");
                }
                (want, got) => panic!("n={n}: want k={want:?}, got {got:?}"),
            }
        }
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
