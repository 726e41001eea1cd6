//! The pure planner: from an [`Observed`] pool to the map, RPCs and statuses to write. No I/O, no
//! clock (`now` is passed in), no client, no tokio: the controller shell narrows its caches into an
//! [`Observed`], calls [`plan`], acts on the [`Plan`] (ledger changes, then persist first, then
//! RPCs), and hands the outcomes to [`report`], whose statuses it writes only when they differ
//! ([`needs_write`]).
//!
//! # Where state lives
//! Everything that must survive a controller restart is read back from the objects' statuses:
//! the problem grace period is the `lastTransitionTime` of the domain's `Problem` condition; a host
//! blamed for a domain keeps `Operational=False` (reason `StorageDomainUnreachable`) until its reports
//! are clean; the start of the current rollout is the `lastTransitionTime` of the pool's
//! `Reconciling` condition (forced to `now` whenever the map or master changes). The only in-memory
//! input is the shell's call ledger ([`Observed::ledger`]: what was sent to which host, when, with
//! what outcome); the planner decides from it whether a host is called, waits for a call it
//! accepted, or backs off ([`ledger`]), and tells the shell what to record ([`Plan::ledger`]).
//! Losing it costs at most one repeated call per host, and a failing host starts its backoff again.
//! Lease observation times ([`LeaseView::observed`]) are a cache of the shell too, rebuilt on
//! start by counting every Lease as found then ([`Observation::Found`]).
//!
//! # Write budget
//! A healthy rollout of a map change to N hosts must cost O(1) controller writes per pool and changed
//! domain. Three choices make that hold:
//! - **Host statuses do not move while a host merely catches up.** A host that was `Up` stays `Up`
//!   with `InSync=True` while it waits for its connect; only a failed connect, an expired Lease, a
//!   blame, or no confirmation by the rollout deadline changes it. The deadline is
//!   `Reconciling.lastTransitionTime + connectTimeoutSeconds × (⌈hosts / maxConcurrentConnects⌉ + 1)`:
//!   the time a rollout in waves of `maxConcurrentConnects` needs when every call takes the whole
//!   timeout, so hosts that wait their turn in a large pool are not blamed.
//! - **Progress is written in steps.** The pool's counts and lagging-host list, and a domain's
//!   counts, blocking-host list and the condition message naming those hosts, are snapshots. The
//!   planner keeps the current snapshot while the only change is healthy progress inside the same
//!   tenth of the pool ([`status::bucket`] of `inSync`, or of a domain's reporting/valid/still
//!   active counts; `connecting` only matters as zero or not, since it moves against `inSync`); it
//!   writes a fresh one when progress crosses a tenth, reaches 0 or all, or when anything else
//!   changes (a failure, a host added, a phase or condition change). A rollout therefore costs at most about a dozen pool writes and a dozen per
//!   changed domain, whatever N is, and the live view in `kubectl get sp` still moves. We chose this
//!   over freezing the counts until the end (no live view) and over a debounce in the shell (writes
//!   grow with the rollout's duration, and a debounce is memory the planner cannot see).
//! - **Messages carry no ticking numbers**, only the snapshot's, so an unchanged snapshot yields an
//!   identical status and the shell skips the write.
//!
//! # Module map
//! - [`map`]: pool identity, domain eligibility (duplicates, the 100-domain limit), the desired map,
//!   the master and the versions.
//! - [`hosts`]: responsiveness, host ids, sync judgement, phases, and the RPCs to send.
//! - [`ledger`]: the call ledger's rules: send, wait, back off, lapse; how an entry changes.
//! - [`manager`]: the pool manager (SPM): who holds the role, who should, `spmStart`/`spmStop`.
//! - [`rollout`]: the rollout clock: when the current rollout started and its deadline.
//! - [`domains`]: domain phases, the problem grace period, blame, blocking hosts.
//! - [`requeue`]: when to look again without a watch event.
//! - [`status`]: [`report`]: statuses, conditions, counts snapshots and events, by kind.
//! - [`fixtures`]: builders for tests and benchmarks (hidden from the docs).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::{
    DomainMap, DomainPhase, Host, HostPhase, HostReport, HostSpec, HostStatus, MapStatus,
    PoolConnection, StorageDomainSpec, StorageDomainStatus, StoragePoolSpec, StoragePoolStatus,
};

