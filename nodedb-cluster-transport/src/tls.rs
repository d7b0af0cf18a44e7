//! Certificates and rustls configurations for mutual TLS between nodes: a cluster CA, node
//! certificates whose only DNS name `node-<id>.nodedb-cluster` names the node, and the TLS 1.3
//! configs that require them. The ring provider is passed explicitly everywhere, so the build
//! never depends on which crypto provider happens to be compiled in.
//!
//! Insecure mode (development only) generates an ephemeral self-signed certificate and accepts
//! any server certificate; the peer's node id then comes from its `Hello` frame.

use crate::codec::ALPN_PROTOCOL;
use nodedb_cluster_core::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// DNS suffix of every node identity.
pub const NODE_NAME_SUFFIX: &str = "nodedb-cluster";

/// A cluster CA: the PEM certificate and its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A node's certificate, signed by the cluster CA, and its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCertMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a node needs for mutual TLS: the CA it trusts and its own certificate and key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// How a node authenticates its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Mutual TLS with the cluster CA. The only mode for anything but a developer's laptop.
    Secure(TlsMaterial),
    /// No authentication at all: any peer may claim any node id. Logged loudly.
    Insecure,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("could not generate a certificate: {0}")]
    Generate(String),
    #[error("could not read {what} PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("could not read {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    #[error("certificate names no node (expected a DNS name node-<id>.{NODE_NAME_SUFFIX})")]
    NoNodeIdentity,
    #[error("certificate names several nodes: {0:?}")]
    SeveralNodeIdentities(Vec<u64>),
    #[error("certificate is for {actual}, but this node is {expected}")]
    WrongNode { expected: NodeId, actual: NodeId },
    #[error("rustls refused the configuration: {0}")]
    Config(String),
}

/// The DNS name that identifies `node` in its certificate, and that a client dials it by.
pub fn node_server_name(node: NodeId) -> String {
    format!("node-{}.{NODE_NAME_SUFFIX}", node.0)
}

/// The node id named by `dns_name`, if it is exactly `node-<id>.nodedb-cluster` with `<id>` a
/// non-zero decimal without leading zeros.
pub fn parse_node_server_name(dns_name: &str) -> Option<NodeId> {
    let digits = dns_name
        .strip_prefix("node-")?
        .strip_suffix(NODE_NAME_SUFFIX)?
        .strip_suffix('.')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|byte| byte.is_ascii_digit())
        && !digits.starts_with('0');
    if !canonical {
        return None;
    }
    digits.parse::<u64>().ok().map(NodeId)
}

/// Generates a new cluster CA (ECDSA P-256).
pub fn generate_ca(cluster_name: &str) -> Result<CaMaterial, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{cluster_name} cluster CA"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, NODE_NAME_SUFFIX);
    let key = KeyPair::generate().map_err(generate_error)?;
    let cert = params.self_signed(&key).map_err(generate_error)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a certificate for `node`, signed by `ca`, usable as both server and client.
pub fn issue_node_cert(ca: &CaMaterial, node: NodeId) -> Result<NodeCertMaterial, TlsError> {
    if node.0 == 0 {
        return Err(TlsError::Generate("node id 0 is invalid".into()));
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|error| TlsError::Pem {
        what: "CA key",
        reason: error.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|error| TlsError::Pem {
        what: "CA certificate",
        reason: error.to_string(),
    })?;
    let (cert, key) = node_params(node)?;
    let cert = cert.signed_by(&key, &issuer).map_err(generate_error)?;
    Ok(NodeCertMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The node id named in a DER certificate's subject alternative names. Exactly one
/// `node-<id>.nodedb-cluster` DNS name must be present.
pub fn node_id_from_cert(der: &[u8]) -> Result<NodeId, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| TlsError::BadCertificate(error.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|error| TlsError::BadCertificate(error.to_string()))?
        .ok_or(TlsError::NoNodeIdentity)?;
    let mut nodes: Vec<u64> = names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => parse_node_server_name(dns),
            _ => None,
        })
        .map(|node| node.0)
        .collect();
    nodes.dedup();
    match nodes.as_slice() {
        [] => Err(TlsError::NoNodeIdentity),
        [node] => Ok(NodeId(*node)),
        _ => Err(TlsError::SeveralNodeIdentities(nodes)),
    }
}

impl TlsMaterial {
    /// Reads the three PEM files a node is configured with.
    pub fn from_files(ca_cert: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
        Ok(TlsMaterial {
            ca_cert_pem: read_file(ca_cert)?,
            cert_pem: read_file(cert)?,
            key_pem: read_file(key)?,
        })
    }

