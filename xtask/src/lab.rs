//! The demo's use of `podtrace lab`: the lab is one per machine, so the demo
//! takes the same lock as the privileged tests (`podtrace_tests::LabLock`)
//! and brings down only a lab it built itself.

use std::{
    fs::{self, File},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::cmd;

/// The lock the privileged tests hold while they use the lab.
const LOCK: &str = "/run/podtrace/lab.lock";

/// Exclusive use of the lab until dropped (an flock, released on close).
pub struct Lock(#[expect(dead_code, reason = "held for its fd")] File);

impl Lock {
    /// Waits for the lock; Ctrl-C stops the wait.
    pub fn acquire() -> Result<Self> {
        fs::create_dir_all("/run/podtrace").context("creating /run/podtrace")?;
        let file = File::create(LOCK).with_context(|| format!("opening {LOCK}"))?;
        let mut said = false;
        // Non-blocking and polled: a blocking flock would restart after the
        // Ctrl-C handler ran and never return.
        // SAFETY: flock(2) on an fd this function owns.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e).with_context(|| format!("flock {LOCK}"));
            }
            if !said {
                println!("waiting for {LOCK}: tests or another demo are using the lab");
                said = true;
            }
            cmd::check_interrupt()?;
            thread::sleep(Duration::from_millis(200));
        }
        Ok(Self(file))
    }
}

/// The lab, brought down on drop if this process built it.
pub struct Lab {
    podtrace: PathBuf,
    built: bool,
}

impl Lab {
    /// Uses the lab if a complete one is up (a person's, left as it is),
    /// otherwise builds it with `podtrace lab up`.
    pub fn up(podtrace: &Path) -> Result<Self> {
        let status = cmd::probe(Command::new(podtrace).args(["lab", "status"]))?;
        let already = status.status.success();
        // Armed before `lab up` runs: after a failed or interrupted up,
        // `lab down` removes what it left.
        let lab = Self {
            podtrace: podtrace.to_owned(),
            built: !already,
        };
        if already {
            println!("a lab is already up: using it, leaving it up");
        } else {
            cmd::run(Command::new(podtrace).args(["lab", "up"]))?;
        }
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.built {
            cmd::run_cleanup(Command::new(&self.podtrace).args(["lab", "down"]));
        }
    }
}
