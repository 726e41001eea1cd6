//! The agent against a real API server: registration, reports (written only on change), restarts,
//! Leases, and the simulator with its fault-injection surface.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use poolkeeper::agent::lease::LeaseConfig;
use poolkeeper::agent::monitor::MonitorConfig;
use poolkeeper::agent::storage::make_file_domain;
use poolkeeper::agent::{Hosts, Options, Running, start};
use poolkeeper::api::{Host, HostReport, HostSpec, MapStatus};
use poolkeeper::protocol::wire::{CreateParams, method};
use poolkeeper::protocol::{Client, ConnectParams, RpcError, Token};
use serde_json::json;

use support::{eventually, unique, uuid};

const TOKEN: &str = "agent-test-token";
const PERIOD: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(5);

/// The endpoint the agent published in the Host's status.
fn published(h: &Host) -> String {
    h.status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .expect("status.endpoint")
}

async fn namespace(client: &kube::Client) -> String {
    let name = unique("agent-ns");
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    name
}

fn options(hosts: Hosts, kube: kube::Client, ns: &str) -> Options {
    Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        control_listen: Some("127.0.0.1:0".parse().expect("addr")),
        tls: None,
        token: Some(Token::new(TOKEN).expect("token")),
        max_frame_bytes: 64 * 1024,
        monitor: MonitorConfig {
            period: PERIOD,
            check_timeout: Duration::from_secs(1),
        },
        hosts,
        kube: Some((
            kube,
            LeaseConfig {
                namespace: ns.to_owned(),
                duration: Duration::from_secs(10),
                renew_every: Duration::from_secs(1),
            },
        )),
    }
}

async fn single(name: &str, root: &Path, kube: kube::Client, ns: &str) -> Running {
    let hosts = Hosts::Single {
        name: name.to_owned(),
        storage_root: root.to_owned(),
    };
    start(options(hosts, kube, ns)).await.expect("agent starts")
}

fn rpc_client() -> Client {
    Client::new(Token::new(TOKEN).expect("token"), None).expect("client")
}

