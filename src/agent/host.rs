//! One host as the agent (or one virtual host of the simulator) runs it: identity, the in-memory
//! pool connection, its monitors, and the VDSM verbs over them.
//!
//! State changes mark the host dirty and wake the reporter; nothing here talks to Kubernetes.
//!
//! The pool-manager verbs read and write domain metadata through [`FileDomains`] while the host's
//! lock is held, so one host runs them one at a time, as VDSM's pool lock does. The pool
//! manager's lease is renewed by the driver's ticker ([`HostAgent::spm_renewal_due`]); a host
//! that has not renewed for half the lease's duration stops acting as pool manager
//! ([`HostAgent::fence_if_stale`]) before another host may take the lease (after the whole
//! duration).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedSender;

use super::domains::{FileDomains, LeaseError};
use super::manager::{self, Holder};
use super::monitor::{Monitors, ReadResult};
use super::state::{Backend, PoolState, SpmRole};
use super::storage::Storage;
use crate::api::{DomainVitals, HostReport, PoolConnection};
use crate::protocol::wire::{
    ConnectParams, CreateParams, DisconnectParams, DomainParams, GetInfoParams, PoolInfo,
    PoolParams, ReconstructMasterParams, RefreshParams, SpmStartParams, SpmStatus, SpmStatusResult,
    SwitchMasterParams, method,
};
use crate::protocol::{ErrorCode, VdsmError, Verbs, Vitals};

/// The agent version written in reports.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug)]
struct Inner {
    boot_id: String,
    state: PoolState,
    monitors: Monitors,
    calls: VecDeque<ReceivedCall>,
    calls_total: u64,
    /// When the pool manager's lease was last acquired or renewed (before the write started).
    spm_renewed: Option<Instant>,
    /// When a renewal was last started.
    spm_renew_started: Option<Instant>,
    /// Beside a real VDSM (`agent --vdsm`): what VDSM last answered, reported instead of the
    /// agent's own (empty) state.
    bridged: Option<(Option<PoolConnection>, Vec<DomainVitals>)>,
}

/// How many of its latest pool calls a host keeps in its call log.
pub const CALL_LOG_LEN: usize = 64;

/// One pool call a host received, as its call log keeps it: what fault tests read to prove that
/// no host was ever told to drop a domain that was not leaving, and when the last call came.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedCall {
    /// When the host handled the call.
    pub at: SystemTime,
    /// The verb, VDSM's method name (`StoragePool.connect`, `StoragePool.spmStart`, ...).
    pub verb: &'static str,
    /// The verb is `StoragePool.connect`.
    pub connect: bool,
    /// Whether the host accepted it.
    pub ok: bool,
    /// The connection the host holds after the call.
    pub held: Option<PoolConnection>,
}

/// How the pool manager's lease is held: VDSM's defaults are a 60 s lease renewed every 5 s
/// (sd.py `DEFAULT_LEASE_PARAMS`) for a 10 s monitor period; the agent keeps those ratios to
/// its monitor period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpmLease {
    /// How long a lease lasts without renewal; another host may take it after that.
    pub duration: Duration,
    /// How often the holder renews it.
    pub renew_every: Duration,
}

impl SpmLease {
    /// VDSM's ratios for a monitor `period`: six periods, renewed every half period.
    pub fn for_period(period: Duration) -> Self {
        Self {
            duration: period * 6,
            renew_every: period / 2,
        }
    }
}

/// Storage and rules of the pool verbs.
#[derive(Clone, Debug)]
pub struct PoolStorage {
    /// Where domains are read and written.
    pub domains: FileDomains,
    /// The pool manager's lease.
    pub lease: SpmLease,
}

/// One host: what it holds in memory and how it answers the verbs.
pub struct HostAgent {
    index: usize,
    name: String,
    endpoint: String,
    storage: Arc<dyn Storage>,
    pool_storage: PoolStorage,
    inner: Mutex<Inner>,
    dirty: AtomicBool,
    changes: Option<UnboundedSender<usize>>,
    blackholed: AtomicBool,
    rpc_dropped: AtomicBool,
    report_frozen: AtomicBool,
    latency_ms: AtomicU64,
    renewing: AtomicBool,
    tasks: AtomicU32,
}

