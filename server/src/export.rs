//! Results as columns: `GET /api/v1/jobs/{id}/results?format=parquet|arrow` (or the `Accept`
//! types `application/vnd.apache.parquet`, `application/vnd.apache.arrow.stream`) answers a
//! job's results as an Apache Parquet file or an Arrow IPC stream instead of NDJSON.
//!
//! # Columns
//!
//! Every file has `index` (int32, not null), then the output's columns, then `agreeing`
//! (int32) and `error` (utf8). The values are those of the NDJSON lines, and a key a line
//! lacks is null: a failed chunk has a null `agreeing` and its `error`, an accepted one a null
//! `error`.
//!
//! The output's columns are decided once per file, from the first page of results as the
//! store reads them (up to 2,000 results):
//!
//! - **Typed**, when every output in that page is a JSON object with the same keys (at least
//!   one, none of them `index`, `output`, `agreeing` or `error`) whose values are scalars of
//!   one kind per key: one nullable column per key, in key order: `int64` (integers that fit
//!   it), `float64` (numbers with a fraction or an exponent, integers beyond `int64`, or a key
//!   that holds both integers and such numbers), `bool`, `utf8`; a key that is null in every
//!   output of the page is `utf8`. After them comes an `output` column (utf8) that is null for
//!   every row whose output fits these columns and holds the output's JSON text for a row that
//!   does not (other keys, a nested value, a value of another kind, an integer that `int64`,
//!   or `float64` exactly, cannot hold). So a later row never fails the download and never
//!   loses anything: it is kept as text.
//! - **JSON text** otherwise (mixed shapes, arrays, nested objects, plain numbers, no outputs
//!   at all in the first page): a single `output` column (utf8) with each output's canonical
//!   JSON text.
//!
//! # Streaming
//!
//! One page of results becomes one record batch: one Parquet row group, one Arrow IPC
//! message. A task reads the pages one after another and encodes each on the blocking pool;
//! the bytes of each row group go to the response body through a channel that holds one of
//! them, so an export holds about a page, its encoding and the previous one at a time,
//! whatever the size of the job, and a slow client holds back the reading. A database error after the first bytes aborts the body
//! (the client sees a broken download, never a truncated file that looks complete).

use std::future::Future;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Array, Int64Builder, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use axum::body::Body;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt, stream};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::{Map, Number, Value};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::store::ChunkResult;

/// NDJSON, the default format of the results.
pub const NDJSON_TYPE: &str = "application/x-ndjson";
/// Parquet's media type.
pub const PARQUET_TYPE: &str = "application/vnd.apache.parquet";
/// The Arrow IPC stream format's media type.
pub const ARROW_STREAM_TYPE: &str = "application/vnd.apache.arrow.stream";

/// Column names of every file; an output key with one of these names makes the file's output
/// a JSON text column.
const RESERVED: [&str; 4] = ["index", "output", "agreeing", "error"];

/// A columnar format of the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An Apache Parquet file, one row group per page.
    Parquet,
    /// An Arrow IPC stream, one record batch per page.
    Arrow,
}

impl Format {
    /// The response's content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Parquet => PARQUET_TYPE,
            Format::Arrow => ARROW_STREAM_TYPE,
        }
    }

    /// The file name extension of a download.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Arrow => "arrows",
        }
    }
}

/// What a results request asks for: `Some` a columnar format, `None` NDJSON.
///
/// `?format=` decides when it is given: `ndjson`, `parquet` or `arrow` (any case); any other
/// value is refused (422 `unknown_format`). Without it, the `Accept` header's preferred type
/// among `application/vnd.apache.parquet`, `application/vnd.apache.arrow.stream` and
/// `application/x-ndjson` (wildcards count as NDJSON; quality values are honoured, the first
/// of equals wins); anything else, or no `Accept`, is NDJSON.
pub fn requested(query: Option<&str>, headers: &HeaderMap) -> Result<Option<Format>> {
    let named = query
        .unwrap_or("")
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .filter(|(key, _)| *key == "format")
        .map(|(_, value)| value)
        .next_back();
    if let Some(name) = named {
        return match name.to_ascii_lowercase().as_str() {
            "ndjson" => Ok(None),
            "parquet" => Ok(Some(Format::Parquet)),
            "arrow" => Ok(Some(Format::Arrow)),
            _ => Err(Error::invalid(
                "unknown_format",
                format!(
                    "format must be one of ndjson, parquet, arrow, not `{}`",
                    name.chars().take(40).collect::<String>()
                ),
            )),
        };
    }
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok());
    Ok(preferred(accept).flatten())
}

