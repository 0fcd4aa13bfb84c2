//! Running the real `podtrace` binary as a user would, and one test at a
//! time where tests share kernel-wide state.

use std::{
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// Serialises tests that look at kernel-wide state (every podtrace link on
/// the machine) within one test binary.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `podtrace` binary next to this test's profile directory
/// (`cargo xtask test` builds it first).
pub fn podtrace_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/podtrace
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("podtrace"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p tracer` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A `podtrace` process started with `--ready-file`; killed on drop if the
/// test did not stop it.
pub struct Podtrace {
    child: Option<Child>,
    ready: PathBuf,
}

/// What a finished `podtrace` printed.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Podtrace {
    /// Starts `podtrace <args> --ready-file <tmp>` and waits until every hook
    /// is attached (or panics with what it printed).
    pub fn start(args: &[&str]) -> Self {
        Self::start_cmd(Command::new(podtrace_bin()), args)
    }

    /// [`Podtrace::start`] with these environment variables set.
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut cmd = Command::new(podtrace_bin());
        cmd.envs(env.iter().copied());
        Self::start_cmd(cmd, args)
    }

    /// [`Podtrace::start`] in a session of its own (`setsid`), so that the
    /// scheduler treats it apart from the test's own threads, as a node
    /// treats podtrace apart from the pods.
    pub fn start_in_own_session(args: &[&str]) -> Self {
        let mut cmd = Command::new(podtrace_bin());
        // SAFETY: setsid(2) is async-signal-safe; the child has just forked.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::start_cmd(cmd, args)
    }

    fn start_cmd(mut cmd: Command, args: &[&str]) -> Self {
        let ready = std::env::temp_dir().join(format!("podtrace-ready-{}", crate::unique("r")));
        let _ = std::fs::remove_file(&ready);
        let child = cmd
            .args(args)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn podtrace");
        let mut me = Self {
            child: Some(child),
            ready,
        };
        let start = Instant::now();
        while !me.ready.exists() {
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let out = me
                    .child
                    .take()
                    .expect("child")
                    .wait_with_output()
                    .expect("output");
                panic!(
                    "podtrace {args:?} exited early ({status}): {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "podtrace {args:?} never became ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its `--ready-file`.
    pub fn ready_file(&self) -> PathBuf {
        self.ready.clone()
    }

    /// The hooks it attached, as `netns/iface` lines from the ready file.
    pub fn hooks(&self) -> Vec<String> {
        std::fs::read_to_string(&self.ready)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) and waits for the exit.
    pub fn stop(mut self, signal: i32) -> Finished {
        let child = self.child.take().expect("running");
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        Self::finish(child)
    }

    /// Waits for it to exit by itself (e.g. after `--count`).
    pub fn wait(mut self) -> Finished {
        Self::finish(self.child.take().expect("running"))
    }

    fn finish(child: Child) -> Finished {
        let out = child.wait_with_output().expect("wait podtrace");
        Finished {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Podtrace {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.ready);
    }
}
