//! A job's inputs, written straight into the request body as one JSON array: from a JSON array
//! file, an NDJSON file (one input per line), standard input, or the `--range` helper.
//!
//! A job may carry up to 1,000,000 inputs in a 64 MiB body, so the inputs are never parsed
//! into values: a file is read once, directly into the body buffer, checked in place with
//! `serde_json` (which sees every syntax error and reports its line and column), and NDJSON is
//! turned into an array in place by rewriting the newlines between inputs into commas. What
//! each input must look like is the kernel's business and is checked by the master.
//!
//! A Parquet or CSV file is a dataset instead: it is not read here but sent as it is, as the
//! `inputs` part of a multipart submission, and the master makes one chunk per row
//! ([`dataset`] tells which files those are).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;

use crate::error::{Error, Result};
use crate::range::SpanRange;

/// How an inputs file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// By extension: `.json` is an array, `.ndjson` / `.jsonl` NDJSON; otherwise (and for
    /// standard input) an array when the whole text is one JSON array, else NDJSON.
    Auto,
    /// One JSON array, one element per input.
    Json,
    /// One JSON value per line; blank lines are skipped.
    Ndjson,
    /// A Parquet dataset, sent as it is: one chunk per row, the columns as its fields.
    Parquet,
    /// A CSV dataset with a header row, sent as it is: one chunk per row.
    Csv,
}

/// The dataset formats the master reads itself (sent as a multipart file part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetFormat {
    /// `application/vnd.apache.parquet`.
    Parquet,
    /// `text/csv`.
    Csv,
}

impl DatasetFormat {
    /// The file part's content type.
    pub fn content_type(self) -> &'static str {
        match self {
            DatasetFormat::Parquet => "application/vnd.apache.parquet",
            DatasetFormat::Csv => "text/csv",
        }
    }
}

/// Whether `source` is a dataset file (`--format parquet|csv`, or a `.parquet` / `.csv` file
/// with `--format auto`), and which.
pub fn dataset(source: &InputSource) -> Option<(&Path, DatasetFormat)> {
    let InputSource::File { path, format } = source else {
        return None;
    };
    let format = match format {
        InputFormat::Parquet => DatasetFormat::Parquet,
        InputFormat::Csv => DatasetFormat::Csv,
        InputFormat::Auto => {
            let extension = path.extension()?.to_str()?.to_ascii_lowercase();
            match extension.as_str() {
                "parquet" | "pq" => DatasetFormat::Parquet,
                "csv" => DatasetFormat::Csv,
                _ => return None,
            }
        }
        InputFormat::Json | InputFormat::Ndjson => return None,
    };
    Some((path, format))
}

/// Where a job's inputs come from.
#[derive(Debug, Clone)]
pub enum InputSource {
    /// A file, or standard input when the path is `-`.
    File {
        /// The file.
        path: PathBuf,
        /// Its layout.
        format: InputFormat,
    },
    /// `--range A..B --chunks N`: `N` inputs `{"start": a, "end": b}` covering `[A, B)`.
    Range {
        /// The interval to split.
        range: SpanRange,
        /// How many inputs.
        chunks: u64,
    },
}

/// Append the inputs to `out` as one JSON array and return how many there are.
///
/// Fails with [`Error::Inputs`] for a file that is not valid JSON / NDJSON or holds no input,
/// [`Error::Usage`] for a range that cannot be split, [`Error::File`] when reading fails.
pub fn append_array(out: &mut Vec<u8>, source: &InputSource) -> Result<usize> {
    match source {
        InputSource::Range { range, chunks } => append_range(out, *range, *chunks),
        InputSource::File { path, format } if path.as_os_str() == "-" => {
            append_from_reader(out, std::io::stdin().lock(), *format, "<stdin>")
                .map_err(|error| error.for_path(path))
        }
        InputSource::File { path, format } => {
            let file = std::fs::File::open(path).map_err(|error| Error::file(path, error))?;
            // One allocation of the right size: the body never exists twice while growing.
            if let Ok(metadata) = file.metadata() {
                out.reserve(usize::try_from(metadata.len()).unwrap_or(0) + 1024);
            }
            let format = match format {
                InputFormat::Auto => format_from_extension(path),
                explicit => *explicit,
            };
            append_from_reader(out, file, format, &path.display().to_string())
                .map_err(|error| error.for_path(path))
        }
    }
}