impl std::fmt::Debug for HostAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAgent")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl HostAgent {
    /// A host named `name` (its Host object and Lease), reachable at `endpoint`, whose monitors
    /// read `storage` and whose pool verbs use `pool_storage`. `changes` receives `index`
    /// whenever the report may have changed (no reporter: `None`). A fresh boot: new bootId, no
    /// pool.
    pub fn new(
        index: usize,
        name: String,
        endpoint: String,
        storage: Arc<dyn Storage>,
        pool_storage: PoolStorage,
        changes: Option<UnboundedSender<usize>>,
    ) -> Self {
        let host = Self {
            index,
            name,
            endpoint,
            storage,
            pool_storage,
            inner: Mutex::new(Inner {
                boot_id: uuid::Uuid::new_v4().to_string(),
                state: PoolState::default(),
                monitors: Monitors::default(),
                calls: VecDeque::new(),
                calls_total: 0,
                spm_renewed: None,
                spm_renew_started: None,
                bridged: None,
            }),
            dirty: AtomicBool::new(false),
            changes,
            blackholed: AtomicBool::new(false),
            rpc_dropped: AtomicBool::new(false),
            report_frozen: AtomicBool::new(false),
            latency_ms: AtomicU64::new(0),
            renewing: AtomicBool::new(false),
            tasks: AtomicU32::new(0),
        };
        host.mark_dirty();
        host
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its RPC endpoint URL, as published in `Host.status.endpoint`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Its position in the process's host list.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The current bootId.
    pub fn boot_id(&self) -> String {
        self.lock().boot_id.clone()
    }

    /// The storage its monitors read.
    pub(crate) fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated in a way later calls
        // cannot handle, so a poisoned lock is still used.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mark_dirty(&self) {
        if !self.dirty.swap(true, Ordering::AcqRel)
            && let Some(tx) = &self.changes
        {
            // The reporter is gone only during shutdown; nothing is left to report then.
            let _ = tx.send(self.index);
        }
    }

    /// Clears the dirty mark before a report is built, so a change during the write marks
    /// the host again.
    pub(crate) fn take_dirty(&self) {
        self.dirty.store(false, Ordering::Release);
    }

    /// The report as it stands: identity, pool connection and monitor vitals in steps.
    pub fn report(&self) -> HostReport {
        let inner = self.lock();
        let (pool, domains) = match &inner.bridged {
            Some((pool, domains)) => (pool.clone(), domains.clone()),
            None => (inner.state.report(), inner.monitors.report()),
        };
        HostReport {
            agent_version: AGENT_VERSION.to_owned(),
            boot_id: inner.boot_id.clone(),
            pool,
            domain_count: i32::try_from(domains.len()).unwrap_or(i32::MAX),
            domains,
        }
    }

    /// Reports what a real VDSM answered (the bridge, `agent --vdsm`) instead of the agent's own
    /// state; a new bootId with `restarted` (VDSM closed its connection meanwhile, so it may
    /// have restarted and lost its memory). The report is written only if this changed it.
    pub fn set_bridged(
        &self,
        pool: Option<PoolConnection>,
        domains: Vec<DomainVitals>,
        restarted: bool,
    ) {
        let changed = {
            let mut inner = self.lock();
            let next = Some((pool, domains));
            let changed = restarted || inner.bridged != next;
            if restarted {
                inner.boot_id = uuid::Uuid::new_v4().to_string();
            }
            inner.bridged = next;
            changed
        };
        if changed {
            self.mark_dirty();
        }
    }

    /// Loses everything held in memory, as a process restart does: new bootId, no pool, no
    /// monitors (reads in flight are ignored when they return). A pool manager's lease stays on
    /// storage under the old bootId and expires unrenewed, as a dead holder's sanlock lease does.
    pub fn restart(&self) {
        {
            let mut inner = self.lock();
            inner.boot_id = uuid::Uuid::new_v4().to_string();
            inner.state = PoolState::default();
            inner.monitors.sync(std::iter::empty(), Instant::now());
            inner.spm_renewed = None;
            inner.spm_renew_started = None;
        }
        tracing::info!(host = %self.name, "host restarted, memory lost");
        self.mark_dirty();
    }

    /// The last [`CALL_LOG_LEN`] pool calls the host received, oldest first, and how many it
    /// received in all (kept across [`Self::restart`]: the log is the test's view, not the host's
    /// memory).
    pub fn calls(&self) -> (Vec<ReceivedCall>, u64) {
        let inner = self.lock();
        (inner.calls.iter().cloned().collect(), inner.calls_total)
    }

    /// Whether the host is cut off (simulator): it answers no calls and renews no Lease.
    pub fn is_blackholed(&self) -> bool {
        self.blackholed.load(Ordering::Acquire)
    }

    /// Cuts the host off, or reconnects it (simulator).
    pub fn set_blackholed(&self, on: bool) {
        if self.blackholed.swap(on, Ordering::AcqRel) != on {
            tracing::info!(host = %self.name, blackholed = on, "host reachability changed");
            if !on {
                // Reports held back while cut off go out now.
                self.mark_dirty();
            }
        }
    }

    /// Whether the host's calls are dropped (simulator): it answers no call, but still renews its
    /// Lease and writes its reports, so it looks alive to everyone but its caller.
    pub fn is_rpc_dropped(&self) -> bool {
        self.rpc_dropped.load(Ordering::Acquire)
    }

    /// Drops the host's calls, or answers them again (simulator).
    pub fn set_rpc_dropped(&self, on: bool) {
        if self.rpc_dropped.swap(on, Ordering::AcqRel) != on {
            tracing::info!(host = %self.name, rpc_dropped = on, "host call reachability changed");
        }
    }

    /// Whether the host's report writer is frozen (simulator): it serves calls and renews its
    /// Lease, but its `status.report` stays as last written.
    pub fn is_report_frozen(&self) -> bool {
        self.report_frozen.load(Ordering::Acquire)
    }

    /// Freezes the host's report writer, or thaws it (simulator).
    pub fn set_report_frozen(&self, on: bool) {
        if self.report_frozen.swap(on, Ordering::AcqRel) != on {
            tracing::info!(host = %self.name, report_frozen = on, "host report writer changed");
            if !on {
                // Reports held back while frozen go out now.
                self.mark_dirty();
            }
        }
    }

    /// Latency added before each call is answered (simulator).
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Acquire))
    }

    /// Sets the added latency (simulator).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::Release);
    }

    /// Checks due now (marked in flight); marks the host dirty when a vitals step changed.
    pub(crate) fn poll_monitors(&self, now: Instant) -> Vec<(String, u64)> {
        let (due, changed) = self.lock().monitors.poll(now);
        if changed {
            self.mark_dirty();
        }
        due
    }

    /// Records a finished read.
    pub(crate) fn record_check(
        &self,
        sd: &str,
        generation: u64,
        result: ReadResult,
        delay: Duration,
        period: Duration,
    ) {
        let changed =
            self.lock()
                .monitors
                .record(sd, generation, result, delay, period, Instant::now());
        if changed {
            tracing::debug!(host = %self.name, domain = %sd, "domain vitals changed");
            self.mark_dirty();
        }
    }

    /// Records a read past its deadline.
    pub(crate) fn record_hung(&self, sd: &str, generation: u64) {
        if self
            .lock()
            .monitors
            .record_hung(sd, generation, Instant::now())
        {
            self.mark_dirty();
        }
    }

    /// This host's pool-manager role now.
    pub fn spm_role(&self) -> SpmRole {
        self.lock().state.spm()
    }

    /// The pool connection the host holds now (its own memory, not its report).
    pub fn connection(&self) -> Option<PoolConnection> {
        self.lock().state.connection().cloned()
    }

    /// Unfinished pool-manager tasks (`spmStop` fails with 653 while there are some).
    pub fn set_unfinished_tasks(&self, n: u32) {
        self.tasks.store(n, Ordering::Release);
    }

    /// Stops acting as pool manager when the lease went unrenewed for half its duration (the
    /// holder's side of "never two pool managers"). True when the role was dropped.
    pub(crate) fn fence_if_stale(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        let dropped = Self::fence(&mut inner, self.pool_storage.lease, now);
        drop(inner);
        if dropped {
            tracing::warn!(host = %self.name, "pool manager lease not renewed in time; role given up");
            self.mark_dirty();
        }
        dropped
    }

    fn fence(inner: &mut Inner, lease: SpmLease, now: Instant) -> bool {
        let stale = inner
            .spm_renewed
            .is_some_and(|t| now.saturating_duration_since(t) > lease.duration / 2);
        if stale && inner.state.spm() != SpmRole::Free {
            inner.state.set_spm(SpmRole::Free);
            inner.spm_renewed = None;
            return true;
        }
        false
    }

    /// The lease to renew now, if this host is pool manager and a renewal is due: `(master,
    /// owner)`. Marks the renewal started.
    pub(crate) fn spm_renewal_due(&self, now: Instant) -> Option<(String, String)> {
        let mut inner = self.lock();
        if inner.state.spm() == SpmRole::Free || self.renewing.load(Ordering::Acquire) {
            return None;
        }
        let due = inner.spm_renew_started.is_none_or(|t| {
            now.saturating_duration_since(t) >= self.pool_storage.lease.renew_every
        });
        if !due {
            return None;
        }
        let master = inner.state.connection()?.master_domain.clone()?;
        inner.spm_renew_started = Some(now);
        self.renewing.store(true, Ordering::Release);
        Some((master, inner.boot_id.clone()))
    }

    /// Renews the lease of `master` for `owner` (blocking I/O) and records the outcome.
    pub(crate) fn renew_spm(&self, master: &str, owner: &str, started: Instant) {
        let result = self.pool_storage.domains.renew_lease(master, owner);
        let mut inner = self.lock();
        self.renewing.store(false, Ordering::Release);
        // The master (and the lease with it) may have moved while this renewal ran: the old
        // master's lease is then released on purpose, and losing it says nothing of the role.
        let still_master = inner
            .state
            .connection()
            .and_then(|c| c.master_domain.as_deref())
            == Some(master);
        if inner.boot_id != owner || inner.state.spm() == SpmRole::Free || !still_master {
            return;
        }
        match result {
            Ok(()) => inner.spm_renewed = Some(started),
            Err(LeaseError::Lost) => {
                inner.state.set_spm(SpmRole::Free);
                inner.spm_renewed = None;
                drop(inner);
                tracing::warn!(host = %self.name, domain = %master, "pool manager lease lost");
                self.mark_dirty();
            }
            // A failed write is retried at the next turn; the fence drops the role in time.
            Err(e) => {
                tracing::warn!(host = %self.name, domain = %master, error = %e, "lease renewal failed")
            }
        }
    }

    fn holder<'a>(&'a self, inner: &'a Inner, host_id: i64) -> Holder<'a> {
        Holder {
            owner: &inner.boot_id,
            host_id,
            duration: self.pool_storage.lease.duration,
        }
    }

    /// The pool as its manager holds it (309/654 otherwise), after fencing a stale role.
    fn managed_pool(
        &self,
        inner: &mut Inner,
        pool: &str,
    ) -> Result<(manager::Pool, i64), VdsmError> {
        Self::fence(inner, self.pool_storage.lease, Instant::now());
        let c = inner.state.managed(pool)?;
        let p = manager::Pool {
            uuid: c.uuid.clone(),
            backend: inner.state.backend().unwrap_or(Backend::Memory),
            master: c.master_domain.clone().unwrap_or_default(),
            master_version: c.master_version,
            map: c.domain_map.clone(),
        };
        Ok((p, i64::from(c.host_id)))
    }

    /// Applies a manager's pool to the state and the monitors. A moved master means the
    /// lease moved with it, taken afresh no earlier than `started`.
    fn apply_managed(&self, inner: &mut Inner, p: manager::Pool, started: Instant) {
        let moved = inner
            .state
            .connection()
            .is_some_and(|c| c.master_domain.as_deref() != Some(p.master.as_str()));
        if moved && inner.state.spm() != SpmRole::Free {
            inner.spm_renewed = Some(started);
            inner.spm_renew_started = Some(started);
        }
        inner.state.set_map(p.map);
        inner.state.set_master(&p.master, p.master_version);
        let Inner {
            state, monitors, ..
        } = inner;
        monitors.sync(state.active_domains(), Instant::now());
        self.mark_dirty();
    }

    /// `spmStart` under the host's lock: the task id, and whether the role was taken now.
    fn start_spm(
        &self,
        inner: &mut Inner,
        params: &SpmStartParams,
    ) -> Result<(String, bool), VdsmError> {
        Self::fence(inner, self.pool_storage.lease, Instant::now());
        let c = inner.state.pool(&params.storagepool_id)?;
        let task = uuid::Uuid::new_v4().to_string();
        if inner.state.spm() != SpmRole::Free {
            return Ok((task, false));
        }
        let master = c.master_domain.clone().unwrap_or_default();
        let host_id = i64::from(c.host_id);
        let disk = inner.state.backend() == Some(Backend::Disk);
        let started = Instant::now();
        let lver = self
            .holder(inner, host_id)
            .acquire(&self.pool_storage.domains, &master)?;
        if disk {
            // sp.py `startSpm`: `setSpmStatus(lver, id)` writes the disk backend's keys.
            let written = self.pool_storage.domains.read(&master).and_then(|mut md| {
                md.set(super::metadata::key::POOL_SPM_LVER, lver.to_string());
                md.set(super::metadata::key::POOL_SPM_ID, host_id.to_string());
                self.pool_storage.domains.write(&master, &md)
            });
            if let Err(e) = written {
                self.holder(inner, host_id)
                    .release(&self.pool_storage.domains, &master);
                return Err(e.vdsm(true));
            }
        }
        if params.prev_id != -1 || params.prev_lver != -1 {
            tracing::info!(host = %self.name, prev_id = params.prev_id, prev_lver = params.prev_lver, lver, "spmStart with a previous pool manager");
        }
        inner.state.set_spm(SpmRole::Spm { lver });
        inner.spm_renewed = Some(started);
        inner.spm_renew_started = Some(started);
        Ok((task, true))
    }

    /// `StorageDomain.detach` forced (hsm.py `forcedDetachStorageDomain`). Only the blank pool
    /// is served (the domain leaves every pool its metadata names, no connection needed); a
    /// forced detach from a connected pool is refused.
    fn forced_detach(&self, params: &DomainParams) -> Result<(), VdsmError> {
        let mut inner = self.lock();
        let sd = params.storagedomain_id.to_ascii_lowercase();
        let result = if params.storagepool_id == super::metadata::BLANK_UUID {
            let holder = self.holder(&inner, manager::RESERVED_HOST_ID);
            manager::detach_from_every_pool(&self.pool_storage.domains, holder, &sd)
        } else {
            Err(VdsmError::new(
                ErrorCode::InvalidParams,
                format!(
                    "forced detach is served for the blank pool only (storagepoolID {})",
                    super::metadata::BLANK_UUID
                ),
            ))
        };
        inner.log_call(method::DOMAIN_DETACH, result.is_ok());
        drop(inner);
        tracing::info!(host = %self.name, domain = %sd, ok = result.is_ok(), "forced detach from every pool");
        result
    }

    /// `spmStop` under the host's lock; true when the role was given up now.
    fn stop_spm(&self, inner: &mut Inner, params: &PoolParams) -> Result<bool, VdsmError> {
        Self::fence(inner, self.pool_storage.lease, Instant::now());
        let c = inner.state.pool(&params.storagepool_id)?;
        let tasks = self.tasks.load(Ordering::Acquire);
        if tasks > 0 {
            return Err(VdsmError::new(
                ErrorCode::SpmStopError,
                format!("spUUID={}: {tasks} unfinished task(s)", c.uuid),
            ));
        }
        if inner.state.spm() == SpmRole::Free {
            return Ok(false);
        }
        let master = c.master_domain.clone().unwrap_or_default();
        let host_id = i64::from(c.host_id);
        if inner.state.backend() == Some(Backend::Disk) {
            // sp.py `stopSpm`: `setSpmStatus(spmId=SPM_ID_FREE)`, failures ignored.
            let freed = self.pool_storage.domains.read(&master).and_then(|mut md| {
                md.set(super::metadata::key::POOL_SPM_ID, "-1");
                self.pool_storage.domains.write(&master, &md)
            });
            if let Err(e) = freed {
                tracing::warn!(host = %self.name, error = %e, "POOL_SPM_ID not freed");
            }
        }
        self.holder(inner, host_id)
            .release(&self.pool_storage.domains, &master);
        inner.state.set_spm(SpmRole::Free);
        inner.spm_renewed = None;
        Ok(true)
    }
}

