//! The signer `poolkeeper.io/host-serving` ([`crate::pki::SIGNER_NAME`]), as kube-controller-
//! manager's signers work for the kubelet: the leader approves a host's
//! CertificateSigningRequest when [`crate::pki::review`] says it comes from that host's agent for
//! that Host, denies it (with a message that says what to fix) when it never can, and signs it
//! with the pool CA. The pool CA lives in a Secret (created by the first controller that finds
//! none); its certificate is published in a ConfigMap of the same name for the agents to trust.
//! The controller's own client certificate is issued from the same CA in memory and renewed
//! before it expires ([`renew_own`], on every replica).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::{
    ByteString,
    api::certificates::v1::CertificateSigningRequest,
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        controller::{Action, Controller},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tracing::{debug, info, warn};

use super::FIELD_MANAGER;
use crate::api::Host;
use crate::pki::{self, PoolCa, Review};
use crate::protocol::tls::Identity;

/// The signer's settings: the pool CA, who may ask, and for how long certificates last.
pub struct Signer {
    /// The pool CA.
    pub ca: PoolCa,
    /// The only requester heard: the agent's ServiceAccount
    /// (`system:serviceaccount:<namespace>:<name>`).
    pub agent_user: String,
    /// How long each certificate lasts (a request's shorter `expirationSeconds` wins).
    pub lifetime: Duration,
    /// The controller's own client certificate, renewed by [`run`].
    pub identity: Arc<Identity>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("agent_user", &self.agent_user)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Why the pool CA could not be loaded, created or published, or a request not decided.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The API server refused.
    #[error("{what}")]
    Kube {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The CA Secret holds something unusable, or signing failed.
    #[error("{what}")]
    Pki {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: pki::PkiError,
    },
    /// The controller's certificate could not be used.
    #[error("the controller's client certificate")]
    Tls(#[source] crate::protocol::tls::TlsError),
}

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> SignerError {
    let what = what.into();
    move |source| SignerError::Kube { what, source }
}

/// The pool CA from Secret `namespace/name` (`kubernetes.io/tls`: `tls.crt`, `tls.key`), created
/// when there is none. Two replicas starting at once both try; the one whose create loses reads
/// the winner's. Then its certificate is published in ConfigMap `namespace/name` (`ca.crt`).
///
/// # Errors
/// When the API server refuses, or the Secret holds no usable CA (it is never overwritten: an
/// operator who put one there decides).
pub async fn load_or_create_ca(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<PoolCa, SignerError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("the pool CA Secret {namespace}/{name}");
    let stored = match secrets.get_opt(name).await.map_err(kube_error(&what))? {
        Some(secret) => secret,
        None => {
            let ca = PoolCa::generate("poolkeeper-pool-ca").map_err(|source| SignerError::Pki {
                what: "generating the pool CA".into(),
                source,
            })?;
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(
                        [("app.kubernetes.io/name".to_owned(), "poolkeeper".to_owned())].into(),
                    ),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(
                    [
                        (
                            "tls.crt".to_owned(),
                            ByteString(ca.pem().as_bytes().to_vec()),
                        ),
                        (
                            "tls.key".to_owned(),
                            ByteString(ca.key_pem().as_bytes().to_vec()),
                        ),
                    ]
                    .into(),
                ),
                ..Default::default()
            };
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(created) => {
                    info!(secret = %format!("{namespace}/{name}"), "created the pool CA");
                    created
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    secrets.get(name).await.map_err(kube_error(&what))?
                }
                Err(e) => return Err(kube_error(format!("creating {what}"))(e)),
            }
        }
    };
    let field = |key: &str| {
        stored
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let ca = PoolCa::from_pem(&field("tls.crt"), &field("tls.key")).map_err(|source| {
        SignerError::Pki {
            what: format!("{what} (tls.crt and tls.key must hold the CA certificate and its key)"),
            source,
        }
    })?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let published = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "poolkeeper"}},
        "data": {"ca.crt": ca.pem()},
    });
    config_maps
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&published),
        )
        .await
        .map_err(kube_error(format!(
            "publishing the pool CA in ConfigMap {namespace}/{name}"
        )))?;
    Ok(ca)
}

impl Signer {
    /// A signer with the controller's first client certificate issued.
    ///
    /// # Errors
    /// When the certificate cannot be issued.
    pub fn new(ca: PoolCa, agent_user: String, lifetime: Duration) -> Result<Self, SignerError> {
        let issued = ca
            .controller_at(SystemTime::now(), lifetime)
            .map_err(|source| SignerError::Pki {
                what: "issuing the controller's client certificate".into(),
                source,
            })?;
        let identity = Identity::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())
            .map_err(SignerError::Tls)?;
        Ok(Self {
            ca,
            agent_user,
            lifetime,
            identity,
        })
    }
}

struct SignerContext {
    signer: Arc<Signer>,
    requests: Api<CertificateSigningRequest>,
    hosts: Store<Host>,
}

/// Signs hosts' requests until `shutdown` (the leader only).
pub async fn run(
    client: Client,
    hosts: Store<Host>,
    signer: Arc<Signer>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let requests: Api<CertificateSigningRequest> = Api::all(client);
    let ctx = Arc::new(SignerContext {
        signer,
        requests: requests.clone(),
        hosts,
    });
    let config =
        watcher::Config::default().fields(&format!("spec.signerName={}", pki::SIGNER_NAME));
    Controller::new(requests, config)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                // The whole chain: the reconciler's error, then the API server's answer.
                let mut chain = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    chain.push_str(": ");
                    chain.push_str(&cause.to_string());
                    source = cause.source();
                }
                warn!(error = %chain, "certificate request not decided; retried in 5 s");
            }
        })
        .await;
}

