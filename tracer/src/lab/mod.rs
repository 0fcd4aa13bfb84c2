//! `podtrace lab`: a two-node AWS VPC CNI data path built from network
//! namespaces on this host (see `plan` for the names and addresses).
//!
//! Everything the lab makes lives inside its own namespaces: `vpc` (router
//! and subnet bridges), `node-a`, `node-b`, `internet`, `nlb` and one
//! `lab-<namespace>-<pod>` per pod. The host namespace only gains the
//! `/run/netns/*` files and `/run/podtrace/lab*` files.
//!
//! For other code: [`Inventory::load_default`] maps pod names to IPs,
//! nodes, ENIs and netns; [`up`] and [`down`] build and remove the lab (the
//! test crate's `LabGuard` wraps them).

mod addr;
mod build;
pub mod inventory;
mod netlink;
pub mod plan;
mod rules;
mod status;
mod teardown;
pub mod whoami;

use std::{fs::File, os::fd::AsRawFd as _, path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};

pub use self::{
    inventory::{INVENTORY_PATH, Inventory},
    plan::{Cidr, EniPlan, HostPlan, Mac, NodePlan, Plan, PlanError, PodPlan, ServicePlan},
    teardown::{DownReport, OWNED_DIR, mark_owned},
};
use crate::netns::NetnsError;

/// The whoami daemon's pid.
pub const WHOAMI_PIDFILE: &str = "/run/podtrace/lab-whoami.pid";
/// Serializes `up` and `down` between processes.
const OP_LOCK: &str = "/run/podtrace/lab.op.lock";

