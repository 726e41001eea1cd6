//! `StorageDomain`: one storage area, identified by its sdUUID, and its membership in a pool.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The finalizer that holds a deleted domain until every host has let go of it.
pub const FINALIZER: &str = "poolkeeper.io/detach";

/// A storage domain (an NFS export, a LUN group...). `spec.pool` and `spec.maintenance` are the
/// authoritative membership: the controller turns them into the pool's domain map.
#[allow(
    clippy::duplicated_attributes,
    reason = "kube's printcolumn(...) repeats the same keys once per column by design"
)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "poolkeeper.io",
    version = "v1alpha1",
    kind = "StorageDomain",
    plural = "storagedomains",
    shortname = "sd",
    category = "poolkeeper",
    status = "StorageDomainStatus",
    doc = "A storage domain and its membership in a storage pool.",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the domain is or is not Ready, e.g. HostsStillReporting or LastDataDomain"
    ),
    printcolumn(
        name = "Valid",
        type_ = "integer",
        json_path = ".status.hosts.valid",
        description = "Up hosts that report the domain valid"
    ),
    printcolumn(
        name = "Reporting",
        type_ = "integer",
        json_path = ".status.hosts.reporting",
        description = "Hosts that report the domain"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "UUID",
        type_ = "string",
        json_path = ".spec.uuid",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "What the domain waits for, e.g. the hosts that still monitor it",
        priority = 1
    ),
    selectable = ".spec.pool"
)]
#[serde(rename_all = "camelCase")]
pub struct StorageDomainSpec {
    /// The domain's UUID (VDSM's sdUUID), as written in its metadata on storage. Immutable.
    #[schemars(length(max = 36))]
    #[x_kube(validation = Rule::new(super::UUID_RULE).message(super::UUID_MESSAGE))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.uuid is immutable: it names the domain on storage; create a new StorageDomain instead"))]
    pub uuid: String,

    /// What the domain holds: `Data` (VM disks; only data domains can be master), `ISO` or `Export`.
    /// Immutable: the domain's class is written in its metadata on storage.
    #[serde(default, rename = "type")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.type is immutable: the domain's class is written in its metadata on storage; create a new StorageDomain for storage of another type"))]
    pub type_: DomainType,

    /// How hosts reach the domain.
    pub storage: StorageSpec,

    /// The StoragePool this domain belongs to. Empty or unset: unattached. Changing it detaches the
    /// domain from the old pool (through maintenance) and attaches it to the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(super::NAME_RULE).message(super::NAME_MESSAGE))]
    pub pool: Option<String>,

    /// Put the domain in maintenance: hosts stop monitoring it (it stays in the pool as `attached`).
    /// The domain is `MovingToMaintenance` until no host reports it, then `Maintenance`.
    #[serde(default)]
    pub maintenance: bool,
}

/// The kind of content a domain holds.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum DomainType {
    /// VM disks; can be the pool's master.
    #[default]
    Data,
    /// ISO images.
    #[serde(rename = "ISO")]
    Iso,
    /// Export domain (VM import and export).
    Export,
}

/// Where the domain's storage is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The storage kind. Only `File` (NFS, POSIX, local directories) for now.
    #[serde(default)]
    pub kind: StorageKind,
    /// The export hosts mount, e.g. `nfs1.example.com:/exports/data1` or `/srv/storage/data1`.
    /// Hosts find the domain under their storage root by its UUID, as VDSM does.
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
}

/// Storage kinds.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum StorageKind {
    /// A file domain: a directory tree `<mount>/<sdUUID>/dom_md/metadata`.
    #[default]
    File,
}

/// What the controller observed for the domain. Written only by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageDomainStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Where the domain is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DomainPhase>,

    /// The pool the controller last put this domain in. It lets a domain moved from pool A to B
    /// leave A cleanly (A's hosts are told before B's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = super::bounds::NAME_MAX))]
    pub pool: Option<String>,

    /// `Ready`, `Reconciling`, `Stalled`, `MovingToMaintenance` and `Problem`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::condition::list_schema")]
    pub conditions: Vec<Condition>,

    /// How the pool's hosts see the domain.
    #[serde(default)]
    pub hosts: DomainHostCounts,

    /// Up to 10 hosts that block the current transition, with the reason; problems first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub blocking_hosts: Vec<super::pool::LaggingHost>,
}

/// Per-domain host counts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DomainHostCounts {
    /// Hosts that report the domain.
    #[serde(default)]
    pub reporting: i32,
    /// Up hosts that report it valid and actual.
    #[serde(default)]
    pub valid: i32,
    /// Up hosts that report a problem with it.
    #[serde(default)]
    pub problem: i32,
    /// Hosts still monitoring it after it was deactivated.
    #[serde(default)]
    pub still_active: i32,
}

/// Domain phases (oVirt's StorageDomainStatus, with `MovingToMaintenance` for PreparingForMaintenance).
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
pub enum DomainPhase {
    /// Not in any pool.
    Unattached,
    /// In the map as `active`; not yet seen valid by every Up host.
    Activating,
    /// Every Up host sees it valid.
    Active,
    /// Every Up host reported it failing for longer than the grace period; hosts keep probing it.
    Inactive,
    /// Deactivated, but some host still reports it.
    MovingToMaintenance,
    /// Deactivated and no host reports it.
    Maintenance,
    /// Leaving the pool: some host's map still holds it.
    Detaching,
    /// No responsive host of the pool reports it.
    Unknown,
}

impl DomainPhase {
    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unattached => "Unattached",
            Self::Activating => "Activating",
            Self::Active => "Active",
            Self::Inactive => "Inactive",
            Self::MovingToMaintenance => "MovingToMaintenance",
            Self::Maintenance => "Maintenance",
            Self::Detaching => "Detaching",
            Self::Unknown => "Unknown",
        }
    }
}

/// Every domain phase, for metrics that export one series per phase.
pub const ALL_PHASES: [DomainPhase; 8] = [
    DomainPhase::Unattached,
    DomainPhase::Activating,
    DomainPhase::Active,
    DomainPhase::Inactive,
    DomainPhase::MovingToMaintenance,
    DomainPhase::Maintenance,
    DomainPhase::Detaching,
    DomainPhase::Unknown,
];
