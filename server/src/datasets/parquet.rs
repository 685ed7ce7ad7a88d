//! Parquet datasets, read a record batch at a time: every row is one chunk's input object,
//! its columns the fields.
//!
//! Column types: signed and unsigned integers become JSON integers, floats JSON numbers (a
//! NaN or infinity is refused with its row and column: JSON cannot hold it), booleans and
//! strings (also dictionary-encoded, e.g. pandas categoricals) as themselves, and nulls as
//! `null`. Any other column type (dates, timestamps, decimals, binary, lists, structs) is
//! refused up front, naming the column.

use std::fs::File;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Number, Value};

use super::{invalid_dataset, invalid_value};
use crate::error::Error;
use crate::inputs::InputCollector;

/// Rows per record batch: a batch's columns are all that is decoded at once.
const BATCH_ROWS: usize = 1024;

/// How many times the file's size its metadata may claim once decompressed, per row group:
/// past that the file is refused before any page is decoded (a decompression bomb).
const MOST_EXPANSION: i64 = 64;

/// Whether a column of this type can be read (dictionaries by their values).
fn supported(data_type: &DataType) -> bool {
    match data_type {
        DataType::Null
        | DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => supported(values),
        _ => false,
    }
}

/// The JSON value of `array[row]`.
fn value(array: &ArrayRef, row: usize) -> Result<Value, &'static str> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    let float = |value: f64| {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or("is NaN or infinite, which JSON cannot hold")
    };
    Ok(match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        DataType::Float32 => float(f64::from(array.as_primitive::<Float32Type>().value(row)))?,
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row))?,
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_owned()),
        _ => return Err("has a type a chunk input cannot hold"),
    })
}

/// Read every row of a Parquet file into `collector`.
pub fn read(file: File, collector: &mut InputCollector<'_>) -> Result<(), Error> {
    let file_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|error| invalid_dataset(format!("not a readable Parquet file: {error}")))?;
    let metadata = builder.metadata().clone();
    let rows = metadata.file_metadata().num_rows();
    if usize::try_from(rows).map_or(true, |rows| rows > collector.limits().max_inputs_per_job) {
        return Err(collector.too_many(format!("{rows} (rows in the dataset)")));
    }
    let most = i64::try_from(file_bytes)
        .unwrap_or(i64::MAX)
        .saturating_mul(MOST_EXPANSION)
        .max(64 << 20);
    if let Some(group) = metadata
        .row_groups()
        .iter()
        .position(|group| group.total_byte_size() > most)
    {
        return Err(invalid_dataset(format!(
            "row group {group} claims more than {most} bytes decompressed, \
             {MOST_EXPANSION} times the file's size"
        )));
    }
    let schema = builder.schema().clone();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    for (index, field) in schema.fields().iter().enumerate() {
        if !supported(field.data_type()) {
            return Err(invalid_dataset(format!(
                "column `{}` is of type {}, which a chunk input cannot hold; columns may be \
                 integers, floats, booleans or strings",
                field.name(),
                field.data_type()
            )));
        }
        if names[..index].contains(field.name()) {
            return Err(invalid_dataset(format!(
                "the dataset names column `{}` twice",
                field.name()
            )));
        }
    }
    collector.reserve(usize::try_from(rows).unwrap_or(0));
    let batches = builder
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|error| invalid_dataset(format!("not a readable Parquet file: {error}")))?;
    for batch in batches {
        let batch = batch.map_err(|error| {
            invalid_dataset(format!(
                "{} and after cannot be read: {error}",
                collector.next_name()
            ))
        })?;
        // Dictionary columns (categoricals) are decoded to their values once per batch.
        let columns = batch
            .columns()
            .iter()
            .map(|column| match column.data_type() {
                DataType::Dictionary(_, values) => arrow::compute::cast(column, values),
                _ => Ok(column.clone()),
            })
            .collect::<Result<Vec<ArrayRef>, _>>()
            .map_err(|error| {
                invalid_dataset(format!("a dictionary column cannot be read: {error}"))
            })?;
        for row in 0..batch.num_rows() {
            let mut object = Map::new();
            for (name, column) in names.iter().zip(&columns) {
                let cell =
                    value(column, row).map_err(|what| invalid_value(collector, name, what))?;
                object.insert(name.clone(), cell);
            }
            collector.push(&Value::Object(object))?;
        }
    }
    Ok(())
}