/// The most preferred of the types the master serves in `Accept` header values: `Some(None)`
/// is NDJSON, `None` none of them.
fn preferred<'a>(values: impl Iterator<Item = &'a str>) -> Option<Option<Format>> {
    let mut best: Option<(f32, Option<Format>)> = None;
    for range in values.flat_map(|value| value.split(',')) {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let format = match media.as_str() {
            PARQUET_TYPE => Some(Format::Parquet),
            ARROW_STREAM_TYPE => Some(Format::Arrow),
            NDJSON_TYPE | "*/*" | "application/*" => None,
            _ => continue,
        };
        let quality = parts
            .filter_map(|parameter| {
                let (name, value) = parameter.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| value.trim().parse::<f32>().ok())
                    .flatten()
            })
            .next()
            .unwrap_or(1.0);
        if quality.is_nan() || quality <= 0.0 {
            continue;
        }
        if best.is_none_or(|(best, _)| quality > best) {
            best = Some((quality, format));
        }
    }
    best.map(|(_, format)| format)
}

/// The pages of a job's results in index order: `fetch(after)` reads the finished chunks
/// after index `after` (from -1), until it returns none; an error is the last item.
pub fn pages<F, Fut>(fetch: F) -> impl Stream<Item = Result<Vec<ChunkResult>>> + Send + 'static
where
    F: FnMut(i32) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<ChunkResult>>> + Send + 'static,
{
    stream::unfold((fetch, Some(-1)), |(mut fetch, after)| async move {
        let after = after?;
        match fetch(after).await {
            Ok(page) if page.is_empty() => None,
            Ok(page) => {
                let next = page.last().map(|result| result.index);
                Some((Ok(page), (fetch, next)))
            }
            Err(error) => Some((Err(error), (fetch, None))),
        }
    })
}

/// The response of a columnar download of job `job_id`: the head at once, the body encoded
/// page by page as it is sent (see the module's documentation).
pub fn response<S>(format: Format, job_id: i64, pages: S) -> Response
where
    S: Stream<Item = Result<Vec<ChunkResult>>> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel::<std::io::Result<Vec<u8>>>(1);
    tokio::spawn(async move {
        if let Err(error) = encode(format, pages, &sender).await {
            tracing::error!(?error, job = job_id, "results export failed");
            let _ = sender
                .send(Err(std::io::Error::other("results unavailable")))
                .await;
        }
    });
    let body = stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|bytes| (bytes, receiver))
    });
    (
        [
            (header::CONTENT_TYPE, format.content_type().to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"job-{job_id}-results.{}\"",
                    format.extension()
                ),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Read the pages, encode each as it comes and send its bytes; ends quietly when the client
/// has gone.
async fn encode<S>(
    format: Format,
    pages: S,
    sender: &mpsc::Sender<std::io::Result<Vec<u8>>>,
) -> anyhow::Result<()>
where
    S: Stream<Item = Result<Vec<ChunkResult>>> + Send,
{
    let mut pages = std::pin::pin!(pages);
    let first = pages.next().await.transpose()?;
    let layout = Arc::new(Layout::infer(first.as_deref().unwrap_or_default()));
    let mut encoder = Encoder::new(format, layout.schema())?;
    let mut next = first;
    while let Some(page) = next {
        if !page.is_empty() {
            let layout = layout.clone();
            let (back, bytes) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let bytes = encoder.write(&layout.batch(&page)?)?;
                Ok((encoder, bytes))
            })
            .await??;
            encoder = back;
            if sender.send(Ok(bytes)).await.is_err() {
                return Ok(());
            }
        }
        if sender.is_closed() {
            return Ok(());
        }
        next = pages.next().await.transpose()?;
    }
    let bytes = tokio::task::spawn_blocking(move || encoder.finish()).await??;
    let _ = sender.send(Ok(bytes)).await;
    Ok(())
}

/// The kind of a typed output column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int64,
    Float64,
    Boolean,
    Utf8,
}

impl Kind {
    fn data_type(self) -> DataType {
        match self {
            Kind::Int64 => DataType::Int64,
            Kind::Float64 => DataType::Float64,
            Kind::Boolean => DataType::Boolean,
            Kind::Utf8 => DataType::Utf8,
        }
    }

