//! The `poolkeeper` binary: parses arguments, sets up logging, and runs one subcommand.

use clap::{Parser, Subcommand};

/// poolkeeper keeps the hosts of a storage pool in step with the pool's storage-domain map.
#[derive(Parser)]
#[command(name = "poolkeeper", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CRD as YAML (what `crds/` holds).
    Crds,
    /// Run the host agent (or, with --simulate N, N virtual hosts).
    Agent(poolkeeper::agent::AgentArgs),
    /// Run the controller.
    Controller(poolkeeper::controller::ControllerArgs),
    /// Start a local control plane, the controller and simulated hosts, and run until interrupted.
    Dev(poolkeeper::dev::DevArgs),
    /// Create a file-domain layout (`<root>/<mount>/<uuid>/dom_md/metadata`) for demos and tests.
    MakeDomain(poolkeeper::agent::MakeDomainArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    poolkeeper::telemetry::init();
    match cli.command {
        Command::Crds => {
            print!("{}", poolkeeper::api::crds_yaml()?);
            Ok(())
        }
        Command::Agent(args) => Ok(poolkeeper::agent::run(args).await?),
        Command::Controller(args) => Ok(poolkeeper::controller::run(args).await?),
        Command::Dev(args) => Ok(poolkeeper::dev::run(args).await?),
        Command::MakeDomain(args) => Ok(poolkeeper::agent::make_domain(&args)?),
    }
}
