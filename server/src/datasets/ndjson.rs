//! NDJSON datasets: one JSON object per line, each one chunk's input; blank lines are skipped.
//!
//! A line is read with a length cap and parsed under the input's byte budget, like an element
//! of a JSON `inputs` array, so one huge line costs no more than one input.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};

use serde::de::DeserializeSeed;
use serde_json::Value;

use super::invalid_dataset;
use crate::error::Error;
use crate::inputs::{BoundedValue, InputCollector};

/// Whitespace a line may carry beyond the input limit (pretty-printing inside a line).
const LINE_SLACK: usize = 4;

/// Read every line of an NDJSON file into `collector`.
pub fn read(file: File, collector: &mut InputCollector<'_>) -> Result<(), Error> {
    let max_line = collector
        .limits()
        .max_input_bytes
        .saturating_mul(LINE_SLACK)
        .max(1 << 20);
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut line_number = 0usize;
    loop {
        line.clear();
        let cap = u64::try_from(max_line + 1).unwrap_or(u64::MAX);
        let read = (&mut reader)
            .take(cap)
            .read_until(b'\n', &mut line)
            .map_err(|error| Error::Internal(anyhow::anyhow!("reading a dataset: {error}")))?;
        if read == 0 {
            return Ok(());
        }
        line_number += 1;
        if line.len() > max_line && line.last() != Some(&b'\n') {
            return Err(collector.oversized_next());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if collector.is_full() {
            return Err(collector.too_many(format!(
                "more than {}",
                collector.limits().max_inputs_per_job
            )));
        }
        let budget = collector.budget();
        let bounded = BoundedValue { budget: &budget };
        let mut deserializer = serde_json::Deserializer::from_slice(&line);
        let parsed = bounded
            .deserialize(&mut deserializer)
            .and_then(|value| deserializer.end().map(|()| value));
        let value = match parsed {
            Ok(value) => value,
            Err(_) if bounded.spent() => return Err(collector.oversized_next()),
            Err(error) => {
                return Err(invalid_dataset(format!(
                    "{} (line {line_number}): not JSON: {error}",
                    collector.next_name()
                )));
            }
        };
        if !matches!(value, Value::Object(_)) {
            return Err(Error::invalid(
                "invalid_input",
                format!(
                    "{} (line {line_number}): a dataset row must be a JSON object, its fields the \
                     columns",
                    collector.next_name()
                ),
            ));
        }
        collector.push(&value)?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Seek, Write};

    use super::*;
    use crate::inputs::Origin;
    use crate::limits::Limits;
    use crate::store::Program;

    fn read_text(text: &str, limits: &Limits) -> Result<Vec<String>, Error> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.rewind().unwrap();
        let program = Program::Kernel("echo".into());
        let mut collector = InputCollector::new(limits, &program, Origin::Dataset);
        read(file, &mut collector)?;
        Ok(collector.finish())
    }

    #[test]
    fn objects_per_line_blank_lines_skipped() {
        let limits = Limits::default();
        let rows = read_text("{\"b\":1, \"a\":null}\n\n  \n{\"a\":[1]}", &limits).unwrap();
        assert_eq!(rows, vec![r#"{"a":null,"b":1}"#, r#"{"a":[1]}"#]);
        let error = read_text("{\"a\":1}\n\n[1]\n", &limits).unwrap_err();
        assert!(error.to_string().starts_with("row 2 (line 3)"), "{error}");
    }

    #[test]
    fn a_long_line_is_refused_as_one_oversized_input() {
        let limits = Limits {
            max_input_bytes: 100,
            ..Limits::default()
        };
        let long = format!("{{\"a\":[{}]}}\n", vec!["0"; 1_000_000].join(","));
        let error = read_text(&long, &limits).unwrap_err();
        assert!(matches!(error, Error::TooLarge(_)), "{error:?}");
    }
}
