//! Helpers for podtrace's privileged integration tests: scratch network
//! namespaces that are removed when the guard drops, also when a test panics.

pub mod process;
pub mod traffic;

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// Runs a command, panicking with its stderr if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command inside namespace `ns`; true if it succeeded.
pub fn exec_ok(ns: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Panics with a clear message unless running as root: privileged tests are
/// never silently skipped.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged test: needs root (CAP_BPF, CAP_NET_ADMIN); run `cargo xtask test` as root"
    );
}

/// A unique, short prefix for this process and call, so tests running in
/// parallel (or a leftover from a crashed run) never collide.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "pt{}{}{}",
        tag,
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Two namespaces `a` and `b` joined by a veth pair `va` (in a, 10.200.0.1/24)
/// and `vb` (in b, 10.200.0.2/24). Removed on drop.
pub struct VethPair {
    /// Namespace names.
    pub a: String,
    /// Second namespace.
    pub b: String,
}

impl VethPair {
    /// Address of `va`.
    pub const IP_A: &str = "10.200.0.1";
    /// Address of `vb`.
    pub const IP_B: &str = "10.200.0.2";

    /// Creates the pair; panics (after cleaning up) if any step fails.
    pub fn new(tag: &str) -> Self {
        require_root();
        let base = unique(tag);
        let pair = Self {
            a: format!("{base}a"),
            b: format!("{base}b"),
        };
        sh(&["ip", "netns", "add", &pair.a]);
        sh(&["ip", "netns", "add", &pair.b]);
        sh(&[
            "ip", "-n", &pair.a, "link", "add", "va", "type", "veth", "peer", "name", "vb",
            "netns", &pair.b,
        ]);
        for (ns, dev, ip) in [(&pair.a, "va", Self::IP_A), (&pair.b, "vb", Self::IP_B)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Runs a command inside namespace `ns`.
    pub fn exec(ns: &str, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
