//! SIGINT, SIGTERM and SIGHUP as one "stop" future, so every subcommand
//! leaves through the same path that detaches everything and prints
//! totals. SIGHUP (the terminal closed, an ssh session dropped) would
//! otherwise kill podtrace at once, and on a kernel without TCX leave its
//! tc filters running.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Resolves on the first SIGINT, SIGTERM or SIGHUP.
pub struct Stop {
    int: Signal,
    term: Signal,
    /// None when SIGHUP is ignored (`nohup podtrace ...`): it stays so.
    hup: Option<Signal>,
}

impl Stop {
    /// Installs the handlers (replacing the default "die at once").
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: if hangup_ignored() {
                None
            } else {
                Some(signal(SignalKind::hangup())?)
            },
        })
    }

    /// Waits for a stop signal.
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            Some(_) = async {
                match &mut self.hup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// Whether SIGHUP is ignored, as `nohup` leaves it: a handler would undo
/// that.
fn hangup_ignored() -> bool {
    // SAFETY: sigaction(2) with no new action only reads the current one
    // into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &raw mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Resolves at `at`, or never when there is no deadline (`--duration`).
pub async fn deadline(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
