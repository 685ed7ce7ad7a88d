//! An example task module: the longest Collatz chain starting in a range.
//!
//! Input `{"start": a, "end": b}`; output `{"longest": {"n": N, "steps": S}}`, where `N` in
//! `[a, b)` takes the most steps `S` of `n → n / 2` (even) or `n → 3n + 1` (odd) to reach 1,
//! the smallest such `N` on a tie. Integer maths only, so every worker computes the same bytes.
//!
//! An input the task cannot compute (`end <= start`, `start` of 0, a range of more than
//! [`MAX_SPAN`] numbers, a chain leaving `u64`) is the output `{"error": "..."}`, made by
//! `grid_sdk::task!(fallible ...)`; so is an input of the wrong shape (`invalid input: ...`).
//!
//! Build: `cargo xtask modules` (a release build for `wasm32-unknown-unknown` without debug
//! info, checked against the ABI, written to `<target>/task-modules/collatz.wasm`).

use serde::{Deserialize, Serialize};

/// Most numbers one chunk may cover: about a second of work as WebAssembly (V8 and wasmtime
/// alike), far inside the default per-chunk timeout, so slow volunteers do not time out where
/// fast ones succeed.
pub const MAX_SPAN: u64 = 1_000_000;

/// A chunk's input: the starts `start..end`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// First start, at least 1.
    pub start: u64,
    /// One past the last start.
    pub end: u64,
}

/// A chunk's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// The winner of the range.
    pub longest: Chain,
}

/// A chain: its start and its length in steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Chain {
    /// The starting number.
    pub n: u64,
    /// Steps to reach 1.
    pub steps: u32,
}

/// Largest `n` whose `3n + 1` still fits in a `u64`.
const LARGEST_TRIPLABLE: u64 = (u64::MAX - 1) / 3;

/// Steps from `n` (at least 1) to 1, or `None` if the chain leaves `u64` on the way.
pub fn steps(mut n: u64) -> Option<u32> {
    let mut steps = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else if n <= LARGEST_TRIPLABLE {
            // Compared up front rather than with `checked_mul`: on wasm32 the overflow check of
            // a 64-bit multiply becomes a call to a software 128-bit multiply in the hot loop
            // (2.2x native in wasmtime; 1.1x this way, see bench/modules.sh).
            3 * n + 1
        } else {
            return None;
        };
        steps += 1;
    }
    Some(steps)
}

/// The task: the longest chain starting in `range`.
pub fn longest_chain(range: Range) -> Result<Answer, String> {
    let Range { start, end } = range;
    if start == 0 {
        return Err("start must be at least 1".into());
    }
    if end <= start {
        return Err(format!("end ({end}) must be greater than start ({start})"));
    }
    if end - start > MAX_SPAN {
        return Err(format!(
            "the range holds {} numbers; a chunk may hold at most {MAX_SPAN}",
            end - start
        ));
    }
    let mut longest = Chain { n: start, steps: 0 };
    for n in start..end {
        let steps = steps(n).ok_or_else(|| format!("the chain from {n} exceeds 2^64"))?;
        // Strictly greater: on a tie the smallest start wins.
        if steps > longest.steps {
            longest = Chain { n, steps };
        }
    }
    Ok(Answer { longest })
}

grid_sdk::task!(fallible longest_chain);

#[cfg(test)]
mod tests {
    use super::*;

    fn longest(start: u64, end: u64) -> Result<(u64, u32), String> {
        longest_chain(Range { start, end }).map(|answer| (answer.longest.n, answer.longest.steps))
    }

    #[test]
    fn known_longest_chains() {
        assert_eq!(steps(1), Some(0));
        assert_eq!(steps(27), Some(111));
        assert_eq!(longest(1, 2), Ok((1, 0)));
        assert_eq!(longest(1, 10), Ok((9, 19)));
        assert_eq!(longest(1, 1_000), Ok((871, 178)));
        assert_eq!(longest(1, 100_000), Ok((77_031, 350)));
        // A tie goes to the smallest start: 12 and 13 both take 9 steps.
        assert_eq!(steps(12), Some(9));
        assert_eq!(steps(13), Some(9));
        assert_eq!(longest(12, 14), Ok((12, 9)));
    }

    #[test]
    fn inputs_it_cannot_compute_are_refused() {
        assert_eq!(
            longest(5, 5),
            Err("end (5) must be greater than start (5)".into())
        );
        assert_eq!(longest(0, 5), Err("start must be at least 1".into()));
        assert_eq!(
            longest(1, 2_000_002),
            Err("the range holds 2000001 numbers; a chunk may hold at most 1000000".into())
        );
        assert_eq!(
            longest(u64::MAX - 1, u64::MAX),
            Err(format!("the chain from {} exceeds 2^64", u64::MAX - 1))
        );
        // The bound is exact: 3n + 1 fits for it and not for the next number; odd numbers on
        // either side of it end in None, without an overflow panic.
        let next = |n: u64| n.checked_mul(3).and_then(|m| m.checked_add(1));
        assert!(next(LARGEST_TRIPLABLE).is_some());
        assert!(next(LARGEST_TRIPLABLE + 1).is_none());
        assert_eq!(steps(LARGEST_TRIPLABLE - 1), None);
        assert_eq!(steps(LARGEST_TRIPLABLE + 1), None);
    }

    #[test]
    fn the_module_answers_json() {
        let answer = |input: &str| {
            String::from_utf8(grid_sdk::answer_fallible(input.as_bytes(), longest_chain))
                .unwrap_or_else(|error| panic!("not UTF-8: {error}"))
        };
        assert_eq!(
            answer(r#"{"end":10,"start":1}"#),
            r#"{"longest":{"n":9,"steps":19}}"#
        );
        assert_eq!(
            answer(r#"{"end":1,"start":10}"#),
            r#"{"error":"end (1) must be greater than start (10)"}"#
        );
        assert_eq!(
            answer(r#"{"begin":1,"end":10}"#),
            r#"{"error":"invalid input: unknown field `begin`, expected `start` or `end` at line 1 column 8"}"#
        );
    }
}
