//! Which state machine a data group's replicas run. A NodeDB component that hosts its own
//! engine passes an [`EngineFactory`] in the [`ClusterConfig`](crate::cluster::ClusterConfig); the node
//! binary uses the built-in replicated key-value engine.

use nodedb_cluster_core::GroupId;
use nodedb_cluster_raft::StateMachine;
use nodedb_cluster_raft::kv::KvStateMachine;
use std::fmt;
use std::sync::Arc;

/// Makes the empty engine of one data-group replica; called each time this node opens a
/// replica (at bootstrap, restart, or when placement adds one). The replica then restores the
/// engine from its snapshot and log. Every replica of a group must get the same kind of engine.
#[derive(Clone)]
pub struct EngineFactory(Arc<dyn Fn(GroupId) -> Box<dyn StateMachine> + Send + Sync>);

impl EngineFactory {
    pub fn new(make: impl Fn(GroupId) -> Box<dyn StateMachine> + Send + Sync + 'static) -> Self {
        EngineFactory(Arc::new(make))
    }

    /// The built-in key-value engine ([`KvStateMachine`]).
    pub fn kv() -> EngineFactory {
        EngineFactory::new(|_| Box::new(KvStateMachine::new()))
    }

    pub fn make(&self, group: GroupId) -> Box<dyn StateMachine> {
        (self.0)(group)
    }
}

impl Default for EngineFactory {
    fn default() -> EngineFactory {
        EngineFactory::kv()
    }
}

impl fmt::Debug for EngineFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineFactory")
    }
}