pub mod domains;
#[cfg(any(test, doc, feature = "fixtures"))]
#[doc(hidden)]
pub mod fixtures;
pub mod hosts;
pub mod ledger;
pub mod manager;
pub mod map;
pub mod requeue;
pub mod rollout;
pub mod status;

#[cfg(test)]
mod tests;

pub use ledger::connect_timeout;
pub use status::{orphan_domain, report};

/// The finalizer that holds a deleted pool while domains are still attached to it.
pub const POOL_FINALIZER: &str = "poolkeeper.io/pool-protection";
/// The finalizer that holds a deleted domain until every host has let go of it.
pub const DOMAIN_FINALIZER: &str = crate::api::domain::FINALIZER;
/// A domain check this old or older (seconds) counts as a problem (oVirt's `MaxStorageVdsTimeoutCheckSec`).
/// Agents report `lastCheckSeconds` in steps (0, 30, 60, ...) at or below the real value, so the
/// comparison is `>=`.
pub const MAX_LAST_CHECK_SECONDS: f64 = 30.0;
/// The Lease duration assumed when a Lease does not say (kube-node-lease's default).
pub const DEFAULT_LEASE_DURATION_SECONDS: i32 = 40;
/// At most this many hosts are named in a lagging-host or blocking-host list.
pub const MAX_LISTED_HOSTS: usize = crate::api::bounds::LISTED_MAX;

// ---------------------------------------------------------------------------------------------
// Input
// ---------------------------------------------------------------------------------------------

/// Everything the planner may know about one pool, narrowed once from the caches by the shell.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The pool itself.
    pub pool: PoolView,
    /// Every StorageDomain whose `spec.pool` or `status.pool` names this pool, by object name.
    pub domains: BTreeMap<String, DomainView>,
    /// Other StorageDomains (not in `domains`) by uuid: uuid → their names → their claims on it.
    /// Only uuids that also appear in `domains` matter; the shell may pass more. Used to decide
    /// which of several domains with one uuid keeps it ([`map::eligibility`]).
    pub uuids_elsewhere: BTreeMap<String, BTreeMap<String, UuidClaim>>,
    /// Every Host whose `spec.pool` names this pool, or whose report says it is connected to this
    /// pool's uuid, or that appears in `status.hostIds`, by object name.
    pub hosts: BTreeMap<String, HostView>,
    /// The call ledger's entries for these hosts (hosts without an entry have none).
    pub ledger: BTreeMap<String, ledger::HostCalls>,
    /// The pool's last pool-manager call, from the shell's ledger (`None`: none remembered).
    pub manager: Option<manager::ManagerCalls>,
    /// Hosts named in `status.hostIds` whose Host object is gone, with their Lease (`None` without
    /// one). An agent whose Lease is current may still hold the pool under its id (it registers
    /// its Host again), so that id is not handed to another host.
    pub departed: BTreeMap<String, Option<LeaseView>>,
}

