//! The pool connection a host holds in memory and VDSM's decision tables over it: connect (both
//! backends), the master check of sp.py `setMasterDomain`, the pool manager's role, disconnect
//! and getInfo. Pure: no I/O, no clock; the host reads the metadata the decisions need and
//! applies the resulting active set to its monitors.
//!
//! Every call either succeeds or leaves the state unchanged. VDSM is not atomic here: a connect
//! to a connected pool replaces the map before `setMasterDomain` checks the master (hsm.py
//! `_updateStoragePool`), so a refused connect can leave the new map held and, when only the
//! master-active check fails, its monitors running. We check first: a host's report then never
//! shows a map it refused, which is what the controller judges sync by.

use super::domains::DomainError;
use super::metadata::Metadata;
use crate::api::{DomainMap, MapStatus, PoolConnection};
use crate::protocol::wire::{
    ConnectParams, DisconnectParams, PoolDomainInfo, PoolInfo, PoolInfoDetails, vdsm_status_name,
};
use crate::protocol::{ErrorCode, VdsmError};

/// The largest map a connect accepts. VDSM has no limit on connect (328 is an attach error);
/// this agent refuses maps its report could not carry (the schema's bound), with 302.
pub const MAX_CONNECT_MAP: usize = PoolConnection::MAX_MAP_ENTRIES;

// The report is built from this state: the largest map a host accepts and its monitors (one per
// active domain) fit the report's schema bounds, so the API server never refuses the agent's
// report for its size; and a pool at VDSM's attach limit fits too.
const _: () = assert!(
    MAX_CONNECT_MAP <= crate::api::HostReport::MAX_DOMAINS
        && crate::protocol::wire::MAX_DOMAINS_IN_POOL <= MAX_CONNECT_MAP
);

/// Where the pool's map lives (spbackends.py); reported in the connection.
pub use crate::api::PoolBackend as Backend;

/// This host's pool-manager role (sp.py `spmRole`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpmRole {
    /// Not the pool manager.
    Free,
    /// The pool manager, with its lease version.
    Spm {
        /// The lease version.
        lver: i64,
    },
}

/// sp.py `SPM_ACQUIRED`, `SPM_FREE`.
impl SpmRole {
    /// VDSM's name for the role in `getSpmStatus`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Free => "Free",
            Self::Spm { .. } => "SPM",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Conn {
    /// The connection as reported; its `backend` is always set.
    view: PoolConnection,
    spm: SpmRole,
}

impl Conn {
    fn backend(&self) -> Backend {
        self.view.backend.unwrap_or(Backend::Memory)
    }
}

/// What a host holds: at most one pool connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolState {
    conn: Option<Conn>,
}

/// The master as a connect or refresh read it: `None` when no master was named.
pub type MasterRead<'a> = Option<&'a Result<Metadata, DomainError>>;

/// sp.py `setMasterDomain` with the backend's `validateMasterDomainVersion`; returns the map of
/// the disk backend (the master's `POOL_DOMAINS`).
///
/// # Errors
/// 304 no master or not found; 324 not a master, not of this pool, or (disk backend) another
/// `MASTER_VERSION`; the read's own error otherwise (752 seal broken...).
pub fn verify_master(
    pool: &str,
    master_sd: &str,
    master: MasterRead<'_>,
    backend: Backend,
    master_version: i64,
) -> Result<Option<DomainMap>, VdsmError> {
    let wrong = |why: &str| {
        VdsmError::new(
            ErrorCode::StoragePoolWrongMaster,
            format!("spUUID={pool}, msdUUID={master_sd}: {why}"),
        )
    };
    let md = match master {
        None => {
            return Err(VdsmError::new(
                ErrorCode::StoragePoolMasterNotFound,
                format!("spUUID={pool}, msdUUID={master_sd}: no master domain named"),
            ));
        }
        Some(Err(DomainError::NotFound(_))) => {
            return Err(VdsmError::new(
                ErrorCode::StoragePoolMasterNotFound,
                format!("spUUID={pool}, msdUUID={master_sd}: master domain not found"),
            ));
        }
        Some(Err(e)) => return Err(e.vdsm(false)),
        Some(Ok(md)) => md,
    };
    if !md.is_master() {
        return Err(wrong("not a master domain at all"));
    }
    if !md.pools().contains(&pool) {
        return Err(wrong("the master domain does not belong to the pool"));
    }
    if backend == Backend::Memory {
        // StoragePoolMemoryBackend.validateMasterDomainVersion compares with the version of
        // the same call: it never fails.
        return Ok(None);
    }
    match md.master_version() {
        Ok(Some(v)) if v == master_version => {}
        Ok(v) => {
            return Err(wrong(&format!(
                "master version {master_version} expected, the master has {v:?}"
            )));
        }
        Err(e) => return Err(wrong(&e.to_string())),
    }
    md.pool_domains()
        .map(|m| Some(m.unwrap_or_default()))
        .map_err(|e| VdsmError::new(ErrorCode::MetaDataValidationError, e.to_string()))
}

