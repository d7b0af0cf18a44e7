//! `nodedb-cluster status`: the cluster as readable tables, or the raw JSON.

use super::client::AdminClient;
use anyhow::Result;
use serde_json::Value;
use std::fmt::Write;

pub fn run(client: &AdminClient, json: bool) -> Result<()> {
    let cluster = client.get_json("/v1/cluster")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&cluster)?);
    } else {
        print!("{}", render(&cluster));
    }
    Ok(())
}

/// Renders `GET /v1/cluster` as a header line and two aligned tables.
fn render(cluster: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}  seen from node {}  routing version {}",
        text(&cluster["cluster_id"]),
        text(&cluster["node_id"]),
        text(&cluster["routing_version"]),
    );
    let nodes: Vec<Vec<String>> = list(&cluster["nodes"])
        .map(|node| {
            vec![
                text(&node["id"]),
                text(&node["state"]),
                text(&node["addr"]),
                text(&node["admin_addr"]),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["NODE", "STATE", "QUIC", "ADMIN"], &nodes));
    let groups: Vec<Vec<String>> = list(&cluster["groups"])
        .map(|group| {
            let commit = group["commit_index"].as_u64().unwrap_or(0);
            let applied = group["applied_index"].as_u64().unwrap_or(0);
            vec![
                text(&group["id"]),
                text(&group["leader"]),
                text(&group["term"]),
                commit.to_string(),
                applied.to_string(),
                commit.saturating_sub(applied).to_string(),
                ids(&group["voters"]),
                ids(&group["learners"]),
                text(&group["vshard_count"]),
                text(&group["bytes"]),
            ]
        })
        .collect();
    out.push('\n');
    let headers = [
        "GROUP", "LEADER", "TERM", "COMMIT", "APPLIED", "LAG", "VOTERS", "LEARNERS", "VSHARDS",
        "BYTES",
    ];
    out.push_str(&table(&headers, &groups));
    out
}

fn list(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn ids(value: &Value) -> String {
    let joined: Vec<String> = list(value).map(text).collect();
    if joined.is_empty() {
        "-".to_string()
    } else {
        joined.join(",")
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|header| header.to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_nodes_and_groups_with_lag() {
        let cluster = json!({
            "cluster_id": "c1", "node_id": 1, "routing_version": 4,
            "nodes": [{"id": 1, "addr": "127.0.0.1:9400", "admin_addr": "127.0.0.1:9401", "state": "active"}],
            "groups": [{"id": 0, "voters": [1, 2, 3], "learners": [], "leader": 2, "term": 5,
                        "commit_index": 40, "applied_index": 37, "vshard_count": 0, "bytes": 0},
                       {"id": 1, "voters": [1], "learners": [4], "leader": null, "term": 1,
                        "commit_index": 9, "applied_index": 9, "vshard_count": 128,
                        "bytes": null}]
        });
        let expected = "\
cluster c1  seen from node 1  routing version 4

NODE  STATE   QUIC            ADMIN
1     active  127.0.0.1:9400  127.0.0.1:9401

GROUP  LEADER  TERM  COMMIT  APPLIED  LAG  VOTERS  LEARNERS  VSHARDS  BYTES
0      2       5     40      37       3    1,2,3   -         0        0
1      -       1     9       9        0    1       4         128      -
";
        assert_eq!(render(&cluster), expected);
    }
}
