//! JSON-RPC 2.0 envelopes and VDSM's verbs: method names, named parameters and results, spelled as
//! VDSM spells them on the wire (`storagepoolID`, `masterSdUUID`, `storageDomains`...).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::error::{ErrorCode, VdsmError};
use crate::api::{DomainMap, MapStatus, PoolBackend, PoolConnection, bounds};

/// The JSON-RPC version every request and response carries.
pub const JSONRPC_VERSION: &str = "2.0";

/// VDSM refuses a pool with more domains than this (`maximum_domains_in_pool`, error 328).
pub const MAX_DOMAINS_IN_POOL: usize = 100;

/// The highest hostID VDSM accepts (sanlock's limit).
pub const MAX_HOST_ID: i32 = 2000;

/// VDSM's verb names.
pub mod method {
    /// `StoragePool.connect`: join the pool and hold the map given.
    pub const POOL_CONNECT: &str = "StoragePool.connect";
    /// `StoragePool.disconnect`: leave the pool, stop every monitor.
    pub const POOL_DISCONNECT: &str = "StoragePool.disconnect";
    /// `StoragePool.getInfo`: the pool as the host holds it.
    pub const POOL_GET_INFO: &str = "StoragePool.getInfo";
    /// `Host.getStats`: host statistics; `storageDomains` holds the domain vitals.
    pub const HOST_GET_STATS: &str = "Host.getStats";
    /// `Host.getStorageRepoStats`: the domain vitals alone.
    pub const HOST_GET_STORAGE_REPO_STATS: &str = "Host.getStorageRepoStats";
    /// `Host.getConnectedStoragePools`: the UUIDs of the pools the host is connected to.
    pub const HOST_GET_CONNECTED_STORAGE_POOLS: &str = "Host.getConnectedStoragePools";
    /// `StoragePool.spmStart`: take the pool manager's lease on the master.
    pub const POOL_SPM_START: &str = "StoragePool.spmStart";
    /// `StoragePool.spmStop`: give the pool manager's role up.
    pub const POOL_SPM_STOP: &str = "StoragePool.spmStop";
    /// `StoragePool.getSpmStatus`: who holds the pool manager's role.
    pub const POOL_GET_SPM_STATUS: &str = "StoragePool.getSpmStatus";
    /// `StoragePool.create`: write a new pool onto its master domain.
    pub const POOL_CREATE: &str = "StoragePool.create";
    /// `StoragePool.switchMaster`: move the master role (VDSM 4.4.3 and later).
    pub const POOL_SWITCH_MASTER: &str = "StoragePool.switchMaster";
    /// `StoragePool.refresh`: re-read the map from the master (disk backend).
    pub const POOL_REFRESH: &str = "StoragePool.refresh";
    /// `StoragePool.reconstructMaster`: write fresh pool metadata onto a new master.
    pub const POOL_RECONSTRUCT_MASTER: &str = "StoragePool.reconstructMaster";
    /// `StorageDomain.attach`: make a domain a member of the pool (`attached`).
    pub const DOMAIN_ATTACH: &str = "StorageDomain.attach";
    /// `StorageDomain.activate`: mark an attached domain `active`.
    pub const DOMAIN_ACTIVATE: &str = "StorageDomain.activate";
    /// `StorageDomain.deactivate`: mark a domain `attached`, moving the master first if asked.
    pub const DOMAIN_DEACTIVATE: &str = "StorageDomain.deactivate";
    /// `StorageDomain.detach`: remove a domain from the pool.
    pub const DOMAIN_DETACH: &str = "StorageDomain.detach";
}

/// A request as the client sends it.
#[derive(Serialize, Debug)]
pub struct Request<'a, P> {
    /// Always `"2.0"`.
    pub jsonrpc: &'static str,
    /// The verb.
    pub method: &'a str,
    /// Named parameters.
    pub params: &'a P,
    /// Echoed in the response (a UUID, as the oVirt engine sends).
    pub id: &'a str,
}

/// A JSON-RPC error object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ErrorObject {
    /// VDSM's code, or a JSON-RPC protocol code.
    pub code: i64,
    /// For people.
    pub message: String,
}

