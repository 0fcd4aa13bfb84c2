//! Idle CPUs that poll a moment before they halt, for the network runs.
//!
//! A VM's idle vCPU halts, and waking it takes a trip through the host.
//! The haltpoll cpuidle governor polls a while before it halts, unless
//! told not to, as the kernel command line of this project's bench VM
//! does (`haltpoll.guest_halt_poll_ns=0`). Bulk TCP between two
//! namespaces waits on such wake-ups all the time, so any process that
//! keeps a CPU busy spares the traffic some of them: tcpdump, which keeps
//! about a fifth of a core busy with its copies, came out at 0.97-1.02 of
//! no tracer on bulk TCP, single runs up to 1.05, its cost hidden by what
//! its busy CPU saved the traffic. With the governor's default polling
//! and iperf3 pinned, bulk TCP alone put tcpdump at 0.89 and podtrace at
//! 0.99 (BENCHMARKS.md).

use std::fs;

const GOVERNOR: &str = "/sys/devices/system/cpu/cpuidle/current_governor_ro";
const POLL_NS: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";
/// The haltpoll governor's default (`drivers/cpuidle/governors/haltpoll.c`),
/// the most it polls: each CPU's window starts lower and adapts.
pub const DEFAULT_NS: u64 = 200_000;

/// Holds the haltpoll governor at its default polling until dropped, then
/// puts back what was there.
pub struct HaltPoll {
    was: u64,
}

impl HaltPoll {
    /// Raises haltpoll's polling to its default if the machine idles with
    /// that governor and less polling; `None` where it does not (bare
    /// metal, other hypervisors' guests, a guest already polling) or where
    /// the setting cannot be read or written, which it says.
    pub fn default_polling() -> Option<Self> {
        let governor = fs::read_to_string(GOVERNOR).unwrap_or_default();
        if governor.trim() != "haltpoll" {
            return None;
        }
        let text = fs::read_to_string(POLL_NS).ok()?;
        let Ok(was) = text.trim().parse::<u64>() else {
            println!("   {POLL_NS} reads {text:?}: idle CPUs left as they are");
            return None;
        };
        if was >= DEFAULT_NS {
            println!("   {POLL_NS} is {was}: idle CPUs already poll");
            return None;
        }
        println!(
            "$ echo {DEFAULT_NS} > {POLL_NS} (haltpoll's default; was {was}, put back when the network runs end)"
        );
        if let Err(e) = fs::write(POLL_NS, DEFAULT_NS.to_string()) {
            println!("   could not ({e}): idle CPUs left as they are");
            return None;
        }
        Some(Self { was })
    }

    /// What the machine had.
    pub fn was(&self) -> u64 {
        self.was
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        if let Err(e) = fs::write(POLL_NS, self.was.to_string()) {
            eprintln!("warning: could not put {POLL_NS} back to {}: {e}", self.was);
        }
    }
}
