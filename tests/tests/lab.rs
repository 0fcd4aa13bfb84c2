//! `podtrace lab` acceptance (issue 3), with real packets: which ENI a pod's
//! packets leave by, what conntrack did to them, which source address the
//! far end saw, and that `down` leaves nothing behind.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::Command,
};

use podtrace_tests::{LabGuard, LabLock, LinkPackets, link_packets, netns_exec, sh, whoami};
use tracer::lab::{INVENTORY_PATH, Inventory, LabError, Plan, UpOutcome, whoami::read_peers};

/// Echo requests per check: far above any ARP or neighbour chatter, so a
/// counter that moved by this much moved because of them.
const PINGS: u64 = 20;
/// What an interface may carry during a check without it being the path.
const NOISE: u64 = 3;

fn ping(lab: &LabGuard, from: &str, to: Ipv4Addr) {
    let count = PINGS.to_string();
    let out = lab.exec(
        from,
        &[
            "ping",
            "-q",
            "-c",
            &count,
            "-i",
            "0.01",
            "-W",
            "1",
            &to.to_string(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{PINGS} packets transmitted, {PINGS} received")),
        "{text}"
    );
}

/// Conntrack entries in `netns` as ((orig src, orig dst), (reply src, reply dst)).
fn conntrack(netns: &str, proto: &str) -> Vec<((String, String), (String, String))> {
    let out = netns_exec(netns, &["conntrack", "-L", "-p", proto]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let field = |key: &str| -> Vec<String> {
                l.split_whitespace()
                    .filter_map(|w| w.strip_prefix(key))
                    .map(str::to_owned)
                    .collect()
            };
            let (src, dst) = (field("src="), field("dst="));
            (src.len() == 2 && dst.len() == 2).then(|| {
                (
                    (src[0].clone(), dst[0].clone()),
                    (src[1].clone(), dst[1].clone()),
                )
            })
        })
        .collect()
}

/// Pings `to` from pod `from` and returns how node `node`'s ENIs counted it.
fn ping_counting(lab: &LabGuard, from: &str, to: &str, node: &str) -> [LinkPackets; 2] {
    let (from, to) = (lab.pod(from), lab.pod(to));
    let node = lab.node(node);
    let count = || node.enis.iter().map(|e| link_packets(&node.netns, &e.name));
    let before: Vec<_> = count().collect();
    ping(lab, &from.netns, to.ip);
    let after: Vec<_> = count().collect();
    [after[0] - before[0], after[1] - before[1]]
}

#[test]
fn pod_to_pod_across_nodes_leaves_by_the_eni_owning_the_source_without_nat() {
    let lab = LabGuard::up();

    // pod-1 has a secondary IP of node-a's ens5: out by ens5.
    let [ens5, ens6] = ping_counting(&lab, "pod-1", "pod-3", "node-a");
    assert!(ens5.tx >= PINGS, "pod-1 -> pod-3: ens5 sent {ens5:?}");
    assert!(ens6.tx <= NOISE, "pod-1 -> pod-3: ens6 sent {ens6:?}");
    // pod-2 has one of ens6: rule 1536 sends VPC traffic out by ens6.
    let [ens5, ens6] = ping_counting(&lab, "pod-2", "pod-4", "node-a");
    assert!(ens6.tx >= PINGS, "pod-2 -> pod-4: ens6 sent {ens6:?}");
    assert!(ens5.tx <= NOISE, "pod-2 -> pod-4: ens5 sent {ens5:?}");
    // The VPC delivers to the ENI that owns the destination: pod-4's
    // address belongs to node-b's ens6, pod-3's to its ens5.
    let [ens5, ens6] = ping_counting(&lab, "pod-1", "pod-4", "node-b");
    assert!(
        ens6.rx >= PINGS && ens5.rx <= NOISE,
        "into node-b: ens5 {ens5:?}, ens6 {ens6:?}"
    );
    let [ens5, ens6] = ping_counting(&lab, "pod-2", "pod-3", "node-b");
    assert!(
        ens5.rx >= PINGS && ens6.rx <= NOISE,
        "into node-b: ens5 {ens5:?}, ens6 {ens6:?}"
    );

    // No NAT: each reply tuple mirrors its original.
    let entries = conntrack("node-a", "icmp");
    for (from, to) in [("pod-1", "pod-3"), ("pod-2", "pod-4")] {
        let (a, b) = (lab.pod(from).ip.to_string(), lab.pod(to).ip.to_string());
        let entry = entries
            .iter()
            .find(|(orig, _)| *orig == (a.clone(), b.clone()))
            .unwrap_or_else(|| panic!("no conntrack entry {a} -> {b} in {entries:?}"));
        assert_eq!(
            entry.1,
            (b.clone(), a.clone()),
            "{from} -> {to} was NATed: {entry:?}"
        );
    }
}

#[test]
fn pod_to_internet_is_snatted_to_the_nodes_ens5_primary_ip() {
    let lab = LabGuard::up();
    let internet = &lab.plan().internet;
    let to = SocketAddrV4::new(internet.ip, internet.port.expect("internet whoami port"));
    let node_a = lab.node("node-a");
    let primary = node_a.enis[0].primary_ip;
    // pod-2 sits on ens6, yet internet traffic leaves by ens5, SNATed.
    for name in ["pod-1", "pod-2"] {
        let pod = lab.pod(name);
        let before = link_packets("node-a", "ens5");
        let seen = whoami(&pod.netns, to);
        let sent = link_packets("node-a", "ens5") - before;
        assert_eq!(seen.who, "internet");
        assert_eq!(
            *seen.peer.ip(),
            primary,
            "{name} ({}) seen as {seen:?}",
            pod.ip
        );
        assert!(
            sent.tx >= 3,
            "{name}: the connection did not leave by ens5 ({sent:?})"
        );
    }
    let peers = read_peers(&lab.plan().peers_log).unwrap();
    let recorded: Vec<_> = peers.iter().filter(|p| p.who == "internet").collect();
    assert_eq!(recorded.len(), 2, "{peers:?}");
    assert!(
        recorded.iter().all(|p| *p.peer.ip() == primary),
        "{peers:?}"
    );

    let snat = conntrack("node-a", "tcp");
    let pod2 = lab.pod("pod-2").ip.to_string();
    let entry = snat
        .iter()
        .find(|(orig, _)| orig.0 == pod2 && orig.1 == internet.ip.to_string())
        .unwrap_or_else(|| panic!("no conntrack entry for pod-2 -> internet: {snat:?}"));
    assert_eq!(
        entry.1.1,
        primary.to_string(),
        "reply not to the SNAT address: {entry:?}"
    );
}

#[test]
fn service_ip_reaches_a_backend_and_the_nlb_reaches_pod_ips_directly() {
    let lab = LabGuard::up();
    let svc = &lab.plan().service;
    let client = lab.pod("pod-1");
    let backends: BTreeSet<String> = lab
        .plan()
        .backends()
        .iter()
        .map(|p| p.full_name())
        .collect();
    let mut answered = BTreeSet::new();
    for _ in 0..12 {
        let seen = whoami(&client.netns, SocketAddrV4::new(svc.ip, svc.port));
        assert!(
            backends.contains(&seen.who),
            "{seen:?} is not a backend of {backends:?}"
        );
        // DNAT only: the backend sees the client pod's own address.
        assert_eq!(*seen.peer.ip(), client.ip, "{seen:?}");
        answered.insert(seen.who);
    }
    eprintln!("service {}:{} answered by {answered:?}", svc.ip, svc.port);
    // DNAT at the first hop, in node-a: original to the service IP, reply
    // from a backend pod.
    let entries = conntrack("node-a", "tcp");
    let dnat = entries
        .iter()
        .filter(|(orig, _)| orig.1 == svc.ip.to_string())
        .collect::<Vec<_>>();
    assert!(
        !dnat.is_empty(),
        "no conntrack entry to the service IP: {entries:?}"
    );
    let backend_ips: Vec<String> = lab
        .plan()
        .backends()
        .iter()
        .map(|p| p.ip.to_string())
        .collect();
    assert!(
        dnat.iter().all(|(_, reply)| backend_ips.contains(&reply.0)),
        "{dnat:?}"
    );

    // The NLB (IP targets) reaches every pod IP directly, unchanged, and
    // the packets arrive on the ENI that owns that IP.
    let nlb = &lab.plan().nlb;
    for pod in &lab.plan().pods {
        let node = lab.node(&pod.node);
        let before = link_packets(&node.netns, &pod.eni);
        let seen = whoami(&nlb.netns, SocketAddrV4::new(pod.ip, pod.port));
        let got = link_packets(&node.netns, &pod.eni) - before;
        assert_eq!(seen.who, pod.full_name());
        assert_eq!(*seen.peer.ip(), nlb.ip, "{}: {seen:?}", pod.name);
        assert!(
            got.rx >= 3,
            "{} via {}/{}: {got:?}",
            pod.name,
            node.name,
            pod.eni
        );
    }
}

#[test]
fn up_is_idempotent_and_the_inventory_resolves_pods_offline() {
    let lab = LabGuard::up();
    let again = podtrace_tests::block_on(|| async { tracer::lab::up(&Plan::default()).await });
    assert!(matches!(again, Ok(UpOutcome::AlreadyUp(_))), "{again:?}");
    let other = Plan::new("10.0.0.0/16".parse().unwrap()).unwrap();
    let clash = podtrace_tests::block_on(move || async move { tracer::lab::up(&other).await });
    assert!(matches!(clash, Err(LabError::OtherLabUp(_))), "{clash:?}");

    let inv = Inventory::load(INVENTORY_PATH).unwrap();
    assert_eq!(inv, lab.inventory);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(INVENTORY_PATH).unwrap()).unwrap();
    let items = json["items"].as_array().unwrap();
    assert!(items.len() >= 4);
    for item in items {
        let name = item["metadata"]["name"].as_str().unwrap();
        let pod = inv.pod(name).unwrap();
        assert_eq!(item["status"]["podIP"], pod.ip.to_string());
        assert_eq!(item["spec"]["nodeName"], pod.node);
        let node = inv.node_of(pod).unwrap();
        assert_eq!(
            item["status"]["hostIP"],
            node.enis[0].primary_ip.to_string()
        );
        assert!(Path::new("/run/netns").join(&pod.netns).exists());
        // The pod really has that address, in that netns, on eth0.
        let addr = netns_exec(
            &pod.netns,
            &["ip", "-4", "-br", "addr", "show", "dev", "eth0"],
        );
        assert!(String::from_utf8_lossy(&addr.stdout).contains(&format!("{}/32", pod.ip)));
        // And the node routes it to the CNI-named veth.
        let route = netns_exec(&node.netns, &["ip", "route", "get", &pod.ip.to_string()]);
        assert!(String::from_utf8_lossy(&route.stdout).contains(&format!("dev {}", pod.host_veth)));
    }
}

