//! The pool's identity and desired state: which domains may be in the map (duplicates and the
//! 100-domain limit are flagged and left out), the map itself, the master, and the versions. Pure.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use super::{Desired, DomainFlag, Halt, Observed, PoolView, UuidClaim, rollout};
use crate::api::pool::MAX_DOMAINS_PER_POOL;
use crate::api::{
    DomainMap, DomainPhase, DomainType, HostIdEntry, MapStatus, PoolConnection, PoolOnStorage,
    StoragePoolSpec, StoragePoolStatus,
};

/// The first compatibility version that pushes the map on connect (this design); pools below
/// keep it on the master domain (the disk backend).
const MEMORY_BACKEND_VERSION: (u32, u32) = (3, 5);

/// Whether the pool keeps its map on the master domain (compatibility 3.4 and lower): hosts
/// connect without `domainDict` and read the map from storage, which the pool manager changes
/// (`activate`, `deactivate`) before the other hosts are told to `refresh`.
pub fn legacy(spec: &StoragePoolSpec) -> bool {
    parse_version(&spec.compatibility_version).is_some_and(|v| v < MEMORY_BACKEND_VERSION)
}

/// The pool uuid in use: `spec.uuid`, else the one recorded in status, else `metadata.uid`.
pub fn pool_uuid(pool: &PoolView) -> String {
    crate::api::pool::effective_uuid(
        pool.spec.uuid.as_deref(),
        pool.status.uuid.as_deref(),
        Some(&pool.uid),
    )
}

/// Why the planner must not touch the pool at all, if it must not.
pub fn halt(spec: &StoragePoolSpec) -> Option<Halt> {
    let version = spec.compatibility_version.clone();
    match parse_version(&version) {
        None => Some(Halt::InvalidVersion { version }),
        Some(_) => None,
    }
}

/// Halts when `spec.uuid` differs from the uuid recorded in status, which the pool's hosts were
/// given: a new identity under connected hosts would disconnect them all. The schema refuses the
/// edit; this holds for objects written before that rule or with it bypassed.
pub fn uuid_changed(pool: &PoolView) -> Option<Halt> {
    let spec = pool.spec.uuid.as_deref()?;
    let status = pool.status.uuid.as_deref()?;
    (spec != status).then(|| Halt::UuidChanged {
        spec: spec.to_owned(),
        status: status.to_owned(),
    })
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The desired state as the current status records it (used when the planner is halted).
pub fn current_desired(status: &StoragePoolStatus) -> Desired {
    Desired {
        domain_map: status.domain_map.clone(),
        map_version: status.map_version,
        master_domain: status.master_domain.clone(),
        master_version: status.master_version,
        host_ids: status
            .host_ids
            .iter()
            .map(|e| (e.host.clone(), e.id))
            .collect(),
    }
}

/// How a domain relates to this pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainClass {
    /// `spec.pool` names this pool: it belongs in the map.
    Member,
    /// `status.pool` names this pool but `spec.pool` no longer does, or the domain is deleted: it
    /// goes through MovingToMaintenance and Detaching.
    Leaving,
    /// `spec.pool` names this pool but the domain is still leaving another pool.
    Waiting,
    /// `spec.pool` names this pool, but bad input keeps it out of the map.
    Flagged(DomainFlag),
    /// Asked to leave the active set (maintenance, detach or delete), but it is the pool's last
    /// active data domain and these other domains are still active: it stays active, and master,
    /// until they go to maintenance (oVirt refuses to deactivate the last master while other
    /// domains are active, as no new master could be elected).
    Kept(BTreeSet<String>),
    /// The master, asked to leave the active set while another data domain is to take over, but
    /// no successor is active yet where the master can move to it (the pool manager's own
    /// connection): it stays active, and master, until one is. VDSM refuses a `switchMaster` to a
    /// domain its pool does not hold active (369), and a connect naming a master the manager has
    /// not moved is refused by every host (324).
    HandingOver,
    /// `spec.pool` names this pool, which exists on storage, but the domain is not attached to
    /// it yet: it enters the map once the pool manager attached it (`StorageDomain.attach`).
    Attaching,
}

