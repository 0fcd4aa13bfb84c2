//! `podtrace ping` on the lab: real probes, real hooks on both nodes.

use podtrace_tests::{IptablesRule, LabGuard, netns_exec, process::podtrace_bin};
use serde_json::Value;

/// Runs `podtrace ping <args> --json`; returns the exit code and document.
fn ping(args: &[&str]) -> (i32, Value, String) {
    let out = std::process::Command::new(podtrace_bin())
        .arg("ping")
        .args(args)
        .arg("--json")
        .output()
        .expect("run podtrace ping");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let doc = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), doc, stderr)
}

fn hops(doc: &Value, seq: usize) -> Vec<String> {
    podtrace_tests::hop_names(&doc["probes"][seq]["hops"])
}

/// The four hops of a request from `src` (on node-a) to `dst` (on node-b)
/// leaving through `eni`, then the reply's four hops in reverse.
fn expected(lab: &LabGuard, src: &str, dst: &str, eni: &str) -> Vec<String> {
    let (s, d) = (lab.pod(src), lab.pod(dst));
    let back = &lab.pod(dst).eni;
    vec![
        format!("node-a {} ingress", s.host_veth),
        format!("node-a {eni} egress"),
        format!("node-b {} ingress", d.eni),
        format!("node-b {} egress", d.host_veth),
        format!("node-b {} ingress", d.host_veth),
        format!("node-b {back} egress"),
        format!("node-a {eni} ingress"),
        format!("node-a {} egress", s.host_veth),
    ]
}

