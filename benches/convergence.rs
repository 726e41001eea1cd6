//! Convergence at scale, end to end: a real kube-apiserver and etcd, the real controller and N
//! simulated hosts over real sockets, in one process. For each N it measures how long the N hosts
//! take to register (every Host created with its first report), how long a new pool
//! with 5 domains takes to become Ready (every host holds the map), how long putting one domain
//! in maintenance takes to finish (every host stopped monitoring it), and the controller's status
//! writes for each. Calls go over VDSM's wire with mutual TLS (one pool CA, a certificate per
//! host). Prints a table; asserts nothing (speed is measured here, not in tests).
//!
//! `cargo bench --bench convergence` (needs `make control-plane`); `POOLKEEPER_BENCH_HOSTS=100,500`
//! picks the sizes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use poolkeeper::{
    agent::{self, Hosts, lease::LeaseConfig, monitor::MonitorConfig},
    api::{DomainPhase, Host, StorageDomain, StoragePool},
    controller::{self, Settings},
    pki::PoolCa,
    protocol,
};
use serde_json::json;

mod common;

const NS: &str = "poolkeeper-system";
const DOMAINS: usize = 5;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let sizes: Vec<usize> = std::env::var("POOLKEEPER_BENCH_HOSTS")
        .unwrap_or_else(|_| "50,200,500".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let (_cp, client) = common::control_plane(NS).await;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr");
    // Mutual TLS, as deployed: the controller's certificate and each host's own, from one CA.
    let ca = Arc::new(PoolCa::generate("bench-pool-ca").expect("pool CA"));
    let id = ca.controller().expect("controller certificate");
    let settings = Settings {
        lease_namespace: NS.into(),
        concurrency: 8,
        rpc: protocol::Client::mutual(
            ca.pem().as_bytes(),
            id.cert_pem.as_bytes(),
            id.key_pem.as_bytes(),
            None,
        )
        .expect("rpc"),
        signer: None,
    };
    tokio::spawn(controller::run_with(
        client.clone(),
        settings,
        metrics,
        std::future::pending(),
    ));

    println!();
    println!(
        "| hosts | registered | pool Ready | pool writes | domain writes | host writes | maintenance done | pool writes | domain writes | host writes |"
    );
    println!(
        "|------:|-----------:|-----------:|------------:|--------------:|------------:|-----------------:|------------:|--------------:|------------:|"
    );
    for (run, n) in sizes.into_iter().enumerate() {
        let row = measure(&client, metrics, &ca, run, n).await;
        println!("{row}");
    }
    println!();
    println!(
        "writes: the controller's own status writes (poolkeeper_status_writes_total) during each phase"
    );
    println!();
    println!("| reconcile step | runs | total | mean |");
    println!("|---|---:|---:|---:|");
    for (step, (runs, seconds)) in common::steps(metrics).await {
        let mean = seconds / runs.max(1.0);
        println!(
            "| {step} | {runs} | {seconds:.2} s | {:.1} ms |",
            mean * 1000.0
        );
    }
}

async fn writes(metrics: std::net::SocketAddr) -> [u64; 3] {
    let body = common::metrics_text(metrics).await;
    let mut out = [0; 3];
    for line in body
        .lines()
        .filter(|l| l.starts_with("poolkeeper_status_writes_total{"))
    {
        let v: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let i = if line.contains("StoragePool") {
            0
        } else if line.contains("StorageDomain") {
            1
        } else {
            2
        };
        out[i] += v;
    }
    out
}

