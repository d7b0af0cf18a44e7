//! The checker against a brute-force oracle: on tiny random histories (random answers, so many
//! are not linearizable) both must agree. The oracle tries every ordering of every allowed
//! subset of operations with the semantics written out plainly, sharing no code with the
//! checker, so it also pins the pruning rules the checker relies on.

// One module named after the checker, so that `cargo test -p nodedb-cluster-core linearizability`
// selects these tests.
mod linearizability_oracle {
    use nodedb_cluster_core::linearizability::{
        History, OpId, OpKind, OpResult, Operation, Outcome, Verdict, check,
    };
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};
    use std::collections::{BTreeMap, BTreeSet};

    type Value = Option<Vec<u8>>;

    /// Whether `history` is linearizable, by exhaustive search.
    fn oracle(history: &History) -> bool {
        let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
        for operation in history.operations() {
            by_key.entry(&operation.key).or_default().push(operation);
        }
        by_key.values().all(|operations| {
            // Failed operations never happened; unanswered reads constrain nothing.
            let candidates: Vec<&Operation> = operations
                .iter()
                .copied()
                .filter(|op| match op.outcome {
                    Outcome::Failed => false,
                    Outcome::Unknown => op.kind != OpKind::Get,
                    Outcome::Ok(_) => true,
                })
                .collect();
            let mut placed = vec![false; candidates.len()];
            extend(&candidates, &mut placed, None, &mut BTreeSet::new())
        })
    }

    /// Whether the ordering so far (`placed`, ending in value `state`) extends to one that
    /// places every answered operation. `dead` remembers (placed, value) pairs already shown
    /// not to extend, so that a dozen operations stay affordable.
    fn extend(
        candidates: &[&Operation],
        placed: &mut [bool],
        state: Value,
        dead: &mut BTreeSet<(Vec<bool>, Value)>,
    ) -> bool {
        let all_answered_placed = candidates
            .iter()
            .zip(placed.iter())
            .all(|(op, placed)| *placed || matches!(op.outcome, Outcome::Unknown));
        if all_answered_placed {
            return true;
        }
        if dead.contains(&(placed.to_vec(), state.clone())) {
            return false;
        }
        for next in 0..candidates.len() {
            if placed[next] || !may_come_next(candidates, placed, next) {
                continue;
            }
            let Some(after) = step(candidates[next], &state) else {
                continue;
            };
            placed[next] = true;
            let found = extend(candidates, placed, after, dead);
            placed[next] = false;
            if found {
                return true;
            }
        }
        dead.insert((placed.to_vec(), state));
        false
    }

    /// Real-time order: every answered operation that completed before `next` was invoked
    /// must already be placed.
    fn may_come_next(candidates: &[&Operation], placed: &[bool], next: usize) -> bool {
        let invoked_at = candidates[next].invoked_at;
        candidates.iter().zip(placed).all(|(op, placed)| {
            let completed_before = matches!(op.outcome, Outcome::Ok(_))
                && op
                    .completed_at
                    .is_some_and(|completed_at| completed_at < invoked_at);
            *placed || !completed_before
        })
    }

    /// The value after `op` applied to `state`, if its answer is possible there.
    fn step(op: &Operation, state: &Value) -> Option<Value> {
        match (&op.kind, &op.outcome) {
            (OpKind::Put { value }, _) => Some(Some(value.clone())),
            (OpKind::Delete, _) => Some(None),
            (OpKind::Get, Outcome::Ok(OpResult::Read { value })) => {
                (value == state).then(|| state.clone())
            }
            (OpKind::Cas { expected, new }, Outcome::Ok(OpResult::Cas { swapped, current })) => {
                if expected == state {
                    let current_ok = current.as_ref() == Some(new) || current == expected;
                    (*swapped && current_ok).then(|| Some(new.clone()))
                } else {
                    (!*swapped && current == state).then(|| state.clone())
                }
            }
            (OpKind::Cas { expected, new }, Outcome::Unknown) => Some(if expected == state {
                Some(new.clone())
            } else {
                state.clone()
            }),
            other => panic!("operation the oracle does not model: {other:?}"),
        }
    }

    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![Just(b"a".to_vec()), Just(b"b".to_vec())]
    }

    fn maybe_value() -> impl Strategy<Value = Value> {
        prop::option::of(value())
    }

    fn kind() -> impl Strategy<Value = OpKind> {
        prop_oneof![
            3 => value().prop_map(|value| OpKind::Put { value }),
            3 => Just(OpKind::Get),
            1 => Just(OpKind::Delete),
            2 => (maybe_value(), value()).prop_map(|(expected, new)| OpKind::Cas { expected, new }),
        ]
    }

    /// An outcome of the right shape for `kind`, with a random answer; `unknown_weight` out
    /// of `9 + unknown_weight` are unknown.
    fn outcome(kind: &OpKind, unknown_weight: u32) -> BoxedStrategy<Outcome> {
        let answered = match kind {
            OpKind::Put { .. } | OpKind::Delete => Just(OpResult::Done).boxed(),
            OpKind::Get => maybe_value()
                .prop_map(|value| OpResult::Read { value })
                .boxed(),
            OpKind::Cas { .. } => (any::<bool>(), maybe_value())
                .prop_map(|(swapped, current)| OpResult::Cas { swapped, current })
                .boxed(),
        };
        prop_oneof![
            8 => answered.prop_map(Outcome::Ok),
            1 => Just(Outcome::Failed),
            unknown_weight => Just(Outcome::Unknown),
        ]
        .boxed()
    }

    fn operation(
        keys: u8,
        unknown_weight: u32,
    ) -> impl Strategy<Value = (u64, u8, OpKind, u64, u64, Outcome)> {
        (0..3u64, 0..keys, kind(), 0..10u64, 0..6u64).prop_flat_map(
            move |(client, key, kind, invoked_at, duration)| {
                let outcome = outcome(&kind, unknown_weight);
                (
                    Just(client),
                    Just(key),
                    Just(kind),
                    Just(invoked_at),
                    Just(duration),
                    outcome,
                )
            },
        )
    }

    /// Up to 11 operations (the oracle is exponential) on `keys` keys.
    fn history(keys: u8, unknown_weight: u32) -> impl Strategy<Value = History> {
        prop::collection::vec(operation(keys, unknown_weight), 0..12).prop_map(|operations| {
            let operations = operations
                .into_iter()
                .enumerate()
                .map(
                    |(index, (client, key, kind, invoked_at, duration, outcome))| Operation {
                        id: OpId(index as u64),
                        client,
                        key: vec![b'k', key],
                        kind,
                        invoked_at,
                        completed_at: Some(invoked_at + duration),
                        outcome,
                    },
                )
                .collect();
            History::new(operations).expect("generated history is well-formed")
        })
    }

    /// A fixed seed, so that every run checks the same histories; failures print the minimal
    /// history found.
    fn config(cases: u32) -> Config {
        Config {
            cases,
            rng_seed: RngSeed::Fixed(0x11AE_0002),
            failure_persistence: None,
            ..Config::default()
        }
    }

    proptest! {
        #![proptest_config(config(2000))]

        #[test]
        fn checker_agrees_with_brute_force(history in history(2, 2)) {
            assert_agrees(&history)?;
        }

        #[test]
        fn checker_agrees_with_brute_force_when_most_outcomes_are_unknown(
            history in history(1, 9),
        ) {
            assert_agrees(&history)?;
        }
    }

    fn assert_agrees(history: &History) -> Result<(), TestCaseError> {
        let expected = oracle(history);
        let report = check(history);
        prop_assert!(
            !matches!(report.verdict, Verdict::Unknown { .. }),
            "tiny histories are always decided: {}",
            report
        );
        prop_assert_eq!(report.is_linearizable(), expected, "{}", report);
        Ok(())
    }

    /// The generator must produce both answers, or the agreement above proves little.
    #[test]
    fn random_histories_include_both_answers() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::new(config(1));
        for (keys, unknown_weight) in [(2, 2), (1, 9)] {
            let mut counts = [0u32; 2];
            for _ in 0..400 {
                let strategy = history(keys, unknown_weight);
                let history = strategy.new_tree(&mut runner).expect("tree").current();
                counts[usize::from(oracle(&history))] += 1;
            }
            eprintln!("keys {keys}, unknown weight {unknown_weight}: {counts:?}");
            assert!(
                counts[0] > 40 && counts[1] > 40,
                "not linearizable / linearizable: {counts:?}"
            );
        }
    }
}
