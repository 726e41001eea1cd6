//! What the pool manager (VDSM's SPM) writes on storage, following sp.py: `create` and
//! `reconstructMaster` (a new master with the pool keys), `attachSD`, `activateSD`,
//! `deactivateSD` (with `masterMigrate`), `detachSD`, and the master switch.
//!
//! Each operation reads and writes domain metadata through [`FileDomains`] and returns the map
//! and master the pool holds afterwards; the host applies them to its [`super::state`]. The
//! memory backend keeps the map in memory only (spbackends.py `StoragePoolMemoryBackend`
//! ignores `setDomainsMap` on storage, `initParameters`, `setSpmStatus`); the disk backend
//! writes `POOL_DOMAINS`, `MASTER_VERSION`, `POOL_SPM_ID`, `POOL_SPM_LVER` and
//! `POOL_DESCRIPTION` on the master. Domain keys (`ROLE`, `POOL_UUID`) are written by both.

use std::time::Duration;

use super::domains::{FileDomains, LeaseError};
use super::metadata::{Metadata, ROLE_MASTER, ROLE_REGULAR, key};
use super::state::Backend;
use crate::api::{DomainMap, MapStatus};
use crate::protocol::wire::MAX_DOMAINS_IN_POOL;
use crate::protocol::{ErrorCode, VdsmError};

/// sanlock's reserved host id, used by `create` before the host has one (clusterlock.py
/// `getReservedId`: `MAX_HOST_ID`).
pub const RESERVED_HOST_ID: i64 = 250;

/// Who takes leases: this host's boot, id and the lease duration.
#[derive(Clone, Copy, Debug)]
pub struct Holder<'a> {
    /// The owner token (the host's bootId: a restarted host holds nothing).
    pub owner: &'a str,
    /// The host id.
    pub host_id: i64,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
}

impl Holder<'_> {
    /// Acquires the lease of `sd` (651 when held elsewhere); returns its version.
    ///
    /// # Errors
    /// 651 held; the domain's read errors.
    pub fn acquire(&self, domains: &FileDomains, sd: &str) -> Result<i64, VdsmError> {
        domains
            .acquire_lease(sd, self.owner, self.host_id, self.duration)
            .map_err(lease_error)
    }

    /// Releases the lease of `sd` if held; a failure is logged (sp.py ignores it too).
    pub fn release(&self, domains: &FileDomains, sd: &str) {
        if let Err(e) = domains.release_lease(sd, self.owner) {
            tracing::warn!(domain = %sd, error = %e, "lease release failed");
        }
    }
}

/// VDSM's answer for a lease failure.
pub fn lease_error(e: LeaseError) -> VdsmError {
    match e {
        LeaseError::Held { host_id, lver } => VdsmError::new(
            ErrorCode::AcquireLockFailure,
            format!("cannot obtain lock: held by host {host_id} (lver {lver})"),
        ),
        LeaseError::Lost => VdsmError::new(ErrorCode::AcquireLockFailure, "lease lost"),
        LeaseError::Domain(e) => e.vdsm(true),
    }
}

fn read(domains: &FileDomains, sd: &str) -> Result<Metadata, VdsmError> {
    domains.read(sd).map_err(|e| e.vdsm(false))
}

fn write(domains: &FileDomains, sd: &str, md: &Metadata) -> Result<(), VdsmError> {
    domains.write(sd, md).map_err(|e| e.vdsm(true))
}

fn pool_key_fields(md: &mut Metadata, name: &str, version: i64, map: &DomainMap) {
    // spbackends.py `StoragePoolDiskBackend.initParameters`.
    md.set(key::POOL_SPM_ID, "-1");
    md.set(key::POOL_SPM_LVER, "-1");
    md.set(key::MASTER_VERSION, version.to_string());
    md.set(key::POOL_DESCRIPTION, name);
    md.set_pool_domains(map);
}

