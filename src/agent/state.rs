//! The pool connection a host holds in memory (VDSM's memory backend) and VDSM's connect decision
//! table. Pure: no I/O, no clock; the host applies the resulting active set to its monitors.
//!
//! Every call either succeeds or leaves the state unchanged (VDSM may half-apply a map before its
//! master check fails; we check first, so a refused connect never changes what the host holds).

use crate::api::{DomainMap, MapStatus, PoolConnection};
use crate::protocol::wire::{
    ConnectParams, DisconnectParams, MAX_DOMAINS_IN_POOL, PoolDomainInfo, PoolInfo,
    PoolInfoDetails, vdsm_status_name,
};
use crate::protocol::{ErrorCode, VdsmError};

// The report is built from this state: the largest map a host accepts (larger ones fail 328) and
// its monitors (one per active domain) fit the report's schema bounds, so the API server never
// refuses the agent's report for its size.
const _: () = assert!(
    MAX_DOMAINS_IN_POOL <= crate::api::PoolConnection::MAX_MAP_ENTRIES
        && MAX_DOMAINS_IN_POOL <= crate::api::HostReport::MAX_DOMAINS
);

/// What a host holds: at most one pool connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolState {
    conn: Option<PoolConnection>,
}

impl PoolState {
    /// The connection, if any.
    pub fn connection(&self) -> Option<&PoolConnection> {
        self.conn.as_ref()
    }

    /// `StoragePool.connect`, VDSM's decision table (checks in VDSM's order):
    ///
    /// | state | call | result |
    /// | --- | --- | --- |
    /// | any | more than 100 domains | 328 |
    /// | connected to another pool | any | 323 |
    /// | connected, other hostID | any | 325 |
    /// | connected (memory backend) | no `domainDict` | 325, no downgrade |
    /// | not connected | no `domainDict` | 302, legacy pools are not served yet |
    /// | any | master given but not `active` in the map | 324 |
    /// | not connected, or this pool and hostID | `domainDict` | the whole map replaced |
    ///
    /// # Errors
    /// As in the table; the state is unchanged on error.
    pub fn connect(&mut self, p: &ConnectParams) -> Result<(), VdsmError> {
        let pool = p.storagepool_id.to_ascii_lowercase();
        if let Some(map) = &p.domain_dict
            && map.len() > MAX_DOMAINS_IN_POOL
        {
            return Err(VdsmError::new(
                ErrorCode::TooManyDomainsInStoragePool,
                format!(
                    "the map has {} domains; a pool holds at most {MAX_DOMAINS_IN_POOL}",
                    map.len()
                ),
            ));
        }
        if let Some(c) = &self.conn {
            if c.uuid != pool {
                return Err(VdsmError::new(
                    ErrorCode::CannotConnectMultiplePools,
                    format!("connected to pool {}", c.uuid),
                ));
            }
            if c.host_id != p.host_id {
                return Err(VdsmError::new(
                    ErrorCode::StoragePoolConnected,
                    format!("hostId={}, newHostId={}", c.host_id, p.host_id),
                ));
            }
        }
        let Some(dict) = &p.domain_dict else {
            return Err(if self.conn.is_some() {
                VdsmError::new(
                    ErrorCode::StoragePoolConnected,
                    "cannot downgrade pool backend: connect without domainDict",
                )
            } else {
                VdsmError::new(
                    ErrorCode::StoragePoolConnectionError,
                    "legacy pools (connect without domainDict, compatibility 3.4 and lower) are not supported by this agent yet",
                )
            });
        };
        let map: DomainMap = dict
            .iter()
            .map(|(sd, s)| (sd.to_ascii_lowercase(), *s))
            .collect();
        let master = Some(p.master_sd_uuid.to_ascii_lowercase()).filter(|m| !m.is_empty());
        if let Some(m) = &master
            && map.get(m) != Some(&MapStatus::Active)
        {
            return Err(VdsmError::new(
                ErrorCode::StoragePoolWrongMaster,
                format!("master domain {m} is not active in the map"),
            ));
        }
        self.conn = Some(PoolConnection {
            uuid: pool,
            host_id: p.host_id,
            master_domain: master,
            master_version: p.master_version,
            domain_map: map,
        });
        Ok(())
    }

    /// `StoragePool.disconnect`: leaves the pool. Not connected, or connected to another pool: a
    /// success that changes nothing (as VDSM). Returns whether the state changed.
    pub fn disconnect(&mut self, p: &DisconnectParams) -> bool {
        let pool = p.storagepool_id.to_ascii_lowercase();
        if self.conn.as_ref().is_some_and(|c| c.uuid == pool) {
            self.conn = None;
            true
        } else {
            false
        }
    }