impl From<&VdsmError> for ErrorObject {
    fn from(e: &VdsmError) -> Self {
        Self {
            code: e.code.code(),
            message: e.message.clone(),
        }
    }
}

impl From<ErrorObject> for VdsmError {
    fn from(e: ErrorObject) -> Self {
        VdsmError::new(ErrorCode::from_code(e.code), e.message)
    }
}

/// A response: `result` or `error`, and the request's `id` (`null` when the request could not be
/// read).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Response {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The outcome.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The request's id.
    pub id: Value,
}

/// The outcome of a call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Success, with the verb's result.
    #[serde(rename = "result")]
    Result(Value),
    /// Failure.
    #[serde(rename = "error")]
    Error(ErrorObject),
}

impl Response {
    /// A success response.
    pub fn result(id: Value, result: Value) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            outcome: Outcome::Result(result),
            id,
        }
    }

    /// An error response.
    pub fn error(id: Value, error: &VdsmError) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            outcome: Outcome::Error(error.into()),
            id,
        }
    }
}

/// `StoragePool.connect` parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConnectParams {
    /// The pool's UUID.
    #[serde(rename = "storagepoolID")]
    pub storagepool_id: String,
    /// The host's id in the pool (1..=2000).
    #[serde(rename = "hostID")]
    pub host_id: i32,
    /// Ignored by hosts; the engine sends the pool UUID.
    #[serde(rename = "scsiKey", default)]
    pub scsi_key: String,
    /// The master domain; empty when the pool has none.
    #[serde(rename = "masterSdUUID")]
    pub master_sd_uuid: String,
    /// The master version.
    #[serde(rename = "masterVersion")]
    pub master_version: i64,
    /// The whole domain map (`active` or `attached` per sdUUID). Absent: a legacy (3.4) pool whose
    /// map lives on the master domain.
    #[serde(
        rename = "domainDict",
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_domain_dict",
        deserialize_with = "de_domain_dict"
    )]
    pub domain_dict: Option<DomainMap>,
}

impl From<&PoolConnection> for ConnectParams {
    /// The call that makes a host hold `pool` (VDSM ignores `scsiKey`; the engine sends the pool
    /// uuid, and so do we).
    fn from(pool: &PoolConnection) -> Self {
        Self {
            storagepool_id: pool.uuid.clone(),
            host_id: pool.host_id,
            scsi_key: pool.uuid.clone(),
            master_sd_uuid: pool.master_domain.clone().unwrap_or_default(),
            master_version: pool.master_version,
            // A disk backend connection reads its map from the master (3.4 and lower).
            domain_dict: (pool.backend != Some(PoolBackend::Disk)).then(|| pool.domain_map.clone()),
        }
    }
}

impl ConnectParams {
    /// Checks formats (UUIDs, hostID range); the error is `-32602` invalid params.
    ///
    /// # Errors
    /// When a parameter is malformed.
    pub fn validate(&self) -> Result<(), VdsmError> {
        check_uuid("storagepoolID", &self.storagepool_id)?;
        check_host_id(self.host_id)?;
        if !self.master_sd_uuid.is_empty() {
            check_uuid("masterSdUUID", &self.master_sd_uuid)?;
        }
        if let Some(map) = &self.domain_dict {
            for (sd, _) in map.iter() {
                check_uuid("domainDict key", sd)?;
            }
        }
        Ok(())
    }
}

/// `StoragePool.disconnect` parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DisconnectParams {
    /// The pool's UUID.
    #[serde(rename = "storagepoolID")]
    pub storagepool_id: String,
    /// The host's id in the pool.
    #[serde(rename = "hostID")]
    pub host_id: i32,
    /// Ignored by hosts.
    #[serde(rename = "scsiKey", default)]
    pub scsi_key: String,
}

impl DisconnectParams {
    /// Checks formats; the error is `-32602` invalid params.
    ///
    /// # Errors
    /// When a parameter is malformed.
    pub fn validate(&self) -> Result<(), VdsmError> {
        check_uuid("storagepoolID", &self.storagepool_id)?;
        check_host_id(self.host_id)
    }
}

/// `StoragePool.getInfo` parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GetInfoParams {
    /// The pool's UUID.
    #[serde(rename = "storagepoolID")]
    pub storagepool_id: String,
}

