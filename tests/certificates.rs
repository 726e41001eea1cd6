//! Certificates the Kubernetes way, against the real API server: the controller (as its own
//! ServiceAccount, with deploy/'s RBAC) creates the pool CA Secret and its ConfigMap, and acts as
//! signer `poolkeeper.io/host-serving`; an agent (as the agent's ServiceAccount with a
//! node-bound token, under deploy/'s admission policy) requests its serving certificate, serves
//! over mutual TLS with it, joins a pool, and renews it before it expires while calls go on.
//! Requests that do not come from a Host's own agent, for its own name, are denied with a
//! message that says why.

mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use poolkeeper::agent::lease::LeaseConfig;
use poolkeeper::agent::monitor::MonitorConfig;
use poolkeeper::agent::storage::make_file_domain;
use poolkeeper::agent::{Hosts, Options, Tls, start};
use poolkeeper::api::Host;
use poolkeeper::controller::{self, Settings, signer};
use poolkeeper::pki::{self, PoolCa};
use poolkeeper::protocol::{Client, Target};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use support::cluster::{LEASE_NAMESPACE, client_as, obj};
use support::{client, eventually, unique, uuid};

const CA_SECRET: &str = "poolkeeper-pool-ca";
const AGENT: &str = "system:serviceaccount:poolkeeper-system:poolkeeper-agent";
const WAIT: Duration = Duration::from_secs(60);
/// Short, so that a renewal happens within the test (at 70-90 % of it for hosts, 80 % for the
/// controller's own).
const LIFETIME: Duration = Duration::from_secs(30);

/// The namespace, RBAC and admission policy of `deploy/`, once per test binary.
fn installed() {
    support::cluster::install_admission();
}

/// This binary's controller with the signer, started once on a runtime of its own; returns its
/// host RPC client (the controller's own identity, renewed by it).
fn controller() -> Client {
    static RPC: OnceLock<Client> = OnceLock::new();
    RPC.get_or_init(|| {
        installed();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let kube = client_as("poolkeeper-controller").await;
                let ca = signer::load_or_create_ca(&kube, LEASE_NAMESPACE, CA_SECRET)
                    .await
                    .expect("the controller creates the pool CA");
                let ca_pem = ca.pem().as_bytes().to_vec();
                let made = signer::Signer::new(ca, AGENT.into(), LIFETIME).expect("signer");
                let rpc =
                    Client::with_identity(&ca_pem, Arc::clone(&made.identity), None).expect("rpc");
                let settings = Settings {
                    lease_namespace: LEASE_NAMESPACE.into(),
                    concurrency: 4,
                    rpc: rpc.clone(),
                    signer: Some(Arc::new(made)),
                };
                tx.send(rpc).expect("send");
                let addr = support::cluster::free_addr();
                controller::run_with(kube, settings, addr, std::future::pending())
                    .await
                    .expect("controller");
            });
        });
        rx.recv().expect("controller started")
    })
    .clone()
}

/// A client acting as the agent's ServiceAccount with a token bound to `node`, under deploy/'s
/// admission policy.
async fn agent_on(node: &str) -> kube::Client {
    installed();
    support::cluster::agent_on(node).await
}

/// The pool CA as the agents see it: the ConfigMap the controller publishes.
async fn published_ca() -> String {
    let maps: Api<ConfigMap> = Api::namespaced(client().await, LEASE_NAMESPACE);
    eventually("the pool CA is published", WAIT, || {
        let maps = maps.clone();
        async move {
            maps.get_opt(CA_SECRET)
                .await
                .ok()
                .flatten()
                .and_then(|m| m.data?.get("ca.crt").cloned())
        }
    })
    .await
}

/// The certificate a TLS handshake with the host at `endpoint` shows (DER), as the controller.
async fn served_certificate(
    ca_pem: &str,
    rpc_identity: &pki::Issued,
    endpoint: &str,
    name: &str,
) -> Vec<u8> {
    let config = poolkeeper::protocol::tls::client_config(
        ca_pem.as_bytes(),
        Some((
            rpc_identity.cert_pem.as_bytes(),
            rpc_identity.key_pem.as_bytes(),
        )),
    )
    .expect("client config");
    let tcp = tokio::net::TcpStream::connect(endpoint).await.expect("tcp");
    let server = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server, tcp)
        .await
        .expect("handshake: the host's certificate is the pool CA's and names its Host");
    tls.get_ref().1.peer_certificates().expect("certificate")[0].to_vec()
}

