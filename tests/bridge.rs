//! `poolkeeper agent --vdsm`: the bridge beside a real VDSM, against the real API server, with a
//! poolkeeper agent standing in as the VDSM (serving calls only, over mutual TLS, reporting
//! nothing itself). The bridge registers the Host with VDSM's address, and reports what VDSM
//! answers; the controller calls that VDSM directly and brings it into a pool; the report is
//! written only on change; a VDSM restart shows as a new bootId and the host is connected again.

mod support;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use kube::Api;
use poolkeeper::agent::bridge::Vdsm;
use poolkeeper::agent::lease::LeaseConfig;
use poolkeeper::agent::monitor::MonitorConfig;
use poolkeeper::agent::storage::make_file_domain;
use poolkeeper::agent::{Hosts, Options, Running, Tls, TlsFiles, start};
use poolkeeper::api::{Host, HostReport, StoragePool};
use poolkeeper::controller::{self, Settings};
use poolkeeper::pki::PoolCa;
use poolkeeper::protocol::Client;
use support::cluster::{LEASE_NAMESPACE, agent_on, client_as};
use support::{client, eventually, unique, uuid};

const WAIT: Duration = Duration::from_secs(60);

/// The pool CA of this binary: it signs the controller's, the bridge's and the stand-in VDSM's
/// certificates, as the engine's CA signs the engine's and VDSM's.
fn ca() -> &'static PoolCa {
    static CA: OnceLock<PoolCa> = OnceLock::new();
    CA.get_or_init(|| PoolCa::generate("engine-ca").expect("ca"))
}

fn mutual_client() -> Client {
    let id = ca().controller().expect("client certificate");
    Client::mutual(
        ca().pem().as_bytes(),
        id.cert_pem.as_bytes(),
        id.key_pem.as_bytes(),
        None,
    )
    .expect("client")
}

/// This binary's controller, calling hosts over mutual TLS with the CA's client certificate.
fn controller() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async {
                let settings = Settings {
                    lease_namespace: LEASE_NAMESPACE.into(),
                    concurrency: 4,
                    rpc: mutual_client(),
                    signer: None,
                };
                let kube = client_as("poolkeeper-controller").await;
                controller::run_with(
                    kube,
                    settings,
                    support::cluster::free_addr(),
                    std::future::pending(),
                )
                .await
                .expect("controller");
            });
        });
    });
}

/// The stand-in VDSM for Host `name`: a poolkeeper agent serving calls only (no API server),
/// over mutual TLS with a certificate for the Host's name and 127.0.0.1, at `at`.
async fn vdsm(name: &str, storage: &Path, certs: &Path, at: &str) -> Running {
    let issued = ca().host(name, "127.0.0.1").expect("host certificate");
    let write = |file: &str, pem: &str| {
        let path = certs.join(file);
        std::fs::write(&path, pem).expect("write");
        path
    };
    start(Options {
        listen: at.parse().expect("addr"),
        advertise: None,
        control_listen: None,
        tls: Some(Tls::Files(TlsFiles {
            cert: write("vdsm.crt", &issued.cert_pem),
            key: write("vdsm.key", &issued.key_pem),
            client_ca: Some(write("ca.crt", ca().pem())),
        })),
        token: None,
        max_frame_bytes: poolkeeper::agent::DEFAULT_MAX_FRAME_BYTES,
        monitor: MonitorConfig {
            period: Duration::from_millis(300),
            check_timeout: Duration::from_secs(1),
        },
        hosts: Hosts::Single {
            name: name.to_owned(),
            storage_root: storage.to_owned(),
        },
        kube: None,
    })
    .await
    .expect("the stand-in VDSM starts")
}

async fn report(hosts: &Api<Host>, name: &str) -> Option<(HostReport, String)> {
    let h = hosts.get(name).await.ok()?;
    let version = h.metadata.resource_version.clone().unwrap_or_default();
    Some((h.status?.report?, version))
}

