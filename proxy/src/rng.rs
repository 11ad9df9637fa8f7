//! Randomness on the request path: the backend pick and new request ids.
//! Neither is a secret (a client may send its own request id), so each
//! thread keeps a small, fast generator, seeded once from the thread's
//! cryptographic one, instead of drawing from that for every request. Its
//! output can be predicted from enough of it: a request id tells requests
//! apart and must never serve as a token.

use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::cell::RefCell;

thread_local! {
    static FAST: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// `f`, given this thread's generator.
pub fn with<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    FAST.with_borrow_mut(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use std::collections::HashSet;

    #[test]
    fn threads_draw_different_numbers() {
        let draw = || with(|r| r.random::<u128>());
        let here: HashSet<u128> = (0..64).map(|_| draw()).collect();
        assert_eq!(here.len(), 64, "a thread repeats itself");
        let there: HashSet<u128> = std::thread::spawn(move || (0..64).map(|_| draw()).collect())
            .join()
            .expect("thread");
        assert!(
            here.is_disjoint(&there),
            "two threads draw the same numbers"
        );
    }
}
