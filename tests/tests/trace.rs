//! `podtrace trace` on the lab: real traffic, flows with labels, ENIs,
//! rewrites and conntrack's tuples.

use std::{collections::BTreeMap, net::SocketAddrV4, time::Duration};

use podtrace_tests::{IptablesRule, LabGuard, netns_exec, process::Podtrace, whoami};
use serde_json::Value;

/// Last state of every flow, by id, from `trace --json` output.
fn flows(stdout: &str) -> BTreeMap<u64, Value> {
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if matches!(v["type"].as_str(), Some("flow" | "flow_end")) {
            out.insert(v["flow"]["id"].as_u64().expect("id"), v["flow"].clone());
        }
    }
    out
}

fn labels(f: &Value) -> Vec<&str> {
    f["labels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// The flow whose client is `src` and whose destination (as sent) is `dst`.
fn find<'a>(all: &'a BTreeMap<u64, Value>, proto: u64, src: &str, dst: &str) -> &'a Value {
    all.values()
        .find(|f| {
            f["tuple"]["proto"] == proto && f["tuple"]["src"] == src && f["tuple"]["dst"] == dst
        })
        .unwrap_or_else(|| panic!("no flow {src} -> {dst} proto {proto} in {all:#?}"))
}

fn hops(side: &Value) -> Vec<String> {
    podtrace_tests::hop_names(&side["path"])
}

