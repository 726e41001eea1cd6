//! The call ledger: what was sent to which host, when, and what became of it. It is the
//! controller's only state outside the API server. The planner reads a snapshot of it (part of
//! [`crate::plan::Observed`]) and decides from it whether to call, wait or back off, and when to
//! forget; this module only records and applies, it decides nothing.
//!
//! Losing the ledger (a restart, a new leader) costs at most one repeated call per host.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use jiff::Timestamp;

use crate::plan::{
    CallFailure, HostCall,
    ledger::{CallKey, CallState, HostCalls, LedgerOp, SentCall},
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

    /// Applies what the plan asked for.
    pub fn apply(&self, ops: &[LedgerOp], now: Timestamp) {
        if ops.is_empty() {
            return;
        }
        let mut map = self.lock();
        for op in ops {
            match op {
                LedgerOp::Confirmed { host } => {
                    map.remove(host);
                }
                LedgerOp::Lapsed { host } => {
                    if let Some(entry) = map.get_mut(host) {
                        entry.failures = entry.failures.saturating_add(1);
                        entry.last.state = CallState::Lapsed { at: now };
                    }
                }
            }
        }
    }

    /// Records a call that starts now (sent by `pool`'s reconcile, to a host with `boot_id`).
    pub fn started(&self, pool: &str, call: &HostCall, boot_id: &str, now: Timestamp) {
        let mut map = self.lock();
        let failures = map.get(call.host()).map_or(0, |e| e.failures);
        map.insert(
            call.host().to_owned(),
            HostCalls {
                pool: pool.to_owned(),
                failures,
                last: SentCall {
                    key: CallKey::of(call),
                    boot_id: boot_id.to_owned(),
                    sent_at: now,
                    state: CallState::InFlight,
                },
            },
        );
    }

    /// Records the answer to the host's call: accepted, or a failure (counted).
    pub fn finished(&self, host: &str, result: &Result<(), CallFailure>, now: Timestamp) {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(host) else {
            return;
        };
        entry.last.state = match result {
            Ok(()) => CallState::Accepted { at: now },
            Err(failure) => {
                entry.failures = entry.failures.saturating_add(1);
                CallState::Failed {
                    at: now,
                    failure: failure.clone(),
                }
            }
        };
    }

    /// Drops the entries of hosts that no longer exist, so the ledger follows the cluster, not its
    /// history.
    pub fn retain_hosts(&self, exists: impl Fn(&str) -> bool) {
        self.lock().retain(|host, _| exists(host));
    }

    /// How many hosts have an entry.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no host has an entry.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
