//! Act on a plan: persist the new map first, then call hosts (bounded concurrency, a timeout per
//! call, per-host backoff), then apply finalizer changes. Returns what happened to each call so the
//! report can be built from the plan **and** the outcome.

use std::time::Duration;

use futures::{StreamExt, stream};
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

/// Persists, calls and updates finalizers; returns each call's outcome.
///
/// # Errors
/// When the map cannot be persisted (then no host is called) or a finalizer cannot be changed.
pub async fn act(
    ctx: &Context,
    observed: &Observed,
    plan: &Plan,
) -> Result<Vec<CallOutcome>, Error> {
    let pool = &observed.pool.name;
    if let Some(status) = &plan.persist_first {
        write_pool_status(ctx, pool, status)
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

    let timeout = Duration::from_secs(
        u64::try_from(observed.pool.spec.sync.connect_timeout_seconds.max(1)).unwrap_or(30),
    );
    let concurrency =
        usize::try_from(observed.pool.spec.sync.max_concurrent_connects.max(1)).unwrap_or(1);
    let calls: Vec<_> = plan
        .calls
        .iter()
        .map(|call| send(ctx, call, timeout))
        .collect();
    let outcomes: Vec<CallOutcome> = stream::iter(calls)
        .buffer_unordered(concurrency)
        .collect()
        .await;

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

    for change in &plan.finalizers {
        apply_finalizer(ctx, change).await?;
    }
    Ok(outcomes)
}

/// Server-side applies a pool's whole status with the controller's field manager.
pub(crate) async fn write_pool_status(
    ctx: &Context,
    pool: &str,
    status: &StoragePoolStatus,
) -> Result<(), kube::Error> {
    let api: Api<StoragePool> = Api::all(ctx.client.clone());
    let body = json!({
        "apiVersion": "poolkeeper.io/v1alpha1",
        "kind": "StoragePool",
        "status": status,
    });
    api.patch_status(
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
    Ok(())
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