/// The `--range` helper's inputs.
fn append_range(out: &mut Vec<u8>, range: SpanRange, chunks: u64) -> Result<usize> {
    let pieces = range
        .split(chunks)
        .map_err(|error| Error::Usage(error.to_string()))?;
    out.push(b'[');
    let mut count = 0;
    for (start, end) in pieces {
        if count > 0 {
            out.push(b',');
        }
        // Writing into a Vec cannot fail.
        let _ = write!(out, r#"{{"start":{start},"end":{end}}}"#);
        count += 1;
    }
    out.push(b']');
    Ok(count)
}

fn format_from_extension(path: &Path) -> InputFormat {
    match path.extension().and_then(|ext| ext.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("json") => InputFormat::Json,
        Some(ext) if ext.eq_ignore_ascii_case("ndjson") || ext.eq_ignore_ascii_case("jsonl") => {
            InputFormat::Ndjson
        }
        _ => InputFormat::Auto,
    }
}

/// Read everything from `reader` into `out` and make it one JSON array in place.
fn append_from_reader(
    out: &mut Vec<u8>,
    mut reader: impl Read,
    format: InputFormat,
    source_name: &str,
) -> Result<usize, ReadError> {
    // A placeholder for the `[` NDJSON needs; a space (valid JSON whitespace) otherwise.
    let placeholder = out.len();
    out.push(b' ');
    reader.read_to_end(out).map_err(ReadError::Io)?;
    let invalid = |message: String| {
        ReadError::Invalid(Error::Inputs {
            source_name: source_name.to_owned(),
            message,
        })
    };
    let text = &out[placeholder + 1..];
    let format = match format {
        InputFormat::Auto if first_byte(text) == Some(b'[') => match array_len(text) {
            Ok(_) => InputFormat::Json,
            Err(array_error) => match ndjson_len(text) {
                Ok(_) => InputFormat::Ndjson,
                // Starts like an array: its error is the useful one.
                Err(_) => return Err(invalid(array_error)),
            },
        },
        InputFormat::Auto => InputFormat::Ndjson,
        explicit => explicit,
    };
    if matches!(format, InputFormat::Parquet | InputFormat::Csv) {
        return Err(invalid(
            "a Parquet or CSV dataset is sent as a file, not read into JSON".into(),
        ));
    }
    let count = match format {
        InputFormat::Json => array_len(text).map_err(invalid)?,
        _ => {
            let count = ndjson_len(text).map_err(invalid)?;
            ndjson_to_array_body(&mut out[placeholder + 1..]);
            out[placeholder] = b'[';
            out.push(b']');
            count
        }
    };
    if count == 0 {
        return Err(invalid("holds no inputs".into()));
    }
    Ok(count)
}

/// A failure while reading an inputs source, before its path is attached.
#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    Invalid(Error),
}

impl ReadError {
    fn for_path(self, path: &Path) -> Error {
        match self {
            ReadError::Io(error) => Error::file(path, error),
            ReadError::Invalid(error) => error,
        }
    }
}

fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

fn first_byte(text: &[u8]) -> Option<u8> {
    text.iter().copied().find(|b| !is_json_whitespace(*b))
}

/// Elements of a JSON array text, without building them (`IgnoredAny` takes no memory).
fn array_len(text: &[u8]) -> Result<usize, String> {
    serde_json::from_slice::<Vec<IgnoredAny>>(text)
        .map(|elements| elements.len())
        .map_err(|error| format!("expected a JSON array of inputs: {error}"))
}

/// Non-blank lines of an NDJSON text, each checked to be exactly one JSON value.
fn ndjson_len(text: &[u8]) -> Result<usize, String> {
    let mut count = 0;
    for (number, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(|b| is_json_whitespace(*b)) {
            continue;
        }
        serde_json::from_slice::<IgnoredAny>(line).map_err(|error| {
            format!(
                "line {}, column {}: {}",
                number + 1,
                error.column(),
                without_position(&error)
            )
        })?;
        count += 1;
    }
    Ok(count)
}

