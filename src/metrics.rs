//! Prometheus metrics of the controller, with controller-runtime's names where they mean the same
//! thing (so existing dashboards work), plus pool and domain gauges. Labels are fixed strings, never
//! `Debug` output.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

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

/// `{pool, state}` labels of host gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    /// The StoragePool's name.
    pub pool: String,
    /// `hosts`, `in_sync`, `connecting`, `failing`, `unresponsive`.
    pub state: &'static str,
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
    /// `poolkeeper_pool_hosts`.
    pub pool_hosts: Family<PoolStateLabels, Gauge>,
    /// `poolkeeper_pool_domains`.
    pub pool_domains: Family<PoolPhaseLabels, Gauge>,
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
        let pool_hosts = Family::<PoolStateLabels, Gauge>::default();
        let pool_domains = Family::<PoolPhaseLabels, Gauge>::default();
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
            "Time a pool reconcile spends in each step (observe, plan, act, report, finalize)",
            reconcile_steps.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconcile_total,
            reconcile_errors,
            reconcile_time,
            host_calls,
            pool_hosts,
            pool_domains,
            status_writes,
            api_writes,
            reconcile_steps,
        }
    }
}

impl Metrics {
    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
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
