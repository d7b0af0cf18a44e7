//! Property tests of the checker. Histories produced by simulating a real linearizable store
//! (concurrent clients, each operation taking effect at one instant inside its interval) must
//! pass; the same histories with one read made impossible must fail; and on tiny random
//! histories the checker must agree with a brute-force search over every ordering.

// One module named after the checker, so that `cargo test -p nodedb-cluster-core linearizability`
// selects these tests.
mod linearizability_props {
    use nodedb_cluster_core::linearizability::{
        History, OpId, OpKind, OpResult, Operation, Outcome, Verdict, check, check_with_final_reads,
    };
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};
    use std::collections::BTreeMap;

    /// A value no simulated operation ever writes.
    const NEVER_WRITTEN: &str = "never-written";

    #[derive(Clone, Copy, Debug)]
    enum Plan {
        Put,
        Get,
        Delete,
        /// `guess_current`: expect the value the store holds at the instant the CAS takes
        /// effect (so it swaps), else expect an arbitrary earlier value picked by `pick`.
        Cas {
            guess_current: bool,
            pick: usize,
        },
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Fate {
        Ok,
        Failed,
        /// Took effect, possibly after the client gave up, but the client never learned it.
        UnknownApplied,
        UnknownLost,
    }

    /// One operation of the simulation, before it is run.
    #[derive(Clone, Copy, Debug)]
    struct PlannedOp {
        client: usize,
        key: usize,
        plan: Plan,
        /// Time the client waits after its previous operation before invoking this one.
        gap: u64,
        /// From invocation to the instant the operation takes effect.
        effect_offset: u64,
        /// From the effect to completion (from invocation to giving up, if unknown).
        tail: u64,
        fate: Fate,
    }

    /// A simulated run: its history and the store's values at the end.
    #[derive(Debug)]
    struct Simulated {
        history: History,
        final_values: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    }

    fn key_name(key: usize) -> Vec<u8> {
        format!("key-{key}").into_bytes()
    }

    fn value_name(op: usize) -> Vec<u8> {
        format!("v{op}").into_bytes()
    }

    /// Runs `planned` against a sequential store, each operation taking effect at its own
    /// instant; clients issue one operation at a time.
    fn simulate(planned: &[PlannedOp], clients: usize, keys: usize) -> Simulated {
        let mut cursor = vec![0u64; clients];
        let mut timing = Vec::with_capacity(planned.len());
        for op in planned {
            let client = op.client % clients;
            let invoked_at = cursor[client] + op.gap;
            let effect_at = invoked_at + op.effect_offset;
            let completed_at = match op.fate {
                Fate::Ok | Fate::Failed => effect_at + op.tail,
                Fate::UnknownApplied | Fate::UnknownLost => invoked_at + op.tail,
            };
            cursor[client] = completed_at + 1;
            timing.push((invoked_at, effect_at, completed_at));
        }
        let mut order: Vec<usize> = (0..planned.len()).collect();
        order.sort_by_key(|index| (timing[*index].1, *index));

        let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut operations: Vec<Option<Operation>> = vec![None; planned.len()];
        for index in order {
            let op = planned[index];
            let key = key_name(op.key % keys);
            let kind = match op.plan {
                Plan::Put => OpKind::put(value_name(index)),
                Plan::Get => OpKind::Get,
                Plan::Delete => OpKind::Delete,
                Plan::Cas {
                    guess_current,
                    pick,
                } => {
                    let expected = if guess_current {
                        store.get(&key).cloned()
                    } else {
                        (pick % (planned.len() + 1)).checked_sub(1).map(value_name)
                    };
                    OpKind::cas(expected, value_name(index))
                }
            };
            let outcome = match op.fate {
                Fate::Ok => Outcome::Ok(apply(&mut store, &key, &kind)),
                Fate::UnknownApplied => {
                    apply(&mut store, &key, &kind);
                    Outcome::Unknown
                }
                Fate::UnknownLost => Outcome::Unknown,
                Fate::Failed => Outcome::Failed,
            };
            let (invoked_at, _, completed_at) = timing[index];
            operations[index] = Some(Operation {
                id: OpId(index as u64),
                client: (op.client % clients) as u64,
                key,
                kind,
                invoked_at,
                completed_at: Some(completed_at),
                outcome,
            });
        }
        let operations = operations
            .into_iter()
            .map(|op| op.expect("every op ran"))
            .collect();
        let final_values = (0..keys)
            .map(|key| (key_name(key), store.get(&key_name(key)).cloned()))
            .collect();
        Simulated {
            history: History::new(operations).expect("simulated history is well-formed"),
            final_values,
        }
    }

    fn apply(store: &mut BTreeMap<Vec<u8>, Vec<u8>>, key: &[u8], kind: &OpKind) -> OpResult {
        match kind {
            OpKind::Put { value } => {
                store.insert(key.to_vec(), value.clone());
                OpResult::Done
            }
            OpKind::Get => OpResult::Read {
                value: store.get(key).cloned(),
            },
            OpKind::Delete => {
                store.remove(key);
                OpResult::Done
            }
            OpKind::Cas { expected, new } => {
                let swapped = store.get(key) == expected.as_ref();
                if swapped {
                    store.insert(key.to_vec(), new.clone());
                }
                OpResult::Cas {
                    swapped,
                    current: store.get(key).cloned(),
                }
            }
        }
    }

    fn plan() -> impl Strategy<Value = Plan> {
        prop_oneof![
            3 => Just(Plan::Put),
            4 => Just(Plan::Get),
            1 => Just(Plan::Delete),
            2 => (any::<bool>(), 0..64usize)
                .prop_map(|(guess_current, pick)| Plan::Cas { guess_current, pick }),
        ]
    }

    /// `unknown_weight` in `13 + 2 * unknown_weight` applied but unknown, as many lost.
    fn fate(unknown_weight: u32) -> impl Strategy<Value = Fate> {
        prop_oneof![
            12 => Just(Fate::Ok),
            1 => Just(Fate::Failed),
            unknown_weight => Just(Fate::UnknownApplied),
            unknown_weight => Just(Fate::UnknownLost),
        ]
    }

    fn planned_op(unknown_weight: u32) -> impl Strategy<Value = PlannedOp> {
        let timing = (0..4u64, 0..12u64, 0..12u64);
        let fate = fate(unknown_weight);
        (0..8usize, 0..8usize, plan(), timing, fate).prop_map(
            |(client, key, plan, (gap, effect_offset, tail), fate)| PlannedOp {
                client,
                key,
                plan,
                gap,
                effect_offset,
                tail,
                fate,
            },
        )
    }

    /// (clients, keys, planned operations).
    fn simulation() -> impl Strategy<Value = (usize, usize, Vec<PlannedOp>)> {
        simulation_with(1)
    }

    fn simulation_with(
        unknown_weight: u32,
    ) -> impl Strategy<Value = (usize, usize, Vec<PlannedOp>)> {
        let planned = prop::collection::vec(planned_op(unknown_weight), 1..80);
        (1..=5usize, 1..=3usize, planned)
    }

    /// Replaces the answer of one successful read with `value`: the read at position
    /// `choose(reads)` among the `reads` successful ones. `None` if there is none.
    fn with_read_replaced(
        history: &History,
        choose: impl FnOnce(usize) -> usize,
        value: &[u8],
    ) -> Option<History> {
        let reads: Vec<usize> = history
            .operations()
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op.outcome, Outcome::Ok(OpResult::Read { .. })))
            .map(|(index, _)| index)
            .collect();
        if reads.is_empty() {
            return None;
        }
        let mut operations = history.operations().to_vec();
        operations[reads[choose(reads.len())]].outcome = Outcome::read(Some(value));
        Some(History::new(operations).expect("still well-formed"))
    }

    /// SplitMix64: a seeded generator for the large deterministic histories below.
    struct SplitMix(u64);

    impl SplitMix {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % bound
        }
    }

    /// `count` operations from `clients` clients on one key; one in `unknown_one_in` has an
    /// unknown outcome.
    fn large_plan(seed: u64, count: usize, clients: usize, unknown_one_in: u64) -> Vec<PlannedOp> {
        let mut random = SplitMix(seed);
        (0..count)
            .map(|_| PlannedOp {
                client: random.below(clients as u64) as usize,
                key: 0,
                plan: match random.below(10) {
                    0..=2 => Plan::Put,
                    3..=6 => Plan::Get,
                    7 => Plan::Delete,
                    _ => Plan::Cas {
                        guess_current: random.below(2) == 0,
                        pick: random.below(count as u64) as usize,
                    },
                },
                gap: random.below(4),
                effect_offset: random.below(12),
                tail: random.below(12),
                fate: match random.below(unknown_one_in) {
                    0 => Fate::UnknownApplied,
                    1 => Fate::UnknownLost,
                    2 => Fate::Failed,
                    _ => Fate::Ok,
                },
            })
            .collect()
    }

    #[test]
    fn thousands_of_operations_on_one_key_are_decided() {
        let simulated = simulate(&large_plan(7, 3000, 8, 20), 8, 1);
        let report = check(&simulated.history);
        assert!(report.is_linearizable(), "{report}");
        assert!(report.ops_checked > 2500, "{report}");
    }

    #[test]
    fn a_bad_read_deep_in_a_long_history_is_found() {
        let simulated = simulate(&large_plan(11, 1000, 4, 20), 4, 1);
        let late = |reads: usize| reads * 9 / 10;
        let mutated = with_read_replaced(&simulated.history, late, NEVER_WRITTEN.as_bytes())
            .expect("a thousand operations include reads");
        let report = check(&mutated);
        assert!(
            matches!(report.verdict, Verdict::NotLinearizable { .. }),
            "{report}"
        );
    }

    /// A fixed seed, so that every run checks the same histories; failures print the minimal
    /// history found.
    fn config(cases: u32) -> Config {
        Config {
            cases,
            rng_seed: RngSeed::Fixed(0x11AE_0001),
            failure_persistence: None,
            ..Config::default()
        }
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn simulated_histories_are_linearizable((clients, keys, planned) in simulation()) {
            let simulated = simulate(&planned, clients, keys);
            let report = check(&simulated.history);
            prop_assert!(report.is_linearizable(), "{}", report);
        }

        #[test]
        fn simulated_histories_with_many_unknown_outcomes_are_linearizable(
            (clients, keys, planned) in simulation_with(6),
        ) {
            let simulated = simulate(&planned, clients, keys);
            let report = check(&simulated.history);
            prop_assert!(report.is_linearizable(), "{}", report);
        }

        #[test]
        fn simulated_final_values_pass_final_reads((clients, keys, planned) in simulation()) {
            let simulated = simulate(&planned, clients, keys);
            let report = check_with_final_reads(&simulated.history, simulated.final_values);
            prop_assert!(report.is_linearizable(), "{}", report);
        }

        #[test]
        fn a_read_of_a_never_written_value_fails(
            (clients, keys, planned) in simulation(),
            pick in any::<prop::sample::Index>(),
        ) {
            let simulated = simulate(&planned, clients, keys);
            let Some(mutated) = with_read_replaced(&simulated.history, |reads| pick.index(reads), NEVER_WRITTEN.as_bytes())
            else {
                return Ok(());
            };
            let report = check(&mutated);
            prop_assert!(
                matches!(report.verdict, Verdict::NotLinearizable { .. }),
                "{}",
                report
            );
        }

        #[test]
        fn a_read_of_a_failed_write_fails(
            (clients, keys, planned) in simulation(),
            pick in any::<prop::sample::Index>(),
        ) {
            let simulated = simulate(&planned, clients, keys);
            let failed_value = simulated.history.operations().iter().find_map(|op| {
                match (&op.kind, &op.outcome) {
                    (OpKind::Put { value }, Outcome::Failed) => Some(value.clone()),
                    _ => None,
                }
            });
            let Some(failed_value) = failed_value else {
                return Ok(());
            };
            let Some(mutated) = with_read_replaced(&simulated.history, |reads| pick.index(reads), &failed_value) else {
                return Ok(());
            };
            let report = check(&mutated);
            prop_assert!(
                matches!(report.verdict, Verdict::NotLinearizable { .. }),
                "{}",
                report
            );
        }

        #[test]
        fn a_never_written_final_value_fails((clients, keys, planned) in simulation()) {
            let simulated = simulate(&planned, clients, keys);
            let mut final_values = simulated.final_values;
            let first = final_values.values_mut().next().expect("at least one key");
            *first = Some(NEVER_WRITTEN.as_bytes().to_vec());
            let report = check_with_final_reads(&simulated.history, final_values);
            prop_assert!(
                matches!(report.verdict, Verdict::NotLinearizable { .. }),
                "{}",
                report
            );
        }
    }
}
