//! Two controller replicas against a real API server, both running as the deployed
//! ServiceAccount: only the holder of the `poolkeeper-controller` Lease reconciles, the standby
//! reports ready (so rolling updates proceed), and when the leader stops the standby takes over
//! at once: the Lease is released, not left to expire.

mod support;

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::PostParams};
use poolkeeper::api::StoragePool;
use support::{
    client,
    cluster::{LEASE_NAMESPACE, ensure_namespace, obj, replica_with_lease},
    eventually, unique,
};

const WAIT: Duration = Duration::from_secs(60);

/// A Lease that outlasts every wait of this test: a standby that took over only on expiry would
/// fail it.
const LONG_LEASE: (u64, u64) = (600, 10);

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// Reconciles counted by the replica's own metrics.
async fn reconciles(addr: SocketAddr) -> u64 {
    let (_, body) = get(addr, "/metrics").await.unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("controller_runtime_reconcile_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn create_pool() -> String {
    let name = unique("elected");
    let pool: StoragePool =
        serde_json::from_value(obj("StoragePool", &name, serde_json::json!({}))).expect("pool");
    Api::<StoragePool>::all(client().await)
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool");
    name
}

async fn wait_reconciled(name: &str) {
    let api: Api<StoragePool> = Api::all(client().await);
    eventually(&format!("pool {name} reconciled"), WAIT, || {
        let api = api.clone();
        async move {
            let p = api.get(name).await.ok()?;
            (p.status?.observed_generation == p.metadata.generation).then_some(())
        }
    })
    .await;
}

async fn holder() -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client().await, LEASE_NAMESPACE);
    leases
        .get_opt("poolkeeper-controller")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_the_standby_takes_over() {
    ensure_namespace().await;
    let mut a = replica_with_lease(LONG_LEASE.0, LONG_LEASE.1).await;
    let first = eventually("a leader", WAIT, || async { holder().await }).await;
    let mut b = replica_with_lease(LONG_LEASE.0, LONG_LEASE.1).await;

    let pool = create_pool().await;
    wait_reconciled(&pool).await;
    let (ra, rb) = (reconciles(a.addr).await, reconciles(b.addr).await);
    let (leader, standby) = if ra > 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(
        (ra > 0) ^ (rb > 0),
        "exactly one replica reconciles: a={ra} b={rb}"
    );
    let ready = eventually("standby serves /readyz", WAIT, || async {
        get(standby.addr, "/readyz")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await;
    assert_eq!(ready.1, "standby");

    // The leader stops (as on a rolling update): it releases the Lease, and the standby takes it
    // at once (well within WAIT), not when the 600 s Lease would have expired.
    let _ = leader.stop.take().expect("stop").send(());
    eventually("the leader stopped", WAIT, || async {
        leader.done.is_finished().then_some(())
    })
    .await;
    let second = eventually("a new holder", WAIT, || {
        let first = first.clone();
        async move { holder().await.filter(|h| *h != first) }
    })
    .await;
    assert_ne!(first, second);
    let later = create_pool().await;
    wait_reconciled(&later).await;
    assert!(
        reconciles(standby.addr).await > 0,
        "the former standby reconciles now"
    );
    let _ = standby.stop.take().expect("stop").send(());
}