fn connect_params(
    pool: &str,
    host_id: i32,
    master: &str,
    map: &[(&str, MapStatus)],
) -> ConnectParams {
    ConnectParams {
        storagepool_id: pool.to_owned(),
        host_id,
        scsi_key: pool.to_owned(),
        master_sd_uuid: master.to_owned(),
        master_version: 1,
        domain_dict: Some(map.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
    }
}

/// Creates pool `pool` on storage with `master` (made by `make-domain`) as its only domain, as a
/// pool manager would, through the host at `endpoint`.
async fn create_pool(endpoint: &str, pool: &str, master: &str) {
    let p = CreateParams {
        storagepool_id: pool.to_owned(),
        name: "dc".into(),
        master_sd_uuid: master.to_owned(),
        master_version: 1,
        domain_list: vec![master.to_owned()],
    };
    rpc_client()
        .call::<_, serde_json::Value>(endpoint, method::POOL_CREATE, &p, CALL)
        .await
        .expect("StoragePool.create");
}

/// Waits until the Host's report satisfies `check`; returns the Host.
async fn report_where(
    api: &Api<Host>,
    name: &str,
    what: &str,
    check: impl Fn(&HostReport) -> bool,
) -> Host {
    eventually(what, WAIT, || async {
        let h = api.get_opt(name).await.ok().flatten()?;
        let ok = h
            .status
            .as_ref()
            .and_then(|s| s.report.as_ref())
            .is_some_and(&check);
        ok.then_some(h)
    })
    .await
}

fn rv(h: &Host) -> String {
    h.metadata
        .resource_version
        .clone()
        .expect("resourceVersion")
}

/// Writes to the Host since resourceVersion `since`, from the API server's watch history.
async fn writes_since(api: &Api<Host>, name: &str, since: &str) -> Vec<Host> {
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(1);
    let events: Vec<WatchEvent<Host>> = api
        .watch(&wp, since)
        .await
        .expect("watch")
        .try_collect()
        .await
        .expect("watch events");
    events
        .into_iter()
        .filter_map(|e| match e {
            WatchEvent::Modified(h) => Some(h),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn registers_reports_once_per_change_and_not_in_steady_state() {
    let kube = support::client().await;
    let ns = namespace(&kube).await;
    let name = unique("host");
    let root = tempfile::tempdir().expect("tempdir");
    let sd = uuid();
    make_file_domain(root.path(), "mnt1", &sd).expect("layout");
    let running = single(&name, root.path(), kube.clone(), &ns).await;
    let host = running.host(&name).expect("host").clone();
    let hosts: Api<Host> = Api::all(kube.clone());

    let h = report_where(&hosts, &name, "the first report", |r| {
        r.boot_id == host.boot_id()
    })
    .await;
    assert_eq!(h.spec.endpoint, None, "the agent never writes the spec");
    assert_eq!(published(&h), host.endpoint());
    let report = h.status.and_then(|s| s.report).expect("report");
    assert!(report.pool.is_none());
    assert_eq!(report.domain_count, 0);
    assert!(!report.agent_version.is_empty());
    assert_eq!(
        uuid::Uuid::parse_str(&report.boot_id).map(|u| u.get_version_num()),
        Ok(4)
    );

    // A real file host checks the master as VDSM does: the pool is created on storage first
    // (which changes nothing the report shows).
    let pool = uuid();
    create_pool(host.endpoint(), &pool, &sd).await;
    // One change (a connect), then the monitor's first check: at most two writes, one per
    // change (the reporter may fold them into one).
    let before = rv(&hosts.get(&name).await.expect("host"));
    rpc_client()
        .connect(
            host.endpoint(),
            &connect_params(&pool, 7, &sd, &[(&sd, MapStatus::Active)]),
            CALL,
        )
        .await
        .expect("connect");
    let h = report_where(&hosts, &name, "the domain valid and actual", |r| {
        r.domain_count == 1
            && r.domains
                .first()
                .is_some_and(|d| d.valid && d.actual && d.acquired)
    })
    .await;
    // The claim is "one write per change": give an unwanted one ten monitor periods to show.
    tokio::time::sleep(PERIOD * 10).await;
    let writes = writes_since(&hosts, &name, &before).await;
    assert!(
        (1..=2).contains(&writes.len()),
        "two changes, at most two writes: {writes:#?}"
    );
    let pool_report = writes[0]
        .status
        .as_ref()
        .and_then(|s| s.report.as_ref())
        .and_then(|r| r.pool.as_ref())
        .expect("pool");
    assert_eq!(
        (pool_report.uuid.as_str(), pool_report.host_id),
        (pool.as_str(), 7)
    );
    assert_eq!(pool_report.domain_map.len(), 1);

    // Steady state: checks keep running, nothing is written.
    let steady = rv(&h);
    tokio::time::sleep(PERIOD * 15).await;
    assert!(
        writes_since(&hosts, &name, &steady).await.is_empty(),
        "steady state writes nothing"
    );

    // The domain disappears: one write with 358.
    std::fs::remove_dir_all(root.path().join("mnt1").join(&sd)).expect("rm");
    let h = report_where(&hosts, &name, "the domain missing", |r| {
        r.domains.first().is_some_and(|d| d.code == 358)
    })
    .await;
    // As above: no second write may follow within ten monitor periods.
    tokio::time::sleep(PERIOD * 10).await;
    let writes = writes_since(&hosts, &name, &steady).await;
    assert_eq!(writes.len(), 1, "one change, one write: {writes:#?}");
    assert_eq!(rv(&writes[0]), rv(&h));
    running.shutdown().await;
}

#[tokio::test]
async fn restart_reports_a_new_boot_id_no_pool_and_keeps_operator_fields() {
    let kube = support::client().await;
    let ns = namespace(&kube).await;
    let name = unique("host");
    let hosts: Api<Host> = Api::all(kube.clone());
    // An operator created the Host first, with a pool, maintenance and an endpoint override.
    let mut object = Host::new(
        &name,
        HostSpec {
            pool: Some("pool-a".into()),
            endpoint: Some("override.example.com:54321".into()),
            maintenance: true,
        },
    );
    object.metadata.labels = Some([("team".to_owned(), "storage".to_owned())].into());
    hosts
        .create(&PostParams::default(), &object)
        .await
        .expect("create host");

    let root = tempfile::tempdir().expect("tempdir");
    let first = single(&name, root.path(), kube.clone(), &ns).await;
    let host = first.host(&name).expect("host").clone();
    let pool = uuid();
    let sd = uuid();
    make_file_domain(root.path(), "mnt1", &sd).expect("layout");
    create_pool(host.endpoint(), &pool, &sd).await;
    rpc_client()
        .connect(
            host.endpoint(),
            &connect_params(&pool, 1, &sd, &[(&sd, MapStatus::Active)]),
            CALL,
        )
        .await
        .expect("connect");
    let h = report_where(&hosts, &name, "connected report", |r| {
        r.pool.is_some() && r.domain_count == 1
    })
    .await;
    assert_eq!(h.spec.pool.as_deref(), Some("pool-a"));
    assert!(h.spec.maintenance);
    assert_eq!(
        h.spec.endpoint.as_deref(),
        Some("override.example.com:54321"),
        "the operator's override is kept"
    );
    assert_eq!(
        published(&h),
        host.endpoint(),
        "the agent publishes its own"
    );
    let old_boot = host.boot_id();
    first.shutdown().await;

    let second = single(&name, root.path(), kube.clone(), &ns).await;
    let new_boot = second.host(&name).expect("host").boot_id();
    assert_ne!(new_boot, old_boot);
    let h = report_where(&hosts, &name, "the restarted report", |r| {
        r.boot_id == new_boot
    })
    .await;
    let report = h
        .status
        .as_ref()
        .and_then(|s| s.report.clone())
        .expect("report");
    assert!(report.pool.is_none(), "memory lost: {report:?}");
    assert!(report.domains.is_empty());
    assert_eq!(report.domain_count, 0);
    assert_eq!(h.spec.pool.as_deref(), Some("pool-a"));
    assert!(h.spec.maintenance);
    assert_eq!(
        h.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("team"))
            .map(String::as_str),
        Some("storage")
    );
    second.shutdown().await;
}

#[tokio::test]
async fn deleted_or_restored_host_is_registered_and_reported_again() {
    let kube = support::client().await;
    let ns = namespace(&kube).await;
    let name = unique("host");
    let root = tempfile::tempdir().expect("tempdir");
    let running = single(&name, root.path(), kube.clone(), &ns).await;
    let host = running.host(&name).expect("host").clone();
    let hosts: Api<Host> = Api::all(kube.clone());
    let pool = uuid();
    let sd = uuid();
    make_file_domain(root.path(), "mnt1", &sd).expect("layout");
    create_pool(host.endpoint(), &pool, &sd).await;
    rpc_client()
        .connect(
            host.endpoint(),
            &connect_params(&pool, 3, &sd, &[(&sd, MapStatus::Active)]),
            CALL,
        )
        .await
        .expect("connect");
    let connected = |r: &HostReport| {
        r.boot_id == host.boot_id() && r.pool.as_ref().is_some_and(|p| p.host_id == 3)
    };
    let first = report_where(&hosts, &name, "the connected report", connected).await;
    let backup = first.status.and_then(|s| s.report).expect("report");

    // Deleted: the agent registers the Host again and writes its whole report, although its
    // memory did not change.
    hosts
        .delete(&name, &Default::default())
        .await
        .expect("delete host");
    let again = report_where(
        &hosts,
        &name,
        "the report after the Host was deleted",
        connected,
    )
    .await;
    assert_ne!(again.metadata.uid, first.metadata.uid, "a new Host object");
    assert_eq!(published(&again), host.endpoint());

    // Restored from an older backup (the report of before the connect): the agent writes what it
    // holds now.
    let mut stale = backup.clone();
    stale.pool = None;
    hosts
        .patch_status(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"status": {"report": stale}})),
        )
        .await
        .expect("restore an old report");
    report_where(
        &hosts,
        &name,
        "the report after an old one was restored",
        connected,
    )
    .await;
    running.shutdown().await;
}

