//! The call ledger's rules: whether a host that needs a call gets one now, waits for the call it
//! already has, or backs off; and what the ledger must record about it (confirmed: forget the
//! failures; accepted but never confirmed: count a failure). Pure: the ledger itself is kept by the
//! shell, which hands the planner a snapshot ([`super::Observed::ledger`]) and applies the
//! [`LedgerOp`]s the plan returns.
//!
//! Why a ledger at all: the agent's report reaches the cache some time after the host accepted a
//! call, so for a while a host that was just told looks out of sync. Without the ledger every
//! reconcile in that window would repeat the call; with it, the call is repeated only when it
//! differs (the map changed, the host restarted), when the host did not confirm it within
//! `connectTimeoutSeconds`, or after a backoff that follows failures.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{CallFailure, CallKind, HostCall};
use crate::api::{DomainMap, MapStatus, PoolBackend, PoolConnection, SyncSpec};

/// The first retry delay after a failure; it doubles per consecutive failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the ledger holds about one host: the last call sent to it, how many calls in a row failed
/// to get it in sync, and why it is failing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCalls {
    /// The pool whose reconcile sent the last call (only that pool confirms the entry).
    pub pool: String,
    /// Consecutive calls that failed or were accepted and never confirmed; reset once the host is
    /// seen in sync.
    pub failures: u32,
    /// Why the host is failing. Kept while a retry is in flight (the host is still failing until a
    /// call is accepted, or, after a lapse, until it is seen in sync).
    pub failure: Option<Failure>,
    /// The domains that calls before the last one, since the host was last seen in sync, may have
    /// made it monitor (under the last call's bootId): until its report confirms a map, the
    /// controller cannot tell which of them it still monitors ([`HostCalls::may_monitor`]).
    /// Shared: every reconcile's snapshot of the ledger copies each entry.
    pub told: Arc<BTreeSet<String>>,
    /// The last call.
    pub last: SentCall,
}

/// Why a host's calls fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The host refused the call, or did not answer in time.
    Refused(CallFailure),
    /// The host accepted the call but did not confirm it (in its report) in time.
    Unconfirmed,
}

impl HostCalls {
    /// The entry after a call starts at `now` (sent by `pool`'s reconcile to a host reporting
    /// `boot_id`): failures and their reason carry over from `previous`.
    pub fn started(
        previous: Option<Self>,
        pool: &str,
        call: &HostCall,
        boot_id: &str,
        now: Timestamp,
    ) -> Self {
        // A host that restarted since the earlier calls lost what they told it.
        let told = previous
            .as_ref()
            .filter(|p| p.last.boot_id == boot_id)
            .map(|p| Arc::new(p.may_monitor().map(str::to_owned).collect()))
            .unwrap_or_default();
        let (failures, failure) = previous.map_or((0, None), |p| (p.failures, p.failure));
        let map = match call {
            HostCall::Connect { params, .. } | HostCall::Refresh { params, .. } => {
                params.domain_map.clone()
            }
            HostCall::Disconnect { .. } => DomainMap::default(),
        };
        Self {
            pool: pool.to_owned(),
            failures,
            failure,
            told,
            last: SentCall {
                key: CallKey::of(call),
                boot_id: boot_id.to_owned(),
                map,
                sent_at: now,
                state: CallState::InFlight,
            },
        }
    }

    /// The domains (uuids) the calls since the host was last seen in sync may have made it
    /// monitor: every connect's `active` entries, but for a last call the host refused (it
    /// answered with an error, so it did not take it). A call in flight, accepted, or without an
    /// answer (a timeout, a transport error) may have been taken. Only under
    /// [`SentCall::boot_id`]: a host that restarted since holds none of them.
    pub fn may_monitor(&self) -> impl Iterator<Item = &str> {
        let refused = matches!(self.last.state, CallState::Failed { .. })
            && matches!(&self.failure, Some(Failure::Refused(f)) if f.code.is_some());
        let last = (!refused).then(|| self.last.map.active());
        self.told
            .iter()
            .map(String::as_str)
            .chain(last.into_iter().flatten())
    }

    /// Records the answer at `now` to the call sent at `sent_at` (an answer to an older call is
    /// ignored): accepted, or a failure, counted.
    pub fn finished(
        &mut self,
        sent_at: Timestamp,
        result: &Result<(), CallFailure>,
        now: Timestamp,
    ) {
        if self.last.sent_at != sent_at || self.last.state != CallState::InFlight {
            return;
        }
        match result {
            Ok(()) => {
                self.last.state = CallState::Accepted { at: now };
                // A lapse is only over once the host confirms; a refusal is over now.
                if matches!(self.failure, Some(Failure::Refused(_))) {
                    self.failure = None;
                }
            }
            Err(failure) => {
                self.failures = self.failures.saturating_add(1);
                self.failure = Some(Failure::Refused(failure.clone()));
                self.last.state = CallState::Failed { at: now };
            }
        }
    }

