//! The pool manager (VDSM's SPM): who holds the role, who should, and the one call (`spmStart`
//! or `spmStop`) that moves toward that. Pure.
//!
//! The hosts' reports are the truth: a responsive host whose report names this pool with
//! `spmLver` holds the role. The controller's choice is recorded in `status.poolManager` before
//! `spmStart` is sent (persisted with the map, [`super::Plan::persist_first`]), so a restarted
//! controller or a second replica starts the same host, never another one; and the lease on the
//! master domain makes two managers impossible even when a controller is wrong (a second
//! `spmStart` fails with 651 while the holder renews, and a holder that cannot renew gives the
//! role up before its lease may be taken).
//!
//! Rules, in order:
//! 1. No master (the pool is in maintenance): no manager. A host that still holds the role is
//!    stopped; its disconnect waits (VDSM refuses it with 656 until `spmStop`).
//! 2. A responsive host that holds the role but may not keep it (maintenance, left the pool,
//!    NonOperational) is stopped first; its disconnect waits too.
//! 3. A responsive member that reports the role is the manager: recorded, adopted if the record
//!    named another host (the report is the truth). A second one (never expected) is stopped.
//! 4. Otherwise the recorded host keeps the choice while it may take the role (a responsive
//!    member, not NonOperational, whose connects do not fail) and gets `spmStart` once it is
//!    connected (a restarted agent is reconnected first); else the responsive,
//!    in-sync Up member with the lowest host id is chosen, with the previous manager as
//!    `prevID`/`prevLver` (oVirt picks by SPM priority, random among equals; the lowest id is
//!    as good and the same in every replica).
//! 5. A running manager whose own connection names another master than the desired one gets
//!    `StoragePool.switchMaster(old, new, masterVersion)` (VDSM 4.4.3 and later), and every
//!    connect waits until its report names the new master: a connect naming a master the
//!    manager has not moved yet is refused by VDSM (324), and the manager's lease would stay
//!    on the old master. Without a running manager (or when the new master is not active in
//!    its map) connects are not held.
//!
//! One pool-manager call per pool at a time; a failed call is retried after a backoff (1 s
//! doubling, at most [`MAX_BACKOFF`]), an accepted one waits `connectTimeoutSeconds` for the
//! host's report before it is sent again (both verbs are idempotent on the host).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::ledger::{CallState, backoff_delay, connect_timeout};
use super::map::StorageWork;
use super::{CallFailure, Desired, HostVerdict, Observed, SyncFailure};
use crate::api::{
    DomainMap, HostPhase, MapStatus, PoolConnection, PoolManagerStatus, PoolOnStorage,
};

/// The longest wait between two attempts of a pool-manager call: the pool has no manager
/// meanwhile, and a call costs the host one lease read.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A pool-manager verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ManagerVerb {
    /// `StoragePool.spmStart`.
    Start,
    /// `StoragePool.spmStop`.
    Stop,
    /// `StoragePool.switchMaster`: the master moves on storage (and the manager's lease with
    /// it) before any host receives a connect naming the new master.
    SwitchMaster,
    /// `StoragePool.create`: the pool on storage, before any host is connected to it (not a
    /// pool-manager verb in VDSM: any host runs it under a temporary lease).
    Create,
    /// `StorageDomain.attach`: a domain joins the pool on storage before it enters the map.
    Attach,
    /// `StorageDomain.detach`: a leaving domain no host monitors leaves the pool on storage
    /// before it leaves the map.
    Detach,
    /// `StorageDomain.detach` forced, with the blank pool: a leaving domain of a pool without a
    /// master (so without a manager: in maintenance, or being deleted) leaves every pool its
    /// metadata names, on any responsive host of the pool.
    ForcedDetach,
    /// `StorageDomain.activate` (3.4 and lower): the domain becomes `active` in the map on the
    /// master before the other hosts `refresh`.
    Activate,
    /// `StorageDomain.deactivate` (3.4 and lower): the domain becomes `attached` in the map on
    /// the master before the other hosts `refresh`; the master itself is deactivated with its
    /// successor named, which moves the role first (sp.py `masterMigrate`).
    Deactivate,
    /// `StoragePool.reconstructMaster`: no host can read the master, so the pool's metadata is
    /// written afresh on the new master, by a host disconnected from the pool; then every host
    /// is connected (or refreshed) to the new master.
    Reconstruct,
}