/// The class of every observed domain, by name.
pub type Eligibility = BTreeMap<String, DomainClass>;

/// Classifies every observed domain: members, leaving, waiting, and flagged bad input.
pub fn eligibility(observed: &Observed) -> Eligibility {
    let pool = observed.pool.name.as_str();
    let mut classes = Eligibility::new();
    for (name, d) in &observed.domains {
        let spec_here = d.spec.pool.as_deref() == Some(pool);
        let status_here = d.status.pool.as_deref() == Some(pool);
        let class = if spec_here && d.leaving_other_pool && !status_here {
            DomainClass::Waiting
        } else if (spec_here || status_here) && (!spec_here || d.deleting) {
            DomainClass::Leaving
        } else if spec_here {
            DomainClass::Member
        } else {
            // Named neither way: the shell should not have passed it; it plays no part.
            continue;
        };
        classes.insert(name.clone(), class);
    }
    flag_duplicates(observed, &mut classes);
    flag_over_limit(observed, &mut classes);
    hold_unattached(observed, &mut classes);
    keep_last_data_domain(observed, &mut classes);
    keep_master_until_successor(observed, &mut classes);
    classes
}

/// The domains attached to the pool on storage (their metadata lists it): the record in status,
/// or, for a pool recorded before that record existed and that has a master, its map (whoever
/// made that map made the pool on storage). `None` while the pool is not created on storage.
pub fn attached(status: &StoragePoolStatus) -> Option<BTreeSet<&str>> {
    match (&status.storage, &status.master_domain) {
        (Some(s), _) if s.created => Some(s.attached.iter().map(String::as_str).collect()),
        (Some(_), _) | (None, None) => None,
        (None, Some(_)) => Some(status.domain_map.keys().map(String::as_str).collect()),
    }
}

/// Members not attached to a pool that exists on storage wait for the pool manager's attach
/// ([`DomainClass::Attaching`]). Before the pool is created, every member goes into the first
/// map: `StoragePool.create` attaches them all at once. A domain already placed in this pool
/// (in its map, or its status names the pool) got there attached: it is never held back.
fn hold_unattached(observed: &Observed, classes: &mut Eligibility) {
    let status = &observed.pool.status;
    let Some(attached) = attached(status) else {
        return;
    };
    let pool = observed.pool.name.as_str();
    for (name, class) in classes.iter_mut() {
        let unattached = observed.domains.get(name).is_some_and(|d| {
            let uuid = d.spec.uuid.as_str();
            !attached.contains(uuid)
                && !status.domain_map.contains_key(uuid)
                && d.status.pool.as_deref() != Some(pool)
        });
        if *class == DomainClass::Member && unattached {
            *class = DomainClass::Attaching;
        }
    }
}

/// What the pool manager must do on storage for the desired map, in order: create the pool (the
/// desired master and the map's domains; the master alone once a create failed, so one domain
/// attached elsewhere cannot keep the pool from existing), attach a member, detach a leaving
/// domain no host monitors any more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageWork {
    /// `StoragePool.create`: the master, its version and the domain list.
    pub create: Option<(String, i64, Vec<String>)>,
    /// The next domain to attach (by uuid).
    pub attach: Option<String>,
    /// The next domain to detach (by uuid).
    pub detach: Option<String>,
    /// The next domain to detach from every pool with no pool manager (by uuid): a leaving
    /// domain of a pool that has no master.
    pub forced_detach: Option<String>,
    /// 3.4 and lower: the next domain to make `active` in the map on the master (by uuid).
    pub activate: Option<String>,
    /// 3.4 and lower: the next domain to make `attached` there (by uuid), never the master
    /// (the master leaves with its successor named, [`super::manager`]).
    pub deactivate: Option<String>,
    /// 3.4 and lower: whether the map, master and version on the master domain, as the running
    /// pool manager holds them, are the desired ones (`None`: no manager runs, so unknown; or a
    /// pool of 3.5 and later).
    pub on_master_current: Option<bool>,
}

