//! [`Backoff`]: how long a client of the master waits before it connects again, the same for
//! the native worker, the browser worker and `grid-loadgen`.
//!
//! Exponential backoff with "full jitter" (AWS Architecture Blog, "Exponential Backoff And
//! Jitter"): the n-th delay is uniform in `[0, min(cap, initial · 2ⁿ)]`. When a master
//! restarts, thousands of workers and tabs lose it at once; the jitter spreads their return.
//! The random draw is the caller's (`rand` natively, `Math.random()` in a browser), which
//! keeps this free of I/O and of any random source, and testable with exact values.

use std::time::Duration;

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
    /// A backoff whose ceiling starts at `initial` and doubles up to `cap` (at least
    /// `initial`).
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

    /// The next delay, given a uniform draw in `[0, 1]` (out-of-range draws are clamped, so
    /// the delay is never negative nor above the ceiling).
    pub fn next_delay(&mut self, uniform: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let draw = if uniform.is_nan() {
            0.0
        } else {
            uniform.clamp(0.0, 1.0)
        };
        ceiling.mul_f64(draw)
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

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut backoff = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay(0.5);
        }
        assert_eq!(
            ceilings,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn delays_are_the_draw_times_the_ceiling() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_delay(0.0), Duration::ZERO);
        assert_eq!(backoff.next_delay(0.5), Duration::from_millis(250));
        assert_eq!(backoff.next_delay(1.0), Duration::from_secs(1));
        // Draws out of range are clamped: never negative, never above the ceiling.
        assert_eq!(backoff.next_delay(7.0), Duration::from_secs(2));
        assert_eq!(backoff.next_delay(-1.0), Duration::ZERO);
        assert_eq!(backoff.next_delay(f64::NAN), Duration::ZERO);
    }

    #[test]
    fn reset_starts_over_and_many_failures_do_not_overflow() {
        let mut backoff = Backoff::default();
        for _ in 0..10_000 {
            backoff.next_delay(0.9);
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(30));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(250));
        assert!(backoff.next_delay(1.0) <= Duration::from_millis(250));
    }

    #[test]
    fn cap_below_initial_is_raised_to_initial() {
        let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(), Duration::from_secs(2));
    }
}