/// Every request of signer poolkeeper.io/host-serving for `host`, with its verdict.
async fn requests_for(host: &str) -> Vec<CertificateSigningRequest> {
    let api: Api<CertificateSigningRequest> = Api::all(client().await);
    api.list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|c| c.spec.signer_name == pki::SIGNER_NAME)
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&format!("{host}-")))
        })
        .collect()
}

fn issued(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

/// One real host with its certificate from the cluster joins a pool: the controller calls it over
/// mutual TLS with the certificate it signed; the host renews it before it expires, and no call
/// fails meanwhile (calls on the kept connection, and on new connections).
#[tokio::test]
async fn a_host_serves_with_the_certificate_it_requested_and_renews_it() {
    let rpc = controller();
    let ca_pem = published_ca().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca_pem).expect("write ca");
    let storage = tempfile::tempdir().expect("tempdir");
    let sd_uuid = uuid();
    make_file_domain(storage.path(), "mnt1", &sd_uuid).expect("layout");

    let host = unique("host");
    let running = start(Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        control_listen: None,
        tls: Some(Tls::Requested { client_ca: ca_file }),
        token: None,
        max_frame_bytes: poolkeeper::agent::DEFAULT_MAX_FRAME_BYTES,
        monitor: MonitorConfig {
            period: Duration::from_millis(300),
            check_timeout: Duration::from_secs(1),
        },
        hosts: Hosts::Single {
            name: host.clone(),
            storage_root: storage.path().to_owned(),
        },
        kube: Some((
            agent_on(&host).await,
            LeaseConfig {
                namespace: LEASE_NAMESPACE.into(),
                duration: Duration::from_secs(10),
                renew_every: Duration::from_secs(1),
            },
        )),
    })
    .await
    .expect("agent starts");
    let endpoint = running.rpc_addr().to_string();

    // The signer approved the agent's request for its own Host and address.
    let first = eventually("the host's certificate is issued", WAIT, || {
        let host = host.clone();
        async move { requests_for(&host).await.into_iter().find(issued) }
    })
    .await;
    let approved = first
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Approved"))
        .expect("approved");
    assert_eq!(approved.reason.as_deref(), Some("HostIdentityVerified"));

    // The controller joins it to a pool over mutual TLS.
    support::cluster::join_new_pool(&host, &sd_uuid).await;
    let in_sync = || support::cluster::in_sync_report(&host);
    eventually("the host is in sync over mutual TLS", WAIT, in_sync).await;

    // Calls go on while the certificate is renewed: on the controller's kept connection and on
    // new connections (each a handshake with whatever certificate is current).
    let admin_ca = {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client().await, LEASE_NAMESPACE);
        let s = secrets.get(CA_SECRET).await.expect("ca secret");
        let data = s.data.expect("data");
        let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf-8");
        PoolCa::from_pem(&text("tls.crt"), &text("tls.key")).expect("ca")
    };
    let probe = admin_ca.controller().expect("controller cert");
    let target = Target {
        name: &host,
        endpoint: &endpoint,
    };
    let mut seen = vec![served_certificate(&ca_pem, &probe, &endpoint, &host).await];
    let first_seen = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + LIFETIME + Duration::from_secs(10);
    let mut calls = 0;
    while tokio::time::Instant::now() < deadline && seen.len() < 2 {
        rpc.get_stats(target, Duration::from_secs(5))
            .await
            .expect("a call on the kept connection during the renewal");
        let fresh = Client::mutual(
            ca_pem.as_bytes(),
            probe.cert_pem.as_bytes(),
            probe.key_pem.as_bytes(),
            None,
        )
        .expect("client");
        fresh
            .get_stats(target, Duration::from_secs(5))
            .await
            .expect("a call on a new connection during the renewal");
        calls += 2;
        let now = served_certificate(&ca_pem, &probe, &endpoint, &host).await;
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        seen.len(),
        2,
        "the host renewed its certificate within its lifetime ({calls} calls, none failed)"
    );
    let renewed_after = first_seen.elapsed();
    assert!(
        renewed_after >= LIFETIME.mul_f64(0.6),
        "renewed after {renewed_after:?}: not before 70 % of the {LIFETIME:?} lifetime"
    );
    let requests = requests_for(&host).await;
    assert_eq!(
        requests.iter().filter(|c| issued(c)).count(),
        2,
        "the first request and one renewal, each issued: {:?}",
        requests
            .iter()
            .map(|c| c.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    // The pool saw nothing of it.
    in_sync().await.expect("still in sync after the renewal");
    running.shutdown().await;
}

/// Creates a request for signer poolkeeper.io/host-serving as `kube`, and waits for the signer's
/// verdict: (condition type, reason, message).
async fn verdict_on(kube: kube::Client, cn: &str, usages: &[&str]) -> (String, String, String) {
    controller();
    let (_, pem) = pki::request(cn).expect("request");
    let name = unique("csr");
    let api: Api<CertificateSigningRequest> = Api::all(kube);
    api.create(
        &PostParams::default(),
        &CertificateSigningRequest {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(pem.into_bytes()),
                signer_name: pki::SIGNER_NAME.into(),
                usages: Some(usages.iter().map(|u| (*u).to_owned()).collect()),
                ..Default::default()
            },
            status: None,
        },
    )
    .await
    .expect("create the request");
    let admin: Api<CertificateSigningRequest> = Api::all(client().await);
    eventually(&format!("a verdict on {name}"), WAIT, || {
        let (admin, name) = (admin.clone(), name.clone());
        async move {
            let csr = admin.get(&name).await.ok()?;
            csr.status?.conditions?.into_iter().find_map(|c| {
                (c.status == "True").then(|| {
                    (
                        c.type_,
                        c.reason.unwrap_or_default(),
                        c.message.unwrap_or_default(),
                    )
                })
            })
        }
    })
    .await
}

