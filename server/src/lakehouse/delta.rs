//! One job's results into one Delta Lake table, in one commit, exactly once (delta-rs, without
//! DataFusion: files are written by its `RecordBatchWriter` and committed with a transaction
//! identifier).
//!
//! # Rows
//!
//! The columns of the Parquet download ([`crate::export`]), after a `job_id` column (int64,
//! not null): `index`, the output's typed columns or its JSON text in `output`, `agreeing`,
//! `error`. A table is created on first use with the first job's columns. A later job whose
//! typed columns are new to the table adds them (the schema evolves in the same commit, older
//! rows read null there); a job whose columns clash with the table's (a key of another type)
//! is written with its outputs as JSON text in `output`, so the shape of a job's outputs never
//! fails its export. A table that lacks the grid's own columns (made by something else) fails
//! the export with the column named.
//!
//! # Exactly once
//!
//! The commit carries the Delta transaction identifier (a `txn` action) app id
//! `grid-server/job-<id>`, version 1. An export first looks for that identifier in the table,
//! and when a previous attempt committed (its master died before it could record so), it
//! writes nothing again. Two masters committing the same job at the same time conflict in
//! delta-rs's conflict checker (`ConcurrentTransaction`); the loser's retry finds the
//! identifier. Files an interrupted attempt wrote without a commit are no part of the table
//! (Delta's VACUUM deletes them).
//!
//! # Memory
//!
//! Results are read a page at a time ([`crate::limits::RESULTS_PAGE_ROWS`] rows, at most
//! [`crate::limits::RESULTS_PAGE_BYTES`]), and the writer streams each data file to storage
//! in parts (multipart uploads of 5 MiB on S3), so an export holds about one page and one
//! part whatever the size of the job.

use std::sync::{Arc, Once};