impl ManagerVerb {
    /// The verb's short name (metric labels, messages).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "spmStart",
            Self::Stop => "spmStop",
            Self::SwitchMaster => "switchMaster",
            Self::Create => "create",
            Self::Attach => "attach",
            Self::Detach => "detach",
            Self::ForcedDetach => "forcedDetach",
            Self::Activate => "activate",
            Self::Deactivate => "deactivate",
            Self::Reconstruct => "reconstructMaster",
        }
    }
}

/// One pool-manager call to one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerCall {
    /// The Host's name.
    pub host: String,
    /// Where the host is called ([`super::HostView::endpoint`]).
    pub endpoint: String,
    /// The verb.
    pub verb: ManagerVerb,
    /// `storagepoolID`.
    pub pool_uuid: String,
    /// `prevID` (`spmStart` only): the previous manager's host id, -1 when none.
    pub prev_id: i32,
    /// `prevLver` (`spmStart` only): the previous manager's lease version, -1 when unknown.
    pub prev_lver: i64,
    /// `maxHostID` (`spmStart` only): `spec.sync.maxHosts`.
    pub max_host_id: i32,
    /// The move (`switchMaster` only).
    pub switch: Option<MasterSwitch>,
    /// `create`: the pool's name, master, master version and domain list; `attach`/`detach`:
    /// the domain (and, for `detach`, the current master and version).
    pub storage: Option<StorageOp>,
}

/// The parameters of a call that changes the pool on storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageOp {
    /// `StoragePool.create`'s `name` (the StoragePool's name).
    pub name: String,
    /// The master domain (`masterSdUUID`).
    pub master: String,
    /// `masterVersion`.
    pub master_version: i64,
    /// The domains: `domainList` for `create`, the one domain for `attach`/`detach`, the map's
    /// domains for `reconstructMaster`.
    pub domains: Vec<String>,
    /// `reconstructMaster`: `hostID` and `domainDict` (the desired map).
    pub reconstruct: Option<(i32, DomainMap)>,
}

/// `StoragePool.switchMaster` parameters: the master the manager holds, the desired one, and
/// the desired (bumped) `masterVersion`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterSwitch {
    /// `oldMasterUUID`: the master of the manager's own connection.
    pub old: String,
    /// `newMasterUUID`: the desired master.
    pub new: String,
    /// `masterVersion`: the desired one.
    pub version: i64,
}

/// What the shell remembers about a pool's last pool-manager call (its ledger entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerCalls {
    /// The host called.
    pub host: String,
    /// The verb.
    pub verb: ManagerVerb,
    /// The host's `bootId` when the call was sent.
    pub boot_id: String,
    /// When the call started (it also identifies the call).
    pub sent_at: Timestamp,
    /// What became of it.
    pub state: CallState,
    /// Consecutive failures of this verb on this host.
    pub failures: u32,
    /// The last failure, until a call is accepted.
    pub failure: Option<CallFailure>,
    /// The domains a storage call (`create`, `attach`, `detach`) named: what its acceptance
    /// changes in the record of the pool on storage.
    pub domains: Vec<String>,
    /// The master and version the call puts on storage (`create`, `switchMaster`, the master's
    /// own `deactivate`, `reconstructMaster`).
    pub master: Option<(String, i64)>,
}

impl ManagerCalls {
    /// The entry after `call` starts at `now`; failures carry over from a `previous` entry for
    /// the same host and verb.
    pub fn started(
        previous: Option<Self>,
        call: &ManagerCall,
        boot_id: &str,
        now: Timestamp,
    ) -> Self {
        let (failures, failure) = previous
            .filter(|p| p.host == call.host && p.verb == call.verb)
            .map_or((0, None), |p| (p.failures, p.failure));
        Self {
            host: call.host.clone(),
            verb: call.verb,
            boot_id: boot_id.to_owned(),
            sent_at: now,
            state: CallState::InFlight,
            failures,
            failure,
            domains: call
                .storage
                .as_ref()
                .map(|s| s.domains.clone())
                .unwrap_or_default(),
            master: match call.verb {
                ManagerVerb::SwitchMaster => {
                    call.switch.as_ref().map(|s| (s.new.clone(), s.version))
                }
                ManagerVerb::Create | ManagerVerb::Reconstruct | ManagerVerb::Deactivate => call
                    .storage
                    .as_ref()
                    .filter(|s| !s.master.is_empty())
                    .map(|s| (s.master.clone(), s.master_version)),
                _ => None,
            },
        }
    }