/// What can go wrong building, inspecting or removing the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Not root.
    #[error(
        "needs root: `podtrace lab {0}` creates network namespaces, veths and iptables rules (try sudo)"
    )]
    NeedsRoot(&'static str),
    /// A tool the lab drives is missing.
    #[error("needs `{0}` in PATH (install iproute2 and iptables)")]
    MissingTool(&'static str),
    /// A bad `--vpc-cidr`.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A netlink request failed.
    #[error("netns \"{netns}\": {what}: {source}")]
    Netlink {
        /// Namespace.
        netns: String,
        /// What was being done.
        what: String,
        /// The kernel's or library's error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A command (`ip`, `iptables-restore`) failed.
    #[error("netns \"{netns}\": `{cmd}` failed: {detail}")]
    Command {
        /// Namespace it ran in (`host` for `ip netns add/del`).
        netns: String,
        /// The command line.
        cmd: String,
        /// Its stderr.
        detail: String,
    },
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The inventory is not valid JSON of the expected shape.
    #[error("lab inventory {}: {source}", path.display())]
    Inventory {
        /// The file.
        path: PathBuf,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// `up` with a different plan while a lab is up.
    #[error("a lab with VPC CIDR {0} is already up: run `podtrace lab down` first")]
    OtherLabUp(Cidr),
    /// `down` could not delete some namespaces.
    #[error("could not remove netns {0} (see `ip netns list`)")]
    Leftovers(String),
    /// Namespaces the lab needs by name exist, and the lab did not make them.
    #[error("{}", foreign_message(.0))]
    Foreign(Vec<String>),
}

fn foreign_message(names: &[String]) -> String {
    let (verb, pronoun, noun) = if names.len() == 1 {
        ("exists but was", "it", "name")
    } else {
        ("exist but were", "them", "names")
    };
    format!(
        "netns {} {verb} not made by `podtrace lab up`, and the lab needs the {noun}: delete or \
         rename {pronoun} (`ip netns del {}`), then run `podtrace lab up` again",
        names.join(", "),
        names.join("; ip netns del "),
    )
}

/// `podtrace lab` flags.
#[derive(Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Build the lab: VPC router, node-a and node-b with ENIs ens5/ens6,
    /// four pods, an internet host, an NLB, a ClusterIP service. A
    /// complete lab is left as it is; leftovers of a partial one are
    /// removed first. Writes the inventory to /run/podtrace/lab.json.
    Up {
        /// The VPC CIDR (a /16 or larger); subnets are its x.x.1.0/24
        /// (node-a), x.x.2.0/24 (node-b) and x.x.100.0/24 (NLB).
        #[arg(long, default_value = "192.168.0.0/16")]
        vpc_cidr: Cidr,
    },
    /// Remove everything the lab made, also after a crashed or partial `up`.
    Down,
    /// Show nodes, ENIs with their IPs, and pods with IP, node and ENI.
    /// Exit 0 when a complete lab is up, 1 when none or part of one is.
    Status {
        /// Print the inventory JSON instead of tables (none, and the
        /// message on stderr, when no lab is up).
        #[arg(long)]
        json: bool,
    },
}

/// Runs `podtrace lab ...`.
pub async fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LabCommand::Up { vpc_cidr } => {
            let plan = Plan::new(vpc_cidr)?;
            let (inv, note) = match up(&plan).await? {
                UpOutcome::Built(inv) => (inv, "the lab is up"),
                UpOutcome::AlreadyUp(inv) => (inv, "the lab was already up, left as it is"),
            };
            print!("{}", status::render(&inv, &[]));
            println!("\n{note}; inventory in {INVENTORY_PATH}; `podtrace lab down` removes it");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down => {
            let report = down()?;
            if report.netns.is_empty() {
                println!("no lab to remove");
            } else {
                println!("removed netns {}", report.netns.join(", "));
            }
            if !report.foreign.is_empty() {
                println!(
                    "left netns {} alone: not made by `podtrace lab up`",
                    report.foreign.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status { json } => Ok(status::run(json)?),
    }
}

/// What [`up`] did.
#[derive(Debug)]
pub enum UpOutcome {
    /// Built a new lab.
    Built(Inventory),
    /// A complete lab with the same plan was already up: nothing changed.
    AlreadyUp(Inventory),
}

/// Builds the lab of `plan`, unless the same one is already up. Removes
/// leftovers of a partial lab first, and everything it made if it fails.
pub async fn up(plan: &Plan) -> Result<UpOutcome, LabError> {
    preflight("up")?;
    let _lock = op_lock()?;
    if let Ok(inv) = Inventory::load(INVENTORY_PATH) {
        let own = teardown::existing_netns(inv.plan());
        if inv
            .plan()
            .netns_names()
            .iter()
            .all(|n| own.iter().any(|o| o == n))
            && teardown::whoami_pid().is_some()
        {
            if inv.plan() != plan {
                return Err(LabError::OtherLabUp(inv.plan().vpc_cidr));
            }
            return Ok(UpOutcome::AlreadyUp(inv));
        }
    }
    // Checked before anything is removed or made: the lab touches only
    // namespaces it made.
    let foreign = teardown::foreign_netns(plan);
    if !foreign.is_empty() {
        return Err(LabError::Foreign(foreign));
    }
    let leftovers = teardown::remove(plan)?;
    if !leftovers.netns.is_empty() {
        log::warn!(
            "removed what an unfinished lab left: netns {}",
            leftovers.netns.join(", ")
        );
    }
    let inv = Inventory::from_plan(plan);
    let built = match build::build(plan).await {
        Ok(()) => inv.save(INVENTORY_PATH),
        Err(e) => Err(e),
    };
    if let Err(e) = built {
        if let Err(cleanup) = teardown::remove(plan) {
            log::warn!("cleaning up after a failed `lab up`: {cleanup}");
        }
        return Err(e);
    }
    Ok(UpOutcome::Built(inv))
}

/// Removes the lab (whatever exists of it).
pub fn down() -> Result<DownReport, LabError> {
    preflight("down")?;
    let _lock = op_lock()?;
    teardown::remove(&Plan::default())
}

/// Root and the tools, checked before anything is made.
fn preflight(what: &'static str) -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NeedsRoot(what));
    }
    for tool in ["ip", "iptables-restore"] {
        let path = std::env::var_os("PATH").unwrap_or_default();
        if !std::env::split_paths(&path).any(|d| d.join(tool).is_file()) {
            return Err(LabError::MissingTool(tool));
        }
    }
    Ok(())
}

/// An exclusive lock on [`OP_LOCK`], released when the file closes.
fn op_lock() -> Result<File, LabError> {
    let io = |what| {
        move |source| LabError::Io {
            what,
            path: OP_LOCK.into(),
            source,
        }
    };
    std::fs::create_dir_all("/run/podtrace").map_err(io("creating the directory of"))?;
    let file = File::create(OP_LOCK).map_err(io("opening"))?;
    // SAFETY: flock(2) on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io("locking")(std::io::Error::last_os_error()));
    }
    Ok(file)
}