use anyhow::{Context, bail};
use arrow::array::{ArrayRef, Int64Array, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use deltalake_core::kernel::engine::arrow_conversion::{TryIntoArrow as _, TryIntoKernel as _};
use deltalake_core::kernel::transaction::CommitProperties;
use deltalake_core::kernel::{StructType, Transaction};
use deltalake_core::logstore::{
    LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore, logstore_factories,
};
use deltalake_core::writer::{DeltaWriter as _, RecordBatchWriter, WriteMode};
use deltalake_core::{DeltaResult, DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures_util::StreamExt;
use url::Url;

use super::SinkPolicy;
use crate::export::Layout;
use crate::limits::{RESULTS_PAGE_BYTES, RESULTS_PAGE_ROWS};
use crate::store::Store;

/// The transaction identifier of job `job_id`'s commit.
pub fn app_id(job_id: i64) -> String {
    format!("grid-server/job-{job_id}")
}

/// What an export did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// The table version holding the job's rows: its commit's, or (`already`) the version at
    /// which the identifier was found.
    pub table_version: i64,
    /// Rows appended (0 when `already`).
    pub rows: u64,
    /// The table held the job already (an earlier attempt committed).
    pub already: bool,
}

/// Append job `job_id`'s results to the Delta table at `sink` (admitted by `policy`), unless
/// the table holds them already.
pub async fn export_job(
    store: Arc<dyn Store>,
    policy: &SinkPolicy,
    job_id: i64,
    sink: &str,
) -> anyhow::Result<Exported> {
    let url = Url::parse(sink).with_context(|| format!("sink {sink}"))?;
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
    {
        // delta-rs opens only directories that exist; a new table is a new one.
        tokio::fs::create_dir_all(&path)
            .await
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    let mut table = open(policy, &url)?;
    let exists = match table.load().await {
        Ok(()) => true,
        Err(DeltaTableError::NotATable(_)) => false,
        Err(error) => return Err(error).with_context(|| format!("cannot open {url}")),
    };
    let app = app_id(job_id);
    if exists
        && table
            .snapshot()?
            .transaction_version(table.log_store().as_ref(), &app)
            .await?
            .is_some()
    {
        return Ok(Exported {
            table_version: version_of(&table),
            rows: 0,
            already: true,
        });
    }

    let mut pages = std::pin::pin!(crate::export::pages(move |after| {
        let store = store.clone();
        async move {
            store
                .results_page(job_id, after, RESULTS_PAGE_ROWS, RESULTS_PAGE_BYTES)
                .await
                .map_err(crate::error::Error::from)
        }
    }));
    let first = pages.next().await.transpose()?.unwrap_or_default();

    let existing: Option<SchemaRef> = if exists {
        let schema: Schema = table.snapshot()?.schema().as_ref().try_into_arrow()?;
        Some(Arc::new(schema))
    } else {
        None
    };
    let (layout, target) = plan(Layout::infer(&first), existing.as_deref())?;
    if !exists {
        let columns: StructType = target.as_ref().try_into_kernel()?;
        table = table
            .create()
            .with_table_name("grid_results")
            .with_comment("verified results of grid-server jobs, one row per chunk")
            .with_columns(columns.fields().cloned())
            .await
            .with_context(|| format!("cannot create the Delta table {url}"))?;
    }
    let mode = match &existing {
        Some(schema) if schema.fields().len() != target.fields().len() => WriteMode::MergeSchema,
        _ => WriteMode::Default,
    };
    let mut writer = RecordBatchWriter::for_table(&table)?.with_commit_properties(
        CommitProperties::default().with_application_transaction(Transaction::new(&app, 1)),
    );
    let mut rows = 0u64;
    let mut next = Some(first);
    while let Some(page) = next {
        if !page.is_empty() {
            let batch = fit(job_id, &layout.batch(&page)?, &target)?;
            rows += batch.num_rows() as u64;
            writer.write_with_mode(batch, mode).await?;
        }
        next = pages.next().await.transpose()?;
    }
    let version = writer
        .flush_and_commit(&mut table)
        .await
        .with_context(|| format!("cannot commit to {url}"))?;
    Ok(Exported {
        table_version: i64::try_from(version).unwrap_or(i64::MAX),
        rows,
        already: false,
    })
}

/// The table at `url`, not loaded yet: `s3://` through the master's own S3 settings.
fn open(policy: &SinkPolicy, url: &Url) -> anyhow::Result<DeltaTable> {
    let builder = DeltaTableBuilder::from_url(url.clone())?;
    let builder = match policy.s3_store(url)? {
        Some(store) => {
            register_s3_log_store();
            builder.with_storage_backend(store, url.clone())
        }
        None => builder,
    };
    Ok(builder.build()?)
}

fn version_of(table: &DeltaTable) -> i64 {
    table
        .version()
        .map_or(0, |version| i64::try_from(version).unwrap_or(i64::MAX))
}

/// delta-rs knows `file://` and `memory://` by itself; `s3://` tables get its default log
/// store, which commits with a conditional put (`If-None-Match: *`, which S3 and the
/// S3-compatible servers support), so no locking service is needed.
fn register_s3_log_store() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        if let Ok(scheme) = Url::parse("s3://") {
            logstore_factories().insert(scheme, Arc::new(ConditionalPutLogStore));
        }
    });
}

struct ConditionalPutLogStore;