#[test]
fn not_root_makes_nothing_and_says_so_in_one_line() {
    let _lock = LabLock::acquire();
    tracer::lab::down().unwrap();
    // Drop privileges for one thread only: a raw setresuid changes the
    // calling thread's credentials (glibc's wrapper would change them all).
    let err = std::thread::spawn(|| {
        // SAFETY: raw syscall on this thread's credentials; it ends after.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, -1i64, 65534i64, -1i64) };
        assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(tracer::lab::up(&Plan::default()))
            .unwrap_err()
    })
    .join()
    .unwrap();
    let text = err.to_string();
    assert!(text.starts_with("needs root"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    for netns in Plan::default().netns_names() {
        assert!(
            !Path::new("/run/netns").join(netns).exists(),
            "{netns} was made"
        );
    }
}

/// Host state the lab must not change.
fn host_state() -> Vec<(String, String)> {
    let run = |args: &[&str]| String::from_utf8_lossy(&sh(args).stdout).into_owned();
    let links: BTreeSet<String> = run(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(str::to_owned))
        .collect();
    let iptables = run(&["iptables-save"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    vec![
        ("links".into(), format!("{links:?}")),
        ("rules".into(), run(&["ip", "rule"])),
        (
            "routes".into(),
            run(&["ip", "route", "show", "table", "all"]),
        ),
        ("iptables".into(), iptables),
    ]
}

fn whoami_running() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) S ...": zombies are dead already.
            let (comm, rest) = stat.split_once(") ")?;
            (comm.ends_with("(podtrace-whoami") && !rest.starts_with('Z')).then(|| stat.clone())
        })
        .collect()
}

