//! `primes`: counts the primes in a half-open range `[start, end)`.
//!
//! **Input:** `{"start": u64, "end": u64}`.
//!
//! **Output:** `{"count": u64}`, the number of primes `p` with
//! `start <= p < end`.
//!
//! **Limits:** `start <= end`, `end <= 10^14`, `end - start <= 10^11`.
//!
//! ```json
//! input:  {"start": 0, "end": 100}
//! output: {"count": 25}
//! ```
//!
//! Splitting a range into chunks and adding the counts gives the count of
//! the whole range, since the ranges are half-open.
//!
//! Cost: about `end - start` bits of sieving plus a base-prime sieve of
//! `sqrt(end) / 2` bytes. In release builds on one core, `[0, 10^9)` takes
//! about 0.3–0.45 s and `[10^12, 10^12 + 10^9)` about 0.8–1.2 s; wasm in a
//! JIT is roughly 1.5–2× slower.
//!
//! # Algorithm
//!
//! A segmented sieve of Eratosthenes over odd numbers only, one bit per odd
//! number, in segments of 32 KiB (262 144 odd numbers, 524 288 integers) so
//! a segment stays in the L1/L2 cache:
//!
//! 1. The base primes up to `isqrt(end - 1)` (integer square root, no
//!    floating point) come from a small odd-only sieve.
//! 2. Presieve: each segment starts as a copy of a precomputed pattern with
//!    the odd multiples of 3, 5, 7, 11 and 13 crossed off (period
//!    `3·5·7·11·13 = 15015` 64-bit words), ORed with one rotating 64-bit
//!    mask per prime from 17 to 61 (one operation per word and prime).
//! 3. Each base prime `p >= 67` crosses off its odd multiples from
//!    `max(p², first multiple in range)`. Primes smaller than a segment use
//!    a tight stride loop and remember where they stopped; larger ones (at
//!    most one hit per segment) wait in a ring of buckets, one per upcoming
//!    segment, and are only touched in segments they hit (bucket sieve).
//! 4. Bits outside `[start, end)` are masked and the clear bits counted
//!    with `count_ones` on 64-bit words (a native instruction on x86-64,
//!    aarch64 and wasm). 2 and the presieve primes themselves are counted
//!    separately.
//!
//! Only integer arithmetic is used, so the result is the same everywhere.

use crate::KernelError;
use crate::error::{parse, to_json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::OnceLock;

/// Kernel name.
pub const NAME: &str = "primes";
/// Largest allowed `end` (10^14).
pub const MAX_END: u64 = 100_000_000_000_000;
/// Largest allowed `end - start` (10^11).
pub const MAX_SPAN: u64 = 100_000_000_000;

/// Count the primes `p` with `start <= p < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Inclusive lower bound.
    pub start: u64,
    /// Exclusive upper bound.
    pub end: u64,
}

/// Number of primes in `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Number of primes `p` with `start <= p < end`.
    pub count: u64,
}

/// Checks the limits: `start <= end`, `end <= 10^14`, `end - start <= 10^11`.
pub fn validate(input: &Input) -> Result<(), KernelError> {
    let Input { start, end } = *input;
    if start > end {
        return Err(KernelError::invalid(
            NAME,
            format_args!("start ({start}) must be <= end ({end})"),
        ));
    }
    if end > MAX_END {
        return Err(KernelError::invalid(
            NAME,
            format_args!("end ({end}) must be <= {MAX_END} (10^14)"),
        ));
    }
    let span = end - start;
    if span > MAX_SPAN {
        return Err(KernelError::invalid(
            NAME,
            format_args!("end - start ({span}) must be <= {MAX_SPAN} (10^11)"),
        ));
    }
    Ok(())
}

/// Counts the primes in `[start, end)`.
///
/// Expects an input that passed [`validate`]; an empty or reversed range
/// counts 0. Larger inputs still give the right answer but cost time and
/// memory proportional to `end - start` and `sqrt(end)`.
pub fn compute(input: &Input) -> Output {
    Output {
        count: count_primes(input.start, input.end),
    }
}

/// Parses and validates a JSON input without computing anything.
pub fn validate_json(input: &Value) -> Result<(), KernelError> {
    validate(&parse::<Input>(NAME, input)?)
}

