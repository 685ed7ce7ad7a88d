//! `sha256`: proof-of-work search for a nonce.
//!
//! **Input:** `{"prefix": string, "start": u64, "end": u64,
//! "difficulty": u32}`.
//!
//! For each nonce `n` in `[start, end)`, in increasing order, the message is
//! the UTF-8 bytes of `prefix` followed by the decimal ASCII digits of `n`
//! (no separator, no sign, no leading zeros; prefix `"grid"` and `n = 42`
//! give `"grid42"`). The kernel finds the smallest `n` whose SHA-256 digest
//! starts with at least `difficulty` zero bits (most significant bit of the
//! first byte first).
//!
//! **Output:** `{"nonce": u64, "hash": "<64 lowercase hex digits>"}` for the
//! smallest such nonce, or `{"nonce": null, "hash": null}` if no nonce in
//! the range qualifies.
//!
//! **Limits:** `start <= end`, `end - start <= 2^32`, `difficulty <= 256`,
//! `prefix` at most 1024 bytes (UTF-8).
//!
//! ```json
//! input:  {"prefix": "grid", "start": 0, "end": 10000, "difficulty": 12}
//! output: {"nonce": 3708,
//!          "hash": "000623223d656b6d3aab861a3d271234989fc3869fdafe0440857cdf6326d9cf"}
//! ```
//!
//! Difficulty 0 accepts the first nonce, `start` (if the range is not
//! empty). Splitting a range into chunks and taking the answer of the first
//! chunk (in range order) that found one gives the answer for the whole
//! range.
//!
//! The prefix is hashed once and the hasher state is cloned for each nonce
//! (midstate); the digits are written into a stack buffer.

use crate::KernelError;
use crate::error::{parse, to_json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Kernel name.
pub const NAME: &str = "sha256";
/// Largest allowed `difficulty` (all 256 bits zero).
pub const MAX_DIFFICULTY: u32 = 256;
/// Largest allowed prefix length in bytes.
pub const MAX_PREFIX_BYTES: usize = 1024;
/// Largest allowed `end - start` (2^32).
pub const MAX_SPAN: u64 = 1 << 32;

/// Search `[start, end)` for a nonce meeting `difficulty`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Message prefix; the nonce's decimal digits follow it.
    pub prefix: String,
    /// First nonce tried.
    pub start: u64,
    /// Exclusive upper bound of the nonces tried.
    pub end: u64,
    /// Required number of leading zero bits of the digest.
    pub difficulty: u32,
}

/// The smallest qualifying nonce and its digest, or both `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Smallest nonce in range whose digest meets the difficulty.
    pub nonce: Option<u64>,
    /// That nonce's SHA-256 digest, 64 lowercase hex digits.
    pub hash: Option<String>,
}

/// Checks the limits: `start <= end`, `end - start <= 2^32`,
/// `difficulty <= 256`, prefix at most 1024 bytes.
pub fn validate(input: &Input) -> Result<(), KernelError> {
    let Input {
        ref prefix,
        start,
        end,
        difficulty,
    } = *input;
    if start > end {
        return Err(KernelError::invalid(
            NAME,
            format_args!("start ({start}) must be <= end ({end})"),
        ));
    }
    let span = end - start;
    if span > MAX_SPAN {
        return Err(KernelError::invalid(
            NAME,
            format_args!("end - start ({span}) must be <= {MAX_SPAN} (2^32)"),
        ));
    }
    if difficulty > MAX_DIFFICULTY {
        return Err(KernelError::invalid(
            NAME,
            format_args!("difficulty ({difficulty}) must be <= {MAX_DIFFICULTY}"),
        ));
    }
    if prefix.len() > MAX_PREFIX_BYTES {
        return Err(KernelError::invalid(
            NAME,
            format_args!(
                "prefix is {} bytes, must be <= {MAX_PREFIX_BYTES}",
                prefix.len()
            ),
        ));
    }
    Ok(())
}

/// Writes the decimal digits of `n` at the end of `buf`, returning where
/// they start.
fn format_decimal(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return i;
        }
    }
}

/// Number of leading zero bits of a digest.
pub fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for &b in digest {
        if b != 0 {
            return bits + b.leading_zeros();
        }
        bits += 8;
    }
    bits
}

/// Lowercase hex of bytes.
fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// SHA-256 of `message` as 64 lowercase hex digits.
pub fn hex_digest(message: &[u8]) -> String {
    to_hex(&Sha256::digest(message))
}

