//! The report of `chaos`: one row per nemesis stage (operations ok / failed / unknown, the
//! longest time a data group went without an acknowledged write, the recovery time after the
//! heal, the checker's verdict on that stage's history), then the checks table.

use super::probes::Recovery;
use crate::report::{self, CheckResult, Report, Status};
use crate::workload::{Counts, GroupWrite};
use std::fmt::Write as _;
use std::time::Duration;

/// The longest stretch, in microseconds of the stage's clock, a data group had no write
/// acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailability {
    pub group: u32,
    pub window: Duration,
    /// When it began, since the stage started.
    pub from: Duration,
}

/// What the report shows of one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageRow {
    pub nemesis: &'static str,
    pub faults: usize,
    pub load: Duration,
    pub counts: Counts,
    pub longest: Option<Unavailability>,
    pub recovery: Recovery,
    pub verdict: Status,
}

/// Everything the report shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChaosReport {
    pub seed: u64,
    pub nodes: u32,
    pub groups: u32,
    pub stages: Vec<StageRow>,
    pub checks: Vec<CheckResult>,
}

/// The longest time any of the data groups `1..=groups` went without an acknowledged write
/// completing, between the start of the load and `load_end`; `writes` are on the stage's
/// clock. A group without any write is unavailable for the whole load.
pub fn longest_unavailability(
    writes: &[GroupWrite],
    groups: u32,
    load_end: Duration,
) -> Option<Unavailability> {
    let end_us = load_end.as_micros() as u64;
    let mut longest: Option<Unavailability> = None;
    for group in 1..=groups {
        let mut completions: Vec<u64> = writes
            .iter()
            .filter(|write| write.group == group && write.completed_at_us <= end_us)
            .map(|write| write.completed_at_us)
            .collect();
        completions.sort_unstable();
        completions.push(end_us);
        let mut previous = 0;
        for completion in completions {
            let window = Duration::from_micros(completion - previous);
            if longest.is_none_or(|worst| window > worst.window) {
                longest = Some(Unavailability {
                    group,
                    window,
                    from: Duration::from_micros(previous),
                });
            }
            previous = completion;
        }
    }
    longest
}

impl Report for ChaosReport {
    fn checks(&self) -> &[CheckResult] {
        &self.checks
    }

    fn render_into(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "==== chaos report (seed {}) ====", self.seed)?;
        writeln!(
            out,
            "{} nodes in their own network namespaces, {} data groups",
            self.nodes, self.groups
        )?;
        writeln!(
            out,
            "\n{:<10} {:>6} {:>6} {:>7} {:>7} {:>7} {:>20} {:>10} {:>12} {:<8}",
            "nemesis",
            "faults",
            "load s",
            "ok",
            "failed",
            "unknown",
            "longest unavail.",
            "recovery",
            "all vShards",
            "checker"
        )?;
        for stage in &self.stages {
            let longest = match stage.longest {
                Some(worst) => format!("{} ms (group {})", worst.window.as_millis(), worst.group),
                None => "-".to_string(),
            };
            let every_vshard = match &stage.recovery {
                Recovery::Recovered {
                    every_vshard: Some(every_vshard),
                    ..
                } => format!("{} ms", every_vshard.as_millis()),
                Recovery::Recovered { .. } => "-".to_string(),
                Recovery::Stuck { .. } => "never".to_string(),
            };
            let recovery = match &stage.recovery {
                Recovery::Recovered { every_group, .. } => {
                    format!("{} ms", every_group.as_millis())
                }
                Recovery::Stuck { unwritten, .. } => format!("{} stuck", unwritten.len()),
            };
            let verdict = match stage.verdict {
                Status::Pass => "linearizable",
                Status::Fail => "FAILED",
                Status::Skip => "not checked",
            };
            writeln!(
                out,
                "{:<10} {:>6} {:>6.1} {:>7} {:>7} {:>7} {longest:>20} {recovery:>10} \
                 {every_vshard:>12} {verdict:<8}",
                stage.nemesis,
                stage.faults,
                stage.load.as_secs_f64(),
                stage.counts.ok,
                stage.counts.failed,
                stage.counts.unknown,
            )?;
        }
        writeln!(
            out,
            "(longest unavail.: longest time a data group acknowledged no write during the \
             stage's load; recovery: faults healed -> every data group acknowledged a write; all \
             vShards (last stage): -> each of the 1024 vShards did, one write each from 32 writers)"
        )?;
        report::write_checks(out, &self.checks)?;
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        writeln!(out, "\n{verdict}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(group: u32, completed_ms: u64) -> GroupWrite {
        GroupWrite {
            group,
            invoked_at_us: completed_ms.saturating_sub(5) * 1000,
            completed_at_us: completed_ms * 1000,
        }
    }

    #[test]
    fn the_longest_gap_of_any_group_is_found() {
        let writes = vec![
            write(1, 100),
            write(2, 150),
            write(1, 300),
            write(2, 2_400),
            write(1, 700),
            write(2, 2_900),
        ];
        let worst = longest_unavailability(&writes, 2, Duration::from_secs(3)).unwrap();
        assert_eq!(
            worst,
            Unavailability {
                group: 1,
                window: Duration::from_millis(2_300),
                from: Duration::from_millis(700),
            }
        );
        // Writes after the end of the load do not count.
        let worst = longest_unavailability(&writes, 2, Duration::from_millis(2_500)).unwrap();
        assert_eq!(
            (worst.group, worst.window),
            (2, Duration::from_millis(2_250))
        );
    }

    #[test]
    fn a_group_that_never_wrote_was_down_the_whole_load() {
        let writes = vec![write(1, 100), write(1, 200)];
        let worst = longest_unavailability(&writes, 3, Duration::from_secs(5)).unwrap();
        assert_eq!(worst.group, 2);
        assert_eq!(worst.window, Duration::from_secs(5));
        assert_eq!(longest_unavailability(&[], 0, Duration::from_secs(5)), None);
    }

    #[test]
    fn the_report_has_a_row_per_stage_and_the_checks() {
        let row = |nemesis, recovery, verdict| StageRow {
            nemesis,
            faults: 3,
            load: Duration::from_secs(24),
            counts: Counts {
                ok: 900,
                failed: 40,
                unknown: 7,
            },
            longest: Some(Unavailability {
                group: 4,
                window: Duration::from_millis(3_210),
                from: Duration::from_secs(2),
            }),
            recovery,
            verdict,
        };
        let report = ChaosReport {
            seed: 9,
            nodes: 5,
            groups: 8,
            stages: vec![
                row(
                    "partition",
                    Recovery::Recovered {
                        every_group: Duration::from_millis(1_234),
                        every_vshard: Some(Duration::from_millis(4_321)),
                    },
                    Status::Pass,
                ),
                row(
                    "kill",
                    Recovery::Stuck {
                        unwritten: vec![1, 2],
                        last_error: "503".to_string(),
                    },
                    Status::Fail,
                ),
            ],
            checks: vec![CheckResult::fail("recovered (kill)", "2 vShards unwritten")],
        };
        let text = report.render();
        assert!(text.contains("seed 9"), "{text}");
        assert!(text.contains("partition"), "{text}");
        assert!(text.contains("3210 ms (group 4)"), "{text}");
        assert!(text.contains("1234 ms"), "{text}");
        assert!(text.contains("4321 ms"), "{text}");
        assert!(text.contains("2 stuck"), "{text}");
        assert!(text.contains("FAILED"), "{text}");
        assert!(text.contains("recovered (kill)"), "{text}");
        assert!(!report.passed());
        assert!(text.trim_end().ends_with("FAILED"), "{text}");
    }
}
