//! Legacy tc filters, on kernels before TCX (Linux 6.6).
//!
//! A TCX link goes away with its last fd, so a podtrace that is killed
//! leaves nothing. A clsact filter holds its program in the kernel with no
//! process behind it: a podtrace killed with SIGKILL (an OOM kill, a debug
//! pod deleted past its grace period) would leave its programs running on
//! every packet of the node's ENIs and pod veths until reboot. Before it
//! attaches to an interface, podtrace removes the filters there that are
//! named as its programs and whose program no live podtrace holds.
//!
//! A live podtrace says which programs are its own in each namespace it
//! attaches in: an abstract unix socket per program id, bound before the
//! filters go on (see [`mark_live`]). Abstract sockets belong to the
//! network namespace, need no shared filesystem, and go with the process
//! however it ends, SIGKILL included: a name nobody holds is a program
//! nobody runs. Reading other processes' open files (`/proc/*/fd`) would
//! miss a podtrace in another PID namespace, or one an LSM hides.

use std::{io, os::unix::net::UnixListener};

use aya::programs::{
    TcAttachType,
    links::Link as _,
    tc::{SchedClassifierLink, TcHandle},
};
use rtnetlink::{
    packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcFilterBpfOption, TcHandle as NlHandle, TcMessage, TcOption},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

/// Whether to attach through clsact and netlink even where the kernel has
/// TCX: `PODTRACE_TC=netlink`. Older kernels have only this; the switch
/// lets their path be tested on a new one.
pub const FORCE_ENV: &str = "PODTRACE_TC";

/// One of podtrace's filters, as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Ingress or egress.
    pub ingress: bool,
    /// The filter's priority (`tc filter ... pref`).
    pub priority: u16,
    /// Its handle.
    pub handle: u32,
    /// The program it runs.
    pub prog_id: u32,
    /// The program's name.
    pub name: String,
}

/// The filters named `podtrace_*` on `ifindex` of the namespace the thread
/// is in. An interface without a clsact qdisc has none.
pub fn podtrace_filters(ifindex: u32) -> io::Result<Vec<Filter>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut out = Vec::new();
    let mut rx = Vec::with_capacity(64 << 10);
    for (seq, ingress) in [(1, true), (2, false)] {
        let mut msg = TcMessage::default();
        msg.header.index = i32::try_from(ifindex).unwrap_or(0);
        msg.header.parent = NlHandle {
            major: 0xffff,
            minor: if ingress {
                NlHandle::MIN_INGRESS
            } else {
                NlHandle::MIN_EGRESS
            },
        };
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetTrafficFilter(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        req.header.sequence_number = seq;
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        sock.send(&buf, 0)?;
        'dump: loop {
            rx.clear();
            sock.recv(&mut rx, 0)?;
            let mut at = 0;
            while at < rx.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => break 'dump,
                    // No clsact qdisc (an empty dump; older kernels answer
                    // EINVAL or ENOENT), or the device went (ENODEV):
                    // nothing of ours there.
                    NetlinkPayload::Error(e) => match e.code {
                        None => break 'dump,
                        Some(code)
                            if [libc::EINVAL, libc::ENOENT, libc::ENODEV]
                                .contains(&-code.get()) =>
                        {
                            break 'dump;
                        }
                        Some(_) => return Err(e.to_io()),
                    },
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(m)) => {
                        if let Some(f) = ours(&m, ingress) {
                            out.push(f);
                        }
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                at += len;
            }
        }
    }
    Ok(out)
}

/// A filter of kind `bpf` whose program is named as one of podtrace's.
fn ours(m: &TcMessage, ingress: bool) -> Option<Filter> {
    let (mut name, mut prog_id) = (None, None);
    for attr in &m.attributes {
        if let TcAttribute::Options(opts) = attr {
            for o in opts {
                match o {
                    TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => prog_id = Some(*id),
                    _ => {}
                }
            }
        }
    }
    let name = name.filter(|n| n.starts_with("podtrace_"))?;
    Some(Filter {
        ingress,
        priority: u16::try_from(m.header.info >> 16).unwrap_or(0),
        handle: u32::from(m.header.handle),
        prog_id: prog_id?,
        name,
    })
}

/// The abstract socket name that marks program `id` as a live podtrace's.
fn live_name(id: u32) -> String {
    format!("podtrace-prog-{id}")
}

/// Binds the abstract unix socket `name` in the thread's namespace.
fn bind_abstract(name: &[u8]) -> io::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt as _;
    UnixListener::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name)?)
}

