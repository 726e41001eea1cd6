//! `StoragePool`: a set of hosts sharing a set of storage domains, and the authoritative domain map.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The pool of compatibility 3.5 and above keeps its map in memory on hosts (this design).
pub const DEFAULT_COMPATIBILITY_VERSION: &str = "3.5";
/// VDSM refuses more than this many domains in a pool (error 328, `maximum_domains_in_pool`).
pub const MAX_DOMAINS_PER_POOL: usize = 100;

/// A storage pool (oVirt's data center): the hosts that name it in `Host.spec.pool` share the storage
/// domains that name it in `StorageDomain.spec.pool`. The controller pushes the pool's domain map to
/// every host and reports how many hold it.
#[allow(
    clippy::duplicated_attributes,
    reason = "kube's printcolumn(...) repeats the same keys once per column by design"
)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "poolkeeper.io",
    version = "v1alpha1",
    kind = "StoragePool",
    plural = "storagepools",
    shortname = "sp",
    category = "poolkeeper",
    status = "StoragePoolStatus",
    doc = "A storage pool: hosts sharing storage domains, and the authoritative map of those domains.",
    printcolumn(
        name = "Compat",
        type_ = "string",
        json_path = ".spec.compatibilityVersion"
    ),
    printcolumn(
        name = "Domains",
        type_ = "integer",
        json_path = ".status.counts.domains"
    ),
    printcolumn(name = "Hosts", type_ = "integer", json_path = ".status.counts.hosts"),
    printcolumn(
        name = "In-Sync",
        type_ = "integer",
        json_path = ".status.counts.inSync"
    ),
    printcolumn(
        name = "Manager",
        type_ = "string",
        json_path = ".status.poolManager.host"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the pool is or is not Ready, e.g. RollingOut, SyncFailing or TooManyHosts"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Map",
        type_ = "integer",
        json_path = ".status.mapVersion",
        description = "The map version hosts are given",
        priority = 1
    ),
    printcolumn(
        name = "Master",
        type_ = "string",
        json_path = ".status.masterDomain",
        description = "The master domain's UUID",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    ),
    validation = Rule::new(
        "!has(self.spec.uuid) || !has(self.status) || !has(self.status.uuid) || self.spec.uuid == self.status.uuid"
    ).message(
        "spec.uuid must equal status.uuid, the uuid this pool's hosts are connected with: leave spec.uuid unset or set it to status.uuid; a pool with another uuid is another pool, so create a new StoragePool for it"
    ).field_path(".spec.uuid")
)]
#[x_kube(validation = Rule::new(
    "!has(oldSelf.uuid) || (has(self.uuid) && self.uuid == oldSelf.uuid)"
).message("spec.uuid is immutable once set: it is the pool's identity on storage; create a new StoragePool instead"))]
#[x_kube(validation = Rule::new(
    "!has(oldSelf.compatibilityVersion) || !has(self.compatibilityVersion) || \
     !self.compatibilityVersion.matches('^[0-9]+[.][0-9]+$') || !oldSelf.compatibilityVersion.matches('^[0-9]+[.][0-9]+$') || \
     int(self.compatibilityVersion.split('.')[0]) > int(oldSelf.compatibilityVersion.split('.')[0]) || \
     (int(self.compatibilityVersion.split('.')[0]) == int(oldSelf.compatibilityVersion.split('.')[0]) && \
      int(self.compatibilityVersion.split('.')[1]) >= int(oldSelf.compatibilityVersion.split('.')[1]))"
).message("spec.compatibilityVersion cannot be lowered: hosts may already hold the newer pool format"))]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolSpec {
    /// The pool's UUID (VDSM's spUUID), sent to hosts as `storagepoolID`. Optional: when unset the
    /// controller uses `metadata.uid` and records it in `status.uuid`. Set it when the pool already
    /// exists on storage or when the object may be re-created (GitOps), so the identity is kept.
    /// Immutable once set; on a running pool it may only be set to `status.uuid`, the uuid its
    /// hosts were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    #[x_kube(validation = Rule::new(super::UUID_RULE).message(super::UUID_MESSAGE))]
    pub uuid: Option<String>,

    /// The pool's compatibility version, `major.minor`. `3.5` and above push the domain map to
    /// hosts on every connect (the map lives only in the API server and in host memory); `3.4` and
    /// below use the legacy master-domain flows. May be raised, never lowered.
    #[serde(default = "default_compatibility_version")]
    #[schemars(length(max = 7))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,3}[.][0-9]{1,3}$')")
        .message("must be a version in major.minor form, e.g. \"3.5\""))]
    pub compatibility_version: String,

    /// The preferred master storage domain (its UUID). It must be an active data domain of this pool
    /// to be used; otherwise the controller picks the first healthy active data domain. Sent to
    /// hosts as `masterSdUUID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    #[x_kube(validation = Rule::new(super::UUID_RULE).message(super::UUID_MESSAGE))]
    pub master_domain: Option<String>,

    /// How the controller keeps hosts in sync. Every knob has a safe default.
    #[serde(default)]
    pub sync: SyncSpec,
}

