//! Command line of the `nodedb-cluster` binary: argument definitions and dispatch.

mod certs;
mod client;
mod status;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Default admin address the client verbs talk to.
const DEFAULT_ADMIN: &str = "127.0.0.1:9401";

#[derive(Debug, Parser)]
#[command(
    name = "nodedb-cluster",
    version,
    about = "NodeDB cluster node and admin client"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node.
    Start(StartArgs),
    /// Create a cluster CA or node certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Show nodes, groups, leaders and lag of the cluster.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the raw JSON of GET /v1/cluster.
        #[arg(long)]
        json: bool,
    },
    /// Read and write the built-in replicated key-value store.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Move vShards between groups.
    #[command(subcommand)]
    Vshard(VshardCommand),
    /// Node administration.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Plan and start vShard moves that even out the groups.
    Rebalance {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `start`: the config file, and flags that override its keys.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The node's TOML config file.
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long)]
    pub node_id: Option<u64>,
    #[arg(long)]
    pub listen_addr: Option<std::net::SocketAddr>,
    #[arg(long)]
    pub admin_addr: Option<std::net::SocketAddr>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated QUIC addresses of seed nodes.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<std::net::SocketAddr>>,
    /// Initialize a new cluster with this node.
    #[arg(long)]
    pub bootstrap: bool,
    #[arg(long)]
    pub num_groups: Option<u32>,
    #[arg(long)]
    pub replication_factor: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a new cluster CA to DIR/ca.pem and DIR/ca.key.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Name written into the CA certificate.
        #[arg(long, default_value = "nodedb")]
        cluster_name: String,
        /// Replace an existing CA (every node certificate must then be issued again).
        #[arg(long)]
        force: bool,
    },
    /// Write DIR/node-N.pem and DIR/node-N.key, signed by the CA in DIR.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node_id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Store VALUE under KEY.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the value of KEY.
    Get {
        key: String,
        /// Read the local replica without confirming leadership (may be stale).
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete KEY.
    Del {
        key: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum VshardCommand {
    /// Move vShard V to group G, online.
    Move {
        vshard: u16,
        #[arg(long)]
        to_group: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Move every replica off node N, then retire it.
    Decommission {
        node_id: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where the client verbs send their requests.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Admin HTTP address of any node.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: String,
    /// Bearer token, if the cluster requires one.
    #[arg(long, env = "NODEDB_CLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Runs a command; the error is printed by `main` as one line.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Start(args) => start(args),
        Command::Certs(CertsCommand::Init {
            dir,
            cluster_name,
            force,
        }) => certs::init(&dir, &cluster_name, force),
        Command::Certs(CertsCommand::Issue { dir, node_id }) => certs::issue(&dir, node_id),
        Command::Status { admin, json } => status::run(&client::AdminClient::new(&admin), json),
        Command::Kv(command) => run_kv(command),
        Command::Vshard(VshardCommand::Move {
            vshard,
            to_group,
            admin,
        }) => {
            let body = serde_json::json!({ "to_group": to_group });
            let path = format!("/v1/vshards/{vshard}/move");
            let answer = client::AdminClient::new(&admin).post_json(&path, &body)?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        Command::Node(NodeCommand::Decommission { node_id, admin }) => {
            let path = format!("/v1/nodes/{node_id}/decommission");
            client::AdminClient::new(&admin).post_json(&path, &serde_json::json!({}))?;
            println!("node {node_id}: decommission started");
            Ok(())
        }
        Command::Rebalance { admin } => {
            let answer = client::AdminClient::new(&admin)
                .post_json("/v1/rebalance", &serde_json::json!({}))?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
    }
}

/// Loads the config, applies the flag overrides, validates again, and runs the node.
fn start(args: StartArgs) -> anyhow::Result<()> {
    let mut config = nodedb_cluster_node::NodeConfig::load(&args.config)?;
    if let Some(node_id) = args.node_id {
        config.node_id = node_id;
    }
    if let Some(addr) = args.listen_addr {
        config.listen_addr = addr;
    }
    if let Some(addr) = args.admin_addr {
        config.admin_addr = addr;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(seeds) = args.seeds {
        config.seeds = seeds;
    }
    config.bootstrap |= args.bootstrap;
    if let Some(groups) = args.num_groups {
        config.num_groups = groups;
    }
    if let Some(factor) = args.replication_factor {
        config.replication_factor = factor;
    }
    config.validate()?;
    nodedb_cluster_node::run::init_logging(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nodedb-cluster")
        .build()?;
    runtime.block_on(nodedb_cluster_node::run::run(config))
}

fn run_kv(command: KvCommand) -> anyhow::Result<()> {
    match command {
        KvCommand::Put { key, value, admin } => {
            let receipt = client::AdminClient::new(&admin).put_value(&key, value.as_bytes())?;
            println!(
                "ok: vshard {} group {} index {}",
                receipt["vshard"], receipt["group"], receipt["index"]
            );
        }
        KvCommand::Get { key, stale, admin } => {
            match client::AdminClient::new(&admin).get_value(&key, stale)? {
                Some(value) => println!("{}", String::from_utf8_lossy(&value)),
                None => anyhow::bail!("key `{key}` not found"),
            }
        }
        KvCommand::Del { key, admin } => {
            client::AdminClient::new(&admin).delete_value(&key)?;
            println!("ok: deleted");
        }
    }
    Ok(())
}