    /// Applies a plan's decision about this host; `None` when the entry is to be dropped.
    pub fn apply(mut self, op: &LedgerOp) -> Option<Self> {
        match op {
            LedgerOp::Confirmed { sent_at, .. } => (self.last.sent_at != *sent_at).then_some(self),
            LedgerOp::Lapsed { sent_at, at, .. } => {
                if self.last.sent_at == *sent_at
                    && matches!(self.last.state, CallState::Accepted { .. })
                {
                    self.failures = self.failures.saturating_add(1);
                    self.failure = Some(Failure::Unconfirmed);
                    self.last.state = CallState::Lapsed { at: *at };
                }
                Some(self)
            }
        }
    }
}

/// One call sent to a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentCall {
    /// What was asked.
    pub key: CallKey,
    /// The host's `bootId` when the call was sent: a host that restarted since lost what it was told.
    pub boot_id: String,
    /// The map the call carried (empty for a disconnect): the host is asked to monitor its
    /// `active` entries. Shared with the call and with the other calls of its rollout, not copied.
    pub map: DomainMap,
    /// When the call started (it also identifies the call).
    pub sent_at: Timestamp,
    /// What became of it.
    pub state: CallState,
}

/// What identifies a call's content: the same key means the host would be told the same thing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallKey {
    /// The verb.
    pub kind: CallKind,
    /// The pool uuid in the call.
    pub pool_uuid: String,
    /// The host id in the call.
    pub host_id: i32,
    /// The master domain and its version (connects and refreshes).
    pub master: Option<(String, i64)>,
    /// A digest of the domain map the host must end with ([`map_digest`]; 0 for disconnects).
    pub map_digest: u64,
    /// Where the host is to take the map from (`Disk`: the master, 3.4 and lower).
    pub backend: Option<PoolBackend>,
}

impl CallKey {
    /// The key of a planned call.
    pub fn of(call: &HostCall) -> Self {
        match call {
            HostCall::Connect { params, .. } | HostCall::Refresh { params, .. } => {
                Self::holding(call.kind(), params, map_digest(&params.domain_map))
            }
            HostCall::Disconnect { params, .. } => Self {
                kind: CallKind::Disconnect,
                pool_uuid: params.pool_uuid.clone(),
                host_id: params.host_id,
                master: None,
                map_digest: 0,
                backend: None,
            },
        }
    }

    /// The key of a connect or refresh that makes the host hold `conn` (its map's digest given,
    /// so the map itself is not read: [`map_digest`]).
    pub fn holding(kind: CallKind, conn: &PoolConnection, map_digest: u64) -> Self {
        Self {
            kind,
            pool_uuid: conn.uuid.clone(),
            host_id: conn.host_id,
            master: Some((
                conn.master_domain.clone().unwrap_or_default(),
                conn.master_version,
            )),
            map_digest,
            backend: conn.backend,
        }
    }
}

/// A stable digest of a domain map (FNV-1a over its sorted entries), the same in every process.
pub fn map_digest(map: &DomainMap) -> u64 {
    map.iter().fold(FNV_OFFSET, |h, (uuid, status)| {
        let h = fnv(h, uuid.as_bytes());
        fnv(h, &[u8::from(*status == MapStatus::Active), b';'])
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// What became of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallState {
    /// Sent; no answer yet.
    InFlight,
    /// The host accepted it at this instant; its report should follow.
    Accepted {
        /// When the answer came.
        at: Timestamp,
    },
    /// The host refused it, or it timed out, at this instant (why: [`HostCalls::failure`]).
    Failed {
        /// When the failure was seen.
        at: Timestamp,
    },
    /// The host accepted it but did not confirm it (in its report) within the confirmation window,
    /// which ended at this instant.
    Lapsed {
        /// When the confirmation window ended.
        at: Timestamp,
    },
}

/// A change to the ledger that the plan asks for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LedgerOp {
    /// The host holds what it should: forget its calls and failures.
    Confirmed {
        /// The host.
        host: String,
        /// Which call the confirmation is about (a call started since is kept).
        sent_at: Timestamp,
    },
    /// The host accepted the call sent at `sent_at` and did not confirm it by `at`: count a
    /// failure (it backs off from `at`).
    Lapsed {
        /// The host.
        host: String,
        /// Which call.
        sent_at: Timestamp,
        /// When the confirmation window was found closed (the plan's `now`).
        at: Timestamp,
    },
}

/// Whether a host that needs a call gets it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Send it.
    Send,
    /// A call to the host is still running (it counts against the pool's concurrency cap); its
    /// marker is trusted until then.
    InFlight {
        /// When the marker expires.
        until: Timestamp,
    },
    /// The host accepted this very call and may still confirm it until then.
    Awaiting {
        /// The end of the confirmation window.
        until: Timestamp,
    },
    /// The host backs off until then after failures.
    BackingOff {
        /// No call before this instant.
        until: Timestamp,
    },
    /// The host accepted this very call (sent at `sent_at`) and let the confirmation window pass:
    /// the plan records a lapse ([`LedgerOp::Lapsed`]), and the host backs off until `until`.
    Lapsed {
        /// Which call.
        sent_at: Timestamp,
        /// No call before this instant.
        until: Timestamp,
    },
}