impl GetInfoParams {
    /// Checks formats; the error is `-32602` invalid params.
    ///
    /// # Errors
    /// When a parameter is malformed.
    pub fn validate(&self) -> Result<(), VdsmError> {
        check_uuid("storagepoolID", &self.storagepool_id)
    }
}

/// Parameters naming only the pool (`StoragePool.spmStop`, `StoragePool.getSpmStatus`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PoolParams {
    /// The pool's UUID.
    #[serde(rename = "storagepoolID")]
    pub storagepool_id: String,
}

impl PoolParams {
    /// Checks formats; the error is `-32602` invalid params.
    ///
    /// # Errors
    /// When a parameter is malformed.
    pub fn validate(&self) -> Result<(), VdsmError> {
        check_uuid("storagepoolID", &self.storagepool_id)
    }
}

fn default_max_host_id() -> i32 {
    250
}

/// `StoragePool.spmStart` parameters (vdsm-api.yml; `prevID`/`prevLver` are deprecated and
/// only logged by VDSM, `enableScsiFencing` unused).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SpmStartParams {
    /// The pool's UUID.
    #[serde(rename = "storagepoolID")]
    pub storagepool_id: String,
    /// The previous pool manager's host id as the caller knows it (-1: none).
    #[serde(rename = "prevID", default = "minus_one")]
    pub prev_id: i64,
    /// The previous lease version as the caller knows it (-1: none).
    #[serde(rename = "prevLver", default = "minus_one")]
    pub prev_lver: i64,
    /// Unused.
    #[serde(rename = "enableScsiFencing", default)]
    pub enable_scsi_fencing: bool,
    /// The highest host id of the pool (VDSM sizes its mailbox with it; default 250).
    #[serde(rename = "maxHostID", default = "default_max_host_id")]
    pub max_host_id: i32,
    /// The expected master domain format version.
    #[serde(
        rename = "domVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub dom_version: Option<i64>,
}

fn minus_one() -> i64 {
    -1
}

impl SpmStartParams {
    /// Checks formats; the error is `-32602` invalid params.
    ///
    /// # Errors
    /// When a parameter is malformed.
    pub fn validate(&self) -> Result<(), VdsmError> {
        check_uuid("storagepoolID", &self.storagepool_id)
    }
}

/// `StoragePool.getSpmStatus` result: `{"spm_st": {...}}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SpmStatusResult {
    /// The status.
    pub spm_st: SpmStatus,
}

/// The pool manager's status as VDSM answers it (sp.py `SPM_ACQUIRED`/`SPM_CONTEND`/`SPM_FREE`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SpmStatus {
    /// This host's role: `SPM`, `Contend` or `Free`.
    #[serde(rename = "spmStatus")]
    pub spm_status: String,
    /// The lease version (-1: none).
    #[serde(rename = "spmLver")]
    pub spm_lver: i64,
    /// The holder's host id (-1: free).
    #[serde(rename = "spmId")]
    pub spm_id: i64,
}

/// `StoragePool.create` parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CreateParams {
    /// The pool's UUID.
    #[serde(rename = "storagepoolID")]
    pub storagepool_id: String,
    /// The pool's name (`POOL_DESCRIPTION`).
    #[serde(default)]
    pub name: String,
    /// The master domain (one of `domainList`).
    #[serde(rename = "masterSdUUID")]
    pub master_sd_uuid: String,
    /// The master version.
    #[serde(rename = "masterVersion")]
    pub master_version: i64,
    /// Every domain of the new pool (a list, or VDSM's older comma-separated string).
    #[serde(rename = "domainList", deserialize_with = "de_uuid_list")]
    pub domain_list: Vec<String>,
}

fn de_uuid_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(l) => l,
        Either::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl CreateParams {
    /// Checks formats; the error is `-32602` invalid params.
    ///
    /// # Errors
    /// When a parameter is malformed.
    pub fn validate(&self) -> Result<(), VdsmError> {
        check_uuid("storagepoolID", &self.storagepool_id)?;
        check_uuid("masterSdUUID", &self.master_sd_uuid)?;
        self.domain_list
            .iter()
            .try_for_each(|sd| check_uuid("domainList entry", sd))
    }
}