/// The pool as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolView {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`: the pool uuid when neither `spec.uuid` nor `status.uuid` is set. The pool's
    /// status is written to this object only, never to a new pool of the same name.
    pub uid: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.finalizers` holds [`POOL_FINALIZER`].
    pub has_finalizer: bool,
    /// The spec.
    pub spec: StoragePoolSpec,
    /// The current status (default when none).
    pub status: StoragePoolStatus,
}

/// A domain as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainView {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`: the domain's status is written to this object only, never to a new one of
    /// the same name created since.
    pub uid: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.finalizers` holds [`DOMAIN_FINALIZER`].
    pub has_finalizer: bool,
    /// `status.pool` names another pool that still exists: the domain is still leaving it, so this
    /// pool must not take it yet (the old pool's hosts are told first).
    pub leaving_other_pool: bool,
    /// The spec.
    pub spec: StorageDomainSpec,
    /// The current status (default when none).
    pub status: StorageDomainStatus,
}

impl DomainView {
    /// The domain's claim on its uuid.
    pub fn claim(&self) -> UuidClaim {
        UuidClaim::of(self.created, &self.status)
    }
}

/// What decides which of several StorageDomains with one uuid keeps it, read from each object
/// alone (never from memory), so every pool and every controller restart picks the same one: a
/// domain placed in a pool's map comes first, then the oldest, then the first by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UuidClaim {
    /// The pool whose map holds the domain, as its status records it (`status.pool`, while its
    /// phase is neither unset nor `Unattached`).
    pub placed_in: Option<String>,
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
}

impl UuidClaim {
    /// The claim of a domain created at `created` whose status is `status`.
    pub fn of(created: Option<Timestamp>, status: &StorageDomainStatus) -> Self {
        let placed = !matches!(status.phase, None | Some(DomainPhase::Unattached));
        Self {
            placed_in: status.pool.clone().filter(|_| placed),
            created,
        }
    }
}

/// A host as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct HostView {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`: the host's status is written to this object only, never to a new one of
    /// the same name created since.
    pub uid: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The spec (pool, endpoint override, maintenance).
    pub spec: HostSpec,
    /// `status.endpoint`: where the agent says it serves RPC.
    pub status_endpoint: Option<String>,
    /// The agent's report.
    pub report: ReportView,
    /// The controller's part of the current status (shared with the shell's cache of it).
    pub controller: Arc<HostControllerStatus>,
    /// The host's Lease; `None` when it has none (never heard from).
    pub lease: Option<LeaseView>,
}

impl HostView {
    /// Where the host is called: `spec.endpoint` when an operator set it, else the agent's own
    /// `status.endpoint`; `None` (neither, or empty) when the host cannot be called.
    pub fn endpoint(&self) -> Option<&str> {
        self.spec
            .endpoint
            .as_deref()
            .filter(|e| !e.is_empty())
            .or_else(|| self.status_endpoint.as_deref().filter(|e| !e.is_empty()))
    }
}

/// `Host.status.report` as the shell found it.
#[derive(Clone, Debug, PartialEq)]
pub enum ReportView {
    /// The agent has not reported yet.
    Missing,
    /// The report, shared with the cache that holds the Host (no copy per reconcile).
    Parsed(SharedReport),
    /// The report did not parse (the message says why). No calls go to the host until it reports
    /// something readable; meanwhile it may still hold the pool, so it blocks every domain on its
    /// way to maintenance or out of the pool ([`domains`]).
    Invalid(String),
}

impl ReportView {
    /// The report, when there is a readable one.
    pub fn parsed(&self) -> Option<&HostReport> {
        match self {
            Self::Parsed(r) => Some(r),
            Self::Missing | Self::Invalid(_) => None,
        }
    }

    /// Why there is no readable report, when there is none.
    pub fn unreadable(&self) -> Option<&str> {
        match self {
            Self::Missing => Some("missing"),
            Self::Invalid(why) => Some(why),
            Self::Parsed(_) => None,
        }
    }
}

/// A host's report inside the Host that carries it, shared with the shell's cache: 2,000 reports
/// of 20 domains are held once, not once in the cache and once per reconcile.
#[derive(Clone, Debug)]
pub struct SharedReport(Arc<Host>);

impl SharedReport {
    /// The report of `host`, if it has one.
    pub fn of(host: Arc<Host>) -> Option<Self> {
        host.status.as_ref()?.report.as_ref()?;
        Some(Self(host))
    }

    /// A report held on its own (fixtures and tests).
    pub fn new(report: HostReport) -> Self {
        let mut host = Host::new(
            "",
            HostSpec {
                pool: None,
                endpoint: None,
                maintenance: false,
            },
        );
        host.status = Some(HostStatus {
            report: Some(report),
            ..HostStatus::default()
        });
        Self(Arc::new(host))
    }

    /// The report, to change (copies it first if it is shared).
    pub fn make_mut(&mut self) -> &mut HostReport {
        let status = Arc::make_mut(&mut self.0)
            .status
            .get_or_insert_with(Default::default);
        status.report.get_or_insert_with(Default::default)
    }
}

impl std::ops::Deref for SharedReport {
    type Target = HostReport;

