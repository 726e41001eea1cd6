//! TLS for the host wire, mutual as VDSM's: the agent serves with its certificate and, given the
//! pool CA, accepts only client certificates that CA signed for the controller
//! ([`CONTROLLER_NAME`]); the controller trusts only the pool CA, presents its own certificate,
//! and checks that a host's certificate names that Host. Both use ring, as the rest of the
//! crate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file or bundle could not be read or holds nothing usable.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input.
        what: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the material (e.g. a key that does not match the certificate).
    #[error("tls configuration refused")]
    Rustls(#[source] rustls::Error),
}

/// The name a controller's client certificate carries (a DNS subject alternative name), and the
/// only client identity an agent accepts calls from.
pub const CONTROLLER_NAME: &str = "poolkeeper-controller";

/// Whether the certificate `cert` (DER) names `name` (a DNS name or an IP address among its
/// subject alternative names). Its chain is checked elsewhere (by the handshake).
pub fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(subject) = rustls::pki_types::ServerName::try_from(name) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&subject).is_ok()
}

fn read_certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_owned(),
            reason: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

fn roots(what: &str, pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(what, pem)? {
        roots.add(cert).map_err(TlsError::Rustls)?;
    }
    Ok(roots)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Pem {
        what: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The agent's serving configuration: its certificate chain and key (PEM files) and, with
/// `client_ca`, client certificates required and checked against that CA (PEM file).
///
/// # Errors
/// When a file cannot be read or the key does not fit the certificate.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certs(&cert.display().to_string(), &read_file(cert)?)?;
    let key_der = PrivateKeyDer::from_pem_slice(&read_file(key)?).map_err(|e| TlsError::Pem {
        what: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = roots(&ca.display().to_string(), &read_file(ca)?)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Pem {
                what: ca.display().to_string(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key_der)
        .map_err(TlsError::Rustls)?;
    Ok(Arc::new(config))
}

/// The controller's client configuration: trusts only the certificates of `ca_pem` and, with
/// `identity` (certificate chain and key, PEM), presents it.
///
/// # Errors
/// When the bundle holds no certificate or one rustls refuses, or the identity is unusable.
pub fn client_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_root_certificates(roots("the CA bundle", ca_pem)?);
    let config = match identity {
        Some((cert, key)) => {
            let chain = read_certs("the client certificate", cert)?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
                what: "the client key".into(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsError::Rustls)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