/// `StorageDomain.attach`/`activate`/`deactivate`/`detach` parameters (the master fields only
/// for deactivate and detach).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DomainParams {
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub storagedomain_id: String,
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub storagepool_id: String,
    /// Deactivate: the new master when the domain is the master (blank: none).
    #[serde(
        rename = "masterSdUUID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub master_sd_uuid: String,
    /// Deactivate: the new master version.
    #[serde(rename = "masterVersion", default)]
    pub master_version: i64,
    /// Detach: forced (hsm.py `forcedDetachStorageDomain`); with the blank pool UUID, the
    /// domain leaves every pool its metadata names, with no pool connected (the engine's import
    /// path).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

impl DomainParams {
    /// Checks formats; the error is `-32602` invalid params.
    ///
    /// # Errors
    /// When a parameter is malformed.
    pub fn validate(&self) -> Result<(), VdsmError> {
        check_uuid("storagedomainID", &self.storagedomain_id)?;
        check_uuid("storagepoolID", &self.storagepool_id)?;
        if !self.master_sd_uuid.is_empty() {
            check_uuid("masterSdUUID", &self.master_sd_uuid)?;
        }
        Ok(())
    }
}

/// `StoragePool.switchMaster` parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SwitchMasterParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub storagepool_id: String,
    /// The current master.
    #[serde(rename = "oldMasterUUID")]
    pub old_master_uuid: String,
    /// The new master.
    #[serde(rename = "newMasterUUID")]
    pub new_master_uuid: String,
    /// The new master version.
    #[serde(rename = "masterVersion")]
    pub master_version: i64,
}

impl SwitchMasterParams {
    /// Checks formats; the error is `-32602` invalid params.
    ///
    /// # Errors
    /// When a parameter is malformed.
    pub fn validate(&self) -> Result<(), VdsmError> {
        check_uuid("storagepoolID", &self.storagepool_id)?;
        check_uuid("oldMasterUUID", &self.old_master_uuid)?;
        check_uuid("newMasterUUID", &self.new_master_uuid)
    }
}

/// `StoragePool.refresh` parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RefreshParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub storagepool_id: String,
    /// The master domain.
    #[serde(rename = "masterSdUUID")]
    pub master_sd_uuid: String,
    /// The master version.
    #[serde(rename = "masterVersion")]
    pub master_version: i64,
}

impl RefreshParams {
    /// Checks formats; the error is `-32602` invalid params.
    ///
    /// # Errors
    /// When a parameter is malformed.
    pub fn validate(&self) -> Result<(), VdsmError> {
        check_uuid("storagepoolID", &self.storagepool_id)
    }
}

/// `StoragePool.reconstructMaster` parameters (the lease tuning ones are accepted and ignored).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReconstructMasterParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub storagepool_id: String,
    /// The host's id in the pool.
    #[serde(rename = "hostId")]
    pub host_id: i32,
    /// The pool's name.
    #[serde(default)]
    pub name: String,
    /// The new master.
    #[serde(rename = "masterSdUUID")]
    pub master_sd_uuid: String,
    /// The new master version.
    #[serde(rename = "masterVersion")]
    pub master_version: i64,
    /// The whole map.
    #[serde(
        rename = "domainDict",
        serialize_with = "ser_domain_map",
        deserialize_with = "de_domain_map"
    )]
    pub domain_dict: DomainMap,
}

fn ser_domain_map<S: Serializer>(map: &DomainMap, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(map.iter())
}

fn de_domain_map<'de, D: Deserializer<'de>>(d: D) -> Result<DomainMap, D::Error> {
    Ok(de_domain_dict(d)?.unwrap_or_default())
}

impl ReconstructMasterParams {
    /// Checks formats; the error is `-32602` invalid params.
    ///
    /// # Errors
    /// When a parameter is malformed.
    pub fn validate(&self) -> Result<(), VdsmError> {
        check_uuid("storagepoolID", &self.storagepool_id)?;
        check_host_id(self.host_id)?;
        check_uuid("masterSdUUID", &self.master_sd_uuid)?;
        self.domain_dict
            .keys()
            .try_for_each(|sd| check_uuid("domainDict key", sd))
    }
}