/// How long after a failed renewal of the controller's certificate it is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// Renews the controller's client certificate at 80 % of its lifetime, on every replica from
/// its start (a standby that takes over after a month still holds a valid one), until the
/// returned future is dropped. Connections already open keep the certificate they were opened
/// with; new ones present the new one.
pub async fn renew_own(signer: Arc<Signer>) {
    let mut due = Instant::now() + signer.lifetime.mul_f64(0.8);
    loop {
        tokio::time::sleep_until(due.into()).await;
        let renewed = signer
            .ca
            .controller_at(SystemTime::now(), signer.lifetime)
            .map_err(|e| e.to_string())
            .and_then(|issued| {
                signer
                    .identity
                    .set_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())
                    .map_err(|e| e.to_string())
            });
        due = match renewed {
            Ok(()) => {
                info!("renewed the controller's client certificate");
                Instant::now() + signer.lifetime.mul_f64(0.8)
            }
            Err(error) => {
                warn!(%error, retry_in = ?RENEW_RETRY, "could not renew the controller's client certificate");
                Instant::now() + RENEW_RETRY
            }
        };
    }
}

fn error_policy(
    _csr: Arc<CertificateSigningRequest>,
    _e: &SignerError,
    _ctx: Arc<SignerContext>,
) -> Action {
    Action::requeue(Duration::from_secs(5))
}

fn condition(type_: &str, reason: &str, message: &str) -> serde_json::Value {
    let now = Time(jiff::Timestamp::now());
    json!({
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
    })
}

async fn reconcile(
    cached: Arc<CertificateSigningRequest>,
    ctx: Arc<SignerContext>,
) -> Result<Action, SignerError> {
    let name = cached.name_any();
    // Read fresh: the event of this signer's own approval can arrive before the cache holds the
    // certificate it then issued, and a certificate is set once (a second one is refused).
    // Requests are few (one per agent start and renewal), so the read costs nothing.
    let Some(csr) = ctx
        .requests
        .get_opt(&name)
        .await
        .map_err(kube_error(format!("reading certificate request {name}")))?
    else {
        return Ok(Action::await_change());
    };
    let status = csr.status.as_ref();
    if status
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
    {
        return Ok(Action::await_change());
    }
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let holds = |t: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == t && c.status == "True")
    };
    if holds("Denied") || holds("Failed") {
        return Ok(Action::await_change());
    }
    let spec = &csr.spec;
    let node = spec
        .extra
        .as_ref()
        .and_then(|e| e.get(pki::NODE_NAME_EXTRA))
        .and_then(|v| match v.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        });
    let host_exists = node.is_some_and(|n| ctx.hosts.get(&ObjectRef::new(n)).is_some());
    let request = pki::Request {
        username: spec.username.as_deref().unwrap_or_default(),
        node_name: node,
        usages: spec.usages.as_deref().unwrap_or_default(),
        pem: &spec.request.0,
    };
    match pki::review(&request, &ctx.signer.agent_user, host_exists) {
        Review::Wait { message } => {
            debug!(request = %name, %message, "certificate request waits");
            Ok(Action::requeue(Duration::from_secs(2)))
        }
        Review::Deny { reason, message } => {
            if holds("Approved") {
                // Approved by someone else, but not ours to sign: the signer fails it, as
                // Kubernetes' own signers do.
                // A merge patch replaces the list: the approval is kept in it.
                let mut conds: Vec<serde_json::Value> = conditions
                    .iter()
                    .filter_map(|c| serde_json::to_value(c).ok())
                    .collect();
                conds.push(condition("Failed", reason, &message));
                ctx.requests
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": {"conditions": conds}})),
                    )
                    .await
                    .map_err(kube_error(format!("failing certificate request {name}")))?;
            } else {
                let patch =
                    json!({"status": {"conditions": [condition("Denied", reason, &message)]}});
                ctx.requests
                    .patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(kube_error(format!("denying certificate request {name}")))?;
            }
            warn!(request = %name, reason, %message, "certificate request refused");
            Ok(Action::await_change())
        }
        Review::Approve(approved) => {
            if !holds("Approved") {
                let message = format!(
                    "requested by the agent of Host {} for its own name",
                    approved.host
                );
                let patch = json!({"status": {"conditions": [condition("Approved", "HostIdentityVerified", &message)]}});
                ctx.requests
                    .patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(kube_error(format!("approving certificate request {name}")))?;
            }
            let asked = spec
                .expiration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs);
            let lifetime = asked.map_or(ctx.signer.lifetime, |a| a.min(ctx.signer.lifetime));
            let pem = ctx
                .signer
                .ca
                .sign(&approved, SystemTime::now(), lifetime)
                .map_err(|source| SignerError::Pki {
                    what: format!("signing certificate request {name}"),
                    source,
                })?;
            let patch = json!({"status": {"certificate": ByteString(pem.into_bytes())}});
            ctx.requests
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(kube_error(format!("issuing certificate request {name}")))?;
            info!(request = %name, host = %approved.host, names = ?approved.names, ?lifetime, "issued a host serving certificate");
            Ok(Action::await_change())
        }
    }
}