#[tokio::test]
async fn lease_is_held_by_the_host_and_renewed() {
    let kube = support::client().await;
    let ns = namespace(&kube).await;
    let name = unique("host");
    let root = tempfile::tempdir().expect("tempdir");
    let running = single(&name, root.path(), kube.clone(), &ns).await;
    let leases: Api<Lease> = Api::namespaced(kube.clone(), &ns);
    let renew_time = |l: &Lease| l.spec.as_ref().and_then(|s| s.renew_time.clone());
    let first = eventually("the lease", WAIT, || async {
        leases.get_opt(&name).await.ok().flatten()
    })
    .await;
    let spec = first.spec.clone().expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(name.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(10));
    let t0 = renew_time(&first).expect("renewTime");
    eventually("a renewal", WAIT, || async {
        let l = leases.get_opt(&name).await.ok().flatten()?;
        renew_time(&l).filter(|t| t.0 > t0.0)
    })
    .await;
    // A Lease deleted under a running agent (a namespace cleanup, a restore) comes back at the
    // host's next turn.
    leases
        .delete(&name, &Default::default())
        .await
        .expect("delete the lease");
    let again = eventually("the lease re-created", WAIT, || async {
        leases.get_opt(&name).await.ok().flatten()
    })
    .await;
    assert_eq!(
        again.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(name.as_str())
    );
    running.shutdown().await;
}