impl Inner {
    fn log_call(&mut self, verb: &'static str, ok: bool) {
        if self.calls.len() == CALL_LOG_LEN {
            self.calls.pop_front();
        }
        self.calls.push_back(ReceivedCall {
            at: SystemTime::now(),
            verb,
            connect: verb == method::POOL_CONNECT,
            ok,
            held: self.state.connection().cloned(),
        });
        self.calls_total += 1;
    }
}

impl Verbs for HostAgent {
    fn connect(&self, params: ConnectParams) -> Result<(), VdsmError> {
        let master = params.master_sd_uuid.as_str();
        let mut inner = self.lock();
        // The checks that need no storage come first, as in hsm.py.
        let refused = inner.state.connect_backend(&params).err().or_else(|| {
            let read = (!master.is_empty()).then(|| self.pool_storage.domains.read(master));
            inner.state.connect(&params, master, read.as_ref()).err()
        });
        inner.log_call(method::POOL_CONNECT, refused.is_none());
        if let Some(e) = refused {
            drop(inner);
            tracing::info!(host = %self.name, pool = %params.storagepool_id, code = e.code.code(), "connect refused");
            return Err(e);
        }
        let Inner {
            state, monitors, ..
        } = &mut *inner;
        let monitors_changed = monitors.sync(state.active_domains(), Instant::now());
        let active = monitors.len();
        drop(inner);
        tracing::info!(host = %self.name, pool = %params.storagepool_id, host_id = params.host_id, active, monitors_changed, "connected to pool");
        // The map itself is in the report, so any connect may change it.
        self.mark_dirty();
        Ok(())
    }