#[test]
fn lab_paths_and_bad_input() {
    let lab = LabGuard::up();
    let (p1, p2, p3) = (lab.pod("pod-1"), lab.pod("pod-2"), lab.pod("pod-3"));
    assert_eq!((p1.node.as_str(), p1.eni.as_str()), ("node-a", "ens5"));
    assert_eq!((p2.node.as_str(), p2.eni.as_str()), ("node-a", "ens6"));
    assert_eq!(p3.node, "node-b");

    // ens5 pod on node-a -> pod on node-b: direct, out of ens5.
    let (code, doc, err) = ping(&["pod-1", "pod-3", "-c", "2"]);
    assert_eq!(code, 0, "{err}\n{doc:#}");
    assert_eq!(doc["summary"]["path"], "direct", "{doc:#}");
    assert_eq!(doc["summary"]["egress_eni"], "ens5");
    assert_eq!(doc["summary"]["snat_to"], Value::Null);
    assert_eq!(doc["src"]["pod"], "pod-1");
    assert_eq!(doc["dst"]["ip"], p3.ip.to_string());
    assert_eq!(
        hops(&doc, 0),
        expected(&lab, "pod-1", "pod-3", "ens5"),
        "{doc:#}"
    );
    assert!(doc["probes"][0]["rtt_us"].as_f64().is_some_and(|r| r > 0.0));
    // The totals a script reads, as ping(8) prints them.
    let s = &doc["summary"];
    assert_eq!(
        (&s["sent"], &s["received"], &doc["proto"], &doc["port"]),
        (
            &Value::from(2),
            &Value::from(2),
            &Value::from("icmp"),
            &Value::Null
        ),
        "{doc:#}"
    );
    let rtt = &s["rtt_us"];
    assert!(
        rtt["min"].as_f64() <= rtt["avg"].as_f64()
            && rtt["avg"].as_f64() <= rtt["max"].as_f64()
            && rtt["min"].as_f64().is_some_and(|m| m > 0.0),
        "{doc:#}"
    );
    let h0 = &doc["probes"][0]["hops"][1];
    assert_eq!(
        (h0["role"].as_str(), h0["eni_index"].as_u64()),
        (Some("eni"), Some(0))
    );
    assert_eq!(h0["src"], p1.ip.to_string());

    // ens6 pod on node-a -> pod on node-b: out of ens6 (policy table 2).
    let (code, doc, err) = ping(&["default/pod-2", &p3.ip.to_string(), "-c", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(doc["summary"]["egress_eni"], "ens6", "{doc:#}");
    assert_eq!(doc["summary"]["path"], "direct");
    let first = &hops(&doc, 0)[..4];
    assert_eq!(first, &expected(&lab, "pod-2", "pod-3", "ens6")[..4]);

    // pod -> internet host by IP: SNAT to node-a's ens5 primary IP.
    let inet = lab.plan().internet.ip.to_string();
    let ens5_primary = lab.node("node-a").enis[0].primary_ip.to_string();
    let (code, doc, err) = ping(&["pod-2", &inet, "-c", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(doc["summary"]["path"], "snat", "{doc:#}");
    assert_eq!(doc["summary"]["snat_to"], ens5_primary.as_str());
    assert_eq!(
        doc["summary"]["egress_eni"], "ens5",
        "internet-bound traffic of an ens6 pod leaves by ens5"
    );
    let nat = doc["probes"][0]["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|h| h["rewrites"][0].as_object().cloned())
        .expect("a hop with a rewrite");
    assert_eq!(
        (
            nat["kind"].as_str(),
            nat["reverse"].as_bool(),
            nat["from"].as_str(),
            nat["to"].as_str()
        ),
        (
            Some("snat"),
            Some(false),
            Some(p2.ip.to_string().as_str()),
            Some(ens5_primary.as_str())
        ),
        "addresses only, the ICMP id apart: {nat:#?}"
    );
    assert!(nat["icmp_id"].is_array(), "{nat:#?}");
    // On the way back, conntrack undoes the SNAT: named after the rule.
    let back = doc["probes"][0]["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["leg"] == "reply")
        .find_map(|h| h["rewrites"][0].as_object().cloned())
        .expect("a reply hop with a rewrite");
    assert_eq!(
        (back["kind"].as_str(), back["reverse"].as_bool()),
        (Some("snat"), Some(true)),
        "{back:#?}"
    );

    // TCP SYN to the ClusterIP service: DNAT to a backend, answered, and
    // the SYN-ACK's hops come back through conntrack's un-DNAT.
    let svc = lab.plan().service.ip.to_string();
    let (code, doc, err) = ping(&["pod-1", &svc, "--proto", "tcp", "--port", "80", "-c", "1"]);
    assert_eq!(code, 0, "{err}\n{doc:#}");
    assert_eq!(doc["summary"]["path"], "dnat", "{doc:#}");
    let legs: Vec<&str> = doc["probes"][0]["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["leg"].as_str().unwrap())
        .collect();
    assert!(
        legs.contains(&"request") && legs.contains(&"reply"),
        "{doc:#}"
    );
    // Several probes to the service: DNAT spreads them over its backends,
    // and the summary gives each backend it saw its own count and path:
    // out by an ENI to a backend on node-b, no ENI to one on node-a.
    let (code, doc, err) = ping(&[
        "pod-1", &svc, "--proto", "tcp", "--port", "80", "-c", "6", "-i", "50ms",
    ]);
    assert_eq!(code, 0, "{err}\n{doc:#}");
    let backends = doc["summary"]["backends"].as_array().expect("backends");
    let total: u64 = backends.iter().map(|b| b["probes"].as_u64().unwrap()).sum();
    assert_eq!(total, 6, "{doc:#}");
    for b in backends {
        let to = b["to"].as_str().unwrap();
        let pod = lab
            .plan()
            .service
            .backends
            .iter()
            .map(|name| lab.pod(name))
            .find(|p| to == format!("{}:{}", p.ip, lab.plan().service.target_port))
            .unwrap_or_else(|| panic!("{to} is not a backend of the service: {doc:#}"));
        if pod.node == "node-a" {
            assert_eq!(b["egress_eni"], Value::Null, "{doc:#}");
            assert_eq!(b["same_node"], true, "{doc:#}");
        } else {
            assert!(b["egress_eni"].as_str().is_some(), "{doc:#}");
            assert_eq!(b["same_node"], Value::Null, "{doc:#}");
        }
    }

    // UDP to a closed port on node-b: ICMP port unreachable is the answer.
    let (code, doc, err) = ping(&[
        "pod-1", "pod-4", "--proto", "udp", "--port", "9999", "-c", "1",
    ]);
    assert_eq!(code, 0, "{err}\n{doc:#}");
    assert_eq!(doc["summary"]["path"], "direct");
    assert!(
        doc["probes"][0]["reply"]
            .as_str()
            .is_some_and(|r| r.contains("port unreachable")),
        "{doc:#}"
    );

    // UDP to the service's address, which has no UDP rule: the VPC
    // router answers net unreachable. That is the probe's answer, not a
    // timeout (the socket hears it only with IP_RECVERR).
    let (code, doc, err) = ping(&[
        "pod-1", &svc, "--proto", "udp", "--port", "80", "-c", "1", "-W", "2s",
    ]);
    assert_eq!(code, 1, "{err}\n{doc:#}");
    let why = doc["summary"]["lost_at"].as_str().unwrap_or_default();
    assert!(why.starts_with("net unreachable from "), "{doc:#}");
    // The error, then where the kernel dropped the probe (in the VPC's
    // router, which podtrace does not trace).
    let reply = doc["probes"][0]["reply"].as_str().unwrap_or_default();
    assert!(
        why == reply
            || why.starts_with(&format!(
                "{reply}; request dropped by the kernel in a namespace podtrace does not trace: "
            )),
        "{doc:#}"
    );

    // A DROP on node-b: no reply, lost after node-b's ENI ingress, and the
    // kernel's own drop reason says why (the kfree_skb tracepoint).
    let rule = [
        "-I",
        "FORWARD",
        "-d",
        &p3.ip.to_string(),
        "-p",
        "icmp",
        "-j",
        "DROP",
    ];
    netns_exec("node-b", &[&["iptables"], &rule[..]].concat());
    let (code, doc, err) = ping(&["pod-1", "pod-3", "-c", "1", "-W", "500ms"]);
    netns_exec("node-b", &[&["iptables", "-D"], &rule[1..]].concat());
    assert_eq!(code, 1, "{err}\n{doc:#}");
    assert_eq!(doc["probes"][0]["rtt_us"], Value::Null);
    let dropped = &doc["probes"][0]["drop"];
    assert_eq!(
        (&dropped["leg"], &dropped["reason"], &dropped["node"]),
        (
            &Value::from("request"),
            &Value::from("NETFILTER_DROP"),
            &Value::from("node-b")
        ),
        "{doc:#}"
    );
    assert!(
        doc["summary"]["lost_at"].as_str().is_some_and(|w| w
            .starts_with("request dropped by the kernel on node-b: NETFILTER_DROP in ")
            && w.ends_with(", after node-b ens5 ingress")),
        "{doc:#}"
    );
    // A rule in the sending pod's own OUTPUT chain: the kernel refuses
    // each probe with EPERM before it leaves. Each is a lost probe that
    // says so, with the kernel's drop, not an error of podtrace's. A
    // REJECT also sends the socket a port unreachable, which must not
    // fail the next probe's send. TCP's SYNs leave from a raw socket,
    // refused the same way.
    let cases: [(&str, &[&str], &[&str]); 4] = [
        (
            "udp DROP",
            &["OUTPUT", "-p", "udp", "--dport", "9400", "-j", "DROP"],
            &["--proto", "udp", "--port", "9400"],
        ),
        (
            "udp REJECT",
            &["OUTPUT", "-p", "udp", "--dport", "9400", "-j", "REJECT"],
            &["--proto", "udp", "--port", "9400"],
        ),
        (
            "icmp DROP",
            &["OUTPUT", "-p", "icmp", "-j", "DROP"],
            &["--proto", "icmp"],
        ),
        (
            "tcp DROP",
            &["OUTPUT", "-p", "tcp", "--dport", "9401", "-j", "DROP"],
            &["--proto", "tcp", "--port", "9401"],
        ),
    ];
    for (target, refuse, proto) in cases {
        let rule = IptablesRule::insert(&p1.netns, refuse);
        let args = [&["pod-1", "pod-3", "-c", "2", "-i", "100ms"], proto].concat();
        let (code, doc, err) = ping(&args);
        drop(rule);
        assert_eq!(code, 1, "{target}: {err}\n{doc:#}");
        assert_eq!(
            (&doc["summary"]["sent"], &doc["summary"]["received"]),
            (&Value::from(2), &Value::from(0)),
            "{target}: {doc:#}"
        );
        for p in doc["probes"].as_array().expect("probes") {
            assert!(
                p["reply"].as_str().is_some_and(
                    |r| r.starts_with("refused in the sender's namespace before it left")
                ),
                "{target}: {doc:#}"
            );
            assert_eq!(p["rtt_us"], Value::Null, "{target}: {doc:#}");
            assert_eq!(
                (&p["drop"]["reason"], &p["drop"]["node"]),
                (
                    &Value::from("NETFILTER_DROP"),
                    &Value::from("default/pod-1")
                ),
                "{target}: dropped in the sending pod's namespace: {doc:#}"
            );
            assert_eq!(
                p["hops"].as_array().map(Vec::len),
                Some(0),
                "{target}: {doc:#}"
            );
        }
    }

    // The same on the reply's way back, on node-a.
    let drop_reply = [
        "-I",
        "FORWARD",
        "-s",
        &p3.ip.to_string(),
        "-p",
        "icmp",
        "--icmp-type",
        "echo-reply",
        "-j",
        "DROP",
    ];
    netns_exec("node-a", &[&["iptables"], &drop_reply[..]].concat());
    let (code, doc, err) = ping(&["pod-1", "pod-3", "-c", "1", "-W", "500ms"]);
    netns_exec("node-a", &[&["iptables", "-D"], &drop_reply[1..]].concat());
    assert_eq!(code, 1, "{err}\n{doc:#}");
    let dropped = &doc["probes"][0]["drop"];
    assert_eq!(
        (&dropped["leg"], &dropped["node"]),
        (&Value::from("reply"), &Value::from("node-a")),
        "{doc:#}"
    );
    // A probe that came back has no drop, and the tracepoint's program
    // goes away with ping.
    let (code, doc, err) = ping(&["pod-1", "pod-3", "-c", "1", "-W", "500ms"]);
    assert_eq!(code, 0, "{err}\n{doc:#}");
    assert!(doc["probes"][0].get("drop").is_none(), "{doc:#}");
    // (The kernel frees a program shortly after its last reference.)
    let gone = (0..40).any(|_| {
        let progs = std::process::Command::new("bpftool")
            .args(["prog", "show"])
            .output()
            .expect("bpftool prog show");
        let alive = String::from_utf8_lossy(&progs.stdout).contains("podtrace_kfree");
        if alive {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        !alive
    });
    assert!(gone, "the drop program outlived ping by 2 s");

    // A UDP server that echoes the probe sends its tag back: the echo is
    // the reply, four hops, with no rewrite in between. Then node-a
    // refuses the echo: that is why no reply came.
    let echo_once = || {
        let server = podtrace_tests::traffic::in_netns(&p3.netns, {
            let addr = std::net::SocketAddrV4::new(p3.ip, 9001);
            move || std::net::UdpSocket::bind(addr).expect("bind")
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            server
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            if let Ok((n, from)) = server.recv_from(&mut buf) {
                let _ = server.send_to(&buf[..n], from);
            }
        })
    };
    let udp_9001 = [
        "pod-1", "pod-3", "--proto", "udp", "--port", "9001", "-c", "1", "-W", "1s",
    ];
    let echo = echo_once();
    let (code, doc, err) = ping(&udp_9001);
    echo.join().expect("echo server");
    assert_eq!(code, 0, "{err}\n{doc:#}");
    assert_eq!(
        hops(&doc, 0),
        expected(&lab, "pod-1", "pod-3", "ens5"),
        "{doc:#}"
    );
    assert_eq!(doc["summary"]["path"], "direct", "{doc:#}");
    let refuse_echo = [
        "-I",
        "FORWARD",
        "-p",
        "udp",
        "--sport",
        "9001",
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-host-prohibited",
    ];
    netns_exec("node-a", &[&["iptables"], &refuse_echo[..]].concat());
    let echo = echo_once();
    let (code, doc, err) = ping(&udp_9001);
    echo.join().expect("echo server");
    assert_eq!(code, 1, "{err}\n{doc:#}");
    assert!(
        doc["summary"]["lost_at"].as_str().is_some_and(
            |w| w.starts_with("the reply was refused: host administratively prohibited from ")
        ),
        "{doc:#}"
    );

    // A REJECT on node-b answers a TCP probe with an ICMP error, which the
    // probe's raw socket never reads: the hooks saw it, and say so, with
    // the error's way back as the reply.
    let reject = [
        "-I",
        "FORWARD",
        "-d",
        &p3.ip.to_string(),
        "-p",
        "tcp",
        "--dport",
        "8080",
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-host-prohibited",
    ];
    netns_exec("node-b", &[&["iptables"], &reject[..]].concat());
    let (code, doc, err) = ping(&[
        "pod-1", "pod-3", "--proto", "tcp", "--port", "8080", "-c", "1", "-W", "500ms",
    ]);
    assert_eq!(code, 1, "{err}\n{doc:#}");
    let why = doc["summary"]["lost_at"].as_str().unwrap_or_default();
    // From node-b's ENI, named; and the kernel's drop of the SYN there
    // (a REJECT drops the packet it answers).
    assert!(
        why.starts_with(&format!(
            "host administratively prohibited from {} (node-b ens5); request dropped by the \
             kernel on node-b: NETFILTER_DROP",
            lab.node("node-b").enis[0].primary_ip
        )),
        "{doc:#}"
    );
    let error = &doc["probes"][0]["icmp_error"];
    assert_eq!(
        (&error["type"], &error["code"], &error["name"]),
        (
            &Value::from(3),
            &Value::from(10),
            &Value::from("host administratively prohibited")
        ),
        "{doc:#}"
    );
    let back = hops(&doc, 0);
    assert_eq!(
        back.last().map(String::as_str),
        Some(format!("node-a {} egress", lab.pod("pod-1").host_veth).as_str()),
        "the error reached the source pod: {back:?}"
    );

    // The same for echo probes, each with its own error: every probe of a
    // run has the same echo id, and an error is matched by its quoted seq.
    let reject_echo = [
        "-I",
        "FORWARD",
        "-d",
        &p3.ip.to_string(),
        "-p",
        "icmp",
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-admin-prohibited",
    ];
    netns_exec("node-b", &[&["iptables"], &reject_echo[..]].concat());
    let (code, doc, err) = ping(&["pod-1", "pod-3", "-c", "2", "-i", "0.3", "-W", "500ms"]);
    assert_eq!(code, 1, "{err}\n{doc:#}");
    for seq in 0..2 {
        let probe = &doc["probes"][seq];
        assert!(
            probe["reply"]
                .as_str()
                .is_some_and(|r| r.starts_with("administratively prohibited (filter) from ")),
            "{doc:#}"
        );
        let back = hops(&doc, seq);
        assert_eq!(
            back.len(),
            6,
            "3 hops out, 3 back for probe {seq}: {back:?}"
        );
    }

    // A RST made by a firewall is not the pod's: the kernel dropped the
    // SYN before pod-3, and ping says where. A closed port on the pod
    // itself, next to it, is still the pod's answer.
    let reset = [
        "-I",
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
    netns_exec("node-b", &[&["iptables"], &reset[..]].concat());
    let (code, doc, err) = ping(&[
        "pod-1", "pod-3", "--proto", "tcp", "--port", "8081", "-c", "1", "-W", "500ms",
    ]);
    assert_eq!(code, 0, "a RST is an answer: {err}\n{doc:#}");
    let reset = &doc["probes"][0]["reset_on_the_way"];
    assert_eq!(reset["pod"], "pod-3", "{doc:#}");
    assert_eq!(reset["syn_last_seen"], "node-b ens5 ingress", "{doc:#}");
    assert_eq!(reset["rst_first_seen"], "node-b ens5 egress", "{doc:#}");
    assert!(
        reset["syn_dropped"]
            .as_str()
            .is_some_and(|s| s.starts_with("NETFILTER_DROP in ") && s.ends_with(" on node-b")),
        "{doc:#}"
    );
    assert!(
        doc["summary"]["reset_on_the_way"].as_str().is_some_and(
            |s| s.starts_with("the SYN never reached pod-3: dropped by the kernel after ")
        ),
        "{doc:#}"
    );
    let (code, doc, err) = ping(&[
        "pod-1", "pod-3", "--proto", "tcp", "--port", "8082", "-c", "1", "-W", "500ms",
    ]);
    assert_eq!(code, 0, "{err}\n{doc:#}");
    assert!(
        doc["probes"][0]["reply"]
            .as_str()
            .is_some_and(|r| r.ends_with("(port 8082 closed)")),
        "{doc:#}"
    );
    assert!(
        doc["probes"][0].get("reset_on_the_way").is_none(),
        "{doc:#}"
    );
    assert!(doc["summary"].get("reset_on_the_way").is_none(), "{doc:#}");

    // The SYN-ACK carries no tag, yet its drop on the way back is the
    // probe's: pod-3 answered, and node-a threw the answer away. (Port
    // 8080 first gets its REJECT from above taken away.)
    netns_exec("node-b", &[&["iptables", "-D"], &reject[1..]].concat());
    let drop_syn_ack = [
        "-I",
        "FORWARD",
        "-s",
        &p3.ip.to_string(),
        "-p",
        "tcp",
        "--sport",
        "8080",
        "--tcp-flags",
        "SYN,ACK",
        "SYN,ACK",
        "-j",
        "DROP",
    ];
    let rule = IptablesRule::insert("node-a", &drop_syn_ack[1..]);
    let (code, doc, err) = ping(&[
        "pod-1", "pod-3", "--proto", "tcp", "--port", "8080", "-c", "1", "-W", "500ms",
    ]);
    drop(rule);
    assert_eq!(code, 1, "{err}\n{doc:#}");
    let dropped = &doc["probes"][0]["drop"];
    assert_eq!(
        (&dropped["leg"], &dropped["reason"], &dropped["node"]),
        (
            &Value::from("reply"),
            &Value::from("NETFILTER_DROP"),
            &Value::from("node-a")
        ),
        "{doc:#}"
    );
    assert!(
        dropped["packet"].as_str().is_some_and(|p| p
            .starts_with(&format!("tcp {}:8080 > ", p3.ip))
            && p.ends_with(" [S.]")),
        "{doc:#}"
    );
    // An ICMP error that answers the probe, dropped on its way back: the
    // error says what happened on node-b, the drop why nothing came.
    let refuse = [
        "-I",
        "FORWARD",
        "-d",
        &p3.ip.to_string(),
        "-p",
        "tcp",
        "--dport",
        "8083",
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-host-prohibited",
    ];
    let drop_error = [
        "-I",
        "FORWARD",
        "-p",
        "icmp",
        "--icmp-type",
        "host-prohibited",
        "-j",
        "DROP",
    ];
    let rules = [
        IptablesRule::insert("node-b", &refuse[1..]),
        IptablesRule::insert("node-a", &drop_error[1..]),
    ];
    let (code, doc, err) = ping(&[
        "pod-1", "pod-3", "--proto", "tcp", "--port", "8083", "-c", "1", "-W", "500ms",
    ]);
    drop(rules);
    assert_eq!(code, 1, "{err}\n{doc:#}");
    // Both: the REJECT's drop of the SYN on node-b, then the error's on
    // node-a.
    let dropped = &doc["probes"][0]["drop"];
    assert_eq!(
        (&dropped["leg"], &dropped["node"]),
        (&Value::from("request"), &Value::from("node-b")),
        "{doc:#}"
    );
    let answer = &doc["probes"][0]["answer_drop"];
    assert_eq!(
        (&answer["leg"], &answer["node"], &answer["packet"]),
        (
            &Value::from("reply"),
            &Value::from("node-a"),
            &Value::from(format!(
                "icmp {} > {} host administratively prohibited",
                lab.node("node-b").enis[0].primary_ip,
                lab.pod("pod-1").ip
            ))
        ),
        "{doc:#}"
    );
    assert!(
        doc["summary"]["lost_at"]
            .as_str()
            .is_some_and(|w| w.starts_with("host administratively prohibited from ")
                && w.contains("; request dropped by the kernel on node-b: NETFILTER_DROP")
                && w.contains("; reply dropped by the kernel on node-a: NETFILTER_DROP")),
        "{doc:#}"
    );

    // The same for the RST of a closed port.
    let drop_rst = [
        "-I",
        "FORWARD",
        "-s",
        &p3.ip.to_string(),
        "-p",
        "tcp",
        "--sport",
        "8082",
        "--tcp-flags",
        "RST",
        "RST",
        "-j",
        "DROP",
    ];
    let rule = IptablesRule::insert("node-a", &drop_rst[1..]);
    let (code, doc, err) = ping(&[
        "pod-1", "pod-3", "--proto", "tcp", "--port", "8082", "-c", "1", "-W", "500ms",
    ]);
    drop(rule);
    assert_eq!(code, 1, "{err}\n{doc:#}");
    let dropped = &doc["probes"][0]["drop"];
    assert_eq!(
        (&dropped["leg"], &dropped["reason"], &dropped["node"]),
        (
            &Value::from("reply"),
            &Value::from("NETFILTER_DROP"),
            &Value::from("node-a")
        ),
        "{doc:#}"
    );

    // Bad input: one clear line, exit 2, nothing attached.
    for (args, needle) in [
        (vec!["pod-9", "pod-3"], "pod \"pod-9\" not found"),
        (
            vec!["pod-3", "pod-1", "--netns", "node-a"],
            "pod-3 (192.168.2.11) runs on node-b, which is not traced here (node-a)",
        ),
        (
            vec!["192.168.1.99", "pod-1"],
            "192.168.1.99 is not a pod on a traced node (node-a, node-b): none of them",
        ),
        (vec!["pod-1", "nosuchpod"], "not found"),
        (
            vec!["pod-1", "pod-3", "--netns", "node-c"],
            "netns \"node-c\" does not exist",
        ),
        (
            vec!["pod-1", "pod-1"],
            "source and destination are the same",
        ),
        (
            vec!["pod-1", "pod-3", "--port", "8080"],
            "needs --proto tcp or udp",
        ),
        (vec!["pod-1", "fd00::1"], "is an IPv6 address"),
        (
            vec!["pod-1", "127.0.0.1"],
            "is not an address the probes can leave the pod for",
        ),
        (vec!["pod-1", "192.168.2.0/24"], "is a CIDR"),
        (
            vec!["pod-1", "pod-3", "--netns", "/proc/self/ns/mnt"],
            "is not a network namespace",
        ),
    ] {
        let (code, _, err) = ping(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.starts_with("podtrace: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(
            tracer::kernel::podtrace_links().is_empty(),
            "{args:?} left programs attached"
        );
    }
}

#[test]
fn not_root_is_one_line() {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(podtrace_bin())
        .args(["ping", "pod-1", "pod-3"])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs CAP_BPF and CAP_NET_ADMIN"), "{err}");
}