#[tokio::test]
async fn calls_are_served_while_the_api_server_is_unreachable() {
    // A client for an address where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = kube::Config::new(format!("https://127.0.0.1:{port}").parse().expect("url"));
    let dead = kube::Client::try_from(config).expect("client");
    let root = tempfile::tempdir().expect("tempdir");
    let running = single(&unique("host"), root.path(), dead, "nowhere").await;
    let host = running.hosts()[0].clone();
    let (pool, sd) = (uuid(), uuid());
    make_file_domain(root.path(), "mnt1", &sd).expect("layout");
    create_pool(host.endpoint(), &pool, &sd).await;
    let c = rpc_client();
    c.connect(
        host.endpoint(),
        &connect_params(&pool, 1, &sd, &[(&sd, MapStatus::Active)]),
        CALL,
    )
    .await
    .expect("connect served from memory");
    eventually("a valid check", WAIT, || async {
        let s = c.get_stats(host.endpoint(), CALL).await.ok()?;
        s.storage_domains
            .get(&sd)
            .filter(|v| v.valid && v.actual)
            .cloned()
    })
    .await;
    running.shutdown().await;
}

fn control(base: &str, path: &str) -> String {
    format!("{base}/control/{path}")
}

async fn control_call(method: reqwest::Method, url: &str, body: Option<serde_json::Value>) -> u16 {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("control call").status().as_u16()
}