    fn deref(&self) -> &HostReport {
        static NONE: std::sync::OnceLock<HostReport> = std::sync::OnceLock::new();
        // Built only around a Host that has a report ([`SharedReport::of`], [`SharedReport::new`]).
        self.0
            .status
            .as_ref()
            .and_then(|s| s.report.as_ref())
            .unwrap_or_else(|| NONE.get_or_init(HostReport::default))
    }
}

impl PartialEq for SharedReport {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// The part of `Host.status` the controller owns (field manager `poolkeeper-controller`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostControllerStatus {
    /// `status.phase`.
    pub phase: Option<HostPhase>,
    /// `status.observedGeneration`.
    pub observed_generation: Option<i64>,
    /// `status.conditions`: `Responsive`, `InSync`, `Operational`, `Ready`.
    pub conditions: Vec<Condition>,
}

impl From<&HostStatus> for HostControllerStatus {
    fn from(s: &HostStatus) -> Self {
        Self {
            phase: s.phase,
            observed_generation: s.observed_generation,
            conditions: s.conditions.clone(),
        }
    }
}

/// The fields of a host's `coordination.k8s.io` Lease the planner reads, and when the controller
/// observed its renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// `spec.renewTime`.
    pub renew_time: Option<Timestamp>,
    /// `spec.leaseDurationSeconds` ([`DEFAULT_LEASE_DURATION_SECONDS`] when unset).
    pub lease_duration_seconds: Option<i32>,
    /// When the controller observed `renewTime`, by its own clock. Liveness is judged from it, as
    /// Kubernetes' node-lifecycle controller does, never by comparing `renewTime` (the agent's
    /// clock, and stale after an API server outage) with the controller's clock.
    pub observed: Observation,
}

/// When the controller observed a Lease's current renewal (a cache of the shell, rebuilt on restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The controller saw `renewTime` change at this instant.
    Renewed(Timestamp),
    /// The controller found the Lease as it is when it started or regained the API server at this
    /// instant, and has not seen it renewed since: a host it judged responsive stays so for one
    /// Lease duration from then (its agent may not have reached the API server yet); one it
    /// judged unresponsive stays so until a renewal is seen.
    Found(Timestamp),
}

// ---------------------------------------------------------------------------------------------
// Output of `plan`
// ---------------------------------------------------------------------------------------------

/// What to do for one pool. Compare whole plans with `assert_eq!`.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The pool uuid in use (`spec.uuid`, else `status.uuid`, else `metadata.uid`).
    pub pool_uuid: String,
    /// Why the planner sends nothing at all (an invalid compatibility version, a spec edit
    /// that would change connected hosts' identity or ids).
    pub halted: Option<Halt>,
    /// The map, master and host ids every host must hold.
    pub desired: Desired,
    /// When the map, master or host ids changed: the pool status to write **before** any RPC.
    /// The shell writes it (and, if that fails, sends nothing).
    pub persist_first: Option<StoragePoolStatus>,
    /// The RPCs due now, in the order to send them (disconnects first). The shell sends them with
    /// at most `spec.sync.maxConcurrentConnects` in flight for the pool, each with the
    /// `connectTimeoutSeconds` timeout; a later plan replaces the calls of this one not yet sent.
    pub calls: Vec<HostCall>,
    /// What the shell must record in the call ledger (before it sends `calls`).
    pub ledger: Vec<ledger::LedgerOp>,
    /// Finalizers to add before anything is sent: each member domain's, so a domain deleted
    /// while it is being attached waits for its detach.
    pub guards: Vec<FinalizerChange>,
    /// Finalizers to add or remove as the reconcile's last step (removing the pool's own may
    /// delete it; adding it earlier would move the pool's resourceVersion under the map's
    /// compare-and-swap).
    pub finalizers: Vec<FinalizerChange>,
    /// The pool manager: what to record, the `spmStart`/`spmStop` due now (sent after
    /// `persist_first`, apart from `calls`).
    pub manager: manager::ManagerPlan,
    /// When to reconcile again even if nothing changes (grace end, backoff end, Lease expiry,
    /// rollout deadline).
    pub requeue_after: Option<Duration>,
    /// The planner's verdict per host (input to [`report`]).
    pub hosts: BTreeMap<String, HostVerdict>,
    /// The planner's verdict per domain (input to [`report`]).
    pub domains: BTreeMap<String, DomainVerdict>,
}

