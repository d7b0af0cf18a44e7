//! Machine check of the architecture invariants: which workspace crate may depend on which,
//! which IO crates each may pull in, and that `nodedb-cluster-core` names no IO in its source.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The rules of ARCHITECTURE.md, one per workspace crate.
struct CrateRule {
    name: &'static str,
    /// Workspace crates it may depend on (normal dependencies).
    allowed_workspace_deps: &'static [&'static str],
    /// Packages it must not reach, directly or through any normal dependency.
    forbidden_transitive: &'static [&'static str],
    /// Packages it must not name as a direct dependency.
    forbidden_direct: &'static [&'static str],
}

const CORE: &str = "nodedb-cluster-core";
const TRANSPORT: &str = "nodedb-cluster-transport";
const CATALOG: &str = "nodedb-cluster-catalog";
const RAFT: &str = "nodedb-cluster-raft";
const NODE: &str = "nodedb-cluster-node";
const FUZZ: &str = "nodedb-cluster-fuzz";

/// Crates that do IO or run an async runtime.
const IO_CRATES: &[&str] = &[
    "tokio",
    "quinn",
    "redb",
    "openraft",
    "mio",
    "async-std",
    "smol",
    "socket2",
    "rustls",
];

const RULES: &[CrateRule] = &[
    CrateRule {
        name: CORE,
        allowed_workspace_deps: &[],
        forbidden_transitive: IO_CRATES,
        forbidden_direct: &[],
    },
    CrateRule {
        name: TRANSPORT,
        allowed_workspace_deps: &[CORE],
        forbidden_transitive: &["openraft", "redb"],
        forbidden_direct: &[],
    },
    CrateRule {
        name: CATALOG,
        allowed_workspace_deps: &[CORE],
        forbidden_transitive: &["openraft", "quinn", "rustls", "tokio"],
        forbidden_direct: &[],
    },
    CrateRule {
        name: RAFT,
        allowed_workspace_deps: &[CORE, TRANSPORT],
        forbidden_transitive: &[],
        forbidden_direct: &["quinn", "rustls", "rcgen"],
    },
    CrateRule {
        name: NODE,
        allowed_workspace_deps: &[CORE, TRANSPORT, CATALOG, RAFT],
        forbidden_transitive: &[],
        forbidden_direct: &["openraft", "quinn"],
    },
    // The fuzz targets sit on top of everything (no crate may depend on them) and reach the
    // decoders through the crates' own `fuzzing` features, never through openraft or quinn.
    CrateRule {
        name: FUZZ,
        allowed_workspace_deps: &[CORE, TRANSPORT, CATALOG, RAFT, NODE],
        forbidden_transitive: &[],
        forbidden_direct: &["openraft", "quinn"],
    },
];

/// Source text that would mean IO, a clock or unseeded randomness in the pure core.
const CORE_FORBIDDEN_SOURCE: &[&str] = &[
    "std::net",
    "std::fs",
    "std::time::SystemTime",
    "std::time::Instant",
    "SystemTime::now",
    "Instant::now",
    "std::thread",
    "std::process",
    "thread_rng",
    "from_entropy",
];

/// Checks every rule; returns a short summary or every violation found.
pub fn check_workspace() -> Result<String> {
    let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives one level below the workspace root")?;
    let metadata = cargo_metadata(workspace_root)?;
    let graph = DependencyGraph::from_metadata(&metadata)?;
    let mut violations = Vec::new();
    for rule in RULES {
        violations.extend(check_rule(&graph, rule));
    }
    violations.extend(check_core_sources(&workspace_root.join(CORE).join("src"))?);
    if !violations.is_empty() {
        bail!("{}", violations.join("\n"));
    }
    Ok(format!("layering ok: {} crates checked", RULES.len()))
}

fn cargo_metadata(workspace_root: &Path) -> Result<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(workspace_root)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("parsing cargo metadata output")
}

/// Normal (non-dev, non-build) dependency edges between packages, by package name.
struct DependencyGraph {
    normal_deps: BTreeMap<String, BTreeSet<String>>,
}

