//! The fuzz targets, one per decoder family, by name.

pub mod catalog;
pub mod frame;
pub mod http;
pub mod kv;
pub mod metadata;
pub mod raft;

use crate::Target;

/// Every target's name, in the order `cargo xtask fuzz` runs them.
pub const NAMES: &[&str] = &[
    "frame",
    "raft-rpc",
    "raft-log",
    "kv-command",
    "metadata-command",
    "catalog-record",
    "http-kv",
];

/// The target called `name`.
pub fn by_name(name: &str) -> anyhow::Result<Box<dyn Target>> {
    Ok(match name {
        "frame" => Box::new(frame::FrameTarget::new()?),
        "raft-rpc" => Box::new(raft::RaftRpcTarget),
        "raft-log" => Box::new(raft::RaftLogTarget),
        "kv-command" => Box::new(kv::KvTarget::new()),
        "metadata-command" => Box::new(metadata::MetadataTarget::new()),
        "catalog-record" => Box::new(catalog::CatalogRecordTarget),
        "http-kv" => Box::new(http::HttpTarget::new()?),
        other => anyhow::bail!(
            "unknown fuzz target `{other}`; targets: {}",
            NAMES.join(", ")
        ),
    })
}
