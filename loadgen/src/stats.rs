//! What a run measures: counters and latency histograms shared by every simulated worker
//! ([`Stats`], all atomics, no locks on the hot path), and the [`Report`] printed at the end.
//!
//! Counts that matter per side, honest or attacking ([`SideStats`], reported as
//! [`SideReport`]), are kept per side; the report's totals are their sums.
//!
//! Latencies go into [`Histogram`], a fixed log-linear histogram of microseconds (32 buckets
//! per power of two: within about 3 %), so 10,000 connections can record without contention
//! or growing memory. Busy compute time also goes into a timeline of 10 ms buckets when chunks
//! have a simulated compute time, to measure how busy the slots were at the tail of a job.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Sub-buckets per power of two (2^5): about 3 % precision.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for values up to 2^63 µs.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB as usize;

/// A concurrent histogram of durations in microseconds.
#[derive(Debug)]
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros < 2 * SUB {
        return micros as usize;
    }
    let msb = 63 - micros.leading_zeros();
    let shift = msb - SUB_BITS;
    ((shift as u64 + 1) * SUB + ((micros >> shift) - SUB)) as usize
}

/// The largest value that falls in `bucket`.
fn bucket_high(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < 2 * SUB {
        return bucket;
    }
    let shift = bucket / SUB - 1;
    let mantissa = bucket % SUB + SUB;
    ((mantissa + 1) << shift) - 1
}

impl Histogram {
    /// Record one duration.
    pub fn record(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        let bucket = bucket_of(micros).min(BUCKETS - 1);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    /// Count, p50, p99 and max.
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let quantile = |q: f64| -> f64 {
            if count == 0 {
                return 0.0;
            }
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (bucket, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return bucket_high(bucket).min(max) as f64 / 1000.0;
                }
            }
            max as f64 / 1000.0
        };
        LatencySummary {
            count,
            p50_ms: quantile(0.50),
            p90_ms: quantile(0.90),
            p99_ms: quantile(0.99),
            max_ms: max as f64 / 1000.0,
        }
    }
}

/// Percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// Width of one timeline bucket.
const TIMELINE_BUCKET_US: u64 = 10_000;
/// Timeline length: two hours.
const TIMELINE_BUCKETS: usize = 720_000;

/// What the workers of one side (honest, or attacking) did.
#[derive(Debug, Default)]
pub struct SideStats {
    /// Sessions welcomed by the master (reconnects count again).
    pub connections: AtomicU64,
    /// Distinct worker ids that were welcomed.
    pub identities: AtomicU64,
    /// Assignments received.
    pub assignments: AtomicU64,
    /// Results sent (lies included).
    pub results: AtomicU64,
    /// Leases handed back with `release`.
    pub released: AtomicU64,
    /// `rejected` answers received.
    pub rejected: AtomicU64,
}

impl SideStats {
    fn report(&self) -> SideReport {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SideReport {
            connections: load(&self.connections),
            identities: load(&self.identities),
            assignments: load(&self.assignments),
            results: load(&self.results),
            released: load(&self.released),
            rejected: load(&self.rejected),
        }
    }
}