#[test]
fn down_leaves_no_netns_link_rule_route_chain_or_process() {
    let lock = LabLock::acquire();
    tracer::lab::down().unwrap();
    let before = host_state();

    let lab = LabGuard::up_with(lock);
    assert!(
        !whoami_running().is_empty(),
        "the whoami service runs while the lab is up"
    );
    let names: Vec<String> = lab
        .plan()
        .netns_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let _lock = lab.down();

    let listed = String::from_utf8_lossy(&sh(&["ip", "netns", "list"]).stdout).into_owned();
    for name in &names {
        assert!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name}: {listed}"
        );
    }
    assert_eq!(host_state(), before, "the host namespace changed");
    assert_eq!(whoami_running(), Vec::<String>::new());
    assert!(!Path::new(INVENTORY_PATH).exists());
}

#[test]
fn down_cleans_up_after_a_crashed_up() {
    let _lock = LabLock::acquire();
    tracer::lab::down().unwrap();
    // What an `up` killed half way could leave: some namespaces (recorded
    // as the lab's, as `up` records each one it makes), a link, a chain, a
    // process inside one, an inventory-less state.
    for name in ["vpc", "node-a", "lab-default-pod-9"] {
        sh(&["ip", "netns", "add", name]);
        tracer::lab::mark_owned(name).unwrap();
    }
    sh(&[
        "ip",
        "-n",
        "node-a",
        "link",
        "add",
        "ens5",
        "type",
        "veth",
        "peer",
        "name",
        "node-a-ens5",
        "netns",
        "vpc",
    ]);
    netns_exec(
        "node-a",
        &["iptables", "-t", "nat", "-N", "AWS-SNAT-CHAIN-0"],
    );
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", "lab-default-pod-9", "sleep", "60"])
        .spawn()
        .unwrap();
    // `ip netns exec` enters the netns just after it starts: wait for that.
    let ino = std::fs::metadata("/run/netns/lab-default-pod-9")
        .unwrap()
        .ino();
    let inside = format!("net:[{ino}]");
    let ns_link = format!("/proc/{}/ns/net", sleeper.id());
    while std::fs::read_link(&ns_link)
        .map(|l| l.to_string_lossy() != inside)
        .unwrap_or(true)
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    let report = tracer::lab::down().unwrap();
    let status = sleeper.wait().unwrap();
    assert!(
        !status.success(),
        "the process in a lab netns was not stopped: {status}"
    );
    let mut removed = report.netns.clone();
    removed.sort();
    assert_eq!(removed, ["lab-default-pod-9", "node-a", "vpc"]);
    for name in ["vpc", "node-a", "lab-default-pod-9"] {
        assert!(!Path::new("/run/netns").join(name).exists(), "{name} left");
    }
    // And a fresh `up` over nothing works (covered by every LabGuard::up).
}

