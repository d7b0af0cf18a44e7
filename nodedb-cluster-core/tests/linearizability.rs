//! Hand-written histories with a known answer: each pins one rule of the checker (real-time
//! order, CAS answers, failed and unknown outcomes, deletes, final reads, limits).

// One module named after the checker, so that `cargo test -p nodedb-cluster-core linearizability`
// selects these tests.
mod linearizability_cases {
    use nodedb_cluster_core::linearizability::{
        CheckLimits, History, HistoryError, HistoryRecorder, OpId, OpKind, Outcome, Report,
        Verdict, check, check_with_final_reads, check_with_limits,
    };

    const KEY: &str = "k";

    /// A history on one key, written one operation per line.
    #[derive(Default)]
    struct Script {
        recorder: HistoryRecorder,
    }

    impl Script {
        fn put(&mut self, client: u64, value: &str, invoked: u64, completed: u64) -> &mut Self {
            self.op(
                client,
                OpKind::put(value),
                invoked,
                completed,
                Outcome::done(),
            )
        }

        fn get(
            &mut self,
            client: u64,
            seen: Option<&str>,
            invoked: u64,
            completed: u64,
        ) -> &mut Self {
            self.op(client, OpKind::Get, invoked, completed, Outcome::read(seen))
        }

        fn delete(&mut self, client: u64, invoked: u64, completed: u64) -> &mut Self {
            self.op(client, OpKind::Delete, invoked, completed, Outcome::done())
        }

        #[allow(clippy::too_many_arguments)]
        fn cas(
            &mut self,
            client: u64,
            expected: Option<&str>,
            new: &str,
            swapped: bool,
            current: Option<&str>,
            invoked: u64,
            completed: u64,
        ) -> &mut Self {
            let kind = OpKind::cas(expected, new);
            self.op(
                client,
                kind,
                invoked,
                completed,
                Outcome::cas(swapped, current),
            )
        }

        /// An operation with the given outcome (e.g. `Failed`, `Unknown`).
        fn op(
            &mut self,
            client: u64,
            kind: OpKind,
            invoked: u64,
            completed: u64,
            outcome: Outcome,
        ) -> &mut Self {
            self.recorder
                .record(client, KEY, kind, invoked, completed, outcome)
                .expect("well-formed operation");
            self
        }

        fn check(&self) -> Report {
            check(&self.recorder.history())
        }
    }

    fn assert_linearizable(report: &Report) {
        assert!(
            report.is_linearizable(),
            "expected linearizable, got:\n{report}"
        );
    }

    /// Asserts failure on `KEY` and returns the explanation.
    fn assert_not_linearizable(report: &Report) -> String {
        match &report.verdict {
            Verdict::NotLinearizable {
                key, explanation, ..
            } => {
                assert_eq!(key, KEY.as_bytes());
                explanation.clone()
            }
            other => panic!("expected not linearizable, got {other:?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        let report = check(&History::default());
        assert_linearizable(&report);
        assert_eq!((report.keys_checked, report.ops_checked), (0, 0));
    }

    #[test]
    fn sequential_history_passes() {
        let report = Script::default()
            .get(1, None, 0, 1)
            .put(1, "a", 2, 3)
            .get(2, Some("a"), 4, 5)
            .put(2, "b", 6, 7)
            .get(1, Some("b"), 8, 9)
            .delete(1, 10, 11)
            .get(2, None, 12, 13)
            .check();
        assert_linearizable(&report);
        assert_eq!(
            (report.keys_checked, report.ops_checked, report.ops_ignored),
            (1, 7, 0)
        );
    }

    #[test]
    fn stale_read_after_a_completed_write_fails() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .put(1, "b", 2, 3)
            .get(2, Some("a"), 4, 5)
            .check();
        let explanation = assert_not_linearizable(&report);
        assert!(
            explanation.contains("observed \"a\" but the value is \"b\""),
            "{explanation}"
        );
        assert!(
            explanation.contains("#2 client 2 [4, 5] get -> \"a\""),
            "{explanation}"
        );
    }

    #[test]
    fn read_concurrent_with_a_write_may_see_either_value() {
        for seen in ["a", "b"] {
            let report = Script::default()
                .put(1, "a", 0, 1)
                .put(1, "b", 2, 10)
                .get(2, Some(seen), 3, 4)
                .check();
            assert_linearizable(&report);
        }
    }

    #[test]
    fn reads_cannot_go_back_to_an_older_value() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .put(1, "b", 2, 10)
            .get(2, Some("b"), 3, 4)
            .get(3, Some("a"), 5, 6)
            .check();
        assert_not_linearizable(&report);
    }

