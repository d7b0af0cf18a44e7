//! `certs init` and `certs issue`: the cluster CA and node certificates as PEM files.

use anyhow::{Context, Result, bail};
use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::tls::{self, CaMaterial};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

/// Writes a new CA to `dir/ca.pem` and `dir/ca.key`; refuses to replace one unless `force`.
pub fn init(dir: &Path, cluster_name: &str, force: bool) -> Result<()> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    if !force && (cert_path.exists() || key_path.exists()) {
        bail!(
            "{} already holds a CA; pass --force to replace it (then issue every node \
             certificate again)",
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = tls::generate_ca(cluster_name)?;
    write_file(&cert_path, &ca.cert_pem, false)?;
    write_file(&key_path, &ca.key_pem, true)?;
    println!("wrote {} and {}", cert_path.display(), key_path.display());
    Ok(())
}

/// Writes `dir/node-N.pem` and `dir/node-N.key`, signed by the CA in `dir`.
pub fn issue(dir: &Path, node_id: u64) -> Result<()> {
    if node_id == 0 {
        bail!("--node-id must be at least 1");
    }
    let ca = CaMaterial {
        cert_pem: read_file(&dir.join(CA_CERT_FILE))?,
        key_pem: read_file(&dir.join(CA_KEY_FILE))?,
    };
    let node = tls::issue_node_cert(&ca, NodeId(node_id))?;
    let (cert_path, key_path) = node_paths(dir, node_id);
    write_file(&cert_path, &node.cert_pem, false)?;
    write_file(&key_path, &node.key_pem, true)?;
    println!("wrote {} and {}", cert_path.display(), key_path.display());
    Ok(())
}

fn node_paths(dir: &Path, node_id: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("node-{node_id}.pem")),
        dir.join(format!("node-{node_id}.key")),
    )
}

fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} (create the CA first with `nodedb-cluster certs init --dir DIR`)",
            path.display()
        )
    })
}

/// Writes `contents`; private keys are readable by the owner only.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue_gives_a_certificate_naming_the_node() {
        let directory = tempfile::tempdir().unwrap();
        init(directory.path(), "test", false).unwrap();
        issue(directory.path(), 7).unwrap();
        let pem = fs::read_to_string(directory.path().join("node-7.pem")).unwrap();
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(tls::node_id_from_cert(&der).unwrap(), NodeId(7));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(directory.path().join("node-7.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn init_refuses_to_replace_a_ca_without_force() {
        let directory = tempfile::tempdir().unwrap();
        init(directory.path(), "test", false).unwrap();
        let first = fs::read_to_string(directory.path().join(CA_CERT_FILE)).unwrap();
        let error = init(directory.path(), "test", false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--force"), "{error}");
        assert_eq!(
            fs::read_to_string(directory.path().join(CA_CERT_FILE)).unwrap(),
            first
        );
        init(directory.path(), "test", true).unwrap();
        assert_ne!(
            fs::read_to_string(directory.path().join(CA_CERT_FILE)).unwrap(),
            first
        );
    }

    #[test]
    fn issue_without_a_ca_says_how_to_make_one() {
        let directory = tempfile::tempdir().unwrap();
        let error = format!("{:#}", issue(directory.path(), 1).unwrap_err());
        assert!(error.contains("certs init"), "{error}");
        assert!(issue(directory.path(), 0).is_err());
    }
}
