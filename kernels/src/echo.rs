//! `echo`: returns its input unchanged.
//!
//! Useful to test the plumbing between the master and the workers.
//!
//! **Input:** any JSON value.
//!
//! **Output:** the same JSON value.
//!
//! **Limits:** none (the transport's message size limit applies).
//!
//! ```json
//! input:  {"hello": ["world", 1, 2.5, null]}
//! output: {"hello": ["world", 1, 2.5, null]}
//! ```

use crate::KernelError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Kernel name.
pub const NAME: &str = "echo";

/// Any JSON value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Input(pub Value);

/// The input value, unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Output(pub Value);

/// Every input is valid.
pub fn validate(_input: &Input) -> Result<(), KernelError> {
    Ok(())
}

/// Returns the input unchanged.
pub fn compute(input: &Input) -> Output {
    Output(input.0.clone())
}

/// Every JSON value is a valid `echo` input.
pub fn validate_json(_input: &Value) -> Result<(), KernelError> {
    Ok(())
}

/// Runs `echo` on a JSON input.
pub fn run(input: &Value) -> Result<Value, KernelError> {
    Ok(input.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn echoes_anything() {
        for v in [
            json!(null),
            json!(true),
            json!(-3),
            json!(u64::MAX),
            json!(2.5),
            json!("text"),
            json!([]),
            json!({"a": {"b": [1, 2, {"c": null}]}}),
        ] {
            assert_eq!(validate_json(&v), Ok(()));
            assert_eq!(run(&v), Ok(v.clone()));
            let input: Input = serde_json::from_value(v.clone()).expect("any value parses");
            assert_eq!(validate(&input), Ok(()));
            assert_eq!(crate::error::to_json(&compute(&input)), v);
        }
    }
}
