//! Throwaway certificates for the local control plane: a CA, the API server's serving certificate
//! (SANs `localhost` and IP 127.0.0.1), an admin client certificate (CN `admin`, O `system:masters`)
//! and the service-account signing key pair. Generated in-process with rcgen; no openssl.

use std::{
    fs,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::Error;

/// Paths of the generated files, plus the PEMs the kubeconfig embeds.
pub(super) struct Certs {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_public: PathBuf,
    pub sa_private: PathBuf,
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

pub(super) fn generate(dir: &Path) -> Result<Certs, Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "poolkeeper-testenv-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    let sa_key = KeyPair::generate()?;

    let files = Certs {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_public: dir.join("sa.pub"),
        sa_private: dir.join("sa.key"),
        ca_pem,
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
    };
    let write = |path: &Path, contents: &str| {
        fs::write(path, contents).map_err(Error::io("writing certificates"))
    };
    write(&files.ca_cert, &files.ca_pem)?;
    write(&files.serving_cert, &serving_cert.pem())?;
    write(&files.serving_key, &serving_key.serialize_pem())?;
    write(&files.sa_public, &sa_key.public_key_pem())?;
    write(&files.sa_private, &sa_key.serialize_pem())?;
    Ok(files)
}

/// A kubeconfig for the admin user with every credential embedded.
pub(super) fn kubeconfig(url: &str, certs: &Certs) -> Result<String, Error> {
    let b64 = |s: &str| STANDARD.encode(s.as_bytes());
    Ok(format!(
        "apiVersion: v1
kind: Config
clusters:
- name: poolkeeper-local
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: poolkeeper-local
  context:
    cluster: poolkeeper-local
    user: admin
current-context: poolkeeper-local
",
        ca = b64(&certs.ca_pem),
        cert = b64(&certs.admin_cert_pem),
        key = b64(&certs.admin_key_pem),
    ))
}
