//! A controller (one per test binary, in-process on a runtime of its own) and, per test, a pool of
//! simulated hosts over real sockets, with helpers to read what users read.

use std::{collections::BTreeMap, net::SocketAddr, sync::OnceLock, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use poolkeeper::{
    agent::{self, Hosts, lease::LeaseConfig, monitor::MonitorConfig},
    api::{DomainPhase, Host, HostPhase, MapStatus, StorageDomain, StoragePool},
    controller::{self, Settings},
    protocol::{self, Token},
};
use serde_json::{Value, json};

use super::{client, control_plane, eventually, unique, uuid};

/// The token the test controller and every test's simulated hosts share.
pub const TOKEN: &str = "poolkeeper-test-token-0123456789";
/// The namespace of host Leases.
pub const LEASE_NAMESPACE: &str = "poolkeeper-system";
/// How long scenario waits may take (generous: a loaded 2-core CI machine).
pub const WAIT: Duration = Duration::from_secs(60);

/// A client that acts as the deployed ServiceAccount `name` (poolkeeper-controller or
/// poolkeeper-agent), so the scenarios prove the least-privilege RBAC of `deploy/rbac.yaml` is
/// enough.
pub async fn client_as(name: &str) -> kube::Client {
    install_rbac();
    let mut config = control_plane().config().await.expect("config");
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{LEASE_NAMESPACE}:{name}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{LEASE_NAMESPACE}"),
        "system:authenticated".into(),
    ]);
    kube::Client::try_from(config).expect("impersonating client")
}

/// A client acting as the agent's ServiceAccount with a token bound to `node` (the user extra
/// `authentication.kubernetes.io/node-name` a Pod's bound token carries).
pub async fn agent_on(node: &str) -> kube::Client {
    install_rbac();
    let mut config = control_plane().config().await.expect("config");
    config.auth_info.impersonate = Some(format!(
        "system:serviceaccount:{LEASE_NAMESPACE}:poolkeeper-agent"
    ));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{LEASE_NAMESPACE}"),
        "system:authenticated".into(),
    ]);
    config.auth_info.impersonate_user_extra = Some(std::collections::HashMap::from([(
        poolkeeper::pki::NODE_NAME_EXTRA.to_owned(),
        vec![node.to_owned()],
    )]));
    kube::Client::try_from(config).expect("impersonating client")
}

/// Applies the namespace, RBAC and admission policy of `deploy/` once per test binary (the CRDs
/// come with the control plane).
pub fn install_admission() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        install_rbac();
        let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/admission.yaml");
        super::kubectl_ok(&["apply", "-f", policy]);
    });
}

/// Applies the namespace and RBAC of `deploy/` once per test binary.
fn install_rbac() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
        let ns = super::kubectl(&["apply", "-f", &format!("{dir}/namespace.yaml")]);
        assert!(
            ns.status.success(),
            "{}",
            String::from_utf8_lossy(&ns.stderr)
        );
        let rbac = super::kubectl(&[
            "apply",
            "-n",
            LEASE_NAMESPACE,
            "-f",
            &format!("{dir}/rbac.yaml"),
        ]);
        assert!(
            rbac.status.success(),
            "{}",
            String::from_utf8_lossy(&rbac.stderr)
        );
    });
}

/// Creates the lease namespace (idempotent).
pub async fn ensure_namespace() {
    let api: Api<Namespace> = Api::all(client().await);
    let ns =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEASE_NAMESPACE}});
    api.patch(
        LEASE_NAMESPACE,
        &PatchParams::apply("poolkeeper-tests"),
        &Patch::Apply(&ns),
    )
    .await
    .expect("lease namespace");
}

/// Starts this binary's controller once (on a thread and runtime of its own, so it outlives any
/// one test's runtime). Returns its metrics address.
pub fn controller() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                ensure_namespace().await;
                let client = client_as("poolkeeper-controller").await;
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
                let addr = listener.local_addr().expect("addr");
                drop(listener);
                let settings = Settings {
                    lease_namespace: LEASE_NAMESPACE.into(),
                    concurrency: 8,
                    rpc: protocol::Client::new(Token::new(TOKEN).expect("token"), None)
                        .expect("rpc client"),
                    signer: None,
                };
                tx.send(addr).expect("send addr");
                controller::run_with(client, settings, addr, std::future::pending())
                    .await
                    .expect("controller");
            });
        });
        rx.recv().expect("controller address")
    })
}

