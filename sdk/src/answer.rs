//! From input bytes to output bytes: decode the input, run the task, encode what it returns.
//!
//! Nothing here touches linear memory or the ABI's integers (that is [`crate::buffers`] and
//! [`crate::abi`]), so it runs and is tested natively like any Rust code.

use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The output of `task` for `input` (the JSON text the worker wrote): `task`'s value as JSON,
/// or an [`error_output`] when `input` is not an `I` or the value cannot be written as JSON.
pub fn answer<I, O>(input: &[u8], task: impl FnOnce(I) -> O) -> Vec<u8>
where
    I: DeserializeOwned,
    O: Serialize,
{
    answer_fallible(input, |input| {
        Ok::<O, std::convert::Infallible>(task(input))
    })
}

/// Like [`answer()`] for a task that may refuse its input: `Err(e)` is the output
/// `{"error": "<e>"}`.
pub fn answer_fallible<I, O, E>(input: &[u8], task: impl FnOnce(I) -> Result<O, E>) -> Vec<u8>
where
    I: DeserializeOwned,
    O: Serialize,
    E: Display,
{
    let input = match serde_json::from_slice(input) {
        Ok(input) => input,
        Err(error) => return error_output(&format!("invalid input: {error}")),
    };
    match task(input) {
        Ok(output) => serde_json::to_vec(&output)
            .unwrap_or_else(|error| error_output(&format!("cannot encode the output: {error}"))),
        Err(error) => error_output(&error.to_string()),
    }
}

/// The output `{"error":"<message>"}`, as UTF-8 JSON text.
pub fn error_output(message: &str) -> Vec<u8> {
    // Built by hand rather than through `serde_json::to_vec`, which could only fail for
    // values that are not JSON; a string always is.
    let mut output = br#"{"error":"#.to_vec();
    output.extend_from_slice(serde_json::Value::from(message).to_string().as_bytes());
    output.push(b'}');
    output
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Span {
        start: u32,
        end: u32,
    }

    fn width(span: Span) -> u32 {
        span.end.saturating_sub(span.start)
    }

    fn checked_width(span: Span) -> Result<u32, String> {
        span.end
            .checked_sub(span.start)
            .ok_or_else(|| format!("end {} is before start {}", span.end, span.start))
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap_or_else(|error| panic!("output is not UTF-8: {error}"))
    }

    #[test]
    fn outputs_are_the_task_value_as_json() {
        let input = br#"{"end":10,"start":3}"#;
        assert_eq!(text(answer(input, width)), "7");
        assert_eq!(text(answer_fallible(input, checked_width)), "7");
        assert_eq!(
            text(answer(br#"["a","b"]"#, |items: Vec<String>| items.concat())),
            r#""ab""#
        );
    }

    #[test]
    fn a_refused_input_is_an_error_output() {
        assert_eq!(
            text(answer_fallible(br#"{"end":3,"start":10}"#, checked_width)),
            r#"{"error":"end 3 is before start 10"}"#
        );
    }

    #[test]
    fn an_input_of_the_wrong_shape_is_an_error_output() {
        assert_eq!(
            text(answer(br#"{"start":3}"#, width)),
            r#"{"error":"invalid input: missing field `end` at line 1 column 11"}"#
        );
        assert_eq!(
            text(answer_fallible(b"\xff", checked_width)),
            r#"{"error":"invalid input: expected value at line 1 column 1"}"#
        );
    }

    #[test]
    fn an_output_that_is_not_json_is_an_error_output() {
        let keyed_by_pairs = |_: serde_json::Value| BTreeMap::from([((1, 2), 3)]);
        assert_eq!(
            text(answer(b"null", keyed_by_pairs)),
            r#"{"error":"cannot encode the output: key must be a string"}"#
        );
    }

    #[test]
    fn error_messages_are_escaped() {
        let output = error_output("a \"quoted\"\nline\u{7f}é");
        let value: serde_json::Value = serde_json::from_slice(&output)
            .unwrap_or_else(|error| panic!("error output is not JSON: {error}"));
        assert_eq!(
            value,
            serde_json::json!({"error": "a \"quoted\"\nline\u{7f}é"})
        );
    }
}
