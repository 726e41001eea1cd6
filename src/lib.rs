//! poolkeeper keeps the hosts of a storage pool in step with the pool's storage-domain map.
//!
//! ```text
//!            kubectl / GitOps
//!                  │ StoragePool, StorageDomain, Host.spec
//!                  ▼
//!   ┌────────── API server ◄──────────── agent: Host.status.report, Lease
//!   │ watch         ▲ status, events       ▲
//!   ▼               │                      │ JSON-RPC (StoragePool.connect, ...)
//! controller: observe → plan (pure) → act ─┘ → report → finalize
//!                  ▲                       │
//!                  └──── call ledger ◄─────┘
//! ```
//!
//! - [`api`]: the custom resources (types only; no client).
//! - [`plan`]: pure decisions (no I/O, no clock).
//! - [`protocol`]: the JSON-RPC wire format, VDSM error codes, client and server.
//! - [`agent`]: the host agent and the simulator.
//! - [`controller`]: the reconciler shell around [`plan`].
//! - [`pki`]: the pool CA, the hosts' certificate requests and their review (pure).
//! - [`shutdown`]: the stop signal (SIGINT, SIGTERM) every long-running subcommand waits for.
//! - [`metrics`], [`telemetry`]: Prometheus metrics and logging.
//! - `testenv`: a real local control plane (etcd + kube-apiserver) for tests and `dev`.
//! - `dev`: `poolkeeper dev`, the control plane, controller and simulated hosts in one command.
//!   Both only with the `dev` cargo feature (on by default, off in the image).
//! - `properties` (tests only): property tests of every parser of outside input; the planner's
//!   are in `plan`'s tests.

pub mod agent;
pub mod api;
pub mod controller;
#[cfg(feature = "dev")]
pub mod dev;
pub mod metrics;
pub mod pki;
pub mod plan;
#[cfg(test)]
mod properties;
pub mod protocol;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "dev")]
pub mod testenv;
