//! What the catalog counts, through the `metrics` facade (a no-op until the process installs a
//! recorder): each write transaction by record and outcome, and how long it took with its
//! fsync. Labels stay bounded: `record` and `outcome` are fixed sets.

use crate::record::RecordKind;
use std::time::Duration;

/// Write transactions, by record (`cluster`, `metadata`, `migration_checkpoint`) and outcome
/// (`committed`, `unchanged`: nothing to write, `failed`).
pub const WRITES: &str = "nodedb_cluster_catalog_writes_total";
/// Time of one write transaction, its fsync included, by record.
pub const WRITE_SECONDS: &str = "nodedb_cluster_catalog_write_duration_seconds";

/// How a write transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    Committed,
    Unchanged,
    Failed,
}

/// Gives every series above its help text; call once after installing a recorder.
pub fn describe() {
    metrics::describe_counter!(WRITES, "catalog write transactions, by record and outcome");
    metrics::describe_histogram!(
        WRITE_SECONDS,
        metrics::Unit::Seconds,
        "time of one catalog write transaction, fsync included"
    );
}

pub(crate) fn write_done(record: RecordKind, outcome: WriteOutcome, elapsed: Duration) {
    let record = match record {
        RecordKind::Format => "format",
        RecordKind::Node => "node",
        RecordKind::Cluster => "cluster",
        RecordKind::Metadata => "metadata",
        RecordKind::MigrationCheckpoint => "migration_checkpoint",
    };
    let outcome = match outcome {
        WriteOutcome::Committed => "committed",
        WriteOutcome::Unchanged => "unchanged",
        WriteOutcome::Failed => "failed",
    };
    metrics::counter!(WRITES, "record" => record, "outcome" => outcome).increment(1);
    metrics::histogram!(WRITE_SECONDS, "record" => record).record(elapsed.as_secs_f64());
}
