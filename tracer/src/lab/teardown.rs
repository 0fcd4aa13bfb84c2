//! `down`: removes every lab namespace (with it go every veth, bridge,
//! address, route, rule, neighbour and iptables chain, since the lab made
//! them all inside its namespaces), stops the processes living in them, and
//! deletes the lab's files. What to remove comes from the plan's names, the
//! inventory if there is one, and the `lab-` prefix of pod namespaces, so a
//! crashed or half-done `up` is cleaned up as well as a complete one.
//!
//! Only namespaces the lab made are touched. The names are plain (`vpc`,
//! `internet`, `node-a`), so a person may well have a namespace of their
//! own by one of them: `up` records each namespace it creates, with the
//! namespace's inode, in [`OWNED_DIR`] right after creating it, and `down`
//! removes (and stops processes in) only namespaces whose record matches.

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

/// Where `up` records the namespaces it made: one file per namespace,
/// named after it, holding the inode of its `/run/netns` file.
pub const OWNED_DIR: &str = "/run/podtrace/lab-netns";

/// What `down` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    /// Namespaces deleted.
    pub netns: Vec<String>,
    /// Processes stopped (the whoami service, anything run inside the lab).
    pub stopped: Vec<i32>,
    /// Namespaces with a lab name that the lab did not make: left alone.
    pub foreign: Vec<String>,
}

/// Records `name`, just created by `up`, as the lab's own.
pub fn mark_owned(name: &str) -> Result<(), LabError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| LabError::Io { what, path, source }
    };
    let ns = Path::new(NETNS_RUN_DIR).join(name);
    let ino = fs::metadata(&ns).map_err(io("reading", &ns))?.ino();
    fs::create_dir_all(OWNED_DIR).map_err(io("creating", Path::new(OWNED_DIR)))?;
    let record = Path::new(OWNED_DIR).join(name);
    fs::write(&record, format!("{ino}\n")).map_err(io("writing", &record))
}

/// Whether the namespace file `run_dir/name` is the one recorded in
/// `owned_dir/name`: a namespace deleted and made again by someone else
/// has another inode.
fn owned_in(run_dir: &Path, owned_dir: &Path, name: &str) -> bool {
    let Ok(meta) = fs::metadata(run_dir.join(name)) else {
        return false;
    };
    fs::read_to_string(owned_dir.join(name))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        == Some(meta.ino())
}

/// Names of namespaces the lab may have made that exist now, pods first,
/// split into the lab's own and others'.
fn candidates(plan: &Plan) -> (Vec<String>, Vec<String>) {
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
        .into_iter()
        .partition(|n| owned_in(Path::new(NETNS_RUN_DIR), Path::new(OWNED_DIR), n))
}

/// Names of the lab's own namespaces that exist now, pods first.
pub fn existing_netns(plan: &Plan) -> Vec<String> {
    candidates(plan).0
}

/// Namespaces named as the lab of `plan` names its own that the lab did
/// not make: `up` cannot build while they exist.
pub fn foreign_netns(plan: &Plan) -> Vec<String> {
    let (_, foreign) = candidates(plan);
    let planned = plan.netns_names();
    foreign
        .into_iter()
        .filter(|n| planned.contains(&n.as_str()))
        .collect()
}

/// Removes the lab. Idempotent: with no lab, it removes nothing.
pub fn remove(plan: &Plan) -> Result<DownReport, LabError> {
    let (names, foreign) = candidates(plan);
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
    forget_gone();
    if !failed.is_empty() {
        return Err(LabError::Leftovers(failed.join(", ")));
    }
    Ok(DownReport {
        netns: names,
        stopped: pids,
        foreign,
    })
}

/// Deletes the records of namespaces that are gone or no longer the ones
/// recorded, and the records' directory once it is empty.
fn forget_gone() {
    let dir = Path::new(OWNED_DIR);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !owned_in(Path::new(NETNS_RUN_DIR), dir, name) {
            let _ = fs::remove_file(e.path());
        }
    }
    let _ = fs::remove_dir(dir);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_the_labs_only_while_its_record_matches() {
        let root = std::env::temp_dir().join(format!("podtrace-owned-{}", std::process::id()));
        let (run, owned) = (root.join("netns"), root.join("owned"));
        fs::create_dir_all(&run).unwrap();
        fs::create_dir_all(&owned).unwrap();
        fs::write(run.join("vpc"), b"").unwrap();
        fs::write(run.join("internet"), b"").unwrap();
        let ino = fs::metadata(run.join("vpc")).unwrap().ino();
        fs::write(owned.join("vpc"), format!("{ino}\n")).unwrap();

        assert!(owned_in(&run, &owned, "vpc"));
        // No record: someone else's.
        assert!(!owned_in(&run, &owned, "internet"));
        // No namespace: nothing to own.
        assert!(!owned_in(&run, &owned, "nlb"));
        // Deleted and made again (another inode): someone else's now.
        fs::write(owned.join("vpc"), format!("{}\n", ino + 1)).unwrap();
        assert!(!owned_in(&run, &owned, "vpc"));
        // A record that is not a number.
        fs::write(owned.join("internet"), b"mine\n").unwrap();
        assert!(!owned_in(&run, &owned, "internet"));
        fs::remove_dir_all(&root).unwrap();
    }
}