/// Counters shared by every simulated worker of a run.
#[derive(Debug)]
pub struct Stats {
    /// When the run started; every timestamp below is microseconds since then.
    pub start: Instant,
    /// The honest workers' counts.
    pub honest: SideStats,
    /// The saboteurs' counts.
    pub attackers: SideStats,
    /// Sessions open now.
    pub connected: AtomicI64,
    /// Most sessions open at once.
    pub peak_connected: AtomicI64,
    /// Connection attempts that failed before a welcome.
    pub connect_failures: AtomicU64,
    /// Welcomed sessions that ended before the run did (the simulated worker reconnects).
    pub sessions_lost: AtomicU64,
    /// `error` messages from the master.
    pub master_errors: AtomicU64,
    /// Results that were lies.
    pub lies: AtomicU64,
    /// Leases the master revoked.
    pub revoked: AtomicU64,
    /// Assignments queued or computing on all connections now (not those that attackers sit
    /// on without computing them).
    pub held: AtomicI64,
    /// The last assignment or result, µs since start.
    pub last_activity_us: AtomicU64,
    /// The first assignment received, µs since start (`u64::MAX`: none yet).
    pub first_assignment_us: AtomicU64,
    /// The last result sent, µs since start.
    pub last_result_us: AtomicU64,
    /// Compute time summed over every chunk (kernel plus simulated time), µs.
    pub compute_us: AtomicU64,
    /// Of which spent on chunks revoked before their result was sent, µs.
    pub wasted_compute_us: AtomicU64,
    /// Earliest moment a connection that had work lost a busy slot for good, µs since start.
    pub tail_start_us: AtomicU64,
    /// Hello to first assignment.
    pub first_latency: Histogram,
    /// Result sent to the next assignment received on the same connection.
    pub turnaround: Histogram,
    /// Busy compute µs per 10 ms bucket (only when chunks have a simulated compute time).
    timeline: Option<Box<[AtomicU64]>>,
}

impl Stats {
    /// Fresh counters; `timeline` allocates the busy timeline.
    pub fn new(timeline: bool) -> Self {
        Stats {
            start: Instant::now(),
            honest: SideStats::default(),
            attackers: SideStats::default(),
            connected: AtomicI64::new(0),
            peak_connected: AtomicI64::new(0),
            connect_failures: AtomicU64::new(0),
            sessions_lost: AtomicU64::new(0),
            master_errors: AtomicU64::new(0),
            lies: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
            held: AtomicI64::new(0),
            last_activity_us: AtomicU64::new(0),
            first_assignment_us: AtomicU64::new(u64::MAX),
            last_result_us: AtomicU64::new(0),
            compute_us: AtomicU64::new(0),
            wasted_compute_us: AtomicU64::new(0),
            tail_start_us: AtomicU64::new(u64::MAX),
            first_latency: Histogram::default(),
            turnaround: Histogram::default(),
            timeline: timeline.then(|| {
                (0..TIMELINE_BUCKETS)
                    .map(|_| AtomicU64::new(0))
                    .collect::<Box<[AtomicU64]>>()
            }),
        }
    }

    /// Microseconds from the run's start to `at`.
    pub fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    /// The counts of the attacking side (`true`) or the honest one.
    pub fn side(&self, attacker: bool) -> &SideStats {
        if attacker {
            &self.attackers
        } else {
            &self.honest
        }
    }

    /// Assignments received by both sides.
    pub fn assignments(&self) -> u64 {
        self.honest.assignments.load(Ordering::Relaxed)
            + self.attackers.assignments.load(Ordering::Relaxed)
    }

    /// Results sent by both sides.
    pub fn results(&self) -> u64 {
        self.honest.results.load(Ordering::Relaxed) + self.attackers.results.load(Ordering::Relaxed)
    }

    /// A session of a worker of side `attacker` was welcomed; `new_identity` when its worker
    /// id had not been welcomed before.
    pub fn on_connected(&self, attacker: bool, new_identity: bool) {
        let side = self.side(attacker);
        side.connections.fetch_add(1, Ordering::Relaxed);
        if new_identity {
            side.identities.fetch_add(1, Ordering::Relaxed);
        }
        let now = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_connected.fetch_max(now, Ordering::Relaxed);
    }