/// Why a pool gets no RPCs and no map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Halt {
    /// `compatibilityVersion` does not parse as `major.minor`.
    InvalidVersion {
        /// The version found.
        version: String,
    },
    /// `spec.uuid` differs from the uuid the pool's hosts were given (`status.uuid`): following
    /// it would disconnect every host and connect it to another pool.
    UuidChanged {
        /// `spec.uuid`.
        spec: String,
        /// `status.uuid`.
        status: String,
    },
    /// `spec.sync.maxHosts` is below the id some host holds: following it would renumber or
    /// disconnect those hosts.
    MaxHostsTooLow {
        /// `spec.sync.maxHosts`.
        max_hosts: i32,
        /// The hosts whose id no longer fits, with that id.
        hosts: BTreeMap<String, i32>,
    },
}

/// The desired pool state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// sdUUID → `active` or `attached`.
    pub domain_map: DomainMap,
    /// `status.mapVersion`.
    pub map_version: i64,
    /// The master domain (`masterSdUUID`); `None` when the pool has no active data domain.
    pub master_domain: Option<String>,
    /// `status.masterVersion`.
    pub master_version: i64,
    /// Host name → host id.
    pub host_ids: BTreeMap<String, i32>,
}

/// One RPC to one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostCall {
    /// `StoragePool.connect` with the whole map (without `domainDict` when `params.backend` is
    /// `Disk`: the host reads the map from the master, 3.4 and lower).
    Connect {
        /// The Host's name.
        host: String,
        /// Where the host is called ([`HostView::endpoint`]).
        endpoint: String,
        /// The connection the host must hold (`scsiKey` is the pool uuid again on the wire, as
        /// VDSM ignores it).
        params: PoolConnection,
    },
    /// `StoragePool.disconnect`.
    Disconnect {
        /// The Host's name.
        host: String,
        /// Where the host is called ([`HostView::endpoint`]).
        endpoint: String,
        /// The call's parameters.
        params: DisconnectParams,
    },
    /// `StoragePool.refresh(storagepoolID, masterSdUUID, masterVersion)` (3.4 and lower): a
    /// connected host re-reads the map from the master, which the pool manager changed first.
    Refresh {
        /// The Host's name.
        host: String,
        /// Where the host is called ([`HostView::endpoint`]).
        endpoint: String,
        /// The connection the host must hold afterwards (its map is what the master holds; only
        /// the pool, master and version go on the wire).
        params: PoolConnection,
    },
}

impl HostCall {
    /// The host the call goes to.
    pub fn host(&self) -> &str {
        match self {
            Self::Connect { host, .. }
            | Self::Disconnect { host, .. }
            | Self::Refresh { host, .. } => host,
        }
    }

    /// Which verb.
    pub fn kind(&self) -> CallKind {
        match self {
            Self::Connect { .. } => CallKind::Connect,
            Self::Disconnect { .. } => CallKind::Disconnect,
            Self::Refresh { .. } => CallKind::Refresh,
        }
    }
}

/// `StoragePool.disconnect` parameters: which connection the host must drop.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DisconnectParams {
    /// `storagepoolID`: the pool the host reports it is connected to.
    pub pool_uuid: String,
    /// `hostID`: the id the host reports.
    pub host_id: i32,
}

/// The verb of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CallKind {
    /// `StoragePool.connect`.
    Connect,
    /// `StoragePool.disconnect`.
    Disconnect,
    /// `StoragePool.refresh` (3.4 and lower).
    Refresh,
}

/// A finalizer to add to or remove from an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FinalizerChange {
    /// The object.
    pub object: ObjectRef,
    /// The finalizer ([`POOL_FINALIZER`] or [`DOMAIN_FINALIZER`]).
    pub finalizer: &'static str,
    /// Add or remove.
    pub action: FinalizerAction,
}

/// Add or remove a finalizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FinalizerAction {
    /// Add it (idempotent).
    Add,
    /// Remove it (idempotent).
    Remove,
}