    fn disconnect(&self, params: DisconnectParams) -> Result<(), VdsmError> {
        let mut inner = self.lock();
        Self::fence(&mut inner, self.pool_storage.lease, Instant::now());
        let changed = inner.state.disconnect(&params);
        inner.log_call(method::POOL_DISCONNECT, changed.is_ok());
        if changed? {
            inner.monitors.sync(std::iter::empty(), Instant::now());
            drop(inner);
            tracing::info!(host = %self.name, pool = %params.storagepool_id, "disconnected from pool");
            self.mark_dirty();
        }
        Ok(())
    }

    fn get_info(&self, params: GetInfoParams) -> Result<PoolInfo, VdsmError> {
        let inner = self.lock();
        let mut info = inner.state.info(&params.storagepool_id)?;
        if inner.state.backend() == Some(Backend::Disk) {
            // StoragePoolDiskBackend.getInfo: name and pool-manager keys from the master (a
            // master that cannot be read is 304, sp.py `getInfo`).
            let md = self
                .pool_storage
                .domains
                .read(&info.info.master_uuid)
                .map_err(|e| {
                    VdsmError::new(
                        ErrorCode::StoragePoolMasterNotFound,
                        format!("master domain {}: {e}", info.info.master_uuid),
                    )
                })?;
            let (spm_id, lver) = md.spm().unwrap_or((None, None));
            info.info.name = md
                .get(super::metadata::key::POOL_DESCRIPTION)
                .unwrap_or_default()
                .to_owned();
            info.info.lver = lver.unwrap_or(-1);
            info.info.spm_id = spm_id.unwrap_or(-1);
        }
        Ok(info)
    }