/// sd.py `attach`: adds `pool` to `POOL_UUID`.
///
/// # Errors
/// 380 when the domain (not ISO) is attached to another pool.
fn attach_domain(md: &mut Metadata, sd: &str, pool: &str) -> Result<(), VdsmError> {
    let pools: Vec<String> = md.pools().into_iter().map(str::to_owned).collect();
    if pools.iter().any(|p| p == pool) {
        return Ok(());
    }
    if let Some(other) = pools.first()
        && md.class() != Some("Iso")
    {
        return Err(VdsmError::new(
            ErrorCode::StorageDomainAlreadyAttached,
            format!("domain={sd}, pool={other}"),
        ));
    }
    let mut all: Vec<&str> = pools.iter().map(String::as_str).collect();
    all.push(pool);
    md.set_pools(&all);
    Ok(())
}

/// `StoragePool.create` (sp.py `create`, always the disk backend): every domain exists and is
/// unattached; the master gets `ROLE=Master`, `POOL_UUID` and the pool keys with itself
/// active; the others are attached. Done under a temporary lease on the master with the
/// reserved host id, released at the end.
///
/// # Errors
/// -32602 master not in the list, 328 more than 100 domains, 379 a domain unreadable, 380 a
/// domain attached elsewhere, 651 the master's lease held.
pub fn create(
    domains: &FileDomains,
    holder: Holder<'_>,
    pool: &str,
    name: &str,
    master: &str,
    master_version: i64,
    list: &[String],
) -> Result<(), VdsmError> {
    if !list.iter().any(|sd| sd == master) {
        return Err(VdsmError::new(
            ErrorCode::InvalidParams,
            format!("masterDomain {master} is not in domainList"),
        ));
    }
    if list.len() > MAX_DOMAINS_IN_POOL {
        return Err(too_many(list.len()));
    }
    let mut mds = Vec::with_capacity(list.len());
    for sd in list {
        // sp.py `create`: any storage error of a domain is StorageDomainAccessError.
        let md = domains.read(sd).map_err(|e| {
            VdsmError::new(ErrorCode::StorageDomainAccessError, format!("{sd}: {e}"))
        })?;
        if md.class() != Some("Iso")
            && let Some(other) = md.pools().first()
        {
            return Err(VdsmError::new(
                ErrorCode::StorageDomainAlreadyAttached,
                format!("domain={sd}, pool={other}"),
            ));
        }
        mds.push((sd, md));
    }
    let temporary = Holder {
        host_id: RESERVED_HOST_ID,
        ..holder
    };
    temporary.acquire(domains, master)?;
    let result = (|| {
        let mut map: DomainMap = [(master.to_owned(), MapStatus::Active)]
            .into_iter()
            .collect();
        for (sd, mut md) in mds.clone() {
            if sd == master {
                continue;
            }
            attach_domain(&mut md, sd, pool)?;
            write(domains, sd, &md)?;
            map.insert(sd.clone(), MapStatus::Attached);
        }
        let Some((_, mut md)) = mds.into_iter().find(|(sd, _)| *sd == master) else {
            return Ok(());
        };
        // sp.py `createMaster`: `initParameters`, then sd.py `initMaster` (pool and role).
        pool_key_fields(&mut md, name, master_version, &map);
        md.set_pools(&[pool]);
        md.set(key::ROLE, ROLE_MASTER);
        write(domains, master, &md)
    })();
    temporary.release(domains, master);
    result
}

fn too_many(n: usize) -> VdsmError {
    VdsmError::new(
        ErrorCode::TooManyDomainsInStoragePool,
        format!("{n} domains; a pool holds at most {MAX_DOMAINS_IN_POOL}"),
    )
}

/// `StoragePool.reconstructMaster` (sp.py `reconstructMaster`): under the new master's lease,
/// fresh pool metadata (disk backend) with `domainDict` as `POOL_DOMAINS`, `ROLE=Master` and
/// `POOL_UUID=pool`; the lease is released at the end. The host stays disconnected.
///
/// # Errors
/// -32602 master not in the map, 358 master missing, 651 its lease held.
pub fn reconstruct(
    domains: &FileDomains,
    holder: Holder<'_>,
    pool: &str,
    name: &str,
    master: &str,
    master_version: i64,
    map: &DomainMap,
) -> Result<(), VdsmError> {
    if !map.contains_key(master) {
        return Err(VdsmError::new(
            ErrorCode::InvalidParams,
            format!("masterDomain {master} is not in domainDict"),
        ));
    }
    let mut md = read(domains, master)?;
    holder.acquire(domains, master)?;
    pool_key_fields(&mut md, name, master_version, map);
    md.set_pools(&[pool]);
    md.set(key::ROLE, ROLE_MASTER);
    let result = write(domains, master, &md);
    holder.release(domains, master);
    result
}

