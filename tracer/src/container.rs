//! Where podtrace runs, found out rather than configured: on a host, in a
//! node debug pod (`kubectl debug node/...`, or the DaemonSet: the host's
//! root at /host, usually the host's network and PID namespaces), or in
//! some other container, such as an ephemeral container in a pod's netns.
//!
//! What changes in a node debug pod: the lab inventory and netns files are
//! looked for under /host too, only the namespace podtrace runs in (the
//! node's) is traced, and it is named after the node. In a pod's netns only
//! the pod's eth0 is hooked, and podtrace says once that this is only the
//! pod's side. In any container, missing capabilities are one line saying
//! how to run it. [`classify`] is pure; [`Facts::detect`] reads the system.

use std::{
    fmt::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Once, OnceLock},
};

use crate::topology::{Role, Topology};

/// Where `kubectl debug node/...` (and deploy/daemonset.yaml) mount the
/// node's root filesystem.
pub const HOST_ROOT: &str = "/host";

/// What podtrace learned about the place it runs in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// A container runtime's marker was found: /run/.containerenv (podman),
    /// /.dockerenv, `$KUBERNETES_SERVICE_HOST` (every pod has it), or
    /// `$container`.
    pub in_container: bool,
    /// The node's root, when [`HOST_ROOT`] holds a part of it (run/, var/
    /// or proc/: a debug pod mounts all of /, a test may mount less).
    pub host_root: Option<PathBuf>,
    /// `$NODE_NAME` (the DaemonSet and `kubectl podtrace` set it from
    /// `spec.nodeName`).
    pub node_name: Option<String>,
}

/// The kind of place, from [`Facts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// Not in a container (a host, or a lab netns entered with `ip netns
    /// exec`): nothing changes.
    Host,
    /// A container with the node's root at `root`: a node debug pod.
    NodeDebug {
        /// Where the node's root is mounted.
        root: PathBuf,
    },
    /// Any other container (for instance an ephemeral container of a pod).
    Container,
}

impl Facts {
    /// Reads this process's environment and filesystem.
    pub fn detect() -> Self {
        let in_container = Path::new("/run/.containerenv").exists()
            || Path::new("/.dockerenv").exists()
            || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            || std::env::var_os("container").is_some();
        let root = Path::new(HOST_ROOT);
        let host_root = ["run", "var", "proc"]
            .iter()
            .any(|d| root.join(d).is_dir())
            .then(|| root.to_owned());
        Self {
            in_container,
            host_root,
            node_name: std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()),
        }
    }
}

/// The place the facts describe.
pub fn classify(facts: &Facts) -> Place {
    match (&facts.host_root, facts.in_container) {
        (_, false) => Place::Host,
        (Some(root), true) => Place::NodeDebug { root: root.clone() },
        (None, true) => Place::Container,
    }
}

/// This process's facts, detected once.
pub fn facts() -> &'static Facts {
    static FACTS: OnceLock<Facts> = OnceLock::new();
    FACTS.get_or_init(Facts::detect)
}

/// Where this process runs, detected once.
pub fn here() -> Place {
    classify(facts())
}

/// The lab inventory as a node debug pod sees it (under /host), when
/// podtrace runs in one and the file is there.
pub fn host_lab_inventory() -> Option<PathBuf> {
    let Place::NodeDebug { root } = here() else {
        return None;
    };
    let path = under(&root, Path::new(crate::pods::LAB_INVENTORY));
    path.exists().then_some(path)
}

/// How [`crate::session::traced_namespaces`] names the namespace podtrace
/// runs in, so that `ping` can look for pods from it; the session calls it
/// by [`this_node_name`].
pub const THIS_NETNS: &str = "/proc/self/ns/net";

/// Whether only the namespace podtrace runs in should be traced even when
/// the pod source (the lab) names other nodes: in a node debug pod, that
/// namespace is the node's, and the other nodes are other machines.
pub fn traces_only_this_node() -> bool {
    matches!(here(), Place::NodeDebug { .. })
}