/// A poolkeeper object, by kind and name (all kinds are cluster-scoped).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// The kind.
    pub kind: ObjectKind,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectRef {
    /// A StoragePool.
    pub fn pool(name: impl Into<String>) -> Self {
        Self {
            kind: ObjectKind::StoragePool,
            name: name.into(),
        }
    }
    /// A StorageDomain.
    pub fn domain(name: impl Into<String>) -> Self {
        Self {
            kind: ObjectKind::StorageDomain,
            name: name.into(),
        }
    }
    /// A Host.
    pub fn host(name: impl Into<String>) -> Self {
        Self {
            kind: ObjectKind::Host,
            name: name.into(),
        }
    }
}

/// The kinds the planner talks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// `StoragePool`.
    StoragePool,
    /// `StorageDomain`.
    StorageDomain,
    /// `Host`.
    Host,
}

impl ObjectKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StoragePool => "StoragePool",
            Self::StorageDomain => "StorageDomain",
            Self::Host => "Host",
        }
    }
}

/// What the planner concluded about one host (before the calls' outcomes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostVerdict {
    /// How the host relates to the pool.
    pub role: HostRole,
    /// Its Lease is current.
    pub responsive: bool,
    /// Its report says it is connected to this pool.
    pub connected_here: bool,
    /// It holds what it should (the map when serving, no connection when not).
    pub in_sync: bool,
    /// Its report did not parse.
    pub report_invalid: bool,
    /// It has an endpoint to be called at ([`HostView::endpoint`]).
    pub callable: bool,
    /// Its id in the pool.
    pub host_id: Option<i32>,
    /// The phase before the calls' outcomes are known.
    pub phase: HostPhase,
    /// Why it is not in sync when that is a failure (`None` while healthy or merely catching up).
    pub failure: Option<SyncFailure>,
    /// Active domains this host cannot reach although others can (it is or becomes NonOperational).
    pub unreachable: BTreeSet<String>,
    /// A call is due but was not sent now (backoff, a call still in flight, or the concurrency
    /// cap).
    pub call_pending: bool,
    /// When the planner must look at the host's call again (a backoff ends, a confirmation window
    /// closes, an in-flight marker expires).
    pub retry_at: Option<Timestamp>,
    /// The host accepted the call it needs and its report is on its way: this round (set by
    /// [`report`] from the outcomes) or within the confirmation window of an earlier call.
    pub told_now: bool,
}

impl HostVerdict {
    /// A member the planner can call and whose report it trusts: responsive, its report
    /// readable, an endpoint known. Only such a host is given a pool-manager call.
    pub fn can_serve(&self) -> bool {
        self.role == HostRole::Member && self.responsive && !self.report_invalid && self.callable
    }
}

/// How a host relates to the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostRole {
    /// `spec.pool` names the pool and the host has an id: it must hold the map.
    Member,
    /// `spec.pool` names the pool but `spec.maintenance` is set: it must be disconnected.
    Maintenance,
    /// `spec.pool` names the pool but every id up to `maxHosts` is taken.
    Refused,
    /// `spec.pool` names another pool or none, but the host is still connected here or still has an
    /// id here: it must be disconnected. Its status is not this pool's to write.
    Leaving,
}

/// Why a host does not hold the map, when that is a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncFailure {
    /// The last connect failed (from the call ledger, or this round's outcome).
    ConnectFailed(String),
    /// Connected fine but the host did not report the map by the rollout deadline.
    NotConfirmed,
    /// The host needs a call but has no endpoint: neither `spec.endpoint` nor the agent's
    /// `status.endpoint` is set, so nothing can be sent to it.
    NoEndpoint,
}