    /// Records the answer at `now` to the call sent at `sent_at` (an older call's is ignored).
    pub fn finished(
        &mut self,
        sent_at: Timestamp,
        result: &Result<(), CallFailure>,
        now: Timestamp,
    ) {
        if self.sent_at != sent_at || self.state != CallState::InFlight {
            return;
        }
        match result {
            Ok(()) => {
                self.state = CallState::Accepted { at: now };
                self.failure = None;
            }
            Err(f) => {
                self.failures = self.failures.saturating_add(1);
                self.failure = Some(f.clone());
                self.state = CallState::Failed { at: now };
            }
        }
    }

    /// Whether the call is still running (and its marker still trusted) at `now`.
    pub fn in_flight(&self, timeout: Duration, now: Timestamp) -> bool {
        self.state == CallState::InFlight && now < plus(self.sent_at, timeout.saturating_mul(2))
    }
}

/// Where the pool's manager stands (input to the `PoolManager` condition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagerState {
    /// The pool has no master, so no manager.
    NotNeeded,
    /// The host reports the role.
    Running {
        /// The host.
        host: String,
        /// Its host id.
        host_id: i32,
        /// Its lease version.
        lver: i64,
    },
    /// `spmStart` is being sent to the recorded host.
    Starting {
        /// The host.
        host: String,
        /// Why the last attempt failed, if it did.
        failure: Option<String>,
    },
    /// A host that may not keep the role is being stopped.
    Stopping {
        /// The host.
        host: String,
        /// Why the last attempt failed, if it did.
        failure: Option<String>,
    },
    /// No host can read the master (`old`): the pool's metadata is being rebuilt on the new
    /// master through `host` (stopped, disconnected, then `reconstructMaster`).
    Reconstructing {
        /// The host that rebuilds it (the manager-to-be).
        host: String,
        /// The master no host can read.
        old: String,
        /// Why the last attempt failed, if it did.
        failure: Option<String>,
    },
    /// No host can take the role.
    NoCandidate {
        /// The recorded manager that cannot hold the role any more, if any.
        last: Option<String>,
    },
}

/// The pool-manager part of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerPlan {
    /// `status.poolManager` to hold (persisted before any call when it changes).
    pub record: Option<PoolManagerStatus>,
    /// Where the manager stands.
    pub state: ManagerState,
    /// The call due now, if any.
    pub call: Option<ManagerCall>,
    /// The pool's ledger entry did what it asked: the shell drops it.
    pub confirmed: bool,
    /// Hosts that hold the role and must give it up before they are disconnected.
    pub hold_disconnect: BTreeSet<String>,
    /// The host to disconnect from the pool before it runs `reconstructMaster` (VDSM refuses it
    /// on a connected host, 325).
    pub disconnect_first: Option<String>,
    /// Connects (and refreshes) wait: they name a master the running manager has not switched
    /// to yet, the pool is not created on storage yet, or (3.4 and lower) the map on the master
    /// is not the desired one yet.
    pub hold_connects: bool,
    /// Refreshes wait (3.4 and lower): no pool manager runs, so the map on the master may be
    /// half changed; a connected host keeps what it read until the manager finished.
    pub hold_refreshes: bool,
    /// `status.storage` to hold: the record of the pool on storage after an accepted storage
    /// call (persisted first, like the map).
    pub storage: Option<PoolOnStorage>,
    /// The last storage call (`create`, `attach`, `detach`) failed, and why: shown in the
    /// `PoolManager` condition until a call is accepted.
    pub storage_failure: Option<String>,
    /// When the clock alone makes a call due (a backoff ends, a wait for a report ends).
    pub retry_at: Option<Timestamp>,
}

impl ManagerPlan {
    /// Nothing to do; the record kept as it is (a halted pool).
    pub fn idle(record: Option<PoolManagerStatus>) -> Self {
        Self {
            record,
            state: ManagerState::NotNeeded,
            call: None,
            confirmed: false,
            hold_disconnect: BTreeSet::new(),
            disconnect_first: None,
            hold_connects: false,
            hold_refreshes: false,
            storage: None,
            storage_failure: None,
            retry_at: None,
        }
    }
}

/// The previous manager to name in `spmStart` when the role moves away from `current`.
fn previous_of(current: Option<&PoolManagerStatus>) -> (i32, i64) {
    match current {
        None => (-1, -1),
        Some(c) if c.lver >= 0 => (c.host_id, c.lver),
        Some(c) => (c.prev_id, c.prev_lver),
    }
}