/// Searches the range. Expects an input that passed [`validate`] (larger
/// inputs work but take proportionally longer).
pub fn compute(input: &Input) -> Output {
    let mut midstate = Sha256::new();
    midstate.update(input.prefix.as_bytes());
    let mut buf = [0u8; 20];
    for n in input.start..input.end {
        let at = format_decimal(n, &mut buf);
        let digest = midstate.clone().chain_update(&buf[at..]).finalize();
        if leading_zero_bits(&digest) >= input.difficulty {
            return Output {
                nonce: Some(n),
                hash: Some(to_hex(&digest)),
            };
        }
    }
    Output {
        nonce: None,
        hash: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(prefix: &str, start: u64, end: u64, difficulty: u32) -> Input {
        Input {
            prefix: prefix.to_owned(),
            start,
            end,
            difficulty,
        }
    }

    /// Independent reference: `format!` for the message, `Sha256::digest`,
    /// and leading zeros counted on a big-endian bit string.
    fn brute_force(prefix: &str, start: u64, end: u64, difficulty: u32) -> Output {
        for n in start..end {
            let digest = Sha256::digest(format!("{prefix}{n}").as_bytes());
            let bits: String = digest.iter().map(|b| format!("{b:08b}")).collect();
            let zeros = bits.chars().take_while(|&c| c == '0').count();
            if zeros >= difficulty as usize {
                let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                return Output {
                    nonce: Some(n),
                    hash: Some(hash),
                };
            }
        }
        Output {
            nonce: None,
            hash: None,
        }
    }

    fn err(v: &Value) -> String {
        match validate_json(v) {
            Err(KernelError::InvalidInput(msg)) => msg,
            other => panic!("expected InvalidInput for {v}, got {other:?}"),
        }
    }

    #[test]
    fn documented_example() {
        // Values computed independently with Python's hashlib.
        let v = json!({"prefix": "grid", "start": 0, "end": 10000, "difficulty": 12});
        assert_eq!(
            run(&v),
            Ok(json!({
                "nonce": 3708,
                "hash": "000623223d656b6d3aab861a3d271234989fc3869fdafe0440857cdf6326d9cf",
            }))
        );
        assert_eq!(
            compute(&input("grid", 0, 1000, 8)).nonce,
            Some(174),
            "python: first nonce with 8 zero bits"
        );
    }

    #[test]
    fn matches_brute_force() {
        for (prefix, start, end, difficulty) in [
            ("grid", 0, 2000, 8),
            ("grid", 175, 2000, 8),
            ("grid", 0, 5000, 10),
            ("", 0, 3000, 9),
            ("héllo wörld ✓", 990, 4000, 7),
            ("grid", 0, 300, 1),
            ("grid", 0, 300, 4),
            ("x", 5, 400, 200),
        ] {
            assert_eq!(
                compute(&input(prefix, start, end, difficulty)),
                brute_force(prefix, start, end, difficulty),
                "{prefix:?} [{start}, {end}) difficulty {difficulty}"
            );
        }
    }

    #[test]
    fn long_prefix_spans_blocks() {
        // 1024-byte prefix: the midstate holds 16 full blocks.
        let prefix = "ab".repeat(512);
        assert_eq!(
            compute(&input(&prefix, 0, 600, 6)),
            brute_force(&prefix, 0, 600, 6)
        );
        // Prefix lengths around the 64-byte block and 55-byte padding edges.
        for len in [0, 1, 45, 50, 54, 55, 56, 63, 64, 65, 119, 127, 128] {
            let prefix = "p".repeat(len);
            assert_eq!(
                compute(&input(&prefix, 95, 1100, 5)),
                brute_force(&prefix, 95, 1100, 5),
                "prefix length {len}"
            );
        }
    }

    #[test]
    fn difficulty_zero_returns_start() {
        for start in [0, 1, 42, 999, u64::MAX - 1] {
            let out = compute(&input("grid", start, start.saturating_add(1000), 0));
            assert_eq!(out.nonce, Some(start));
            assert_eq!(
                out.hash,
                Some(hex_digest(format!("grid{start}").as_bytes()))
            );
        }
    }

    #[test]
    fn empty_or_fruitless_range_is_null() {
        let null = json!({"nonce": null, "hash": null});
        for v in [
            json!({"prefix": "grid", "start": 7, "end": 7, "difficulty": 0}),
            json!({"prefix": "grid", "start": 0, "end": 0, "difficulty": 256}),
            json!({"prefix": "grid", "start": 0, "end": 100, "difficulty": 256}),
            json!({"prefix": "grid", "start": 0, "end": 174, "difficulty": 8}),
        ] {
            assert_eq!(run(&v), Ok(null.clone()), "{v}");
        }
    }

    #[test]
    fn nonce_digits() {
        let mut buf = [0u8; 20];
        for n in [0, 7, 9, 10, 42, 100, 12345, 10u64.pow(19), u64::MAX] {
            let at = format_decimal(n, &mut buf);
            assert_eq!(&buf[at..], n.to_string().as_bytes());
        }
        // Largest nonces: no overflow at the end of the u64 range.
        let out = compute(&input("", u64::MAX - 3, u64::MAX, 0));
        assert_eq!(out.nonce, Some(u64::MAX - 3));
        assert_eq!(out.hash, Some(hex_digest(b"18446744073709551612")));
    }

    #[test]
    fn leading_zeros() {
        assert_eq!(leading_zero_bits(&[0xff]), 0);
        assert_eq!(leading_zero_bits(&[0x80, 0]), 0);
        assert_eq!(leading_zero_bits(&[0x7f]), 1);
        assert_eq!(leading_zero_bits(&[0x01]), 7);
        assert_eq!(leading_zero_bits(&[0x00, 0x10]), 11);
        assert_eq!(leading_zero_bits(&[0, 0, 0, 1]), 31);
        assert_eq!(leading_zero_bits(&[0u8; 32]), 256);
        assert_eq!(
            hex_digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn validation_limits() {
        assert_eq!(
            err(&json!({"prefix": "g", "start": 10, "end": 5, "difficulty": 1})),
            "sha256: start (10) must be <= end (5)"
        );
        assert_eq!(
            err(&json!({"prefix": "g", "start": 1, "end": (1u64 << 32) + 2, "difficulty": 1})),
            "sha256: end - start (4294967297) must be <= 4294967296 (2^32)"
        );
        assert_eq!(
            err(&json!({"prefix": "g", "start": 0, "end": 1, "difficulty": 257})),
            "sha256: difficulty (257) must be <= 256"
        );
        assert_eq!(
            err(&json!({"prefix": "x".repeat(1025), "start": 0, "end": 1, "difficulty": 1})),
            "sha256: prefix is 1025 bytes, must be <= 1024"
        );
        // 342 three-byte characters: 1026 bytes although 342 chars.
        assert_eq!(
            err(&json!({"prefix": "✓".repeat(342), "start": 0, "end": 1, "difficulty": 1})),
            "sha256: prefix is 1026 bytes, must be <= 1024"
        );
        // At the limits: valid, and validation does not search.
        for v in [
            json!({"prefix": "x".repeat(1024), "start": 0, "end": 1u64 << 32, "difficulty": 256}),
            json!({"prefix": "", "start": u64::MAX - (1u64 << 32), "end": u64::MAX, "difficulty": 0}),
        ] {
            assert_eq!(validate_json(&v), Ok(()));
        }
    }

    #[test]
    fn malformed_inputs() {
        for v in [
            json!({"prefix": "g", "start": 0, "end": 1}),
            json!({"prefix": "g", "start": 0, "end": 1, "difficulty": 1, "extra": 0}),
            json!({"prefix": 5, "start": 0, "end": 1, "difficulty": 1}),
            json!({"prefix": "g", "start": -1, "end": 1, "difficulty": 1}),
            json!({"prefix": "g", "start": 0.5, "end": 1, "difficulty": 1}),
            json!({"prefix": "g", "start": 0, "end": 1, "difficulty": -1}),
            json!(null),
            json!([]),
        ] {
            let msg = err(&v);
            assert!(msg.starts_with("sha256: "), "{msg}");
            assert_eq!(run(&v), Err(KernelError::InvalidInput(msg)));
        }
        assert!(
            err(&json!({"prefix": "g", "start": 0, "end": 1, "difficulty": 1, "extra": 0}))
                .contains("unknown field `extra`")
        );
        assert!(
            err(&json!({"prefix": "g", "start": 0, "end": 1}))
                .contains("missing field `difficulty`")
        );
    }
}