#[tokio::test]
async fn the_bridge_reports_what_vdsm_answers_and_the_controller_calls_vdsm() {
    controller();
    let name = unique("vdsm-host");
    let storage = tempfile::tempdir().expect("tempdir");
    let certs = tempfile::tempdir().expect("tempdir");
    let sd_uuid = uuid();
    make_file_domain(storage.path(), "mnt1", &sd_uuid).expect("layout");
    let standin = vdsm(&name, storage.path(), certs.path(), "127.0.0.1:0").await;
    let endpoint = standin.rpc_addr().to_string();

    let bridge = start(Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        control_listen: None,
        tls: None,
        token: None,
        max_frame_bytes: poolkeeper::agent::DEFAULT_MAX_FRAME_BYTES,
        monitor: MonitorConfig {
            period: Duration::from_millis(300),
            check_timeout: Duration::from_secs(1),
        },
        hosts: Hosts::Bridge {
            name: name.clone(),
            vdsm: Vdsm {
                endpoint: endpoint.clone(),
                tls_name: name.clone(),
                client: mutual_client(),
                period: Duration::from_millis(300),
            },
        },
        kube: Some((
            agent_on(&name).await,
            LeaseConfig {
                namespace: LEASE_NAMESPACE.into(),
                duration: Duration::from_secs(10),
                renew_every: Duration::from_secs(1),
            },
        )),
    })
    .await
    .expect("the bridge starts");

    // Registered with VDSM's address: the controller calls VDSM, not the bridge.
    let hosts: Api<Host> = Api::all(client().await);
    let host = eventually("the bridge registers the Host", WAIT, || async {
        hosts
            .get_opt(&name)
            .await
            .ok()
            .flatten()
            .filter(|h| h.status.as_ref().is_some_and(|s| s.endpoint.is_some()))
    })
    .await;
    assert_eq!(
        host.status.and_then(|s| s.endpoint).as_deref(),
        Some(endpoint.as_str())
    );
    let (first, _) = eventually("the bridge reports", WAIT, || report(&hosts, &name)).await;
    assert_eq!(first.pool, None, "VDSM is connected to no pool yet");

    // The controller brings VDSM into a pool, over mutual TLS.
    let pool = support::cluster::join_new_pool(&name, &sd_uuid).await;
    let pools: Api<StoragePool> = Api::all(client().await);
    let in_sync = || support::cluster::in_sync_report(&name);
    let synced = eventually(
        "the host in sync through the bridge's report",
        WAIT,
        in_sync,
    )
    .await;

    // The report is VDSM's own: the pool, the id the pool assigned, the map and master it was
    // given, the manager's lease, and the domain it monitors.
    let p = pools
        .get(&pool)
        .await
        .expect("pool")
        .status
        .expect("status");
    let connection = synced.pool.clone().expect("connected");
    assert_eq!(Some(connection.uuid.as_str()), p.uuid.as_deref());
    let assigned = p
        .host_ids
        .iter()
        .find(|e| e.host == name)
        .expect("an id")
        .id;
    assert_eq!(connection.host_id, assigned);
    assert_eq!(connection.master_domain.as_deref(), Some(sd_uuid.as_str()));
    assert!(
        connection.domain_map.contains_key(&sd_uuid),
        "{connection:?}"
    );
    // ...as VDSM holds it, the manager's lease included, once the bridge has polled it.
    let held = standin.host(&name).expect("stand-in");
    eventually(
        "the bridge reports VDSM's connection as VDSM holds it",
        WAIT,
        || async {
            let (r, _) = report(&hosts, &name).await?;
            let now = held.report().pool;
            (r.pool == now && now.as_ref().is_some_and(|c| c.spm_lver.is_some())).then_some(())
        },
    )
    .await;
    eventually("the monitored domain in the report", WAIT, || async {
        let (r, _) = report(&hosts, &name).await?;
        r.domains
            .iter()
            .find(|d| d.uuid == sd_uuid && d.valid)
            .map(|_| ())
    })
    .await;

    // Steady state: nothing changes, nothing is written (polled every 0.3 s).
    let (_, before) = report(&hosts, &name).await.expect("report");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, after) = report(&hosts, &name).await.expect("report");
    assert_eq!(before, after, "a steady VDSM writes nothing");

    // VDSM restarts (its memory lost): a new bootId, and the controller connects it again.
    let boot = report(&hosts, &name).await.expect("report").0.boot_id;
    standin.shutdown().await;
    let standin = vdsm(&name, storage.path(), certs.path(), &endpoint).await;
    eventually("a new bootId after VDSM restarted", WAIT, || async {
        let (r, _) = report(&hosts, &name).await?;
        (r.boot_id != boot).then_some(())
    })
    .await;
    let again = eventually("in sync again after the restart", WAIT, || async {
        let r = in_sync().await?;
        r.pool.is_some().then_some(r)
    })
    .await;
    assert_eq!(again.pool.map(|c| c.host_id), Some(assigned));
    bridge.shutdown().await;
    standin.shutdown().await;
}
