//! Legacy tc filters, on kernels before TCX (Linux 6.6).
//!
//! A TCX link goes away with its last fd, so a podtrace that is killed
//! leaves nothing. A clsact filter holds its program in the kernel with no
//! process behind it: a podtrace killed with SIGKILL (an OOM kill, a debug
//! pod deleted past its grace period) would leave its programs running on
//! every packet of the node's ENIs and pod veths until reboot. Before it
//! attaches to an interface, podtrace removes the filters there that are
//! named as its programs and whose program no live process holds.

use std::{collections::HashSet, fs, io};

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
            let mut rx = Vec::with_capacity(64 << 10);
            sock.recv(&mut rx, 0)?;
            let mut at = 0;
            while at < rx.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => break 'dump,
                    // No clsact qdisc (EINVAL), or the device went (ENODEV):
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

/// The ids of the BPF programs that a process holds an fd of, among the
/// processes this one can see.
pub fn held_programs() -> HashSet<u32> {
    let mut ids = HashSet::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return ids;
    };
    for p in procs.flatten() {
        let pid = p.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let is_prog =
                fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf-prog");
            if !is_prog {
                continue;
            }
            let info = p.path().join("fdinfo").join(fd.file_name());
            if let Some(id) = fs::read_to_string(info)
                .ok()
                .as_deref()
                .and_then(prog_id_of)
            {
                ids.insert(id);
            }
        }
    }
    ids
}

/// `prog_id:` from a bpf-prog fd's fdinfo.
fn prog_id_of(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Removes `f` from `iface` of the namespace the thread is in.
pub fn remove(iface: &str, f: &Filter) -> Result<(), String> {
    let dir = if f.ingress {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    };
    let link =
        SchedClassifierLink::attached(iface, dir, f.priority, TcHandle::from(f.handle), None)
            .map_err(|e| e.to_string())?;
    link.detach().map_err(|e| e.to_string())
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
}

impl Swept {
    /// Nothing found.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.unsure.is_empty() && self.failed.is_empty()
    }
}

/// Removes the filters on `iface` (`ifindex`, in the thread's namespace)
/// that a podtrace left: named as its programs, and held by no process.
/// `sees_all`: this process sees every process of the machine (its PID
/// namespace is the initial one); otherwise nothing is removed, only told.
pub fn sweep(iface: &str, ifindex: u32, sees_all: bool) -> Swept {
    let mut out = Swept::default();
    let Ok(found) = podtrace_filters(ifindex) else {
        return out;
    };
    if found.is_empty() {
        return out;
    }
    let held = held_programs();
    for f in found.into_iter().filter(|f| !held.contains(&f.prog_id)) {
        if !sees_all {
            out.unsure.push(f);
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
    let (n, hit) = places(&|s| s.unsure.len());
    if n > 0 {
        lines.push(format!(
            "{n} tc filter{} of podtrace on {} run programs that no process in this PID \
             namespace holds: another podtrace's, or left by one that was killed. If no other \
             podtrace runs, run podtrace in the host's PID namespace (hostPID) to remove them, \
             or `tc filter del dev IFACE ingress|egress pref P handle H bpf` as \
             `tc filter show dev IFACE ingress|egress` lists them",
            plural(n),
            hit.join(", ")
        ));
    }
    for (ns, iface, s) in found {
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
    fn prog_id_from_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2071\nprog_type:\t3\n\
                    prog_jited:\t1\nprog_tag:\t2c31381372715045\nmemlock:\t12288\n\
                    prog_id:\t69185\nrun_time_ns:\t0\n";
        assert_eq!(prog_id_of(info), Some(69185));
        assert_eq!(prog_id_of("pos:\t0\nlink_type:\ttcx\n"), None);
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
    }
}