/// The storage work the desired map needs ([`StorageWork`]). `moving` holds the leaving domains
/// some host still monitors (not detachable yet).
pub fn storage_work(
    observed: &Observed,
    classes: &Eligibility,
    moving: &BTreeSet<String>,
    desired: &Desired,
    hosts: &BTreeMap<String, super::HostVerdict>,
) -> StorageWork {
    let status = &observed.pool.status;
    let Some(attached) = attached(status) else {
        let create = desired.master_domain.as_ref().map(|master| {
            (
                master.clone(),
                desired.master_version,
                desired.domain_map.keys().cloned().collect(),
            )
        });
        return StorageWork {
            create,
            ..StorageWork::default()
        };
    };
    let uuid_of = |class: &DomainClass, moving_ok: bool| {
        classes
            .iter()
            .filter(|(n, c)| *c == class && (moving_ok || !moving.contains(*n)))
            .filter_map(|(n, _)| observed.domains.get(n))
            .map(|d| d.spec.uuid.clone())
            .find(|u| {
                // Attach what is not attached; detach what is, but never the master.
                (class == &DomainClass::Attaching) != attached.contains(u.as_str())
                    && desired.master_domain.as_ref() != Some(u)
            })
    };
    let leaving = uuid_of(&DomainClass::Leaving, false);
    let (detach, forced_detach) = if desired.master_domain.is_some() {
        (leaving.filter(|u| desired.domain_map.contains_key(u)), None)
    } else {
        (None, leaving)
    };
    // What a manager that does not respond reported may be stale.
    let responsive = observed
        .pool
        .status
        .pool_manager
        .as_ref()
        .and_then(|m| hosts.get(&m.host))
        .is_some_and(|v| v.responsive);
    let on_master =
        manager_connection(observed).filter(|_| responsive && legacy(&observed.pool.spec));
    let first = |keep: &dyn Fn(&String, MapStatus) -> bool| {
        on_master.and_then(|c| {
            c.domain_map
                .iter()
                .find(|(sd, s)| keep(sd, **s))
                .map(|(sd, _)| sd.clone())
        })
    };
    // A member that entered the map unattached: it joined while the pool's create was in flight
    // (every member goes into the first map) but was not in that create's domain list. The record
    // of what is attached is the truth: it is attached now (VDSM's attach of an attached domain
    // is a success), or a 3.4 pool's master would never hold it.
    let unattached_member = || {
        classes
            .iter()
            .filter(|(_, c)| **c == DomainClass::Member)
            .filter_map(|(n, _)| observed.domains.get(n))
            .map(|d| d.spec.uuid.clone())
            .find(|u| {
                desired.domain_map.contains_key(u)
                    && !attached.contains(u.as_str())
                    && desired.master_domain.as_ref() != Some(u)
            })
    };
    StorageWork {
        create: None,
        attach: uuid_of(&DomainClass::Attaching, true).or_else(unattached_member),
        detach,
        forced_detach,
        activate: first(&|sd, s| {
            s == MapStatus::Attached && desired.domain_map.get(sd) == Some(&MapStatus::Active)
        }),
        deactivate: first(&|sd, s| {
            s == MapStatus::Active
                && desired.domain_map.get(sd) != Some(&MapStatus::Active)
                && on_master.and_then(|c| c.master_domain.as_ref()) != Some(sd)
        }),
        on_master_current: on_master.map(|c| {
            c.domain_map == desired.domain_map
                && c.master_domain == desired.master_domain
                && c.master_version == desired.master_version
        }),
    }
}