/// The pool-manager plan: what to record, the call due now, the disconnects that must wait.
pub fn plan(
    observed: &Observed,
    pool_uuid: &str,
    desired: &Desired,
    work: &StorageWork,
    hosts: &BTreeMap<String, HostVerdict>,
    now: Timestamp,
) -> ManagerPlan {
    let current = observed.pool.status.pool_manager.as_ref();
    let has_master = desired.master_domain.is_some();
    let legacy = super::map::legacy(&observed.pool.spec);
    // A legacy pool's hosts read the map from the master, which only the manager changes: not
    // confirming the desired map while no manager runs is no failure of theirs.
    let failing = |v: &HostVerdict| match v.failure {
        Some(SyncFailure::ConnectFailed(_) | SyncFailure::NoEndpoint) => true,
        Some(SyncFailure::NotConfirmed) => !legacy,
        None => false,
    };
    // (host, host id, lver) of every responsive host that reports the role in this pool.
    let holders: Vec<(&str, i32, i64)> = hosts
        .iter()
        .filter(|(_, v)| v.responsive && !v.report_invalid)
        .filter_map(|(name, _)| {
            let c = observed.hosts.get(name)?.report.parsed()?.pool.as_ref()?;
            let lver = c.spm_lver.filter(|_| c.uuid == pool_uuid)?;
            Some((name.as_str(), c.host_id, lver))
        })
        .collect();
    // The recorded host keeps the choice while it is a responsive member that is not failing
    // (a restarted agent being reconnected keeps it); it may hold or take the role once it is
    // connected to the pool.
    let keeps_record = |name: &str| {
        has_master
            && hosts.get(name).is_some_and(|v| {
                v.can_serve() && !failing(v) && v.phase != HostPhase::NonOperational
            })
    };
    let may_keep =
        |name: &str| keeps_record(name) && hosts.get(name).is_some_and(|v| v.connected_here);
    // No host can read the master the hosts hold (rule 6): every holder is stopped (its lease
    // is on that master), the manager-to-be is disconnected and rebuilds the pool's metadata
    // on the new master; then every host is connected to it. Once `reconstructMaster` was
    // accepted, the hosts are connected (the first to report the new master ends this).
    let stored = observed
        .pool
        .status
        .storage
        .as_ref()
        .and_then(|s| Some((s.master.as_deref()?, s.master_version?)));
    let can_move = holders.iter().any(|(h, ..)| may_keep(h));
    let lost = lost_master(observed, pool_uuid, desired, hosts, stored, can_move);
    let reconstructed = observed.manager.as_ref().is_some_and(|e| {
        e.verb == ManagerVerb::Reconstruct && matches!(e.state, CallState::Accepted { .. })
    });
    let rebuilding = lost.as_deref().filter(|_| !reconstructed);
    let running = holders
        .iter()
        .filter(|(h, ..)| rebuilding.is_none() && may_keep(h))
        .min_by_key(|(h, ..)| (current.is_none_or(|c| c.host != *h), *h))
        .copied();
    // Holders that must give the role up: those that may not keep it, and any second one.
    let strays: Vec<&str> = holders
        .iter()
        .map(|(h, ..)| *h)
        .filter(|h| running.is_none_or(|(r, ..)| r != *h))
        .collect();
    let hold_disconnect = strays
        .iter()
        .filter(|h| !may_keep(h))
        .map(|h| (*h).to_owned())
        .collect();

    let mut record = if !has_master {
        None
    } else if rebuilding.is_some() {
        // The recorded host rebuilds it while it may take the role; else the responsive member
        // with the lowest host id.
        current
            .filter(|c| keeps_record(&c.host))
            .map(|c| c.host.as_str())
            .or_else(|| {
                hosts
                    .iter()
                    .filter(|(_, v)| v.can_serve())
                    .filter_map(|(h, _)| Some((desired.host_ids.get(h)?, h.as_str())))
                    .min()
                    .map(|(_, h)| h)
            })
            .map(|host| match current {
                Some(c) if c.host == host && c.lver < 0 => c.clone(),
                other => {
                    let (prev_id, prev_lver) = previous_of(other);
                    PoolManagerStatus {
                        host: host.to_owned(),
                        host_id: desired.host_ids.get(host).copied().unwrap_or(-1),
                        lver: -1,
                        prev_id,
                        prev_lver,
                    }
                }
            })
    } else if let Some((host, host_id, lver)) = running {
        let (prev_id, prev_lver) = match current {
            Some(c) if c.host == host => (c.prev_id, c.prev_lver),
            other => previous_of(other),
        };
        Some(PoolManagerStatus {
            host: host.to_owned(),
            host_id,
            lver,
            prev_id,
            prev_lver,
        })
    } else if let Some(c) =
        current.filter(|c| keeps_record(&c.host) || strays.contains(&c.host.as_str()))
    {
        // Keeps its choice while it may take the role, or while it is being stopped.
        Some(c.clone())
    } else if let Some(host) = candidate(hosts, desired, &strays, legacy) {
        let (prev_id, prev_lver) = previous_of(current);
        Some(PoolManagerStatus {
            host_id: desired.host_ids.get(host).copied().unwrap_or(-1),
            host: host.to_owned(),
            lver: -1,
            prev_id,
            prev_lver,
        })
    } else {
        current.cloned()
    };

    // The running manager moves the master on storage first (rule 5): its own connection
    // names the master it holds; the desired one, active in that connection's map and with a
    // higher version, is switched to before any host receives a connect naming it.
    let switch = running.and_then(|(host, ..)| switch_of(observed, host, desired));
    // 3.4 and lower: a master leaving the active set moves with its own deactivation (sp.py
    // `deactivateSD` with the new master: oVirt's order); one that stays active is switched.
    let switch_verb = switch.as_ref().map(|s| {
        if legacy && desired.domain_map.get(&s.old) != Some(&MapStatus::Active) {
            ManagerVerb::Deactivate
        } else {
            ManagerVerb::SwitchMaster
        }
    });
    let held_map = running
        .and_then(|(host, ..)| observed.hosts.get(host)?.report.parsed()?.pool.as_ref())
        .map(|c| &c.domain_map);
    let held_active = |d: &String| held_map.is_some_and(|m| m.get(d) == Some(&MapStatus::Active));
    let entry = observed.manager.as_ref();
    let holds = |h: &str| holders.iter().any(|(x, ..)| *x == h);
    let timeout = connect_timeout(&observed.pool.spec.sync);
    let on_storage = super::map::attached(&observed.pool.status);
    let recorded = |e: &ManagerCalls| {
        let has = |d: &String| on_storage.as_ref().is_some_and(|a| a.contains(d.as_str()));
        let domains = match e.verb {
            ManagerVerb::Create => on_storage.is_some(),
            ManagerVerb::Attach => e.domains.iter().all(has),
            ManagerVerb::Detach | ManagerVerb::ForcedDetach => !e.domains.iter().any(has),
            _ => true,
        };
        let master = e
            .master
            .as_ref()
            .is_none_or(|(m, v)| stored == Some((m.as_str(), *v)));
        domains && master
    };
    let confirmed = entry.is_some_and(|e| {
        !e.in_flight(timeout, now)
            && match e.verb {
                ManagerVerb::Start => holds(&e.host),
                ManagerVerb::Stop => !holds(&e.host),
                ManagerVerb::SwitchMaster => switch.is_none(),
                ManagerVerb::Reconstruct => lost.is_none(),
                ManagerVerb::Activate => e.domains.iter().all(held_active),
                ManagerVerb::Deactivate => {
                    switch.is_none() && held_map.is_some() && !e.domains.iter().any(held_active)
                }
                ManagerVerb::Create
                | ManagerVerb::Attach
                | ManagerVerb::Detach
                | ManagerVerb::ForcedDetach => recorded(e),
            }
    });
    // An accepted storage call changes the record of the pool on storage (persisted first).
    let storage = entry
        .filter(|e| matches!(e.state, CallState::Accepted { .. }) && !recorded(e))
        .map(|e| {
            let mut next = observed.pool.status.storage.clone().unwrap_or_default();
            next.attached = on_storage
                .iter()
                .flatten()
                .map(|d| (*d).to_owned())
                .collect();
            match e.verb {
                ManagerVerb::Create => next.attached = e.domains.iter().cloned().collect(),
                ManagerVerb::Attach => next.attached.extend(e.domains.iter().cloned()),
                ManagerVerb::Detach | ManagerVerb::ForcedDetach => {
                    next.attached.retain(|d| !e.domains.contains(d));
                }
                _ => {}
            }
            if let Some((m, v)) = &e.master {
                next.master = Some(m.clone());
                next.master_version = Some(*v);
            }
            next.created = true;
            next
        });
    let entry = entry.filter(|_| !confirmed);
    let failure_of = |host: &str, verb: ManagerVerb| {
        entry
            .filter(|e| e.host == host && e.verb == verb)
            .and_then(|e| e.failure.as_ref())
            .map(ToString::to_string)
    };

    // The pool is created on storage by the recorded manager if it may take the role, else by
    // the responsive member with the lowest host id (VDSM runs `create` on any host, under a
    // temporary lease; the engine uses the SPM-to-be).
    let creator = || {
        current
            .map(|r| r.host.as_str())
            .filter(|h| keeps_record(h))
            .or_else(|| {
                hosts
                    .keys()
                    .filter(|h| keeps_record(h))
                    .filter_map(|h| Some((desired.host_ids.get(h)?, h.as_str())))
                    .min()
                    .map(|(_, h)| h)
            })
    };
    let creating = work.create.as_ref().and_then(|_| creator());
    // The host that creates the pool is the manager-to-be: recorded with the create, so the
    // role goes to it once it is connected (as oVirt's engine creates the pool on its SPM).
    if let (Some(host), None) = (creating, &record) {
        record = Some(PoolManagerStatus {
            host: host.to_owned(),
            host_id: desired.host_ids.get(host).copied().unwrap_or(-1),
            lver: -1,
            prev_id: -1,
            prev_lver: -1,
        });
    }
    let mut disconnect_first = None;
    let want = if let Some(h) = strays.first() {
        Some((*h, ManagerVerb::Stop))
    } else if rebuilding.is_some() {
        let host = record.as_ref().map(|r| r.host.as_str());
        match host {
            Some(h) if hosts.get(h).is_some_and(|v| v.connected_here) => {
                disconnect_first = Some(h.to_owned());
                None
            }
            Some(h) => Some((h, ManagerVerb::Reconstruct)),
            None => None,
        }
    } else if let Some(h) = creating {
        Some((h, ManagerVerb::Create))
    } else if work.create.is_some() {
        None
    } else if work.forced_detach.is_some() {
        // No master, so no manager: any responsive member may free the domain.
        hosts
            .iter()
            .filter(|(_, v)| v.can_serve())
            .filter_map(|(h, _)| Some((desired.host_ids.get(h)?, h.as_str())))
            .min()
            .map(|(_, h)| (h, ManagerVerb::ForcedDetach))
    } else if let Some((host, ..)) = running {
        if let Some(verb) = switch_verb {
            Some((host, verb))
        } else if work.attach.is_some() {
            Some((host, ManagerVerb::Attach))
        } else if work.activate.is_some() {
            Some((host, ManagerVerb::Activate))
        } else if work.deactivate.is_some() {
            Some((host, ManagerVerb::Deactivate))
        } else if work.detach.is_some() {
            Some((host, ManagerVerb::Detach))
        } else {
            None
        }
    } else {
        record
            .as_ref()
            .filter(|r| may_keep(&r.host))
            .map(|r| (r.host.as_str(), ManagerVerb::Start))
    };
    let state = if let Some((host, host_id, lver)) = running {
        ManagerState::Running {
            host: host.to_owned(),
            host_id,
            lver,
        }
    } else if let Some((host, ManagerVerb::Stop)) = want {
        ManagerState::Stopping {
            host: host.to_owned(),
            failure: failure_of(host, ManagerVerb::Stop),
        }
    } else if let (Some(old), Some(r)) = (rebuilding, &record) {
        ManagerState::Reconstructing {
            host: r.host.clone(),
            old: old.to_owned(),
            failure: failure_of(&r.host, ManagerVerb::Reconstruct),
        }
    } else if let Some(r) = record.as_ref().filter(|r| keeps_record(&r.host)) {
        ManagerState::Starting {
            host: r.host.clone(),
            failure: failure_of(&r.host, ManagerVerb::Start),
        }
    } else if !has_master {
        ManagerState::NotNeeded
    } else {
        ManagerState::NoCandidate {
            last: record.as_ref().map(|r| r.host.clone()),
        }
    };

    let mut retry_at = None;
    let call = want.and_then(|(host, verb)| {
        let h = observed.hosts.get(host)?;
        let boot_id = h.report.parsed().map_or("", |r| r.boot_id.as_str());
        if let Some(until) = wait_until(entry, host, verb, boot_id, timeout, now) {
            retry_at = Some(until);
            return None;
        }
        let (prev_id, prev_lver) = match (verb, &record) {
            (ManagerVerb::Start, Some(r)) => (r.prev_id, r.prev_lver),
            _ => (-1, -1),
        };
        Some(ManagerCall {
            host: host.to_owned(),
            endpoint: h.endpoint()?.to_owned(),
            verb,
            pool_uuid: pool_uuid.to_owned(),
            prev_id,
            prev_lver,
            max_host_id: observed.pool.spec.sync.max_hosts,
            switch: switch.clone().filter(|_| verb == ManagerVerb::SwitchMaster),
            storage: storage_op(
                observed,
                desired,
                work,
                switch.as_ref(),
                entry,
                (verb, desired.host_ids.get(host).copied().unwrap_or(-1)),
            ),
        })
    });
    ManagerPlan {
        record,
        state,
        call,
        confirmed,
        hold_disconnect,
        disconnect_first,
        // Nothing is connected to a pool that does not exist on storage yet (VDSM: 304/324),
        // and (3.4 and lower) no host reads a map the manager has not finished writing.
        hold_connects: switch.is_some()
            || rebuilding.is_some()
            || on_storage.is_none()
            || work.on_master_current == Some(false),
        // A reconstructed master holds the desired map: the hosts may read it at once.
        hold_refreshes: rebuilding.is_some()
            || (legacy && work.on_master_current != Some(true) && !reconstructed),
        storage,
        storage_failure: entry
            .filter(|e| {
                matches!(
                    e.verb,
                    ManagerVerb::Create
                        | ManagerVerb::Attach
                        | ManagerVerb::Detach
                        | ManagerVerb::ForcedDetach
                        | ManagerVerb::Activate
                        | ManagerVerb::Deactivate
                        | ManagerVerb::Reconstruct
                )
            })
            .and_then(|e| {
                let f = e.failure.as_ref()?;
                Some(format!(
                    "{} of {} on {} failed: {f}",
                    e.verb.as_str(),
                    e.domains.join(", "),
                    e.host
                ))
            }),
        retry_at,
    }
}

