//! The controller: watches pools, domains, hosts and leases; observe → plan → act → report.

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder until the controller lands.
    #[error("the controller is not built yet")]
    NotBuilt,
}

/// Arguments of `poolkeeper controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {}

/// Runs the controller until interrupted.
///
/// # Errors
/// When the controller cannot start.
pub async fn run(_args: ControllerArgs) -> Result<(), Error> {
    Err(Error::NotBuilt)
}