/// Of several StorageDomains with one uuid, one keeps it and the members that do not are flagged
/// (left out of the map). The holder is decided from the objects alone ([`UuidClaim`]): a leaving
/// domain of this pool (it must get out cleanly), then a domain placed in a pool's map, then the
/// oldest, then the first by name. So a copy of a domain never displaces the original: the
/// original keeps its place, phase and hosts, and only the copy is refused, in this pool or another.
fn flag_duplicates(observed: &Observed, classes: &mut Eligibility) {
    let mut holders: BTreeMap<&str, Claimant<'_>> = BTreeMap::new();
    for (name, d) in &observed.domains {
        let leaving = classes.get(name) == Some(&DomainClass::Leaving);
        Claimant::new(name, d.claim(), leaving).contend(&mut holders, &d.spec.uuid);
    }
    for (uuid, others) in &observed.uuids_elsewhere {
        if holders.contains_key(uuid.as_str()) {
            for (name, claim) in others {
                Claimant::new(name, claim.clone(), false).contend(&mut holders, uuid);
            }
        }
    }
    for (name, class) in classes.iter_mut() {
        let Some(d) = observed
            .domains
            .get(name)
            .filter(|_| *class == DomainClass::Member)
        else {
            continue;
        };
        if let Some(holder) = holders.get(d.spec.uuid.as_str())
            && holder.name != name
        {
            *class = DomainClass::Flagged(DomainFlag::DuplicateUuid {
                holder: holder.name.to_owned(),
                placed_in: holder.claim.placed_in.clone(),
            });
        }
    }
}

/// One of several StorageDomains with the same uuid.
struct Claimant<'a> {
    name: &'a str,
    claim: UuidClaim,
    leaving_here: bool,
}

impl<'a> Claimant<'a> {
    fn new(name: &'a str, claim: UuidClaim, leaving_here: bool) -> Self {
        Self {
            name,
            claim,
            leaving_here,
        }
    }

    /// Becomes the holder of `uuid` if it ranks before the holder so far.
    fn contend(self, holders: &mut BTreeMap<&'a str, Self>, uuid: &'a str) {
        match holders.get_mut(uuid) {
            Some(best) if self.rank() < best.rank() => *best = self,
            Some(_) => {}
            None => {
                holders.insert(uuid, self);
            }
        }
    }

    /// Lowest keeps the uuid: leaving this pool, placed in a map, created (earlier), by name.
    fn rank(&self) -> (bool, bool, bool, Option<Timestamp>, &'a str) {
        (
            !self.leaving_here,
            self.claim.placed_in.is_none(),
            self.claim.created.is_none(),
            self.claim.created,
            self.name,
        )
    }
}

/// Beyond VDSM's 100 domains, members already in the map are kept first, then by name.
fn flag_over_limit(observed: &Observed, classes: &mut Eligibility) {
    let in_map = &observed.pool.status.domain_map;
    let mut members: Vec<(bool, &String)> = classes
        .iter()
        .filter(|(_, c)| **c == DomainClass::Member)
        .filter_map(|(name, _)| {
            let d = observed.domains.get(name)?;
            Some((!in_map.contains_key(d.spec.uuid.as_str()), name))
        })
        .collect();
    if members.len() <= MAX_DOMAINS_PER_POOL {
        return;
    }
    members.sort();
    let over: Vec<String> = members[MAX_DOMAINS_PER_POOL..]
        .iter()
        .map(|(_, n)| (*n).clone())
        .collect();
    for name in over {
        classes.insert(name, DomainClass::Flagged(DomainFlag::TooManyDomains));
    }
}

