//! `down`: removes every lab namespace (with it go every veth, bridge,
//! address, route, rule, neighbour and iptables chain, since the lab made
//! them all inside its namespaces), stops the processes living in them, and
//! deletes the lab's files. What to remove comes from the plan's names, the
//! inventory if there is one, and the `lab-` prefix of pod namespaces, so a
//! crashed or half-done `up` is cleaned up as well as a complete one.

use std::{
    collections::HashSet,
    fs,
    io::ErrorKind,
    os::unix::fs::MetadataExt as _,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use super::{
    INVENTORY_PATH, LabError, WHOAMI_PIDFILE, build,
    inventory::Inventory,
    plan::{POD_NETNS_PREFIX, Plan},
    whoami,
};
use crate::netns::{NETNS_RUN_DIR, known_names};

/// What `down` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    /// Namespaces deleted.
    pub netns: Vec<String>,
    /// Processes stopped (the whoami service, anything run inside the lab).
    pub stopped: Vec<i32>,
}

/// Names of lab namespaces that exist now, pods first.
pub fn existing_netns(plan: &Plan) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        if !names.iter().any(|m| m == n) {
            names.push(n.to_owned());
        }
    };
    for n in known_names() {
        if n.starts_with(POD_NETNS_PREFIX) {
            add(&n);
        }
    }
    if let Ok(inv) = Inventory::load(INVENTORY_PATH) {
        inv.plan().netns_names().into_iter().for_each(&mut add);
    }
    plan.netns_names().into_iter().for_each(&mut add);
    names.retain(|n| Path::new(NETNS_RUN_DIR).join(n).exists());
    names
}

/// Removes the lab. Idempotent: with no lab, it removes nothing.
pub fn remove(plan: &Plan) -> Result<DownReport, LabError> {
    let names = existing_netns(plan);
    let inodes: HashSet<u64> = names
        .iter()
        .filter_map(|n| fs::metadata(Path::new(NETNS_RUN_DIR).join(n)).ok())
        .map(|m| m.ino())
        .collect();
    let mut pids = processes_in(&inodes);
    if let Some(pid) = whoami_pid().filter(|p| !pids.contains(p)) {
        pids.push(pid);
    }
    stop(&pids);
    let mut failed = Vec::new();
    for name in &names {
        if let Err(e) = build::run(None, &["ip", "netns", "del", name], None) {
            log::warn!("{e}");
            failed.push(name.clone());
        }
    }
    for file in [INVENTORY_PATH, WHOAMI_PIDFILE, &plan.peers_log] {
        match fs::remove_file(file) {
            Err(e) if e.kind() != ErrorKind::NotFound => log::warn!("removing {file}: {e}"),
            _ => {}
        }
    }
    if !failed.is_empty() {
        return Err(LabError::Leftovers(failed.join(", ")));
    }
    Ok(DownReport {
        netns: names,
        stopped: pids,
    })
}

/// The whoami daemon's pid from its pidfile, if that process is still the
/// daemon (the pid may have been reused).
pub fn whoami_pid() -> Option<i32> {
    let pid: i32 = fs::read_to_string(WHOAMI_PIDFILE)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == whoami::COMM && alive(pid)).then_some(pid)
}

/// Processes (other than this one) whose network namespace is one of
/// `inodes`.
fn processes_in(inodes: &HashSet<u64>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| netns_inode(*pid).is_some_and(|ino| inodes.contains(&ino)))
        .collect()
}

/// `net:[4026532]` -> 4026532.
fn netns_inode(pid: i32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether `pid` still runs (a zombie has no namespaces left: not alive).
fn alive(pid: i32) -> bool {
    netns_inode(pid).is_some()
}

/// SIGTERM, then SIGKILL for whatever is still there after two seconds.
fn stop(pids: &[i32]) {
    for (signal, wait) in [(libc::SIGTERM, 2000), (libc::SIGKILL, 1000)] {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            return;
        }
        for pid in &left {
            // SAFETY: kill(2) on a pid we found in a lab namespace.
            unsafe { libc::kill(*pid, signal) };
        }
        let deadline = Instant::now() + Duration::from_millis(wait);
        while left.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}