/// Namespaces named like the lab's (the names are plain: `internet`,
/// `vpc`) that a person made: `down` must neither delete them nor stop
/// what runs in them, and `up` must refuse rather than take them over.
#[test]
fn namespaces_the_lab_did_not_make_are_left_alone() {
    let _lock = LabLock::acquire();
    tracer::lab::down().unwrap();
    let theirs = ["internet", "lab-default-pod-9"];
    for name in theirs {
        sh(&["ip", "netns", "add", name]);
    }
    sh(&[
        "ip", "-n", "internet", "link", "add", "mine0", "type", "veth", "peer", "name", "mine1",
    ]);
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", "internet", "sleep", "60"])
        .spawn()
        .unwrap();
    // `ip netns exec` enters the netns just after it starts: wait for that.
    let ino = std::fs::metadata("/run/netns/internet").unwrap().ino();
    let ns_link = format!("/proc/{}/ns/net", sleeper.id());
    while std::fs::read_link(&ns_link)
        .map(|l| l.to_string_lossy() != format!("net:[{ino}]"))
        .unwrap_or(true)
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let cleanup = |sleeper: &mut std::process::Child| {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        for name in theirs {
            sh(&["ip", "netns", "del", name]);
        }
    };

    let report = tracer::lab::down();
    let up = podtrace_tests::block_on(|| async { tracer::lab::up(&Plan::default()).await });
    let alive = sleeper.try_wait().unwrap().is_none();
    let links =
        String::from_utf8_lossy(&sh(&["ip", "-n", "internet", "-o", "link"]).stdout).into_owned();
    let left: Vec<bool> = theirs
        .iter()
        .map(|n| Path::new("/run/netns").join(n).exists())
        .collect();
    let made_any = Plan::default()
        .netns_names()
        .iter()
        .any(|n| !theirs.contains(n) && Path::new("/run/netns").join(n).exists());
    cleanup(&mut sleeper);
    tracer::lab::down().unwrap();

    let report = report.unwrap();
    assert_eq!(
        report.netns,
        Vec::<String>::new(),
        "down removed: {report:?}"
    );
    let mut foreign = report.foreign.clone();
    foreign.sort();
    assert_eq!(foreign, ["internet", "lab-default-pod-9"]);
    assert_eq!(
        left,
        [true, true],
        "a namespace the lab did not make is gone"
    );
    assert!(
        alive,
        "down stopped a process in a namespace it did not make"
    );
    assert!(links.contains("mine0"), "{links}");
    match up {
        Err(LabError::Foreign(names)) => assert_eq!(names, ["internet"]),
        other => panic!("up over someone else's `internet` netns: {other:?}"),
    }
    assert!(!made_any, "a refused `up` made namespaces");
}