/// The last active data domain does not leave the active set while other domains stay active: if
/// no data domain remains that wants to be active but others do, one data domain that is active in
/// the persisted map and asked to leave it is kept (the current master, else the first by name).
/// With no such domain (none was active), the pool has no master and is in maintenance.
fn keep_last_data_domain(observed: &Observed, classes: &mut Eligibility) {
    let wants_active = |name: &String, class: &DomainClass| {
        *class == DomainClass::Member
            && observed
                .domains
                .get(name)
                .is_some_and(|d| !d.spec.maintenance)
    };
    let is_data = |name: &String| {
        observed
            .domains
            .get(name)
            .is_some_and(|d| d.spec.type_ == DomainType::Data)
    };
    let active: BTreeSet<String> = classes
        .iter()
        .filter(|(n, c)| wants_active(n, c))
        .map(|(n, _)| n.clone())
        .collect();
    if active.is_empty() || active.iter().any(is_data) {
        return;
    }
    let status = &observed.pool.status;
    let leaving_active = |name: &String, class: &DomainClass| {
        matches!(class, DomainClass::Member | DomainClass::Leaving)
            && observed.domains.get(name).is_some_and(|d| {
                d.spec.type_ == DomainType::Data
                    && status.domain_map.get(&d.spec.uuid) == Some(&MapStatus::Active)
            })
    };
    let is_master = |name: &String| {
        observed
            .domains
            .get(name)
            .is_some_and(|d| status.master_domain.as_deref() == Some(d.spec.uuid.as_str()))
    };
    let candidates: Vec<&String> = classes
        .iter()
        .filter(|(n, c)| leaving_active(n, c))
        .map(|(n, _)| n)
        .collect();
    let kept = candidates
        .iter()
        .find(|n| is_master(n))
        .or(candidates.first())
        .map(|n| (*n).clone());
    if let Some(name) = kept {
        classes.insert(name, DomainClass::Kept(active));
    }
}

/// The domains a new master may be chosen from: those active in the running pool manager's own
/// connection (its report names this pool and the role), as `switchMaster` moves the master only
/// to one of them; without a running manager, those active in the persisted map.
///
/// A legacy pool whose recorded manager reports no connection keeps its master: only the
/// manager moves it on storage, where its hosts read it. (A manager that stopped responding may
/// still be read here from its last report; a master chosen then that no manager can move is
/// rebuilt instead, [`super::manager`].)
fn successors(observed: &Observed) -> BTreeSet<&str> {
    let status = &observed.pool.status;
    let manager_map = manager_connection(observed).map(|c| &c.domain_map);
    if manager_map.is_none() && legacy(&observed.pool.spec) {
        return BTreeSet::new();
    }
    manager_map
        .unwrap_or(&status.domain_map)
        .iter()
        .filter(|(_, s)| **s == MapStatus::Active)
        .map(|(uuid, _)| uuid.as_str())
        .collect()
}

/// The recorded pool manager's own connection, when its report names this pool and the role:
/// the map and master it holds (on the disk backend, 3.4 and lower, what the master holds).
pub fn manager_connection(observed: &Observed) -> Option<&PoolConnection> {
    let status = &observed.pool.status;
    status
        .pool_manager
        .as_ref()
        .and_then(|m| observed.hosts.get(&m.host))
        .and_then(|h| h.report.parsed())
        .and_then(|r| r.pool.as_ref())
        .filter(|c| Some(c.uuid.as_str()) == status.uuid.as_deref() && c.spm_lver.is_some())
}

/// The current master does not leave the active set before a successor can take over: when it
/// is asked to leave while other data domains want to be active, but none of them is active
/// where the master can move ([`successors`]), it stays active and master ([`DomainClass::HandingOver`]).
/// The successor becomes active first (a map with both), then the master moves, then the old
/// master leaves: what oVirt does too, electing a new master only among active domains.
fn keep_master_until_successor(observed: &Observed, classes: &mut Eligibility) {
    let Some(master) = observed.pool.status.master_domain.as_deref() else {
        return;
    };
    let wants_master = |d: &super::DomainView| d.spec.type_ == DomainType::Data;
    let Some((name, _)) = classes.iter().find(|(n, c)| {
        observed.domains.get(*n).is_some_and(|d| {
            d.spec.uuid == master
                && match c {
                    DomainClass::Member => d.spec.maintenance,
                    DomainClass::Leaving => true,
                    _ => false,
                }
        })
    }) else {
        return;
    };
    let name = name.clone();
    let others: Vec<&str> = classes
        .iter()
        .filter(|(n, c)| **c == DomainClass::Member && **n != name)
        .filter_map(|(n, _)| observed.domains.get(n))
        .filter(|d| !d.spec.maintenance && wants_master(d))
        .map(|d| d.spec.uuid.as_str())
        .collect();
    let ready = successors(observed);
    if !others.is_empty() && !others.iter().any(|u| ready.contains(u)) {
        classes.insert(name, DomainClass::HandingOver);
    }
}

