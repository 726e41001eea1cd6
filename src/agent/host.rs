//! One host as the agent (or one virtual host of the simulator) runs it: identity, the in-memory
//! pool connection, its monitors, and the VDSM verbs over them.
//!
//! State changes mark the host dirty and wake the reporter; nothing here talks to Kubernetes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedSender;

use super::monitor::{Monitors, ReadResult};
use super::state::PoolState;
use super::storage::Storage;
use crate::api::{HostReport, PoolConnection};
use crate::protocol::wire::{ConnectParams, DisconnectParams, GetInfoParams, PoolInfo};
use crate::protocol::{VdsmError, Verbs, Vitals};

/// The agent version written in reports.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug)]
struct Inner {
    boot_id: String,
    state: PoolState,
    monitors: Monitors,
    calls: VecDeque<ReceivedCall>,
    calls_total: u64,
}

/// How many of its latest pool calls a host keeps in its call log.
pub const CALL_LOG_LEN: usize = 64;

/// One pool call a host received, as its call log keeps it: what fault tests read to prove that
/// no host was ever told to drop a domain that was not leaving, and when the last call came.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedCall {
    /// When the host handled the call.
    pub at: SystemTime,
    /// `StoragePool.connect` (`true`) or `StoragePool.disconnect` (`false`).
    pub connect: bool,
    /// Whether the host accepted it.
    pub ok: bool,
    /// The connection the host holds after the call.
    pub held: Option<PoolConnection>,
}

/// One host: what it holds in memory and how it answers the verbs.
pub struct HostAgent {
    index: usize,
    name: String,
    endpoint: String,
    storage: Arc<dyn Storage>,
    inner: Mutex<Inner>,
    dirty: AtomicBool,
    changes: Option<UnboundedSender<usize>>,
    blackholed: AtomicBool,
    rpc_dropped: AtomicBool,
    report_frozen: AtomicBool,
    latency_ms: AtomicU64,
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
    /// read `storage`. `changes` receives `index` whenever the report may have changed (no
    /// reporter: `None`). A fresh boot: new bootId, no pool.
    pub fn new(
        index: usize,
        name: String,
        endpoint: String,
        storage: Arc<dyn Storage>,
        changes: Option<UnboundedSender<usize>>,
    ) -> Self {
        let host = Self {
            index,
            name,
            endpoint,
            storage,
            inner: Mutex::new(Inner {
                boot_id: uuid::Uuid::new_v4().to_string(),
                state: PoolState::default(),
                monitors: Monitors::default(),
                calls: VecDeque::new(),
                calls_total: 0,
            }),
            dirty: AtomicBool::new(false),
            changes,
            blackholed: AtomicBool::new(false),
            rpc_dropped: AtomicBool::new(false),
            report_frozen: AtomicBool::new(false),
            latency_ms: AtomicU64::new(0),
        };
        host.mark_dirty();
        host
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its RPC endpoint URL, as registered in `Host.spec.endpoint`.
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
        let domains = inner.monitors.report();
        HostReport {
            agent_version: AGENT_VERSION.to_owned(),
            boot_id: inner.boot_id.clone(),
            pool: inner.state.report(),
            domain_count: i32::try_from(domains.len()).unwrap_or(i32::MAX),
            domains,
        }
    }

    /// Loses everything held in memory, as a process restart does: new bootId, no pool, no
    /// monitors (reads in flight are ignored when they return).
    pub fn restart(&self) {
        {
            let mut inner = self.lock();
            inner.boot_id = uuid::Uuid::new_v4().to_string();
            inner.state = PoolState::default();
            inner.monitors.sync(std::iter::empty(), Instant::now());
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
}

impl Inner {
    fn log_call(&mut self, connect: bool, ok: bool) {
        if self.calls.len() == CALL_LOG_LEN {
            self.calls.pop_front();
        }
        self.calls.push_back(ReceivedCall {
            at: SystemTime::now(),
            connect,
            ok,
            held: self.state.connection().cloned(),
        });
        self.calls_total += 1;
    }
}

impl Verbs for HostAgent {
    fn connect(&self, params: ConnectParams) -> Result<(), VdsmError> {
        let mut inner = self.lock();
        let result = inner.state.connect(&params);
        inner.log_call(true, result.is_ok());
        if let Err(e) = result {
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
        let changed = inner.state.disconnect(&params);
        inner.log_call(false, true);
        if changed {
            inner.monitors.sync(std::iter::empty(), Instant::now());
            drop(inner);
            tracing::info!(host = %self.name, pool = %params.storagepool_id, "disconnected from pool");
            self.mark_dirty();
        }
        Ok(())
    }

    fn get_info(&self, params: GetInfoParams) -> Result<PoolInfo, VdsmError> {
        self.lock().state.info(&params.storagepool_id)
    }

    fn repo_stats(&self) -> BTreeMap<String, Vitals> {
        self.lock().monitors.vitals(Instant::now())
    }
}
