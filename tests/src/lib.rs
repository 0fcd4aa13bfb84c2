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

// ---------------------------------------------------------------------------
// The lab (`podtrace lab`): one at a time, across test binaries.

use std::{
    fs::File,
    io::Read as _,
    net::{SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

use tracer::{
    lab::{Inventory, NodePlan, Plan, PodPlan, UpOutcome, whoami::Peer},
    netns::Netns,
};

/// Exclusive use of the lab without building it: an flock on
/// [`LabLock::PATH`], held until drop, so that tests in any binary (lab,
/// ping, trace, ...) never see each other's lab. Blocks until free.
pub struct LabLock {
    _file: File,
}

impl LabLock {
    /// The lock file (the lab's own `up`/`down` use a different one).
    pub const PATH: &str = "/run/podtrace/lab.lock";

    /// Waits for the lock.
    pub fn acquire() -> Self {
        require_root();
        std::fs::create_dir_all("/run/podtrace").expect("create /run/podtrace");
        let file = File::create(Self::PATH).expect("open the lab lock");
        // SAFETY: flock(2) on an fd we own; released when it closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "flock {}: {}",
            Self::PATH,
            std::io::Error::last_os_error()
        );
        Self { _file: file }
    }
}

/// A fresh lab for one test: takes the [`LabLock`], removes any lab (a
/// leftover of a crashed run, or one a person left up), builds the default
/// plan, and runs `lab down` when dropped, also when the test panics.
///
/// ```no_run
/// let lab = podtrace_tests::LabGuard::up();
/// let pod = lab.pod("pod-1");
/// lab.exec(&pod.netns, &["ping", "-c", "1", &lab.pod("pod-3").ip.to_string()]);
/// ```
pub struct LabGuard {
    /// What `lab up` wrote to /run/podtrace/lab.json.
    pub inventory: Inventory,
    lock: Option<LabLock>,
}

impl LabGuard {
    /// Builds the lab; panics (after removing what was made) if that fails.
    pub fn up() -> Self {
        Self::up_with(LabLock::acquire())
    }

    /// [`LabGuard::up`] under a lock the test already holds (to look at the
    /// system before the lab exists without another test slipping in).
    pub fn up_with(lock: LabLock) -> Self {
        tracer::lab::down().expect("removing an earlier lab");
        match block_on(|| async { tracer::lab::up(&Plan::default()).await }) {
            Ok(UpOutcome::Built(inventory)) => Self {
                inventory,
                lock: Some(lock),
            },
            Ok(UpOutcome::AlreadyUp(_)) => panic!("lab up after down found a lab"),
            Err(e) => {
                let _ = tracer::lab::down();
                panic!("podtrace lab up: {e}");
            }
        }
    }

    /// Removes the lab now but keeps the lock, to look at what is left
    /// before another test builds its lab.
    pub fn down(mut self) -> LabLock {
        let lock = self.lock.take().expect("held until drop");
        tracer::lab::down().expect("podtrace lab down");
        lock
    }

    /// The lab's plan (names, addresses, MACs).
    pub fn plan(&self) -> &Plan {
        self.inventory.plan()
    }

    /// A pod by name, `namespace/name` or IP; panics if unknown.
    pub fn pod(&self, spec: &str) -> &PodPlan {
        self.inventory
            .pod(spec)
            .unwrap_or_else(|| panic!("no pod {spec} in the lab"))
    }

    /// A node by name; panics if unknown.
    pub fn node(&self, name: &str) -> &NodePlan {
        self.inventory
            .node(name)
            .unwrap_or_else(|| panic!("no node {name} in the lab"))
    }

    /// Runs a command inside `netns`, panicking with its output on failure.
    pub fn exec(&self, netns: &str, args: &[&str]) -> Output {
        netns_exec(netns, args)
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if self.lock.is_some()
            && let Err(e) = tracer::lab::down()
        {
            // Not a panic: this may run while a test is already panicking.
            eprintln!("podtrace lab down: {e}");
        }
    }
}

/// Runs `f`'s future to completion on a runtime of its own thread, so that
/// it works from plain and `#[tokio::test]` tests alike.
pub fn block_on<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs a command inside namespace `netns` (`ip netns exec`), panicking
/// with its output if it fails.
pub fn netns_exec(netns: &str, args: &[&str]) -> Output {
    let mut full = vec!["ip", "netns", "exec", netns];
    full.extend_from_slice(args);
    sh(&full)
}

/// An iptables rule inserted in a namespace, taken out when dropped, also
/// when a test fails on the way: the lab is shared.
pub struct IptablesRule {
    netns: String,
    rule: Vec<String>,
}

impl IptablesRule {
    /// `iptables -I RULE` in `netns` (`rule` starts with the chain).
    pub fn insert(netns: &str, rule: &[&str]) -> Self {
        netns_exec(netns, &[&["iptables", "-I"], rule].concat());
        Self {
            netns: netns.to_owned(),
            rule: rule.iter().map(|&a| a.to_owned()).collect(),
        }
    }
}

impl Drop for IptablesRule {
    fn drop(&mut self) {
        // Not a panic inside a panic: the status is left unread.
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.netns, "iptables", "-D"])
            .args(&self.rule)
            .status();
    }
}

/// Packet counters of one interface in one namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkPackets {
    /// Received.
    pub rx: u64,
    /// Sent.
    pub tx: u64,
}

impl std::ops::Sub for LinkPackets {
    type Output = Self;

    fn sub(self, before: Self) -> Self {
        Self {
            rx: self.rx - before.rx,
            tx: self.tx - before.tx,
        }
    }
}

/// The kernel's packet counters of `dev` in `netns` (`ip -s -j link`;
/// /sys/class/net would show the namespace /sys was mounted in, not this).
pub fn link_packets(netns: &str, dev: &str) -> LinkPackets {
    let out = sh(&["ip", "-n", netns, "-s", "-j", "link", "show", "dev", dev]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    let stats = &json[0]["stats64"];
    let get = |dir: &str| {
        stats[dir]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no {dir} packets for {netns}/{dev}: {json}"))
    };
    LinkPackets {
        rx: get("rx"),
        tx: get("tx"),
    }
}

/// Connects from inside `netns` to a lab whoami endpoint and returns what
/// it answered: who accepted, and the source address it saw.
pub fn whoami(netns: &str, to: SocketAddrV4) -> Peer {
    let ns = Netns::open(netns).expect("open netns");
    let mut stream = ns
        .run(|| TcpStream::connect_timeout(&to.into(), Duration::from_secs(3)))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("connect from {netns} to {to}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("set timeout");
    let mut line = String::new();
    stream
        .read_to_string(&mut line)
        .unwrap_or_else(|e| panic!("read from {to} in {netns}: {e}"));
    Peer::parse(&line).unwrap_or_else(|| panic!("whoami {to} from {netns} answered {line:?}"))
}

/// `node iface dir` of each hop in a JSON hop list (ping's `hops`, trace's
/// `path`), for comparing paths in one assertion.
pub fn hop_names(hops: &serde_json::Value) -> Vec<String> {
    hops.as_array()
        .expect("a hop list")
        .iter()
        .map(|h| {
            let f = |k: &str| h[k].as_str().unwrap_or("?").to_owned();
            format!("{} {} {}", f("node"), f("iface"), f("dir"))
        })
        .collect()
}