/// What the planner concluded about one domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainVerdict {
    /// The phase to report.
    pub phase: DomainPhase,
    /// The domain's entry in the desired map, if any.
    pub map: Option<MapStatus>,
    /// Bad input that keeps the domain out of the map.
    pub flag: Option<DomainFlag>,
    /// The pool to record in `status.pool` (`None` once detached).
    pub status_pool: Option<String>,
    /// This pool writes the domain's status (false while the domain waits to leave another pool).
    pub owned: bool,
    /// Hosts (connected to the pool) that still report or hold the domain and so block its
    /// MovingToMaintenance or Detaching.
    pub blocking: BTreeSet<String>,
    /// Up hosts that report a problem with it now.
    pub problem_hosts: BTreeSet<String>,
    /// Hosts that report the domain.
    pub reporting: i32,
    /// Up hosts that report it valid and actual.
    pub valid: i32,
    /// Up hosts in the pool (the denominator of activation progress).
    pub up_hosts: i32,
    /// When the problem grace period ends, while some Up host reports a problem.
    pub grace_ends: Option<Timestamp>,
    /// Asked to leave the active set but kept active, and master, as the pool's last active data
    /// domain: the other active domains, to put in maintenance first.
    pub last_data_domain: Option<BTreeSet<String>>,
    /// Asked to leave the active set, but kept active, and master, until another data domain is
    /// active where the master can move to it ([`map::DomainClass::HandingOver`]).
    pub master_handover: bool,
    /// A member waiting for the pool manager to attach it to the pool on storage
    /// ([`map::DomainClass::Attaching`]).
    pub attaching: bool,
}

/// Bad input on a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainFlag {
    /// Another StorageDomain with the same uuid keeps it ([`UuidClaim`]).
    DuplicateUuid {
        /// The StorageDomain that keeps the uuid.
        holder: String,
        /// The pool whose map holds it, if it is placed in one.
        placed_in: Option<String>,
    },
    /// The pool already has 100 domains (VDSM's limit).
    TooManyDomains,
}

// ---------------------------------------------------------------------------------------------
// Input and output of `report`
// ---------------------------------------------------------------------------------------------

/// The outcome of one call the shell made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallOutcome {
    /// The host.
    pub host: String,
    /// The verb.
    pub kind: CallKind,
    /// `Ok` or the failure.
    pub result: Result<(), CallFailure>,
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallFailure {
    /// VDSM's error code when the host answered with one (e.g. 323).
    pub code: Option<i64>,
    /// What went wrong (a timeout, a transport error, or the host's message).
    pub message: String,
}

/// The host's message is text from outside, shown cut to [`crate::api::bounds::OUTSIDE_TEXT_MAX`]
/// characters: this is the form it takes in every status, ledger entry and event.
impl fmt::Display for CallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = crate::api::bounds::outside(&self.message);
        match self.code {
            Some(code) => write!(f, "error {code}: {message}"),
            None => f.write_str(&message),
        }
    }
}

/// What to write after acting: each status is written only if it differs from the current one
/// ([`needs_write`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The pool's status.
    pub pool: StoragePoolStatus,
    /// Domain name → status, for the domains this pool owns.
    pub domains: BTreeMap<String, StorageDomainStatus>,
    /// Host name → the controller's part of the status, for hosts whose `spec.pool` is this pool.
    pub hosts: BTreeMap<String, HostControllerStatus>,
    /// Events to emit.
    pub events: Vec<PlannedEvent>,
    /// The pool and domains whose new status differs from the current one only in its progress
    /// snapshot (counts, host lists, the messages naming them) as a rollout moves on: no phase or
    /// condition changes status or reason. The shell may pace these writes (their events are
    /// progress notes that a later write repeats); every other change is written at once.
    pub progress_only: BTreeSet<ObjectRef>,
}

/// An event to emit (events.k8s.io).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// The object the event is about (`regarding`).
    pub object: ObjectRef,
    /// Normal or Warning.
    pub type_: EventType,
    /// A reason from [`crate::api::condition::reasons`].
    pub reason: &'static str,
    /// A human-readable note.
    pub note: String,
}

/// The event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Expected transitions.
    Normal,
    /// Something a person may need to look at.
    Warning,
}

