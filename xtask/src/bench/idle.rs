//! Idle CPUs that poll a moment before they halt, for the network runs.
//!
//! A VM's idle vCPU halts, and waking it takes a trip through the host.
//! The haltpoll cpuidle driver polls a while before it halts, unless told
//! not to, as this machine's kernel command line does
//! (`haltpoll.guest_halt_poll_ns=0`). Bulk TCP between two namespaces
//! waits on such wake-ups all the time, so any process that keeps a CPU
//! busy spares the traffic some of them: tcpdump, which spends about a
//! fifth of a core on its copies, came out at about 1.0 of no tracer on
//! bulk TCP, at times above, its cost hidden by what its busy CPU saved
//! the traffic. With the driver's default polling, the same runs put
//! tcpdump at 0.89 and podtrace at 0.99 (BENCHMARKS.md).

use std::fs;

use anyhow::{Context as _, Result};

const DRIVER: &str = "/sys/devices/system/cpu/cpuidle/current_driver";
const POLL_NS: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";
/// The haltpoll governor's default (`drivers/cpuidle/governors/haltpoll.c`).
const DEFAULT_NS: u64 = 200_000;

/// Holds the haltpoll driver at its default polling until dropped, then
/// puts back what was there.
pub struct HaltPoll {
    was: String,
}

impl HaltPoll {
    /// Raises haltpoll's polling to its default if the machine uses the
    /// driver with less; `None` where it does not (bare metal, other
    /// hypervisors' guests, a guest already polling).
    pub fn default_polling() -> Result<Option<Self>> {
        let driver = fs::read_to_string(DRIVER).unwrap_or_default();
        if driver.trim() != "haltpoll" {
            return Ok(None);
        }
        let Ok(was) = fs::read_to_string(POLL_NS) else {
            return Ok(None);
        };
        let was = was.trim().to_owned();
        if was.parse::<u64>().is_ok_and(|ns| ns >= DEFAULT_NS) {
            return Ok(None);
        }
        println!(
            "$ echo {DEFAULT_NS} > {POLL_NS} (haltpoll's default; was {was}, put back when the network runs end)"
        );
        fs::write(POLL_NS, DEFAULT_NS.to_string()).with_context(|| format!("writing {POLL_NS}"))?;
        Ok(Some(Self { was }))
    }

    /// What the machine had.
    pub fn was(&self) -> &str {
        &self.was
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        if let Err(e) = fs::write(POLL_NS, &self.was) {
            eprintln!("warning: could not put {POLL_NS} back to {}: {e}", self.was);
        }
    }
}
