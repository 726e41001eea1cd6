//! TLS for the host wire, mutual as VDSM's: the agent serves with its certificate and, given the
//! pool CA, accepts only client certificates that CA signed for the controller
//! ([`CONTROLLER_NAME`]); the controller trusts only the pool CA, presents its own certificate,
//! and checks that a host's certificate names that Host. Both use ring, as the rest of the
//! crate.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

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

/// A certificate and key that can be replaced while connections run (rotation): each new
/// handshake presents the current one; connections already open keep theirs. Serves as the
/// agent's serving certificate and as the controller's client certificate.
#[derive(Debug, Default)]
pub struct Identity(RwLock<Option<Arc<CertifiedKey>>>);

impl Identity {
    /// An identity holding `cert_pem` (a chain, leaf first) and `key_pem`.
    ///
    /// # Errors
    /// When either is unreadable or the key is not the certificate's.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<Self>, TlsError> {
        let identity = Arc::new(Self::default());
        identity.set_pem(cert_pem, key_pem)?;
        Ok(identity)
    }

    /// Replaces the certificate and key: handshakes from now on present them.
    ///
    /// # Errors
    /// When either is unreadable or the key is not the certificate's (the old one stays).
    pub fn set_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let chain = read_certs("the certificate", cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            what: "the private key".into(),
            reason: e.to_string(),
        })?;
        let certified =
            CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Rustls)?;
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(certified));
        Ok(())
    }

    /// Whether a certificate is set (an agent waiting for its first one has none).
    pub fn is_set(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for Identity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.is_set()
    }
}

/// The agent's serving configuration from files: its certificate chain and key (PEM) and, with
/// `client_ca`, client certificates required and checked against that CA (PEM file).
///
/// # Errors
/// When a file cannot be read or the key does not fit the certificate.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let identity =
        Identity::from_pem(&read_file(cert)?, &read_file(key)?).map_err(|e| match e {
            TlsError::Pem { reason, .. } => TlsError::Pem {
                what: format!("{} or {}", cert.display(), key.display()),
                reason,
            },
            other => other,
        })?;
    let client_ca = client_ca
        .map(|ca| Ok::<_, TlsError>((ca.display().to_string(), read_file(ca)?)))
        .transpose()?;
    server_config_with(
        identity,
        client_ca
            .as_ref()
            .map(|(what, pem)| (what.as_str(), pem.as_slice())),
    )
}

/// The agent's serving configuration: it presents `identity` (replaceable, for rotation) and,
/// with `client_ca` (a name for errors, and PEM), requires client certificates that CA signed.
///
/// # Errors
/// When the CA bundle holds no usable certificate.
pub fn server_config_with(
    identity: Arc<Identity>,
    client_ca: Option<(&str, &[u8])>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?;
    let builder = match client_ca {
        Some((what, pem)) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots(what, pem)?.into(),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Pem {
                what: what.to_owned(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(builder.with_cert_resolver(identity)))
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
    let identity = identity
        .map(|(cert, key)| Identity::from_pem(cert, key))
        .transpose()?;
    client_config_with(ca_pem, identity)
}

/// The controller's client configuration: trusts only the certificates of `ca_pem` and, with
/// `identity` (replaceable, for rotation), presents it.
///
/// # Errors
/// When the bundle holds no certificate or one rustls refuses.
pub fn client_config_with(
    ca_pem: &[u8],
    identity: Option<Arc<Identity>>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_root_certificates(roots("the CA bundle", ca_pem)?);
    Ok(Arc::new(match identity {
        Some(identity) => builder.with_client_cert_resolver(identity),
        None => builder.with_no_client_auth(),
    }))
}