impl DependencyGraph {
    fn from_metadata(metadata: &Value) -> Result<DependencyGraph> {
        let names: BTreeMap<&str, &str> = metadata["packages"]
            .as_array()
            .context("metadata has no packages")?
            .iter()
            .filter_map(|package| Some((package["id"].as_str()?, package["name"].as_str()?)))
            .collect();
        let mut normal_deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let nodes = metadata["resolve"]["nodes"]
            .as_array()
            .context("metadata has no resolve graph")?;
        for node in nodes {
            let id = node["id"].as_str().context("resolve node without id")?;
            let name = names.get(id).context("resolve node of unknown package")?;
            let entry = normal_deps.entry(name.to_string()).or_default();
            for dep in node["deps"].as_array().into_iter().flatten() {
                let is_normal = dep["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|kind| kind["kind"].is_null());
                let dep_name = dep["pkg"].as_str().and_then(|pkg| names.get(pkg));
                if let (true, Some(dep_name)) = (is_normal, dep_name) {
                    entry.insert(dep_name.to_string());
                }
            }
        }
        Ok(DependencyGraph { normal_deps })
    }

    fn direct(&self, package: &str) -> BTreeSet<String> {
        self.normal_deps.get(package).cloned().unwrap_or_default()
    }

    fn transitive(&self, package: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut pending = vec![package.to_string()];
        while let Some(next) = pending.pop() {
            for dep in self.direct(&next) {
                if seen.insert(dep.clone()) {
                    pending.push(dep);
                }
            }
        }
        seen
    }
}

fn check_rule(graph: &DependencyGraph, rule: &CrateRule) -> Vec<String> {
    let mut violations = Vec::new();
    let direct = graph.direct(rule.name);
    let transitive = graph.transitive(rule.name);
    for dep in &direct {
        let is_workspace = dep.starts_with("nodedb-cluster-") || dep == "xtask";
        if is_workspace && !rule.allowed_workspace_deps.contains(&dep.as_str()) {
            violations.push(format!("{} must not depend on {dep}", rule.name));
        }
        if rule.forbidden_direct.contains(&dep.as_str()) {
            violations.push(format!("{} must not depend directly on {dep}", rule.name));
        }
    }
    for forbidden in rule.forbidden_transitive {
        if transitive.contains(*forbidden) {
            violations.push(format!(
                "{} must not reach {forbidden}, directly or transitively",
                rule.name
            ));
        }
    }
    violations
}

fn check_core_sources(source_dir: &Path) -> Result<Vec<String>> {
    let mut violations = Vec::new();
    let mut pending = vec![source_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_some_and(|extension| extension == "rs") {
                let text = std::fs::read_to_string(&path)?;
                for (line_number, line) in text.lines().enumerate() {
                    for forbidden in CORE_FORBIDDEN_SOURCE {
                        if line.contains(forbidden) && !line.trim_start().starts_with("//") {
                            violations.push(format!(
                                "{}:{}: core must not use {forbidden}",
                                path.display(),
                                line_number + 1
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_follows_the_layering_rules() {
        let report = check_workspace().unwrap_or_else(|error| panic!("{error:#}"));
        assert!(report.contains("layering ok"));
    }

    #[test]
    fn every_workspace_crate_has_a_rule() {
        let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let metadata = cargo_metadata(workspace_root).unwrap();
        let members: BTreeSet<&str> = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|package| package["source"].is_null())
            .filter_map(|package| package["name"].as_str())
            .filter(|name| *name != "xtask")
            .collect();
        let ruled: BTreeSet<&str> = RULES.iter().map(|rule| rule.name).collect();
        assert_eq!(members, ruled, "every library crate needs a layering rule");
    }

    #[test]
    fn a_forbidden_edge_is_reported() {
        let mut normal_deps = BTreeMap::new();
        normal_deps.insert(CORE.to_string(), BTreeSet::from(["helper".to_string()]));
        normal_deps.insert("helper".to_string(), BTreeSet::from(["tokio".to_string()]));
        let graph = DependencyGraph { normal_deps };
        let violations = check_rule(&graph, &RULES[0]);
        assert_eq!(
            violations,
            vec![format!(
                "{CORE} must not reach tokio, directly or transitively"
            )]
        );
    }
}
