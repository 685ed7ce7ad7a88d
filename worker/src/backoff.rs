//! [`Backoff`]: how long to wait before the next connection attempt.
//!
//! Exponential backoff with "full jitter" (AWS Architecture Blog, "Exponential Backoff And
//! Jitter"): the n-th delay is uniform in `[0, min(cap, initial · 2ⁿ)]`. The jitter spreads a
//! crowd of workers that lost the same master, so they do not all knock again at once.

use std::time::Duration;

use rand::Rng;

/// Reconnect delays: doubling from `initial` up to `cap`, each one uniformly jittered.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Ceiling of the first delay.
    initial: Duration,
    /// Largest ceiling.
    cap: Duration,
    /// Failed attempts since the last [`Backoff::reset`].
    attempt: u32,
}

impl Backoff {
    /// A backoff whose ceiling starts at `initial` and doubles up to `cap`.
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Backoff {
            initial,
            cap: cap.max(initial),
            attempt: 0,
        }
    }

    /// Forget past failures: the next delay is short again (after a session was welcomed).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        // 2^20 · initial is far above any sensible cap; stop doubling there to avoid overflow.
        let factor = 1u32 << self.attempt.min(20);
        self.initial.saturating_mul(factor).min(self.cap)
    }

    /// The next delay, drawn with the thread-local generator.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// The next delay, drawn with `rng` (tests pass a seeded one).
    pub fn next_delay_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

impl Default for Backoff {
    /// 250 ms doubling up to 30 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let mut backoff = Backoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay_with(&mut rng);
        }
        assert_eq!(
            ceilings,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut backoff = Backoff::default();
            for _ in 0..12 {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay_with(&mut rng);
                assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
                assert!(delay <= Duration::from_secs(30));
                distinct.insert(delay);
            }
        }
        // Full jitter: delays are spread out, not pinned to the ceiling.
        assert!(distinct.len() > 1000, "{} distinct delays", distinct.len());
    }

    #[test]
    fn reset_starts_over_and_many_failures_do_not_overflow() {
        let mut backoff = Backoff::default();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..10_000 {
            backoff.next_delay_with(&mut rng);
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(30));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(250));
        assert!(backoff.next_delay_with(&mut rng) <= Duration::from_millis(250));
    }

    #[test]
    fn cap_below_initial_is_raised_to_initial() {
        let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(), Duration::from_secs(2));
    }
}