/// The name for the namespace podtrace runs in, when it is a node's: in a
/// node debug pod, `$NODE_NAME`, else the name of the netns file under the
/// host root that is this namespace (a lab node). `None` keeps `host`.
pub fn this_node_name() -> Option<String> {
    let Place::NodeDebug { root } = here() else {
        return None;
    };
    if let Some(name) = &facts().node_name {
        return Some(name.clone());
    }
    let me = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    crate::pods::NETNS_DIRS
        .iter()
        .map(|d| under(&root, Path::new(d)))
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .find(|e| {
            std::fs::metadata(e.path()).is_ok_and(|m| (m.dev(), m.ino()) == (me.dev(), me.ino()))
        })
        .and_then(|e| e.file_name().into_string().ok())
}

/// `path` (absolute) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// One `/proc/<pid>/ns/net` per distinct network namespace of the visible
/// processes: where a pod's netns is found when no netns file names it (a
/// runtime that keeps none, or a debug pod started before the pod, whose
/// /host does not see later mounts). Visible processes are the host's with
/// host PID (a node debug pod) or on a host.
pub fn process_netns() -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.into_iter()
        .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| seen.insert((m.dev(), m.ino()))))
        .collect()
}

/// Capabilities tracing needs, by bit number (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// What is missing from an effective capability set (the `CapEff:` mask of
/// /proc/self/status) to load and attach the programs: CAP_BPF (or the
/// older CAP_SYS_ADMIN) and CAP_NET_ADMIN.
pub fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    let has = |bit: u32| cap_eff & (1 << bit) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// The `CapEff:` mask from the text of /proc/self/status.
pub fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The one line for missing capabilities, saying how to get them here.
pub fn privileges_message(place: &Place, missing: &[&str]) -> String {
    let mut s = format!("podtrace needs {} and has not", missing.join(" and "));
    let _ = match place {
        Place::Host => write!(s, ": run it as root"),
        Place::NodeDebug { .. } | Place::Container => write!(
            s,
            ": this container is not privileged; run it with `kubectl debug ... \
             --profile=sysadmin`, `securityContext.privileged: true`, or `podman run --privileged`"
        ),
    };
    s
}

/// Fails with one line when the capabilities to trace are missing (a
/// container run without privileges, though as root).
pub fn check_privileges() -> anyhow::Result<()> {
    let Some(mask) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| cap_eff(&s))
    else {
        // No /proc: the kernel's EPERM will say it.
        return Ok(());
    };
    let missing = missing_caps(mask);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(privileges_message(&here(), &missing)))
    }
}

/// Where the kernel publishes its BTF; CO-RE programs need it.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A failure to load the programs, with the node's missing BTF named when
/// that is the likely cause; other errors pass unchanged.
pub fn explain_load(e: anyhow::Error) -> anyhow::Error {
    explain_load_with(e, Path::new(KERNEL_BTF).exists())
}

fn explain_load_with(e: anyhow::Error, has_btf: bool) -> anyhow::Error {
    let loading = e
        .chain()
        .any(|c| matches!(c.downcast_ref(), Some(crate::kernel::KernelError::Load(_))));
    if loading && !has_btf {
        return e.context(format!(
            "this node has no kernel BTF ({KERNEL_BTF} is missing; a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y has it)"
        ));
    }
    e
}

/// The note for a view that holds only a pod's own interface: podtrace
/// runs in a pod's netns (an ephemeral container), where the node's veth,
/// ENIs and NAT are out of sight.
pub fn pod_side_note(topology: &Topology) -> Option<&'static str> {
    // Inside a pod, the CNI's `169.254.1.1 dev eth0` host route makes
    // discover see eth0 as a pod veth to that address: it is the pod's eth0.
    let gateway = Some(std::net::Ipv4Addr::new(169, 254, 1, 1));
    let mut roles = topology.iter().map(|(_, i)| &i.role).peekable();
    roles.peek()?;
    roles
        .all(|r| match r {
            Role::PodEth0 => true,
            Role::PodVeth { pod_ip, .. } => *pod_ip == gateway,
            _ => false,
        })
        .then_some(
            "this is a pod's network namespace: the view shows only the pod's side (its eth0); \
         the node's veth, ENIs and SNAT are seen from a node debug pod (kubectl debug \
         node/NODE --profile=sysadmin)",
        )
}