/// Options of a simulated pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Simulated hosts.
    pub hosts: usize,
    /// Data domains (the first is the master).
    pub domains: usize,
    /// `problemGraceSeconds`.
    pub grace_seconds: i32,
    /// `connectTimeoutSeconds`.
    pub connect_timeout_seconds: i32,
    /// `compatibilityVersion` (the default when `None`).
    pub compatibility: Option<&'static str>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            hosts: 3,
            domains: 2,
            grace_seconds: 2,
            connect_timeout_seconds: 2,
            compatibility: None,
        }
    }
}

/// A pool with simulated hosts, all named uniquely for this test.
pub struct SimPool {
    /// The StoragePool's name.
    pub pool: String,
    /// Domain object names, in order.
    pub domains: Vec<String>,
    /// Domain name → uuid.
    pub uuids: BTreeMap<String, String>,
    /// Host names, in order.
    pub hosts: Vec<String>,
    /// The running simulated hosts.
    pub agents: agent::Running,
}

/// Starts the controller (once), `opts.hosts` simulated hosts, and a pool with `opts.domains`
/// domains that every host joins.
pub async fn sim_pool(opts: PoolOptions) -> SimPool {
    controller();
    ensure_namespace().await;
    let client = client().await;
    let prefix = unique("h");
    let agents = start_hosts(&prefix, opts.hosts).await;
    let pool = unique("pool");
    let mut domains = Vec::new();
    let mut uuids = BTreeMap::new();
    for _ in 0..opts.domains {
        let name = unique("sd");
        uuids.insert(name.clone(), uuid());
        domains.push(name);
    }
    let pools: Api<StoragePool> = Api::all(client.clone());
    let mut spec = json!({
        "sync": {
            "problemGraceSeconds": opts.grace_seconds,
            "connectTimeoutSeconds": opts.connect_timeout_seconds,
        }
    });
    if let Some(version) = opts.compatibility {
        spec["compatibilityVersion"] = json!(version);
    }
    let p: StoragePool =
        serde_json::from_value(obj("StoragePool", &pool, spec)).expect("pool object");
    pools
        .create(&PostParams::default(), &p)
        .await
        .expect("pool");
    for name in &domains {
        create_domain(name, &uuids[name], Some(&pool)).await;
    }
    let hosts: Vec<String> = agents.hosts().iter().map(|h| h.name().to_owned()).collect();
    for h in &hosts {
        set_host_pool(h, Some(&pool)).await;
    }
    SimPool {
        pool,
        domains,
        uuids,
        hosts,
        agents,
    }
}

/// Starts `count` simulated hosts named `<prefix>-NNNN` with short test timings.
pub async fn start_hosts(prefix: &str, count: usize) -> agent::Running {
    agent::start(agent::Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        control_listen: Some("127.0.0.1:0".parse().expect("addr")),
        tls: None,
        token: Some(Token::new(TOKEN).expect("token")),
        max_frame_bytes: agent::DEFAULT_MAX_FRAME_BYTES,
        monitor: MonitorConfig {
            period: Duration::from_millis(300),
            check_timeout: Duration::from_secs(1),
        },
        hosts: Hosts::Simulated {
            count,
            prefix: prefix.to_owned(),
            // Kept across a restart of these hosts (same prefix), as real storage is.
            storage: Some(std::env::temp_dir().join(format!("poolkeeper-sim-{prefix}"))),
        },
        kube: Some((
            client_as("poolkeeper-agent").await,
            LeaseConfig {
                namespace: LEASE_NAMESPACE.into(),
                duration: Duration::from_secs(6),
                renew_every: Duration::from_secs(1),
            },
        )),
    })
    .await
    .expect("simulated hosts")
}

