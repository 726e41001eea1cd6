//! The leader gauge (`leader_election_master_status`, client-go's name) of two elected replicas
//! against a real API server: 1 on the replica that holds the `poolkeeper-controller` Lease, 0 on
//! the standby; and a leader asked to stop right after it acquired the Lease (before its caches
//! synced, where kube-runtime's runner used to wait forever) stops, and the standby takes over.

mod support;

use std::{net::SocketAddr, time::Duration};

use support::{
    cluster::{Replica, ensure_namespace, replica},
    eventually,
};

const WAIT: Duration = Duration::from_secs(60);

/// The replica's leader gauge, once its metrics answer.
async fn leading(addr: SocketAddr) -> Option<f64> {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find(|l| l.starts_with("leader_election_master_status{name=\"poolkeeper-controller\"}"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

async fn wait_gauge(r: &Replica, want: f64, what: &str) {
    eventually(what, WAIT, || async {
        (leading(r.addr).await == Some(want)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_gauge_is_one_on_the_holder_only() {
    ensure_namespace().await;
    let mut a = replica().await;
    wait_gauge(&a, 1.0, "the first replica leads").await;
    let mut b = replica().await;
    wait_gauge(&b, 0.0, "the second replica stands by").await;
    assert_eq!(leading(a.addr).await, Some(1.0));

    for r in [&mut a, &mut b] {
        let _ = r.stop.take().expect("stop").send(());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_over_and_the_gauge_follows() {
    ensure_namespace().await;
    let mut a = replica().await;
    wait_gauge(&a, 1.0, "the first replica leads").await;
    let mut b = replica().await;
    wait_gauge(&b, 0.0, "the second replica stands by").await;

    let _ = a.stop.take().expect("stop").send(());
    let stopped = tokio::time::timeout(WAIT, &mut a.done).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "the leader stops cleanly: {stopped:?}"
    );
    wait_gauge(&b, 1.0, "the standby takes over").await;
    let _ = b.stop.take().expect("stop").send(());
}
