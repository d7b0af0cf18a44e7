//! Getting the pieces a local cluster needs from the node binary itself: building it with
//! cargo (its path read from cargo's own JSON messages, so any target dir works), and the
//! cluster CA and node certificates through `nodedb-cluster certs`.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The package and binary the launcher runs.
pub const NODE_PACKAGE: &str = "nodedb-cluster-node";
pub const NODE_BINARY: &str = "nodedb-cluster";

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask lives one level below the workspace root")
}

/// Cargo's target directory for this workspace.
pub fn target_dir() -> Result<PathBuf> {
    let root = workspace_root()?;
    let output = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed with {}", output.status);
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata names no target_directory")
}

/// The node binary to run: `given` (a relative path taken from the current directory, as the
/// nodes run in their own directories), else a fresh build.
pub fn node_binary(given: Option<&Path>, release: bool) -> Result<PathBuf> {
    match given {
        Some(path) => std::path::absolute(path)
            .with_context(|| format!("resolving node binary {}", path.display())),
        None => build_node(release),
    }
}

/// Builds the node binary and returns its path. Cargo's diagnostics go to our stderr.
pub fn build_node(release: bool) -> Result<PathBuf> {
    let mut command = Command::new(cargo());
    command
        .args(["build", "--package", NODE_PACKAGE, "--bin", NODE_BINARY])
        .args(["--message-format", "json-render-diagnostics"])
        .current_dir(workspace_root()?)
        .stderr(Stdio::inherit());
    if release {
        command.arg("--release");
    }
    eprintln!(
        "building {NODE_BINARY} ({} profile) ...",
        if release { "release" } else { "dev" }
    );
    let output = command.output().context("running cargo build")?;
    if !output.status.success() {
        bail!("cargo build of {NODE_BINARY} failed with {}", output.status);
    }
    let messages = String::from_utf8_lossy(&output.stdout);
    executable_from_messages(&messages, NODE_BINARY)
        .with_context(|| format!("cargo built no executable named {NODE_BINARY}"))
}

/// The path of the executable `binary` in cargo's `--message-format json` output.
pub fn executable_from_messages(messages: &str, binary: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == binary)
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .next_back()
}

/// Runs `certs init` once and `certs issue` per node, then checks that every promised file
/// exists, naming the first missing one.
pub fn make_certs(binary: &Path, certs_dir: &Path, node_ids: &[u64]) -> Result<()> {
    std::fs::create_dir_all(certs_dir)
        .with_context(|| format!("creating {}", certs_dir.display()))?;
    let dir = certs_dir.to_str().context("certs dir is not UTF-8")?;
    run_binary(binary, &["certs", "init", "--dir", dir])?;
    for node_id in node_ids {
        let id = node_id.to_string();
        run_binary(binary, &["certs", "issue", "--dir", dir, "--node-id", &id])?;
    }
    for file in cert_files(node_ids) {
        let path = certs_dir.join(&file);
        if !path.is_file() {
            bail!(
                "`{NODE_BINARY} certs` exited successfully but did not write {}",
                path.display()
            );
        }
    }
    Ok(())
}

/// Issues a certificate for one more node under the CA [`make_certs`] made in `certs_dir`.
pub fn issue_cert(binary: &Path, certs_dir: &Path, node_id: u64) -> Result<()> {
    let dir = certs_dir.to_str().context("certs dir is not UTF-8")?;
    let id = node_id.to_string();
    run_binary(binary, &["certs", "issue", "--dir", dir, "--node-id", &id])
}

/// The files `certs init` and `certs issue` promise, for `node_ids`.
pub fn cert_files(node_ids: &[u64]) -> Vec<String> {
    let mut files = vec!["ca.pem".to_string(), "ca.key".to_string()];
    for node_id in node_ids {
        files.push(format!("node-{node_id}.pem"));
        files.push(format!("node-{node_id}.key"));
    }
    files
}

fn run_binary(binary: &Path, arguments: &[&str]) -> Result<()> {
    let output = Command::new(binary)
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} {}", binary.display(), arguments.join(" ")))?;
    if !output.status.success() {
        bail!(
            "`{NODE_BINARY} {}` failed with {}:\n{}{}",
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_is_found_among_cargo_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"nodedb_cluster_node"},"executable":null}"#,
            "not json at all",
            r#"{"reason":"compiler-message","target":{"name":"nodedb-cluster"}}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"nodedb-cluster"},"executable":"/t/debug/nodedb-cluster"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        assert_eq!(
            executable_from_messages(&messages, "nodedb-cluster"),
            Some(PathBuf::from("/t/debug/nodedb-cluster"))
        );
        assert_eq!(executable_from_messages(&messages, "other"), None);
        assert_eq!(executable_from_messages("", "nodedb-cluster"), None);
    }

    #[test]
    fn cert_files_follow_the_contract_names() {
        assert_eq!(
            cert_files(&[1, 2]),
            [
                "ca.pem",
                "ca.key",
                "node-1.pem",
                "node-1.key",
                "node-2.pem",
                "node-2.key"
            ]
        );
    }

    #[test]
    fn a_binary_that_writes_nothing_is_named() {
        let dir = std::env::temp_dir().join(format!("xtask-certs-{}", std::process::id()));
        let error = make_certs(Path::new("true"), &dir, &[1])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("did not write") && error.contains("ca.pem"),
            "{error}"
        );
        let error = make_certs(Path::new("false"), &dir, &[1])
            .unwrap_err()
            .to_string();
        assert!(error.contains("certs init"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
