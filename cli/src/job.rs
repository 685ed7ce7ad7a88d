//! [`Job`]: a job as the API describes it, and how `grid` prints it (a summary for
//! `grid status`, one table row for `grid jobs`).
//!
//! Fields this CLI does not need to decide anything are optional, so a newer master that adds
//! or drops descriptive fields (a job running an uploaded module has no `kernel`) still works.

use std::fmt::Write as _;

use grid_protocol::states::{ExportState, JobState};
use serde::Deserialize;
use serde_json::Value;

/// One job (`GET /api/v1/jobs/{id}`).
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    /// Job id.
    pub id: i64,
    /// Optional human name.
    #[serde(default)]
    pub name: Option<String>,
    /// Built-in kernel name, for kernel jobs.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Uploaded module id, for module jobs.
    #[serde(default)]
    pub module: Option<Value>,
    /// Where the job is in its life.
    pub state: JobState,
    /// Agreeing distinct workers needed per chunk.
    #[serde(default)]
    pub redundancy: Option<i64>,
    /// Most results gathered per chunk.
    #[serde(default)]
    pub max_replicas: Option<i64>,
    /// Scheduling priority.
    #[serde(default)]
    pub priority: Option<i64>,
    /// Lease length in seconds.
    #[serde(default)]
    pub lease_seconds: Option<i64>,
    /// Chunk counters.
    pub chunks: ChunkCounts,
    /// Replica counters.
    #[serde(default)]
    pub replicas: Option<ReplicaCounts>,
    /// When it was submitted (RFC 3339).
    #[serde(default)]
    pub created_at: Option<String>,
    /// When its first lease was issued.
    #[serde(default)]
    pub started_at: Option<String>,
    /// When it reached a final state.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Its export to a Delta table, when it named a sink.
    #[serde(default)]
    pub export: Option<Export>,
}

/// Where a job's export to its Delta table stands.
#[derive(Debug, Clone, Deserialize)]
pub struct Export {
    /// The table's URI.
    pub sink: String,
    /// Pending, done, failed or skipped.
    pub state: ExportState,
    /// Why the last attempt failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The table version holding the job's rows.
    #[serde(default)]
    pub table_version: Option<i64>,
}

/// How many chunks a job has and how many are finished.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct ChunkCounts {
    /// All chunks.
    pub total: u64,
    /// Accepted chunks.
    pub done: u64,
    /// Failed chunks.
    pub failed: u64,
}

/// What happened to the job's replicas.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct ReplicaCounts {
    /// Leases handed out.
    pub issued: u64,
    /// Results returned.
    pub returned: u64,
    /// Results that disagreed with the accepted outcome.
    pub invalid: u64,
    /// Leases that ended without a result.
    pub expired: u64,
}

/// `GET /api/v1/jobs`.
#[derive(Debug, Deserialize)]
pub struct JobList {
    /// The caller's jobs, newest first.
    pub jobs: Vec<Job>,
}

impl Job {
    /// Whether the job will not change any more.
    pub fn is_final(&self) -> bool {
        self.state.is_finished()
    }

    /// Whether the job ended without success (`failed` or `cancelled`).
    pub fn is_unsuccessful(&self) -> bool {
        matches!(self.state, JobState::Failed | JobState::Cancelled)
    }

    /// What the job runs: the kernel name, or `module ID`.
    pub fn program(&self) -> String {
        match (&self.kernel, &self.module) {
            (Some(kernel), _) => kernel.clone(),
            (None, Some(Value::String(module))) => format!("module {module}"),
            (None, Some(module)) => format!("module {module}"),
            (None, None) => "-".into(),
        }
    }

    /// `done/total`, plus the failed chunks when there are any.
    pub fn progress(&self) -> String {
        let ChunkCounts {
            total,
            done,
            failed,
        } = self.chunks;
        if failed > 0 {
            format!("{done}/{total} ({failed} failed)")
        } else {
            format!("{done}/{total}")
        }
    }

    /// The one-line form: `job 12 (name): done, 10/10 chunks`.
    pub fn headline(&self) -> String {
        let name = match &self.name {
            Some(name) => format!(" ({name})"),
            None => String::new(),
        };
        format!(
            "job {}{name}: {}, {} chunks",
            self.id,
            self.state,
            self.progress()
        )
    }