    /// Material for `node` from a CA, issuing a fresh certificate (tests, bootstrap tools).
    pub fn issue(ca: &CaMaterial, node: NodeId) -> Result<TlsMaterial, TlsError> {
        let issued = issue_node_cert(ca, node)?;
        Ok(TlsMaterial {
            ca_cert_pem: ca.cert_pem.clone(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        })
    }

    /// The node id this material's own certificate names.
    pub fn node_id(&self) -> Result<NodeId, TlsError> {
        let chain = certificates(&self.cert_pem, "node certificate")?;
        node_id_from_cert(&chain[0])
    }
}

/// Server side of mutual TLS: TLS 1.3 only, client certificates required and checked against
/// the CA, ALPN `nodedb-cluster/1`, no early data.
pub fn server_config(material: &TlsMaterial) -> Result<ServerConfig, TlsError> {
    let provider = ring_provider();
    let roots = Arc::new(root_store(&material.ca_cert_pem)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .build()
        .map_err(config_error)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certificates(&material.cert_pem, "node certificate")?,
            private_key(&material.key_pem)?,
        )
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// Client side of mutual TLS: trusts only the CA, presents this node's certificate.
pub fn client_config(material: &TlsMaterial) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(root_store(&material.ca_cert_pem)?)
        .with_client_auth_cert(
            certificates(&material.cert_pem, "node certificate")?,
            private_key(&material.key_pem)?,
        )
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// Client side for calls by address, when the peer's node id is not known yet: the server's
/// chain is checked against the CA and the certificate must be valid for the node name it
/// carries itself; the caller then reads the node id from it.
pub fn client_config_any_node(material: &TlsMaterial) -> Result<ClientConfig, TlsError> {
    let provider = ring_provider();
    let roots = Arc::new(root_store(&material.ca_cert_pem)?);
    let inner = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .build()
        .map_err(config_error)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyNodeServer { inner }))
        .with_client_auth_cert(
            certificates(&material.cert_pem, "node certificate")?,
            private_key(&material.key_pem)?,
        )
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// Insecure server: an ephemeral self-signed certificate, no client authentication.
pub fn insecure_server_config(node: NodeId) -> Result<ServerConfig, TlsError> {
    let (params, key) = node_params(node)?;
    let cert = params.self_signed(&key).map_err(generate_error)?;
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|reason| TlsError::Pem {
        what: "ephemeral key",
        reason: reason.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// Insecure client: accepts any server certificate (the handshake signature is still checked,
/// so the connection is encrypted, just not authenticated).
pub fn insecure_client_config() -> Result<ClientConfig, TlsError> {
    let provider = ring_provider();
    let verifier = Arc::new(AcceptAnyServer {
        provider: Arc::clone(&provider),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// The crypto provider of every config in this crate.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial").finish_non_exhaustive()
    }
}

impl fmt::Debug for NodeCertMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCertMaterial").finish_non_exhaustive()
    }
}

/// Keys stay out of logs.
impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("node", &self.node_id().ok())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------

/// Verifies a server against the CA under the node name its own certificate carries.
#[derive(Debug)]
struct AnyNodeServer {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyNodeServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let node = node_id_from_cert(end_entity).map_err(|error| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(error),
            )))
        })?;
        let name = ServerName::try_from(node_server_name(node))
            .map_err(|_| rustls::Error::General("node name is not a DNS name".into()))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any server certificate; used only in insecure mode.
#[derive(Debug)]
struct AcceptAnyServer {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Parameters and a fresh key for a node certificate: one DNS name, server + client usage.
fn node_params(node: NodeId) -> Result<(CertificateParams, KeyPair), TlsError> {
    let name = node_server_name(node);
    let mut params = CertificateParams::new(vec![name.clone()]).map_err(generate_error)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(generate_error)?;
    Ok((params, key))
}

fn certificates(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            what,
            reason: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|error| TlsError::Pem {
        what: "node key",
        reason: error.to_string(),
    })
}

fn root_store(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem, "CA certificate")? {
        roots.add(cert).map_err(config_error)?;
    }
    Ok(roots)
}

fn read_file(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|error| TlsError::Io {
        path: path.display().to_string(),
        reason: error.to_string(),
    })
}

fn generate_error(error: rcgen::Error) -> TlsError {
    TlsError::Generate(error.to_string())
}

fn config_error(error: impl fmt::Display) -> TlsError {
    TlsError::Config(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip_and_reject_near_misses() {
        assert_eq!(node_server_name(NodeId(42)), "node-42.nodedb-cluster");
        assert_eq!(
            parse_node_server_name("node-42.nodedb-cluster"),
            Some(NodeId(42))
        );
        for bad in [
            "node-0.nodedb-cluster",
            "node-042.nodedb-cluster",
            "node-.nodedb-cluster",
            "node-4x.nodedb-cluster",
            "node-+4.nodedb-cluster",
            "node-4.nodedb-clusterx",
            "node-4nodedb-cluster",
            "node-99999999999999999999.nodedb-cluster",
            "xnode-4.nodedb-cluster",
        ] {
            assert_eq!(parse_node_server_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn issued_cert_names_its_node() {
        let ca = generate_ca("test").unwrap();
        let material = TlsMaterial::issue(&ca, NodeId(7)).unwrap();
        assert_eq!(material.node_id(), Ok(NodeId(7)));
        assert!(server_config(&material).is_ok());
        assert!(client_config(&material).is_ok());
    }

    #[test]
    fn ca_cert_names_no_node_and_garbage_does_not_parse() {
        let ca = generate_ca("test").unwrap();
        let der = certificates(&ca.cert_pem, "ca").unwrap();
        assert!(matches!(
            node_id_from_cert(&der[0]),
            Err(TlsError::NoNodeIdentity | TlsError::BadCertificate(_))
        ));
        assert!(matches!(
            node_id_from_cert(b"not a certificate"),
            Err(TlsError::BadCertificate(_))
        ));
    }

    #[test]
    fn insecure_configs_build() {
        assert!(insecure_server_config(NodeId(1)).is_ok());
        assert!(insecure_client_config().is_ok());
    }
}