/// serde_json's message without its trailing "at line L column C".
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// Turn checked NDJSON into the inside of an array: the newline ending each non-blank line
/// that has another non-blank line after it becomes a comma, the other newlines spaces (so
/// the master's error positions, if any, are all on one line).
fn ndjson_to_array_body(text: &mut [u8]) {
    let mut pending_newline: Option<usize> = None;
    let mut line_start = 0;
    while line_start <= text.len() {
        let line_end = text[line_start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(text.len(), |offset| line_start + offset);
        let blank = text[line_start..line_end]
            .iter()
            .all(|b| is_json_whitespace(*b));
        if line_end < text.len() {
            text[line_end] = b' ';
        }
        if !blank {
            if let Some(newline) = pending_newline {
                text[newline] = b',';
            }
            pending_newline = (line_end < text.len()).then_some(line_end);
        }
        line_start = line_end + 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::*;

    /// Run `append_from_reader` behind a prefix and return the array it produced, parsed.
    fn read(text: &str, format: InputFormat) -> Result<(usize, Value), String> {
        let mut out = b"{\"inputs\":".to_vec();
        let count =
            append_from_reader(&mut out, text.as_bytes(), format, "test").map_err(|error| {
                match error {
                    ReadError::Invalid(error) => error.to_string(),
                    ReadError::Io(error) => error.to_string(),
                }
            })?;
        out.push(b'}');
        let body: Value = serde_json::from_slice(&out).unwrap();
        Ok((count, body["inputs"].clone()))
    }

    #[test]
    fn a_json_array_is_used_as_is() {
        let (count, inputs) = read(
            "[{\"start\": 0, \"end\": 10},\n {\"start\": 10, \"end\": 20}]\n",
            InputFormat::Json,
        )
        .unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            inputs,
            json!([{"start": 0, "end": 10}, {"start": 10, "end": 20}])
        );
    }

    #[test]
    fn ndjson_becomes_an_array_and_blank_lines_are_skipped() {
        let text = "\n{\"a\": 1}\r\n\n  \n[1, 2]\n\"three\"\n\n";
        let (count, inputs) = read(text, InputFormat::Ndjson).unwrap();
        assert_eq!(count, 3);
        let mut out = Vec::new();
        append_from_reader(&mut out, text.as_bytes(), InputFormat::Ndjson, "test").unwrap();
        assert!(
            !out.contains(&b'\n'),
            "one line: {}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(inputs, json!([{"a": 1}, [1, 2], "three"]));
        let (count, inputs) = read("{\"a\":1}\n{\"a\":2}", InputFormat::Ndjson).unwrap();
        assert_eq!(count, 2);
        assert_eq!(inputs, json!([{"a": 1}, {"a": 2}]));
        let (count, inputs) = read("42", InputFormat::Ndjson).unwrap();
        assert_eq!((count, inputs), (1, json!([42])));
    }

    #[test]
    fn auto_tells_an_array_from_ndjson() {
        assert_eq!(
            read(" [1, 2, 3] ", InputFormat::Auto).unwrap(),
            (3, json!([1, 2, 3]))
        );
        assert_eq!(
            read("[1]\n[2]\n", InputFormat::Auto).unwrap(),
            (2, json!([[1], [2]]))
        );
        assert_eq!(
            read("{\"x\":1}\n{\"x\":2}\n", InputFormat::Auto).unwrap(),
            (2, json!([{"x": 1}, {"x": 2}]))
        );
        let error = read("[1, 2,\n 3", InputFormat::Auto).unwrap_err();
        assert!(error.starts_with("test: expected a JSON array"), "{error}");
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let error = read("{\"a\":1}\n{\"a\":}\n", InputFormat::Ndjson).unwrap_err();
        assert_eq!(error, "test: line 2, column 6: expected value");
        let error = read("{\"a\":1} {\"a\":2}\n", InputFormat::Ndjson).unwrap_err();
        assert!(error.starts_with("test: line 1, column"), "{error}");
        assert!(error.contains("trailing characters"), "{error}");
        let error = read("{\"a\": 1}", InputFormat::Json).unwrap_err();
        assert!(error.contains("expected a JSON array"), "{error}");
        assert!(error.contains("line 1 column"), "{error}");
    }

    #[test]
    fn no_inputs_is_an_error() {
        for (text, format) in [
            ("[]", InputFormat::Json),
            ("", InputFormat::Ndjson),
            ("\n \n", InputFormat::Auto),
            (" [ ] ", InputFormat::Auto),
        ] {
            assert_eq!(
                read(text, format).unwrap_err(),
                "test: holds no inputs",
                "{text:?}"
            );
        }
    }

    #[test]
    fn extensions_pick_the_format() {
        assert_eq!(
            format_from_extension(Path::new("a/in.json")),
            InputFormat::Json
        );
        assert_eq!(
            format_from_extension(Path::new("in.NDJSON")),
            InputFormat::Ndjson
        );
        assert_eq!(
            format_from_extension(Path::new("in.jsonl")),
            InputFormat::Ndjson
        );
        assert_eq!(
            format_from_extension(Path::new("in.txt")),
            InputFormat::Auto
        );
        assert_eq!(format_from_extension(Path::new("-")), InputFormat::Auto);
    }

    #[test]
    fn files_are_read_and_missing_files_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inputs.ndjson");
        std::fs::write(&path, "{\"start\":0,\"end\":5}\n{\"start\":5,\"end\":9}\n").unwrap();
        let mut out = Vec::new();
        let source = InputSource::File {
            path: path.clone(),
            format: InputFormat::Auto,
        };
        assert_eq!(append_array(&mut out, &source).unwrap(), 2);
        let inputs: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(inputs[1], json!({"start": 5, "end": 9}));

        let missing = InputSource::File {
            path: dir.path().join("nope.json"),
            format: InputFormat::Auto,
        };
        let error = append_array(&mut Vec::new(), &missing).unwrap_err();
        assert!(matches!(error, Error::File { .. }), "{error:?}");
        assert!(error.to_string().contains("nope.json"), "{error}");
    }

    #[test]
    fn the_range_helper_writes_start_end_objects() {
        let mut out = Vec::new();
        let source = InputSource::Range {
            range: "0..10".parse().unwrap(),
            chunks: 3,
        };
        assert_eq!(append_array(&mut out, &source).unwrap(), 3);
        let inputs: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            inputs,
            json!([{"start": 0, "end": 3}, {"start": 3, "end": 6}, {"start": 6, "end": 10}])
        );
        let too_many = InputSource::Range {
            range: "0..10".parse().unwrap(),
            chunks: 11,
        };
        let error = append_array(&mut Vec::new(), &too_many).unwrap_err();
        assert!(matches!(error, Error::Usage(_)), "{error:?}");
    }
}