/// Parses, validates and runs the kernel on a JSON input.
pub fn run(input: &Value) -> Result<Value, KernelError> {
    let input: Input = parse(NAME, input)?;
    validate(&input)?;
    Ok(to_json(&compute(&input)))
}

/// Bits (odd numbers) per segment: 32 KiB.
const SEG_WORDS: usize = 4096;
const SEG_BITS: usize = SEG_WORDS * 64;

/// Primes crossed off by the pattern copied into each segment.
const PATTERN_PRIMES: [u64; 5] = [3, 5, 7, 11, 13];
/// Pattern period in 64-bit words: 3·5·7·11·13. Since `64 * PATTERN_WORDS`
/// is a multiple of each pattern prime, word `w` of the sieve (odd numbers
/// `2i + 1` for `i` in `64w .. 64w + 64`) equals pattern word
/// `w % PATTERN_WORDS`.
const PATTERN_WORDS: usize = 3 * 5 * 7 * 11 * 13;
/// Primes below 64 not in the pattern: crossed off one word at a time with
/// a rotating bit mask per prime.
const WORD_PRIMES: [u64; 12] = [17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61];
/// The smallest prime crossed off with the per-prime stride loop.
const FIRST_BASE_PRIME: u64 = 67;

/// The presieve pattern: bit `i` set when `2i + 1` is an odd multiple of a
/// pattern prime (including the prime itself). Built once, 120 KiB.
fn pattern() -> &'static [u64] {
    static PATTERN: OnceLock<Vec<u64>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut pat = vec![0u64; PATTERN_WORDS];
        let bits = PATTERN_WORDS * 64;
        for q in PATTERN_PRIMES {
            let q = q as usize;
            // 2i + 1 = q·m with m odd  <=>  i ≡ (q - 1) / 2 (mod q).
            let mut i = (q - 1) / 2;
            while i < bits {
                pat[i >> 6] |= 1u64 << (i & 63);
                i += q;
            }
        }
        pat
    })
}

/// For each of the [`WORD_PRIMES`] `p`, the bits of sieve word `word` that
/// are odd multiples of `p` (including `p` itself).
///
/// The multiples of `p` are periodic with period `p` bits, so with
/// `s = 64 % p` the mask of the next word is `(m >> s) | (m << (p - s))`
/// (valid for `p < 64`): see [`next_word_mask`].
fn word_masks(word: u64) -> [u64; WORD_PRIMES.len()] {
    let mut masks = [0u64; WORD_PRIMES.len()];
    for (m, &p) in masks.iter_mut().zip(&WORD_PRIMES) {
        let first_bit = word * 64;
        let mut k = ((p - 1) / 2 + p - first_bit % p) % p;
        while k < 64 {
            *m |= 1u64 << k;
            k += p;
        }
    }
    masks
}

/// The mask of word `w + 1` from the mask `m` of word `w`, for prime `p < 64`.
#[inline(always)]
fn next_word_mask(m: u64, p: u64) -> u64 {
    let s = (64 % p) as u32;
    (m >> s) | (m << (p as u32 - s))
}

/// Odd primes `p` with `FIRST_BASE_PRIME <= p <= limit` (those not handled
/// by the presieve), from a simple odd-only sieve. `limit` is at most
/// `isqrt(u64::MAX)`, so the primes fit in `u32`.
fn base_primes(limit: u64) -> Vec<u32> {
    if limit < FIRST_BASE_PRIME {
        return Vec::new();
    }
    // composite[i] describes 2i + 1, for 2i + 1 <= limit.
    let n = ((limit - 1) / 2 + 1) as usize;
    let mut composite = vec![false; n];
    let mut i = 1;
    loop {
        let p = 2 * i + 1;
        // In u64: p² may not fit a 32-bit usize (wasm) for huge limits.
        let sq = (p as u64 * p as u64 - 1) / 2;
        if sq >= n as u64 {
            break;
        }
        if !composite[i] {
            for c in composite[sq as usize..].iter_mut().step_by(p) {
                *c = true;
            }
        }
        i += 1;
    }
    composite
        .iter()
        .enumerate()
        .skip((FIRST_BASE_PRIME / 2) as usize)
        .filter(|&(_, &c)| !c)
        .map(|(i, _)| (2 * i + 1) as u32)
        .collect()
}