#[test]
fn lab_flows_are_labelled_with_their_path() {
    let lab = LabGuard::up();
    let (p1, p2, p3, p4) = (
        lab.pod("pod-1"),
        lab.pod("pod-2"),
        lab.pod("pod-3"),
        lab.pod("pod-4"),
    );
    let inet = lab.plan().internet.ip;
    let ens5_a = lab.node("node-a").enis[0].primary_ip;
    let trace = Podtrace::start(&["trace", "--json"]);

    // pod -> pod across nodes, from an ens5 pod and from an ens6 pod; the
    // first long enough that its counts keep moving after it is printed.
    netns_exec(
        &p1.netns,
        &["ping", "-c", "8", "-i", "0.2", &p3.ip.to_string()],
    );
    netns_exec(
        &p2.netns,
        &["ping", "-c", "2", "-i", "0.2", &p3.ip.to_string()],
    );
    // pod -> internet host: SNAT to node-a's ens5 primary IP.
    netns_exec(&p2.netns, &["ping", "-c", "1", &inet.to_string()]);
    // pod -> a closed UDP port of the internet host: port unreachable
    // comes back to node-a, and conntrack undoes the SNAT on it.
    netns_exec(
        &p1.netns,
        &["bash", "-c", &format!("echo x > /dev/udp/{inet}/9999")],
    );
    // pod -> ClusterIP service: DNAT to a backend kube-proxy-style rules pick.
    let svc = SocketAddrV4::new(lab.plan().service.ip, lab.plan().service.port);
    let served = whoami(&p1.netns, svc);
    // NLB (IP target mode) -> pod-4 on node-b's ens6, no rewrite.
    let nlb = whoami(&lab.plan().nlb.netns, SocketAddrV4::new(p4.ip, 8080));
    assert!(nlb.who.contains("pod-4"), "{nlb:?}");
    // Without pod-2's rule 1536, its replies to another node leave by ens5.
    netns_exec(
        "node-a",
        &[
            "ip",
            "rule",
            "del",
            "pref",
            "1536",
            "from",
            &p2.ip.to_string(),
        ],
    );
    netns_exec(
        &p3.netns,
        &["ping", "-c", "2", "-i", "0.2", &p2.ip.to_string()],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let out = trace.stop(libc::SIGINT);
    assert!(out.status.success(), "{}", out.stderr);
    let all = flows(&out.stdout);

    let direct5 = find(&all, 1, &p1.ip.to_string(), &p3.ip.to_string());
    assert_eq!(labels(direct5), ["direct"], "{direct5:#}");
    assert_eq!(direct5["egress_eni"]["iface"], "ens5");
    assert_eq!(direct5["egress_eni"]["node"], "node-a");
    assert_eq!(
        hops(&direct5["request"]),
        [
            format!("node-a {} ingress", p1.host_veth),
            "node-a ens5 egress".into(),
            "node-b ens5 ingress".into(),
            format!("node-b {} egress", p3.host_veth),
        ]
    );
    assert_eq!(
        direct5["request"]["kernel"]["packets"], 8,
        "exact kernel counters, as of the exit: {direct5:#}"
    );
    // Every live flow ends the output with its final record.
    let ended: Vec<u64> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "flow_end" && v["reason"] == "exit")
        .filter_map(|v| v["flow"]["id"].as_u64())
        .collect();
    // The last line gives every hook's counters, lost events included.
    let stats: Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(stats["type"], "stats");
    let hooks = stats["hooks"].as_array().expect("hooks");
    assert!(
        hooks.iter().any(|h| h["node"] == "node-a"
            && h["iface"] == "ens5"
            && h["dir"] == "egress"
            && h["seen"].as_u64() >= Some(8)
            && h["lost"] == 0),
        "{stats:#}"
    );
    // Every flow line says when, in wall-clock time, as capture does.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    for line in out.stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if matches!(v["type"].as_str(), Some("flow" | "flow_end")) {
            let t: u128 = v["time_ns"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no wall-clock time_ns: {line}"));
            assert!(now.abs_diff(t) < 120_000_000_000, "{t} is not now: {line}");
        }
    }
    assert!(
        ended.contains(&direct5["id"].as_u64().unwrap()),
        "no flow_end at exit for flow {}: {ended:?}",
        direct5["id"]
    );

    let direct6 = find(&all, 1, &p2.ip.to_string(), &p3.ip.to_string());
    assert_eq!(labels(direct6), ["direct"], "{direct6:#}");
    assert_eq!(
        direct6["egress_eni"]["iface"], "ens6",
        "an ens6 pod's VPC traffic leaves by ens6"
    );

    let snat = find(&all, 1, &p2.ip.to_string(), &inet.to_string());
    assert_eq!(labels(snat), ["snat"], "{snat:#}");
    assert_eq!(
        snat["egress_eni"]["iface"], "ens5",
        "internet traffic leaves by the primary ENI"
    );
    let at_eni = &snat["request"]["path"][1];
    assert_eq!(
        (at_eni["iface"].as_str(), at_eni["tuple"]["src"].as_str()),
        (Some("ens5"), Some(ens5_a.to_string().as_str()))
    );
    let ct = &snat["conntrack"];
    assert_eq!(ct["original"]["src"], p2.ip.to_string(), "{snat:#}");
    assert_eq!(
        ct["reply"]["dst"],
        ens5_a.to_string(),
        "conntrack agrees: SNAT to node-a's ens5 primary IP"
    );

    let refused = find(&all, 17, &p1.ip.to_string(), &inet.to_string());
    assert_eq!(labels(refused), ["snat", "icmp-error"], "{refused:#}");
    let err = &refused["icmp_error"];
    assert_eq!(
        (&err["type"], &err["code"], &err["name"], &err["from"]),
        (
            &Value::from(3),
            &Value::from(3),
            &Value::from("port unreachable"),
            &Value::from(inet.to_string())
        ),
        "{refused:#}"
    );
    assert_eq!(
        hops(err),
        [
            "node-a ens5 ingress".to_owned(),
            format!("node-a {} egress", p1.host_veth),
        ],
        "the error's way back"
    );
    let undo = &err["rewrites"][0];
    assert_eq!(
        (&undo["kind"], &undo["reverse"], &undo["after"]["dst"]),
        (
            &Value::from("snat"),
            &Value::from(true),
            &Value::from(p1.ip.to_string())
        ),
        "{refused:#}"
    );
    assert!(
        !all.values()
            .any(|f| f["tuple"]["proto"] == 1 && f["tuple"]["src"] == inet.to_string()),
        "the error is not a flow of its own: {all:#?}"
    );

    let dnat = find(&all, 6, &p1.ip.to_string(), &svc.ip().to_string());
    assert!(labels(dnat).contains(&"dnat"), "{dnat:#}");
    let backend = dnat["conntrack"]["reply"]["src"]
        .as_str()
        .expect("conntrack on the DNATed flow");
    let last = dnat["request"]["path"].as_array().unwrap().last().unwrap();
    assert_eq!(
        last["tuple"]["dst"], backend,
        "the flow's backend is conntrack's choice"
    );
    assert_eq!(
        lab.pod(backend).name,
        served.who.rsplit('/').next().unwrap(),
        "and the one that answered"
    );

    let nlb_flow = all
        .values()
        .find(|f| f["tuple"]["dst"] == p4.ip.to_string() && f["tuple"]["proto"] == 6)
        .expect("NLB flow");
    assert_eq!(labels(nlb_flow), ["direct"], "{nlb_flow:#}");
    let first = &nlb_flow["request"]["path"][0];
    assert_eq!(
        (
            first["node"].as_str(),
            first["iface"].as_str(),
            first["dir"].as_str()
        ),
        (Some("node-b"), Some("ens6"), Some("ingress"))
    );

    let asym = find(&all, 1, &p3.ip.to_string(), &p2.ip.to_string());
    assert!(labels(asym).contains(&"asymmetric-eni"), "{asym:#}");
    let reply_hops = hops(&asym["reply"]);
    assert!(
        reply_hops.contains(&"node-a ens5 egress".to_owned()),
        "{reply_hops:?}"
    );
    assert!(hops(&asym["request"]).contains(&"node-a ens6 ingress".to_owned()));
}