    fn repo_stats(&self) -> BTreeMap<String, Vitals> {
        self.lock().monitors.vitals(Instant::now())
    }

    fn connected_pools(&self) -> Vec<String> {
        self.lock()
            .state
            .report()
            .map(|c| vec![c.uuid])
            .unwrap_or_default()
    }

    fn spm_start(&self, params: SpmStartParams) -> Result<String, VdsmError> {
        let mut inner = self.lock();
        let result = self.start_spm(&mut inner, &params);
        inner.log_call(method::POOL_SPM_START, result.is_ok());
        let started = matches!(result, Ok((_, true)));
        drop(inner);
        if started {
            tracing::info!(host = %self.name, pool = %params.storagepool_id, "pool manager started");
            self.mark_dirty();
        }
        result.map(|(task, _)| task)
    }

    fn spm_stop(&self, params: PoolParams) -> Result<(), VdsmError> {
        let mut inner = self.lock();
        let result = self.stop_spm(&mut inner, &params);
        inner.log_call(method::POOL_SPM_STOP, result.is_ok());
        drop(inner);
        if result == Ok(true) {
            tracing::info!(host = %self.name, pool = %params.storagepool_id, "pool manager stopped");
            self.mark_dirty();
        }
        result.map(|_| ())
    }

    fn spm_status(&self, params: PoolParams) -> Result<SpmStatusResult, VdsmError> {
        let mut inner = self.lock();
        Self::fence(&mut inner, self.pool_storage.lease, Instant::now());
        let c = inner.state.pool(&params.storagepool_id)?;
        let master = c.master_domain.clone().unwrap_or_default();
        let domains = &self.pool_storage.domains;
        let (spm_lver, spm_id) = if inner.state.backend() == Some(Backend::Disk) {
            // StoragePoolDiskBackend.getSpmStatus: the master's POOL_SPM_LVER and POOL_SPM_ID.
            let md = domains.read(&master).map_err(|e| e.vdsm(false))?;
            let (id, lver) = md
                .spm()
                .map_err(|e| VdsmError::new(ErrorCode::MetaDataValidationError, e.to_string()))?;
            (lver.unwrap_or(-1), id.unwrap_or(-1))
        } else {
            // StoragePoolMemoryBackend.getSpmStatus: an inquire of the master's lease.
            let (lver, holder) = domains
                .inquire_lease(&master, self.pool_storage.lease.duration)
                .map_err(manager::lease_error)?;
            (if lver > 0 { lver } else { -1 }, holder.unwrap_or(-1))
        };
        Ok(SpmStatusResult {
            spm_st: SpmStatus {
                spm_status: inner.state.spm().name().to_owned(),
                spm_lver,
                spm_id,
            },
        })
    }

