//! CSV datasets: a header row names the columns; every later row is one chunk.
//!
//! CSV has no types, so each column takes the type of its first non-empty value: a JSON
//! number (`12`, `-3.5`, `1e6`; not `012`, `inf` or `0x1f`) makes a number column, `true` or
//! `false` a boolean column, anything else a string column. A later value of another kind in a
//! number or boolean column is refused with its row and column (it is the bad row, not the
//! column); in a string column every value is a string. An empty cell is null.

use std::fs::File;

use serde_json::{Map, Number, Value};

use super::{invalid_dataset, invalid_value, shown};
use crate::error::Error;
use crate::inputs::InputCollector;

/// The type a column took from its first value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No value yet (only empty cells so far).
    Unknown,
    Number,
    Boolean,
    Text,
}

fn number(cell: &str) -> Option<Number> {
    // Exactly JSON's number syntax, with no surrounding space.
    if cell.trim() != cell {
        return None;
    }
    serde_json::from_str::<Number>(cell).ok()
}

fn boolean(cell: &str) -> Option<bool> {
    match cell {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The value of `cell` in a column of `kind`, settling the kind on the first value.
fn typed(kind: &mut Kind, cell: &str) -> Result<Value, &'static str> {
    if cell.is_empty() {
        return Ok(Value::Null);
    }
    if *kind == Kind::Unknown {
        *kind = if boolean(cell).is_some() {
            Kind::Boolean
        } else if number(cell).is_some() {
            Kind::Number
        } else {
            Kind::Text
        };
    }
    match kind {
        Kind::Number => number(cell)
            .map(Value::Number)
            .ok_or("is not a number, but the column's first value is"),
        Kind::Boolean => boolean(cell)
            .map(Value::Bool)
            .ok_or("is not true or false, but the column's first value is"),
        Kind::Text | Kind::Unknown => Ok(Value::String(cell.to_owned())),
    }
}

/// Read every row of a CSV file into `collector`.
pub fn read(file: File, collector: &mut InputCollector<'_>) -> Result<(), Error> {
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(std::io::BufReader::new(file));
    let headers: Vec<String> = reader
        .headers()
        .map_err(|error| invalid_dataset(format!("the CSV header row cannot be read: {error}")))?
        .iter()
        .map(str::to_owned)
        .collect();
    if headers.is_empty() {
        return Err(invalid_dataset("the CSV file has no header row"));
    }
    for (index, name) in headers.iter().enumerate() {
        if headers[..index].contains(name) {
            return Err(invalid_dataset(format!(
                "the CSV header names column `{}` twice",
                shown(name)
            )));
        }
    }
    let mut kinds = vec![Kind::Unknown; headers.len()];
    let mut record = ::csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(error) => {
                return Err(invalid_dataset(format!(
                    "{}: {}",
                    collector.next_name(),
                    csv_error(&error)
                )));
            }
        }
        if collector.is_full() {
            return Err(collector.too_many(format!(
                "more than {}",
                collector.limits().max_inputs_per_job
            )));
        }
        let mut row = Map::new();
        for ((name, kind), cell) in headers.iter().zip(kinds.iter_mut()).zip(record.iter()) {
            let value = typed(kind, cell).map_err(|what| {
                invalid_value(collector, name, &format!("`{}` {what}", shown(cell)))
            })?;
            row.insert(name.clone(), value);
        }
        collector.push(&Value::Object(row))?;
    }
}

/// The csv crate's error without its byte offsets, which mean nothing to a submitter.
fn csv_error(error: &::csv::Error) -> String {
    match error.kind() {
        ::csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("it has {len} fields, the header has {expected_len}"),
        ::csv::ErrorKind::Utf8 { .. } => "it is not valid UTF-8".to_owned(),
        _ => error.to_string(),
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

    fn read_text(text: &str) -> Result<Vec<String>, Error> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.rewind().unwrap();
        let limits = Limits::default();
        let program = Program::Kernel("echo".into());
        let mut collector = InputCollector::new(&limits, &program, Origin::Dataset);
        read(file, &mut collector)?;
        Ok(collector.finish())
    }

    #[test]
    fn columns_take_the_type_of_their_first_value() {
        let rows = read_text("n,x,ok,name,zip\n1,2.5,true,ada,01234\n,3,false,7,99\n").unwrap();
        assert_eq!(
            rows,
            vec![
                r#"{"n":1,"name":"ada","ok":true,"x":2.5,"zip":"01234"}"#,
                r#"{"n":null,"name":"7","ok":false,"x":3,"zip":"99"}"#,
            ]
        );
    }

    #[test]
    fn a_bad_value_names_its_row_and_column() {
        let error = read_text("start,end\n0,10\n10,abc\n").unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("row 2, column `end`: `abc`"),
            "{message}"
        );
        let error = read_text("a,b\n1,2\n3\n").unwrap_err();
        assert!(
            error.to_string().starts_with("row 2: it has 1 fields"),
            "{error}"
        );
    }
}