/// hsm.py `_deatchStorageDomainFromOldPools` (`StorageDomain.detach` forced, with the blank
/// pool): under the domain's own lease (taken with the reserved host id, as `create` does), the
/// domain leaves every pool its metadata names and is `Regular` again (sd.py `detach`). No pool
/// connection or pool manager is needed: it frees the domains of a pool that no longer runs.
///
/// # Errors
/// 358 the domain missing, 651 its lease held (a pool manager still runs on it).
pub fn detach_from_every_pool(
    domains: &FileDomains,
    holder: Holder<'_>,
    sd: &str,
) -> Result<(), VdsmError> {
    let mut md = read(domains, sd)?;
    let temporary = Holder {
        host_id: RESERVED_HOST_ID,
        ..holder
    };
    temporary.acquire(domains, sd)?;
    md.set_pools(&[]);
    md.set(key::ROLE, ROLE_REGULAR);
    let result = write(domains, sd, &md);
    temporary.release(domains, sd);
    result
}

/// The pool as the manager holds it, and what a verb changes in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// The pool's UUID.
    pub uuid: String,
    /// Where the map lives.
    pub backend: Backend,
    /// The master domain.
    pub master: String,
    /// The master version.
    pub master_version: i64,
    /// The map.
    pub map: DomainMap,
}

impl Pool {
    /// spbackends.py `setDomainsMap`: the disk backend writes `POOL_DOMAINS` on the master.
    fn set_map(&mut self, domains: &FileDomains, map: DomainMap) -> Result<(), VdsmError> {
        if self.backend == Backend::Disk {
            let mut md = read(domains, &self.master)?;
            md.set_pool_domains(&map);
            write(domains, &self.master, &md)?;
        }
        self.map = map;
        Ok(())
    }

    /// sp.py `validateAttachedDomain`: in the map (375) and naming the pool (353).
    fn validate_attached(&self, sd: &str, md: &Metadata) -> Result<(), VdsmError> {
        if !self.map.contains_key(sd) {
            return Err(VdsmError::new(
                ErrorCode::StorageDomainNotMemberOfPool,
                format!("pool={}, domain={sd}", self.uuid),
            ));
        }
        if !md.pools().contains(&self.uuid.as_str()) {
            return Err(VdsmError::new(
                ErrorCode::StorageDomainNotInPool,
                format!("domain={sd}, pool={}", self.uuid),
            ));
        }
        Ok(())
    }

    /// sp.py `attachSD`: 328 at 100 domains; an already attached domain is a success; the
    /// domain's `POOL_UUID` gains the pool (380 if another pool holds it) under its own lease;
    /// the map gains it as `attached`.
    ///
    /// # Errors
    /// 328, 358, 380, 651.
    pub fn attach(
        &mut self,
        domains: &FileDomains,
        holder: Holder<'_>,
        sd: &str,
    ) -> Result<(), VdsmError> {
        if self.map.len() >= MAX_DOMAINS_IN_POOL {
            return Err(too_many(self.map.len() + 1));
        }
        let mut md = read(domains, sd)?;
        if self.validate_attached(sd, &md).is_ok() {
            tracing::warn!(domain = %sd, pool = %self.uuid, "domain already attached to pool");
            return Ok(());
        }
        let lease = holder.acquire(domains, sd);
        let result = lease.and_then(|_| {
            attach_domain(&mut md, sd, &self.uuid)?;
            write(domains, sd, &md)
        });
        if sd != self.master {
            holder.release(domains, sd);
        }
        result?;
        let mut map = self.map.clone();
        map.insert(sd.to_owned(), MapStatus::Attached);
        self.set_map(domains, map)
    }