    fn create(&self, params: CreateParams) -> Result<(), VdsmError> {
        let mut inner = self.lock();
        let holder = self.holder(&inner, manager::RESERVED_HOST_ID);
        let result = manager::create(
            &self.pool_storage.domains,
            holder,
            &params.storagepool_id.to_ascii_lowercase(),
            &params.name,
            &params.master_sd_uuid.to_ascii_lowercase(),
            params.master_version,
            &params
                .domain_list
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect::<Vec<_>>(),
        );
        inner.log_call(method::POOL_CREATE, result.is_ok());
        result
    }

    fn domain_verb(&self, verb: &str, params: DomainParams) -> Result<(), VdsmError> {
        if verb == method::DOMAIN_DETACH && params.force {
            return self.forced_detach(&params);
        }
        let mut inner = self.lock();
        let started = Instant::now();
        let (mut pool, host_id) = self.managed_pool(&mut inner, &params.storagepool_id)?;
        let sd = params.storagedomain_id.to_ascii_lowercase();
        let domains = &self.pool_storage.domains;
        let holder = self.holder(&inner, host_id);
        let result = match verb {
            method::DOMAIN_ATTACH => pool.attach(domains, holder, &sd),
            method::DOMAIN_ACTIVATE => pool.activate(domains, &sd),
            method::DOMAIN_DEACTIVATE => pool.deactivate(
                domains,
                holder,
                &sd,
                &params.master_sd_uuid.to_ascii_lowercase(),
                params.master_version,
            ),
            _ => pool.detach(domains, &sd),
        };
        // A failed migration may still have moved the master (VDSM's point of no return);
        // the pool value says what holds.
        self.apply_managed(&mut inner, pool, started);
        let logged = match verb {
            method::DOMAIN_ATTACH => method::DOMAIN_ATTACH,
            method::DOMAIN_ACTIVATE => method::DOMAIN_ACTIVATE,
            method::DOMAIN_DEACTIVATE => method::DOMAIN_DEACTIVATE,
            _ => method::DOMAIN_DETACH,
        };
        inner.log_call(logged, result.is_ok());
        drop(inner);
        tracing::info!(host = %self.name, verb, domain = %sd, ok = result.is_ok(), "pool manager verb");
        result
    }

