//! The agent's serving certificate from the cluster, as the kubelet obtains its own: a fresh key
//! (kept in memory only), a CertificateSigningRequest to signer `poolkeeper.io/host-serving` for
//! the Host's name, and the certificate the controller issues once it has checked that this
//! agent's node is that Host. Renewed at a random point between 70 % and 90 %
//! of its lifetime (the kubelet's rule), with a new key; handshakes after the swap present the
//! new certificate, connections already open keep theirs, so no call fails during a renewal.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::{
    ByteString,
    api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec},
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
    runtime::wait::await_condition,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::pki;
use crate::protocol::tls::Identity;

/// Why no certificate was obtained.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The request could not be made.
    #[error("preparing the certificate request")]
    Pki(#[source] pki::PkiError),
    /// The API server refused or failed.
    #[error("{what}")]
    Kube {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The signer denied or failed the request: its message says why.
    #[error("certificate request {name} was {verdict}: {message}")]
    Refused {
        /// The request.
        name: String,
        /// `denied` or `failed`.
        verdict: &'static str,
        /// The signer's message.
        message: String,
    },
    /// Nobody answered the request in time (is the controller running with
    /// `--pool-ca-secret`, and is the Host registered?).
    #[error(
        "certificate request {0} was not answered in 10 minutes: is the controller running with --pool-ca-secret?"
    )]
    Unanswered(String),
    /// The request was deleted before it was answered.
    #[error("certificate request {0} was deleted before it was answered")]
    Deleted(String),
    /// The issued certificate does not fit the key.
    #[error("the issued certificate is unusable")]
    Tls(#[source] crate::protocol::tls::TlsError),
}

/// How long the agent waits before asking again after a failed request (doubling up to
/// [`MAX_RETRY`]).
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// How long a request may stay unanswered before it is given up and asked again (a signer that
/// is down, a Host not registered yet); the request left behind is removed by the cluster's
/// certificate cleaner.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Keeps `identity` holding a valid certificate for Host `host` until `shutdown`; `ready` is
/// true while it holds one that has not expired.
pub(super) async fn run(
    client: kube::Client,
    host: String,
    identity: Arc<Identity>,
    ready: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let requests: Api<CertificateSigningRequest> = Api::all(client);
    let mut retry = FIRST_RETRY;
    let mut expires: Option<SystemTime> = None;
    loop {
        let wait = tokio::select! {
            obtained = obtain(&requests, &host) => match obtained.and_then(|(cert, key)| {
                identity
                    .set_pem(cert.as_bytes(), key.as_bytes())
                    .map_err(CertificateError::Tls)?;
                Ok(cert)
            }) {
                Ok(cert) => {
                    retry = FIRST_RETRY;
                    expires = pki::validity(&cert).ok().map(|(_, to)| to);
                    let _ = ready.send(true);
                    renewal_wait(&host, &cert)
                }
                Err(error) => {
                    warn!(host = %host, error = %error, source = ?std::error::Error::source(&error), retry_in = ?retry, "no serving certificate");
                    if expires.is_some_and(|t| t <= SystemTime::now()) {
                        // The one it serves has expired: no handshake succeeds any more.
                        let _ = ready.send(false);
                    }
                    let wait = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    wait
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// How long until `cert` is renewed: at a random 70–90 % of its lifetime.
fn renewal_wait(host: &str, cert: &str) -> Duration {
    let Ok((from, to)) = pki::validity(cert) else {
        return FIRST_RETRY;
    };
    // From now, not from notBefore: signers backdate notBefore (by 5 minutes, as Kubernetes'
    // own), which for a short lifetime would put the renewal in the past at once.
    let due = pki::renew_at(
        from.max(SystemTime::now()),
        to,
        rand::random_range(0.7..0.9),
    );
    // At least the first retry's wait: a certificate issued already expired (a clock far off)
    // must not make the agent ask again as fast as the signer answers.
    let wait = due
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .max(FIRST_RETRY);
    info!(host = %host, not_after = %jiff::Timestamp::try_from(to).map(|t| t.to_string()).unwrap_or_default(), renew_in = ?wait, "serving certificate in place");
    wait
}

/// Asks for a certificate and waits for the signer's answer: the certificate and its key (PEM).
async fn obtain(
    requests: &Api<CertificateSigningRequest>,
    host: &str,
) -> Result<(String, String), CertificateError> {
    let (key, request) = pki::request(host).map_err(CertificateError::Pki)?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    // Object names are at most 253 characters; Host names at most 240 (the agent checks).
    let name = format!("{host}-{}", &suffix[..8]);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("app.kubernetes.io/name".to_owned(), "poolkeeper".to_owned())].into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: pki::SIGNER_NAME.to_owned(),
            usages: Some(pki::HOST_USAGES.iter().map(|u| (*u).to_owned()).collect()),
            ..Default::default()
        },
        status: None,
    };
    requests
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|source| CertificateError::Kube {
            what: "creating the certificate request",
            source,
        })?;
    info!(host = %host, request = %name, "requested a serving certificate");
    let answered =
        |csr: Option<&CertificateSigningRequest>| csr.is_none_or(|c| verdict(c).is_some());
    let answer = tokio::time::timeout(
        ANSWER_TIMEOUT,
        await_condition(requests.clone(), &name, answered),
    )
    .await
    .map_err(|_| CertificateError::Unanswered(name.clone()))?
    .map_err(|e| CertificateError::Kube {
        what: "waiting for the certificate request's answer",
        source: kube::Error::Service(Box::new(e)),
    })?;
    let Some(answer) = answer else {
        return Err(CertificateError::Deleted(name));
    };
    match verdict(&answer) {
        Some(Ok(cert)) => Ok((cert, key.serialize_pem())),
        Some(Err((verdict, message))) => Err(CertificateError::Refused {
            name,
            verdict,
            message,
        }),
        None => Err(CertificateError::Deleted(name)),
    }
}

/// The signer's answer: the certificate, or why none comes; `None` while pending.
fn verdict(csr: &CertificateSigningRequest) -> Option<Result<String, (&'static str, String)>> {
    let status = csr.status.as_ref()?;
    if let Some(cert) = status.certificate.as_ref().filter(|c| !c.0.is_empty()) {
        return Some(Ok(String::from_utf8_lossy(&cert.0).into_owned()));
    }
    status
        .conditions
        .as_deref()?
        .iter()
        .find_map(|c| {
            let verdict = match c.type_.as_str() {
                "Denied" => "denied",
                "Failed" => "failed",
                _ => return None,
            };
            (c.status == "True").then(|| {
                (
                    verdict,
                    c.message
                        .clone()
                        .unwrap_or_else(|| c.reason.clone().unwrap_or_default()),
                )
            })
        })
        .map(Err)
}