    /// The multi-line summary `grid status` prints.
    pub fn summary(&self) -> String {
        let mut text = self.headline();
        let mut line = |key: &str, value: String| {
            let _ = write!(text, "\n  {key:<11}{value}");
        };
        line("program", self.program());
        if let Some(replicas) = &self.replicas {
            line(
                "replicas",
                format!(
                    "{} issued, {} returned, {} invalid, {} expired",
                    replicas.issued, replicas.returned, replicas.invalid, replicas.expired
                ),
            );
        }
        let mut settings = Vec::new();
        if let Some(redundancy) = self.redundancy {
            settings.push(format!("redundancy {redundancy}"));
        }
        if let Some(max) = self.max_replicas {
            settings.push(format!("max replicas {max}"));
        }
        if let Some(priority) = self.priority {
            settings.push(format!("priority {priority}"));
        }
        if let Some(lease) = self.lease_seconds {
            settings.push(format!("lease {lease} s"));
        }
        if !settings.is_empty() {
            line("settings", settings.join(", "));
        }
        if let Some(export) = &self.export {
            let mut text = format!("{} to {}", export.state, export.sink);
            if let Some(version) = export.table_version {
                let _ = write!(text, " (table version {version})");
            }
            if let Some(error) = &export.error {
                let _ = write!(text, ": {error}");
            }
            line("export", text);
        }
        for (key, at) in [
            ("created", &self.created_at),
            ("started", &self.started_at),
            ("finished", &self.finished_at),
        ] {
            if let Some(at) = at {
                line(key, at.clone());
            }
        }
        text
    }
}

/// The `grid jobs` table: id, state, done/total, kernel, name; columns padded to fit.
pub fn table(jobs: &[Job]) -> String {
    let header = ["ID", "STATE", "CHUNKS", "KERNEL", "NAME"].map(String::from);
    let rows: Vec<[String; 5]> = jobs
        .iter()
        .map(|job| {
            [
                job.id.to_string(),
                job.state.to_string(),
                job.progress(),
                job.program(),
                job.name.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = [0; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            // Numbers right-aligned, words left-aligned; the last column is not padded.
            match column {
                0 => {
                    let _ = write!(line, "{cell:>width$}");
                }
                4 => line.push_str(cell),
                _ => {
                    let _ = write!(line, "{cell:<width$}");
                }
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn job(value: Value) -> Job {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn reads_the_api_job_and_prints_it() {
        let job = job(json!({
            "id": 12, "name": "primes", "kernel": "primes", "state": "done",
            "redundancy": 2, "max_replicas": 5, "priority": 0, "lease_seconds": 300,
            "chunks": {"total": 10, "done": 10, "failed": 0},
            "replicas": {"issued": 20, "returned": 20, "invalid": 0, "expired": 0},
            "created_at": "2026-01-01T00:00:00Z", "started_at": null, "finished_at": null
        }));
        assert!(job.is_final() && !job.is_unsuccessful());
        assert_eq!(job.headline(), "job 12 (primes): done, 10/10 chunks");
        let summary = job.summary();
        assert!(summary.contains("20 issued, 20 returned"), "{summary}");
        assert!(
            summary.contains("redundancy 2, max replicas 5"),
            "{summary}"
        );
        assert!(!summary.contains("started"), "{summary}");
    }

    #[test]
    fn a_module_job_without_kernel_is_understood() {
        let job = job(json!({
            "id": 3, "module": "ab12", "state": "failed",
            "chunks": {"total": 4, "done": 3, "failed": 1}
        }));
        assert_eq!(job.program(), "module ab12");
        assert_eq!(job.progress(), "3/4 (1 failed)");
        assert!(job.is_unsuccessful());
    }

    #[test]
    fn the_table_lines_up() {
        let jobs = [
            job(
                json!({"id": 7, "kernel": "primes", "state": "running", "name": "big run",
                       "chunks": {"total": 1000, "done": 12, "failed": 0}}),
            ),
            job(json!({"id": 12, "kernel": "echo", "state": "done",
                       "chunks": {"total": 1, "done": 1, "failed": 0}})),
        ];
        assert_eq!(
            table(&jobs),
            "ID  STATE    CHUNKS   KERNEL  NAME\n \
             7  running  12/1000  primes  big run\n\
             12  done     1/1      echo\n"
        );
    }
}
