//! The `--range A..B --chunks N` helper: [`SpanRange`] parses `A..B` and splits `[A, B)` into
//! `N` `{"start", "end"}` inputs (the shape the `primes` and `sha256` kernels take).

use std::fmt;
use std::str::FromStr;

/// A half-open integer interval `[start, end)` with `start < end`, written `A..B`
/// (underscores allowed as digit separators: `0..1_000_000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanRange {
    /// First value, included.
    pub start: u64,
    /// End, excluded.
    pub end: u64,
}

/// Why a `--range` or `--chunks` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not `A..B` with two unsigned integers.
    #[error("expected A..B with unsigned integers A < B (e.g. 0..1000000), got `{0}`")]
    Syntax(String),
    /// `B <= A`: nothing to split.
    #[error("the range {0} is empty: A must be less than B")]
    Empty(SpanRange),
    /// `--chunks 0`.
    #[error("--chunks must be at least 1")]
    NoChunks,
    /// More chunks than integers in the range: some chunks would be empty.
    #[error("cannot split {range} ({len} values) into {chunks} chunks: at most {len}")]
    TooManyChunks {
        /// The range.
        range: SpanRange,
        /// Values in it.
        len: u64,
        /// Chunks asked for.
        chunks: u64,
    },
}

impl fmt::Display for SpanRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl FromStr for SpanRange {
    type Err = RangeError;

    fn from_str(text: &str) -> Result<Self, RangeError> {
        let syntax = || RangeError::Syntax(text.to_owned());
        let (start, end) = text.trim().split_once("..").ok_or_else(syntax)?;
        let number = |part: &str| -> Result<u64, RangeError> {
            let digits: String = part.trim().chars().filter(|c| *c != '_').collect();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            digits.parse().map_err(|_| syntax())
        };
        let range = SpanRange {
            start: number(start)?,
            end: number(end)?,
        };
        if range.start >= range.end {
            return Err(RangeError::Empty(range));
        }
        Ok(range)
    }
}

impl SpanRange {
    /// Values in the range.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no value (never true for a parsed range).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Split into `chunks` consecutive `[start, end)` pieces of `len / chunks` values each; the
    /// last piece also takes the remainder. Refuses 0 chunks and more chunks than values.
    pub fn split(self, chunks: u64) -> Result<impl Iterator<Item = (u64, u64)>, RangeError> {
        if chunks == 0 {
            return Err(RangeError::NoChunks);
        }
        if self.is_empty() {
            return Err(RangeError::Empty(self));
        }
        let len = self.len();
        if chunks > len {
            return Err(RangeError::TooManyChunks {
                range: self,
                len,
                chunks,
            });
        }
        let step = len / chunks;
        Ok((0..chunks).map(move |i| {
            let start = self.start + i * step;
            let end = if i + 1 == chunks {
                self.end
            } else {
                start + step
            };
            (start, end)
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn split(text: &str, chunks: u64) -> Result<Vec<(u64, u64)>, RangeError> {
        Ok(text.parse::<SpanRange>()?.split(chunks)?.collect())
    }

    #[test]
    fn parses_a_dot_dot_b() {
        assert_eq!(
            "0..1000000".parse::<SpanRange>().unwrap(),
            SpanRange {
                start: 0,
                end: 1_000_000
            }
        );
        assert_eq!(
            " 5 .. 1_000 ".parse::<SpanRange>().unwrap(),
            SpanRange {
                start: 5,
                end: 1000
            }
        );
        let max = format!("0..{}", u64::MAX);
        assert_eq!(max.parse::<SpanRange>().unwrap().end, u64::MAX);
    }

    #[test]
    fn refuses_what_is_not_a_range() {
        for text in [
            "",
            "10",
            "0...",
            "..10",
            "0..",
            "a..b",
            "-1..5",
            "0..1e9",
            "1..2..3",
            "0..=5",
            "0..18446744073709551616",
        ] {
            assert!(
                matches!(text.parse::<SpanRange>(), Err(RangeError::Syntax(_))),
                "{text:?}"
            );
        }
        assert!(matches!(
            "5..5".parse::<SpanRange>(),
            Err(RangeError::Empty(_))
        ));
        assert!(matches!(
            "9..3".parse::<SpanRange>(),
            Err(RangeError::Empty(_))
        ));
    }

    #[test]
    fn splits_evenly_and_the_last_chunk_takes_the_remainder() {
        assert_eq!(split("0..10", 3).unwrap(), [(0, 3), (3, 6), (6, 10)]);
        assert_eq!(split("0..9", 3).unwrap(), [(0, 3), (3, 6), (6, 9)]);
        assert_eq!(split("7..8", 1).unwrap(), [(7, 8)]);
        assert_eq!(split("10..15", 5).unwrap().len(), 5);
        assert_eq!(split("0..100", 1).unwrap(), [(0, 100)]);
    }

    #[test]
    fn chunks_cover_the_range_exactly() {
        let pieces = split("0..1000000000", 1000).unwrap();
        assert_eq!(pieces.len(), 1000);
        assert_eq!(pieces[0], (0, 1_000_000));
        assert_eq!(pieces[999], (999_000_000, 1_000_000_000));
        for pair in pieces.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
        }
        let near_max = format!("{}..{}", u64::MAX - 10, u64::MAX);
        let pieces = split(&near_max, 3).unwrap();
        assert_eq!(pieces.last().unwrap().1, u64::MAX);
        assert_eq!(pieces[0].0, u64::MAX - 10);
    }

    #[test]
    fn refuses_zero_chunks_and_more_chunks_than_values() {
        assert_eq!(split("0..10", 0), Err(RangeError::NoChunks));
        assert!(matches!(
            split("0..10", 11),
            Err(RangeError::TooManyChunks {
                len: 10,
                chunks: 11,
                ..
            })
        ));
        assert_eq!(split("0..10", 10).unwrap().len(), 10);
    }
}
