//! What /proc says about a tracer: CPU time, peak memory, and the run time
//! of the BPF programs it holds (`fdinfo` of its `bpf-prog` fds, named by
//! `bpftool`). Reading a process's own fds picks exactly this podtrace's
//! programs, whatever else the machine has loaded.

use std::{collections::HashMap, fs, process::Command};

use anyhow::{Context as _, Result, bail};

use super::empty;
use crate::cmd;

/// User + system CPU seconds of a process and its threads so far.
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .context("malformed /proc/PID/stat")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok((ticks(14)? + ticks(15)?) as f64 / hz)
}

/// Peak resident set size (`VmHWM`) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

/// Run time of one kind of program (all its copies), from `bpf_stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunTime {
    /// Nanoseconds spent in the programs.
    pub ns: u64,
    /// Times they ran (one per packet per hook).
    pub runs: u64,
}

impl RunTime {
    /// Mean nanoseconds per run, if they ran.
    pub fn per_run(self) -> Option<f64> {
        (self.runs > 0).then(|| self.ns as f64 / self.runs as f64)
    }
}

/// podtrace's TC programs (or the bench's empty ones), by direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Programs {
    /// `podtrace_ingress`, every namespace's copy.
    pub ingress: RunTime,
    /// `podtrace_egress`, every namespace's copy.
    pub egress: RunTime,
}

/// Run times of the BPF programs process `pid` holds open.
pub fn programs(pid: u32) -> Result<Programs> {
    let mut held = Vec::new();
    let dir = format!("/proc/{pid}/fd");
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry?;
        let Ok(target) = fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        if target.to_string_lossy() != "anon_inode:bpf-prog" {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(ns), Some(runs)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            held.push((id, RunTime { ns, runs }));
        }
    }
    let names = names()?;
    let mut p = Programs::default();
    for (id, rt) in held {
        let slot = match names.get(&id).map(String::as_str) {
            Some(n) if n.starts_with("podtrace_ingres") || n == empty::INGRESS => &mut p.ingress,
            Some(n) if n.starts_with("podtrace_egress") || n == empty::EGRESS => &mut p.egress,
            _ => continue,
        };
        slot.ns += rt.ns;
        slot.runs += rt.runs;
    }
    Ok(p)
}

/// Ids and names of the BPF programs process `pid` holds open.
pub fn program_ids(pid: u32) -> Result<Vec<(u64, String)>> {
    let names = names()?;
    let dir = format!("/proc/{pid}/fd");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry?;
        if fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-prog") {
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                entry.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                && let Some(name) = names.get(&id)
            {
                out.push((id, name.clone()));
            }
        }
    }
    Ok(out)
}

/// Every loaded program's name by id (`bpftool -j prog show`).
fn names() -> Result<HashMap<u64, String>> {
    let out = cmd::stdout_of(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let json: serde_json::Value = serde_json::from_str(&out).context("parsing bpftool's JSON")?;
    let Some(progs) = json.as_array() else {
        bail!("bpftool -j prog show: not a list");
    };
    Ok(progs
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_secs(me).unwrap() >= 0.0);
        assert!(peak_rss_kib(me).unwrap() > 0);
    }

    #[test]
    fn per_run_needs_runs() {
        assert_eq!(RunTime::default().per_run(), None);
        assert_eq!(RunTime { ns: 300, runs: 3 }.per_run(), Some(100.0));
    }
}