    #[test]
    fn touching_intervals_count_as_concurrent() {
        let report = Script::default()
            .put(1, "a", 0, 5)
            .get(2, None, 5, 6)
            .check();
        assert_linearizable(&report);
    }

    #[test]
    fn read_of_a_value_before_its_write_was_invoked_fails() {
        let report = Script::default()
            .get(2, Some("a"), 0, 1)
            .put(1, "a", 2, 3)
            .check();
        assert_not_linearizable(&report);
    }

    #[test]
    fn cas_that_swapped_passes() {
        let report = Script::default()
            .cas(1, None, "a", true, Some("a"), 0, 1)
            .cas(2, Some("a"), "b", true, Some("b"), 2, 3)
            .cas(1, Some("a"), "c", false, Some("b"), 4, 5)
            .get(2, Some("b"), 6, 7)
            .check();
        assert_linearizable(&report);
    }

    #[test]
    fn cas_reporting_the_value_before_a_swap_is_accepted() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .cas(2, Some("a"), "b", true, Some("a"), 2, 3)
            .get(1, Some("b"), 4, 5)
            .check();
        assert_linearizable(&report);
    }

    #[test]
    fn cas_that_did_not_swap_although_the_value_matched_fails() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .cas(2, Some("a"), "b", false, Some("a"), 2, 3)
            .check();
        let explanation = assert_not_linearizable(&report);
        assert!(
            explanation.contains("answered not swapped"),
            "{explanation}"
        );
    }

    #[test]
    fn cas_that_swapped_on_the_wrong_value_fails() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .cas(2, Some("x"), "b", true, Some("b"), 2, 3)
            .check();
        let explanation = assert_not_linearizable(&report);
        assert!(
            explanation.contains("not the expected \"x\""),
            "{explanation}"
        );
    }

    #[test]
    fn cas_reporting_a_wrong_current_value_fails() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .cas(2, Some("x"), "b", false, Some("z"), 2, 3)
            .check();
        assert_not_linearizable(&report);
    }

    #[test]
    fn concurrent_cas_only_one_may_win() {
        let both_won = Script::default()
            .put(1, "a", 0, 1)
            .cas(2, Some("a"), "b", true, Some("b"), 2, 10)
            .cas(3, Some("a"), "c", true, Some("c"), 2, 10)
            .check();
        assert_not_linearizable(&both_won);
        let one_won = Script::default()
            .put(1, "a", 0, 1)
            .cas(2, Some("a"), "b", false, Some("c"), 2, 10)
            .cas(3, Some("a"), "c", true, Some("c"), 2, 10)
            .check();
        assert_linearizable(&one_won);
    }

    #[test]
    fn lost_acknowledged_write_fails() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .get(2, None, 2, 3)
            .check();
        let explanation = assert_not_linearizable(&report);
        assert!(
            explanation.contains("observed absent but the value is \"a\""),
            "{explanation}"
        );
    }

    #[test]
    fn unknown_write_that_later_becomes_visible_passes() {
        let report = Script::default()
            .op(1, OpKind::put("a"), 0, 5, Outcome::Unknown)
            .get(2, None, 6, 7)
            .get(2, Some("a"), 100, 101)
            .check();
        assert_linearizable(&report);
    }

    #[test]
    fn unknown_write_never_visible_passes_and_is_ignored() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .op(1, OpKind::put("b"), 2, 5, Outcome::Unknown)
            .get(2, Some("a"), 6, 7)
            .check();
        assert_linearizable(&report);
        assert_eq!((report.ops_checked, report.ops_ignored), (2, 1));
    }

    #[test]
    fn unknown_write_cannot_be_undone_once_visible() {
        let report = Script::default()
            .op(1, OpKind::put("a"), 0, 5, Outcome::Unknown)
            .get(2, Some("a"), 6, 7)
            .get(2, None, 8, 9)
            .check();
        assert_not_linearizable(&report);
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_it_was_invoked() {
        let report = Script::default()
            .get(2, Some("a"), 0, 1)
            .op(1, OpKind::put("a"), 2, 5, Outcome::Unknown)
            .check();
        assert_not_linearizable(&report);
    }

    #[test]
    fn never_completed_operation_is_unknown() {
        let mut recorder = HistoryRecorder::new();
        recorder.invoke(1, KEY, OpKind::put("a"), 0);
        let read = recorder.invoke(2, KEY, OpKind::Get, 10);
        recorder
            .complete(read, 11, Outcome::read(Some("a")))
            .unwrap();
        assert_linearizable(&check(&recorder.finish()));
    }

    #[test]
    fn unknown_cas_may_swap_later() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .op(2, OpKind::cas(Some("a"), "b"), 2, 3, Outcome::Unknown)
            .get(1, Some("a"), 4, 5)
            .get(1, Some("b"), 6, 7)
            .check();
        assert_linearizable(&report);
    }

    #[test]
    fn failed_write_that_becomes_visible_fails() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .op(1, OpKind::put("b"), 2, 3, Outcome::Failed)
            .get(2, Some("b"), 4, 5)
            .check();
        assert_not_linearizable(&report);
        assert_eq!(report.ops_ignored, 1);
    }

    #[test]
    fn failed_write_that_stays_invisible_passes() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .op(1, OpKind::put("b"), 2, 3, Outcome::Failed)
            .get(2, Some("a"), 4, 5)
            .check();
        assert_linearizable(&report);
    }

    #[test]
    fn delete_makes_the_key_absent() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .delete(2, 2, 3)
            .get(1, None, 4, 5)
            .delete(2, 6, 7)
            .get(1, None, 8, 9)
            .check();
        assert_linearizable(&report);
        let resurrected = Script::default()
            .put(1, "a", 0, 1)
            .delete(2, 2, 3)
            .get(1, Some("a"), 4, 5)
            .check();
        assert_not_linearizable(&resurrected);
    }

    #[test]
    fn read_concurrent_with_a_delete_may_see_either() {
        for seen in [Some("a"), None] {
            let report = Script::default()
                .put(1, "a", 0, 1)
                .delete(2, 2, 10)
                .get(1, seen, 3, 4)
                .check();
            assert_linearizable(&report);
        }
    }

    #[test]
    fn unknown_delete_that_becomes_visible_passes() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .op(2, OpKind::Delete, 2, 3, Outcome::Unknown)
            .get(1, Some("a"), 4, 5)
            .get(1, None, 6, 7)
            .check();
        assert_linearizable(&report);
    }

    #[test]
    fn keys_are_independent_registers() {
        let mut recorder = HistoryRecorder::new();
        recorder
            .record(1, "x", OpKind::put("a"), 0, 1, Outcome::done())
            .unwrap();
        recorder
            .record(1, "y", OpKind::Get, 2, 3, Outcome::read(None::<&str>))
            .unwrap();
        recorder
            .record(2, "x", OpKind::Get, 2, 3, Outcome::read(Some("a")))
            .unwrap();
        let report = check(&recorder.history());
        assert_linearizable(&report);
        assert_eq!(report.keys_checked, 2);

        recorder
            .record(2, "y", OpKind::Get, 4, 5, Outcome::read(Some("a")))
            .unwrap();
        let report = check(&recorder.history());
        match &report.verdict {
            Verdict::NotLinearizable { key, .. } => assert_eq!(key, b"y"),
            other => panic!("expected key y to fail, got {other:?}"),
        }
        assert_eq!(report.problems.len(), 1);
    }

    #[test]
    fn final_reads_catch_a_lost_acknowledged_write() {
        let history = Script::default()
            .put(1, "a", 0, 1)
            .op(2, OpKind::put("b"), 2, 3, Outcome::Unknown)
            .op(3, OpKind::put("c"), 2, 3, Outcome::Failed)
            .recorder
            .history();
        for (seen, ok) in [
            (Some("a"), true),
            (Some("b"), true),
            (Some("c"), false),
            (None, false),
        ] {
            let report = check_with_final_reads(&history, [(KEY, seen)]);
            assert_eq!(
                report.is_linearizable(),
                ok,
                "final value {seen:?}:\n{report}"
            );
        }
    }

    #[test]
    fn exceeding_the_state_bound_is_undecided_not_a_pass() {
        let mut script = Script::default();
        for index in 0..4 {
            script.put(1, &format!("v{index}"), index * 2, index * 2 + 1);
        }
        let limits = CheckLimits {
            explored_states_max: 2,
        };
        let report = check_with_limits(&script.recorder.history(), limits);
        assert!(!report.is_linearizable());
        assert!(
            matches!(report.verdict, Verdict::Unknown { .. }),
            "{report}"
        );
        assert!(
            report.to_string().contains("explored_states_max"),
            "{report}"
        );
    }

    #[test]
    fn an_undecided_key_hints_where_the_search_got_stuck() {
        let mut script = Script::default();
        script.put(1, "a", 0, 1);
        for (client, value) in [(2, "b"), (3, "c"), (4, "d")] {
            script.put(client, value, 2, 10);
        }
        script.get(1, Some("zzz"), 11, 12);
        let limits = CheckLimits {
            explored_states_max: 6,
        };
        let report = check_with_limits(&script.recorder.history(), limits);
        let Verdict::Unknown { hint, .. } = &report.verdict else {
            panic!("expected undecided, got:\n{report}");
        };
        assert!(hint.contains("observed \"zzz\""), "{hint}");
        assert!(
            report.to_string().contains("a hint, not a proof"),
            "{report}"
        );
        assert!(
            check(&script.recorder.history())
                .to_string()
                .starts_with("NOT linearizable")
        );
    }

    #[test]
    fn recorder_rejects_malformed_operations() {
        let mut recorder = HistoryRecorder::new();
        let put = recorder.invoke(1, KEY, OpKind::put("a"), 10);
        assert_eq!(
            recorder.complete(put, 11, Outcome::read(Some("a"))),
            Err(HistoryError::ResultDoesNotMatchKind {
                op: put,
                kind: "put",
                result: "read"
            })
        );
        assert_eq!(
            recorder.complete(put, 9, Outcome::done()),
            Err(HistoryError::CompletedBeforeInvoked {
                op: put,
                invoked_at: 10,
                completed_at: 9
            })
        );
        recorder.complete(put, 12, Outcome::done()).unwrap();
        assert_eq!(
            recorder.complete(put, 13, Outcome::done()),
            Err(HistoryError::AlreadyCompleted { op: put })
        );
        assert_eq!(
            recorder.complete(OpId(7), 13, Outcome::done()),
            Err(HistoryError::NotInvoked { op: OpId(7) })
        );
        assert!(
            recorder
                .record(1, KEY, OpKind::Get, 5, 4, Outcome::read(None::<&str>))
                .is_err()
        );
        assert_eq!(recorder.len(), 1, "failed records leave nothing behind");
    }

    #[test]
    fn history_rejects_duplicate_ids() {
        let history = Script::default().put(1, "a", 0, 1).recorder.history();
        let mut operations = history.operations().to_vec();
        operations.push(operations[0].clone());
        assert_eq!(
            History::new(operations),
            Err(HistoryError::DuplicateId { op: OpId(0) })
        );
    }

    #[test]
    fn history_and_report_round_trip_through_postcard() {
        let history = Script::default()
            .put(1, "a", 0, 1)
            .cas(2, None, "b", false, Some("a"), 2, 3)
            .op(3, OpKind::Delete, 4, 5, Outcome::Unknown)
            .get(1, Some("b"), 6, 7)
            .recorder
            .history();
        let bytes = postcard::to_allocvec(&history).unwrap();
        let decoded: History = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, history);
        let report = check(&history);
        let bytes = postcard::to_allocvec(&report).unwrap();
        assert_eq!(postcard::from_bytes::<Report>(&bytes).unwrap(), report);
    }

    #[test]
    fn history_and_report_round_trip_through_json_readably() {
        let mut recorder = HistoryRecorder::new();
        recorder
            .record(1, "user/1", OpKind::put("v1"), 0, 1, Outcome::done())
            .unwrap();
        let binary = vec![0u8, 159, 146, 150];
        recorder
            .record(
                2,
                binary.clone(),
                OpKind::put(binary.clone()),
                2,
                3,
                Outcome::done(),
            )
            .unwrap();
        recorder
            .record(3, "user/1", OpKind::Get, 4, 5, Outcome::read(Some("stale")))
            .unwrap();
        recorder.invoke(4, "user/1", OpKind::cas(None::<&str>, "v2"), 6);
        let history = recorder.finish();

        let json = serde_json::to_string(&history).unwrap();
        assert!(json.contains(r#""key":"user/1""#), "{json}");
        assert!(json.contains(r#""key":{"hex":"009f9296"}"#), "{json}");
        assert!(json.contains(r#""expected":null"#), "{json}");
        assert_eq!(serde_json::from_str::<History>(&json).unwrap(), history);

        let report = check(&history);
        assert!(!report.is_linearizable());
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    }

    #[test]
    fn json_histories_are_validated() {
        let completed_before_invoked = r#"{"operations":[{"id":0,"client":1,"key":"k",
            "kind":"get","invoked_at":5,"completed_at":4,"outcome":{"ok":{"read":{"value":null}}}}]}"#;
        let error = serde_json::from_str::<History>(completed_before_invoked).unwrap_err();
        assert!(
            error.to_string().contains("before it was invoked"),
            "{error}"
        );
        let bad_hex = r#"{"operations":[{"id":0,"client":1,"key":{"hex":"zz"},
            "kind":"get","invoked_at":1,"completed_at":2,"outcome":"unknown"}]}"#;
        assert!(serde_json::from_str::<History>(bad_hex).is_err());
    }

    #[test]
    fn every_failing_key_is_listed_and_the_text_stays_short() {
        let mut recorder = HistoryRecorder::new();
        for key in 0..7u64 {
            let key = format!("key-{key}");
            recorder
                .record(1, key.as_str(), OpKind::put("a"), 0, 1, Outcome::done())
                .unwrap();
            recorder
                .record(
                    2,
                    key.as_str(),
                    OpKind::Get,
                    2,
                    3,
                    Outcome::read(None::<&str>),
                )
                .unwrap();
        }
        let report = check(&recorder.history());
        assert_eq!(report.problems.len(), 7);
        let text = report.to_string();
        assert!(text.contains("7 keys not linearizable"), "{text}");
        assert!(text.contains("... and 2 keys not shown"), "{text}");
        assert!(!text.contains("key \"key-5\" is not"), "{text}");
    }

    #[test]
    fn failure_report_is_readable() {
        let report = Script::default()
            .put(1, "a", 0, 1)
            .put(2, "b", 2, 3)
            .get(3, Some("a"), 4, 5)
            .check();
        let text = report.to_string();
        assert!(
            text.starts_with("NOT linearizable: 1 key, 3 operations checked, 0 ignored"),
            "{text}"
        );
        assert!(text.contains("key \"k\" is not linearizable"), "{text}");
        assert!(
            text.contains("#1 client 2 [2, 3] put \"b\" -> ok  => \"b\""),
            "{text}"
        );
        match &report.verdict {
            Verdict::NotLinearizable { window, .. } => assert_eq!(window.len(), 3),
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