/// Whether a leaving domain is still on its way to maintenance (hosts still monitor it) rather than
/// detaching: the answer decides whether it stays in the map as `attached` or leaves the map.
pub fn leaving_is_moving(current_phase: Option<DomainPhase>, still_reported: bool) -> bool {
    still_reported
        && !matches!(
            current_phase,
            Some(DomainPhase::Maintenance | DomainPhase::Detaching | DomainPhase::Unattached)
        )
}

/// The desired map, master and versions.
///
/// `moving` holds the leaving domains some connected host still monitors: they stay `attached`
/// until every host has stopped, then leave the map (Detaching).
pub fn desired(
    observed: &Observed,
    classes: &Eligibility,
    moving: &BTreeSet<String>,
    host_ids: BTreeMap<String, i32>,
) -> Desired {
    let status = &observed.pool.status;
    let on_storage = attached(status);
    let awaits_detach = |d: &super::DomainView| {
        status.master_domain.is_some()
            && !observed.pool.deleting
            && on_storage
                .as_ref()
                .is_some_and(|a| a.contains(d.spec.uuid.as_str()))
    };
    let mut domain_map = DomainMap::new();
    for (name, class) in classes {
        let Some(d) = observed.domains.get(name) else {
            continue;
        };
        let entry = match class {
            DomainClass::Member if d.spec.maintenance => MapStatus::Attached,
            DomainClass::Member | DomainClass::Kept(_) | DomainClass::HandingOver => {
                MapStatus::Active
            }
            DomainClass::Leaving if moving.contains(name) => MapStatus::Attached,
            // No host monitors it any more; it stays until the pool manager detached it (VDSM
            // detaches only a domain of the manager's map), which needs a master.
            DomainClass::Leaving if awaits_detach(d) => MapStatus::Attached,
            DomainClass::Leaving
            | DomainClass::Waiting
            | DomainClass::Flagged(_)
            | DomainClass::Attaching => continue,
        };
        domain_map.insert(d.spec.uuid.clone(), entry);
    }
    let master_domain = master(observed, classes);
    let master_changed = master_domain != status.master_domain;
    // Saturating: a status restored or edited with a version at the top of the range must not
    // crash the reconcile; `persist_first` compares content too, so a change is still persisted.
    let master_version = status
        .master_version
        .saturating_add(i64::from(master_changed));
    let map_changed = status.domain_map != domain_map;
    let map_version = status
        .map_version
        .saturating_add(i64::from(map_changed || master_changed));
    Desired {
        domain_map,
        map_version,
        master_domain,
        master_version,
        host_ids,
    }
}