/// `StoragePool.getInfo` result: the pool as the host holds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    /// Pool-wide facts.
    pub info: PoolInfoDetails,
    /// One entry per map entry, whatever the monitoring result.
    pub dominfo: BTreeMap<String, PoolDomainInfo>,
}

impl PoolInfo {
    /// The map the host holds, from `dominfo` (entries with an unknown status are skipped).
    pub fn domain_map(&self) -> BTreeMap<String, MapStatus> {
        self.dominfo
            .iter()
            .filter_map(|(sd, d)| d.map_status().map(|s| (sd.clone(), s)))
            .collect()
    }
}

/// `info` of `StoragePool.getInfo` (VDSM's `StoragePoolInfo`, the fields a memory-backend pool has).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PoolInfoDetails {
    /// The pool's name; memory-backend pools say "No Description".
    pub name: String,
    /// `connected`.
    pub pool_status: String,
    /// The master domain's UUID (empty when none).
    pub master_uuid: String,
    /// The master version.
    pub master_ver: i64,
    /// The SPM lease version (-1: no SPM on this host).
    pub lver: i64,
    /// The SPM's host id (-1: unknown).
    pub spm_id: i64,
    /// The map as `"<sdUUID>:<Status>,..."`.
    pub domains: String,
}

/// One `dominfo` entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PoolDomainInfo {
    /// The map value as VDSM capitalises it: `Active` or `Attached`.
    pub status: String,
}

impl PoolDomainInfo {
    /// The status as a map status.
    pub fn map_status(&self) -> Option<MapStatus> {
        parse_map_status(&self.status)
    }
}

/// VDSM's capitalised form of a map status (`Active`, `Attached`), as `getInfo` answers it.
pub fn vdsm_status_name(s: MapStatus) -> &'static str {
    match s {
        MapStatus::Active => "Active",
        MapStatus::Attached => "Attached",
    }
}

/// `Host.getStats` result (the part poolkeeper uses).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HostStats {
    /// The domains the host monitors now, with their vitals.
    #[serde(rename = "storageDomains", default)]
    pub storage_domains: BTreeMap<String, Vitals>,
}

/// One domain monitor's vitals (VDSM's `StorageDomainVitals`). Missing fields take the engine's
/// defaults (`actual` true, `acquired` and `valid` false).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Vitals {
    /// The last check had no error.
    #[serde(default)]
    pub valid: bool,
    /// 0 when valid, else the error code (358, 379...).
    #[serde(default)]
    pub code: i64,
    /// Seconds since the monitor's last status update; grows while storage hangs. A string on the
    /// wire, as VDSM sends it.
    #[serde(rename = "lastCheck", with = "float_string", default)]
    pub last_check: f64,
    /// Read latency of the last check in seconds; a string on the wire.
    #[serde(with = "float_string", default)]
    pub delay: f64,
    /// The host holds its host id on the domain.
    #[serde(default)]
    pub acquired: bool,
    /// False until the monitor's first real check completes.
    #[serde(default = "default_true")]
    pub actual: bool,
    /// Domain format version; -1 until known.
    #[serde(default = "default_version")]
    pub version: i64,
}

fn default_true() -> bool {
    true
}

fn default_version() -> i64 {
    -1
}