/// The parameters of a storage call: `create` names every domain of the first map, or the
/// master alone after a failed attempt (one domain attached elsewhere, 380, must not keep the
/// pool from existing; the others are attached one by one then).
fn storage_op(
    observed: &Observed,
    desired: &Desired,
    work: &StorageWork,
    switch: Option<&MasterSwitch>,
    entry: Option<&ManagerCalls>,
    (verb, host_id): (ManagerVerb, i32),
) -> Option<StorageOp> {
    let op = |master: &str, domains: Vec<String>| StorageOp {
        name: observed.pool.name.clone(),
        master: master.to_owned(),
        master_version: desired.master_version,
        domains,
        reconstruct: None,
    };
    let master = desired.master_domain.as_deref().unwrap_or_default();
    match verb {
        ManagerVerb::Create => {
            let (master, _, list) = work.create.as_ref()?;
            let failed_before =
                entry.is_some_and(|e| e.verb == ManagerVerb::Create && e.failures > 0);
            let domains = if failed_before {
                vec![master.clone()]
            } else {
                list.clone()
            };
            Some(op(master, domains))
        }
        ManagerVerb::Attach => Some(op(master, vec![work.attach.clone()?])),
        ManagerVerb::Detach => Some(op(master, vec![work.detach.clone()?])),
        ManagerVerb::ForcedDetach => Some(op("", vec![work.forced_detach.clone()?])),
        ManagerVerb::Activate => Some(op(master, vec![work.activate.clone()?])),
        // The leaving master names its successor (the role moves first); any other domain
        // names none (the blank uuid on the wire, as the engine sends): VDSM refuses to
        // deactivate an unreadable domain with a master named (379), and that is exactly when
        // an operator puts a domain in maintenance.
        ManagerVerb::Deactivate => match switch {
            Some(s) => Some(op(&s.new, vec![s.old.clone()])),
            None => Some(op("", vec![work.deactivate.clone()?])),
        },
        ManagerVerb::Reconstruct => Some(StorageOp {
            reconstruct: Some((host_id, desired.domain_map.clone())),
            ..op(master, desired.domain_map.keys().cloned().collect())
        }),
        ManagerVerb::Start | ManagerVerb::Stop | ManagerVerb::SwitchMaster => None,
    }
}