    /// A welcomed session ended.
    pub fn on_disconnected(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// An assignment for a worker of side `attacker` arrived at `at`.
    pub fn on_assignment(&self, at: Instant, attacker: bool) {
        let t = self.micros(at);
        self.side(attacker)
            .assignments
            .fetch_add(1, Ordering::Relaxed);
        self.first_assignment_us.fetch_min(t, Ordering::Relaxed);
        self.last_activity_us.fetch_max(t, Ordering::Relaxed);
    }

    /// An assignment was queued to be computed.
    pub fn on_queued(&self) {
        self.held.fetch_add(1, Ordering::Relaxed);
    }

    /// A held assignment ended (result sent, revoked, or the session was lost).
    pub fn on_released(&self, count: usize) {
        self.held
            .fetch_sub(i64::try_from(count).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// A chunk computed from `started` to `finished` by a worker of side `attacker`; its
    /// result was sent unless `wasted`.
    pub fn on_computed(
        &self,
        attacker: bool,
        started: Instant,
        finished: Instant,
        lie: bool,
        wasted: bool,
    ) {
        let (from, to) = (self.micros(started), self.micros(finished));
        let busy = to.saturating_sub(from);
        self.compute_us.fetch_add(busy, Ordering::Relaxed);
        if wasted {
            self.wasted_compute_us.fetch_add(busy, Ordering::Relaxed);
        } else {
            self.side(attacker).results.fetch_add(1, Ordering::Relaxed);
            if lie {
                self.lies.fetch_add(1, Ordering::Relaxed);
            }
            self.last_result_us.fetch_max(to, Ordering::Relaxed);
            self.last_activity_us.fetch_max(to, Ordering::Relaxed);
        }
        if let Some(timeline) = &self.timeline {
            add_interval(timeline, from, to);
        }
    }

    /// Busy compute µs within `[from, to)` µs since start, and the window actually covered
    /// (rounded out to whole timeline buckets). None without a timeline.
    fn busy_between(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        let timeline = self.timeline.as_ref()?;
        let first = usize::try_from(from / TIMELINE_BUCKET_US).ok()?;
        let last = usize::try_from(to.div_ceil(TIMELINE_BUCKET_US))
            .ok()?
            .min(timeline.len());
        if first >= last {
            return None;
        }
        let busy = timeline[first..last]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        Some((busy, (last - first) as u64 * TIMELINE_BUCKET_US))
    }

    /// The report of a run that has ended; `elapsed` is its whole length.
    pub fn report(&self, config: &crate::LoadConfig, elapsed: Duration) -> Report {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let first = load(&self.first_assignment_us);
        let last = load(&self.last_result_us);
        let active_us = if first == u64::MAX || last <= first {
            0
        } else {
            last - first
        };
        let active_s = active_us as f64 / 1e6;
        let honest_workers = config.workers - config.saboteurs.min(config.workers);
        let total_slots = f64::from(honest_workers) * f64::from(config.slots)
            + f64::from(config.saboteurs) * f64::from(config.saboteur_slots());
        let compute_us = load(&self.compute_us);
        let (honest, attackers) = (self.honest.report(), self.attackers.report());
        let results = honest.results + attackers.results;
        let efficiency = (active_us > 0)
            .then(|| compute_us as f64 / (total_slots * active_us as f64))
            .filter(|_| !config.compute.is_zero());
        let tail_start = load(&self.tail_start_us);
        let tail = (tail_start < last)
            .then(|| self.busy_between(tail_start, last))
            .flatten()
            .map(|(busy, window)| TailReport {
                start_s: tail_start.saturating_sub(first) as f64 / 1e6,
                length_s: window as f64 / 1e6,
                efficiency: busy as f64 / (total_slots * window as f64),
            });
        Report {
            workers: config.workers,
            slots: config.slots,
            saboteurs: config.saboteurs,
            attack: config.attack.map(|attack| attack.name()),
            seed: config.seed,
            compute_ms: config.compute.as_secs_f64() * 1000.0,
            elapsed_s: elapsed.as_secs_f64(),
            active_s,
            sessions: honest.connections + attackers.connections,
            peak_connected: self
                .peak_connected
                .load(Ordering::Relaxed)
                .max(0)
                .unsigned_abs(),
            connect_failures: load(&self.connect_failures),
            sessions_lost: load(&self.sessions_lost),
            master_errors: load(&self.master_errors),
            assignments: honest.assignments + attackers.assignments,
            results,
            lies: load(&self.lies),
            rejected: honest.rejected + attackers.rejected,
            revoked: load(&self.revoked),
            honest,
            attackers,
            results_per_s: if active_s > 0.0 {
                results as f64 / active_s
            } else {
                0.0
            },
            first_assignment: self.first_latency.summary(),
            turnaround: self.turnaround.summary(),
            compute_s: compute_us as f64 / 1e6,
            wasted_compute_s: load(&self.wasted_compute_us) as f64 / 1e6,
            efficiency,
            tail,
        }
    }
}

/// Spread `[from, to)` µs over the timeline's buckets.
fn add_interval(timeline: &[AtomicU64], from: u64, to: u64) {
    let mut at = from;
    while at < to {
        let Ok(bucket) = usize::try_from(at / TIMELINE_BUCKET_US) else {
            return;
        };
        let Some(slot) = timeline.get(bucket) else {
            return;
        };
        let bucket_end = (at / TIMELINE_BUCKET_US + 1) * TIMELINE_BUCKET_US;
        let end = bucket_end.min(to);
        slot.fetch_add(end - at, Ordering::Relaxed);
        at = end;
    }
}

/// Slot use at the tail of the work: from the first moment a worker that had work lost a busy
/// slot for good, to the last result.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TailReport {
    /// When the tail began, seconds after the first assignment.
    pub start_s: f64,
    /// How long it lasted.
    pub length_s: f64,
    /// Busy slot time over available slot time within it.
    pub efficiency: f64,
}

/// What the workers of one side (honest, or attacking) did over a run.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct SideReport {
    /// Sessions welcomed by the master (reconnects count again).
    pub connections: u64,
    /// Distinct worker ids welcomed (more than the workers when identities rotate).
    pub identities: u64,
    /// Assignments received.
    pub assignments: u64,
    /// Results sent (lies included).
    pub results: u64,
    /// Leases handed back with `release`.
    pub released: u64,
    /// `rejected` answers received.
    pub rejected: u64,
}

impl fmt::Display for SideReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections ({} identities), {} assignments, {} results, {} released, {} rejected",
            self.connections,
            self.identities,
            self.assignments,
            self.results,
            self.released,
            self.rejected
        )
    }
}