fn default_compatibility_version() -> String {
    DEFAULT_COMPATIBILITY_VERSION.to_owned()
}

/// Knobs for keeping hosts in sync.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    /// How many host calls (`StoragePool.connect` and `disconnect`) may be in flight at once for
    /// this pool (at least 1).
    #[serde(default = "default_max_concurrent_connects")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent_connects: i32,

    /// How long a host may take to answer one call, in seconds (1 to 600), and then to confirm a
    /// connect it accepted in its report (during a rollout, at least one of these per wave of
    /// `maxConcurrentConnects` hosts since the rollout started, as the hosts' reports queue at the
    /// API server). A host that does neither in time is marked `InSync=False` and retried with
    /// backoff.
    #[serde(default = "default_connect_timeout_seconds")]
    #[schemars(range(min = 1, max = 600))]
    pub connect_timeout_seconds: i32,

    /// How long an Up host may report a domain as failing before the controller acts, in seconds
    /// (1 to 86400; oVirt's StorageDomainFailureTimeoutInMinutes is 5 minutes). When it ends, the
    /// reporting hosts become NonOperational if other hosts see the domain, or the domain becomes
    /// Inactive if every Up host reports it.
    #[serde(default = "default_problem_grace_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub problem_grace_seconds: i32,

    /// The most hosts this pool accepts (1 to 2000; oVirt's default is 250). Each host gets a
    /// stable id in 1..=maxHosts; hosts beyond the limit are refused with a condition.
    #[serde(default = "default_max_hosts")]
    #[schemars(range(min = 1, max = 2000))]
    pub max_hosts: i32,
}

fn default_max_concurrent_connects() -> i32 {
    32
}
fn default_connect_timeout_seconds() -> i32 {
    30
}
fn default_problem_grace_seconds() -> i32 {
    300
}
fn default_max_hosts() -> i32 {
    250
}

impl Default for SyncSpec {
    fn default() -> Self {
        Self {
            max_concurrent_connects: default_max_concurrent_connects(),
            connect_timeout_seconds: default_connect_timeout_seconds(),
            problem_grace_seconds: default_problem_grace_seconds(),
            max_hosts: default_max_hosts(),
        }
    }
}

/// What the controller decided and observed for the pool. Written only by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling` and `Stalled`, in `metav1.Condition` form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::condition::list_schema")]
    pub conditions: Vec<Condition>,

    /// The pool UUID in use: `spec.uuid`, or the object's uid when that is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = super::bounds::UUID_MAX))]
    pub uuid: Option<String>,

    /// The domain map every host must hold: each domain attached to the pool and whether hosts
    /// monitor it (`active`) or only know it (`attached`). Recorded here before any host is told.
    #[serde(default, skip_serializing_if = "super::DomainMap::is_empty")]
    #[schemars(length(max = 100))]
    pub domain_map: super::DomainMap,

    /// Grows by one whenever the map or the master changes. For people and metrics; not sent to hosts.
    #[serde(default)]
    pub map_version: i64,

    /// The master storage domain hosts are told (`masterSdUUID`); unset while the pool has no active
    /// data domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = super::bounds::UUID_MAX))]
    pub master_domain: Option<String>,

    /// Grows by one whenever the master domain changes (`masterVersion`).
    #[serde(default)]
    pub master_version: i64,

    /// The pool manager (VDSM's SPM) the controller chose, recorded before it is started so that
    /// a restarted controller or a second replica never starts another one. Whether it runs is in
    /// the `PoolManager` condition; the hosts' reports (`report.pool.spmLver`) are the truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_manager: Option<PoolManagerStatus>,

    /// The pool on storage, as the pool manager's calls left it: whether `StoragePool.create` was
    /// accepted (the master's metadata names the pool), and every domain whose own metadata lists
    /// the pool (created with it or attached since). A domain enters the map only once
    /// attached, and leaves it only once detached. Unset on a pool recorded before this field
    /// that has a master: its map is taken as attached (whoever made it created it on storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<PoolOnStorage>,

    /// The stable per-pool id of each host (VDSM's hostID, the sanlock host id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2000))]
    pub host_ids: Vec<HostIdEntry>,

    /// How many hosts are in which state.
    #[serde(default)]
    pub counts: HostCounts,

    /// Up to 10 hosts that do not hold the current map yet, with the reason; problems first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub lagging_hosts: Vec<LaggingHost>,
}