/// Registers Host `name` as its agent would (empty spec).
async fn register(name: &str) {
    let hosts: Api<Host> = Api::all(agent_on(name).await);
    hosts
        .create(
            &PostParams::default(),
            &serde_json::from_value(obj("Host", name, json!({}))).expect("host"),
        )
        .await
        .expect("register");
}

#[tokio::test]
async fn requests_not_from_a_hosts_own_agent_for_its_own_name_are_denied() {
    let (a, b) = (unique("host-a"), unique("host-b"));
    register(&a).await;
    register(&b).await;
    let serving = pki::HOST_USAGES;

    // Agent A asking for B's name.
    let (t, reason, message) = verdict_on(agent_on(&a).await, &b, &serving).await;
    assert_eq!(
        (t.as_str(), reason.as_str()),
        ("Denied", "NotItsHost"),
        "{message}"
    );
    assert!(message.contains(&a) && message.contains(&b), "{message}");

    // Someone other than the agent's ServiceAccount asking for A's name.
    let (t, reason, message) = verdict_on(client().await, &a, &serving).await;
    assert_eq!(
        (t.as_str(), reason.as_str()),
        ("Denied", "NotTheAgent"),
        "{message}"
    );

    // Agent A asking for a client certificate.
    let (t, reason, message) = verdict_on(
        agent_on(&a).await,
        &a,
        &["digital signature", "client auth"],
    )
    .await;
    assert_eq!(
        (t.as_str(), reason.as_str()),
        ("Denied", "UsageNotAllowed"),
        "{message}"
    );

    // Agent A asking for its own name: approved and signed by the pool CA, for its name only.
    let (t, reason, _) = verdict_on(agent_on(&a).await, &a, &serving).await;
    assert_eq!(
        (t.as_str(), reason.as_str()),
        ("Approved", "HostIdentityVerified")
    );
    let ca_pem = published_ca().await;
    let csr = eventually("A's certificate is issued", WAIT, || {
        let a = a.clone();
        async move {
            let api: Api<CertificateSigningRequest> = Api::all(client().await);
            api.list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|c| {
                    issued(c)
                        && c.spec.username.as_deref() == Some(AGENT)
                        && c.spec
                            .extra
                            .as_ref()
                            .and_then(|e| e.get(pki::NODE_NAME_EXTRA))
                            .is_some_and(|n| n == std::slice::from_ref(&a))
                })
        }
    })
    .await;
    let cert =
        String::from_utf8(csr.status.and_then(|s| s.certificate).expect("cert").0).expect("pem");
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("der");
    assert!(poolkeeper::protocol::tls::names(&der, &a));
    assert!(!poolkeeper::protocol::tls::names(&der, &b));
    let (from, to) = pki::validity(&cert).expect("validity");
    assert!(to.duration_since(from).expect("ordered") <= LIFETIME + Duration::from_secs(300 + 1));
    // It chains to the CA the agents are given.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca"))
        .expect("root");
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.into(),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("verifier");
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(
            &der,
            &[],
            &rustls::pki_types::ServerName::try_from(a.clone()).expect("name"),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .expect("the issued certificate verifies against the published pool CA");
}