/// The summary of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Simulated workers.
    pub workers: u32,
    /// Slots each.
    pub slots: u32,
    /// Of which lying or attacking.
    pub saboteurs: u32,
    /// What the saboteurs did besides lying (`--attack`), if anything.
    pub attack: Option<&'static str>,
    /// The run's seed.
    pub seed: u64,
    /// Simulated compute time per chunk.
    pub compute_ms: f64,
    /// Whole run, seconds.
    pub elapsed_s: f64,
    /// First assignment to last result, seconds.
    pub active_s: f64,
    /// Sessions welcomed (reconnects count again).
    pub sessions: u64,
    /// Most sessions open at once.
    pub peak_connected: u64,
    /// Connection attempts that failed before a welcome.
    pub connect_failures: u64,
    /// Welcomed sessions lost before the run ended.
    pub sessions_lost: u64,
    /// `error` messages received from the master.
    pub master_errors: u64,
    /// Assignments received.
    pub assignments: u64,
    /// Results sent.
    pub results: u64,
    /// Results that were lies.
    pub lies: u64,
    /// Results the master rejected.
    pub rejected: u64,
    /// Leases revoked by the master.
    pub revoked: u64,
    /// The honest workers' part.
    pub honest: SideReport,
    /// The saboteurs' part.
    pub attackers: SideReport,
    /// Results per second over the active period.
    pub results_per_s: f64,
    /// Hello to first assignment.
    pub first_assignment: LatencySummary,
    /// Result to the next assignment on the same connection.
    pub turnaround: LatencySummary,
    /// Compute time summed over all chunks, seconds.
    pub compute_s: f64,
    /// Compute time spent on revoked chunks, seconds.
    pub wasted_compute_s: f64,
    /// Compute time over workers × slots × active time (with a simulated compute time only).
    pub efficiency: Option<f64>,
    /// Slot use at the tail (with a simulated compute time only).
    pub tail: Option<TailReport>,
}