    /// The kind a sampled scalar asks for; `None` for null (any kind holds it), `Err` for an
    /// array or an object.
    fn of(value: &Value) -> Result<Option<Kind>, ()> {
        Ok(match value {
            Value::Null => None,
            Value::Bool(_) => Some(Kind::Boolean),
            Value::Number(number) if number.as_i64().is_some() => Some(Kind::Int64),
            Value::Number(_) => Some(Kind::Float64),
            Value::String(_) => Some(Kind::Utf8),
            Value::Array(_) | Value::Object(_) => return Err(()),
        })
    }

    /// Whether a column of this kind holds `value` exactly.
    fn holds(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) => true,
            (Kind::Int64, Value::Number(number)) => number.as_i64().is_some(),
            (Kind::Float64, Value::Number(number)) => exact_f64(number).is_some(),
            (Kind::Boolean, Value::Bool(_)) | (Kind::Utf8, Value::String(_)) => true,
            _ => false,
        }
    }
}

/// `number` as a float64, when it is one or an integer that a float64 holds exactly.
fn exact_f64(number: &Number) -> Option<f64> {
    if let Some(integer) = number.as_i64() {
        let float = integer as f64;
        (float as i128 == i128::from(integer)).then_some(float)
    } else if let Some(integer) = number.as_u64() {
        let float = integer as f64;
        (float as u128 == u128::from(integer)).then_some(float)
    } else {
        number.as_f64()
    }
}

/// One typed output column: an output key and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypedField {
    name: String,
    kind: Kind,
}

/// How the outputs are laid out in columns (see the module's documentation). The Delta sink
/// ([`crate::lakehouse::delta`]) lays its rows out the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One `output` column with the JSON text.
    Json,
    /// One column per output key, then `output` with the JSON text of the rows that do not
    /// fit them.
    Typed(Vec<TypedField>),
}

impl Layout {
    /// The layout a first page of results asks for.
    pub(crate) fn infer(sample: &[ChunkResult]) -> Layout {
        Self::typed_fields(sample).map_or(Layout::Json, Layout::Typed)
    }

    fn typed_fields(sample: &[ChunkResult]) -> Option<Vec<TypedField>> {
        let mut fields: Option<Vec<(String, Option<Kind>)>> = None;
        for text in sample.iter().filter_map(|result| result.output.as_deref()) {
            let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) else {
                return None;
            };
            let fields = fields
                .get_or_insert_with(|| object.keys().map(|key| (key.clone(), None)).collect());
            if object.len() != fields.len() {
                return None;
            }
            for (name, kind) in fields.iter_mut() {
                let Some(seen) = Kind::of(object.get(name.as_str())?).ok()? else {
                    continue;
                };
                *kind = Some(match (*kind, seen) {
                    (None, seen) => seen,
                    (Some(known), seen) if known == seen => known,
                    (Some(Kind::Int64), Kind::Float64) | (Some(Kind::Float64), Kind::Int64) => {
                        Kind::Float64
                    }
                    _ => return None,
                });
            }
        }
        let fields = fields?;
        if fields.is_empty()
            || fields
                .iter()
                .any(|(name, _)| RESERVED.contains(&name.as_str()))
        {
            return None;
        }
        Some(
            fields
                .into_iter()
                .map(|(name, kind)| TypedField {
                    name,
                    kind: kind.unwrap_or(Kind::Utf8),
                })
                .collect(),
        )
    }

    /// The file's schema.
    pub(crate) fn schema(&self) -> SchemaRef {
        let mut columns = vec![Field::new("index", DataType::Int32, false)];
        if let Layout::Typed(fields) = self {
            for field in fields {
                columns.push(Field::new(&field.name, field.kind.data_type(), true));
            }
        }
        columns.push(Field::new("output", DataType::Utf8, true));
        columns.push(Field::new("agreeing", DataType::Int32, true));
        columns.push(Field::new("error", DataType::Utf8, true));
        Arc::new(Schema::new(columns))
    }

    /// One page as one record batch.
    pub(crate) fn batch(&self, page: &[ChunkResult]) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int32Array::from_iter_values(
            page.iter().map(|result| result.index),
        ))];
        match self {
            Layout::Json => columns.push(Arc::new(StringArray::from_iter(
                page.iter().map(|result| result.output.as_deref()),
            ))),
            Layout::Typed(fields) => {
                let mut builders: Vec<ColumnBuilder> = fields
                    .iter()
                    .map(|field| ColumnBuilder::new(field.kind, page.len()))
                    .collect();
                let mut unfit = StringBuilder::new();
                for result in page {
                    let fitted = result
                        .output
                        .as_deref()
                        .map(|text| (text, fit(fields, text)));
                    match fitted {
                        Some((_, Some(object))) => {
                            for (field, builder) in fields.iter().zip(&mut builders) {
                                builder.append(object.get(field.name.as_str()));
                            }
                            unfit.append_null();
                        }
                        Some((text, None)) => {
                            builders.iter_mut().for_each(|builder| builder.append(None));
                            unfit.append_value(text);
                        }
                        None => {
                            builders.iter_mut().for_each(|builder| builder.append(None));
                            unfit.append_null();
                        }
                    }
                }
                columns.extend(builders.into_iter().map(ColumnBuilder::finish));
                columns.push(Arc::new(unfit.finish()));
            }
        }
        // As in the NDJSON lines: an accepted chunk has its agreeing count, a failed one its
        // error.
        columns.push(Arc::new(Int32Array::from_iter(page.iter().map(|result| {
            result.output.as_ref().map(|_| result.agreeing.unwrap_or(0))
        }))));
        columns.push(Arc::new(StringArray::from_iter(page.iter().map(
            |result| match result.output {
                Some(_) => None,
                None => Some(result.error.as_deref().unwrap_or("failed")),
            },
        ))));
        RecordBatch::try_new(self.schema(), columns)
    }
}