impl LogStoreFactory for ConditionalPutLogStore {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// The job's columns: `job_id`, then those of the results download.
fn job_schema(layout: &Layout) -> Schema {
    let mut fields = vec![Arc::new(Field::new("job_id", DataType::Int64, false))];
    fields.extend(layout.schema().fields().iter().cloned());
    Schema::new(fields)
}

/// The layout the job is written with and the schema of the rows: the job's own columns on a
/// new table; on an existing one, the table's columns and then the job's new ones (nullable),
/// or, when the job's typed columns clash with the table's, its outputs as JSON text.
fn plan(layout: Layout, existing: Option<&Schema>) -> anyhow::Result<(Layout, SchemaRef)> {
    let Some(table) = existing else {
        return Ok((layout.clone(), Arc::new(job_schema(&layout))));
    };
    let typed = job_schema(&layout);
    if clash(&typed, table).is_none() {
        return Ok((layout, Arc::new(merged(table, &typed))));
    }
    let json = job_schema(&Layout::Json);
    if let Some(why) = clash(&json, table) {
        bail!("the table's schema cannot hold grid results: {why}");
    }
    Ok((Layout::Json, Arc::new(merged(table, &json))))
}

/// Why rows of `job` cannot go into a table of schema `table`, if they cannot.
fn clash(job: &Schema, table: &Schema) -> Option<String> {
    for field in job.fields() {
        if let Ok(column) = table.field_with_name(field.name())
            && (column.data_type() != field.data_type()
                || (!column.is_nullable() && field.is_nullable()))
        {
            return Some(format!(
                "column `{}` is {}{} in the table, the job's is {}",
                field.name(),
                column.data_type(),
                if column.is_nullable() {
                    ""
                } else {
                    " not null"
                },
                field.data_type()
            ));
        }
    }
    table
        .fields()
        .iter()
        .find(|column| !column.is_nullable() && job.field_with_name(column.name()).is_err())
        .map(|column| format!("the table's column `{}` is not null", column.name()))
}

/// The table's columns, then the job's that it lacks (nullable: older rows have none).
fn merged(table: &Schema, job: &Schema) -> Schema {
    let mut fields: Vec<Arc<Field>> = table.fields().iter().cloned().collect();
    for field in job.fields() {
        if table.field_with_name(field.name()).is_err() {
            fields.push(Arc::new(field.as_ref().clone().with_nullable(true)));
        }
    }
    Schema::new(fields)
}

/// A page's batch (of the download's columns) as rows of `target`: `job_id` set, the
/// table's columns that the job lacks null.
fn fit(job_id: i64, batch: &RecordBatch, target: &SchemaRef) -> anyhow::Result<RecordBatch> {
    let rows = batch.num_rows();
    let columns: Vec<ArrayRef> = target
        .fields()
        .iter()
        .map(|field| match field.name().as_str() {
            "job_id" => Arc::new(Int64Array::from_value(job_id, rows)) as ArrayRef,
            name => batch
                .column_by_name(name)
                .cloned()
                .unwrap_or_else(|| new_null_array(field.data_type(), rows)),
        })
        .collect();
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(fields: &[(&str, DataType)]) -> Schema {
        let mut all = vec![
            Field::new("job_id", DataType::Int64, false),
            Field::new("index", DataType::Int32, false),
        ];
        all.extend(
            fields
                .iter()
                .map(|(name, kind)| Field::new(*name, kind.clone(), true)),
        );
        all.push(Field::new("output", DataType::Utf8, true));
        all.push(Field::new("agreeing", DataType::Int32, true));
        all.push(Field::new("error", DataType::Utf8, true));
        Schema::new(all)
    }

    #[test]
    fn new_columns_are_added_and_clashing_ones_fall_back_to_json_text() {
        let table = typed(&[("count", DataType::Int64)]);
        let job = typed(&[("count", DataType::Int64), ("ms", DataType::Float64)]);
        assert_eq!(clash(&job, &table), None);
        let merged = merged(&table, &job);
        let names: Vec<&str> = merged.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "job_id", "index", "count", "output", "agreeing", "error", "ms"
            ]
        );

        let other = typed(&[("count", DataType::Utf8)]);
        assert!(clash(&other, &table).is_some_and(|why| why.contains("`count`")));
        let json = job_schema(&Layout::Json);
        assert_eq!(clash(&json, &table), None);

        let foreign = Schema::new(vec![Field::new("id", DataType::Utf8, false)]);
        assert!(clash(&json, &foreign).is_some_and(|why| why.contains("`id`")));
    }

    #[test]
    fn rows_fit_the_table_with_nulls_where_the_job_has_no_column() {
        let target = Arc::new(typed(&[("count", DataType::Int64)]));
        let page = job_schema(&Layout::Json);
        let page = Arc::new(Schema::new(page.fields()[1..].to_vec()));
        let batch = RecordBatch::try_new(
            page,
            vec![
                Arc::new(arrow::array::Int32Array::from(vec![0, 1])),
                Arc::new(arrow::array::StringArray::from(vec![Some("[1]"), None])),
                Arc::new(arrow::array::Int32Array::from(vec![Some(2), None])),
                Arc::new(arrow::array::StringArray::from(vec![None, Some("boom")])),
            ],
        )
        .expect("batch");
        let rows = fit(7, &batch, &target).expect("fits");
        assert_eq!(rows.num_rows(), 2);
        assert_eq!(rows.column_by_name("count").expect("count").null_count(), 2);
        let ids = rows
            .column_by_name("job_id")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
            .expect("job_id");
        assert_eq!(ids.values().as_ref(), [7, 7]);
    }
}
