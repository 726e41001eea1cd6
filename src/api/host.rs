//! `Host`: a hypervisor running the agent. Operators own `spec` (`pool`, `maintenance`, and an
//! optional `endpoint` override); the agent owns `status.endpoint` and `status.report`; the
//! controller owns `status.phase` and `status.conditions`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::DomainMap;

/// A host running the poolkeeper agent. The agent registers it (as kubelet registers Nodes) and
/// reports what it monitors; operators put it in a pool or in maintenance.
#[allow(
    clippy::duplicated_attributes,
    reason = "kube's printcolumn(...) repeats the same keys once per column by design"
)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "poolkeeper.io",
    version = "v1alpha1",
    kind = "Host",
    plural = "hosts",
    shortname = "ho",
    category = "poolkeeper",
    status = "HostStatus",
    doc = "A host running the poolkeeper agent, and what it reports.",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the host is or is not Ready, e.g. StorageDomainUnreachable or ConnectFailed"
    ),
    printcolumn(
        name = "In-Sync",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"InSync\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Domains",
        type_ = "integer",
        json_path = ".status.report.domainCount",
        description = "Domains the host monitors"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Agent",
        type_ = "string",
        json_path = ".status.report.agentVersion",
        description = "The agent's version",
        priority = 1
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "Where the agent serves VDSM's wire, host:port (spec.endpoint overrides it)",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    ),
    selectable = ".spec.pool"
)]
#[serde(rename_all = "camelCase")]
pub struct HostSpec {
    /// The StoragePool this host serves. Empty or unset: the host is in no pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(super::NAME_RULE).message(super::NAME_MESSAGE))]
    pub pool: Option<String>,

    /// Overrides the endpoint the agent publishes in `status.endpoint`: where the host serves
    /// VDSM's wire (JSON-RPC over STOMP over TLS), `host:port`, e.g. `host1.example.com:54321`
    /// (VDSM's port), `192.0.2.7:54321` or `[2001:db8::7]:54321`. Unset: the agent's own. Set by
    /// operators only (the agent never writes the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 261))]
    #[x_kube(validation = Rule::new(ENDPOINT_RULE).message(ENDPOINT_MESSAGE))]
    pub endpoint: Option<String>,

    /// Put the host in maintenance: the controller disconnects it from its pool and stops counting
    /// it. A host that blocks a domain's MovingToMaintenance can be released this way.
    #[serde(default)]
    pub maintenance: bool,
}

/// `host:port`: a DNS name or IPv4 address (lower case), or an IPv6 address in brackets; a port
/// of 1 to 65535.
const ENDPOINT_RULE: &str = r"self.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*|\\[[0-9a-f:.]+\\]):[0-9]{1,5}$') && int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535";
const ENDPOINT_MESSAGE: &str = "must be host:port where the host serves VDSM's wire (JSON-RPC over STOMP), e.g. host1.example.com:54321, 192.0.2.7:54321 or [2001:db8::7]:54321 (no scheme, no path)";

/// The host's status: the agent's report and the controller's verdict.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// Where the agent serves VDSM's wire, `host:port`, as the agent publishes it (field manager
    /// `poolkeeper-agent`). The controller calls it unless `spec.endpoint` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 261))]
    #[x_kube(validation = Rule::new(ENDPOINT_RULE).message(ENDPOINT_MESSAGE))]
    pub endpoint: Option<String>,

    /// What the agent reports. Written only by the agent (field manager `poolkeeper-agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<HostReport>,

    /// The controller's view of the host. Written only by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<HostPhase>,

    /// The `metadata.generation` the controller's conditions were computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Responsive`, `InSync`, `Operational` and `Ready`. Written only by the controller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::condition::list_schema")]
    pub conditions: Vec<Condition>,
}

/// What a host's agent reports: its identity, the pool it holds in memory, and its domain monitors.
///
/// One value for server-side apply (`x-kubernetes-map-type: atomic`): the agent always writes the
/// whole report, so the API server tracks it as one field instead of one per map entry and vital
/// (a 20-domain report otherwise carries a few hundred managed fields, and every write pays for
/// merging them).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct HostReport {
    /// The agent's version.
    #[serde(default)]
    #[schemars(length(max = HostReport::MAX_TEXT_CHARS))]
    pub agent_version: String,

    /// Changes every time the agent starts. A new bootId means the host lost its in-memory map.
    #[serde(default)]
    #[schemars(length(max = HostReport::MAX_TEXT_CHARS))]
    pub boot_id: String,

    /// The pool the host is connected to, as it holds it in memory. Unset: not connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolConnection>,

    /// The domains the host monitors now, with their vitals (VDSM's repoStats). A domain missing
    /// here, and no longer `active` in the map the host holds, is not monitored: that is how a
    /// host acknowledges a deactivation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = HostReport::MAX_DOMAINS))]
    pub domains: Vec<DomainVitals>,

    /// How many domains the host monitors (the length of `domains`).
    #[serde(default)]
    pub domain_count: i32,
}

