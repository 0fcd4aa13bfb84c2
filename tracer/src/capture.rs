//! `podtrace capture`: one line per packet event.

use std::process::ExitCode;

use clap::Args;

use crate::cli::{FilterArgs, ReadyArgs, ReportArgs, WhereArgs};

/// `podtrace capture` flags.
#[derive(Args, Debug)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub place: WhereArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub ready: ReadyArgs,
}

/// Runs `podtrace capture`.
pub async fn run(args: CaptureArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("capture is not written yet")
}