async fn measure(
    client: &Client,
    metrics: std::net::SocketAddr,
    ca: &Arc<PoolCa>,
    run: usize,
    n: usize,
) -> String {
    let prefix = format!("b{run}");
    let starting = Instant::now();
    let agents = agent::start(agent::Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        control_listen: None,
        tls: Some(agent::Tls::Issued(Arc::clone(ca))),
        token: None,
        max_frame_bytes: agent::DEFAULT_MAX_FRAME_BYTES,
        monitor: MonitorConfig {
            period: Duration::from_secs(2),
            check_timeout: Duration::from_secs(5),
        },
        hosts: Hosts::Simulated {
            count: n,
            prefix: prefix.clone(),
            storage: None,
        },
        kube: Some((
            client.clone(),
            LeaseConfig {
                namespace: NS.into(),
                duration: Duration::from_secs(40),
                renew_every: Duration::from_secs(10),
            },
        )),
    })
    .await
    .expect("simulated hosts");
    let hosts: Api<Host> = Api::all(client.clone());
    let pool_name = format!("bench-{run}");
    // Hosts join first, so the measured interval is the controller's work, not registration.
    let names: Vec<String> = agents.hosts().iter().map(|h| h.name().to_owned()).collect();
    // Registration: every Host exists with its first report.
    loop {
        let listed = hosts
            .list(&kube::api::ListParams::default())
            .await
            .expect("hosts");
        let reported = listed
            .items
            .iter()
            .filter(|h| {
                h.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .filter(|h| h.status.as_ref().is_some_and(|s| s.report.is_some()))
            .count();
        if reported == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let registered = starting.elapsed();
    for name in &names {
        while hosts.get_opt(name).await.ok().flatten().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        hosts
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"pool": pool_name}})),
            )
            .await
            .expect("join");
    }
    // ... and have their first Lease, so they are responsive from the start.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), NS);
    loop {
        let list = leases.list(&Default::default()).await.expect("leases");
        let ours = list
            .items
            .iter()
            .filter(|l| {
                l.metadata
                    .name
                    .as_deref()
                    .is_some_and(|x| x.starts_with(&format!("{prefix}-")))
            })
            .count();
        if ours == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pools: Api<StoragePool> = Api::all(client.clone());
    let domains: Api<StorageDomain> = Api::all(client.clone());
    let before = writes(metrics).await;
    let started = Instant::now();
    let pool: StoragePool = serde_json::from_value(json!({"apiVersion": "poolkeeper.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": pool_name}, "spec": {"sync": {"maxHosts": 2000}}})).expect("pool");
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("pool");
    let mut domain_names = Vec::new();
    for d in 0..DOMAINS {
        let name = format!("{pool_name}-sd{d}");
        let sd: StorageDomain = serde_json::from_value(json!({"apiVersion": "poolkeeper.io/v1alpha1", "kind": "StorageDomain", "metadata": {"name": name},
            "spec": {"uuid": uuid::Uuid::new_v4().to_string(), "storage": {"path": format!("nfs:/{name}")}, "pool": pool_name}})).expect("domain");
        domains
            .create(&PostParams::default(), &sd)
            .await
            .expect("domain");
        domain_names.push(name);
    }
    loop {
        let p = pools.get(&pool_name).await.expect("pool");
        let s = p.status.unwrap_or_default();
        if s.counts.in_sync as usize == n
            && s.domain_map.len() == DOMAINS
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = started.elapsed();
    // The reconcile that makes the pool Ready writes the hosts' phases after the pool's status:
    // let those land so they are not counted as the next phase's writes.
    let selector = kube::api::ListParams::default().fields(&format!("spec.pool={pool_name}"));
    loop {
        let list = hosts.list(&selector).await.expect("hosts");
        let up = list
            .items
            .iter()
            .filter(|h| {
                h.status.as_ref().and_then(|s| s.phase) == Some(poolkeeper::api::HostPhase::Up)
            })
            .count();
        if up == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_ready = writes(metrics).await;

    let target = &domain_names[DOMAINS - 1];
    let started = Instant::now();
    domains
        .patch(
            target,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maintenance": true}})),
        )
        .await
        .expect("maintenance");
    loop {
        let d = domains.get(target).await.expect("domain");
        if d.status.and_then(|s| s.phase) == Some(DomainPhase::Maintenance) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let maintenance = started.elapsed();
    let after_maintenance = writes(metrics).await;
    agents.shutdown().await;
    format!(
        "| {n} | {:.1} s | {:.1} s | {} | {} | {} | {:.1} s | {} | {} | {} |",
        registered.as_secs_f64(),
        ready.as_secs_f64(),
        after_ready[0] - before[0],
        after_ready[1] - before[1],
        after_ready[2] - before[2],
        maintenance.as_secs_f64(),
        after_maintenance[0] - after_ready[0],
        after_maintenance[1] - after_ready[1],
        after_maintenance[2] - after_ready[2],
    )
}