/// The master on storage when the pool's metadata must be rebuilt on the desired one
/// (`reconstructMaster`): it differs from the desired master and no pool manager can move it,
/// because no host can read it ([`super::map::master_dead`]) or because no manager runs (one
/// that died before its `switchMaster`, say: hosts cannot connect to the desired master, so no
/// new manager could start). Storage's master is the pool's record ([`PoolOnStorage::master`]);
/// without one, what the connected hosts hold, and then only a master no host can read counts.
fn lost_master(
    observed: &Observed,
    pool_uuid: &str,
    desired: &Desired,
    hosts: &BTreeMap<String, HostVerdict>,
    stored: Option<(&str, i64)>,
    can_move: bool,
) -> Option<String> {
    let wanted = desired.master_domain.as_deref()?;
    if let Some((m, _)) = stored {
        let stuck = m != wanted && (!can_move || super::map::master_dead(observed, m));
        return stuck.then(|| m.to_owned());
    }
    let held: Vec<&PoolConnection> = hosts
        .iter()
        .filter(|(_, v)| v.responsive && v.connected_here && !v.report_invalid)
        .filter_map(|(name, _)| observed.hosts.get(name)?.report.parsed()?.pool.as_ref())
        .filter(|c| c.uuid == pool_uuid)
        .collect();
    let on_wanted = held.iter().any(|c| {
        c.master_domain.as_deref() == Some(wanted) && c.master_version == desired.master_version
    });
    if on_wanted {
        return None;
    }
    held.iter()
        .filter_map(|c| c.master_domain.as_deref())
        .find(|m| *m != wanted && super::map::master_dead(observed, m))
        .map(str::to_owned)
}