/// A poolkeeper object as JSON.
pub fn obj(kind: &str, name: &str, spec: Value) -> serde_json::Value {
    json!({"apiVersion": "poolkeeper.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

/// Creates a data domain.
pub async fn create_domain(name: &str, uuid: &str, pool: Option<&str>) {
    let api: Api<StorageDomain> = Api::all(client().await);
    let mut spec = json!({"uuid": uuid, "type": "Data", "storage": {"kind": "File", "path": format!("nfs:/exports/{name}")}});
    if let Some(pool) = pool {
        spec["pool"] = json!(pool);
    }
    let o: StorageDomain =
        serde_json::from_value(obj("StorageDomain", name, spec)).expect("domain");
    api.create(&PostParams::default(), &o)
        .await
        .expect("create domain");
}

/// A new pool named `<prefix>-N` with the data domain `sd_uuid` as its only domain, which Host
/// `host` joins; returns the pool's name.
pub async fn join_new_pool(host: &str, sd_uuid: &str) -> String {
    let pool = unique("pool");
    let pools: Api<StoragePool> = Api::all(client().await);
    pools
        .create(
            &PostParams::default(),
            &serde_json::from_value(obj("StoragePool", &pool, json!({}))).expect("pool"),
        )
        .await
        .expect("pool");
    create_domain(&unique("sd"), sd_uuid, Some(&pool)).await;
    set_host_pool(host, Some(&pool)).await;
    pool
}

/// Host `host`'s report once its `InSync` condition is `True` (`None` until then).
pub async fn in_sync_report(host: &str) -> Option<poolkeeper::api::HostReport> {
    let status = Api::<Host>::all(client().await)
        .get(host)
        .await
        .ok()?
        .status?;
    (condition(&status.conditions, "InSync")?.0 == "True").then_some(status.report?)
}

/// Sets or clears a host's `spec.pool`, once its agent has registered it.
pub async fn set_host_pool(host: &str, pool: Option<&str>) {
    let api: Api<Host> = Api::all(client().await);
    eventually(&format!("host {host} registered"), WAIT, || {
        let api = api.clone();
        async move { api.get_opt(host).await.ok().flatten() }
    })
    .await;
    merge_spec::<Host>(host, json!({"pool": pool})).await;
}

/// Merge-patches an object's spec, as `kubectl patch --type=merge` does.
pub async fn merge_spec<K>(name: &str, spec: Value)
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client().await);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": spec})),
    )
    .await
    .expect("patch spec");
}

/// The domain, fresh from the API server.
pub async fn domain(name: &str) -> StorageDomain {
    Api::<StorageDomain>::all(client().await)
        .get(name)
        .await
        .expect("get domain")
}

/// The pool, fresh from the API server.
pub async fn pool(name: &str) -> StoragePool {
    Api::<StoragePool>::all(client().await)
        .get(name)
        .await
        .expect("get pool")
}

/// The host, fresh from the API server.
pub async fn host(name: &str) -> Host {
    Api::<Host>::all(client().await)
        .get(name)
        .await
        .expect("get host")
}

/// The phase of a domain.
pub async fn domain_phase(name: &str) -> Option<DomainPhase> {
    domain(name).await.status.and_then(|s| s.phase)
}

/// The phase of a host.
pub async fn host_phase(name: &str) -> Option<HostPhase> {
    host(name).await.status.and_then(|s| s.phase)
}

/// Waits until the domain reaches `phase`.
pub async fn wait_domain_phase(name: &str, phase: DomainPhase) {
    eventually(&format!("domain {name} {phase:?}"), WAIT, || async move {
        (domain_phase(name).await == Some(phase)).then_some(())
    })
    .await;
}

/// Waits until the host reaches `phase`.
pub async fn wait_host_phase(name: &str, phase: HostPhase) {
    eventually(&format!("host {name} {phase:?}"), WAIT, || async move {
        (host_phase(name).await == Some(phase)).then_some(())
    })
    .await;
}

/// The domain map a host reports holding (uuid → status), empty when not connected.
pub async fn host_map(name: &str) -> BTreeMap<String, MapStatus> {
    host(name)
        .await
        .status
        .and_then(|s| s.report)
        .and_then(|r| r.pool)
        .map(|p| {
            p.domain_map
                .iter()
                .map(|(uuid, status)| (uuid.clone(), *status))
                .collect()
        })
        .unwrap_or_default()
}

/// The domains a host reports monitoring.
pub async fn host_monitors(name: &str) -> Vec<String> {
    host(name)
        .await
        .status
        .and_then(|s| s.report)
        .map(|r| r.domains.into_iter().map(|d| d.uuid).collect())
        .unwrap_or_default()
}

/// A condition of an object's status, as (status, reason, message).
pub fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Name of any object.
pub fn name_of<K: ResourceExt>(o: &K) -> String {
    o.name_any()
}

