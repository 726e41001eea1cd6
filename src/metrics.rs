//! Prometheus metrics of the controller, with controller-runtime's names where they mean the same
//! thing (so existing dashboards work), plus pool and domain gauges, host-call latency, the
//! leader-election gauge client-go exports, and the standard `process_*` metrics (read from
//! `/proc` on each scrape). Labels are fixed strings, never `Debug` output. Served in the format
//! the scraper asks for ([`Metrics::render_for`]): OpenMetrics when its `Accept` names it (as
//! Prometheus does), else the Prometheus text format 0.0.4, each with the content type it declares.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text, text},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

/// The content type of the OpenMetrics text format this crate writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format (0.0.4).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;
/// The `name` label of [`Metrics::leader`]: the Lease replicas compete for.
pub const LEADER_LEASE: &str = "poolkeeper-controller";

/// The `controller` label value of every controller-runtime-style metric.
pub const CONTROLLER: &str = "storagepool";

/// `{controller, result}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// Always [`CONTROLLER`] here.
    pub controller: &'static str,
    /// `success`, `error`, `requeue_after`.
    pub result: &'static str,
}

/// `{controller}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// Always [`CONTROLLER`] here.
    pub controller: &'static str,
}

/// `{verb, outcome}` labels of host calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `connect` or `disconnect`.
    pub verb: &'static str,
    /// `ok` or an error category.
    pub outcome: &'static str,
}

/// `{name}` labels of the leader-election gauge (client-go's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaderLabels {
    /// The leader-election Lease's name.
    pub name: &'static str,
}

/// `{pool, state}` labels of host gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    /// The StoragePool's name.
    pub pool: String,
    /// `hosts`, `in_sync`, `connecting`, `failing`, `unresponsive`.
    pub state: &'static str,
}

/// `{pool, domain, phase, host, reason}` labels of a host that blocks a domain's transition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct BlockingLabels {
    /// The StoragePool's name.
    pub pool: String,
    /// The StorageDomain's name.
    pub domain: String,
    /// `MovingToMaintenance` or `Detaching`.
    pub phase: &'static str,
    /// The Host's name.
    pub host: String,
    /// Why it blocks (a `LagReason`, e.g. `NotResponding`).
    pub reason: &'static str,
}

/// `{pool, phase}` labels of domain gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolPhaseLabels {
    /// The StoragePool's name.
    pub pool: String,
    /// A domain phase.
    pub phase: &'static str,
}

/// Every metric the controller exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// `controller_runtime_reconcile_total`.
    pub reconcile_total: Family<ResultLabels, Counter>,
    /// `controller_runtime_reconcile_errors_total`.
    pub reconcile_errors: Family<ControllerLabels, Counter>,
    /// `controller_runtime_reconcile_time_seconds`.
    pub reconcile_time: Family<ControllerLabels, Histogram>,
    /// `poolkeeper_host_calls_total`.
    pub host_calls: Family<CallLabels, Counter>,
    /// `poolkeeper_host_call_duration_seconds`: how long host calls take, answer or not.
    pub host_call_duration: Family<CallLabels, Histogram>,
    /// `leader_election_master_status`: 1 while this replica acts (holds the Lease, or runs
    /// without election), 0 while it stands by.
    pub leader: Family<LeaderLabels, Gauge>,
    /// `poolkeeper_pool_hosts`.
    pub pool_hosts: Family<PoolStateLabels, Gauge>,
    /// `poolkeeper_pool_domains`.
    pub pool_domains: Family<PoolPhaseLabels, Gauge>,
    /// `poolkeeper_pool_host_phases`: hosts of each pool by phase.
    pub pool_host_phases: Family<PoolPhaseLabels, Gauge>,
    /// `poolkeeper_domain_blocking_host`: 1 for each host a domain's status lists as blocking
    /// its transition (at most 10 per domain, problems first).
    pub blocking: Family<BlockingLabels, Gauge>,
    /// The blocking series each pool exported last, so the ones that ended are removed.
    blocking_seen: Arc<Mutex<std::collections::BTreeMap<String, Vec<BlockingLabels>>>>,
    /// `poolkeeper_status_writes_total`: status writes that took effect.
    pub status_writes: Family<WriteLabels, Counter>,
    /// `poolkeeper_api_writes_total`: every API write, by outcome.
    pub api_writes: Family<ApiWriteLabels, Counter>,
    /// `poolkeeper_reconcile_step_seconds`: where a pool reconcile spends its time.
    pub reconcile_steps: Family<StepLabels, Histogram>,
}