/// VDSM sends `lastCheck` and `delay` as strings ("0.3"); accept numbers too.
mod float_string {
    use super::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:.6}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Num(f64),
            Str(String),
        }
        match Either::deserialize(d)? {
            Either::Num(n) => Ok(n),
            Either::Str(s) => s.trim().parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Map values as senders spell them: the engine sends lower case, VDSM capitalises.
#[derive(Deserialize)]
enum WireMapStatus {
    #[serde(rename = "active", alias = "Active")]
    Active,
    #[serde(rename = "attached", alias = "Attached")]
    Attached,
}

/// `domainDict` is a JSON object on VDSM's wire (the API lists maps instead).
fn ser_domain_dict<S: Serializer>(map: &Option<DomainMap>, s: S) -> Result<S::Ok, S::Error> {
    match map {
        Some(m) => s.collect_map(m.iter()),
        None => s.serialize_none(),
    }
}

fn de_domain_dict<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DomainMap>, D::Error> {
    let raw = Option::<BTreeMap<String, WireMapStatus>>::deserialize(d)?;
    Ok(raw.map(|m| {
        m.into_iter()
            .map(|(sd, s)| {
                let s = match s {
                    WireMapStatus::Active => MapStatus::Active,
                    WireMapStatus::Attached => MapStatus::Attached,
                };
                (sd, s)
            })
            .collect()
    }))
}

fn parse_map_status(s: &str) -> Option<MapStatus> {
    match s {
        "active" | "Active" => Some(MapStatus::Active),
        "attached" | "Attached" => Some(MapStatus::Attached),
        _ => None,
    }
}

/// Whether `s` is a UUID in canonical 8-4-4-4-12 form (either case).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

fn check_uuid(what: &str, s: &str) -> Result<(), VdsmError> {
    if is_uuid(s) {
        Ok(())
    } else {
        Err(VdsmError::new(
            ErrorCode::InvalidParams,
            format!("{what} must be a UUID, got {}", bounds::quote(s)),
        ))
    }
}

fn check_host_id(id: i32) -> Result<(), VdsmError> {
    if (1..=MAX_HOST_ID).contains(&id) {
        Ok(())
    } else {
        Err(VdsmError::new(
            ErrorCode::InvalidParams,
            format!("hostID must be in 1..={MAX_HOST_ID}, got {id}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SP: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";
    const SD: &str = "11111111-2222-3333-4444-555555555555";

    #[test]
    fn connect_params_use_vdsm_names() {
        let p = ConnectParams {
            storagepool_id: SP.into(),
            host_id: 1,
            scsi_key: SP.into(),
            master_sd_uuid: SD.into(),
            master_version: 2,
            domain_dict: Some([(SD.into(), MapStatus::Active)].into_iter().collect()),
        };
        let v = serde_json::to_value(&p).expect("serialises");
        assert_eq!(
            v,
            json!({"storagepoolID": SP, "hostID": 1, "scsiKey": SP, "masterSdUUID": SD,
                   "masterVersion": 2, "domainDict": {SD: "active"}})
        );
    }

    #[test]
    fn domain_dict_accepts_vdsm_capitals_and_null() {
        let p: ConnectParams = serde_json::from_value(json!({"storagepoolID": SP, "hostID": 1,
            "masterSdUUID": SD, "masterVersion": 1, "domainDict": {SD: "Attached"}}))
        .expect("parses");
        assert_eq!(
            p.domain_dict,
            Some([(SD.into(), MapStatus::Attached)].into_iter().collect())
        );
        let p: ConnectParams = serde_json::from_value(json!({"storagepoolID": SP, "hostID": 1,
            "masterSdUUID": SD, "masterVersion": 1, "domainDict": null}))
        .expect("parses");
        assert_eq!(p.domain_dict, None);
    }

    #[test]
    fn vitals_read_strings_or_numbers_and_engine_defaults() {
        let v: Vitals = serde_json::from_value(json!({"valid": true, "code": 0,
            "lastCheck": "1.5", "delay": 0.25}))
        .expect("parses");
        assert_eq!(v.last_check, 1.5);
        assert_eq!(v.delay, 0.25);
        assert!(v.actual);
        assert!(!v.acquired);
        assert_eq!(v.version, -1);
        let back = serde_json::to_value(&v).expect("serialises");
        assert_eq!(back["lastCheck"], json!("1.500000"));
    }

    #[test]
    fn validation_rejects_bad_uuids_and_host_ids() {
        let mut p = ConnectParams {
            storagepool_id: "nope".into(),
            host_id: 1,
            scsi_key: String::new(),
            master_sd_uuid: String::new(),
            master_version: 0,
            domain_dict: None,
        };
        assert_eq!(
            p.validate().map_err(|e| e.code),
            Err(ErrorCode::InvalidParams)
        );
        p.storagepool_id = SP.into();
        assert_eq!(p.validate(), Ok(()));
        p.host_id = 0;
        assert_eq!(
            p.validate().map_err(|e| e.code),
            Err(ErrorCode::InvalidParams)
        );
    }
}