    fn switch_master(&self, params: SwitchMasterParams) -> Result<(), VdsmError> {
        let mut inner = self.lock();
        let started = Instant::now();
        let (mut pool, host_id) = match self.managed_pool(&mut inner, &params.storagepool_id) {
            Ok(p) => p,
            Err(e) => {
                inner.log_call(method::POOL_SWITCH_MASTER, false);
                return Err(e);
            }
        };
        let old = params.old_master_uuid.to_ascii_lowercase();
        if pool.master != old {
            inner.log_call(method::POOL_SWITCH_MASTER, false);
            return Err(VdsmError::new(
                ErrorCode::StoragePoolWrongMaster,
                format!(
                    "spUUID={}, msdUUID={old}: not the current master",
                    pool.uuid
                ),
            ));
        }
        let holder = self.holder(&inner, host_id);
        let result = pool.migrate(
            &self.pool_storage.domains,
            holder,
            &old,
            &params.new_master_uuid.to_ascii_lowercase(),
            params.master_version,
        );
        self.apply_managed(&mut inner, pool, started);
        inner.log_call(method::POOL_SWITCH_MASTER, result.is_ok());
        drop(inner);
        tracing::info!(host = %self.name, pool = %params.storagepool_id, new_master = %params.new_master_uuid, master_version = params.master_version, ok = result.is_ok(), "switchMaster");
        result
    }

    fn refresh(&self, params: RefreshParams) -> Result<(), VdsmError> {
        let master = params.master_sd_uuid.as_str();
        let mut inner = self.lock();
        let read = (!master.is_empty()).then(|| self.pool_storage.domains.read(master));
        let result = inner.state.refresh(
            &params.storagepool_id,
            master,
            params.master_version,
            read.as_ref(),
        );
        inner.log_call(method::POOL_REFRESH, result.is_ok());
        result?;
        let Inner {
            state, monitors, ..
        } = &mut *inner;
        monitors.sync(state.active_domains(), Instant::now());
        drop(inner);
        self.mark_dirty();
        Ok(())
    }

    fn reconstruct_master(&self, params: ReconstructMasterParams) -> Result<(), VdsmError> {
        let mut inner = self.lock();
        let pool = params.storagepool_id.to_ascii_lowercase();
        let result = if inner.state.pool(&pool).is_ok() {
            Err(VdsmError::new(
                ErrorCode::StoragePoolConnected,
                format!("connected to pool {pool}"),
            ))
        } else {
            let map = params
                .domain_dict
                .iter()
                .map(|(sd, s)| (sd.to_ascii_lowercase(), *s))
                .collect();
            manager::reconstruct(
                &self.pool_storage.domains,
                self.holder(&inner, i64::from(params.host_id)),
                &pool,
                &params.name,
                &params.master_sd_uuid.to_ascii_lowercase(),
                params.master_version,
                &map,
            )
        };
        inner.log_call(method::POOL_RECONSTRUCT_MASTER, result.is_ok());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::domains::write_new_domain;
    use crate::agent::sim::{FaultTable, SimStorage};
    use crate::api::MapStatus;

    const SP: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";
    const A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";
    const LEASE: SpmLease = SpmLease {
        duration: Duration::from_secs(60),
        renew_every: Duration::from_secs(5),
    };

    fn host(index: usize, root: &std::path::Path) -> HostAgent {
        let storage: Arc<dyn Storage> =
            Arc::new(SimStorage::new(Arc::new(FaultTable::default()), index));
        let pool_storage = PoolStorage {
            domains: FileDomains::new(root),
            lease: LEASE,
        };
        HostAgent::new(
            index,
            format!("h{index}"),
            String::new(),
            storage,
            pool_storage,
            None,
        )
    }

    fn connected(index: usize, root: &std::path::Path) -> HostAgent {
        let h = host(index, root);
        let id = i32::try_from(index + 1).expect("id");
        h.connect(ConnectParams {
            storagepool_id: SP.into(),
            host_id: id,
            scsi_key: String::new(),
            master_sd_uuid: A.into(),
            master_version: 1,
            domain_dict: Some([(A.to_owned(), MapStatus::Active)].into_iter().collect()),
        })
        .expect("connects");
        h
    }

    fn spm_start() -> SpmStartParams {
        SpmStartParams {
            storagepool_id: SP.into(),
            prev_id: -1,
            prev_lver: -1,
            enable_scsi_fencing: false,
            max_host_id: 250,
            dom_version: None,
        }
    }

    fn pool_on_storage() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        write_new_domain(dir.path(), "m", A).expect("layout");
        let h = host(9, dir.path());
        h.create(CreateParams {
            storagepool_id: SP.into(),
            name: "dc".into(),
            master_sd_uuid: A.into(),
            master_version: 1,
            domain_list: vec![A.into()],
        })
        .expect("creates");
        dir
    }

