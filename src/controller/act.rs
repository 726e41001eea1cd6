//! Act on a plan: record the plan's ledger changes, persist the new map first, then send the
//! planned calls (each with a timeout, each recorded in the ledger). Returns what happened to each
//! call so the report can be built from the plan **and** the outcome. Which hosts are called, and
//! in what order, is the planner's decision; act keeps at most `maxConcurrentConnects` of a pool's
//! calls in flight ([`Waves`]), starting the next as soon as one ends, so a rollout of 2,000 hosts
//! moves at the pace of its calls rather than one reconcile per handful of hosts. The pool
//! manager's call (`spmStart`, `spmStop` or `switchMaster`, at most one per pool) goes apart from the waves.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use kube::{ResourceExt, runtime::reflector::ObjectRef as StoreRef};
use serde::de::IgnoredAny;
use tracing::{debug, info, warn};

use super::{Context, Error};
use crate::{
    api::StoragePool,
    plan::manager::{ManagerCall, ManagerVerb, StorageOp},
    plan::{CallFailure, CallKind, CallOutcome, HostCall, Observed, Plan},
    protocol::{self, client::Target, wire::method},
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
    // The version of the pool this plan was made from: a pool deleted and created again under
    // its name since is another pool, whose status must not be this plan's.
    let mut pool_version = super::observe::current(&ctx.stores.pools, pool, &observed.pool.uid)
        .ok_or_else(|| Error::Replaced {
            kind: "StoragePool",
            name: pool.clone(),
        })?
        .resource_version();
    ctx.ledger.apply(&plan.ledger);
    ctx.ledger
        .retain_hosts(|h| ctx.stores.hosts.get(&StoreRef::new(h)).is_some());
    ctx.managers.retain_pools(|uid| {
        ctx.stores
            .pools
            .state()
            .iter()
            .any(|p| p.metadata.uid.as_deref() == Some(uid))
    });
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
        super::crash::reached("map-persisted", "");
    }

    if (!plan.calls.is_empty() || plan.manager.call.is_some())
        && let Some(fence) = &ctx.fence
        && !fence.holds().await
    {
        return Err(Error::LeadershipLost);
    }
    if plan.manager.confirmed
        && let Some(entry) = &observed.manager
    {
        ctx.managers.confirm(&observed.pool.uid, entry.sent_at);
    }
    if let Some(call) = &plan.manager.call {
        call_manager(ctx, observed, call);
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

/// Sends the planned calls in order as a new wave of the pool ([`Waves`]): each waits for one of
/// the pool's `maxConcurrentConnects` permits (calls still running from earlier reconciles hold
/// theirs), each has the `connectTimeoutSeconds` timeout. Returns the outcomes of the first
/// `maxConcurrentConnects` calls to end, those that end within [`REPORT_WAIT`]; the rest go on,
/// and each asks for a reconcile when it ends.
async fn call_hosts(ctx: &Arc<Context>, observed: &Observed, plan: &Plan) -> Vec<CallOutcome> {
    let sync = &observed.pool.spec.sync;
    let timeout = crate::plan::connect_timeout(sync);
    let cap = usize::try_from(sync.max_concurrent_connects.max(1)).unwrap_or(1);
    // Begun even for no calls: the latest plan is the only queue, so an empty one ends the calls
    // of the previous wave not sent yet.
    let wave = ctx.waves.begin(&observed.pool.name, cap);
    if plan.calls.is_empty() {
        return Vec::new();
    }
    let queue: Vec<(HostCall, String)> = plan
        .calls
        .iter()
        .map(|call| {
            let boot_id = observed
                .hosts
                .get(call.host())
                .and_then(|h| h.report.parsed())
                .map(|r| r.boot_id.clone())
                .unwrap_or_default();
            (call.clone(), boot_id)
        })
        .collect();
    let first = queue.len().min(cap);
    // Every call sent says when it ends (its outcome, or `None` when it was not sent after all);
    // the channel closes when the wave has no call left to send or running.
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(send_wave(ctx.clone(), wave, queue, timeout, ended_tx));

    let mut outcomes = Vec::new();
    let mut counted = 0;
    let deadline = tokio::time::sleep(REPORT_WAIT);
    tokio::pin!(deadline);
    while counted < first {
        tokio::select! {
            next = ended.recv() => match next {
                Some(outcome) => {
                    counted += 1;
                    outcomes.extend(outcome);
                }
                None => return outcomes,
            },
            () = &mut deadline => break,
        }
    }
    let pool = kube::runtime::reflector::ObjectRef::new(&observed.pool.name);
    let requeue = ctx.requeue.clone();
    debug!(pool = %observed.pool.name, "calls continue after the report");
    tokio::spawn(async move {
        // The outcomes are in the ledger; a new reconcile reports each one (the scheduler merges
        // these requests).
        while let Some(outcome) = ended.recv().await {
            if outcome.is_some() {
                let _ = requeue.send(pool.clone());
            }
        }
    });
    outcomes
}

/// Sends `queue`'s calls in order, each as soon as the wave gets a permit for it, until the queue
/// is empty or a newer wave replaced this one (whose plan has the host again if it still needs a
/// call). A call becomes a task only once it has its permit: a rollout to 2,000 hosts holds
/// `maxConcurrentConnects` tasks and a queue of calls, not 2,000 tasks waiting.
async fn send_wave(
    ctx: Arc<Context>,
    wave: Wave,
    queue: Vec<(HostCall, String)>,
    timeout: Duration,
    ended: tokio::sync::mpsc::UnboundedSender<Option<CallOutcome>>,
) {
    for (call, boot_id) in queue {
        let Some(permit) = wave.permit(&ctx.waves).await else {
            return;
        };
        let (ctx, pool, ended) = (ctx.clone(), wave.pool.clone(), ended.clone());
        tokio::spawn(async move {
            let outcome = send_recorded(&ctx, &pool, &call, &boot_id, timeout).await;
            drop(permit);
            let _ = ended.send(outcome);
        });
    }
}

/// One call of a wave: checked against the fence, recorded in the ledger when it starts and when
/// it ends. `None` when it was not sent.
async fn send_recorded(
    ctx: &Context,
    pool: &str,
    call: &HostCall,
    boot_id: &str,
    timeout: Duration,
) -> Option<CallOutcome> {
    // The wave may go on long after the reconcile checked the fence: each call checks it again,
    // so a replica that lost the Lease stops calling within `FENCE_FRESH`.
    if let Some(fence) = &ctx.fence
        && !fence.still_holds().await
    {
        warn!(host = %call.host(), "not the leader any more; call not sent");
        return None;
    }
    let sent_at = ctx
        .ledger
        .start(pool, call, boot_id, timeout, jiff::Timestamp::now())?;
    super::crash::reached("calling", verb_name(call.kind()));
    let outcome = send(ctx, call, timeout).await;
    super::crash::reached("called", verb_name(call.kind()));
    ctx.ledger.finished(&outcome.host, sent_at, &outcome.result);
    Some(outcome)
}

/// Each pool's current wave of calls and the permits that keep at most `maxConcurrentConnects` of
/// its calls in flight. A new plan's calls replace the previous plan's calls not sent yet (which
/// then end without a call): the latest plan is the only queue. Which hosts and in what order is
/// the planner's; this only paces the sending. Lost on restart with nothing else: the next plan
/// has every host that still needs a call.
#[derive(Debug, Default)]
pub struct Waves {
    pools: Mutex<HashMap<String, PoolWaves>>,
}

#[derive(Debug)]
struct PoolWaves {
    current: u64,
    cap: usize,
    permits: Arc<Semaphore>,
}

/// One plan's calls for one pool.
#[derive(Clone, Debug)]
pub struct Wave {
    /// The pool.
    pub pool: String,
    number: u64,
    permits: Arc<Semaphore>,
}

impl Waves {
    /// Starts a new wave for `pool`, allowed `cap` calls in flight. The calls of earlier waves not
    /// sent yet will not be sent. When `cap` changed, the new permits apply to calls started from
    /// now on (calls running under the old ones finish, so for one call timeout the pool may have
    /// up to both caps in flight).
    pub fn begin(&self, pool: &str, cap: usize) -> Wave {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = pools.entry(pool.to_owned()).or_insert_with(|| PoolWaves {
            current: 0,
            cap,
            permits: Arc::new(Semaphore::new(cap)),
        });
        if entry.cap != cap {
            entry.cap = cap;
            entry.permits = Arc::new(Semaphore::new(cap));
        }
        entry.current += 1;
        Wave {
            pool: pool.to_owned(),
            number: entry.current,
            permits: entry.permits.clone(),
        }
    }

    fn is_current(&self, wave: &Wave) -> bool {
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools
            .get(&wave.pool)
            .is_some_and(|p| p.current == wave.number)
    }
}

impl Wave {
    /// Waits for a permit to send one call; `None` when a newer wave replaced this one meanwhile
    /// (its plan has the host again if the host still needs a call).
    pub async fn permit(&self, waves: &Waves) -> Option<OwnedSemaphorePermit> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        waves.is_current(self).then_some(permit)
    }
}