/// `{kind}` labels of status writes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `StoragePool`, `StorageDomain` or `Host`.
    pub kind: &'static str,
}

/// `{step}` labels of a reconcile's steps.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// `observe`, `plan`, `act`, `report` or `finalize`.
    pub step: &'static str,
}

/// `{kind, op, outcome}` labels of every API write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiWriteLabels {
    /// `StoragePool`, `StorageDomain` or `Host`.
    pub kind: &'static str,
    /// `status`, `finalizers` or `event`.
    pub op: &'static str,
    /// `ok`, `conflict`, `not_found`, `timeout` or `error`.
    pub outcome: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconcile_total = Family::<ResultLabels, Counter>::default();
        let reconcile_errors = Family::<ControllerLabels, Counter>::default();
        let reconcile_time = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ])
        });
        let host_calls = Family::<CallLabels, Counter>::default();
        // From a loopback answer (~1 ms) to the largest connectTimeoutSeconds (600 s).
        let host_call_duration = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 120.0, 300.0, 600.0,
            ])
        });
        let leader = Family::<LeaderLabels, Gauge>::default();
        let pool_hosts = Family::<PoolStateLabels, Gauge>::default();
        let pool_domains = Family::<PoolPhaseLabels, Gauge>::default();
        let pool_host_phases = Family::<PoolPhaseLabels, Gauge>::default();
        let blocking = Family::<BlockingLabels, Gauge>::default();
        let status_writes = Family::<WriteLabels, Counter>::default();
        let api_writes = Family::<ApiWriteLabels, Counter>::default();
        let reconcile_steps = Family::<StepLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
        });
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            reconcile_time.clone(),
        );
        registry.register(
            "poolkeeper_host_calls",
            "Host RPCs (StoragePool.connect/disconnect) by outcome",
            host_calls.clone(),
        );
        registry.register(
            "poolkeeper_host_call_duration_seconds",
            "Time host RPCs (StoragePool.connect/disconnect) take, from send to answer or timeout, by outcome",
            host_call_duration.clone(),
        );
        registry.register(
            "leader_election_master_status",
            "1 while this replica acts (holds the leader-election Lease, or runs without election), 0 while it stands by",
            leader.clone(),
        );
        registry.register_collector(Box::new(Process));
        registry.register(
            "poolkeeper_pool_hosts",
            "Hosts of each pool by sync state",
            pool_hosts.clone(),
        );
        registry.register(
            "poolkeeper_pool_domains",
            "Domains of each pool by phase",
            pool_domains.clone(),
        );
        registry.register(
            "poolkeeper_pool_host_phases",
            "Hosts of each pool by phase (Up, Connecting, NonOperational, NonResponsive, PreparingForMaintenance, Maintenance)",
            pool_host_phases.clone(),
        );
        registry.register(
            "poolkeeper_domain_blocking_host",
            "1 for each host that blocks a domain's MovingToMaintenance or Detaching, with why",
            blocking.clone(),
        );
        registry.register(
            "poolkeeper_status_writes",
            "Status writes by the controller, by kind",
            status_writes.clone(),
        );
        registry.register(
            "poolkeeper_api_writes",
            "API writes by the controller (statuses, finalizers, events), by outcome",
            api_writes.clone(),
        );
        registry.register(
            "poolkeeper_reconcile_step_seconds",
            "Time a pool reconcile spends in each step (observe, plan, act, report, finalize; catch_up, the part of report spent waiting for the caches to show its own writes)",
            reconcile_steps.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconcile_total,
            reconcile_errors,
            reconcile_time,
            host_calls,
            host_call_duration,
            leader,
            pool_hosts,
            pool_domains,
            pool_host_phases,
            blocking,
            blocking_seen: Arc::default(),
            status_writes,
            api_writes,
            reconcile_steps,
        }
    }
}