    /// `StoragePool.getInfo` for `pool`.
    ///
    /// # Errors
    /// 309 when not connected to that pool.
    pub fn info(&self, pool: &str) -> Result<PoolInfo, VdsmError> {
        let pool = pool.to_ascii_lowercase();
        let Some(c) = self.conn.as_ref().filter(|c| c.uuid == pool) else {
            return Err(VdsmError::new(
                ErrorCode::StoragePoolUnknown,
                format!("unknown pool id, pool not connected: {pool}"),
            ));
        };
        let domains = c
            .domain_map
            .iter()
            .map(|(sd, s)| format!("{sd}:{}", vdsm_status_name(*s)))
            .collect::<Vec<_>>()
            .join(",");
        Ok(PoolInfo {
            info: PoolInfoDetails {
                name: "No Description".to_owned(),
                pool_status: "connected".to_owned(),
                master_uuid: c.master_domain.clone().unwrap_or_default(),
                master_ver: c.master_version,
                lver: -1,
                spm_id: -1,
                domains,
            },
            dominfo: c
                .domain_map
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
        self.conn.iter().flat_map(|c| c.domain_map.active())
    }

    /// The connection as the report shows it.
    pub fn report(&self) -> Option<PoolConnection> {
        self.conn.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";
    const SP2: &str = "6849b030-626e-47cb-ad90-3ce782d831b3";
    const A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";

    fn connect(pool: &str, host: i32, map: Option<&[(&str, MapStatus)]>) -> ConnectParams {
        ConnectParams {
            storagepool_id: pool.into(),
            host_id: host,
            scsi_key: pool.into(),
            master_sd_uuid: A.into(),
            master_version: 1,
            domain_dict: map.map(|m| m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
        }
    }

    fn code(r: Result<(), VdsmError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    fn connected(map: &[(&str, MapStatus)]) -> PoolState {
        let mut s = PoolState::default();
        s.connect(&connect(SP, 1, Some(map))).expect("connects");
        s
    }

    use MapStatus::{Active, Attached};

    #[test]
    fn not_connected_with_map_connects_and_activates_active_entries() {
        let s = connected(&[(A, Active), (B, Attached)]);
        assert_eq!(s.active_domains().collect::<Vec<_>>(), vec![A]);
        assert_eq!(s.connection().map(|c| c.host_id), Some(1));
    }

    #[test]
    fn connected_to_another_pool_fails_323_and_keeps_the_state() {
        let mut s = connected(&[(A, Active)]);
        let before = s.clone();
        let r = s.connect(&connect(SP2, 1, Some(&[(A, Active)])));
        assert_eq!(code(r), Some(ErrorCode::CannotConnectMultiplePools));
        assert_eq!(s, before);
    }

    #[test]
    fn same_pool_same_host_replaces_the_whole_map() {
        let mut s = connected(&[(A, Active), (B, Active)]);
        s.connect(&connect(SP, 1, Some(&[(A, Active), (B, Attached)])))
            .expect("refresh");
        assert_eq!(s.active_domains().collect::<Vec<_>>(), vec![A]);
        let again = s.clone();
        s.connect(&connect(SP, 1, Some(&[(A, Active), (B, Attached)])))
            .expect("idempotent");
        assert_eq!(s, again);
    }

    #[test]
    fn connected_with_another_host_id_fails_325() {
        let mut s = connected(&[(A, Active)]);
        let before = s.clone();
        let r = s.connect(&connect(SP, 2, Some(&[(A, Active)])));
        assert_eq!(code(r), Some(ErrorCode::StoragePoolConnected));
        assert_eq!(s, before);
    }

    #[test]
    fn connected_with_a_map_then_connect_without_map_fails_325() {
        let mut s = connected(&[(A, Active)]);
        let before = s.clone();
        assert_eq!(
            code(s.connect(&connect(SP, 1, None))),
            Some(ErrorCode::StoragePoolConnected)
        );
        assert_eq!(s, before);
    }

    #[test]
    fn not_connected_without_map_is_a_clear_legacy_error() {
        let mut s = PoolState::default();
        let r = s.connect(&connect(SP, 1, None));
        assert_eq!(code(r), Some(ErrorCode::StoragePoolConnectionError));
        assert_eq!(s, PoolState::default());
    }

    #[test]
    fn master_not_active_fails_324_when_connected_or_not() {
        let mut s = PoolState::default();
        let r = s.connect(&connect(SP, 1, Some(&[(A, Attached), (B, Active)])));
        assert_eq!(code(r), Some(ErrorCode::StoragePoolWrongMaster));
        assert_eq!(s, PoolState::default());
        let mut s = connected(&[(A, Active)]);
        let before = s.clone();
        let r = s.connect(&connect(SP, 1, Some(&[(B, Active)])));
        assert_eq!(code(r), Some(ErrorCode::StoragePoolWrongMaster));
        assert_eq!(s, before);
    }

    #[test]
    fn no_master_given_skips_the_master_check() {
        let mut s = PoolState::default();
        let mut p = connect(SP, 1, Some(&[(B, Attached)]));
        p.master_sd_uuid.clear();
        s.connect(&p).expect("connects");
        assert_eq!(s.connection().and_then(|c| c.master_domain.clone()), None);
    }

    #[test]
    fn more_than_100_domains_fail_328() {
        let mut s = PoolState::default();
        let mut p = connect(SP, 1, Some(&[(A, Active)]));
        let map = p.domain_dict.get_or_insert_default();
        for i in 0..100 {
            map.insert(format!("cccccccc-0000-0000-0000-{i:012}"), Attached);
        }
        assert_eq!(
            code(s.connect(&p)),
            Some(ErrorCode::TooManyDomainsInStoragePool)
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
        assert!(!s.disconnect(&d(SP)));
        let mut s2 = connected(&[(A, Active)]);
        assert!(!s2.disconnect(&d(SP2)));
        assert!(s2.connection().is_some());
        assert!(s2.disconnect(&d(SP)));
        assert_eq!(s2.active_domains().count(), 0);
        s = s2;
        assert_eq!(s, PoolState::default());
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
