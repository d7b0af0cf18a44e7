//! The catalog against an in-memory model, over random operation sequences that include
//! closing and reopening the file: after every step, everything the catalog returns must equal
//! the model.

use nodedb_cluster_catalog::{Catalog, CatalogError, ClusterId};
use nodedb_cluster_core::NodeId;
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use std::collections::BTreeMap;
use tempfile::TempDir;

const NODE: NodeId = NodeId(2);

prop_state_machine! {
    #![proptest_config(Config {
        cases: 64,
        failure_persistence: None,
        .. Config::default()
    })]

    #[test]
    fn catalog_matches_model(sequential 1..40 => CatalogUnderTest);
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    cluster_id: Option<u128>,
    metadata: Option<(u64, Vec<u8>)>,
    checkpoints: BTreeMap<u64, Vec<u8>>,
    /// Whether the last `RemoveCheckpoint` found one: its result is not visible in the state.
    last_remove_found: bool,
}

#[derive(Clone, Debug)]
pub enum Step {
    SetClusterId(u128),
    SaveMetadata {
        applied_index: u64,
        state: Vec<u8>,
    },
    SaveCheckpoint {
        migration_id: u64,
        checkpoint: Vec<u8>,
    },
    RemoveCheckpoint {
        migration_id: u64,
    },
    Reopen,
}

pub struct ModelMachine;

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Step> {
        // Indexes near the stored one, so that regressions and equal-index saves are common.
        let stored = state.metadata.as_ref().map_or(0, |(index, _)| *index);
        let small_bytes = || proptest::collection::vec(0u8..4, 0..6);
        prop_oneof![
            1 => (1u128..4).prop_map(Step::SetClusterId),
            4 => (stored.saturating_sub(2)..stored + 3, small_bytes()).prop_map(
                |(applied_index, state)| Step::SaveMetadata { applied_index, state }
            ),
            3 => (0u64..5, small_bytes()).prop_map(|(migration_id, checkpoint)| {
                Step::SaveCheckpoint { migration_id, checkpoint }
            }),
            2 => (0u64..5).prop_map(|migration_id| Step::RemoveCheckpoint { migration_id }),
            1 => Just(Step::Reopen),
        ]
        .boxed()
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        match step {
            Step::SetClusterId(cluster_id) => {
                state.cluster_id.get_or_insert(*cluster_id);
            }
            Step::SaveMetadata {
                applied_index,
                state: bytes,
            } => {
                let accepted = match &state.metadata {
                    None => true,
                    Some((stored, _)) => applied_index > stored,
                };
                if accepted {
                    state.metadata = Some((*applied_index, bytes.clone()));
                }
            }
            Step::SaveCheckpoint {
                migration_id,
                checkpoint,
            } => {
                state.checkpoints.insert(*migration_id, checkpoint.clone());
            }
            Step::RemoveCheckpoint { migration_id } => {
                state.last_remove_found = state.checkpoints.remove(migration_id).is_some();
            }
            Step::Reopen => {}
        }
        state
    }
}

pub struct Harness {
    dir: TempDir,
    catalog: Option<Catalog>,
}

pub struct CatalogUnderTest;

impl StateMachineTest for CatalogUnderTest {
    type SystemUnderTest = Harness;
    type Reference = ModelMachine;

    fn init_test(_: &Model) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Some(Catalog::open(dir.path(), NODE).unwrap());
        Harness { dir, catalog }
    }

    fn apply(mut harness: Harness, after: &Model, step: Step) -> Harness {
        let catalog = harness.catalog.as_ref().unwrap();
        match step {
            Step::SetClusterId(cluster_id) => {
                let result = catalog.set_cluster_id(ClusterId(cluster_id));
                if after.cluster_id == Some(cluster_id) {
                    result.unwrap();
                } else {
                    assert!(
                        matches!(result, Err(CatalogError::ClusterIdMismatch { .. })),
                        "{result:?}"
                    );
                }
            }
            Step::SaveMetadata {
                applied_index,
                state,
            } => {
                let result = catalog.save_metadata(applied_index, &state);
                let (stored, stored_state) = after.metadata.clone().unwrap();
                if stored == applied_index && stored_state == state {
                    result.unwrap();
                } else if stored > applied_index {
                    assert!(
                        matches!(result, Err(CatalogError::MetadataIndexRegressed { .. })),
                        "{result:?}"
                    );
                } else {
                    assert!(
                        matches!(result, Err(CatalogError::MetadataConflict { .. })),
                        "{result:?}"
                    );
                }
            }
            Step::SaveCheckpoint {
                migration_id,
                checkpoint,
            } => catalog
                .save_migration_checkpoint(migration_id, &checkpoint)
                .unwrap(),
            Step::RemoveCheckpoint { migration_id } => {
                let found = catalog.remove_migration_checkpoint(migration_id).unwrap();
                assert_eq!(found, after.last_remove_found);
            }
            Step::Reopen => {
                harness.catalog.take().unwrap().close().unwrap();
                harness.catalog = Some(Catalog::open(harness.dir.path(), NODE).unwrap());
            }
        }
        harness
    }

    fn check_invariants(harness: &Harness, model: &Model) {
        let catalog = harness.catalog.as_ref().unwrap();
        assert_eq!(catalog.node_id(), NODE);
        assert_eq!(
            catalog.cluster_id().unwrap(),
            model.cluster_id.map(ClusterId)
        );
        assert_eq!(catalog.load_metadata::<Vec<u8>>().unwrap(), model.metadata);
        assert_eq!(
            catalog.metadata_applied_index().unwrap(),
            model.metadata.as_ref().map(|(index, _)| *index)
        );
        let listed: BTreeMap<u64, Vec<u8>> = catalog
            .list_migration_checkpoints::<Vec<u8>>()
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(listed, model.checkpoints);
        for migration_id in 0..5 {
            assert_eq!(
                catalog
                    .load_migration_checkpoint::<Vec<u8>>(migration_id)
                    .unwrap(),
                model.checkpoints.get(&migration_id).cloned()
            );
        }
    }
}
