//! The bench's network: two scratch namespaces joined by one veth pair, and
//! nothing else. No route leaves them, so no packet of the bench can reach
//! the host namespace or the outside world.

use std::{
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, scratch::Namespaces};

/// The veth's name at both ends (each in its own namespace).
pub const IFACE: &str = "ptb0";
/// Address of the sending (client) end.
pub const IP_A: &str = "10.99.8.1";
/// Address of the receiving (server) end.
pub const IP_B: &str = "10.99.8.2";
/// Fixed MACs, so that neighbours are static: no ARP in the counters.
const MAC_A: &str = "02:70:74:62:00:01";
const MAC_B: &str = "02:70:74:62:00:02";

/// Namespaces `a` (client) and `b` (server), deleted on drop with the veth.
pub struct Pair {
    /// The client's namespace.
    pub a: String,
    /// The server's namespace.
    pub b: String,
    _namespaces: Namespaces,
}

impl Pair {
    /// Creates both namespaces (named after this process, so a leftover of
    /// a killed run never collides), the veth, addresses and neighbours.
    /// IPv6 is off, so every packet on the veth is the bench's IPv4.
    pub fn create() -> Result<Self> {
        let tag = format!("ptbench-{}", std::process::id());
        let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
        let mut namespaces = Namespaces::default();
        for ns in [&a, &b] {
            namespaces.add(ns)?;
            cmd::run(
                Command::new("ip")
                    .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
                    .args([
                        "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1",
                    ]),
            )?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n", &a, "link", "add", IFACE, "address", MAC_A, "type", "veth", "peer", "name",
            IFACE, "address", MAC_B, "netns", &b,
        ])?;
        for (ns, addr, peer, peer_mac) in [(&a, IP_A, IP_B, MAC_B), (&b, IP_B, IP_A, MAC_A)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", IFACE])?;
            ip(&["-n", ns, "link", "set", IFACE, "up"])?;
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                peer,
                "lladdr",
                peer_mac,
                "dev",
                IFACE,
                "nud",
                "permanent",
            ])?;
        }
        Ok(Self {
            a,
            b,
            _namespaces: namespaces,
        })
    }

    /// The veth's counters at both ends now.
    pub fn counters(&self) -> Result<[Link; 2]> {
        Ok([Link::read(&self.a)?, Link::read(&self.b)?])
    }

    /// Both ends' counters once they have stopped moving for 300 ms (a
    /// delayed ACK waits up to 200), read every 50 ms; or as they are
    /// after 3 s, said so.
    pub fn settled_counters(&self) -> Result<[Link; 2]> {
        use std::time::{Duration, Instant};
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = self.counters()?;
        let mut quiet_since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.counters()?;
            if now != last {
                quiet_since = Instant::now();
                last = now;
            } else if quiet_since.elapsed() >= Duration::from_millis(300) {
                return Ok(now);
            }
            if Instant::now() >= deadline {
                println!("   the veth's counters still moved after 3 s");
                return Ok(now);
            }
        }
    }
}

/// One end's packet counters (`ip -s link`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Packets delivered to this end (what its TC ingress runs on).
    pub rx: u64,
    /// Packets sent by this end, plus those the veth dropped on the way
    /// (its TC egress ran on both).
    pub tx: u64,
}

impl Link {
    fn read(ns: &str) -> Result<Self> {
        let out = cmd::stdout_of(
            Command::new("ip").args(["-n", ns, "-s", "-j", "link", "show", "dev", IFACE]),
        )?;
        let json: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -j link`")?;
        let stats = &json[0]["stats64"];
        let n = |dir: &str, field: &str| stats[dir][field].as_u64().unwrap_or_default();
        if stats.is_null() {
            bail!("`ip -j -s link` in {ns} shows no counters");
        }
        Ok(Self {
            rx: n("rx", "packets"),
            tx: n("tx", "packets") + n("tx", "dropped"),
        })
    }

    /// Counts between two readings.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            rx: self.rx - earlier.rx,
            tx: self.tx - earlier.tx,
        }
    }
}

/// Run time statistics of BPF programs (`run_time_ns`, `run_cnt`), on for
/// as long as this is held: `BPF_ENABLE_STATS` is the kernel's reference
/// counted form of `kernel.bpf_stats_enabled=1`, restored by the kernel
/// when the fd closes, however xtask ends and whoever else enabled it.
pub struct BpfStats(#[expect(dead_code, reason = "held for its fd")] OwnedFd);

impl BpfStats {
    /// `bpf(BPF_ENABLE_STATS, { type = BPF_STATS_RUN_TIME })`.
    pub fn enable() -> Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        println!("$ sysctl kernel.bpf_stats_enabled=1 (as BPF_ENABLE_STATS, until xtask exits)");
        // union bpf_attr's enable_stats: one u32 type, 0 = BPF_STATS_RUN_TIME.
        let attr = [0u32; 2];
        // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of a live buffer.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                size_of_val(&attr),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
        }
        let fd = i32::try_from(fd).context("fd out of range")?;
        // SAFETY: a new fd that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// Runs `f` on a new thread that has entered namespace `ns`: sockets it
/// opens live there. The thread alone changes namespace, not xtask.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) on an fd we own; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
        }
        f()
    })
}

fn ip(args: &[&str]) -> Result<()> {
    cmd::run(Command::new("ip").args(args))
}