/// The master: the current one while it is an active, healthy data domain; else the preferred one,
/// else the first healthy one by name, either only among the domains the manager can move the
/// master to ([`successors`]) while a master exists; else the current one while present; else
/// any active data domain (an Inactive master is kept rather than none, as oVirt's reconstruct
/// would pick it when nothing better exists). A data domain kept active as the last one
/// ([`DomainClass::Kept`]) or until its successor is ready ([`DomainClass::HandingOver`]) is
/// active here.
fn master(observed: &Observed, classes: &Eligibility) -> Option<String> {
    let candidates: Vec<(&str, bool)> = classes
        .iter()
        .filter_map(|(name, c)| match c {
            DomainClass::Member => observed.domains.get(name).filter(|d| !d.spec.maintenance),
            DomainClass::Kept(_) | DomainClass::HandingOver => observed.domains.get(name),
            _ => None,
        })
        .filter(|d| d.spec.type_ == DomainType::Data)
        .map(|d| {
            (
                d.spec.uuid.as_str(),
                d.status.phase != Some(DomainPhase::Inactive),
            )
        })
        .collect();
    let current = observed.pool.status.master_domain.as_deref();
    let preferred = observed.pool.spec.master_domain.as_deref();
    // A new master replaces a present one only where the manager can move it ([`successors`]);
    // anywhere when no host can read the current one (Inactive): the pool's metadata is then
    // rebuilt on the new master (`reconstructMaster`, [`super::manager`]).
    let ready = successors(observed);
    let dead = current.is_some_and(|c| master_dead(observed, c));
    let movable = |u: &str| current.is_none() || dead || ready.contains(u);
    let healthy = |uuid: Option<&str>| candidates.iter().any(|(u, h)| Some(*u) == uuid && *h);
    let present = |uuid: Option<&str>| candidates.iter().any(|(u, _)| Some(*u) == uuid);
    let pick = if healthy(current) {
        current
    } else if healthy(preferred) && preferred.is_some_and(movable) {
        preferred
    } else if let Some((u, _)) = candidates.iter().find(|(u, h)| *h && movable(u)) {
        Some(*u)
    } else if present(current) {
        current
    } else if let Some((u, _)) = candidates.iter().find(|(_, h)| *h) {
        Some(*u)
    } else {
        candidates.first().map(|(u, _)| *u)
    };
    pick.map(str::to_owned)
}

/// Whether no host can read `master`: its StorageDomain is Inactive (every Up host reported it
/// failing past the grace period).
pub fn master_dead(observed: &Observed, master: &str) -> bool {
    observed
        .domains
        .values()
        .any(|d| d.spec.uuid == master && d.status.phase == Some(DomainPhase::Inactive))
}

/// The pool status to write before any RPC when the map, master, versions, host ids or the uuid
/// changed. It starts a rollout: `Reconciling=True` with `lastTransitionTime = now`.
pub fn persist_first(
    observed: &Observed,
    pool_uuid: &str,
    desired: &Desired,
    now: Timestamp,
) -> Option<StoragePoolStatus> {
    let current = &observed.pool.status;
    // By content as well as by version: versions stop growing at `i64::MAX`.
    let rollout = desired.map_version != current.map_version
        || desired.domain_map != current.domain_map
        || desired.master_domain != current.master_domain;
    let same_ids = current.host_ids.len() == desired.host_ids.len()
        && current
            .host_ids
            .iter()
            .zip(&desired.host_ids)
            .all(|(e, (h, id))| e.host == *h && e.id == *id);
    let unchanged = !rollout
        && current.master_version == desired.master_version
        && same_ids
        && current.uuid.as_deref() == Some(pool_uuid);
    if unchanged {
        return None;
    }
    let host_ids: Vec<HostIdEntry> = desired
        .host_ids
        .iter()
        .map(|(host, id)| HostIdEntry {
            host: host.clone(),
            id: *id,
        })
        .collect();
    let mut next = current.clone();
    if current.storage.is_none() && current.master_domain.is_none() {
        // A new pool: not on storage until its create is accepted (a pool recorded before this
        // record with a master is taken as created, see [`attached`]).
        next.storage = Some(PoolOnStorage::default());
    }
    next.uuid = Some(pool_uuid.to_owned());
    next.domain_map = desired.domain_map.clone();
    next.map_version = desired.map_version;
    next.master_domain = desired.master_domain.clone();
    next.master_version = desired.master_version;
    next.host_ids = host_ids;
    next.counts.domains = i32::try_from(desired.domain_map.len()).unwrap_or(i32::MAX);
    if rollout {
        rollout::start(
            &mut next.conditions,
            desired.map_version,
            observed.pool.generation,
            now,
        );
    }
    Some(next)
}
