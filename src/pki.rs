//! The pool's certificates, as the kubelet-serving flow issues nodes' serving certificates: one
//! pool CA (kept in a Secret by the controller) signs the controller's client certificate and,
//! through the `certificates.k8s.io/v1` CertificateSigningRequest API with signer
//! [`SIGNER_NAME`], each host's serving certificate for its Host name. Only the name: the
//! controller checks a host's certificate against the Host it calls, and an address would have
//! to be vouched for by someone other than the agent (the agent writes its own
//! `status.endpoint`), or one agent could name another's.
//!
//! Pure: no client and no clock (`now` is passed in). [`review`] decides whether a request is
//! approved, denied or waits; [`PoolCa::sign`] signs only what [`review`] approved;
//! [`request`] is the agent's side.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// The signer hosts' serving certificates are requested from.
pub const SIGNER_NAME: &str = "poolkeeper.io/host-serving";

/// The user extra that bound ServiceAccount tokens of Pods carry: the node the Pod runs on.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The usages a host asks for: its certificate serves TLS and nothing else.
pub const HOST_USAGES: [&str; 2] = ["digital signature", "server auth"];

/// How far back a certificate's validity starts, for clocks that lag the controller's (as
/// Kubernetes' own signers backdate by five minutes).
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// How long the pool CA lasts.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why certificate material could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused (a malformed PEM, a key that is not the CA's...).
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate could not be read.
    #[error("{what}: {reason}")]
    Certificate {
        /// Which certificate.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

fn rcgen(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { what, source }
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// The pool CA: the one issuer the controller and the agents trust.
pub struct PoolCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    key_pem: String,
}

impl std::fmt::Debug for PoolCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCa").finish_non_exhaustive()
    }
}