/// Crosses off bits `j, j + p, j + 2p, ...` of `seg` and returns the first
/// index past the end of `seg`. Bits past the segment's length in its last
/// word are masked off before counting, so they may be set.
#[inline(always)]
fn cross_off(seg: &mut [u64], mut j: usize, p: usize) -> usize {
    while let Some(w) = seg.get_mut(j >> 6) {
        *w |= 1u64 << (j & 63);
        j += p;
    }
    j
}

/// A large prime waiting in a bucket: the prime and the bit of its next
/// multiple within the bucket's segment.
#[derive(Debug, Clone, Copy)]
struct Hit {
    prime: u32,
    bit: u32,
}

/// Number of primes `p` with `start <= p < end`.
pub fn count_primes(start: u64, end: u64) -> u64 {
    if start >= end {
        return 0;
    }
    let in_range = |p: u64| start <= p && p < end;
    // 2 is not in the odd-only sieve, and the presieve crosses off the
    // primes below 64 themselves: count them here.
    let mut count = u64::from(in_range(2));
    count += PATTERN_PRIMES.iter().filter(|&&q| in_range(q)).count() as u64;
    count += WORD_PRIMES.iter().filter(|&&q| in_range(q)).count() as u64;

    // Odd number 2i + 1 has index i. The odd numbers in [start, end) are
    // the indices [start / 2, end / 2).
    let i_start = start / 2;
    let i_end = end / 2;
    if i_start >= i_end {
        return count;
    }

    let primes = base_primes((end - 1).isqrt());
    // Index of p², where crossing off starts (smaller multiples of p have a
    // smaller prime factor).
    let square = |p: u32| (u64::from(p) * u64::from(p) - 1) / 2;
    // Index of the first odd multiple of p (or p²) at or after i_start:
    // 2i + 1 = p·m with m odd  <=>  i ≡ (p - 1) / 2 (mod p).
    let first = |p: u32| {
        let p = u64::from(p);
        let m = i_start + ((p - 1) / 2 + p - i_start % p) % p;
        m.max((p * p - 1) / 2)
    };

    // Small primes (below the segment size, several hits per segment):
    // a stride loop each, resuming at next[k] (a global index).
    let n_small = primes.partition_point(|&p| (p as usize) < SEG_BITS);
    let (small, large) = primes.split_at(n_small);
    let mut next: Vec<u64> = small.iter().map(|&p| first(p)).collect();
    // small[..active] have p² below the current segment's end; the others
    // have nothing to cross off yet.
    let mut active = 0;

    // Large primes (at most one hit per segment): bucket sieve. Each one
    // waits in the bucket of the segment of its next multiple; the buckets
    // form a ring long enough to hold a jump of any prime.
    let n_buckets = large.last().map_or(1, |&p| p as usize / SEG_BITS + 2);
    let mut buckets: Vec<Vec<Hit>> = vec![Vec::new(); n_buckets];
    let mut bucket_now = 0; // bucket of the current segment
    let mut placed = 0; // large[..placed] are in buckets (or done)

    let pattern = pattern();
    let mut seg = vec![0u64; SEG_WORDS];

    // Segments are aligned to multiples of SEG_BITS, which keeps them
    // aligned to the pattern's words.
    let mut seg_lo = i_start - i_start % SEG_BITS as u64;
    while seg_lo < i_end {
        let len = (i_end - seg_lo).min(SEG_BITS as u64) as usize;
        let seg_hi = seg_lo + len as u64;
        let words = len.div_ceil(64);
        let seg = &mut seg[..words];

        // 1. Presieve: copy the pattern (wrapping around) and OR in the
        //    word masks of the primes 17..=61.
        let mut masks = word_masks(seg_lo / 64);
        let mut src = ((seg_lo / 64) % PATTERN_WORDS as u64) as usize;
        let mut filled = 0;
        while filled < words {
            let n = (words - filled).min(PATTERN_WORDS - src);
            for (dst, &pat) in seg[filled..filled + n]
                .iter_mut()
                .zip(&pattern[src..src + n])
            {
                let mut acc = pat;
                for (m, &p) in masks.iter_mut().zip(&WORD_PRIMES) {
                    acc |= *m;
                    *m = next_word_mask(*m, p);
                }
                *dst = acc;
            }
            filled += n;
            src = 0;
        }
        if seg_lo == 0 {
            seg[0] |= 1; // 1 is not prime
        }

        // 2. Small primes.
        while active < small.len() && square(small[active]) < seg_hi {
            active += 1;
        }
        for (&p, nx) in small[..active].iter().zip(&mut next[..active]) {
            let d = *nx - seg_lo;
            if d < len as u64 {
                *nx = seg_lo + cross_off(seg, d as usize, p as usize) as u64;
            }
        }

        // 3. Large primes: place those whose square enters this segment
        //    (or that start in it), then cross off this segment's bucket
        //    and move each prime to the bucket of its next multiple.
        let place = |buckets: &mut Vec<Vec<Hit>>, prime: u32, index: u64| {
            if index < i_end {
                let ahead = ((index - seg_lo) / SEG_BITS as u64) as usize;
                let bit = ((index - seg_lo) % SEG_BITS as u64) as u32;
                let mut b = bucket_now + ahead;
                if b >= n_buckets {
                    b -= n_buckets;
                }
                buckets[b].push(Hit { prime, bit });
            }
        };
        while placed < large.len() && square(large[placed]) < seg_hi {
            place(&mut buckets, large[placed], first(large[placed]));
            placed += 1;
        }
        let mut bucket = std::mem::take(&mut buckets[bucket_now]);
        for &Hit { prime, bit } in &bucket {
            let j = bit as usize;
            if let Some(w) = seg.get_mut(j >> 6) {
                *w |= 1u64 << (j & 63);
            }
            place(
                &mut buckets,
                prime,
                seg_lo + u64::from(bit) + u64::from(prime),
            );
        }
        bucket.clear();
        buckets[bucket_now] = bucket;
        bucket_now += 1;
        if bucket_now == n_buckets {
            bucket_now = 0;
        }

        // 4. Mask what lies outside [i_start, i_end), then count.
        if seg_lo < i_start {
            let head = (i_start - seg_lo) as usize;
            for w in &mut seg[..head / 64] {
                *w = u64::MAX;
            }
            if !head.is_multiple_of(64) {
                seg[head / 64] |= (1u64 << (head % 64)) - 1;
            }
        }
        if !len.is_multiple_of(64) {
            seg[words - 1] |= u64::MAX << (len % 64);
        }
        count += seg
            .iter()
            .map(|w| u64::from((!w).count_ones()))
            .sum::<u64>();

        seg_lo = seg_hi;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Reference: trial division.
    fn is_prime_trial(n: u64) -> bool {
        if n < 2 {
            return false;
        }
        let mut d = 2;
        while d * d <= n {
            if n.is_multiple_of(d) {
                return false;
            }
            d += 1;
        }
        true
    }

    fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
        (u128::from(a) * u128::from(b) % u128::from(m)) as u64
    }

    fn pow_mod(mut b: u64, mut e: u64, m: u64) -> u64 {
        let mut r = 1;
        b %= m;
        while e > 0 {
            if e & 1 == 1 {
                r = mul_mod(r, b, m);
            }
            b = mul_mod(b, b, m);
            e >>= 1;
        }
        r
    }

    /// Reference: Miller–Rabin with the first 12 prime bases, deterministic
    /// for all n < 3.3·10^24.
    fn is_prime_mr(n: u64) -> bool {
        const BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
        if n < 2 {
            return false;
        }
        for p in BASES {
            if n.is_multiple_of(p) {
                return n == p;
            }
        }
        let s = (n - 1).trailing_zeros();
        let d = (n - 1) >> s;
        'bases: for a in BASES {
            let mut x = pow_mod(a, d, n);
            if x == 1 || x == n - 1 {
                continue;
            }
            for _ in 1..s {
                x = mul_mod(x, x, n);
                if x == n - 1 {
                    continue 'bases;
                }
            }
            return false;
        }
        true
    }

    fn count_mr(start: u64, end: u64) -> u64 {
        (start..end).filter(|&n| is_prime_mr(n)).count() as u64
    }

    /// Deterministic xorshift64* generator for test ranges.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn err(v: &Value) -> String {
        match validate_json(v) {
            Err(KernelError::InvalidInput(msg)) => msg,
            other => panic!("expected InvalidInput for {v}, got {other:?}"),
        }
    }

    #[test]
    fn reference_agrees_with_itself() {
        for n in 0..3000 {
            assert_eq!(is_prime_trial(n), is_prime_mr(n), "{n}");
        }
        for n in 1_000_000_000_000..1_000_000_000_300 {
            assert_eq!(is_prime_trial(n), is_prime_mr(n), "{n}");
        }
    }

    #[test]
    fn known_prime_counts() {
        for (end, pi) in [
            (10, 4),
            (100, 25),
            (1_000, 168),
            (10_000, 1_229),
            (100_000, 9_592),
            (1_000_000, 78_498),
            (10_000_000, 664_579),
            (100_000_000, 5_761_455),
        ] {
            assert_eq!(count_primes(0, end), pi, "pi({end})");
        }
    }

    #[test]
    #[cfg_attr(debug_assertions, ignore = "slow in debug; run with --release")]
    fn pi_1e9_and_2_32() {
        assert_eq!(count_primes(0, 1_000_000_000), 50_847_534);
        assert_eq!(count_primes(0, 1 << 32), 203_280_221);
    }

    #[test]
    #[ignore = "takes seconds even in release: cargo test --release -- --ignored"]
    fn pi_1e10() {
        assert_eq!(count_primes(0, 10_000_000_000), 455_052_511);
    }

    #[test]
    fn every_small_range() {
        let mut prefix = vec![0u64];
        for n in 0..260 {
            let last = prefix[prefix.len() - 1];
            prefix.push(last + u64::from(is_prime_trial(n)));
        }
        for a in 0..260u64 {
            for b in a..260u64 {
                let expected = prefix[b as usize] - prefix[a as usize];
                assert_eq!(count_primes(a, b), expected, "[{a}, {b})");
            }
        }
    }

    #[test]
    fn single_numbers() {
        // Each prime below 150 alone, including the presieved ones.
        for n in 0..150 {
            assert_eq!(count_primes(n, n + 1), u64::from(is_prime_trial(n)), "{n}");
        }
        for (start, end, expected) in [
            (0, 0, 0),
            (0, 1, 0),
            (0, 2, 0),
            (0, 3, 1),
            (1, 2, 0),
            (2, 3, 1),
            (2, 2, 0),
            (3, 4, 1),
            (13, 17, 1),
            (13, 18, 2),
            (61, 67, 1),
            (61, 68, 2),
            (67, 68, 1),
            (MAX_END, MAX_END, 0),
            (5, 3, 0),
        ] {
            assert_eq!(count_primes(start, end), expected, "[{start}, {end})");
        }
    }

    #[test]
    fn segment_boundaries() {
        // Segment k covers the integers [k·2·SEG_BITS, (k + 1)·2·SEG_BITS).
        let span = 2 * SEG_BITS as u64;
        let mut rng = Rng(0x5eed);
        for k in [1u64, 2, 3, 7] {
            let b = k * span;
            let (lo, hi) = (b - 600, b + 600);
            let mut prefix = vec![0u64];
            for n in lo..hi {
                let last = prefix[prefix.len() - 1];
                prefix.push(last + u64::from(is_prime_mr(n)));
            }
            for _ in 0..150 {
                let a = rng.below(1200);
                let c = a + rng.below(1200 - a + 1);
                let expected = prefix[c as usize] - prefix[a as usize];
                assert_eq!(
                    count_primes(lo + a, lo + c),
                    expected,
                    "[{}, {})",
                    lo + a,
                    lo + c
                );
            }
            // Ranges spanning whole segments, checked by additivity.
            let whole = count_primes(b - span, b + span);
            assert_eq!(whole, count_primes(b - span, b) + count_primes(b, b + span));
            assert_eq!(
                whole,
                count_primes(b - span, b - 1)
                    + count_primes(b - 1, b + 1)
                    + count_primes(b + 1, b + span)
            );
        }
        assert_eq!(count_primes(0, span), 43_390); // pi(2^19), from sympy
    }

    #[test]
    fn random_ranges_near_1e12() {
        let mut rng = Rng(12);
        for _ in 0..25 {
            let start = 1_000_000_000_000 + rng.below(10_000_000_000);
            let end = start + rng.below(3000);
            assert_eq!(
                count_primes(start, end),
                count_mr(start, end),
                "[{start}, {end})"
            );
        }
    }

    #[test]
    fn random_ranges_near_the_limit() {
        let mut rng = Rng(14);
        for _ in 0..3 {
            let end = MAX_END - rng.below(1_000_000_000);
            let start = end - rng.below(2000);
            assert_eq!(
                count_primes(start, end),
                count_mr(start, end),
                "[{start}, {end})"
            );
        }
        let start = MAX_END - 1500;
        assert_eq!(count_primes(start, MAX_END), count_mr(start, MAX_END));
    }

    #[test]
    fn ranges_split_anywhere_add_up() {
        let mut rng = Rng(99);
        for base in [0u64, 1_000_000, 1_000_000_000_000, 99_999_000_000_000] {
            let end = base + 3_000_000;
            let whole = count_primes(base, end);
            for _ in 0..4 {
                let a = base + rng.below(3_000_000);
                let b = base + rng.below(3_000_000);
                let (a, b) = (a.min(b), a.max(b));
                let parts = count_primes(base, a) + count_primes(a, b) + count_primes(b, end);
                assert_eq!(parts, whole, "split of [{base}, {end}) at {a}, {b}");
            }
        }
        // A larger range near 10^12: large primes go through the buckets
        // over many segments.
        let base = 1_000_000_000_000;
        let whole = count_primes(base, base + 20_000_000);
        let halves = count_primes(base, base + 7_777_777)
            + count_primes(base + 7_777_777, base + 20_000_000);
        assert_eq!(whole, halves);
    }

    #[test]
    fn known_count_near_1e12() {
        // pi(10^12 + 10^8) - pi(10^12), computed independently with sympy.
        assert_eq!(
            count_primes(1_000_000_000_000, 1_000_100_000_000),
            3_618_282
        );
    }

    #[test]
    fn run_output_format() {
        assert_eq!(
            run(&json!({"start": 0, "end": 100})),
            Ok(json!({"count": 25}))
        );
        assert_eq!(
            run(&json!({"start": 100, "end": 100})),
            Ok(json!({"count": 0}))
        );
        assert_eq!(compute(&Input { start: 10, end: 20 }), Output { count: 4 });
    }

    #[test]
    fn validation_limits() {
        assert_eq!(
            err(&json!({"start": 10, "end": 5})),
            "primes: start (10) must be <= end (5)"
        );
        assert_eq!(
            err(&json!({"start": 0, "end": MAX_END + 1})),
            "primes: end (100000000000001) must be <= 100000000000000 (10^14)"
        );
        assert_eq!(
            err(&json!({"start": 5, "end": MAX_SPAN + 6})),
            "primes: end - start (100000000001) must be <= 100000000000 (10^11)"
        );
        // At the limits: valid, and validation does not compute (this
        // range would take minutes).
        assert_eq!(
            validate_json(&json!({"start": MAX_END - MAX_SPAN, "end": MAX_END})),
            Ok(())
        );
        assert_eq!(validate_json(&json!({"start": 0, "end": 0})), Ok(()));
    }

    #[test]
    fn malformed_inputs() {
        for v in [
            json!({"start": 1}),
            json!({"end": 1}),
            json!({"start": 0, "end": 1, "step": 1}),
            json!({"start": -1, "end": 1}),
            json!({"start": 0, "end": 1.5}),
            json!({"start": "0", "end": 1}),
            json!([0, 1]),
            json!(null),
        ] {
            let msg = err(&v);
            assert!(msg.starts_with("primes: "), "{msg}");
            assert_eq!(run(&v), Err(KernelError::InvalidInput(msg)));
        }
        assert!(err(&json!({"start": 0, "end": 1, "step": 1})).contains("unknown field `step`"));
        assert!(err(&json!({"start": 1})).contains("missing field `end`"));
    }

    #[test]
    fn word_masks_match_definition() {
        for word in [0u64, 1, 2, 16, 17, 1000, 123_456_789] {
            let masks = word_masks(word);
            for (k, &p) in WORD_PRIMES.iter().enumerate() {
                let mut m = masks[k];
                for w in word..word + 200 {
                    for bit in 0..64 {
                        let n = 2 * (w * 64 + bit) + 1;
                        let set = m >> bit & 1 == 1;
                        assert_eq!(set, n % p == 0, "p {p} word {w} bit {bit}");
                    }
                    m = next_word_mask(m, p);
                }
            }
        }
    }
}