/// Marks `prog_ids` as a live podtrace's in the thread's namespace, for
/// as long as the returned sockets live: bind them before attaching.
pub fn mark_live(prog_ids: &[u32]) -> io::Result<Vec<UnixListener>> {
    prog_ids
        .iter()
        .map(|&id| bind_abstract(live_name(id).as_bytes()))
        .collect()
}

/// Whether a live podtrace holds program `id` in the thread's namespace
/// (when that cannot be told, it is taken as live).
fn is_live(id: u32) -> bool {
    bind_abstract(live_name(id).as_bytes()).is_err()
}

/// Removes `f` from `iface` of the namespace the thread is in. A filter
/// gone already is no error.
pub fn remove(iface: &str, f: &Filter) -> Result<(), String> {
    let dir = if f.ingress {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    };
    let link =
        SchedClassifierLink::attached(iface, dir, f.priority, TcHandle::from(f.handle), None)
            .map_err(|e| e.to_string())?;
    match link.detach() {
        Ok(()) => Ok(()),
        Err(e) if error_chain_has(&e, libc::ENOENT) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether `e` or an error under it is the OS error `errno`.
fn error_chain_has(e: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.raw_os_error() == Some(errno)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Holds, for as long as it lives, the sweep-and-attach of one network
/// namespace against other podtraces': an abstract unix socket, which
/// belongs to the namespace it is made in, bound under a fixed name.
/// Without it, two podtraces could both judge a filter stale, and the
/// second could then delete the first's new filter, which the kernel gave
/// the freed priority and handle.
pub struct NetnsLock(#[expect(dead_code, reason = "held for its bind")] UnixListener);

impl NetnsLock {
    /// Takes the lock of the thread's namespace, waiting up to `wait`.
    pub fn take(wait: std::time::Duration) -> io::Result<Self> {
        Self::take_named(b"podtrace-legacy-tc", wait)
    }

    fn take_named(name: &[u8], wait: std::time::Duration) -> io::Result<Self> {
        let until = std::time::Instant::now() + wait;
        loop {
            match bind_abstract(name) {
                Ok(l) => return Ok(Self(l)),
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && std::time::Instant::now() < until =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// What a sweep of one interface found.
#[derive(Debug, Default)]
pub struct Swept {
    /// Filters removed: their programs no process held.
    pub removed: Vec<Filter>,
    /// Filters left alone although no process here holds their program:
    /// this podtrace cannot see every process (another PID namespace), so
    /// they may be a live podtrace's.
    pub unsure: Vec<Filter>,
    /// Filters that could not be removed, and why.
    pub failed: Vec<(Filter, String)>,
    /// Why the interface's filters could not be looked at.
    pub error: Option<String>,
    /// Why `unsure` were left alone.
    pub unsure_why: Option<String>,
    /// The namespace's [`NetnsLock`] could not be taken in time.
    pub lock_timed_out: bool,
}

impl Swept {
    /// Nothing found.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.unsure.is_empty()
            && self.failed.is_empty()
            && self.error.is_none()
    }
}

/// Removes the filters on `iface` (`ifindex`, in the thread's namespace)
/// that a podtrace left: named as its programs, and marked live by none.
/// `sure`: this process holds the namespace's [`NetnsLock`]; otherwise
/// (with the reason) nothing is removed, only told.
pub fn sweep(iface: &str, ifindex: u32, sure: Result<(), String>) -> Swept {
    let mut out = Swept::default();
    let found = match podtrace_filters(ifindex) {
        Ok(found) => found,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    if found.is_empty() {
        return out;
    }
    // A podtrace marks its programs live before attaching them, so every
    // filter listed here that is a live podtrace's is marked.
    for f in found.into_iter().filter(|f| !is_live(f.prog_id)) {
        if let Err(why) = &sure {
            out.unsure.push(f);
            out.unsure_why.get_or_insert_with(|| why.clone());
            continue;
        }
        match remove(iface, &f) {
            Ok(()) => out.removed.push(f),
            Err(e) => out.failed.push((f, e)),
        }
    }
    out
}

/// What the sweeps found, in a line each for the filters removed, those
/// left alone and those that could not be removed. `found`: `(netns,
/// iface, sweep)`.
pub fn tell(found: &[(String, String, Swept)]) -> Vec<String> {
    let mut lines = Vec::new();
    let places = |pick: &dyn Fn(&Swept) -> usize| {
        let hit: Vec<String> = found
            .iter()
            .filter(|(_, _, s)| pick(s) > 0)
            .map(|(ns, iface, _)| format!("{ns}/{iface}"))
            .collect();
        let n: usize = found.iter().map(|(_, _, s)| pick(s)).sum();
        (n, hit)
    };
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let (n, hit) = places(&|s| s.removed.len());
    if n > 0 {
        lines.push(format!(
            "removed {n} tc filter{} that a podtrace killed earlier left running on {}",
            plural(n),
            hit.join(", ")
        ));
    }
    let (n, _) = places(&|s| s.unsure.len());
    if n > 0 {
        let mut cmds = Vec::new();
        let mut whys: Vec<&str> = Vec::new();
        for (ns, iface, s) in found {
            if let Some(why) = s.unsure_why.as_deref()
                && !whys.contains(&why)
            {
                whys.push(why);
            }
            // A named namespace (`ip netns`) takes `ip netns exec`; the
            // others are said by name.
            let run = if std::path::Path::new("/run/netns").join(ns).exists() {
                format!("ip netns exec {ns} ")
            } else {
                format!("in {ns}: ")
            };
            for f in &s.unsure {
                cmds.push(format!(
                    "{run}tc filter del dev {iface} {} pref {} handle {:#x} bpf",
                    if f.ingress { "ingress" } else { "egress" },
                    f.priority,
                    f.handle
                ));
            }
        }
        lines.push(format!(
            "{n} tc filter{} named as podtrace's run programs that no process holds, as far as \
             this podtrace can tell ({}): another podtrace's, or left by one that was killed. \
             Left alone. If no other podtrace runs, remove them: {}",
            plural(n),
            whys.join("; "),
            cmds.join("; ")
        ));
    }
    for (ns, iface, s) in found {
        if let Some(e) = &s.error {
            lines.push(format!(
                "could not look for tc filters a killed podtrace left on {ns}/{iface}: {e}"
            ));
        }
        for (f, why) in &s.failed {
            lines.push(format!(
                "could not remove the tc filter {} (program {}) that a killed podtrace left on \
                 {ns}/{iface}: {why}",
                f.name, f.prog_id
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_live_while_its_mark_is_held() {
        // Ids far above any real program's, in this process's namespace.
        let ids = [u32::MAX - 1, u32::MAX - 2];
        assert!(!is_live(ids[0]) && !is_live(ids[1]));
        let marks = mark_live(&ids).expect("marks");
        assert!(is_live(ids[0]) && is_live(ids[1]));
        drop(marks);
        assert!(!is_live(ids[0]));
    }

    #[test]
    fn the_lock_is_one_holders_until_dropped() {
        let name = format!("podtrace-test-lock-{}", std::process::id());
        let wait = std::time::Duration::from_millis(30);
        let held = NetnsLock::take_named(name.as_bytes(), wait).expect("free");
        let again = NetnsLock::take_named(name.as_bytes(), wait);
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );
        drop(held);
        assert!(NetnsLock::take_named(name.as_bytes(), wait).is_ok());
    }

    #[test]
    fn one_line_for_what_was_removed() {
        let f = |prog_id| Filter {
            ingress: true,
            priority: 49152,
            handle: 1,
            prog_id,
            name: "podtrace_ingress".into(),
        };
        let found = vec![
            (
                "node-a".to_owned(),
                "ens5".to_owned(),
                Swept {
                    removed: vec![f(1), f(2)],
                    ..Swept::default()
                },
            ),
            (
                "node-a".to_owned(),
                "ens6".to_owned(),
                Swept {
                    removed: vec![f(3)],
                    failed: vec![(f(4), "No such file or directory".into())],
                    ..Swept::default()
                },
            ),
        ];
        assert_eq!(
            tell(&found),
            [
                "removed 3 tc filters that a podtrace killed earlier left running on \
                 node-a/ens5, node-a/ens6",
                "could not remove the tc filter podtrace_ingress (program 4) that a killed \
                 podtrace left on node-a/ens6: No such file or directory"
            ]
        );
        assert!(tell(&[]).is_empty());
        let unsure = vec![(
            "host".to_owned(),
            "eth0".to_owned(),
            Swept {
                unsure: vec![f(5)],
                unsure_why: Some("it runs in a PID namespace of its own".into()),
                error: Some("Permission denied".into()),
                ..Swept::default()
            },
        )];
        assert_eq!(
            tell(&unsure),
            [
                "1 tc filter named as podtrace's run programs that no process holds, as far as \
                 this podtrace can tell (it runs in a PID namespace of its own): another \
                 podtrace's, or left by one that was killed. Left alone. If no other podtrace \
                 runs, remove them: in host: tc filter del dev eth0 ingress pref 49152 handle \
                 0x1 bpf",
                "could not look for tc filters a killed podtrace left on host/eth0: Permission \
                 denied"
            ]
        );
    }
}