impl EventType {
    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// Whether a status must be written: it differs from the current one. Statuses built by
/// [`report`] keep `lastTransitionTime` and every snapshot when nothing changed, so plain equality is
/// exact (nothing volatile is in them).
pub fn needs_write<T: PartialEq>(current: Option<&T>, desired: &T) -> bool {
    current != Some(desired)
}

/// The plan for one pool. Pure: same input, same output.
pub fn plan(observed: &Observed, now: Timestamp) -> Plan {
    let pool_uuid = map::pool_uuid(&observed.pool);
    let halt = map::halt(&observed.pool.spec)
        .or_else(|| map::uuid_changed(&observed.pool))
        .or_else(|| hosts::max_hosts_too_low(observed, &pool_uuid));
    if let Some(halt) = halt {
        return Plan {
            pool_uuid,
            halted: Some(halt),
            desired: map::current_desired(&observed.pool.status),
            persist_first: None,
            calls: Vec::new(),
            ledger: Vec::new(),
            guards: Vec::new(),
            finalizers: Vec::new(),
            manager: manager::ManagerPlan::idle(observed.pool.status.pool_manager.clone()),
            requeue_after: None,
            hosts: BTreeMap::new(),
            domains: BTreeMap::new(),
        };
    }
    let eligibility = map::eligibility(observed);
    let host_ids = hosts::assign_ids(observed, &pool_uuid, now);
    let mut hostv = hosts::classify(observed, &pool_uuid, &host_ids, now);
    let leaving_held = domains::leaving_still_reported(observed, &eligibility, &hostv);
    let desired = map::desired(observed, &eligibility, &leaving_held, host_ids);
    let persist_first = map::persist_first(observed, &pool_uuid, &desired, now);
    let rollout_start = rollout::started(observed, persist_first.as_ref(), now);
    hosts::judge_sync(
        observed,
        &pool_uuid,
        &desired,
        rollout_start,
        now,
        &mut hostv,
    );
    let domainv = domains::judge(
        observed,
        &eligibility,
        &leaving_held,
        &desired,
        &mut hostv,
        now,
    );
    let (mut calls, mut ledger) = hosts::calls(observed, &pool_uuid, &desired, &mut hostv, now);
    let work = map::storage_work(observed, &eligibility, &leaving_held, &desired, &hostv);
    let manager = manager::plan(observed, &pool_uuid, &desired, &work, &hostv, now);
    // A host that holds the pool manager's role is disconnected only after `spmStop` (VDSM
    // refuses the disconnect with 656 until then).
    // A connect naming a new master waits for the manager's `switchMaster`.
    calls.retain(|c| {
        let held = match c.kind() {
            CallKind::Disconnect => manager.hold_disconnect.contains(c.host()),
            CallKind::Connect => manager.hold_connects,
            CallKind::Refresh => manager.hold_connects || manager.hold_refreshes,
        };
        if held && let Some(v) = hostv.get_mut(c.host()) {
            v.call_pending = true;
        }
        !held
    });
    // The host that rebuilds a lost master lets go of the pool first.
    if let Some(host) = &manager.disconnect_first
        && !manager.hold_disconnect.contains(host)
        && let Some(call) = hosts::disconnect_first(observed, host, &mut hostv, &mut ledger, now)
    {
        calls.retain(|c| c.host() != host);
        calls.insert(0, call);
    }
    // The manager's record is persisted before its `spmStart`, like the map before a connect,
    // and so is what an accepted storage call changed on storage.
    let persist_first =
        if manager.record == observed.pool.status.pool_manager && manager.storage.is_none() {
            persist_first
        } else {
            let mut next = persist_first.unwrap_or_else(|| observed.pool.status.clone());
            next.pool_manager.clone_from(&manager.record);
            if let Some(storage) = &manager.storage {
                next.storage = Some(storage.clone());
            }
            Some(next)
        };
    let (guards, finalizers) = domains::finalizers(observed, &hostv, &domainv);
    let requeue_after = requeue::after(observed, &hostv, &domainv, rollout_start, now);
    let requeue_after = match manager.retry_at.map(|t| requeue::until(t, now)) {
        Some(d) => Some(requeue_after.map_or(d, |r| r.min(d))),
        None => requeue_after,
    };
    Plan {
        pool_uuid,
        halted: None,
        desired,
        persist_first,
        calls,
        ledger,
        guards,
        finalizers,
        manager,
        requeue_after,
        hosts: hostv,
        domains: domainv,
    }
}
