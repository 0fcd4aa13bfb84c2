//! `podtrace lab`: a two-node AWS VPC CNI data path built from network
//! namespaces on this host (not yet written).

use std::process::ExitCode;

use clap::{Args, Subcommand};

/// `podtrace lab` flags.
#[derive(Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Build the lab.
    Up,
    /// Remove everything the lab made.
    Down,
    /// Show nodes, ENIs and pods.
    Status,
}

/// Runs `podtrace lab ...`.
pub async fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    let _ = args.command;
    anyhow::bail!("the lab is not built yet")
}