impl Metrics {
    /// The registry in OpenMetrics text (ending in `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode(&mut out, &self.registry);
        out
    }

    /// The registry in the format a scraper's `Accept` header asks for, with that format's
    /// content type: OpenMetrics when it names `application/openmetrics-text` (Prometheus does),
    /// else the Prometheus text format 0.0.4 (curl, and scrapers that know no OpenMetrics).
    pub fn render_for(&self, accept: Option<&str>) -> (&'static str, String) {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (OPENMETRICS_CONTENT_TYPE, self.render())
        } else {
            let mut out = String::new();
            // Writing into a String cannot fail.
            let _ = prometheus_text::encode(&mut out, &self.registry);
            (PROMETHEUS_TEXT_CONTENT_TYPE, out)
        }
    }

    /// Replaces the blocking-host series of `pool` with `now`: series that ended are removed, so
    /// an alert on them resolves when the host lets go.
    pub fn set_blocking(&self, pool: &str, mut now: Vec<BlockingLabels>) {
        now.sort();
        now.dedup();
        let mut seen = self
            .blocking_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = seen.remove(pool).unwrap_or_default();
        for gone in before.iter().filter(|l| now.binary_search(l).is_err()) {
            self.blocking.remove(gone);
        }
        for labels in &now {
            self.blocking.get_or_create(labels).set(1);
        }
        if !now.is_empty() {
            seen.insert(pool.to_owned(), now);
        }
    }

    /// Records whether this replica acts (holds the leader Lease or runs without election).
    pub fn set_leader(&self, leading: bool) {
        self.leader
            .get_or_create(&LeaderLabels { name: LEADER_LEASE })
            .set(i64::from(leading));
    }

    /// Records one host call of `verb` that ended with `outcome` after `seconds`.
    pub fn host_call(&self, verb: &'static str, outcome: &'static str, seconds: f64) {
        let labels = CallLabels { verb, outcome };
        self.host_calls.get_or_create(&labels).inc();
        self.host_call_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// Records how long one step of a pool reconcile took.
    pub fn step(&self, step: &'static str, started: std::time::Instant) {
        self.reconcile_steps
            .get_or_create(&StepLabels { step })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts one finished reconcile.
    pub fn reconciled(&self, result: &'static str, seconds: f64) {
        self.reconcile_total
            .get_or_create(&ResultLabels {
                controller: CONTROLLER,
                result,
            })
            .inc();
        if result == "error" {
            self.reconcile_errors
                .get_or_create(&ControllerLabels {
                    controller: CONTROLLER,
                })
                .inc();
        }
        self.reconcile_time
            .get_or_create(&ControllerLabels {
                controller: CONTROLLER,
            })
            .observe(seconds);
    }
}

/// The standard `process_*` metrics of this process (client_golang's names), read from `/proc` on
/// each scrape: CPU time, resident and virtual memory, open and allowed file descriptors, start
/// time. Where `/proc` cannot be read (not Linux), nothing is exported.
#[derive(Debug)]
struct Process;

/// Clock ticks per second of `/proc/<pid>/stat`'s times: `USER_HZ`, which Linux fixes at 100 for
/// userspace on every architecture.
const USER_HZ: f64 = 100.0;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                Some(p.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                Some(p.virtual_bytes),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                Some(p.open_fds),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                p.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                p.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// One reading of `/proc/self`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: f64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: f64,
    /// Open file descriptors.
    pub open_fds: f64,
    /// The soft limit on open file descriptors (`None`: unlimited or unreadable).
    pub max_fds: Option<f64>,
    /// When the process started, in seconds since the epoch (`None`: boot time unreadable).
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where it cannot be read or parsed.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        Self::parse(&stat, &status, open_fds, &limits, &boot)
    }

    /// Parses the texts of `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits` and
    /// `/proc/stat`, with the number of entries of `/proc/self/fd`.
    pub fn parse(
        stat: &str,
        status: &str,
        open_fds: usize,
        limits: &str,
        boot: &str,
    ) -> Option<Self> {
        // The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state): utime is field 14, stime 15, starttime 22, vsize 23.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        let cpu_seconds = (field(14)? + field(15)?) / USER_HZ;
        let virtual_bytes = field(23)?;
        let resident_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib * 1024.0)?;
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|soft| soft.parse::<f64>().ok());
        let start_time_seconds = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|b| b.trim().parse::<f64>().ok())
            .zip(field(22))
            .map(|(btime, ticks)| btime + ticks / USER_HZ);
        Some(Self {
            cpu_seconds,
            resident_bytes,
            virtual_bytes,
            open_fds: open_fds as f64,
            max_fds,
            start_time_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_texts_parse_into_process_stats() {
        let stat = "4242 (poolkeeper (x)) S 1 4242 4242 0 -1 4194560 3300 0 0 0 250 50 0 0 20 0 9 0 12345 1048576000 8000 18446744073709551615";
        let status = "Name:\tpoolkeeper\nVmRSS:\t   32768 kB\nThreads:\t9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\n";
        let p = ProcessStats::parse(stat, status, 17, limits, boot).expect("parses");
        let started = p.start_time_seconds.expect("start time");
        assert!((started - 1_700_000_123.45).abs() < 1e-3, "{started}");
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 32768.0 * 1024.0,
                virtual_bytes: 1_048_576_000.0,
                open_fds: 17.0,
                max_fds: Some(1024.0),
                start_time_seconds: p.start_time_seconds,
            }
        );
    }

    #[test]
    fn garbage_in_proc_gives_no_stats_and_no_panic() {
        assert_eq!(ProcessStats::parse("", "", 0, "", ""), None);
        assert_eq!(
            ProcessStats::parse("1 (x) S", "VmRSS: 1 kB", 0, "", ""),
            None
        );
    }

    #[test]
    fn a_host_that_stops_blocking_leaves_no_series_behind() {
        let m = Metrics::default();
        let labels = |host: &str| BlockingLabels {
            pool: "p".into(),
            domain: "d".into(),
            phase: "MovingToMaintenance",
            host: host.into(),
            reason: "NotResponding",
        };
        m.set_blocking("p", vec![labels("h1"), labels("h2")]);
        m.set_blocking("p", vec![labels("h2")]);
        let body = m.render();
        assert!(!body.contains("host=\"h1\""), "{body}");
        assert!(body.contains("host=\"h2\""), "{body}");
        m.set_blocking("p", Vec::new());
        assert!(!m.render().contains("poolkeeper_domain_blocking_host{"));
    }

    #[test]
    fn scrapers_get_the_format_they_ask_for_with_its_content_type() {
        let m = Metrics::default();
        m.host_call("connect", "ok", 0.003);
        let (ct, body) = m.render_for(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ));
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        assert!(body.ends_with("# EOF\n"), "{body}");
        let (ct, body) = m.render_for(None);
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        assert!(!body.contains("# EOF"), "{body}");
        assert!(
            body.contains("# TYPE poolkeeper_host_calls_total counter"),
            "{body}"
        );
        assert!(
            body.contains("poolkeeper_host_calls_total{verb=\"connect\",outcome=\"ok\"} 1"),
            "{body}"
        );
    }
}