impl Report {
    /// Connection problems of every kind.
    pub fn connection_errors(&self) -> u64 {
        self.connect_failures + self.sessions_lost + self.master_errors
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let latency = |l: &LatencySummary| {
            format!(
                "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
            )
        };
        let attack = self
            .attack
            .map(|attack| format!(" (attack: {attack})"))
            .unwrap_or_default();
        writeln!(
            f,
            "grid-loadgen: {} workers x {} slots, {} saboteurs{attack}, compute {} ms, seed {}",
            self.workers, self.slots, self.saboteurs, self.compute_ms, self.seed
        )?;
        writeln!(
            f,
            "  elapsed            {:.2} s (active: first assignment to last result {:.2} s)",
            self.elapsed_s, self.active_s
        )?;
        writeln!(
            f,
            "  sessions           {} welcomed, {} at peak",
            self.sessions, self.peak_connected
        )?;
        writeln!(
            f,
            "  connection errors  {} ({} failed connects, {} lost sessions, {} master errors)",
            self.connection_errors(),
            self.connect_failures,
            self.sessions_lost,
            self.master_errors
        )?;
        writeln!(
            f,
            "  assignments        {} ({} revoked)",
            self.assignments, self.revoked
        )?;
        writeln!(
            f,
            "  results sent       {} ({} lies, {} rejected)",
            self.results, self.lies, self.rejected
        )?;
        writeln!(f, "  results/s          {:.0}", self.results_per_s)?;
        writeln!(f, "  honest workers     {}", self.honest)?;
        writeln!(f, "  attackers          {}", self.attackers)?;
        writeln!(
            f,
            "  first assignment   {}",
            latency(&self.first_assignment)
        )?;
        writeln!(f, "  result->next       {}", latency(&self.turnaround))?;
        if let Some(efficiency) = self.efficiency {
            writeln!(
                f,
                "  compute            {:.1} s busy ({:.1} s wasted on revoked chunks), efficiency {:.2} %",
                self.compute_s,
                self.wasted_compute_s,
                efficiency * 100.0
            )?;
        }
        if let Some(tail) = self.tail {
            writeln!(
                f,
                "  tail               from {:.2} s for {:.2} s: efficiency {:.2} %",
                tail.start_s,
                tail.length_s,
                tail.efficiency * 100.0
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut previous = 0;
        for micros in (0..5000).chain([1 << 20, (1 << 20) + 12_345, 1 << 40]) {
            let bucket = bucket_of(micros);
            assert!(bucket >= previous || micros >= 1 << 20);
            previous = bucket;
            let high = bucket_high(bucket);
            assert!(high >= micros, "{micros} above its bucket's high {high}");
            assert!(
                (high - micros) as f64 <= micros as f64 / 32.0 + 1.0,
                "{micros}: bucket too wide ({high})"
            );
        }
    }

    #[test]
    fn percentiles() {
        let h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((49.0..=52.0).contains(&s.p50_ms), "{s:?}");
        assert!((98.0..=100.0).contains(&s.p99_ms), "{s:?}");
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(Histogram::default().summary().count, 0);
    }

    #[test]
    fn timeline_spreads_intervals() {
        let stats = Stats::new(true);
        let start = stats.start;
        stats.on_computed(
            false,
            start + Duration::from_millis(5),
            start + Duration::from_millis(25),
            false,
            false,
        );
        assert_eq!(stats.busy_between(0, 30_000), Some((20_000, 30_000)));
        assert_eq!(stats.busy_between(10_000, 20_000), Some((10_000, 10_000)));
        assert_eq!(stats.compute_us.load(Ordering::Relaxed), 20_000);
    }
}