fn unknown(pool: &str) -> VdsmError {
    VdsmError::new(
        ErrorCode::StoragePoolUnknown,
        format!("unknown pool id, pool not connected: {pool}"),
    )
}

impl PoolState {
    /// The connection, if any.
    pub fn connection(&self) -> Option<&PoolConnection> {
        self.conn.as_ref().map(|c| &c.view)
    }

    /// The backend of the connection, if any.
    pub fn backend(&self) -> Option<Backend> {
        self.conn.as_ref().map(Conn::backend)
    }

    /// This host's pool-manager role.
    pub fn spm(&self) -> SpmRole {
        self.conn.as_ref().map_or(SpmRole::Free, |c| c.spm)
    }

    /// The backend a connect with `p` would use, or its refusal (checks before any read, in
    /// hsm.py `_connectStoragePool` and `_updateStoragePool` order):
    ///
    /// | state | call | result |
    /// | --- | --- | --- |
    /// | any | a map larger than the report can carry | 302 |
    /// | connected to another pool | any | 323 |
    /// | connected, other hostID | any | 325 |
    /// | connected (memory backend) | no `domainDict` | 325, no downgrade |
    /// | connected (disk backend) | no `domainDict` | disk: the map re-read from the master |
    /// | connected (disk backend) | `domainDict` | memory: live upgrade |
    /// | not connected | `domainDict` or not | memory or disk |
    ///
    /// # Errors
    /// As in the table.
    pub fn connect_backend(&self, p: &ConnectParams) -> Result<Backend, VdsmError> {
        let pool = p.storagepool_id.to_ascii_lowercase();
        if let Some(map) = &p.domain_dict
            && map.len() > MAX_CONNECT_MAP
        {
            return Err(VdsmError::new(
                ErrorCode::StoragePoolConnectionError,
                format!(
                    "the map has {} domains; this agent holds at most {MAX_CONNECT_MAP}",
                    map.len()
                ),
            ));
        }
        if let Some(c) = &self.conn {
            if c.view.uuid != pool {
                return Err(VdsmError::new(
                    ErrorCode::CannotConnectMultiplePools,
                    format!("connected to pool {}", c.view.uuid),
                ));
            }
            if c.view.host_id != p.host_id {
                return Err(VdsmError::new(
                    ErrorCode::StoragePoolConnected,
                    format!("hostId={}, newHostId={}", c.view.host_id, p.host_id),
                ));
            }
            if p.domain_dict.is_none() && c.backend() == Backend::Memory {
                return Err(VdsmError::new(
                    ErrorCode::StoragePoolConnected,
                    "cannot downgrade pool backend: connect without domainDict",
                ));
            }
        }
        Ok(if p.domain_dict.is_some() {
            Backend::Memory
        } else {
            Backend::Disk
        })
    }

    /// `StoragePool.connect` with the master as read: [`Self::connect_backend`], then the
    /// master check ([`verify_master`]), then the master must be `active` in the map (sp.py
    /// `__rebuild`, 324). The whole map is replaced; the pool-manager role is kept.
    ///
    /// # Errors
    /// As above; the state is unchanged on error.
    pub fn connect(
        &mut self,
        p: &ConnectParams,
        master_sd: &str,
        master: MasterRead<'_>,
    ) -> Result<(), VdsmError> {
        let backend = self.connect_backend(p)?;
        let pool = p.storagepool_id.to_ascii_lowercase();
        let disk_map = verify_master(&pool, master_sd, master, backend, p.master_version)?;
        let map: DomainMap = match (&p.domain_dict, disk_map) {
            (Some(dict), _) => dict
                .iter()
                .map(|(sd, s)| (sd.to_ascii_lowercase(), *s))
                .collect(),
            (None, map) => map.unwrap_or_default(),
        };
        let master = master_sd.to_ascii_lowercase();
        if map.get(&master) != Some(&MapStatus::Active) {
            return Err(VdsmError::new(
                ErrorCode::StoragePoolWrongMaster,
                format!("master domain {master} is not active in the map"),
            ));
        }
        let spm = self.spm();
        self.conn = Some(Conn {
            view: PoolConnection {
                uuid: pool,
                host_id: p.host_id,
                master_domain: Some(master),
                master_version: p.master_version,
                domain_map: map,
                spm_lver: None,
                backend: Some(backend),
            },
            spm,
        });
        Ok(())
    }

