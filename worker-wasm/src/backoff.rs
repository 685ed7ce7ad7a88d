//! [`Backoff`]: how long to wait before reconnecting.
//!
//! Exponential backoff with full jitter, like the native worker's: the n-th delay is uniform
//! in `[0, min(cap, initial · 2ⁿ)]`. When a master restarts, thousands of tabs lose it at
//! once; the jitter spreads their return. The random draw is passed in (the browser worker
//! uses `Math.random()`), which keeps this testable natively.

/// Reconnect delays in milliseconds: doubling from `initial_ms` up to `cap_ms`, jittered.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Ceiling of the first delay.
    initial_ms: f64,
    /// Largest ceiling.
    cap_ms: f64,
    /// Failed attempts since the last [`Backoff::reset`].
    attempt: u32,
}

impl Backoff {
    /// Ceilings start at `initial_ms` and double up to `cap_ms`.
    pub fn new(initial_ms: f64, cap_ms: f64) -> Self {
        Backoff {
            initial_ms,
            cap_ms: cap_ms.max(initial_ms),
            attempt: 0,
        }
    }

    /// Forget past failures (after the master welcomed a session).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The upper bound of the next delay.
    pub fn ceiling_ms(&self) -> f64 {
        let factor = f64::from(1u32 << self.attempt.min(20));
        (self.initial_ms * factor).min(self.cap_ms)
    }

    /// The next delay, given a uniform draw in `[0, 1)`.
    pub fn next_delay_ms(&mut self, uniform: f64) -> f64 {
        let ceiling = self.ceiling_ms();
        self.attempt = self.attempt.saturating_add(1);
        ceiling * uniform.clamp(0.0, 1.0)
    }
}

impl Default for Backoff {
    /// 250 ms doubling up to 30 s.
    fn default() -> Self {
        Backoff::new(250.0, 30_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling_ms());
            backoff.next_delay_ms(0.5);
        }
        assert_eq!(
            ceilings,
            [
                250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 30000.0, 30000.0, 30000.0
            ]
        );
        for _ in 0..10_000 {
            backoff.next_delay_ms(0.9);
        }
        assert_eq!(backoff.ceiling_ms(), 30_000.0);
        backoff.reset();
        assert_eq!(backoff.ceiling_ms(), 250.0);
    }

    #[test]
    fn delays_are_the_draw_times_the_ceiling() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_delay_ms(0.0), 0.0);
        assert_eq!(backoff.next_delay_ms(0.5), 250.0);
        // Out-of-range draws are clamped, never a negative or oversized delay.
        assert_eq!(backoff.next_delay_ms(7.0), 1000.0);
        assert_eq!(backoff.next_delay_ms(-1.0), 0.0);
        assert_eq!(Backoff::new(2000.0, 1000.0).ceiling_ms(), 2000.0);
    }
}
