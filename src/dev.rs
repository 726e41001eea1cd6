//! `poolkeeper dev`: a local control plane, the controller and simulated hosts in one command.

/// Errors of the dev mode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder until the dev mode lands.
    #[error("the dev mode is not built yet")]
    NotBuilt,
}

/// Arguments of `poolkeeper dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {}

/// Runs until interrupted.
///
/// # Errors
/// When a part cannot start.
pub async fn run(_args: DevArgs) -> Result<(), Error> {
    Err(Error::NotBuilt)
}
