//! podtrace's developer tasks, run as `cargo xtask <task>` (an alias in
//! .cargo/config.toml). Commands that change something are echoed as
//! `$ ...` so that a CI log shows what ran.
#![warn(clippy::pedantic)]

mod bench;
mod binary;
mod cmd;
mod demo;
mod image;
mod lab;
mod scratch;
mod setup;
mod test;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// podtrace's developer tasks. Run as root on Debian with rustup.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Install what building and testing needs (apt packages, nightly
    /// rust-src, bpf-linker, clippy, rustfmt); skips what is present.
    Setup(setup::Options),
    /// Set up, then build podtrace and print where the binary is.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, then fmt check, clippy, build, unit tests, the stable-only
    /// build and every privileged test; fails if any fails or if no
    /// privileged test ran.
    Test,
    /// Set up, build (release) and trace real packets: by default the path
    /// of a ping between two pods of the lab.
    Demo(demo::Options),
    /// Set up (with podman and musl), build static `podtrace` and
    /// `kubectl-podtrace`, and the OCI image FROM scratch; prints its size.
    Image(image::Options),
    /// Set up, build (release) and measure what podtrace costs: userspace
    /// micro-benchmarks, then traffic between two scratch namespaces with
    /// no tracer, podtrace and tcpdump, interleaved; prints the tables.
    Bench(bench::Options),
    /// The bench's floor: an empty TC program at ingress and egress of an
    /// interface in each namespace, until a signal (run by `bench`).
    #[command(hide = true)]
    EmptyHooks(bench::empty::Options),
}

fn main() -> ExitCode {
    cmd::init();
    let result = match Cli::parse().task {
        Task::Setup(opts) => setup::run(&opts),
        Task::Build { release } => build(release),
        Task::Test => test::run(),
        Task::Demo(opts) => demo::run(&opts),
        Task::Image(opts) => image::run(&opts),
        Task::Bench(opts) => bench::run(&opts),
        Task::EmptyHooks(opts) => bench::empty::hold(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build(release: bool) -> Result<()> {
    setup::run(&setup::Options::default())?;
    let exe = binary::build(release)?;
    println!("podtrace: {}", exe.display());
    Ok(())
}