/// The `switchMaster` the running manager `host` needs, if any: its connection names another
/// master than the desired one, the desired one is active in its map (else VDSM refuses with
/// 353/369) and the desired version is higher (else 324).
fn switch_of(observed: &Observed, host: &str, desired: &Desired) -> Option<MasterSwitch> {
    let held = observed.hosts.get(host)?.report.parsed()?.pool.as_ref()?;
    let old = held.master_domain.as_ref()?;
    let new = desired.master_domain.as_ref()?;
    let movable = old != new
        && held.domain_map.get(new) == Some(&MapStatus::Active)
        && desired.master_version > held.master_version;
    movable.then(|| MasterSwitch {
        old: old.clone(),
        new: new.clone(),
        version: desired.master_version,
    })
}

/// The responsive, in-sync Up member with the lowest host id that does not hold the role
/// elsewhere-bound (not a stray).
fn candidate<'a>(
    hosts: &'a BTreeMap<String, HostVerdict>,
    desired: &Desired,
    strays: &[&str],
    legacy: bool,
) -> Option<&'a str> {
    hosts
        .iter()
        .filter(|(name, v)| {
            v.can_serve()
                && !strays.contains(&name.as_str())
                // A legacy pool's hosts hold the map on the master, which may be behind while
                // no manager runs (so they may not confirm it, and are not Up): connected and
                // not NonOperational is enough.
                && if legacy {
                    v.connected_here && v.phase != HostPhase::NonOperational
                } else {
                    v.in_sync && v.phase == HostPhase::Up
                }
        })
        .filter_map(|(name, _)| Some((desired.host_ids.get(name).copied()?, name.as_str())))
        .min()
        .map(|(_, name)| name)
}

/// Until when the call `verb` to `host` must wait, if it must: another call of the pool still
/// running, this very call accepted and its report not in yet, or a backoff after failures.
fn wait_until(
    entry: Option<&ManagerCalls>,
    host: &str,
    verb: ManagerVerb,
    boot_id: &str,
    timeout: Duration,
    now: Timestamp,
) -> Option<Timestamp> {
    let e = entry?;
    if e.in_flight(timeout, now) {
        return Some(plus(e.sent_at, timeout.saturating_mul(2)));
    }
    if e.host != host || e.verb != verb {
        return None;
    }
    let until = match e.state {
        CallState::Accepted { at } if e.boot_id == boot_id => plus(at, timeout),
        CallState::Failed { at } | CallState::Lapsed { at } => {
            plus(at, backoff_delay(e.failures, host).min(MAX_BACKOFF))
        }
        CallState::Accepted { .. } | CallState::InFlight => return None,
    };
    (now < until).then_some(until)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(t)
}