#[tokio::test]
async fn simulator_200_hosts_register_heartbeat_and_answer_connect() {
    const N: usize = 200;
    let kube = support::client().await;
    let ns = namespace(&kube).await;
    let prefix = unique("sim");
    let sim = Hosts::Simulated {
        count: N,
        prefix: prefix.clone(),
        storage: None,
    };
    let running = start(options(sim, kube.clone(), &ns))
        .await
        .expect("simulator starts");
    let hosts: Api<Host> = Api::all(kube.clone());
    let leases: Api<Lease> = Api::namespaced(kube.clone(), &ns);
    let ours = |name: &str| name.starts_with(&format!("{prefix}-"));

    let registered = eventually(
        "200 hosts registered with reports",
        Duration::from_secs(60),
        || async {
            let list = hosts.list(&ListParams::default()).await.ok()?;
            let mine: Vec<Host> = list
                .items
                .into_iter()
                .filter(|h| h.metadata.name.as_deref().is_some_and(ours))
                .filter(|h| h.status.as_ref().is_some_and(|s| s.report.is_some()))
                .collect();
            (mine.len() == N).then_some(mine)
        },
    )
    .await;
    let first_renewals = eventually("200 leases", Duration::from_secs(60), || async {
        let list = leases.list(&ListParams::default()).await.ok()?;
        (list.items.len() == N).then_some(list.items)
    })
    .await;
    let t0 = first_renewals
        .iter()
        .filter_map(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0))
        .max()
        .expect("renew times");
    eventually(
        "every lease renewed again",
        Duration::from_secs(60),
        || async {
            let list = leases.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .all(|l| {
                    l.spec
                        .as_ref()
                        .and_then(|s| s.renew_time.as_ref())
                        .is_some_and(|t| t.0 > t0)
                })
                .then_some(())
        },
    )
    .await;

    // Every host answers connect at its registered endpoint.
    let pool = uuid();
    let sd = uuid();
    let client = rpc_client();
    // The pool exists on the simulated storage once one host created it (VDSM's master check).
    create_pool(&published(&registered[0]), &pool, &sd).await;
    let results: Vec<Result<(), RpcError>> = futures::stream::iter(registered.iter().enumerate())
        .map(|(i, h)| {
            let p = connect_params(
                &pool,
                i32::try_from(i + 1).expect("id"),
                &sd,
                &[(&sd, MapStatus::Active)],
            );
            let client = client.clone();
            let endpoint = published(h);
            async move { client.connect(&endpoint, &p, CALL).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    eventually(
        "200 reports with the pool and a valid domain",
        Duration::from_secs(60),
        || async {
            let list = hosts.list(&ListParams::default()).await.ok()?;
            let n = list
                .items
                .iter()
                .filter(|h| h.metadata.name.as_deref().is_some_and(ours))
                .filter_map(|h| h.status.as_ref()?.report.as_ref())
                .filter(|r| r.pool.as_ref().is_some_and(|p| p.uuid == pool))
                .filter(|r| r.domains.first().is_some_and(|d| d.valid && d.actual))
                .count();
            (n == N).then_some(())
        },
    )
    .await;
    running.shutdown().await;
}

#[tokio::test]
async fn simulator_faults_blackhole_restart_storage_and_latency_and_their_undo() {
    let kube = support::client().await;
    let ns = namespace(&kube).await;
    let prefix = unique("simf");
    let sim = Hosts::Simulated {
        count: 4,
        prefix: prefix.clone(),
        storage: None,
    };
    let running = start(options(sim, kube.clone(), &ns))
        .await
        .expect("simulator starts");
    let base = format!("http://{}", running.control_addr().expect("control"));
    let hosts: Api<Host> = Api::all(kube.clone());
    let leases: Api<Lease> = Api::namespaced(kube.clone(), &ns);
    let name = |i: usize| format!("{prefix}-{i:04}");
    let endpoint = |i: usize| running.hosts()[i].endpoint().to_owned();
    let client = rpc_client();
    let (pool, sd) = (uuid(), uuid());
    create_pool(&endpoint(0), &pool, &sd).await;
    for i in 0..4 {
        let p = connect_params(
            &pool,
            i32::try_from(i + 1).expect("id"),
            &sd,
            &[(&sd, MapStatus::Active)],
        );
        client
            .connect(&endpoint(i), &p, CALL)
            .await
            .expect("connect");
        report_where(&hosts, &name(i), "valid domain", |r| {
            r.domains.first().is_some_and(|d| d.valid && d.actual)
        })
        .await;
    }

    // The control surface needs the token too.
    let unauth = reqwest::Client::new()
        .put(control(&base, &format!("hosts/{}/blackhole", name(0))))
        .send()
        .await
        .expect("sent");
    assert_eq!(unauth.status(), 401);
    assert!(!running.hosts()[0].is_blackholed());

    // Blackhole: calls hang (the caller times out), the Lease is not renewed.
    assert_eq!(
        control_call(
            reqwest::Method::PUT,
            &control(&base, &format!("hosts/{}/blackhole", name(0))),
            None
        )
        .await,
        204
    );
    let e = client
        .get_stats(&endpoint(0), Duration::from_millis(300))
        .await;
    assert!(matches!(e, Err(RpcError::Timeout { .. })), "{e:?}");
    let renewed = |l: Option<Lease>| l.and_then(|l| l.spec?.renew_time).map(|t| t.0);
    let frozen = renewed(leases.get_opt(&name(0)).await.expect("get")).expect("renewTime");
    let other = renewed(leases.get_opt(&name(1)).await.expect("get")).expect("renewTime");
    eventually("another host renews", WAIT, || async {
        renewed(leases.get_opt(&name(1)).await.ok()?).filter(|t| *t > other)
    })
    .await;
    // Renewals are spread over the 1 s interval: two intervals on, host 0 would have renewed.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert_eq!(
            renewed(leases.get_opt(&name(0)).await.expect("get")),
            Some(frozen),
            "blackholed host renewed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        control_call(
            reqwest::Method::DELETE,
            &control(&base, &format!("hosts/{}/blackhole", name(0))),
            None
        )
        .await,
        204
    );
    client
        .get_stats(&endpoint(0), CALL)
        .await
        .expect("answers again");
    eventually("lease renewed again", WAIT, || async {
        renewed(leases.get_opt(&name(0)).await.ok()?).filter(|t| *t > frozen)
    })
    .await;

    // Restart: memory and bootId lost.
    let old_boot = running.hosts()[1].boot_id();
    assert_eq!(
        control_call(
            reqwest::Method::POST,
            &control(&base, &format!("hosts/{}/restart", name(1))),
            None
        )
        .await,
        204
    );
    let h = report_where(&hosts, &name(1), "restarted report", |r| {
        r.boot_id != old_boot
    })
    .await;
    let r = h.status.and_then(|s| s.report).expect("report");
    assert!(r.pool.is_none() && r.domains.is_empty());
    let e = client.get_info(&endpoint(1), &pool, CALL).await;
    assert_eq!(
        e.err().and_then(|e| e.vdsm_code()),
        Some(poolkeeper::protocol::ErrorCode::StoragePoolUnknown)
    );

    // A domain unreadable for host 2 only; then undone.
    let fault = control(&base, &format!("domains/{sd}/fault"));
    assert_eq!(
        control_call(
            reqwest::Method::PUT,
            &fault,
            Some(json!({"kind": "unreadable", "hosts": [name(2)]}))
        )
        .await,
        204
    );
    report_where(&hosts, &name(2), "2001 on host 2", |r| {
        r.domains
            .first()
            .is_some_and(|d| d.code == 2001 && !d.acquired)
    })
    .await;
    let h3 = hosts.get(&name(3)).await.expect("host 3");
    assert!(
        h3.status
            .and_then(|s| s.report)
            .is_some_and(|r| r.domains.first().is_some_and(|d| d.valid))
    );
    assert_eq!(
        control_call(reqwest::Method::DELETE, &fault, None).await,
        204
    );
    report_where(&hosts, &name(2), "valid again on host 2", |r| {
        r.domains.first().is_some_and(|d| d.valid)
    })
    .await;

    // A slow domain (past the check timeout) for host 3: 2001 until the read returns.
    assert_eq!(
        control_call(
            reqwest::Method::PUT,
            &fault,
            Some(json!({"kind": "slow", "seconds": 1.5, "hosts": [name(3)]}))
        )
        .await,
        204
    );
    report_where(&hosts, &name(3), "slow read reported", |r| {
        r.domains.first().is_some_and(|d| d.code == 2001)
    })
    .await;
    assert_eq!(
        control_call(reqwest::Method::DELETE, &fault, None).await,
        204
    );
    report_where(&hosts, &name(3), "fast again", |r| {
        r.domains.first().is_some_and(|d| d.valid)
    })
    .await;

    // Added latency, then undone.
    let lat = control(&base, &format!("hosts/{}/latency", name(3)));
    assert_eq!(
        control_call(reqwest::Method::PUT, &lat, Some(json!({"millis": 400}))).await,
        204
    );
    let t = Instant::now();
    client
        .get_stats(&endpoint(3), CALL)
        .await
        .expect("slow answer");
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(control_call(reqwest::Method::DELETE, &lat, None).await, 204);
    let t = Instant::now();
    client.get_stats(&endpoint(3), CALL).await.expect("answer");
    assert!(t.elapsed() < Duration::from_millis(400));

    // Unknown hosts are 404.
    assert_eq!(
        control_call(
            reqwest::Method::POST,
            &control(&base, "hosts/nope/restart"),
            None
        )
        .await,
        404
    );
    running.shutdown().await;
}

