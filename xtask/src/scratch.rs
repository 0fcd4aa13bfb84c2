//! Things the demo creates and must remove on every way out (success, error,
//! Ctrl-C): network namespaces, a temporary directory, a background process.

use std::{
    fs,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::cmd;

/// Network namespaces made for one run, deleted (newest first) on drop.
#[derive(Default)]
pub struct Namespaces(Vec<String>);

impl Namespaces {
    /// `ip netns add name`, remembered for deletion.
    pub fn add(&mut self, name: &str) -> Result<()> {
        // Remembered first: a Ctrl-C right after `ip` made it must not leak it.
        self.0.push(name.to_owned());
        cmd::run(Command::new("ip").args(["netns", "add", name]))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace also deletes the veth ends inside it.
        for name in self.0.iter().rev() {
            if Path::new("/run/netns").join(name).exists() {
                cmd::run_cleanup(Command::new("ip").args(["netns", "del", name]));
            }
        }
    }
}

/// A directory under the system temp dir, removed with its content on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/name`, which must not exist yet.
    pub fn new(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A process running in the background; stopped like Ctrl-C would (SIGINT)
/// when dropped while still running.
pub struct Background(Child);

impl Background {
    /// Echoes and starts a command.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let shown = cmd::render(cmd);
        println!("$ {shown} &");
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{shown}`"))?;
        Ok(Self(child))
    }

    /// Its exit status if it has ended.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.0
            .try_wait()
            .context("waiting for a background process")
    }

    /// Sends SIGINT unless it has ended, waits up to `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.0.id()).context("pid out of range")?;
        // SAFETY: kill has no memory preconditions; the child is not reaped
        // yet (try_wait above saw it running), so the pid is still its own.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("warning: still running {grace:?} after SIGINT; killing it");
        self.0.kill().context("killing a background process")?;
        self.0.wait().context("waiting for a killed process")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(2));
    }
}

/// Whether a process ended well after SIGINT: exit code 0, or killed by the
/// SIGINT itself (a program without a handler).
pub fn ended_well(status: ExitStatus) -> bool {
    status.success() || status.signal() == Some(libc::SIGINT)
}
