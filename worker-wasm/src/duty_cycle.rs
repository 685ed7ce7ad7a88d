//! The CPU-use slider: compute, then idle, per chunk.
//!
//! At `p` percent, after a chunk that computed for `t` ms the worker idles `t · (100 − p) / p`
//! ms before the next one, so over time it computes `p`% of the wall-clock time. Slicing by
//! chunk (rather than pausing mid-chunk) keeps the kernels free of any notion of time.

/// A CPU-use setting, 1 to 100 percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DutyCycle {
    /// Percent of the time spent computing.
    percent: u32,
}

impl DutyCycle {
    /// `percent`, clamped to 1..=100 (0 would never compute; use pause for that).
    pub fn new(percent: u32) -> Self {
        DutyCycle {
            percent: percent.clamp(1, 100),
        }
    }

    /// The setting, in percent.
    pub fn percent(self) -> u32 {
        self.percent
    }

    /// Milliseconds to idle after computing for `compute_ms`.
    pub fn idle_after(self, compute_ms: f64) -> f64 {
        if !compute_ms.is_finite() || compute_ms <= 0.0 {
            return 0.0;
        }
        let p = f64::from(self.percent);
        compute_ms * (100.0 - p) / p
    }
}

impl Default for DutyCycle {
    fn default() -> Self {
        DutyCycle::new(100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_keeps_the_share_of_compute_time() {
        assert_eq!(DutyCycle::new(100).idle_after(40.0), 0.0);
        assert_eq!(DutyCycle::new(50).idle_after(40.0), 40.0);
        assert_eq!(DutyCycle::new(25).idle_after(40.0), 120.0);
        assert_eq!(DutyCycle::new(80).idle_after(40.0), 10.0);
        for percent in [1, 10, 33, 50, 99] {
            let duty = DutyCycle::new(percent);
            let busy = 30.0;
            let share = busy / (busy + duty.idle_after(busy));
            assert!(
                (share - f64::from(percent) / 100.0).abs() < 1e-9,
                "{percent}"
            );
        }
    }

    #[test]
    fn out_of_range_settings_and_odd_times_are_tamed() {
        assert_eq!(DutyCycle::new(0).percent(), 1);
        assert_eq!(DutyCycle::new(250).percent(), 100);
        assert_eq!(DutyCycle::new(50).idle_after(-3.0), 0.0);
        assert_eq!(DutyCycle::new(50).idle_after(f64::NAN), 0.0);
        assert_eq!(DutyCycle::default().percent(), 100);
    }
}