/// Flows mode reports a flow's first packets at each hook. A flow already
/// running when trace starts was cut into pieces: each hook, attached a
/// moment after the last, reported other packets, and no path was whole.
#[test]
fn a_flow_running_before_trace_starts_shows_its_whole_path() {
    let lab = LabGuard::up();
    let (p2, p4) = (lab.pod("pod-2"), lab.pod("pod-4"));
    let mut ping = std::process::Command::new("ip")
        .args(["netns", "exec", &p2.netns, "ping", "-q", "-i", "0.005"])
        .args(["-c", "1000", &p4.ip.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start ping");
    std::thread::sleep(Duration::from_millis(300));
    let trace = Podtrace::start(&["trace", "--json"]);
    std::thread::sleep(Duration::from_millis(1000));
    let out = trace.stop(libc::SIGINT);
    let _ = ping.kill();
    let _ = ping.wait();
    assert!(out.status.success(), "{}", out.stderr);
    let all = flows(&out.stdout);
    let f = find(&all, 1, &p2.ip.to_string(), &p4.ip.to_string());
    assert_eq!(
        hops(&f["request"]),
        [
            format!("node-a {} ingress", p2.host_veth),
            "node-a ens6 egress".into(),
            "node-b ens6 ingress".into(),
            format!("node-b {} egress", p4.host_veth),
        ],
        "{f:#}"
    );
    assert_eq!(f["egress_eni"]["iface"], "ens6", "{f:#}");
}

/// Every ICMP error about a refused datagram is linked to that datagram's
/// flow, in flows mode too, where one sender's errors to one pod share a
/// kernel flow slot (whose first packets alone were reported); and the
/// port and address filters keep the errors about the packets they keep.
#[test]
fn each_refused_datagram_gets_its_error_in_flows_mode_and_through_the_filters() {
    let lab = LabGuard::up();
    let (p1, p4) = (lab.pod("pod-1"), lab.pod("pod-4"));
    let send = |port: u16| {
        netns_exec(
            &p1.netns,
            &["bash", "-c", &format!("echo x > /dev/udp/{}/{port}", p4.ip)],
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Five: more than two CPUs report of a slot's first packets (two
    // each), fewer than the six errors Linux sends one host in a burst.
    let ports = [9101, 9102, 9103, 9104, 9105];
    let trace = Podtrace::start(&["trace", "--json"]);
    for port in ports {
        send(port);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let out = trace.stop(libc::SIGINT);
    assert!(out.status.success(), "{}", out.stderr);
    let all = flows(&out.stdout);
    for port in ports {
        let f = all
            .values()
            .find(|f| f["tuple"]["proto"] == 17 && f["tuple"]["dport"] == port)
            .unwrap_or_else(|| panic!("no flow to port {port}: {all:#?}"));
        assert_eq!(
            f["icmp_error"]["name"], "port unreachable",
            "port {port}: {f:#}"
        );
        assert_eq!(f["icmp_error"]["quote"]["dport"], port, "{f:#}");
    }

    let filtered = Podtrace::start(&["trace", "--json", "--filter-port", "9107"]);
    send(9107);
    send(9108);
    std::thread::sleep(Duration::from_millis(1500));
    let out = filtered.stop(libc::SIGINT);
    assert!(out.status.success(), "{}", out.stderr);
    let all = flows(&out.stdout);
    assert_eq!(all.len(), 1, "only the filtered port's flow: {all:#?}");
    let f = all.values().next().unwrap();
    assert_eq!(
        (&f["tuple"]["dport"], &f["icmp_error"]["name"]),
        (&Value::from(9107), &Value::from("port unreachable")),
        "{f:#}"
    );

    // The error goes to pod-1, from pod-4: by its own addresses a filter
    // on the datagram's destination would drop it; by its quote it keeps it.
    let dst = format!("{}/32", p4.ip);
    let filtered = Podtrace::start(&["trace", "--json", "--filter-dst", &dst]);
    send(9109);
    std::thread::sleep(Duration::from_millis(1500));
    let out = filtered.stop(libc::SIGINT);
    assert!(out.status.success(), "{}", out.stderr);
    let all = flows(&out.stdout);
    let f = all
        .values()
        .find(|f| f["tuple"]["dport"] == 9109)
        .unwrap_or_else(|| panic!("no flow to port 9109: {all:#?}"));
    assert_eq!(
        f["icmp_error"]["name"], "port unreachable",
        "the address filter kept the error: {f:#}"
    );
}

/// A packet the kernel drops in a traced namespace comes as a `drop`
/// line with the kernel's reason and the packet, and only the traffic the
/// filter keeps.
#[test]
fn a_packet_the_kernel_drops_says_where_and_why() {
    let lab = LabGuard::up();
    let (p1, p3) = (lab.pod("pod-1"), lab.pod("pod-3"));
    let rule = [
        "FORWARD",
        "-d",
        &p3.ip.to_string(),
        "-p",
        "tcp",
        "-m",
        "multiport",
        "--dports",
        "8080,8081",
        "-j",
        "DROP",
    ];
    netns_exec("node-b", &[&["iptables", "-I"], &rule[..]].concat());
    let connect = |port: u16| {
        // One SYN (and its retransmission) that nothing answers.
        let script = format!(
            "timeout 1.5 bash -c 'echo > /dev/tcp/{}/{port}' || true",
            p3.ip
        );
        netns_exec(&p1.netns, &["bash", "-c", &script]);
    };
    // Only the port the filter keeps: a drop on another port stays out.
    let trace = Podtrace::start(&["trace", "--json", "--filter-port", "8080"]);
    connect(8080);
    connect(8081);
    std::thread::sleep(Duration::from_millis(500));
    let out = trace.stop(libc::SIGINT);
    netns_exec("node-b", &[&["iptables", "-D"], &rule[..]].concat());
    assert!(out.status.success(), "{}", out.stderr);
    let drops: Vec<Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "drop")
        .map(|v| v["drop"].clone())
        .collect();
    assert!(!drops.is_empty(), "no drop in {}", out.stdout);
    for d in &drops {
        assert_eq!(
            (
                &d["reason"],
                &d["node"],
                &d["iface"],
                &d["proto"],
                &d["info"]
            ),
            (
                &Value::from("NETFILTER_DROP"),
                &Value::from("node-b"),
                &Value::from(lab.pod("pod-3").eni.as_str()),
                &Value::from("tcp"),
                &Value::from("S")
            ),
            "{d:#}"
        );
        assert_eq!(d["dst"], format!("{}:8080", p3.ip), "{d:#}");
        assert!(
            d["src"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{}:", p1.ip))),
            "{d:#}"
        );
    }
    // Filed with its flow too.
    let all = flows(&out.stdout);
    let f = find(&all, 6, &p1.ip.to_string(), &p3.ip.to_string());
    assert!(labels(f).contains(&"dropped"), "{f:#}");
    assert_eq!(
        (&f["drop"]["side"], &f["drop"]["reason"], &f["drop"]["node"]),
        (
            &Value::from("request"),
            &Value::from("NETFILTER_DROP"),
            &Value::from("node-b")
        ),
        "{f:#}"
    );
    let stats = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "stats")
        .expect("a stats line");
    assert_eq!(stats["drops"]["shown"], drops.len(), "{stats:#}");
    assert_eq!(
        stats["drops"]["by_reason"],
        serde_json::json!([{"node": "node-b", "reason": "NETFILTER_DROP", "packets": drops.len()}]),
        "{stats:#}"
    );
    assert_eq!(stats["drops"]["not_shown"], 0, "{stats:#}");
    assert_eq!(stats["drops"]["not_filed"], 0, "{stats:#}");
}

/// A firewall that refuses a SYN with a RST (`REJECT --reject-with
/// tcp-reset`) answers in the server's name: the flow says the RST was
/// made on the way. A closed port's RST, from the pod itself, is not.
#[test]
fn a_reset_made_on_the_way_is_told_from_the_servers_own() {
    let lab = LabGuard::up();
    let (p1, p3) = (lab.pod("pod-1"), lab.pod("pod-3"));
    let rule = [
        "FORWARD",
        "-d",
        &p3.ip.to_string(),
        "-p",
        "tcp",
        "--dport",
        "8081",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ];
    let rule = IptablesRule::insert("node-b", &rule);
    let run = |port: u16, json: bool| {
        let port_arg = port.to_string();
        let mut args = vec!["trace", "--filter-port", port_arg.as_str()];
        if json {
            args.push("--json");
        }
        let trace = Podtrace::start(&args);
        let script = format!(
            "timeout 1.5 bash -c 'echo > /dev/tcp/{}/{port}' || true",
            p3.ip
        );
        netns_exec(&p1.netns, &["bash", "-c", &script]);
        // The kernel's counters, which show the RST, merge every second.
        std::thread::sleep(Duration::from_millis(1300));
        trace.stop(libc::SIGINT)
    };
    let refused = run(8081, false);
    let closed = run(8082, false);
    let refused_json = run(8081, true);
    drop(rule);
    assert!(refused.status.success(), "{}", refused.stderr);
    let want = format!(
        "  reset    a RST in pod-3's name, made on the way: first seen at node-b {} (ENI 0) \
         egress, after the request was dropped on node-b",
        p3.eni
    );
    assert!(
        refused.stdout.lines().any(|l| l == want),
        "no `{want}` in:\n{}",
        refused.stdout
    );
    // The same in JSON, on the flow.
    let all = flows(&refused_json.stdout);
    let f = find(&all, 6, &p1.ip.to_string(), &p3.ip.to_string());
    assert_eq!(
        f["reset_on_the_way"],
        want.trim_start_matches("  reset    "),
        "{f:#}"
    );
    assert!(closed.status.success(), "{}", closed.stderr);
    assert!(
        closed.stdout.contains("flow ") && !closed.stdout.contains("  reset "),
        "{}",
        closed.stdout
    );
}

/// A service call dropped on the client's node after its DNAT, before
/// any hook saw the backend's address: the drop still finds its flow, by
/// the packet's journey.
#[test]
fn a_drop_after_a_dnat_finds_the_service_flow() {
    let lab = LabGuard::up();
    let p1 = lab.pod("pod-1");
    let svc = SocketAddrV4::new(lab.plan().service.ip, lab.plan().service.port);
    // Every backend listens on the same port; node-a forwards to both.
    let backend_port = lab.plan().service.target_port.to_string();
    let rule = [
        "FORWARD",
        "-s",
        &p1.ip.to_string(),
        "-p",
        "tcp",
        "--dport",
        backend_port.as_str(),
        "-j",
        "DROP",
    ];
    netns_exec("node-a", &[&["iptables", "-I"], &rule[..]].concat());
    let trace = Podtrace::start(&["trace", "--json"]);
    let script = format!(
        "timeout 1.5 bash -c 'echo > /dev/tcp/{}/{}' || true",
        svc.ip(),
        svc.port()
    );
    netns_exec(&p1.netns, &["bash", "-c", &script]);
    std::thread::sleep(Duration::from_millis(500));
    let out = trace.stop(libc::SIGINT);
    netns_exec("node-a", &[&["iptables", "-D"], &rule[..]].concat());
    assert!(out.status.success(), "{}", out.stderr);
    let all = flows(&out.stdout);
    let f = find(&all, 6, &p1.ip.to_string(), &svc.ip().to_string());
    assert_eq!(labels(f), ["dnat", "dropped"], "{f:#}");
    assert_eq!(
        (&f["drop"]["side"], &f["drop"]["reason"], &f["drop"]["node"]),
        (
            &Value::from("request"),
            &Value::from("NETFILTER_DROP"),
            &Value::from("node-a")
        ),
        "{f:#}"
    );
}
