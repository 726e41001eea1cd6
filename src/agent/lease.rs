//! The heartbeat: one `coordination.k8s.io/v1` Lease per host (name = host name, holder = host
//! name) in the agent's namespace, renewed every few seconds, like kubelet's node leases.
//!
//! One renewer serves every host of the process and spreads the renewals evenly over the renew
//! interval, so 2,000 simulated hosts cost a steady trickle of small patches, not bursts (only the
//! first round, which creates the Leases, goes out at once). A
//! failed renewal is retried at the host's next turn; a cut-off (blackholed) host renews nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use super::host::HostAgent;
use super::report::FIELD_MANAGER;

/// Concurrent lease writes in flight.
const MAX_IN_FLIGHT: usize = 32;

/// Lease settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The namespace of the Leases (it must exist).
    pub namespace: String,
    /// `leaseDurationSeconds`: how long a Lease counts without renewal.
    pub duration: Duration,
    /// How often each host renews.
    pub renew_every: Duration,
}

/// kube-node-lease's cadence: a 40 s Lease renewed every 10 s, one write per renewal, so idle
/// hosts cost the API server 0.1 writes per second each.
impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            namespace: "poolkeeper-system".to_owned(),
            duration: Duration::from_secs(40),
            renew_every: Duration::from_secs(10),
        }
    }
}

/// Renews the Leases of `hosts` until `shutdown` turns true.
pub async fn run_renewer(
    client: kube::Client,
    hosts: Arc<[Arc<HostAgent>]>,
    config: LeaseConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let n = hosts.len().max(1);
    // Each tick renews a slice of the hosts so every host renews once per interval.
    let tick =
        (config.renew_every / u32::try_from(n).unwrap_or(u32::MAX)).max(Duration::from_millis(20));
    let per_tick = n
        .saturating_mul(usize::try_from(tick.as_micros()).unwrap_or(usize::MAX))
        .div_ceil(usize::try_from(config.renew_every.as_micros().max(1)).unwrap_or(usize::MAX))
        .max(1);
    let duration_seconds = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let busy: Arc<[AtomicBool]> = hosts.iter().map(|_| AtomicBool::new(false)).collect();
    let failing: Arc<[AtomicBool]> = hosts.iter().map(|_| AtomicBool::new(false)).collect();
    // Whether this process has seen the host's Lease exist: until then a renewal starts with a
    // create (a fresh host's first renewal is one request, not a failed patch and a create).
    let exists: Arc<[AtomicBool]> = hosts.iter().map(|_| AtomicBool::new(false)).collect();
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor = 0usize;
    // The first round renews every host at once: a host counts as not responding until its
    // first Lease exists, so spreading that one would make hosts come up one by one (and the
    // controller report each of them). Later rounds are spread.
    let mut batch = n;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
                continue;
            }
        }
        for _ in 0..std::mem::replace(&mut batch, per_tick.min(n)) {
            let i = cursor % n;
            cursor = cursor.wrapping_add(1);
            let Some(host) = hosts.get(i) else { continue };
            let Some(flag) = busy.get(i) else { continue };
            // A renewal still in flight (slow API server) is not doubled.
            if host.is_blackholed() || flag.swap(true, Ordering::AcqRel) {
                continue;
            }
            let (api, host, busy, failing, exists, permits) = (
                api.clone(),
                Arc::clone(host),
                Arc::clone(&busy),
                Arc::clone(&failing),
                Arc::clone(&exists),
                Arc::clone(&permits),
            );
            tokio::spawn(async move {
                if let Ok(_permit) = permits.acquire().await {
                    let known = exists.get(i).is_some_and(|e| e.load(Ordering::Acquire));
                    let result = renew(&api, host.name(), duration_seconds, known).await;
                    if let (Ok(()), Some(e)) = (&result, exists.get(i)) {
                        e.store(true, Ordering::Release);
                    }
                    // Log transitions only: an API server outage must not flood the log with
                    // one line per host per interval.
                    let was_failing = failing
                        .get(i)
                        .is_some_and(|f| f.swap(result.is_err(), Ordering::AcqRel));
                    match result {
                        Err(e) if !was_failing => {
                            tracing::warn!(host = %host.name(), error = %e, "lease renewal failed; retrying every interval");
                        }
                        Ok(()) if was_failing => {
                            tracing::info!(host = %host.name(), "lease renewed again");
                        }
                        _ => {}
                    }
                }
                if let Some(flag) = busy.get(i) {
                    flag.store(false, Ordering::Release);
                }
            });
        }
    }
}

/// Renews the Lease of host `name`, creating it when missing. With `known` (the Lease existed at
/// the last renewal) it patches first and creates on 404; otherwise it creates first and patches
/// when the Lease already exists. Either way a renewal is one request in the common case.
///
/// # Errors
/// The API server's error.
pub async fn renew(
    api: &Api<Lease>,
    name: &str,
    duration_seconds: i32,
    known: bool,
) -> Result<(), kube::Error> {
    let now = MicroTime(Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(name.to_owned()),
        lease_duration_seconds: Some(duration_seconds),
        renew_time: Some(now.clone()),
        ..LeaseSpec::default()
    };
    let patch = async || {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        api.patch(name, &pp, &Patch::Merge(&json!({ "spec": &spec })))
            .await
            .map(drop)
    };
    let create = async || {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                acquire_time: Some(now.clone()),
                ..spec.clone()
            }),
        };
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        api.create(&pp, &lease).await.map(drop)
    };
    if known {
        match patch().await {
            Err(kube::Error::Api(s)) if s.is_not_found() => match create().await {
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
                other => other,
            },
            other => other,
        }
    } else {
        match create().await {
            Err(kube::Error::Api(s)) if s.is_already_exists() => patch().await,
            other => other,
        }
    }
}
