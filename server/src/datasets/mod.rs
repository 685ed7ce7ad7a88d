//! Datasets in: a job's inputs from a Parquet, CSV or NDJSON file, one row per chunk, the
//! columns as the fields of the chunk's input object.
//!
//! - [`parquet`]: Parquet files, read a record batch at a time (typed columns: integers,
//!   floats, booleans, strings, nulls).
//! - [`csv`]: CSV with a header row; a column's type is set by its first value.
//! - [`ndjson`]: one JSON object per line.
//!
//! Every reader feeds an [`InputCollector`], so the limits and the kernel's checks are the
//! same as for a JSON `inputs` array, and nothing but the current batch or row is held besides
//! the inputs' canonical texts. Errors name the row (counted from 1: row 1 is chunk 0) and,
//! where it is the cause, the column. The multipart route that receives the file is
//! [`crate::api::submit`].

pub mod csv;
pub mod ndjson;
pub mod parquet;

use std::fs::File;

use crate::error::Error;
use crate::inputs::InputCollector;

/// The layout of a dataset file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl Format {
    /// The format a file part declares, by its content type or else its file name's extension.
    pub fn detect(content_type: Option<&str>, file_name: Option<&str>) -> Option<Format> {
        let essence = content_type
            .and_then(|value| value.split(';').next())
            .map(|value| value.trim().to_ascii_lowercase());
        let by_type = match essence.as_deref() {
            Some("application/vnd.apache.parquet" | "application/x-parquet") => {
                Some(Format::Parquet)
            }
            Some("text/csv") => Some(Format::Csv),
            Some("application/x-ndjson" | "application/jsonl" | "application/jsonlines") => {
                Some(Format::Ndjson)
            }
            _ => None,
        };
        by_type.or_else(|| {
            let extension = file_name?.rsplit_once('.')?.1.to_ascii_lowercase();
            match extension.as_str() {
                "parquet" | "pq" => Some(Format::Parquet),
                "csv" => Some(Format::Csv),
                "ndjson" | "jsonl" => Some(Format::Ndjson),
                _ => None,
            }
        })
    }
}

/// Read every row of `file` into `collector`.
pub fn read(file: File, format: Format, collector: &mut InputCollector<'_>) -> Result<(), Error> {
    match format {
        Format::Parquet => parquet::read(file, collector),
        Format::Csv => csv::read(file, collector),
        Format::Ndjson => ndjson::read(file, collector),
    }
}

/// A 422 about the file as a whole (not one of its rows' values).
pub(crate) fn invalid_dataset(message: impl Into<String>) -> Error {
    Error::invalid("invalid_dataset", message)
}

/// A 422 about one value: the row and the column.
pub(crate) fn invalid_value(collector: &InputCollector<'_>, column: &str, what: &str) -> Error {
    Error::invalid(
        "invalid_input",
        format!("{}, column `{column}`: {what}", collector.next_name()),
    )
}

/// A cell's text for an error message, shortened.
pub(crate) fn shown(text: &str) -> String {
    const MOST: usize = 40;
    if text.chars().count() <= MOST {
        text.to_owned()
    } else {
        let head: String = text.chars().take(MOST).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::Format;

    #[test]
    fn formats_come_from_the_content_type_or_the_extension() {
        assert_eq!(
            Format::detect(Some("text/csv; charset=utf-8"), Some("x.bin")),
            Some(Format::Csv)
        );
        assert_eq!(
            Format::detect(Some("application/octet-stream"), Some("rows.PARQUET")),
            Some(Format::Parquet)
        );
        assert_eq!(
            Format::detect(None, Some("a.b.jsonl")),
            Some(Format::Ndjson)
        );
        assert_eq!(Format::detect(None, Some("data")), None);
    }
}