    /// `StoragePool.refresh(masterSdUUID, masterVersion)`: the master checked again; the disk
    /// backend re-reads its map from it (the memory backend keeps its map).
    ///
    /// # Errors
    /// 309 not connected to `pool`; the master check's errors; the state is unchanged then.
    pub fn refresh(
        &mut self,
        pool: &str,
        master_sd: &str,
        master_version: i64,
        master: MasterRead<'_>,
    ) -> Result<(), VdsmError> {
        let c = self.connected(pool)?;
        let p = ConnectParams {
            storagepool_id: c.view.uuid.clone(),
            host_id: c.view.host_id,
            scsi_key: String::new(),
            master_sd_uuid: master_sd.to_owned(),
            master_version,
            domain_dict: (c.backend() == Backend::Memory).then(|| c.view.domain_map.clone()),
        };
        self.connect(&p, master_sd, master)
    }

    fn connected(&self, pool: &str) -> Result<&Conn, VdsmError> {
        let pool = pool.to_ascii_lowercase();
        self.conn
            .as_ref()
            .filter(|c| c.view.uuid == pool)
            .ok_or_else(|| unknown(&pool))
    }

    /// The connection to `pool`.
    ///
    /// # Errors
    /// 309 when not connected to it.
    pub fn pool(&self, pool: &str) -> Result<&PoolConnection, VdsmError> {
        self.connected(pool).map(|c| &c.view)
    }

    /// The connection to `pool` when this host is its pool manager (sp.py `@secured`).
    ///
    /// # Errors
    /// 309 when not connected to it, 654 when not the pool manager.
    pub fn managed(&self, pool: &str) -> Result<&PoolConnection, VdsmError> {
        let c = self.connected(pool)?;
        match c.spm {
            SpmRole::Spm { .. } => Ok(&c.view),
            SpmRole::Free => Err(VdsmError::new(
                ErrorCode::SpmStatusError,
                format!("not SPM: spUUID={}", c.view.uuid),
            )),
        }
    }

    /// Sets the pool-manager role (when connected).
    pub fn set_spm(&mut self, role: SpmRole) {
        if let Some(c) = &mut self.conn {
            c.spm = role;
        }
    }

    /// Replaces the map the host holds (the pool manager's own changes).
    pub fn set_map(&mut self, map: DomainMap) {
        if let Some(c) = &mut self.conn {
            c.view.domain_map = map;
        }
    }

    /// Sets the master and its version (the pool manager's master migration).
    pub fn set_master(&mut self, master: &str, version: i64) {
        if let Some(c) = &mut self.conn {
            c.view.master_domain = Some(master.to_owned());
            c.view.master_version = version;
        }
    }

