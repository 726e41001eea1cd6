//! Act on a plan: record the plan's ledger changes, persist the new map first, then send the
//! planned calls (each with a timeout, each recorded in the ledger). Returns what happened to each
//! call so the report can be built from the plan **and** the outcome. Which hosts are called, and
//! when, is the planner's decision.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{ResourceExt, runtime::reflector::ObjectRef as StoreRef};
use tracing::{debug, info, warn};

use super::{Context, Error};
use crate::{
    api::StoragePool,
    metrics::CallLabels,
    plan::{CallFailure, CallKind, CallOutcome, HostCall, Observed, Plan},
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

/// Records the plan's ledger changes, persists the map, then calls hosts; returns each call's
/// outcome.
///
/// # Errors
/// When the map cannot be persisted (then no host is called), or this replica lost the leader
/// Lease.
pub async fn act(ctx: &Arc<Context>, observed: &Observed, plan: &Plan) -> Result<Acted, Error> {
    let pool = &observed.pool.name;
    let mut pool_version = ctx
        .stores
        .pools
        .get(&StoreRef::new(pool))
        .and_then(|p| p.resource_version());
    ctx.ledger.apply(&plan.ledger);
    ctx.ledger
        .retain_hosts(|h| ctx.stores.hosts.get(&StoreRef::new(h)).is_some());
    if let Some(status) = &plan.persist_first {
        // The resourceVersion makes this a compare-and-swap: a reconcile planned on a cache that
        // has not seen the previous map write fails here (409) and retries, instead of reusing a
        // mapVersion or handing out a host id twice.
        pool_version = ctx
            .writer
            .status::<StoragePool>(pool, status, pool_version.as_deref())
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
    Ok(Acted {
        outcomes,
        pool_version,
    })
}

/// How long a reconcile waits for its calls before it reports. Calls still running then go on in
/// the background (the ledger shows them in flight, so no second call is planned) and ask for
/// another reconcile when they finish: one host that hangs until `connectTimeoutSeconds` does not
/// hold back the status of every other host and domain.
const REPORT_WAIT: Duration = Duration::from_secs(2);

/// Starts every planned call (the planner already kept the pool within `maxConcurrentConnects`,
/// counting calls still in flight), each with the `connectTimeoutSeconds` timeout, and returns the
/// outcomes of those that finish within [`REPORT_WAIT`].
async fn call_hosts(ctx: &Arc<Context>, observed: &Observed, plan: &Plan) -> Vec<CallOutcome> {
    let timeout = crate::plan::connect_timeout(&observed.pool.spec.sync);
    let mut running = futures::stream::FuturesUnordered::new();
    for call in &plan.calls {
        let boot_id = observed
            .hosts
            .get(call.host())
            .and_then(|h| h.report.parsed())
            .map(|r| r.boot_id.as_str())
            .unwrap_or_default();
        let sent_at = ctx.ledger.started(&observed.pool.name, call, boot_id);
        let (ctx, call) = (ctx.clone(), call.clone());
        running.push(tokio::spawn(async move {
            let outcome = send(&ctx, &call, timeout).await;
            ctx.ledger.finished(&outcome.host, sent_at, &outcome.result);
            outcome
        }));
    }
    let mut outcomes = Vec::new();
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
        // The outcomes are in the ledger; a new reconcile reports each one and, since the call no
        // longer counts against the cap, sends the next (the scheduler merges these requests).
        while running.next().await.is_some() {
            let _ = requeue.send(pool.clone());
        }
    });
    outcomes
}

#[tracing::instrument(skip_all, fields(host = %call.host(), verb = ?call.kind()))]
async fn send(ctx: &Context, call: &HostCall, timeout: Duration) -> CallOutcome {
    let rpc = &ctx.settings.rpc;
    let result = match call {
        HostCall::Connect {
            endpoint, params, ..
        } => rpc.connect(endpoint, &params.into(), timeout).await,
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
            Ok(())
        }
        Err(e) => {
            let failure = CallFailure {
                code: e.vdsm_code().map(protocol::ErrorCode::code),
                message: error_chain(&e),
            };
            warn!(error = %failure, category = e.category(), "host call failed");
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