/// The pool as it exists on storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolOnStorage {
    /// `StoragePool.create` was accepted: the pool exists on storage. False from the pool's first
    /// status until then (no host is connected meanwhile).
    #[serde(default)]
    pub created: bool,
    /// The UUIDs of the domains whose metadata lists the pool (`POOL_UUID`), sorted.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    #[schemars(length(max = 100))]
    pub attached: BTreeSet<String>,
    /// The domain that holds the pool's metadata on storage (`ROLE=Master`; on the disk backend
    /// the map too), as the last accepted create, master move or `reconstructMaster` left it.
    /// Unset in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    pub master: Option<String>,
    /// Its `masterVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_version: Option<i64>,
}

/// The pool manager the controller chose, and the one before it (what `spmStart` is told).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolManagerStatus {
    /// The Host's name.
    #[schemars(length(max = super::bounds::NAME_MAX))]
    pub host: String,
    /// Its id in the pool (VDSM's `spmId`).
    pub host_id: i32,
    /// The version of the manager's lease as the host reported it; -1 until it holds the role.
    pub lver: i64,
    /// The previous manager's host id, sent as `prevID` to `spmStart`; -1 when there was none.
    pub prev_id: i32,
    /// The previous manager's lease version, sent as `prevLver`; -1 when unknown.
    pub prev_lver: i64,
}

/// One entry of the domain map.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct DomainMapEntry {
    /// The storage domain's UUID.
    #[schemars(length(max = super::bounds::UUID_MAX))]
    pub uuid: String,
    /// `active` (hosts monitor it) or `attached` (in the pool, not monitored).
    pub status: MapStatus,
}

/// How a domain appears in the map sent to hosts (VDSM's `domainDict` values).
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
)]
#[serde(rename_all = "lowercase")]
pub enum MapStatus {
    /// Hosts monitor the domain.
    Active,
    /// The domain belongs to the pool but hosts do not monitor it.
    Attached,
}

impl MapStatus {
    /// The wire string (`active` or `attached`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Attached => "attached",
        }
    }
}

/// A host and its id in the pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct HostIdEntry {
    /// The Host's name.
    #[schemars(length(max = super::bounds::NAME_MAX))]
    pub host: String,
    /// Its id in the pool, 1..=maxHosts.
    pub id: i32,
}

/// Host counts of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HostCounts {
    /// Domains in the map.
    #[serde(default)]
    pub domains: i32,
    /// Hosts that name this pool.
    #[serde(default)]
    pub hosts: i32,
    /// Hosts that hold the current map.
    #[serde(default)]
    pub in_sync: i32,
    /// Hosts being told the current map now.
    #[serde(default)]
    pub connecting: i32,
    /// Hosts whose last connect failed.
    #[serde(default)]
    pub failing: i32,
    /// Hosts whose Lease expired.
    #[serde(default)]
    pub unresponsive: i32,
}

/// A host that does not hold the current map yet, or that blocks a domain's transition.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LaggingHost {
    /// The Host's name.
    #[schemars(length(max = super::bounds::NAME_MAX))]
    pub host: String,
    /// Why it lags or blocks. `NotResponding`, `ConnectFailing`, `NotConfirming` and
    /// `ReportUnparsable` are problems that may need a person; `BeingDisconnected`, `NotToldYet`,
    /// `WaitingForReport`, `WaitingTurn` and `Connecting` are progress.
    pub reason: LagReason,
    /// Why, for people, e.g. `connect failing: error 323: ...` or `not responding`.
    #[schemars(length(max = LaggingHost::MAX_MESSAGE_CHARS))]
    pub message: String,
}