/// Prints [`pod_side_note`] on stderr, once per process.
pub fn say_pod_side(topology: &Topology) {
    static ONCE: Once = Once::new();
    if let Some(note) = pod_side_note(topology) {
        ONCE.call_once(|| eprintln!("podtrace: {note}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places() {
        let mut f = Facts::default();
        assert_eq!(classify(&f), Place::Host);
        f.host_root = Some("/host".into());
        assert_eq!(classify(&f), Place::Host, "a /host dir alone is no pod");
        f.in_container = true;
        assert_eq!(
            classify(&f),
            Place::NodeDebug {
                root: "/host".into()
            }
        );
        f.host_root = None;
        assert_eq!(classify(&f), Place::Container);
    }

    #[test]
    fn caps_from_status() {
        // A root shell's CapEff, and podman's default set (no BPF, SYS_ADMIN
        // or NET_ADMIN).
        let full = "Name:\tsh\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(cap_eff(full), Some(0x1ff_ffff_ffff));
        assert!(missing_caps(0x1ff_ffff_ffff).is_empty());
        let podman = cap_eff("CapEff:\t00000000800405fb\n").unwrap();
        assert_eq!(missing_caps(podman), ["CAP_BPF", "CAP_NET_ADMIN"]);
        // CAP_SYS_ADMIN stands for CAP_BPF on kernels before 5.8.
        assert_eq!(
            missing_caps(1 << CAP_SYS_ADMIN | 1 << CAP_NET_ADMIN),
            Vec::<&str>::new()
        );
        assert_eq!(cap_eff("Name: x\n"), None);
    }

    #[test]
    fn privileges_line_says_how() {
        let line = privileges_message(&Place::Container, &["CAP_BPF", "CAP_NET_ADMIN"]);
        assert!(
            line.starts_with(
                "podtrace needs CAP_BPF and CAP_NET_ADMIN and has not: this container"
            ),
            "{line}"
        );
        assert!(line.contains("--profile=sysadmin") && !line.contains('\n'));
        assert_eq!(
            privileges_message(&Place::Host, &["CAP_BPF"]),
            "podtrace needs CAP_BPF and has not: run it as root"
        );
    }

    #[test]
    fn pod_side_only_when_every_hook_is_a_pod_eth0() {
        use crate::topology::Iface;
        let iface = |ifindex, role| Iface {
            node: "host".into(),
            name: "eth0".into(),
            ifindex,
            role,
        };
        let mut t = Topology::default();
        assert_eq!(pod_side_note(&t), None);
        t.insert(1, iface(2, Role::PodEth0));
        assert!(pod_side_note(&t).is_some_and(|n| n.contains("only the pod's side")));
        t.insert(
            1,
            iface(
                4,
                Role::PodVeth {
                    pod_ip: Some([169, 254, 1, 1].into()),
                    pod: None,
                },
            ),
        );
        assert!(
            pod_side_note(&t).is_some(),
            "eth0 seen through its gateway route"
        );
        t.insert(1, iface(3, Role::Other));
        assert_eq!(pod_side_note(&t), None);
    }

    #[test]
    fn a_load_failure_without_btf_says_so() {
        use crate::kernel::KernelError;
        let load = || anyhow::Error::from(KernelError::Load("Invalid argument".into()));
        let e = explain_load_with(load(), false);
        assert_eq!(
            format!("{e:#}"),
            "this node has no kernel BTF (/sys/kernel/btf/vmlinux is missing; a kernel built \
             with CONFIG_DEBUG_INFO_BTF=y has it): loading the kernel programs failed: Invalid \
             argument"
        );
        assert_eq!(
            format!("{:#}", explain_load_with(load(), true)),
            format!("{:#}", load())
        );
        let other = anyhow::Error::from(KernelError::NotPermitted);
        assert!(!format!("{:#}", explain_load_with(other, false)).contains("BTF"));
    }

    #[test]
    fn paths_under_the_host_root() {
        assert_eq!(
            under(Path::new("/host"), Path::new("/run/podtrace/lab.json")),
            Path::new("/host/run/podtrace/lab.json")
        );
    }
}