    /// sp.py `activateSD`: the domain must be attached (375/353); already active is a success;
    /// it is made `Regular` (spbackends.py `setDomainRegularRole`) and `active` in the map.
    ///
    /// # Errors
    /// 358, 375, 353.
    pub fn activate(&mut self, domains: &FileDomains, sd: &str) -> Result<(), VdsmError> {
        let mut md = read(domains, sd)?;
        self.validate_attached(sd, &md)?;
        if self.map.get(sd) == Some(&MapStatus::Active) {
            return Ok(());
        }
        if self.backend == Backend::Disk {
            md.demote();
        } else {
            md.set(key::ROLE, ROLE_REGULAR);
        }
        write(domains, sd, &md)?;
        let mut map = self.map.clone();
        map.insert(sd.to_owned(), MapStatus::Active);
        self.set_map(domains, map)
    }

    /// sp.py `deactivateSD`: the domain must be in the map (375). The master with a blank new
    /// master is silently ignored (VDSM's backward compatibility); with a new master, the role
    /// migrates first ([`Self::migrate`]). Then `attached` in the map.
    ///
    /// # Errors
    /// 375; 379 a missing domain when a migration was asked; the migration's errors.
    pub fn deactivate(
        &mut self,
        domains: &FileDomains,
        holder: Holder<'_>,
        sd: &str,
        new_master: &str,
        master_version: i64,
    ) -> Result<(), VdsmError> {
        if !self.map.contains_key(sd) {
            return Err(VdsmError::new(
                ErrorCode::StorageDomainNotMemberOfPool,
                format!("pool={}, domain={sd}", self.uuid),
            ));
        }
        let blank = new_master.is_empty() || new_master == super::metadata::BLANK_UUID;
        match domains.read(sd) {
            // sp.py `deactivateSD`: a domain that cannot be produced is deactivated anyway,
            // unless a master migration was asked.
            Err(e) if !blank => {
                return Err(VdsmError::new(
                    ErrorCode::StorageDomainAccessError,
                    format!("{sd}: cannot migrate the master from it: {e}"),
                ));
            }
            Ok(_) if sd == self.master => {
                if blank {
                    tracing::info!(domain = %sd, "silently ignoring the deactivation of the master domain");
                    return Ok(());
                }
                self.migrate(domains, holder, sd, new_master, master_version)?;
            }
            _ => {}
        }
        let mut map = self.map.clone();
        map.insert(sd.to_owned(), MapStatus::Attached);
        self.set_map(domains, map)
    }

    /// sp.py `masterMigrate` (also `StoragePool.switchMaster`): the version must grow (324); the
    /// new master must be in the map (353), another domain (-32602) and active (369); its lease
    /// is taken, it becomes `Master` (with the pool keys on the disk backend,
    /// `switchMasterDomain`), then the old master becomes `Regular` and its lease is released.
    ///
    /// # Errors
    /// As above; 651 when the new master's lease is held elsewhere.
    pub fn migrate(
        &mut self,
        domains: &FileDomains,
        holder: Holder<'_>,
        current: &str,
        new_master: &str,
        master_version: i64,
    ) -> Result<(), VdsmError> {
        if master_version <= self.master_version {
            return Err(VdsmError::new(
                ErrorCode::StoragePoolWrongMaster,
                format!(
                    "spUUID={}, msdUUID={current}: master version {master_version} is not above {}",
                    self.uuid, self.master_version
                ),
            ));
        }
        match self.map.get(new_master) {
            None => {
                return Err(VdsmError::new(
                    ErrorCode::StorageDomainNotInPool,
                    format!("domain={new_master}, pool={}", self.uuid),
                ));
            }
            Some(_) if new_master == current => {
                return Err(VdsmError::new(
                    ErrorCode::InvalidParams,
                    format!("msdUUID {new_master} is the current master"),
                ));
            }
            Some(MapStatus::Attached) => {
                return Err(VdsmError::new(
                    ErrorCode::StorageDomainNotActive,
                    format!("{new_master} is not active"),
                ));
            }
            Some(MapStatus::Active) => {}
        }
        let cur_md = read(domains, current)?;
        let mut new_md = read(domains, new_master)?;
        holder.acquire(domains, new_master)?;
        new_md.set(key::ROLE, ROLE_MASTER);
        if self.backend == Backend::Disk {
            // spbackends.py `switchMasterDomain`: the pool keys move to the new master.
            for k in [
                key::POOL_DOMAINS,
                key::POOL_DESCRIPTION,
                key::POOL_SPM_LVER,
                key::POOL_SPM_ID,
            ] {
                if let Some(v) = cur_md.get(k) {
                    new_md.set(k, v);
                }
            }
            new_md.set(key::MASTER_VERSION, master_version.to_string());
        }
        if let Err(e) = write(domains, new_master, &new_md) {
            holder.release(domains, new_master);
            return Err(e);
        }
        self.master = new_master.to_owned();
        self.master_version = master_version;
        // Past the point of no return: the old master's cleanup only logs its failures.
        match domains.read(current) {
            Ok(mut md) => {
                if self.backend == Backend::Disk {
                    md.demote();
                } else {
                    md.set(key::ROLE, ROLE_REGULAR);
                }
                if let Err(e) = domains.write(current, &md) {
                    tracing::warn!(domain = %current, error = %e, "old master not made regular");
                }
            }
            Err(e) => tracing::warn!(domain = %current, error = %e, "old master not readable"),
        }
        holder.release(domains, current);
        Ok(())
    }

