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

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{CallFailure, CallKind, HostCall};
use crate::api::{DomainMap, MapStatus, SyncSpec};

/// The first retry delay after a failure; it doubles per consecutive failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the ledger holds about one host: the last call sent to it and how many calls in a row
/// failed to get it in sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCalls {
    /// The pool whose reconcile sent the last call.
    pub pool: String,
    /// Consecutive calls that failed or were accepted and never confirmed; reset once the host is
    /// seen in sync.
    pub failures: u32,
    /// The last call.
    pub last: SentCall,
}

/// One call sent to a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentCall {
    /// What was asked.
    pub key: CallKey,
    /// The host's `bootId` when the call was sent: a host that restarted since lost what it was told.
    pub boot_id: String,
    /// When the call started.
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
    /// The master domain and its version (connects only).
    pub master: Option<(String, i64)>,
    /// A digest of the domain map ([`map_digest`]; 0 for disconnects).
    pub map_digest: u64,
}

impl CallKey {
    /// The key of a planned call.
    pub fn of(call: &HostCall) -> Self {
        match call {
            HostCall::Connect { params, .. } => Self::connect(
                &params.uuid,
                params.host_id,
                params.master_domain.as_deref().unwrap_or_default(),
                params.master_version,
                map_digest(&params.domain_map),
            ),
            HostCall::Disconnect { params, .. } => Self {
                kind: CallKind::Disconnect,
                pool_uuid: params.pool_uuid.clone(),
                host_id: params.host_id,
                master: None,
                map_digest: 0,
            },
        }
    }

    /// The key of a connect.
    pub fn connect(
        pool_uuid: &str,
        host_id: i32,
        master_domain: &str,
        master_version: i64,
        map_digest: u64,
    ) -> Self {
        Self {
            kind: CallKind::Connect,
            pool_uuid: pool_uuid.to_owned(),
            host_id,
            master: Some((master_domain.to_owned(), master_version)),
            map_digest,
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
    /// The host refused it, or it timed out, at this instant.
    Failed {
        /// When the failure was seen.
        at: Timestamp,
        /// Why.
        failure: CallFailure,
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
    },
    /// The host accepted a call and did not confirm it in time: count a failure (it backs off).
    Lapsed {
        /// The host.
        host: String,
    },
}

/// Whether a host that needs a call gets it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Send it.
    Send,
    /// A call to the host is still running (it counts against the pool's concurrency cap).
    InFlight,
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
}

/// How long a call may be in flight before the ledger stops trusting the marker (the call itself
/// times out at `timeout`; this only guards against a marker whose task died).
pub fn in_flight_limit(timeout: Duration) -> Duration {
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
pub fn backoff_until(entry: &HostCalls, host: &str) -> Option<Timestamp> {
    let at = match &entry.last.state {
        CallState::Failed { at, .. } | CallState::Lapsed { at } => *at,
        CallState::InFlight | CallState::Accepted { .. } => return None,
    };
    Some(plus(at, backoff_delay(entry.failures, host)))
}

/// The gate for a host that needs the call `key` now, given what the ledger holds about it.
///
/// `confirm_window` is `connectTimeoutSeconds`: a host that accepted exactly this call (and has not
/// restarted since) gets that long to report it before it counts as lapsed.
pub fn gate(
    entry: Option<&HostCalls>,
    host: &str,
    key: &CallKey,
    boot_id: &str,
    timeout: Duration,
    now: Timestamp,
) -> Gate {
    let Some(entry) = entry else {
        return Gate::Send;
    };
    let last = &entry.last;
    if in_flight(Some(entry), timeout, now) {
        return Gate::InFlight;
    }
    match &last.state {
        CallState::Accepted { at } if last.key == *key && last.boot_id == boot_id => {
            let until = plus(*at, timeout);
            if now < until {
                Gate::Awaiting { until }
            } else {
                // Lapsed: the plan records it ([`lapsed`]) and the host backs off from now.
                Gate::BackingOff {
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

/// Whether the host accepted exactly `key` and let the confirmation window pass: the plan records a
/// failure for it ([`LedgerOp::Lapsed`]).
pub fn lapsed(
    entry: Option<&HostCalls>,
    key: &CallKey,
    boot_id: &str,
    timeout: Duration,
    now: Timestamp,
) -> bool {
    entry.is_some_and(|e| {
        matches!(e.last.state, CallState::Accepted { at } if now >= plus(at, timeout))
            && e.last.key == *key
            && e.last.boot_id == boot_id
    })
}

/// The error of the host's last call, when it failed (the host is `ConnectFailed` meanwhile).
pub fn last_error(entry: Option<&HostCalls>) -> Option<&CallFailure> {
    match &entry?.last.state {
        CallState::Failed { failure, .. } => Some(failure),
        _ => None,
    }
}

/// Whether the host accepted a call that it has not confirmed yet (its report is on its way).
pub fn awaiting_report(entry: Option<&HostCalls>) -> bool {
    entry.is_some_and(|e| matches!(e.last.state, CallState::Accepted { .. }))
}

/// A call's timeout, which is also how long a host may take to confirm a call it accepted:
/// `spec.sync.connectTimeoutSeconds`.
pub fn connect_timeout(sync: &SyncSpec) -> Duration {
    Duration::from_secs(u64::try_from(sync.connect_timeout_seconds.max(1)).unwrap_or(30))
}