/// A pool, its domains and its simulated hosts, as the process-level tests (controller restarts,
/// faults) create them.
pub struct ProcessPool {
    /// The pool's name.
    pub name: String,
    /// Domain object names, in creation order (the first is the master).
    pub domains: Vec<String>,
    /// Domain name → uuid.
    pub uuids: BTreeMap<String, String>,
    /// The hosts' names.
    pub hosts: Vec<String>,
    /// The simulated hosts.
    pub agents: agent::Running,
}

impl ProcessPool {
    /// Starts `hosts` simulated hosts (names from `prefix`) and creates a pool with `domains` data
    /// domains and `sync` as its `spec.sync`; every host joins it. Nothing happens until a
    /// controller runs.
    pub async fn create(prefix: &str, hosts: usize, domains: usize, sync: Value) -> Self {
        ensure_namespace().await;
        let agents = start_hosts(&unique(prefix), hosts).await;
        let name = unique(&format!("{prefix}pool"));
        let p: StoragePool =
            serde_json::from_value(obj("StoragePool", &name, json!({ "sync": sync })))
                .expect("pool");
        Api::<StoragePool>::all(client().await)
            .create(&PostParams::default(), &p)
            .await
            .expect("create pool");
        let mut names = Vec::new();
        let mut uuids = BTreeMap::new();
        for _ in 0..domains {
            let d = unique(&format!("{prefix}sd"));
            let u = uuid();
            create_domain(&d, &u, Some(&name)).await;
            uuids.insert(d.clone(), u);
            names.push(d);
        }
        let host_names: Vec<String> = agents.hosts().iter().map(|h| h.name().to_owned()).collect();
        for h in &host_names {
            set_host_pool(h, Some(&name)).await;
        }
        Self {
            name,
            domains: names,
            uuids,
            hosts: host_names,
            agents,
        }
    }
}

/// Sends `method` to `/control/hosts/{host}/{action}` on the simulator of `sim`; asserts 204.
pub async fn control(sim: &SimPool, method: reqwest::Method, host: &str, action: &str) {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let url = format!(
        "http://{}/control/hosts/{host}/{action}",
        sim.agents.control_addr().expect("control")
    );
    let status = reqwest::Client::new()
        .request(method.clone(), url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("control call")
        .status();
    assert_eq!(status, 204, "{method} {action} on {host}");
}

/// A controller replica run with `--leader-elect` in this process, as the Deployment runs two.
pub struct Replica {
    /// Where it serves metrics and health.
    pub addr: SocketAddr,
    /// Stops it (graceful shutdown).
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Its run, finished once it stopped.
    pub done: tokio::task::JoinHandle<Result<(), controller::Error>>,
}

/// A free port on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    l.local_addr().expect("addr")
}

/// Starts an elected replica with the deployed timings (Lease of 15 s, renewed 5 s before).
pub async fn replica() -> Replica {
    replica_with_lease(15, 5).await
}

/// Starts an elected replica whose Lease lasts `lease` seconds, renewed `grace` before expiry.
pub async fn replica_with_lease(lease: u64, grace: u64) -> Replica {
    let addr = free_addr();
    let args = controller::ControllerArgs {
        lease_namespace: LEASE_NAMESPACE.into(),
        token_file: Some("/dev/null".into()),
        pool_ca_secret: None,
        agent_service_account: "poolkeeper-system:poolkeeper-agent".into(),
        certificate_lifetime_seconds: 30 * 24 * 3600,
        tls_cert: None,
        tls_key: None,
        agent_ca_file: None,
        insecure: true,
        metrics_addr: addr,
        concurrency: 4,
        kept_host_connections: protocol::client::DEFAULT_KEPT_CONNECTIONS,
        leader_elect: true,
        leader_election_namespace: LEASE_NAMESPACE.into(),
        leader_election_lease_seconds: lease,
        leader_election_renew_grace_seconds: grace,
    };
    let settings = Settings {
        lease_namespace: LEASE_NAMESPACE.into(),
        concurrency: 4,
        rpc: protocol::Client::new(Token::new(TOKEN).expect("token"), None).expect("rpc"),
        signer: None,
    };
    let client = client_as("poolkeeper-controller").await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done = tokio::spawn(async move {
        controller::run_elected(client, settings, &args, async move {
            let _ = rx.await;
        })
        .await
    });
    Replica {
        addr,
        stop: Some(tx),
        done,
    }
}