/// The output object of `text` when it fits the typed columns: exactly their keys, each value
/// held by its column.
fn fit(fields: &[TypedField], text: &str) -> Option<Map<String, Value>> {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    let fits = object.len() == fields.len()
        && fields.iter().all(|field| {
            object
                .get(field.name.as_str())
                .is_some_and(|value| field.kind.holds(value))
        });
    fits.then_some(object)
}

/// A typed column being built (its values were checked by [`fit`]).
enum ColumnBuilder {
    Int64(Int64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    Utf8(StringBuilder),
}

impl ColumnBuilder {
    fn new(kind: Kind, rows: usize) -> ColumnBuilder {
        match kind {
            Kind::Int64 => ColumnBuilder::Int64(Int64Builder::with_capacity(rows)),
            Kind::Float64 => ColumnBuilder::Float64(Float64Builder::with_capacity(rows)),
            Kind::Boolean => ColumnBuilder::Boolean(BooleanBuilder::with_capacity(rows)),
            Kind::Utf8 => ColumnBuilder::Utf8(StringBuilder::new()),
        }
    }

    fn append(&mut self, value: Option<&Value>) {
        match self {
            ColumnBuilder::Int64(builder) => {
                builder.append_option(value.and_then(Value::as_i64));
            }
            ColumnBuilder::Float64(builder) => {
                builder.append_option(value.and_then(|value| match value {
                    Value::Number(number) => exact_f64(number),
                    _ => None,
                }));
            }
            ColumnBuilder::Boolean(builder) => {
                builder.append_option(value.and_then(Value::as_bool));
            }
            ColumnBuilder::Utf8(builder) => {
                builder.append_option(value.and_then(Value::as_str));
            }
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            ColumnBuilder::Int64(mut builder) => Arc::new(builder.finish()),
            ColumnBuilder::Float64(mut builder) => Arc::new(builder.finish()),
            ColumnBuilder::Boolean(mut builder) => Arc::new(builder.finish()),
            ColumnBuilder::Utf8(mut builder) => Arc::new(builder.finish()),
        }
    }
}

/// A Parquet or Arrow IPC writer into a buffer that is emptied after each batch.
enum Encoder {
    Parquet(Box<ArrowWriter<Vec<u8>>>),
    Arrow(Box<StreamWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(format: Format, schema: SchemaRef) -> anyhow::Result<Encoder> {
        Ok(match format {
            Format::Parquet => {
                let properties = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                Encoder::Parquet(Box::new(ArrowWriter::try_new(
                    Vec::new(),
                    schema,
                    Some(properties),
                )?))
            }
            Format::Arrow => Encoder::Arrow(Box::new(StreamWriter::try_new(Vec::new(), &schema)?)),
        })
    }

    /// Write `batch` as a row group (or message) of its own; the bytes ready to send (the
    /// first time, with the file's header).
    fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<Vec<u8>> {
        match self {
            Encoder::Parquet(writer) => {
                writer.write(batch)?;
                writer.flush()?;
                writer.sync()?;
                Ok(std::mem::take(writer.inner_mut()))
            }
            Encoder::Arrow(writer) => {
                writer.write(batch)?;
                Ok(std::mem::take(writer.get_mut()))
            }
        }
    }

    /// The last bytes: Parquet's footer, the IPC stream's end marker.
    fn finish(self) -> anyhow::Result<Vec<u8>> {
        match self {
            Encoder::Parquet(writer) => Ok(writer.into_inner()?),
            Encoder::Arrow(mut writer) => {
                writer.finish()?;
                Ok(writer.into_inner()?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
    use axum::http::HeaderValue;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn done(index: i32, output: &str) -> ChunkResult {
        ChunkResult {
            index,
            output: Some(output.to_owned()),
            agreeing: Some(2),
            error: None,
        }
    }

    fn failed(index: i32, error: &str) -> ChunkResult {
        ChunkResult {
            index,
            output: None,
            agreeing: None,
            error: Some(error.to_owned()),
        }
    }

    fn field(name: &str, kind: Kind) -> TypedField {
        TypedField {
            name: name.to_owned(),
            kind,
        }
    }

    #[test]
    fn outputs_of_one_shape_get_typed_columns() {
        let sample = [
            done(0, r#"{"a":1,"b":0.5,"c":true,"d":"x","e":null}"#),
            failed(1, "trap"),
            done(2, r#"{"a":null,"b":2,"c":false,"d":"y","e":null}"#),
        ];
        assert_eq!(
            Layout::infer(&sample),
            Layout::Typed(vec![
                field("a", Kind::Int64),
                field("b", Kind::Float64),
                field("c", Kind::Boolean),
                field("d", Kind::Utf8),
                field("e", Kind::Utf8),
            ])
        );
        // Integers beyond int64 are float64.
        assert_eq!(
            Layout::infer(&[done(0, r#"{"n":18446744073709551615}"#)]),
            Layout::Typed(vec![field("n", Kind::Float64)])
        );
    }

    #[test]
    fn anything_else_is_json_text() {
        for sample in [
            vec![],
            vec![failed(0, "no quorum")],
            vec![done(0, "78498")],
            vec![done(0, r#"{"a":1}"#), done(1, r#"{"b":1}"#)],
            vec![done(0, r#"{"a":1}"#), done(1, r#"{"a":1,"b":1}"#)],
            vec![done(0, r#"{"a":1}"#), done(1, r#"{"a":"1"}"#)],
            vec![done(0, r#"{"a":[1]}"#)],
            vec![done(0, r#"{"a":{"b":1}}"#)],
            vec![done(0, r#"{}"#)],
            vec![done(0, r#"{"error":"x","n":1}"#)],
            vec![done(0, r#"{"index":1}"#)],
            vec![done(0, r#"{"a":1}"#), done(1, "[1]")],
        ] {
            assert_eq!(Layout::infer(&sample), Layout::Json, "{sample:?}");
        }
    }

    #[test]
    fn a_row_that_does_not_fit_is_kept_as_text() {
        let fields = [field("i", Kind::Int64), field("x", Kind::Float64)];
        assert!(fit(&fields, r#"{"i":1,"x":2}"#).is_some());
        assert!(fit(&fields, r#"{"i":null,"x":null}"#).is_some());
        assert!(
            fit(
                &fields,
                r#"{"i":-9223372036854775808,"x":9007199254740992}"#
            )
            .is_some()
        );
        for text in [
            r#"{"i":1}"#,
            r#"{"i":1,"x":2,"y":3}"#,
            r#"{"i":1.5,"x":2}"#,
            r#"{"i":9223372036854775808,"x":2}"#,
            r#"{"i":1,"x":9007199254740993}"#,
            r#"{"i":1,"x":"2"}"#,
            r#"{"i":1,"x":[2]}"#,
            "[1,2]",
            "3",
        ] {
            assert!(fit(&fields, text).is_none(), "{text}");
        }
    }

    #[test]
    fn accept_and_format_choose_the_encoding() {
        let headers = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
            headers
        };
        let none = HeaderMap::new();
        assert_eq!(requested(None, &none).unwrap(), None);
        assert_eq!(
            requested(Some("format=parquet"), &none).unwrap(),
            Some(Format::Parquet)
        );
        assert_eq!(
            requested(Some("x=1&format=ARROW"), &none).unwrap(),
            Some(Format::Arrow)
        );
        assert_eq!(
            requested(Some("format=ndjson"), &headers(PARQUET_TYPE)).unwrap(),
            None
        );
        for bad in ["format=csv", "format=", "format"] {
            let error = requested(Some(bad), &none).unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::Invalid {
                        code: "unknown_format",
                        ..
                    }
                ),
                "{bad}: {error:?}"
            );
        }
        for (accept, expected) in [
            (PARQUET_TYPE, Some(Format::Parquet)),
            (ARROW_STREAM_TYPE, Some(Format::Arrow)),
            (
                "Application/Vnd.Apache.Parquet; charset=x",
                Some(Format::Parquet),
            ),
            ("text/html, */*;q=0.8", None),
            ("application/json", None),
            (
                "application/vnd.apache.parquet;q=0.5, application/vnd.apache.arrow.stream",
                Some(Format::Arrow),
            ),
            ("*/*, application/vnd.apache.parquet;q=0.1", None),
            (
                "application/vnd.apache.parquet, */*;q=0.1",
                Some(Format::Parquet),
            ),
            ("application/vnd.apache.parquet;q=0", None),
        ] {
            assert_eq!(
                requested(None, &headers(accept)).unwrap(),
                expected,
                "{accept}"
            );
        }
    }

    #[test]
    fn each_page_is_a_row_group_and_later_shapes_are_kept() {
        let pages = [
            vec![
                done(0, r#"{"count":4,"x":0.5}"#),
                failed(1, "trap: unreachable"),
            ],
            vec![done(2, r#"{"count":7,"x":1}"#), done(3, r#"{"other":1}"#)],
            vec![done(4, r#"{"count":9223372036854775807,"x":null}"#)],
        ];
        let layout = Layout::infer(&pages[0]);
        let mut encoder = Encoder::new(Format::Parquet, layout.schema()).unwrap();
        let mut file = Vec::new();
        for page in &pages {
            file.extend(encoder.write(&layout.batch(page).unwrap()).unwrap());
        }
        file.extend(encoder.finish().unwrap());

        let reader =
            ParquetRecordBatchReaderBuilder::try_new(axum::body::Bytes::from(file)).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 3);
        let names: Vec<_> = reader
            .schema()
            .fields()
            .iter()
            .map(|field| field.name().clone())
            .collect();
        assert_eq!(
            names,
            ["index", "count", "x", "output", "agreeing", "error"]
        );
        let batches: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
        let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let index = batch.column(0).as_primitive::<Int32Type>();
        assert_eq!(index.values().to_vec(), [0, 1, 2, 3, 4]);
        let count = batch.column(1).as_primitive::<Int64Type>();
        assert_eq!(
            (0..5)
                .map(|i| count.is_valid(i).then(|| count.value(i)))
                .collect::<Vec<_>>(),
            [Some(4), None, Some(7), None, Some(i64::MAX)]
        );
        let x = batch.column(2).as_primitive::<Float64Type>();
        assert_eq!(
            (0..5)
                .map(|i| x.is_valid(i).then(|| x.value(i)))
                .collect::<Vec<_>>(),
            [Some(0.5), None, Some(1.0), None, None]
        );
        let output = batch.column(3).as_string::<i32>();
        assert_eq!(
            output.iter().collect::<Vec<_>>(),
            [None, None, None, Some(r#"{"other":1}"#), None]
        );
        let agreeing = batch.column(4).as_primitive::<Int32Type>();
        assert_eq!(
            agreeing.iter().collect::<Vec<_>>(),
            [Some(2), None, Some(2), Some(2), Some(2)]
        );
        let error = batch.column(5).as_string::<i32>();
        assert_eq!(
            error.iter().collect::<Vec<_>>(),
            [None, Some("trap: unreachable"), None, None, None]
        );
    }

    #[test]
    fn an_arrow_stream_has_a_batch_per_page() {
        let pages = [
            vec![done(0, "[1]")],
            vec![done(1, r#""x""#), failed(2, "no quorum")],
        ];
        let layout = Layout::infer(&pages[0]);
        assert_eq!(layout, Layout::Json);
        let mut encoder = Encoder::new(Format::Arrow, layout.schema()).unwrap();
        let mut stream = Vec::new();
        for page in &pages {
            stream.extend(encoder.write(&layout.batch(page).unwrap()).unwrap());
        }
        stream.extend(encoder.finish().unwrap());
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(stream), None).unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(batches.len(), 2);
        let output = batches[1].column(1).as_string::<i32>();
        assert_eq!(output.iter().collect::<Vec<_>>(), [Some(r#""x""#), None]);
        assert_eq!(
            batches[1].column(3).as_string::<i32>().value(1),
            "no quorum"
        );
    }
}