/// How long a call may be in flight before the ledger stops trusting the marker (the call itself
/// times out at `timeout`; this only guards against a marker whose task died).
fn in_flight_limit(timeout: Duration) -> Duration {
    timeout.saturating_mul(2)
}

/// Whether a call to the host is in flight (and its marker still trusted).
pub fn in_flight(entry: Option<&HostCalls>, timeout: Duration, now: Timestamp) -> bool {
    entry.is_some_and(|e| {
        e.last.state == CallState::InFlight && now < plus(e.last.sent_at, in_flight_limit(timeout))
    })
}

/// The retry delay after `failures` consecutive failures: 1 s, 2 s, 4 s ... up to [`MAX_BACKOFF`],
/// stretched by up to 20 % by a jitter derived from the host's name, so hosts that failed together
/// do not retry together (and the same input always gives the same plan).
pub fn backoff_delay(failures: u32, host: &str) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = BASE_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let base = exp.min(MAX_BACKOFF);
    // FNV-1a: a fixed, well-spread hash (std's hasher is seeded differently per process).
    let hash = fnv(FNV_OFFSET, host.as_bytes());
    let permille = u32::try_from(hash % 200).unwrap_or(0);
    base + base * permille / 1000
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(t)
}

/// When the host may be called again after its last failure (`None` while it may be called now or
/// has no failure).
fn backoff_until(entry: &HostCalls, host: &str) -> Option<Timestamp> {
    let at = match &entry.last.state {
        CallState::Failed { at } | CallState::Lapsed { at } => *at,
        CallState::InFlight | CallState::Accepted { .. } => return None,
    };
    Some(plus(at, backoff_delay(entry.failures, host)))
}

/// The gate for a host that needs the call `key` now, given what the ledger holds about it.
///
/// `timeout` is `connectTimeoutSeconds`, also the confirmation window: a host that accepted exactly
/// this call (and has not restarted since) gets that long to report it before it counts as lapsed,
/// and at least until `confirm_by` when a rollout is under way ([`super::rollout::confirm_by`]).
/// A host that backs off does so even if the call it needs changed meanwhile (the backoff is the
/// host's, not the call's); a restart or a changed call only matters to a host awaiting a report.
pub fn gate(
    entry: Option<&HostCalls>,
    host: &str,
    key: &CallKey,
    boot_id: &str,
    timeout: Duration,
    confirm_by: Option<Timestamp>,
    now: Timestamp,
) -> Gate {
    let Some(entry) = entry else {
        return Gate::Send;
    };
    let last = &entry.last;
    if in_flight(Some(entry), timeout, now) {
        return Gate::InFlight {
            until: plus(last.sent_at, in_flight_limit(timeout)),
        };
    }
    match &last.state {
        CallState::Accepted { at } if last.key == *key && last.boot_id == boot_id => {
            let until = confirm_by.map_or(plus(*at, timeout), |by| plus(*at, timeout).max(by));
            if now < until {
                Gate::Awaiting { until }
            } else {
                Gate::Lapsed {
                    sent_at: last.sent_at,
                    until: plus(now, backoff_delay(entry.failures.saturating_add(1), host)),
                }
            }
        }
        _ => match backoff_until(entry, host) {
            Some(until) if now < until => Gate::BackingOff { until },
            _ => Gate::Send,
        },
    }
}

/// Why the host's calls fail, if they do (it is failing meanwhile, even while a retry is in flight).
pub fn failure(entry: Option<&HostCalls>) -> Option<&Failure> {
    entry?.failure.as_ref()
}

/// A call's timeout, which is also how long a host may take to confirm a call it accepted:
/// `spec.sync.connectTimeoutSeconds`.
pub fn connect_timeout(sync: &SyncSpec) -> Duration {
    Duration::from_secs(u64::try_from(sync.connect_timeout_seconds.max(1)).unwrap_or(30))
}