impl LaggingHost {
    /// The most characters [`LaggingHost::message`] holds (the schema's `maxLength`).
    pub const MAX_MESSAGE_CHARS: usize = 256;

    /// An entry whose message is cut to [`Self::MAX_MESSAGE_CHARS`] characters
    /// ([`super::bounds::cut`]), so a long error from a host never makes the status invalid.
    pub fn new(host: impl Into<String>, reason: LagReason, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            host: host.into(),
            reason,
            message: super::bounds::cut(&message, Self::MAX_MESSAGE_CHARS).into_owned(),
        }
    }
}

/// Why a host lags behind the pool's map or blocks a domain's transition.
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
)]
pub enum LagReason {
    /// The host's Lease expired: its agent does not answer.
    NotResponding,
    /// The last `StoragePool.connect` failed; the message carries the error.
    ConnectFailing,
    /// The host took the connect but did not report the map by the rollout deadline.
    NotConfirming,
    /// The host's report is missing or does not parse (it may still hold the pool).
    ReportUnparsable,
    /// The host has no endpoint to call: neither `spec.endpoint` nor the agent's
    /// `status.endpoint` is set.
    NoEndpoint,
    /// The host is being disconnected from the pool (maintenance, or it left the pool).
    BeingDisconnected,
    /// The host has not been given the current map yet.
    NotToldYet,
    /// The host was given the map; its report does not show it yet.
    WaitingForReport,
    /// The host waits for a free connect slot or for its backoff to end.
    WaitingTurn,
    /// The host is being given the current map.
    Connecting,
}

impl LagReason {
    /// The API string (metric labels use it too).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotResponding => "NotResponding",
            Self::ConnectFailing => "ConnectFailing",
            Self::NotConfirming => "NotConfirming",
            Self::ReportUnparsable => "ReportUnparsable",
            Self::NoEndpoint => "NoEndpoint",
            Self::BeingDisconnected => "BeingDisconnected",
            Self::NotToldYet => "NotToldYet",
            Self::WaitingForReport => "WaitingForReport",
            Self::WaitingTurn => "WaitingTurn",
            Self::Connecting => "Connecting",
        }
    }

    /// Whether the reason is a problem that may need a person, rather than healthy progress.
    pub fn is_problem(self) -> bool {
        match self {
            Self::NotResponding
            | Self::ConnectFailing
            | Self::NotConfirming
            | Self::ReportUnparsable
            | Self::NoEndpoint => true,
            Self::BeingDisconnected
            | Self::NotToldYet
            | Self::WaitingForReport
            | Self::WaitingTurn
            | Self::Connecting => false,
        }
    }
}

/// The pool uuid in use: `spec.uuid`, else the one recorded in `status.uuid`, else `metadata.uid`
/// (empty when none is known).
pub fn effective_uuid(spec: Option<&str>, status: Option<&str>, uid: Option<&str>) -> String {
    spec.or(status).or(uid).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lag_message_is_cut_to_the_schema_bound() {
        let short = LaggingHost::new("h", LagReason::ConnectFailing, "connect failing: é");
        assert_eq!(short.message, "connect failing: é");
        let long = LaggingHost::new("h", LagReason::ConnectFailing, "é".repeat(1000));
        assert_eq!(long.message.chars().count(), LaggingHost::MAX_MESSAGE_CHARS);
        assert!(long.message.ends_with("..."));
    }

    #[test]
    fn lag_reasons_serialise_as_their_names() {
        for r in [
            LagReason::NotResponding,
            LagReason::ConnectFailing,
            LagReason::NotConfirming,
            LagReason::ReportUnparsable,
            LagReason::BeingDisconnected,
            LagReason::NotToldYet,
            LagReason::WaitingForReport,
            LagReason::WaitingTurn,
            LagReason::Connecting,
        ] {
            assert_eq!(serde_json::to_value(r).expect("serialises"), r.as_str());
        }
        let entry = LaggingHost::new("h0001", LagReason::NotToldYet, "not told yet");
        let json = serde_json::to_value(&entry).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({"host": "h0001", "reason": "NotToldYet", "message": "not told yet"})
        );
    }
}