#[tracing::instrument(skip_all, fields(host = %call.host(), verb = ?call.kind()))]
async fn send(ctx: &Context, call: &HostCall, timeout: Duration) -> CallOutcome {
    let rpc = &ctx.settings.rpc;
    // The host's certificate must name this Host.
    fn to<'a>(host: &'a str, endpoint: &'a str) -> Target<'a> {
        Target {
            name: host,
            endpoint,
        }
    }
    let started = std::time::Instant::now();
    let result = match call {
        HostCall::Connect {
            endpoint, params, ..
        } => {
            rpc.connect(to(call.host(), endpoint), &params.into(), timeout)
                .await
        }
        HostCall::Disconnect {
            endpoint, params, ..
        } => {
            let wire = protocol::DisconnectParams {
                storagepool_id: params.pool_uuid.clone(),
                host_id: params.host_id,
                scsi_key: params.pool_uuid.clone(),
            };
            rpc.disconnect(to(call.host(), endpoint), &wire, timeout)
                .await
        }
        HostCall::Refresh {
            endpoint, params, ..
        } => {
            let wire = protocol::wire::RefreshParams {
                storagepool_id: params.uuid.clone(),
                master_sd_uuid: params.master_domain.clone().unwrap_or_default(),
                master_version: params.master_version,
            };
            rpc.call::<_, IgnoredAny>(
                to(call.host(), endpoint),
                method::POOL_REFRESH,
                &wire,
                timeout,
            )
            .await
            .map(|_| ())
        }
    };
    let verb = verb_name(call.kind());
    let outcome = match &result {
        Ok(()) => "ok",
        Err(e) => e.category(),
    };
    ctx.metrics
        .host_call(verb, outcome, started.elapsed().as_secs_f64());
    let result = match result {
        Ok(()) => {
            debug!("host call succeeded");
            Ok(())
        }
        Err(e) => {
            let failure = CallFailure {
                code: e.vdsm_code().map(protocol::ErrorCode::code),
                // The host's text is kept cut: the ledger holds it per host until the next call.
                message: crate::api::bounds::outside(&error_chain(&e)).into_owned(),
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

/// Sends the pool-manager call in the background (one per pool at a time, recorded in the
/// pool's manager ledger) and asks for a reconcile when it ends: its outcome shows in the
/// host's report and in the ledger the next plan reads.
fn call_manager(ctx: &Arc<Context>, observed: &Observed, call: &ManagerCall) {
    let timeout = crate::plan::connect_timeout(&observed.pool.spec.sync);
    let boot_id = observed
        .hosts
        .get(&call.host)
        .and_then(|h| h.report.parsed())
        .map(|r| r.boot_id.clone())
        .unwrap_or_default();
    let (pool, uid) = (observed.pool.name.clone(), observed.pool.uid.clone());
    let (ctx, call) = (ctx.clone(), call.clone());
    tokio::spawn(async move {
        if let Some(fence) = &ctx.fence
            && !fence.still_holds().await
        {
            warn!(host = %call.host, "not the leader any more; pool manager call not sent");
            return;
        }
        let Some(sent_at) =
            ctx.managers
                .start(&uid, &call, &boot_id, timeout, jiff::Timestamp::now())
        else {
            return;
        };
        let result = send_manager(&ctx, &call, timeout).await;
        ctx.managers.finished(&uid, sent_at, &result);
        let _ = ctx.requeue.send(StoreRef::new(&pool));
    });
}

#[tracing::instrument(skip_all, fields(host = %call.host, verb = call.verb.as_str()))]
async fn send_manager(
    ctx: &Context,
    call: &ManagerCall,
    timeout: Duration,
) -> Result<(), CallFailure> {
    let rpc = &ctx.settings.rpc;
    let to = Target {
        name: &call.host,
        endpoint: &call.endpoint,
    };
    let started = std::time::Instant::now();
    let result = match call.verb {
        ManagerVerb::Start => {
            let params = protocol::wire::SpmStartParams {
                storagepool_id: call.pool_uuid.clone(),
                prev_id: i64::from(call.prev_id),
                prev_lver: call.prev_lver,
                enable_scsi_fencing: false,
                max_host_id: call.max_host_id,
                dom_version: None,
            };
            rpc.call::<_, IgnoredAny>(to, method::POOL_SPM_START, &params, timeout)
                .await
        }
        ManagerVerb::Stop => {
            let params = protocol::wire::PoolParams {
                storagepool_id: call.pool_uuid.clone(),
            };
            rpc.call::<_, IgnoredAny>(to, method::POOL_SPM_STOP, &params, timeout)
                .await
        }
        ManagerVerb::SwitchMaster => {
            let Some(switch) = &call.switch else {
                return Err(CallFailure {
                    code: None,
                    message: "switchMaster without a master to switch to".to_owned(),
                });
            };
            let params = protocol::wire::SwitchMasterParams {
                storagepool_id: call.pool_uuid.clone(),
                old_master_uuid: switch.old.clone(),
                new_master_uuid: switch.new.clone(),
                master_version: switch.version,
            };
            rpc.call::<_, IgnoredAny>(to, method::POOL_SWITCH_MASTER, &params, timeout)
                .await
        }
        ManagerVerb::Create
        | ManagerVerb::Attach
        | ManagerVerb::Detach
        | ManagerVerb::ForcedDetach
        | ManagerVerb::Activate
        | ManagerVerb::Deactivate
        | ManagerVerb::Reconstruct => {
            let Some(op) = &call.storage else {
                return Err(CallFailure {
                    code: None,
                    message: "a storage call without its parameters".to_owned(),
                });
            };
            send_storage(rpc, call, op, timeout).await
        }
    };
    let verb = call.verb.as_str();
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.category(),
    };
    ctx.metrics
        .host_call(verb, outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(_) => {
            info!(pool_uuid = %call.pool_uuid, prev_id = call.prev_id, prev_lver = call.prev_lver, "pool manager call accepted");
            Ok(())
        }
        Err(e) => {
            let failure = CallFailure {
                code: e.vdsm_code().map(protocol::ErrorCode::code),
                message: crate::api::bounds::outside(&error_chain(&e)).into_owned(),
            };
            warn!(error = %failure, category = e.category(), "pool manager call failed");
            Err(failure)
        }
    }
}

/// `StoragePool.create`, or `StorageDomain.attach`, `activate`, `deactivate` or `detach`. A create refused
/// with 380 because a domain already lists this very pool is a success: an earlier create of
/// this pool was accepted but not recorded (the controller stopped in between), and VDSM's
/// create is not idempotent.
async fn send_storage(
    rpc: &protocol::Client,
    call: &ManagerCall,
    op: &StorageOp,
    timeout: Duration,
) -> Result<IgnoredAny, protocol::RpcError> {
    let domain = |sd: &str| protocol::wire::DomainParams {
        storagedomain_id: sd.to_owned(),
        storagepool_id: call.pool_uuid.clone(),
        master_sd_uuid: String::new(),
        master_version: 0,
        force: false,
    };
    let first = op.domains.first().map(String::as_str).unwrap_or_default();
    let to = Target {
        name: &call.host,
        endpoint: &call.endpoint,
    };
    match call.verb {
        ManagerVerb::Create => {
            let params = protocol::wire::CreateParams {
                storagepool_id: call.pool_uuid.clone(),
                name: op.name.clone(),
                master_sd_uuid: op.master.clone(),
                master_version: op.master_version,
                domain_list: op.domains.clone(),
            };
            match rpc
                .call::<_, IgnoredAny>(to, method::POOL_CREATE, &params, timeout)
                .await
            {
                Err(e)
                    if e.vdsm_code() == Some(protocol::ErrorCode::StorageDomainAlreadyAttached)
                        && e.to_string().contains(&call.pool_uuid) =>
                {
                    info!(error = %e, "the pool already exists on storage");
                    Ok(IgnoredAny)
                }
                other => other,
            }
        }
        ManagerVerb::Attach => {
            rpc.call::<_, IgnoredAny>(to, method::DOMAIN_ATTACH, &domain(first), timeout)
                .await
        }
        ManagerVerb::ForcedDetach => {
            let params = protocol::wire::DomainParams {
                storagepool_id: crate::agent::metadata::BLANK_UUID.to_owned(),
                force: true,
                ..domain(first)
            };
            rpc.call::<_, IgnoredAny>(to, method::DOMAIN_DETACH, &params, timeout)
                .await
        }
        ManagerVerb::Reconstruct => {
            let (host_id, map) = op.reconstruct.clone().unwrap_or_default();
            let params = protocol::wire::ReconstructMasterParams {
                storagepool_id: call.pool_uuid.clone(),
                host_id,
                name: op.name.clone(),
                master_sd_uuid: op.master.clone(),
                master_version: op.master_version,
                domain_dict: map,
            };
            rpc.call::<_, IgnoredAny>(to, method::POOL_RECONSTRUCT_MASTER, &params, timeout)
                .await
        }
        ManagerVerb::Activate => {
            rpc.call::<_, IgnoredAny>(to, method::DOMAIN_ACTIVATE, &domain(first), timeout)
                .await
        }
        verb => {
            let master = if op.master.is_empty() {
                crate::agent::metadata::BLANK_UUID.to_owned()
            } else {
                op.master.clone()
            };
            let params = protocol::wire::DomainParams {
                master_sd_uuid: master,
                master_version: op.master_version,
                ..domain(first)
            };
            let method = if verb == ManagerVerb::Deactivate {
                method::DOMAIN_DEACTIVATE
            } else {
                method::DOMAIN_DETACH
            };
            rpc.call::<_, IgnoredAny>(to, method, &params, timeout)
                .await
        }
    }
}

/// The verb's name in metric labels and crash points.
fn verb_name(kind: CallKind) -> &'static str {
    match kind {
        CallKind::Connect => "connect",
        CallKind::Disconnect => "disconnect",
        CallKind::Refresh => "refresh",
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

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::api::PoolConnection;
    use crate::controller::ledger::Ledger;

    #[tokio::test]
    async fn a_pool_never_has_more_calls_in_flight_than_its_cap() {
        let waves = Waves::default();
        let wave = waves.begin("dc1", 2);
        let first = wave.permit(&waves).await.expect("permit");
        let _second = wave.permit(&waves).await.expect("permit");
        assert!(
            wave.permit(&waves).now_or_never().is_none(),
            "a third call waits"
        );
        // A later plan of the same pool shares the permits: calls still running hold theirs.
        let next = waves.begin("dc1", 2);
        assert!(next.permit(&waves).now_or_never().is_none());
        drop(first);
        assert!(next.permit(&waves).now_or_never().flatten().is_some());
        // Another pool has its own.
        let other = waves.begin("dc2", 1);
        assert!(other.permit(&waves).now_or_never().flatten().is_some());
    }

    #[tokio::test]
    async fn a_new_plan_replaces_the_calls_of_the_last_one_not_sent_yet() {
        let waves = Arc::new(Waves::default());
        let old = waves.begin("dc1", 1);
        let held = old.permit(&waves).await.expect("permit");
        // The old plan's second call waits for the permit...
        let queued = tokio::spawn({
            let (old, waves) = (old.clone(), waves.clone());
            async move { old.permit(&waves).await.is_some() }
        });
        tokio::task::yield_now().await;
        // ... when a newer plan begins; then the permit frees.
        let new = waves.begin("dc1", 1);
        drop(held);
        assert!(
            !queued.await.expect("task"),
            "the replaced plan's call is not sent"
        );
        assert!(new.permit(&waves).await.is_some());
    }

    #[test]
    fn a_host_never_has_two_calls_in_flight() {
        let ledger = Ledger::default();
        let call = HostCall::Connect {
            host: "h1".into(),
            endpoint: "h1:54321".into(),
            params: PoolConnection::default(),
        };
        let now = jiff::Timestamp::UNIX_EPOCH;
        let timeout = Duration::from_secs(30);
        let sent = ledger.start("dc1", &call, "boot", timeout, now);
        assert!(sent.is_some());
        assert_eq!(ledger.start("dc1", &call, "boot", timeout, now), None);
        ledger.finished("h1", sent.expect("sent"), &Ok(()));
        assert!(ledger.start("dc1", &call, "boot", timeout, now).is_some());
    }
}
