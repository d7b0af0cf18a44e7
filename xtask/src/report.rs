//! The final report of `test-cluster`: one row per check (pass, FAIL, or skipped with the
//! reason), the failover table with each unavailability window, and the operation counts.
//! A run passes only when no check failed; a skipped check says so instead of pretending.

use crate::workload::Counts;
use std::fmt::Write as _;
use std::time::Duration;

/// The verdict of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

/// One row of the checks table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub name: &'static str,
    pub status: Status,
    /// One or more lines; the first is shown in the table, the rest below it.
    pub detail: String,
}

/// One row of the failover table: a group a killed node led.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverRow {
    pub fault: String,
    pub node: u64,
    pub group: u32,
    /// Kill to the first successful write invoked after it on this group (data groups), or
    /// kill to another node being seen leading group 0 (metadata group); `None`: never.
    pub window: Option<Duration>,
    /// Kill to restart of the node.
    pub down_for: Duration,
}

/// Everything the report shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: u32,
    pub groups: u32,
    pub workload: Duration,
    pub counts: Counts,
    pub checks: Vec<CheckResult>,
    pub failovers: Vec<FailoverRow>,
}

impl CheckResult {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            status: Status::Pass,
            detail: detail.into(),
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            status: Status::Fail,
            detail: detail.into(),
        }
    }

    pub fn skip(name: &'static str, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            status: Status::Skip,
            detail: detail.into(),
        }
    }
}

/// The final report of a run: its checks, and how it reads.
pub trait Report {
    fn checks(&self) -> &[CheckResult];

    fn render_into(&self, out: &mut String) -> std::fmt::Result;

    /// True when no check failed.
    fn passed(&self) -> bool {
        self.checks()
            .iter()
            .all(|check| check.status != Status::Fail)
    }

    /// The report as plain text.
    fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Report for RunReport {
    fn checks(&self) -> &[CheckResult] {
        &self.checks
    }

    fn render_into(&self, out: &mut String) -> std::fmt::Result {
        let seconds = self.workload.as_secs_f64().max(0.001);
        writeln!(out, "==== test-cluster report (seed {}) ====", self.seed)?;
        writeln!(
            out,
            "{} nodes, {} data groups, workload {:.1}s: {} ops ({:.0}/s), ok {}, failed {}, \
             unknown {}",
            self.nodes,
            self.groups,
            self.workload.as_secs_f64(),
            self.counts.total(),
            self.counts.total() as f64 / seconds,
            self.counts.ok,
            self.counts.failed,
            self.counts.unknown
        )?;
        write_checks(out, &self.checks)?;
        if !self.failovers.is_empty() {
            writeln!(
                out,
                "\n{:<36} {:>4} {:>5} {:>10} {:>12}",
                "failover", "node", "group", "down ms", "window ms"
            )?;
            for row in &self.failovers {
                let window = match row.window {
                    Some(window) => window.as_millis().to_string(),
                    None => "never".to_string(),
                };
                writeln!(
                    out,
                    "{:<36} {:>4} {:>5} {:>10} {:>12}",
                    row.fault,
                    row.node,
                    row.group,
                    row.down_for.as_millis(),
                    window
                )?;
            }
            writeln!(
                out,
                "(window: data group = kill to the first successful write invoked after it; \
                 group 0 = kill to a new leader reported by any node while the old one is down)"
            )?;
        }
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        writeln!(out, "\n{verdict}")
    }
}

/// The checks table: a header, then one row per check, extra detail lines indented below.
pub fn write_checks(out: &mut String, checks: &[CheckResult]) -> std::fmt::Result {
    writeln!(out, "\n{:<26} {:<6} detail", "check", "result")?;
    for check in checks {
        let mut lines = check.detail.lines();
        let first = lines.next().unwrap_or("");
        let status = match check.status {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        writeln!(out, "{:<26} {status:<6} {first}", check.name)?;
        for line in lines {
            writeln!(out, "{:<33} {line}", "")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(checks: Vec<CheckResult>) -> RunReport {
        RunReport {
            seed: 42,
            nodes: 3,
            groups: 8,
            workload: Duration::from_secs(10),
            counts: Counts {
                ok: 900,
                failed: 80,
                unknown: 20,
            },
            checks,
            failovers: vec![
                FailoverRow {
                    fault: "kill leader of group 3".to_string(),
                    node: 2,
                    group: 3,
                    window: Some(Duration::from_millis(812)),
                    down_for: Duration::from_millis(3000),
                },
                FailoverRow {
                    fault: "kill leader of group 0 (metadata)".to_string(),
                    node: 1,
                    group: 0,
                    window: None,
                    down_for: Duration::from_millis(2000),
                },
            ],
        }
    }

    #[test]
    fn a_run_passes_only_without_failed_checks() {
        let passing = report(vec![
            CheckResult::pass("linearizable", "200 keys"),
            CheckResult::skip("replica state hashes", "skipped: not exposed"),
        ]);
        assert!(passing.passed());
        let failing = report(vec![
            CheckResult::pass("linearizable", "200 keys"),
            CheckResult::fail("membership agreement", "node 2 differs"),
        ]);
        assert!(!failing.passed());
    }

    #[test]
    fn the_table_shows_every_check_failover_and_count() {
        let text = report(vec![
            CheckResult::pass("linearizable", "200 keys, 1000 ops\nsecond line"),
            CheckResult::skip(
                "replica state hashes",
                "skipped: not exposed by /v1/cluster",
            ),
            CheckResult::fail("membership agreement", "node 2 reports routing_version 4"),
        ])
        .render();
        assert!(text.contains("seed 42"), "{text}");
        assert!(
            text.contains("1000 ops (100/s), ok 900, failed 80, unknown 20"),
            "{text}"
        );
        assert!(
            text.contains("linearizable               pass   200 keys, 1000 ops"),
            "{text}"
        );
        assert!(
            text.contains("\n                                  second line\n"),
            "{text}"
        );
        assert!(
            text.contains("skip   skipped: not exposed by /v1/cluster"),
            "{text}"
        );
        assert!(text.contains("FAIL   node 2 reports"), "{text}");
        assert!(text.contains("kill leader of group 3"), "{text}");
        assert!(text.contains("812"), "{text}");
        assert!(text.contains("never"), "{text}");
        assert!(text.trim_end().ends_with("FAILED"), "{text}");
    }
}