    #[test]
    fn a_holder_that_cannot_renew_gives_the_role_up_before_anyone_may_take_it() {
        let dir = pool_on_storage();
        let (a, b) = (connected(0, dir.path()), connected(1, dir.path()));
        a.spm_start(spm_start()).expect("a is pool manager");
        let t0 = Instant::now();
        // Renewals keep the role.
        let (master, owner) = a.spm_renewal_due(t0 + LEASE.renew_every).expect("due");
        a.renew_spm(&master, &owner, t0 + LEASE.renew_every);
        assert!(!a.fence_if_stale(t0 + LEASE.renew_every + LEASE.duration / 2));
        assert_eq!(
            b.spm_start(spm_start()).map_err(|e| e.code),
            Err(ErrorCode::AcquireLockFailure)
        );
        // No renewal for half the lease: the holder stops acting as pool manager, and its
        // pool-manager verbs fail with 654 from then on.
        assert!(a.fence_if_stale(t0 + LEASE.renew_every + LEASE.duration));
        assert_eq!(a.spm_role(), SpmRole::Free);
        let attach = DomainParams {
            storagedomain_id: A.into(),
            storagepool_id: SP.into(),
            master_sd_uuid: String::new(),
            master_version: 0,
            force: false,
        };
        assert_eq!(
            a.domain_verb(method::DOMAIN_ATTACH, attach)
                .map_err(|e| e.code),
            Err(ErrorCode::SpmStatusError)
        );
    }

    #[test]
    fn a_restarted_holder_holds_nothing_and_its_renewals_are_dropped() {
        let dir = pool_on_storage();
        let a = connected(0, dir.path());
        a.spm_start(spm_start()).expect("a is pool manager");
        let later = Instant::now() + LEASE.renew_every;
        let (master, owner) = a.spm_renewal_due(later).expect("due");
        a.restart();
        a.renew_spm(&master, &owner, later);
        assert_eq!(a.spm_role(), SpmRole::Free);
        assert!(a.spm_renewal_due(later + LEASE.renew_every).is_none());
    }

    #[test]
    fn a_renewal_racing_a_master_switch_keeps_the_role_and_the_next_one_renews_the_new_master() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_new_domain(dir.path(), "a", A).expect("layout");
        write_new_domain(dir.path(), "b", B).expect("layout");
        host(9, dir.path())
            .create(CreateParams {
                storagepool_id: SP.into(),
                name: "dc".into(),
                master_sd_uuid: A.into(),
                master_version: 1,
                domain_list: vec![A.into(), B.into()],
            })
            .expect("creates");
        let a = host(0, dir.path());
        a.connect(ConnectParams {
            storagepool_id: SP.into(),
            host_id: 1,
            scsi_key: String::new(),
            master_sd_uuid: A.into(),
            master_version: 1,
            domain_dict: Some(
                [
                    (A.to_owned(), MapStatus::Active),
                    (B.to_owned(), MapStatus::Active),
                ]
                .into_iter()
                .collect(),
            ),
        })
        .expect("connects");
        a.spm_start(spm_start()).expect("a is pool manager");
        let due = Instant::now() + LEASE.renew_every;
        // The driver starts renewing A's lease; the switch moves the role's lease to B and
        // releases A's before that renewal finishes.
        let (master, owner) = a.spm_renewal_due(due).expect("due");
        assert_eq!(master, A);
        a.switch_master(SwitchMasterParams {
            storagepool_id: SP.into(),
            old_master_uuid: A.into(),
            new_master_uuid: B.into(),
            master_version: 2,
        })
        .expect("switches");
        a.renew_spm(&master, &owner, due);
        assert!(
            matches!(a.spm_role(), SpmRole::Spm { .. }),
            "the role survives the stale renewal"
        );
        let (master, _) = a
            .spm_renewal_due(due + LEASE.renew_every)
            .expect("due again");
        assert_eq!(master, B, "renewals follow the master");
    }
}