/// A `poolkeeper` child process, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn poolkeeper(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_poolkeeper"));
    cmd.args(args)
        .env("KUBECONFIG", support::control_plane().kubeconfig_path())
        .stdin(std::process::Stdio::null());
    cmd
}

fn token_file(dir: &Path) -> String {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("token file");
    path.display().to_string()
}

#[test]
fn binary_refuses_plain_tcp_unless_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poolkeeper"))
        .args(["agent", "--listen", "127.0.0.1:0", "--token-file", &token])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure"), "{stderr}");
}

#[test]
fn binary_refuses_an_advertised_address_that_is_not_host_and_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    for bad in ["https://h1:54321/jsonrpc", "h1", "H1:54321"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_poolkeeper"))
            .args(["agent", "--insecure", "--listen", "127.0.0.1:0"])
            .args(["--token-file", &token, "--advertise", bad])
            .output()
            .expect("run");
        assert!(!out.status.success(), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("must be host:port"), "{bad}: {stderr}");
    }
}

#[test]
fn binary_refuses_certificate_and_bridge_flags_that_cannot_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let cases: [(&[&str], &str); 5] = [
        // A certificate from the cluster needs the CA of the controller's certificate.
        (&["--request-certificate"], "--tls-client-ca"),
        // ...and a real host: simulated hosts have no node-bound token each.
        (
            &[
                "--request-certificate",
                "--tls-client-ca",
                "/dev/null",
                "--simulate",
                "2",
            ],
            "--simulate",
        ),
        // The bridge calls VDSM over TLS with a client certificate VDSM's CA signed.
        (&["--vdsm", "192.0.2.7:54321"], "--vdsm-ca"),
        // A VDSM on loopback: the controller could not reach it at that endpoint.
        (
            &[
                "--vdsm",
                "127.0.0.1:54321",
                "--insecure",
                "--token-file",
                &token,
            ],
            "--advertise",
        ),
        (
            &[
                "--vdsm",
                "vdsm-without-port",
                "--insecure",
                "--token-file",
                &token,
            ],
            "must be host:port",
        ),
    ];
    for (args, says) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_poolkeeper"))
            .args(["agent", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn binary_agent_serves_a_made_domain_and_reports_it() {
    let kube = support::client().await;
    let ns = namespace(&kube).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("mnt");
    let sd = uuid();
    let made = poolkeeper(&[
        "make-domain",
        "--root",
        &root.display().to_string(),
        "--mount",
        "nfs1:_data",
        "--uuid",
        &sd,
    ])
    .output()
    .expect("make-domain");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(
        root.join("nfs1:_data")
            .join(&sd)
            .join("dom_md")
            .join("metadata")
            .is_file()
    );

    let name = unique("binhost");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _agent = Child(
        poolkeeper(&[
            "agent",
            "--host-name",
            &name,
            "--listen",
            &listen,
            "--insecure",
            "--token-file",
            &token_file(dir.path()),
            "--storage-root",
            &root.display().to_string(),
            "--monitor-period-seconds",
            "0.2",
            "--lease-namespace",
            &ns,
            "--lease-renew-seconds",
            "1",
        ])
        .spawn()
        .expect("agent"),
    );
    let hosts: Api<Host> = Api::all(kube.clone());
    let h = report_where(&hosts, &name, "the binary's first report", |r| {
        r.pool.is_none()
    })
    .await;
    let endpoint = published(&h);
    assert_eq!(endpoint, listen);
    let pool = uuid();
    create_pool(&endpoint, &pool, &sd).await;
    rpc_client()
        .connect(
            &endpoint,
            &connect_params(&pool, 4, &sd, &[(&sd, MapStatus::Active)]),
            CALL,
        )
        .await
        .expect("connect");
    report_where(&hosts, &name, "the made domain valid", |r| {
        r.domains
            .first()
            .is_some_and(|d| d.uuid == sd && d.valid && d.actual && d.version == 5)
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(kube, &ns);
    eventually("the binary's lease", WAIT, || async {
        leases.get_opt(&name).await.ok().flatten()
    })
    .await;
}

#[tokio::test]
async fn binary_simulator_registers_hosts_and_answers_at_their_endpoints() {
    let kube = support::client().await;
    let ns = namespace(&kube).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = unique("binsim");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _sim = Child(
        poolkeeper(&[
            "agent",
            "--simulate",
            "3",
            "--sim-prefix",
            &prefix,
            "--listen",
            &listen,
            "--control-listen",
            "127.0.0.1:0",
            "--insecure",
            "--token-file",
            &token_file(dir.path()),
            "--lease-namespace",
            &ns,
        ])
        .spawn()
        .expect("simulator"),
    );
    let hosts: Api<Host> = Api::all(kube);
    let pool = uuid();
    let sd = uuid();
    for i in 0..3 {
        let name = format!("{prefix}-{i:04}");
        let h = report_where(&hosts, &name, "a simulated host's report", |_| true).await;
        let endpoint = published(&h);
        // Each simulated host listens on its own address: 127.0.0.1 plus its index.
        assert_eq!(endpoint, format!("127.0.0.{}:{port}", i + 1));
        if i == 0 {
            create_pool(&endpoint, &pool, &sd).await;
        }
        let p = connect_params(&pool, i + 1, &sd, &[(&sd, MapStatus::Active)]);
        rpc_client()
            .connect(&endpoint, &p, CALL)
            .await
            .expect("connect");
        report_where(&hosts, &name, "the pool reported", |r| {
            r.pool.as_ref().is_some_and(|p| p.uuid == pool)
        })
        .await;
    }
}