impl HostReport {
    /// The most domains a report lists (the schema's `maxItems`).
    pub const MAX_DOMAINS: usize = 256;
    /// The most characters of `agentVersion` and `bootId` (the schema's `maxLength`).
    pub const MAX_TEXT_CHARS: usize = 64;
}

/// A pool connection as the host holds it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolConnection {
    /// The pool's UUID (spUUID).
    #[schemars(length(max = 36))]
    pub uuid: String,
    /// The host's id in the pool.
    pub host_id: i32,
    /// The master domain the host was told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    pub master_domain: Option<String>,
    /// The master version the host was told.
    #[serde(default)]
    pub master_version: i64,
    /// The domain map the host holds.
    #[serde(default, skip_serializing_if = "DomainMap::is_empty")]
    #[schemars(length(max = PoolConnection::MAX_MAP_ENTRIES))]
    pub domain_map: DomainMap,
    /// Set while this host is the pool's manager (VDSM's SPM, as `getSpmStatus` answers
    /// `spmStatus: SPM`): the version of the manager's lease it holds on the master domain.
    /// Unset on every other host. Calls never carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spm_lver: Option<i64>,
    /// Where the host holds the pool's map: `Memory` (the connect's `domainDict`, compatibility
    /// 3.5 and later) or `Disk` (read from the master's `POOL_DOMAINS`, 3.4 and lower). Unset in
    /// a connect the controller sends to a 3.5 pool, and in reports of agents that predate it
    /// (read as `Memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<PoolBackend>,
}

/// Where a pool connection's map lives (VDSM's spbackends.py).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolBackend {
    /// The map from the last connect's `domainDict` (compatibility 3.5 and later).
    Memory,
    /// The map in the master domain's `POOL_DOMAINS`, read at connect and refresh (3.4 and lower).
    Disk,
}

impl PoolConnection {
    /// The most entries of the map a host reports (the schema's `maxItems`).
    pub const MAX_MAP_ENTRIES: usize = 128;
}

/// One domain monitor's vitals (VDSM's `StorageDomainVitals`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DomainVitals {
    /// The domain's UUID.
    #[schemars(length(max = 36))]
    pub uuid: String,
    /// The last check succeeded.
    pub valid: bool,
    /// 0 when valid, else VDSM's error code (358 domain missing, 379 access error).
    pub code: i32,
    /// Read latency of the last check, in seconds (written when it crosses a threshold).
    #[serde(default)]
    pub delay_seconds: f64,
    /// Seconds since the monitor last completed a check (written when it crosses a threshold, so
    /// a hung check shows up without the status ticking).
    #[serde(default)]
    pub last_check_seconds: f64,
    /// The host holds its host id (sanlock lockspace) on the domain.
    #[serde(default)]
    pub acquired: bool,
    /// False until the monitor's first real check completes.
    #[serde(default)]
    pub actual: bool,
    /// Domain format version; -1 until known.
    #[serde(default)]
    pub version: i32,
}

/// Host phases (oVirt's VDSStatus subset that matters for pool sync).
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
pub enum HostPhase {
    /// Holds the current map and sees every active domain.
    Up,
    /// Being told the current map.
    Connecting,
    /// Cannot reach a domain other hosts can reach (reason `StorageDomainUnreachable`).
    NonOperational,
    /// Its Lease expired; no calls are sent until it renews.
    NonResponsive,
    /// In maintenance but still reporting domains.
    PreparingForMaintenance,
    /// In maintenance and disconnected.
    Maintenance,
}

impl HostPhase {
    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "Up",
            Self::Connecting => "Connecting",
            Self::NonOperational => "NonOperational",
            Self::NonResponsive => "NonResponsive",
            Self::PreparingForMaintenance => "PreparingForMaintenance",
            Self::Maintenance => "Maintenance",
        }
    }
}

/// Every host phase, for metrics that export one series per phase.
pub const ALL_PHASES: [HostPhase; 6] = [
    HostPhase::Up,
    HostPhase::Connecting,
    HostPhase::NonOperational,
    HostPhase::NonResponsive,
    HostPhase::PreparingForMaintenance,
    HostPhase::Maintenance,
];