    /// `StoragePool.disconnect`: leaves the pool. Not connected, or connected to another pool: a
    /// success that changes nothing (as VDSM). Returns whether the state changed.
    ///
    /// # Errors
    /// 656 while this host is the pool manager (sp.py `validateNotSPM`).
    pub fn disconnect(&mut self, p: &DisconnectParams) -> Result<bool, VdsmError> {
        let pool = p.storagepool_id.to_ascii_lowercase();
        match &self.conn {
            Some(c) if c.view.uuid == pool => {
                if c.spm != SpmRole::Free {
                    return Err(VdsmError::new(
                        ErrorCode::IsSpm,
                        format!("operation not allowed while SPM is active: spUUID={pool}"),
                    ));
                }
                self.conn = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `StoragePool.getInfo` for `pool`; `lver`/`spm_id` as the caller learnt them.
    ///
    /// # Errors
    /// 309 when not connected to that pool.
    pub fn info(&self, pool: &str) -> Result<PoolInfo, VdsmError> {
        let c = self.connected(pool)?;
        let map = &c.view.domain_map;
        let domains = map
            .iter()
            .map(|(sd, s)| format!("{sd}:{}", vdsm_status_name(*s)))
            .collect::<Vec<_>>()
            .join(",");
        let (lver, spm_id) = match c.spm {
            SpmRole::Spm { lver } => (lver, i64::from(c.view.host_id)),
            SpmRole::Free => (-1, -1),
        };
        Ok(PoolInfo {
            info: PoolInfoDetails {
                name: "No Description".to_owned(),
                pool_status: "connected".to_owned(),
                master_uuid: c.view.master_domain.clone().unwrap_or_default(),
                master_ver: c.view.master_version,
                lver,
                spm_id,
                domains,
            },
            dominfo: map
                .iter()
                .map(|(sd, s)| {
                    let info = PoolDomainInfo {
                        status: vdsm_status_name(*s).to_owned(),
                    };
                    (sd.clone(), info)
                })
                .collect(),
        })
    }

    /// The domains to monitor: the map's `active` entries (none when not connected).
    pub fn active_domains(&self) -> impl Iterator<Item = &str> {
        self.conn.iter().flat_map(|c| c.view.domain_map.active())
    }

    /// The connection as the report shows it, with the pool-manager role (`spmLver`).
    pub fn report(&self) -> Option<PoolConnection> {
        self.conn.as_ref().map(|c| PoolConnection {
            spm_lver: match c.spm {
                SpmRole::Spm { lver } => Some(lver),
                SpmRole::Free => None,
            },
            ..c.view.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::metadata::key;

    const SP: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";
    const SP2: &str = "6849b030-626e-47cb-ad90-3ce782d831b3";
    const A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";

    use MapStatus::{Active, Attached};

    fn connect_params(pool: &str, host: i32, map: Option<&[(&str, MapStatus)]>) -> ConnectParams {
        ConnectParams {
            storagepool_id: pool.into(),
            host_id: host,
            scsi_key: pool.into(),
            master_sd_uuid: A.into(),
            master_version: 1,
            domain_dict: map.map(|m| m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
        }
    }

    /// `A` as a pool manager leaves it: master of `pool`, version 1, `POOL_DOMAINS` = `map`.
    fn master_of(pool: &str, map: &[(&str, MapStatus)]) -> Result<Metadata, DomainError> {
        let mut md = Metadata::new_domain(A, "Data", "a");
        md.set(key::ROLE, "Master");
        md.set_pools(&[pool]);
        md.set(key::MASTER_VERSION, "1");
        md.set_pool_domains(&map.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect());
        Ok(md)
    }

    fn code<T>(r: Result<T, VdsmError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    fn try_connect(s: &mut PoolState, p: &ConnectParams) -> Result<(), VdsmError> {
        let md = master_of(&p.storagepool_id, &[(A, Active)]);
        let master = p.master_sd_uuid.clone();
        s.connect(p, &master, Some(&md))
    }

    fn connected(map: &[(&str, MapStatus)]) -> PoolState {
        let mut s = PoolState::default();
        try_connect(&mut s, &connect_params(SP, 1, Some(map))).expect("connects");
        s
    }

    #[test]
    fn not_connected_with_map_connects_and_activates_active_entries() {
        let s = connected(&[(A, Active), (B, Attached)]);
        assert_eq!(s.active_domains().collect::<Vec<_>>(), vec![A]);
        assert_eq!(s.connection().map(|c| c.host_id), Some(1));
        assert_eq!(s.backend(), Some(Backend::Memory));
    }

    #[test]
    fn connected_to_another_pool_fails_323_and_keeps_the_state() {
        let mut s = connected(&[(A, Active)]);
        let before = s.clone();
        let r = try_connect(&mut s, &connect_params(SP2, 1, Some(&[(A, Active)])));
        assert_eq!(code(r), Some(ErrorCode::CannotConnectMultiplePools));
        assert_eq!(s, before);
    }

    #[test]
    fn same_pool_same_host_replaces_the_whole_map() {
        let mut s = connected(&[(A, Active), (B, Active)]);
        try_connect(
            &mut s,
            &connect_params(SP, 1, Some(&[(A, Active), (B, Attached)])),
        )
        .expect("refresh");
        assert_eq!(s.active_domains().collect::<Vec<_>>(), vec![A]);
        let again = s.clone();
        try_connect(
            &mut s,
            &connect_params(SP, 1, Some(&[(A, Active), (B, Attached)])),
        )
        .expect("idempotent");
        assert_eq!(s, again);
    }

    #[test]
    fn connected_with_another_host_id_fails_325() {
        let mut s = connected(&[(A, Active)]);
        let before = s.clone();
        let r = try_connect(&mut s, &connect_params(SP, 2, Some(&[(A, Active)])));
        assert_eq!(code(r), Some(ErrorCode::StoragePoolConnected));
        assert_eq!(s, before);
    }

    #[test]
    fn connected_with_a_map_then_connect_without_map_fails_325() {
        let mut s = connected(&[(A, Active)]);
        let before = s.clone();
        assert_eq!(
            code(try_connect(&mut s, &connect_params(SP, 1, None))),
            Some(ErrorCode::StoragePoolConnected)
        );
        assert_eq!(s, before);
    }

    #[test]
    fn without_map_the_disk_backend_reads_the_map_from_the_master() {
        let mut s = PoolState::default();
        let md = master_of(SP, &[(A, Active), (B, Attached)]);
        s.connect(&connect_params(SP, 1, None), A, Some(&md))
            .expect("connects");
        assert_eq!(s.backend(), Some(Backend::Disk));
        assert_eq!(s.active_domains().collect::<Vec<_>>(), vec![A]);
        assert_eq!(s.connection().map(|c| c.domain_map.len()), Some(2));
        // Again without a map: a refresh from storage, still the disk backend.
        let md = master_of(SP, &[(A, Active), (B, Active)]);
        s.connect(&connect_params(SP, 1, None), A, Some(&md))
            .expect("refresh");
        assert_eq!(s.active_domains().count(), 2);
        // With a map: the live upgrade to the memory backend.
        try_connect(&mut s, &connect_params(SP, 1, Some(&[(A, Active)]))).expect("upgrade");
        assert_eq!(s.backend(), Some(Backend::Memory));
        assert_eq!(s.active_domains().count(), 1);
    }

    #[test]
    fn the_disk_backend_refuses_another_master_version_with_324() {
        let mut s = PoolState::default();
        let mut p = connect_params(SP, 1, None);
        p.master_version = 2;
        let md = master_of(SP, &[(A, Active)]);
        assert_eq!(
            code(s.connect(&p, A, Some(&md))),
            Some(ErrorCode::StoragePoolWrongMaster)
        );
        // The memory backend compares with the call's own version: never refused for it.
        p.domain_dict = Some([(A.to_owned(), Active)].into_iter().collect());
        s.connect(&p, A, Some(&md)).expect("memory backend");
    }

    #[test]
    fn the_master_check_refuses_as_set_master_domain_does() {
        let p = connect_params(SP, 1, Some(&[(A, Active)]));
        let refused = |md: MasterRead<'_>| {
            let mut s = PoolState::default();
            let r = code(s.connect(&p, A, md));
            assert_eq!(s, PoolState::default());
            r
        };
        let wrong = Some(ErrorCode::StoragePoolWrongMaster);
        let not_found = Some(ErrorCode::StoragePoolMasterNotFound);
        assert_eq!(refused(None), not_found);
        let missing = Err(DomainError::NotFound(A.into()));
        assert_eq!(refused(Some(&missing)), not_found);
        // Fresh from make-domain: no pool's master until `StoragePool.create` made it one.
        let fresh = Ok(Metadata::new_domain(A, "Data", "a"));
        assert_eq!(refused(Some(&fresh)), wrong);
        let mut regular_of_pool = master_of(SP, &[]);
        if let Ok(md) = &mut regular_of_pool {
            md.set(key::ROLE, "Regular");
        }
        assert_eq!(refused(Some(&regular_of_pool)), wrong);
        let other_pool = master_of(SP2, &[]);
        assert_eq!(refused(Some(&other_pool)), wrong);
        // A `Master` that lists no pool (never created) is refused too.
        let mut never_created = Metadata::new_domain(A, "Data", "a");
        never_created.set(key::ROLE, "Master");
        assert_eq!(refused(Some(&Ok(never_created))), wrong);
    }

    #[test]
    fn master_not_active_fails_324_when_connected_or_not() {
        let mut s = PoolState::default();
        let r = try_connect(
            &mut s,
            &connect_params(SP, 1, Some(&[(A, Attached), (B, Active)])),
        );
        assert_eq!(code(r), Some(ErrorCode::StoragePoolWrongMaster));
        assert_eq!(s, PoolState::default());
        let mut s = connected(&[(A, Active)]);
        let before = s.clone();
        let r = try_connect(&mut s, &connect_params(SP, 1, Some(&[(B, Active)])));
        assert_eq!(code(r), Some(ErrorCode::StoragePoolWrongMaster));
        assert_eq!(s, before);
    }

    #[test]
    fn an_empty_master_is_refused_304() {
        let mut s = PoolState::default();
        let mut p = connect_params(SP, 1, Some(&[(B, Attached)]));
        p.master_sd_uuid.clear();
        assert_eq!(
            code(s.connect(&p, "", None)),
            Some(ErrorCode::StoragePoolMasterNotFound)
        );
    }

    #[test]
    fn a_hundred_domains_connect_and_more_than_the_report_holds_fail_302() {
        let mut s = PoolState::default();
        let mut p = connect_params(SP, 1, Some(&[(A, Active)]));
        let map = p.domain_dict.get_or_insert_default();
        for i in 0..120 {
            map.insert(format!("cccccccc-0000-0000-0000-{i:012}"), Attached);
        }
        try_connect(&mut s, &p).expect("328 is an attach error, never a connect one");
        let map = p.domain_dict.get_or_insert_default();
        for i in 120..MAX_CONNECT_MAP {
            map.insert(format!("cccccccc-0000-0000-0000-{i:012}"), Attached);
        }
        assert_eq!(
            code(try_connect(&mut s, &p)),
            Some(ErrorCode::StoragePoolConnectionError)
        );
    }

    #[test]
    fn disconnect_not_connected_or_other_pool_is_a_no_op_success() {
        let mut s = PoolState::default();
        let d = |pool: &str| DisconnectParams {
            storagepool_id: pool.into(),
            host_id: 1,
            scsi_key: String::new(),
        };
        assert_eq!(s.disconnect(&d(SP)), Ok(false));
        let mut s2 = connected(&[(A, Active)]);
        assert_eq!(s2.disconnect(&d(SP2)), Ok(false));
        assert!(s2.connection().is_some());
        assert_eq!(s2.disconnect(&d(SP)), Ok(true));
        assert_eq!(s2.active_domains().count(), 0);
        s = s2;
        assert_eq!(s, PoolState::default());
    }

    #[test]
    fn the_pool_manager_cannot_disconnect_656_and_others_get_654() {
        let mut s = connected(&[(A, Active)]);
        assert_eq!(code(s.managed(SP)), Some(ErrorCode::SpmStatusError));
        assert_eq!(code(s.managed(SP2)), Some(ErrorCode::StoragePoolUnknown));
        s.set_spm(SpmRole::Spm { lver: 3 });
        assert!(s.managed(SP).is_ok());
        let d = DisconnectParams {
            storagepool_id: SP.into(),
            host_id: 1,
            scsi_key: String::new(),
        };
        assert_eq!(code(s.disconnect(&d)), Some(ErrorCode::IsSpm));
        assert_eq!(s.info(SP).map(|i| (i.info.lver, i.info.spm_id)), Ok((3, 1)));
        // A connect keeps the role.
        try_connect(&mut s, &connect_params(SP, 1, Some(&[(A, Active)]))).expect("refresh");
        assert_eq!(s.spm(), SpmRole::Spm { lver: 3 });
        s.set_spm(SpmRole::Free);
        assert_eq!(s.disconnect(&d), Ok(true));
    }

    #[test]
    fn get_info_of_unknown_pool_fails_309_and_names_the_map() {
        let s = connected(&[(A, Active), (B, Attached)]);
        assert_eq!(
            s.info(SP2).map_err(|e| e.code).err(),
            Some(ErrorCode::StoragePoolUnknown)
        );
        let info = s.info(SP).expect("connected");
        assert_eq!(info.info.master_uuid, A);
        assert_eq!(info.info.domains, format!("{A}:Active,{B}:Attached"));
        assert_eq!(info.domain_map().len(), 2);
    }

    #[test]
    fn report_lists_the_map_sorted() {
        let s = connected(&[(B, Attached), (A, Active)]);
        let r = s.report().expect("connected");
        assert_eq!(
            r.domain_map.keys().map(String::as_str).collect::<Vec<_>>(),
            vec![A, B]
        );
        assert_eq!(r.master_domain.as_deref(), Some(A));
    }
}
