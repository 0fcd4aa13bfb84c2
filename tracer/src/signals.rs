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
    hup: Signal,
}

impl Stop {
    /// Installs the handlers (replacing the default "die at once").
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for a stop signal.
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// Resolves at `at`, or never when there is no deadline (`--duration`).
pub async fn deadline(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
