//! Act on a plan: persist the new map first, then call hosts (bounded concurrency, a timeout per
//! call, per-host backoff), then apply finalizer changes. Returns what happened to each call so the
//! report can be built from the plan **and** the outcome.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::reflector::ObjectRef as StoreRef,
};
use serde_json::json;
use tracing::{debug, info, warn};

use super::{Context, Error, FIELD_MANAGER};
use crate::{
    api::{StorageDomain, StoragePool, StoragePoolStatus},
    metrics::CallLabels,
    plan::{
        CallFailure, CallKind, CallOutcome, FinalizerAction, FinalizerChange, HostCall, ObjectKind,
        Observed, Plan, SyncFailure,
    },
    protocol,
};

/// What act did: each call's outcome, and the pool's resourceVersion after persisting the map.
#[derive(Debug)]
pub struct Acted {
    /// The outcome of each call that finished in time.
    pub outcomes: Vec<CallOutcome>,
    /// The resourceVersion the next pool status write must be based on.
    pub pool_version: Option<String>,
}

/// Persists the map, then calls hosts; returns each call's outcome. Finalizers are applied by
/// [`apply_finalizers`] after the report (removing the pool's last finalizer deletes it).
///
/// # Errors
/// When the map cannot be persisted (then no host is called).
pub async fn act(ctx: &Arc<Context>, observed: &Observed, plan: &Plan) -> Result<Acted, Error> {
    let pool = &observed.pool.name;
    let mut pool_version = ctx
        .stores
        .pools
        .get(&StoreRef::new(pool))
        .and_then(|p| p.resource_version());
    for (host, verdict) in &plan.hosts {
        if verdict.in_sync {
            ctx.host_confirmed(host);
        }
    }
    if let Some(status) = &plan.persist_first {
        // The resourceVersion makes this a compare-and-swap: a reconcile planned on a cache that
        // has not seen the previous map write fails here (409) and retries, instead of reusing a
        // mapVersion or handing out a host id twice.
        pool_version = write_pool_status(ctx, pool, status, pool_version.as_deref())
            .await
            .map_err(|source| Error::PersistMap {
                pool: pool.clone(),
                source,
            })?;
        info!(
            pool = %pool,
            map_version = status.map_version,
            master_version = status.master_version,
            domains = status.domain_map.len(),
            "persisted pool map"
        );
    }

    if !plan.calls.is_empty()
        && let Some(fence) = &ctx.fence
        && !fence.holds().await
    {
        return Err(Error::LeadershipLost);
    }
    let outcomes = call_hosts(ctx, observed, plan).await;

    // A host that accepts connects but never reports the map would otherwise be called on every
    // reconcile: back it off as if the call had failed.
    for outcome in &outcomes {
        let unconfirmed = plan
            .hosts
            .get(&outcome.host)
            .is_some_and(|v| v.failure == Some(SyncFailure::NotConfirmed));
        if outcome.kind == CallKind::Connect && outcome.result.is_ok() && unconfirmed {
            ctx.call_failed(
                &outcome.host,
                "accepted the map but did not report it".to_owned(),
                jiff::Timestamp::now(),
            );
        }
    }

    Ok(Acted {
        outcomes,
        pool_version,
    })
}

/// Applies the plan's finalizer changes.
///
/// # Errors
/// When a finalizer cannot be changed.
pub async fn apply_finalizers(ctx: &Context, plan: &Plan) -> Result<(), Error> {
    for change in &plan.finalizers {
        apply_finalizer(ctx, change).await?;
    }
    Ok(())
}

