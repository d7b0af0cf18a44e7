//! Property tests of the in-memory network: for any seed, fault plan and sequence of calls,
//! partitions, crashes and restarts, every message is accounted for (sent = delivered + dropped
//! + refused once the network is quiet), and the same seed replays the same run exactly.

mod common;

use common::{EchoHandler, wait_until};
use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::{
    Bytes, FaultPlan, MemoryNetwork, MemoryTransport, NetworkStats, Transport, TransportError,
};
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;

const NODES: u64 = 3;
const TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
enum Op {
    Call { from: u64, to: u64 },
    Partition { alone: u64 },
    Cut { from: u64, to: u64 },
    Heal,
    Crash { node: u64 },
    Restart { node: u64 },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let id = || 1..=NODES;
    prop_oneof![
        6 => (id(), id()).prop_map(|(from, to)| Op::Call { from, to }),
        1 => id().prop_map(|alone| Op::Partition { alone }),
        1 => (id(), id()).prop_map(|(from, to)| Op::Cut { from, to }),
        1 => Just(Op::Heal),
        1 => id().prop_map(|node| Op::Crash { node }),
        1 => id().prop_map(|node| Op::Restart { node }),
    ]
}

fn plan_strategy() -> impl Strategy<Value = FaultPlan> {
    (0.0..0.5f64, 0.0..0.3f64, 0u64..20, 0u64..50).prop_map(
        |(drop_probability, duplicate_probability, low, spread)| FaultPlan {
            drop_probability,
            duplicate_probability,
            delay_ms_min: low,
            delay_ms_max: low + spread,
        },
    )
}

type Outcome = Result<Bytes, TransportError>;

/// Runs `ops` on a fresh network; returns every call's outcome and the final counters.
fn run(seed: u64, plan: &FaultPlan, ops: &[Op]) -> (Vec<Outcome>, NetworkStats) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let network = MemoryNetwork::with_fault_plan(seed, plan.clone());
        let mut nodes: Vec<Arc<MemoryTransport>> =
            (1..=NODES).map(|id| start(&network, id)).collect();
        let mut outcomes = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            match *op {
                Op::Call { from, to } => {
                    let request = Bytes::from(format!("{step}"));
                    let transport = &nodes[(from - 1) as usize];
                    outcomes.push(transport.call(NodeId(to), request, TIMEOUT).await);
                }
                Op::Partition { alone } => {
                    let others: Vec<NodeId> =
                        (1..=NODES).filter(|&id| id != alone).map(NodeId).collect();
                    network.partition(&[NodeId(alone)], &others);
                }
                Op::Cut { from, to } => network.cut(NodeId(from), NodeId(to)),
                Op::Heal => network.heal(),
                Op::Crash { node } => network.crash(NodeId(node)),
                Op::Restart { node } => {
                    network.restart(NodeId(node));
                    nodes[(node - 1) as usize] = start(&network, node);
                }
            }
        }
        let quiet = wait_until(Duration::from_secs(60), || network.in_flight() == 0).await;
        assert!(
            quiet,
            "network never went quiet: {} in flight, {:?}, ops {:?}",
            network.in_flight(),
            network.stats(),
            ops
        );
        (outcomes, network.stats())
    })
}

fn start(network: &MemoryNetwork, id: u64) -> Arc<MemoryTransport> {
    let transport = network.register(NodeId(id)).expect("register");
    transport.set_handler(Arc::new(EchoHandler::new()));
    transport
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_message_is_accounted_for_and_runs_replay(
        seed in any::<u64>(),
        plan in plan_strategy(),
        ops in proptest::collection::vec(op_strategy(), 1..60),
    ) {
        let (outcomes, stats) = run(seed, &plan, &ops);
        prop_assert_eq!(
            stats.sent,
            stats.delivered + stats.dropped + stats.refused,
            "{:?}", stats
        );
        for outcome in &outcomes {
            let allowed = match outcome {
                Ok(_) => true,
                Err(error) => matches!(
                    error,
                    TransportError::Timeout { .. }
                        | TransportError::Unreachable { .. }
                        | TransportError::Shutdown
                ),
            };
            prop_assert!(allowed, "{:?}", outcome);
        }
        let (replayed, replayed_stats) = run(seed, &plan, &ops);
        prop_assert_eq!(outcomes, replayed);
        prop_assert_eq!(stats, replayed_stats);
    }
}