fn time(at: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(at)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as RFC 5280 wants.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

impl PoolCa {
    /// A new CA named `name`, valid for ten years from `now`.
    ///
    /// # Errors
    /// When rcgen fails.
    pub fn generate_at(name: &str, now: SystemTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(rcgen("generating the CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen("CA"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = time(now.checked_sub(BACKDATE).unwrap_or(now));
        params.not_after = time(now + CA_LIFETIME);
        params.serial_number = Some(random_serial());
        let pem = params
            .self_signed(&key)
            .map_err(rcgen("self-signing the CA"))?
            .pem();
        Ok(Self {
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// A new CA named `name` (tests and demos; a deployment's lives in a Secret).
    ///
    /// # Errors
    /// When rcgen fails.
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        Self::generate_at(name, SystemTime::now())
    }

    /// The CA kept as PEM (a `kubernetes.io/tls` Secret's `tls.crt` and `tls.key`).
    ///
    /// # Errors
    /// When either PEM is unreadable or the key is not the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen("reading the CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(rcgen("reading the CA certificate"))?;
        let cert = first_der(cert_pem, "the CA certificate")?;
        let spki = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| PkiError::Certificate {
                what: "the CA certificate",
                reason: e.to_string(),
            })?
            .1
            .tbs_certificate
            .subject_pki
            .subject_public_key
            .data
            .to_vec();
        if spki != rcgen::PublicKeyData::der_bytes(issuer.key()) {
            return Err(PkiError::Certificate {
                what: "the CA key",
                reason: "it is not the key of the CA certificate".into(),
            });
        }
        Ok(Self {
            issuer,
            pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate, PEM (what agents and the controller trust).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The CA's private key, PEM (only for the Secret that keeps it).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A certificate for `names` (DNS names or IP addresses) for `usage`, valid from `now` for
    /// `lifetime`, with a fresh key.
    ///
    /// # Errors
    /// When a name is not a DNS name or an IP address, or rcgen fails.
    pub fn issue_at(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(rcgen("generating a key"))?;
        let params = leaf(names, usage, now, lifetime)?;
        Ok(Issued {
            cert_pem: params
                .signed_by(&key, &self.issuer)
                .map_err(rcgen("signing"))?
                .pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for `names` for `usage`, valid for a year (tests).
    ///
    /// # Errors
    /// When rcgen fails.
    pub fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Issued, PkiError> {
        self.issue_at(
            names,
            usage,
            SystemTime::now(),
            Duration::from_secs(365 * 24 * 3600),
        )
    }

    /// The controller's client certificate ([`crate::protocol::tls::CONTROLLER_NAME`], client
    /// use only), valid from `now` for `lifetime`.
    ///
    /// # Errors
    /// When rcgen fails.
    pub fn controller_at(&self, now: SystemTime, lifetime: Duration) -> Result<Issued, PkiError> {
        self.issue_at(
            &[crate::protocol::tls::CONTROLLER_NAME],
            ExtendedKeyUsagePurpose::ClientAuth,
            now,
            lifetime,
        )
    }

    /// The controller's client certificate, valid for a year (tests).
    ///
    /// # Errors
    /// When rcgen fails.
    pub fn controller(&self) -> Result<Issued, PkiError> {
        self.issue(
            &[crate::protocol::tls::CONTROLLER_NAME],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// A host's serving certificate for its Host name and address, valid for a year (tests; a
    /// deployment's hosts request theirs, [`review`]).
    ///
    /// # Errors
    /// When rcgen fails.
    pub fn host(&self, name: &str, address: &str) -> Result<Issued, PkiError> {
        self.issue(&[name, address], ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Signs what [`review`] approved: the requested key, for the reviewed names, for server use
    /// only, valid from `now` for `lifetime`. Nothing else of the request is copied.
    ///
    /// # Errors
    /// When rcgen fails.
    pub fn sign(
        &self,
        approved: &Approved,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let names: Vec<&str> = approved.names.iter().map(String::as_str).collect();
        let params = leaf(&names, ExtendedKeyUsagePurpose::ServerAuth, now, lifetime)?;
        let request = CertificateSigningRequestParams {
            params,
            public_key: approved.public_key.clone(),
        };
        Ok(request
            .signed_by(&self.issuer)
            .map_err(rcgen("signing a host certificate"))?
            .pem())
    }
}

/// An end-entity certificate's parameters: `names` (the first is also its common name), for
/// `usage` only, valid from `now` (backdated) for `lifetime`, with a random serial.
fn leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    now: SystemTime,
    lifetime: Duration,
) -> Result<CertificateParams, PkiError> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .map_err(rcgen("a certificate's names"))?;
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, *first);
    }
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = time(now.checked_sub(BACKDATE).unwrap_or(now));
    params.not_after = time(now + lifetime);
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// A CertificateSigningRequest, as the signer sees it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Who created it (`spec.username`, set by the API server).
    pub username: &'a str,
    /// The node its creator's token was bound to (`spec.extra`'s [`NODE_NAME_EXTRA`]), when it
    /// names exactly one.
    pub node_name: Option<&'a str>,
    /// `spec.usages`.
    pub usages: &'a [String],
    /// `spec.request`: a PEM PKCS#10 request.
    pub pem: &'a [u8],
}

/// What [`review`] approved.
#[derive(Clone, Debug)]
pub struct Approved {
    /// The Host the certificate is for.
    pub host: String,
    /// The names it carries: the Host's name.
    pub names: Vec<String>,
    public_key: rcgen::PublicKey,
}

/// The signer's verdict on a request.
#[derive(Clone, Debug)]
pub enum Review {
    /// Sign it.
    Approve(Approved),
    /// Refuse it, for good: `message` says what to fix.
    Deny {
        /// A CamelCase reason.
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// Not yet decidable (its Host is not registered yet): look again later.
    Wait {
        /// What it waits for.
        message: String,
    },
}

fn deny(reason: &'static str, message: String) -> Review {
    Review::Deny { reason, message }
}

/// Decides a request for signer [`SIGNER_NAME`], as the kubelet-serving flow decides a node's:
/// it must come from `agent_user` (the agent's ServiceAccount) with a token bound to node N, and
/// ask for a serving certificate (no CA, server use only) for the Host named N and nothing else.
/// `host_exists`: whether Host N is registered (a request waits for it).
pub fn review(request: &Request<'_>, agent_user: &str, host_exists: bool) -> Review {
    if request.username != agent_user {
        return deny(
            "NotTheAgent",
            format!(
                "requested by {:?}; only the agent's ServiceAccount ({agent_user}) may request a host serving certificate",
                request.username
            ),
        );
    }
    let Some(node) = request.node_name else {
        return deny(
            "NoNodeName",
            format!(
                "the requester's token names no node (user extra {NODE_NAME_EXTRA}): request it with the agent Pod's own ServiceAccount token, which is bound to its node"
            ),
        );
    };
    if let Some(bad) = request.usages.iter().find(|u| {
        !matches!(
            u.as_str(),
            "digital signature" | "key encipherment" | "server auth"
        )
    }) {
        return deny(
            "UsageNotAllowed",
            format!(
                "usage {bad:?} is not allowed: ask for {HOST_USAGES:?} (a host certificate only serves TLS)"
            ),
        );
    }
    if !request.usages.iter().any(|u| u == "server auth") {
        return deny(
            "UsageNotAllowed",
            format!("usages must include \"server auth\": ask for {HOST_USAGES:?}"),
        );
    }
    let parsed = std::str::from_utf8(request.pem)
        .map_err(|_| rcgen::Error::CouldNotParseCertificationRequest)
        .and_then(CertificateSigningRequestParams::from_pem);
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            return deny(
                "InvalidRequest",
                format!(
                    "spec.request is not a signed PEM PKCS#10 request with only names and usages in it: {e}"
                ),
            );
        }
    };
    if !matches!(parsed.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
        return deny(
            "InvalidRequest",
            "the request asks for a CA certificate; a host gets a serving certificate only".into(),
        );
    }
    let common_name = parsed
        .params
        .distinguished_name
        .iter()
        .find_map(|(t, v)| match (t, v) {
            (DnType::CommonName, rcgen::DnValue::Utf8String(s)) => Some(s.clone()),
            (DnType::CommonName, rcgen::DnValue::PrintableString(s)) => Some(s.as_str().to_owned()),
            (DnType::CommonName, rcgen::DnValue::Ia5String(s)) => Some(s.as_str().to_owned()),
            _ => None,
        });
    if common_name.as_deref() != Some(node) {
        return deny(
            "NotItsHost",
            format!(
                "the request's common name is {:?}; a host may only ask for its own Host's name, {node:?} (the node its token is bound to)",
                common_name.as_deref().unwrap_or("")
            ),
        );
    }
    if let Some(other) =
        parsed.params.subject_alt_names.iter().find(
            |san| !matches!(san, SanType::DnsName(n) if n.as_str().eq_ignore_ascii_case(node)),
        )
    {
        return deny(
            "NotItsName",
            format!(
                "subject alternative name {other:?} is not allowed: a host's certificate names its Host, {node:?}, and nothing else (the controller checks that name)"
            ),
        );
    }
    if !host_exists {
        return Review::Wait {
            message: format!("Host {node:?} is not registered yet"),
        };
    }
    Review::Approve(Approved {
        host: node.to_owned(),
        names: vec![node.to_owned()],
        public_key: parsed.public_key,
    })
}

/// A host's request: a fresh key, and a PEM PKCS#10 request for Host `host` (its common name
/// and only subject alternative name).
///
/// # Errors
/// When `host` is not a DNS name, or rcgen fails.
pub fn request(host: &str) -> Result<(KeyPair, String), PkiError> {
    let key = KeyPair::generate().map_err(rcgen("generating the host key"))?;
    let mut params =
        CertificateParams::new(vec![host.to_owned()]).map_err(rcgen("the host's name"))?;
    params.distinguished_name.push(DnType::CommonName, host);
    let pem = params
        .serialize_request(&key)
        .map_err(rcgen("the certificate request"))?
        .pem()
        .map_err(rcgen("the certificate request"))?;
    Ok((key, pem))
}

/// The first certificate of `pem`, DER.
fn first_der(pem: &str, what: &'static str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::Certificate {
            what,
            reason: "no certificate in it".into(),
        })?
        .map_err(|e| PkiError::Certificate {
            what,
            reason: e.to_string(),
        })?;
    Ok(der.to_vec())
}

/// When the first certificate of `pem` starts and stops being valid.
///
/// # Errors
/// When it holds no readable certificate.
pub fn validity(pem: &str) -> Result<(SystemTime, SystemTime), PkiError> {
    let der = first_der(pem, "the certificate")?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::Certificate {
            what: "the certificate",
            reason: e.to_string(),
        })?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    let v = cert.validity();
    Ok((at(v.not_before), at(v.not_after)))
}

/// When a certificate valid from `not_before` to `not_after` is renewed: at `fraction` of its
/// lifetime (the kubelet renews at a random point between 70 % and 90 %).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, fraction: f64) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime.mul_f64(fraction.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "system:serviceaccount:poolkeeper-system:poolkeeper-agent";

    fn usages() -> Vec<String> {
        HOST_USAGES.iter().map(|u| (*u).to_owned()).collect()
    }

    fn req<'a>(pem: &'a str, node: Option<&'a str>, usages: &'a [String]) -> Request<'a> {
        Request {
            username: AGENT,
            node_name: node,
            usages,
            pem: pem.as_bytes(),
        }
    }

    /// A request with common name `cn` and subject alternative names `names`, as any client
    /// could make one.
    fn request_naming(cn: &str, names: &[&str]) -> String {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .serialize_request(&key)
            .expect("request")
            .pem()
            .expect("pem")
    }

    fn denied(r: &Review) -> &'static str {
        match r {
            Review::Deny { reason, .. } => reason,
            other => panic!("not denied: {other:?}"),
        }
    }

    #[test]
    fn a_host_gets_its_own_name_signed_and_nothing_else() {
        let ca = PoolCa::generate("pool-ca").expect("ca");
        let (key, pem) = request("host-a").expect("request");
        let u = usages();
        let Review::Approve(ok) = review(&req(&pem, Some("host-a"), &u), AGENT, true) else {
            panic!("not approved")
        };
        assert_eq!(ok.names, ["host-a"]);
        let now = SystemTime::now();
        let cert = ca.sign(&ok, now, Duration::from_secs(3600)).expect("sign");
        let der = rustls::pki_types::CertificateDer::from(first_der(&cert, "c").expect("der"));
        assert!(crate::protocol::tls::names(&der, "host-a"));
        assert!(!crate::protocol::tls::names(&der, "host-b"));
        let (from, to) = validity(&cert).expect("validity");
        assert!(from < now && to > now + Duration::from_secs(3590));
        // The key signed is the requester's own.
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert_eq!(
            parsed
                .tbs_certificate
                .subject_pki
                .subject_public_key
                .data
                .as_ref(),
            rcgen::PublicKeyData::der_bytes(&key)
        );
    }

    #[test]
    fn another_hosts_name_or_any_address_is_denied() {
        let u = usages();
        let (_, pem) = request("host-b").expect("request");
        assert_eq!(
            denied(&review(&req(&pem, Some("host-a"), &u), AGENT, true)),
            "NotItsHost"
        );
        // Its own common name, but another Host's name (or an address the agent could have
        // published itself) among the names: refused.
        for names in [
            &["host-a", "host-b"][..],
            &["host-a", "192.0.2.7"],
            &["host-b"],
        ] {
            let pem = request_naming("host-a", names);
            assert_eq!(
                denied(&review(&req(&pem, Some("host-a"), &u), AGENT, true)),
                "NotItsName",
                "{names:?}"
            );
        }
    }

    #[test]
    fn only_the_agent_with_a_node_bound_token_asking_to_serve_is_heard() {
        let (_, pem) = request("host-a").expect("request");
        let u = usages();
        let other = Request {
            username: "system:serviceaccount:default:default",
            ..req(&pem, Some("host-a"), &u)
        };
        assert_eq!(denied(&review(&other, AGENT, true)), "NotTheAgent");
        assert_eq!(
            denied(&review(&req(&pem, None, &u), AGENT, true)),
            "NoNodeName"
        );
        let client = vec!["digital signature".to_owned(), "client auth".to_owned()];
        assert_eq!(
            denied(&review(&req(&pem, Some("host-a"), &client), AGENT, true)),
            "UsageNotAllowed"
        );
        let garbage = req(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            Some("host-a"),
            &u,
        );
        assert_eq!(denied(&review(&garbage, AGENT, true)), "InvalidRequest");
        // A request for a Host not registered yet waits for it.
        assert!(matches!(
            review(&req(&pem, Some("host-a"), &u), AGENT, false),
            Review::Wait { .. }
        ));
    }

    #[test]
    fn the_ca_survives_its_secret() {
        let ca = PoolCa::generate("pool-ca").expect("ca");
        let again = PoolCa::from_pem(ca.pem(), ca.key_pem()).expect("read back");
        let issued = again.controller().expect("issue");
        let roots = crate::protocol::tls::client_config(
            ca.pem().as_bytes(),
            Some((issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())),
        );
        assert!(roots.is_ok());
        let other = PoolCa::generate("other").expect("ca");
        assert!(
            PoolCa::from_pem(ca.pem(), other.key_pem()).is_err(),
            "a key that is not the CA's"
        );
        assert!(PoolCa::from_pem("nonsense", ca.key_pem()).is_err());
    }

    #[test]
    fn renewal_falls_inside_the_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(renew_at(t0, t1, 0.8), t0 + Duration::from_secs(80));
        assert_eq!(renew_at(t0, t1, 7.0), t1);
    }
}
