//! The call ledger: what was sent to which host, when, and what became of it. It is the only
//! state outside the API server that the planner reads (the waves of calls not yet sent are the
//! last plan's, and the view memo is a cache). The planner reads a snapshot of it (part of
//! [`crate::plan::Observed`]) and decides from it whether to call, wait or back off, and what to
//! record or forget ([`crate::plan::Plan::ledger`]); how an entry changes is
//! [`crate::plan::ledger::HostCalls`]'s to say. This module only keeps the entries under a lock,
//! and drops those of hosts that no longer exist.
//!
//! Losing the ledger (a restart, a new leader) costs at most one repeated call per host, a failing
//! host starts its backoff again from 1 s, and a host whose report never confirmed what it was
//! told stops holding those domains (see [`crate::plan::ledger::HostCalls::may_monitor`]; its
//! report still holds what it shows).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use jiff::Timestamp;

use crate::plan::{
    CallFailure, HostCall,
    ledger::{HostCalls, LedgerOp},
    manager::{ManagerCall, ManagerCalls},
};

/// The ledger of host calls.
#[derive(Debug, Default)]
pub struct Ledger {
    hosts: Mutex<HashMap<String, HostCalls>>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HostCalls>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entries of `hosts` (those with one), for the planner.
    pub fn snapshot<'a>(
        &self,
        hosts: impl IntoIterator<Item = &'a str>,
    ) -> BTreeMap<String, HostCalls> {
        let map = self.lock();
        if map.is_empty() {
            return BTreeMap::new();
        }
        hosts
            .into_iter()
            .filter_map(|h| map.get(h).map(|e| (h.to_owned(), e.clone())))
            .collect()
    }

    /// Applies what the plan decided.
    pub fn apply(&self, ops: &[LedgerOp]) {
        if ops.is_empty() {
            return;
        }
        let mut map = self.lock();
        for op in ops {
            let host = match op {
                LedgerOp::Confirmed { host, .. } | LedgerOp::Lapsed { host, .. } => host,
            };
            if let Some(entry) = map.remove(host)
                && let Some(kept) = entry.apply(op)
            {
                map.insert(host.clone(), kept);
            }
        }
    }

    /// Records a call that starts at `now` and returns the instant that identifies it, unless a
    /// call to the same host is in flight (`None`: never two calls to one host at once, even when
    /// two plans named it).
    pub fn start(
        &self,
        pool: &str,
        call: &HostCall,
        boot_id: &str,
        timeout: Duration,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let mut map = self.lock();
        if crate::plan::ledger::in_flight(map.get(call.host()), timeout, now) {
            return None;
        }
        let previous = map.remove(call.host());
        let entry = HostCalls::started(previous, pool, call, boot_id, now);
        map.insert(call.host().to_owned(), entry);
        Some(now)
    }

    /// Records the answer to the host's call that started at `sent_at`.
    pub fn finished(&self, host: &str, sent_at: Timestamp, result: &Result<(), CallFailure>) {
        if let Some(entry) = self.lock().get_mut(host) {
            entry.finished(sent_at, result, Timestamp::now());
        }
    }

    /// Drops the entries of hosts that no longer exist, so the ledger follows the cluster, not its
    /// history (O(entries), and most hosts have none: an entry goes once its host is in sync).
    pub fn retain_hosts(&self, exists: impl Fn(&str) -> bool) {
        let mut map = self.lock();
        if !map.is_empty() {
            map.retain(|host, _| exists(host));
        }
    }
}

/// Each pool's last pool-manager call (`spmStart`/`spmStop`) and what became of it: the
/// planner's input for one call per pool at a time and its backoff
/// ([`crate::plan::manager`]). Lost on restart like the host ledger: the record in the pool's
/// status and the hosts' reports say what the next call must be. Keyed by the pool's
/// `metadata.uid`, not its name: a pool deleted and created again under the same name is a new
/// pool, which must not take the old one's calls (an accepted `create` for its own).
#[derive(Debug, Default)]
pub struct Managers {
    pools: Mutex<HashMap<String, ManagerCalls>>,
}

impl Managers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, ManagerCalls>> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pool's entry, if any.
    pub fn get(&self, pool_uid: &str) -> Option<ManagerCalls> {
        self.lock().get(pool_uid).cloned()
    }

    /// Forgets the pool's entry of the call started at `sent_at` (it did what it asked); an
    /// entry of a call started since is kept.
    pub fn confirm(&self, pool_uid: &str, sent_at: Timestamp) {
        let mut map = self.lock();
        if map.get(pool_uid).is_some_and(|e| e.sent_at == sent_at) {
            map.remove(pool_uid);
        }
    }

    /// Records that `call` starts now for the pool, unless a call of the pool is still in flight;
    /// returns the call's start (its identity) when it may be sent.
    pub fn start(
        &self,
        pool_uid: &str,
        call: &ManagerCall,
        boot_id: &str,
        timeout: Duration,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let mut map = self.lock();
        if map.get(pool_uid).is_some_and(|e| e.in_flight(timeout, now)) {
            return None;
        }
        let entry = ManagerCalls::started(map.remove(pool_uid), call, boot_id, now);
        map.insert(pool_uid.to_owned(), entry);
        Some(now)
    }

    /// Records the answer to the call started at `sent_at`.
    pub fn finished(&self, pool_uid: &str, sent_at: Timestamp, result: &Result<(), CallFailure>) {
        if let Some(entry) = self.lock().get_mut(pool_uid) {
            entry.finished(sent_at, result, Timestamp::now());
        }
    }

    /// Drops the entries of pools that no longer exist.
    pub fn retain_pools(&self, exists: impl Fn(&str) -> bool) {
        let mut map = self.lock();
        if !map.is_empty() {
            map.retain(|uid, _| exists(uid));
        }
    }
}