    /// sp.py `detachSD`: the domain must be attached (375/353), not the master (383); its
    /// `POOL_UUID` loses the pool and the map loses it.
    ///
    /// # Errors
    /// 358, 375, 353, 383.
    pub fn detach(&mut self, domains: &FileDomains, sd: &str) -> Result<(), VdsmError> {
        let mut md = read(domains, sd)?;
        self.validate_attached(sd, &md)?;
        if sd == self.master {
            return Err(VdsmError::new(
                ErrorCode::CannotDetachMasterStorageDomain,
                format!("{sd} is the master domain"),
            ));
        }
        let pools: Vec<String> = md
            .pools()
            .into_iter()
            .filter(|p| *p != self.uuid)
            .map(str::to_owned)
            .collect();
        md.set_pools(&pools.iter().map(String::as_str).collect::<Vec<_>>());
        // sd.py `detach`: "make sure that ROLE is not MASTER_DOMAIN (just in case)".
        md.set(key::ROLE, ROLE_REGULAR);
        write(domains, sd, &md)?;
        let mut map = self.map.clone();
        map.remove(sd);
        self.set_map(domains, map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::domains::write_new_domain;

    const SP: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";
    const SP2: &str = "6849b030-626e-47cb-ad90-3ce782d831b3";
    const A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";
    const C: &str = "cccccccc-0000-0000-0000-000000000003";

    fn holder(owner: &str) -> Holder<'_> {
        Holder {
            owner,
            host_id: 1,
            duration: Duration::from_secs(60),
        }
    }

    fn storage() -> (tempfile::TempDir, FileDomains) {
        let dir = tempfile::tempdir().expect("tempdir");
        for sd in [A, B, C] {
            write_new_domain(dir.path(), "m", sd).expect("layout");
        }
        let d = FileDomains::new(dir.path());
        (dir, d)
    }

    fn code<T: std::fmt::Debug>(r: Result<T, VdsmError>) -> ErrorCode {
        r.expect_err("refused").code
    }

    #[test]
    fn a_forced_detach_frees_a_former_master_for_another_pool_unless_its_lease_is_held() {
        let (_dir, d) = storage();
        create(&d, holder("h"), SP, "dc1", A, 1, &[A.into(), B.into()]).expect("creates");
        // A manager still holding the master's lease keeps it (651).
        holder("spm").acquire(&d, A).expect("held");
        assert_eq!(
            code(detach_from_every_pool(&d, holder("h"), A)),
            ErrorCode::AcquireLockFailure
        );
        holder("spm").release(&d, A);
        detach_from_every_pool(&d, holder("h"), A).expect("detached");
        let a = d.read(A).expect("a");
        assert!(a.pools().is_empty());
        assert!(!a.is_master(), "Regular again, as sd.py `detach` leaves it");
        // Another pool can now be created on it; B still names the first pool.
        create(&d, holder("h"), SP2, "dc2", A, 1, &[A.into()]).expect("reused");
        assert_eq!(
            code(create(&d, holder("h"), SP2, "dc2", B, 1, &[B.into()])),
            ErrorCode::StorageDomainAlreadyAttached
        );
    }

    #[test]
    fn create_writes_the_master_and_attaches_the_rest_as_vdsm_does() {
        let (_dir, d) = storage();
        create(&d, holder("h"), SP, "dc1", A, 1, &[A.into(), B.into()]).expect("creates");
        let a = d.read(A).expect("a");
        assert!(a.is_master());
        assert_eq!(a.pools(), vec![SP]);
        assert_eq!(a.master_version(), Ok(Some(1)));
        assert_eq!(a.spm(), Ok((Some(-1), Some(-1))));
        assert_eq!(a.get(key::POOL_DESCRIPTION), Some("dc1"));
        let map = a.pool_domains().expect("ok").expect("present");
        assert_eq!(map.get(A), Some(&MapStatus::Active));
        assert_eq!(map.get(B), Some(&MapStatus::Attached));
        let b = d.read(B).expect("b");
        assert!(!b.is_master());
        assert_eq!(b.pools(), vec![SP]);
        // The temporary lease is released; the domains are now attached: a second create fails.
        assert_eq!(
            d.inquire_lease(A, Duration::from_secs(60)).expect("ok").1,
            None
        );
        assert_eq!(
            code(create(&d, holder("h"), SP2, "x", A, 1, &[A.into()])),
            ErrorCode::StorageDomainAlreadyAttached
        );
        assert_eq!(
            code(create(&d, holder("h"), SP2, "x", C, 1, &[A.into()])),
            ErrorCode::InvalidParams
        );
    }

    fn created(d: &FileDomains, backend: Backend) -> Pool {
        create(d, holder("h"), SP, "dc1", A, 1, &[A.into()]).expect("creates");
        Pool {
            uuid: SP.into(),
            backend,
            master: A.into(),
            master_version: 1,
            map: [(A.to_owned(), MapStatus::Active)].into_iter().collect(),
        }
    }

    #[test]
    fn attach_activate_deactivate_detach_on_the_disk_backend() {
        let (_dir, d) = storage();
        let mut p = created(&d, Backend::Disk);
        p.attach(&d, holder("h"), B).expect("attach");
        assert_eq!(d.read(B).expect("b").pools(), vec![SP]);
        let on_master = |d: &FileDomains| d.read(A).expect("a").pool_domains().expect("ok");
        assert_eq!(
            on_master(&d).expect("map").get(B),
            Some(&MapStatus::Attached)
        );
        p.attach(&d, holder("h"), B)
            .expect("already attached: a success");
        p.activate(&d, B).expect("activate");
        assert_eq!(on_master(&d).expect("map").get(B), Some(&MapStatus::Active));
        assert_eq!(
            code(p.detach(&d, A)),
            ErrorCode::CannotDetachMasterStorageDomain
        );
        p.deactivate(&d, holder("h"), B, "", 0).expect("deactivate");
        assert_eq!(p.map.get(B), Some(&MapStatus::Attached));
        p.detach(&d, B).expect("detach");
        assert!(d.read(B).expect("b").pools().is_empty());
        assert_eq!(on_master(&d).expect("map").get(B), None);
        assert_eq!(
            code(p.activate(&d, B)),
            ErrorCode::StorageDomainNotMemberOfPool
        );
    }

    #[test]
    fn the_memory_backend_writes_domain_keys_but_not_the_map() {
        let (_dir, d) = storage();
        let mut p = created(&d, Backend::Memory);
        p.attach(&d, holder("h"), B).expect("attach");
        assert_eq!(d.read(B).expect("b").pools(), vec![SP]);
        let on_master = d
            .read(A)
            .expect("a")
            .pool_domains()
            .expect("ok")
            .expect("map");
        assert_eq!(
            on_master.get(B),
            None,
            "the memory backend leaves POOL_DOMAINS alone"
        );
        assert_eq!(p.map.get(B), Some(&MapStatus::Attached));
    }

    #[test]
    fn attach_refuses_a_domain_of_another_pool_and_the_101st() {
        let (_dir, d) = storage();
        let mut other = Metadata::new_domain(C, "Data", "c");
        other.set_pools(&[SP2]);
        d.write(C, &other).expect("write");
        let mut p = created(&d, Backend::Memory);
        assert_eq!(
            code(p.attach(&d, holder("h"), C)),
            ErrorCode::StorageDomainAlreadyAttached
        );
        for i in 0..99 {
            p.map.insert(
                format!("dddddddd-0000-0000-0000-{i:012}"),
                MapStatus::Attached,
            );
        }
        assert_eq!(
            code(p.attach(&d, holder("h"), B)),
            ErrorCode::TooManyDomainsInStoragePool
        );
    }

    #[test]
    fn deactivating_the_master_with_a_new_one_migrates_the_role_first() {
        let (_dir, d) = storage();
        let mut p = created(&d, Backend::Disk);
        let h = holder("h");
        h.acquire(&d, A)
            .expect("the pool manager holds the master's lease");
        p.attach(&d, h, B).expect("attach");
        // Not active yet: 369; same version: 324.
        assert_eq!(
            code(p.deactivate(&d, h, A, B, 2)),
            ErrorCode::StorageDomainNotActive
        );
        p.activate(&d, B).expect("activate");
        assert_eq!(
            code(p.deactivate(&d, h, A, B, 1)),
            ErrorCode::StoragePoolWrongMaster
        );
        // A blank new master: the master's deactivation is silently ignored.
        p.deactivate(&d, h, A, "", 2).expect("ignored");
        assert_eq!(p.master, A);
        p.deactivate(&d, h, A, B, 2).expect("migrates");
        assert_eq!((p.master.as_str(), p.master_version), (B, 2));
        assert_eq!(p.map.get(A), Some(&MapStatus::Attached));
        let b = d.read(B).expect("b");
        assert!(b.is_master());
        assert_eq!(b.master_version(), Ok(Some(2)));
        let a = d.read(A).expect("a");
        assert!(!a.is_master());
        assert_eq!(a.master_version(), Ok(Some(0)));
        // The lease moved with the role.
        let long = Duration::from_secs(60);
        assert_eq!(d.inquire_lease(B, long).expect("ok").1, Some(1));
        assert_eq!(d.inquire_lease(A, long).expect("ok").1, None);
        // The new master's map says A is attached now.
        let map = b.pool_domains().expect("ok").expect("map");
        assert_eq!(map.get(A), Some(&MapStatus::Attached));
    }

    #[test]
    fn a_master_that_cannot_be_read_is_not_migrated_away_379() {
        let (dir, d) = storage();
        let mut p = created(&d, Backend::Memory);
        p.attach(&d, holder("h"), B).expect("attach");
        p.activate(&d, B).expect("activate");
        let metadata = dir.path().join("m").join(A).join("dom_md").join("metadata");
        std::fs::remove_file(&metadata).expect("rm");
        std::fs::create_dir(&metadata).expect("a directory where the file was");
        let before = p.clone();
        assert_eq!(
            code(p.deactivate(&d, holder("h"), A, B, 2)),
            ErrorCode::StorageDomainAccessError
        );
        assert_eq!(p, before);
    }

    #[test]
    fn reconstruct_writes_fresh_pool_metadata_on_the_new_master() {
        let (_dir, d) = storage();
        let map: DomainMap = [
            (B.to_owned(), MapStatus::Active),
            (C.to_owned(), MapStatus::Attached),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            code(reconstruct(&d, holder("h"), SP, "dc", A, 5, &map)),
            ErrorCode::InvalidParams
        );
        reconstruct(&d, holder("h"), SP, "dc", B, 5, &map).expect("reconstructs");
        let b = d.read(B).expect("b");
        assert!(b.is_master());
        assert_eq!(b.master_version(), Ok(Some(5)));
        assert_eq!(b.pool_domains(), Ok(Some(map)));
        assert_eq!(b.pools(), vec![SP]);
    }
}