/// Server-side applies a pool's whole status with the controller's field manager, based on
/// `version` when given (a 409 if the pool changed since); returns the new resourceVersion.
pub(crate) async fn write_pool_status(
    ctx: &Context,
    pool: &str,
    status: &StoragePoolStatus,
    version: Option<&str>,
) -> Result<Option<String>, kube::Error> {
    let api: Api<StoragePool> = Api::all(ctx.client.clone());
    let mut body = json!({
        "apiVersion": "poolkeeper.io/v1alpha1",
        "kind": "StoragePool",
        "status": status,
    });
    if let Some(version) = version {
        body["metadata"] = json!({"resourceVersion": version});
    }
    let written = api
        .patch_status(
            pool,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    ctx.metrics
        .status_writes
        .get_or_create(&crate::metrics::WriteLabels {
            kind: "StoragePool",
        })
        .inc();
    Ok(written.resource_version())
}

/// How long a reconcile waits for its calls before it reports. Calls still running then go on in
/// the background (their host is marked in flight, so no second call is sent) and ask for another
/// reconcile when they finish: one host that hangs until `connectTimeoutSeconds` does not hold
/// back the status of every other host and domain.
const REPORT_WAIT: Duration = Duration::from_secs(2);

/// Starts every planned call (bounded per pool by `maxConcurrentConnects`, each with the
/// `connectTimeoutSeconds` timeout) and returns the outcomes of those that finish within
/// [`REPORT_WAIT`].
async fn call_hosts(ctx: &Arc<Context>, observed: &Observed, plan: &Plan) -> Vec<CallOutcome> {
    let sync = &observed.pool.spec.sync;
    let timeout =
        Duration::from_secs(u64::try_from(sync.connect_timeout_seconds.max(1)).unwrap_or(30));
    let limit = usize::try_from(sync.max_concurrent_connects.max(1)).unwrap_or(1);
    let slots = ctx.call_slots(&observed.pool.name, limit);
    // The planner must not pick a host again while its call waits for a slot or runs.
    let until = jiff::Timestamp::now()
        .checked_add(
            jiff::SignedDuration::try_from(timeout * 2 + REPORT_WAIT)
                .unwrap_or(jiff::SignedDuration::MAX),
        )
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let now = jiff::Timestamp::now();
    // A host that accepted a call is given `connectTimeoutSeconds` to report it before the same
    // call goes out again (while its report is on its way, it still looks out of sync).
    let confirm_by = now
        .checked_add(jiff::SignedDuration::try_from(timeout).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(now);
    let mut running = futures::stream::FuturesUnordered::new();
    let mut outcomes = Vec::new();
    for call in &plan.calls {
        // Keyed by the host's bootId too: a host that restarted since must be told again at once.
        let boot_id = observed
            .hosts
            .get(call.host())
            .and_then(|h| h.report.parsed())
            .map(|r| r.boot_id.clone())
            .unwrap_or_default();
        let key = (call.clone(), boot_id);
        if ctx.recently_told(call.host(), &key, now) {
            // The host accepted exactly this call moments ago: report it as accepted.
            debug!(host = %call.host(), "call accepted recently; waiting for the host's report");
            outcomes.push(CallOutcome {
                host: call.host().to_owned(),
                kind: call.kind(),
                result: Ok(()),
            });
            continue;
        }
        ctx.call_started(call.host(), until);
        let (ctx, slots) = (ctx.clone(), slots.clone());
        running.push(tokio::spawn(async move {
            // The semaphore is never closed, so acquiring fails only at shutdown.
            let _permit = slots.acquire_owned().await.ok();
            // Waiting for a slot may take long: the call is in flight from now on.
            let now = jiff::Timestamp::now();
            let until = now
                .checked_add(
                    jiff::SignedDuration::try_from(timeout * 2)
                        .unwrap_or(jiff::SignedDuration::MAX),
                )
                .unwrap_or(now);
            ctx.call_started(key.0.host(), until);
            let outcome = send(&ctx, &key.0, timeout).await;
            if outcome.result.is_ok() {
                ctx.told(key.0.host(), &key, confirm_by);
            }
            outcome
        }));
    }
    let deadline = tokio::time::sleep(REPORT_WAIT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = running.next() => match next {
                Some(Ok(outcome)) => outcomes.push(outcome),
                Some(Err(e)) => warn!(error = %e, "host call task failed"),
                None => return outcomes,
            },
            () = &mut deadline => break,
        }
    }
    let pending = running.len();
    let pool = kube::runtime::reflector::ObjectRef::new(&observed.pool.name);
    let requeue = ctx.requeue.clone();
    debug!(pool = %observed.pool.name, pending, "calls continue after the report");
    tokio::spawn(async move {
        while running.next().await.is_some() {}
        // The outcomes are in the backoff table; a new reconcile reports them.
        let _ = requeue.send(pool);
    });
    outcomes
}

#[tracing::instrument(skip_all, fields(host = %call.host(), verb = ?call.kind()))]
async fn send(ctx: &Context, call: &HostCall, timeout: Duration) -> CallOutcome {
    let rpc = &ctx.settings.rpc;
    let result = match call {
        HostCall::Connect {
            endpoint, params, ..
        } => {
            let wire = protocol::ConnectParams {
                storagepool_id: params.pool_uuid.clone(),
                host_id: params.host_id,
                scsi_key: params.pool_uuid.clone(),
                master_sd_uuid: params.master_domain.clone(),
                master_version: params.master_version,
                domain_dict: Some(params.domain_map.clone()),
            };
            rpc.connect(endpoint, &wire, timeout).await
        }
        HostCall::Disconnect {
            endpoint, params, ..
        } => {
            let wire = protocol::DisconnectParams {
                storagepool_id: params.pool_uuid.clone(),
                host_id: params.host_id,
                scsi_key: params.pool_uuid.clone(),
            };
            rpc.disconnect(endpoint, &wire, timeout).await
        }
    };
    let verb = match call.kind() {
        CallKind::Connect => "connect",
        CallKind::Disconnect => "disconnect",
    };
    let outcome = match &result {
        Ok(()) => "ok",
        Err(e) => e.category(),
    };
    ctx.metrics
        .host_calls
        .get_or_create(&CallLabels { verb, outcome })
        .inc();
    let result = match result {
        Ok(()) => {
            debug!("host call succeeded");
            ctx.call_succeeded(call.host());
            Ok(())
        }
        Err(e) => {
            let failure = CallFailure {
                code: e.vdsm_code().map(protocol::ErrorCode::code),
                message: error_chain(&e),
            };
            warn!(error = %failure, category = e.category(), "host call failed");
            ctx.call_failed(call.host(), failure.to_string(), jiff::Timestamp::now());
            Err(failure)
        }
    };
    CallOutcome {
        host: call.host().to_owned(),
        kind: call.kind(),
        result,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

pub(crate) async fn apply_finalizer(ctx: &Context, change: &FinalizerChange) -> Result<(), Error> {
    let name = change.object.name.as_str();
    let (current, rv, kind) = match change.object.kind {
        ObjectKind::StorageDomain => match ctx.stores.domains.get(&StoreRef::new(name)) {
            Some(d) => (
                d.finalizers().to_vec(),
                d.resource_version(),
                "StorageDomain",
            ),
            None => return Ok(()),
        },
        ObjectKind::StoragePool => match ctx.stores.pools.get(&StoreRef::new(name)) {
            Some(p) => (p.finalizers().to_vec(), p.resource_version(), "StoragePool"),
            None => return Ok(()),
        },
        ObjectKind::Host => return Ok(()),
    };
    let mut wanted = current.clone();
    match change.action {
        FinalizerAction::Add if !wanted.iter().any(|f| f == change.finalizer) => {
            wanted.push(change.finalizer.to_owned());
        }
        FinalizerAction::Remove => wanted.retain(|f| f != change.finalizer),
        FinalizerAction::Add => {}
    }
    if wanted == current {
        return Ok(());
    }
    // The resourceVersion makes this a compare-and-swap: finalizers others added are never lost.
    let patch = json!({"metadata": {"finalizers": wanted, "resourceVersion": rv}});
    let params = PatchParams::default();
    let result = match change.object.kind {
        ObjectKind::StorageDomain => Api::<StorageDomain>::all(ctx.client.clone())
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(drop),
        _ => Api::<StoragePool>::all(ctx.client.clone())
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(drop),
    };
    result.map_err(|source| Error::Finalizer {
        kind,
        name: name.to_owned(),
        source,
    })?;
    info!(kind, name, finalizer = change.finalizer, action = ?change.action, "finalizer updated");
    Ok(())
}
