//! The host agent: serves VDSM's pool verbs, holds the pool connection in memory only, runs domain
//! monitors, reports into `Host.status.report`, renews its Lease; and the many-host simulator.

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder until the agent lands.
    #[error("the agent is not built yet")]
    NotBuilt,
}

/// Arguments of `poolkeeper agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {}

/// Arguments of `poolkeeper make-domain`.
#[derive(Debug, clap::Args)]
pub struct MakeDomainArgs {}

/// Runs the agent until interrupted.
///
/// # Errors
/// When the agent cannot start.
pub async fn run(_args: AgentArgs) -> Result<(), Error> {
    Err(Error::NotBuilt)
}

/// Creates a file-domain layout.
///
/// # Errors
/// When the layout cannot be written.
pub fn make_domain(_args: &MakeDomainArgs) -> Result<(), Error> {
    Err(Error::NotBuilt)
}
