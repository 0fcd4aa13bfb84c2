//! Scenario tests: the VPC CNI paths on the synthetic two-node lab.

use super::{
    Config, Expected, KernelDrop, Label, Labels, NatKind, Side,
    testkit::{A, B, ENS5, ENS6, IN, OUT, Pkt, VETH1, VETH2, cross_node_ping, ip, run, snat_ping},
};
use crate::decode::{L3, L4, Packet, Quote};

fn labels(l: &[Label]) -> Labels {
    l.iter().copied().collect()
}

fn names(j: &super::Journey) -> Vec<(String, String)> {
    j.hops
        .iter()
        .map(|h| (h.place.node.clone(), h.place.iface.clone()))
        .collect()
}

#[test]
fn direct_pod_to_pod_across_nodes_reusing_ifindex() {
    let (eng, seen) = run(Config::default(), &cross_node_ping());
    assert_eq!(seen.journeys.len(), 2, "{:#?}", seen.journeys);
    let (req, rep) = (&seen.journeys[0], &seen.journeys[1]);
    // Same ifindex 10 and 2 on both nodes, told apart by netns cookie.
    assert_eq!(
        names(req),
        [
            ("node-a".into(), "eni-pod-1".into()),
            ("node-a".into(), "ens5".into()),
            ("node-b".into(), "ens5".into()),
            ("node-b".into(), "eni-pod-3".into()),
        ]
    );
    assert_eq!(req.hops[3].since_first_ns, 41_000);
    assert_eq!(req.hops[1].ttl, 63, "TTL changes, journey holds");
    assert!(req.rewrites.is_empty() && rep.rewrites.is_empty());
    assert_eq!((req.side, rep.side), (Side::Request, Side::Reply));
    assert_eq!(req.flow, rep.flow);
    assert!(req.incomplete.is_none() && rep.incomplete.is_none());

    let flows = seen.last_flows();
    assert_eq!(flows.len(), 1);
    let f = &flows[0];
    assert_eq!(f.labels, labels(&[Label::Direct]));
    assert_eq!(f.client_pod.as_ref().unwrap().pod(), Some("default/pod-1"));
    assert_eq!(f.server_pod.as_ref().unwrap().pod(), Some("default/pod-3"));
    let eni = |e: &Option<super::Shared<super::Place>>| {
        let p = e.as_ref().unwrap();
        (p.node.clone(), p.iface.clone())
    };
    assert_eq!(eni(&f.egress_eni), ("node-a".into(), "ens5".into()));
    assert_eq!(eni(&f.ingress_eni), ("node-a".into(), "ens5".into()));
    assert_eq!((f.request.packets, f.reply.packets), (1, 1));
    assert_eq!(f.request.latency.veth_to_eni_ns, Some(11_000));
    assert_eq!(f.request.latency.eni_to_veth_ns, Some(7_000));
    assert_eq!(f.tuple.sport, 4711);
    assert_eq!(eng.stats().flows, 1);
    assert_eq!(eng.stats().journeys, 2);
}

#[test]
fn snat_rewriting_icmp_id_joins_request_and_reply() {
    let (_, seen) = run(Config::default(), &snat_ping());
    assert_eq!(seen.journeys.len(), 2);
    let (req, rep) = (&seen.journeys[0], &seen.journeys[1]);
    assert_eq!(
        req.hops.len(),
        2,
        "the id change does not split the journey"
    );
    assert_eq!(req.rewrites.len(), 1);
    let r = &req.rewrites[0];
    assert_eq!((r.kind, r.reverse, r.hop), (NatKind::Snat, false, 1));
    assert_eq!((r.at.iface.as_str(), r.dir), ("ens5", super::Dir::Egress));
    assert_eq!((r.before.src, r.before.sport), (ip("192.168.1.21"), 4711));
    assert_eq!((r.after.src, r.after.sport), (ip("192.168.1.5"), 20946));
    assert_eq!(rep.side, Side::Reply, "reply found through the NATed tuple");
    assert_eq!(rep.flow, req.flow);
    assert_eq!(rep.rewrites.len(), 1);
    assert_eq!(
        (rep.rewrites[0].kind, rep.rewrites[0].reverse),
        (NatKind::Snat, true)
    );
    assert!(req.incomplete.is_none(), "leaving the VPC is complete");

    let flows = seen.last_flows();
    assert_eq!(flows.len(), 1);
    let f = &flows[0];
    assert_eq!(f.labels, labels(&[Label::Snat]));
    assert_eq!((f.tuple.src, f.tuple.sport), (ip("192.168.1.21"), 4711));
    assert_eq!(f.egress_eni.as_ref().unwrap().iface, "ens5");
    assert_eq!((f.request.packets, f.reply.packets), (1, 1));
}

/// ClusterIP: kube-proxy DNAT at the first hop, un-DNAT of the reply
/// before the client's veth.
fn dnat_tcp() -> Vec<Packet> {
    let syn = Pkt::tcp("192.168.1.21", 40000, "10.100.0.10", 80, 1000, 0x02).id(7);
    let back = syn.dst("192.168.2.21").dport(8080).ttl(63);
    let mut synack = Pkt::tcp("192.168.2.21", 8080, "192.168.1.21", 40000, 5000, 0x12).id(8);
    synack.payload_hash = 99;
    vec![
        syn.at(0, A, VETH1, IN),
        back.at(20, A, ENS5, OUT),
        back.at(40, B, ENS5, IN),
        back.ttl(62).at(50, B, VETH1, OUT),
        synack.at(200, B, VETH1, IN),
        synack.ttl(63).at(210, B, ENS5, OUT),
        synack.ttl(63).at(230, A, ENS5, IN),
        synack
            .src("10.100.0.10")
            .sport(80)
            .ttl(62)
            .at(240, A, VETH1, OUT),
    ]
}

#[test]
fn dnat_service_to_backend_pod() {
    let (_, seen) = run(Config::default(), &dnat_tcp());
    let (req, rep) = (&seen.journeys[0], &seen.journeys[1]);
    assert_eq!(req.rewrites.len(), 1);
    assert_eq!(
        (req.rewrites[0].kind, req.rewrites[0].hop),
        (NatKind::Dnat, 1)
    );
    assert_eq!(req.rewrites[0].after.dport, 8080);
    assert_eq!(rep.side, Side::Reply);
    assert_eq!(rep.rewrites.len(), 1);
    let r = &rep.rewrites[0];
    assert_eq!((r.kind, r.reverse, r.hop), (NatKind::Dnat, true, 3));
    let flows = seen.last_flows();
    assert_eq!(flows.len(), 1);
    let f = &flows[0];
    assert_eq!(f.labels, labels(&[Label::Dnat]));
    assert_eq!((f.tuple.dst, f.tuple.dport), (ip("10.100.0.10"), 80));
    assert_eq!(f.server_pod.as_ref().unwrap().pod(), Some("default/pod-3"));
}

/// A VPC host reaches pod-2 (an ens6 IP) through ens6; without its
/// `ip rule 1536` the reply leaves through the main table: ens5.
fn inbound_to_ens6_pod(reply_eni: u32) -> Vec<Packet> {
    let req = Pkt::tcp("10.0.5.50", 51000, "192.168.1.31", 443, 77, 0x02).id(1);
    let rep = Pkt::tcp("192.168.1.31", 443, "10.0.5.50", 51000, 88, 0x12).id(2);
    vec![
        req.at(0, A, ENS6, IN),
        req.ttl(63).at(9, A, VETH2, OUT),
        rep.at(50, A, VETH2, IN),
        rep.ttl(63).at(58, A, reply_eni, OUT),
    ]
}

#[test]
fn asymmetric_eni_only_when_reply_takes_another_eni() {
    let (_, seen) = run(Config::default(), &inbound_to_ens6_pod(ENS5));
    let f = &seen.last_flows()[0];
    assert_eq!(f.labels, labels(&[Label::Direct, Label::AsymmetricEni]));
    assert_eq!(f.ingress_eni.as_ref().unwrap().iface, "ens6");
    assert_eq!(f.egress_eni.as_ref().unwrap().iface, "ens5");
    assert_eq!(f.server_pod.as_ref().unwrap().pod(), Some("default/pod-2"));
    assert!(f.client_pod.is_none());
    // The ENI line names one node's ENIs; this one says where they part.
    assert_eq!(
        super::format::asymmetry(f).as_deref(),
        Some("node-a: request in by ens6 (ENI 1), reply out by ens5 (ENI 0)")
    );
    assert!(
        super::format::flow(f).contains("\n  ENI      asymmetric on node-a: request in by ens6"),
        "{}",
        super::format::flow(f)
    );

    let (_, seen) = run(Config::default(), &inbound_to_ens6_pod(ENS6));
    let f = &seen.last_flows()[0];
    assert_eq!(f.labels, labels(&[Label::Direct]));
}

#[test]
fn incomplete_names_last_hop_and_expected_next() {
    // Lost inside node-b, between its ENI and pod-3's veth.
    let mut pkts = cross_node_ping();
    pkts.truncate(3);
    let (_, seen) = run(Config::default(), &pkts);
    let j = &seen.journeys[0];
    let inc = j.incomplete.as_ref().expect("incomplete");
    assert_eq!(inc.last_seen.place.node, "node-b");
    assert_eq!(inc.last_seen.place.iface, "ens5");
    match &inc.expected {
        Expected::PodVethEgress { place } => assert_eq!(place.iface, "eni-pod-3"),
        e => panic!("unexpected {e:?}"),
    }
    let f = &seen.last_flows()[0];
    assert_eq!(f.labels, labels(&[Label::Direct, Label::Incomplete]));
    assert_eq!(f.request.incomplete_packets, 1);

    // Left node-a through ens5, never reached node-b.
    let (_, seen) = run(Config::default(), &cross_node_ping()[..2]);
    let inc = seen.journeys[0].incomplete.clone().expect("incomplete");
    assert_eq!(
        inc.expected,
        Expected::EniIngress {
            node: "node-b".into()
        }
    );

    // Left the pod, seen nowhere else.
    let pkt = Pkt::udp("192.168.1.21", 5000, "203.0.113.10", 53).at(0, A, VETH1, IN);
    let (eng, seen) = run(Config::default(), &[pkt]);
    let inc = seen.journeys[0].incomplete.clone().expect("incomplete");
    assert_eq!(
        inc.expected,
        Expected::EniOrPodVethEgress {
            node: "node-a".into()
        }
    );
    assert_eq!(eng.stats().incomplete_journeys, 1);
}

#[test]
fn lost_reply_to_snat_is_expected_at_the_client_veth() {
    // The reply reached node-a's ENI, addressed to the node: the reverse
    // SNAT should have taken it to pod-1's veth.
    let (_, seen) = run(Config::default(), &snat_ping()[..3]);
    let reply = &seen.journeys[1];
    assert_eq!(reply.side, Side::Reply);
    match &reply.incomplete.as_ref().expect("incomplete").expected {
        Expected::PodVethEgress { place } => assert_eq!(place.iface, "eni-pod-1"),
        e => panic!("unexpected {e:?}"),
    }
    assert_eq!(
        seen.last_flows()[0].labels,
        labels(&[Label::Snat, Label::Incomplete])
    );
}

#[test]
fn repeated_journeys_update_times_and_outcome() {
    // Four pings on one path: the third's reply is lost on node-a.
    let mut pkts = Vec::new();
    for seq in 0..4u16 {
        let t0 = u64::from(seq) * 1_000;
        let req = Pkt::icmp("192.168.1.21", "203.0.113.10", 8, 4711, seq).id(300 + seq);
        let rep = Pkt::icmp("203.0.113.10", "192.168.1.5", 0, 20946, seq).id(900 + seq);
        pkts.push(req.at(t0, A, VETH1, IN));
        pkts.push(
            req.src("192.168.1.5")
                .sport(20946)
                .at(t0 + 15 + u64::from(seq), A, ENS5, OUT),
        );
        pkts.push(rep.at(t0 + 500, A, ENS5, IN));
        if seq != 2 {
            pkts.push(
                rep.dst("192.168.1.21")
                    .dport(4711)
                    .at(t0 + 512, A, VETH1, OUT),
            );
        }
    }
    let (_, seen) = run(Config::default(), &pkts);
    // Each journey is followed by its flow's update: the states after replies.
    let states: Vec<_> = (seen.journeys.iter().zip(&seen.flows))
        .filter(|(j, _)| j.side == Side::Reply)
        .map(|(_, f)| f)
        .collect();
    let incomplete: Vec<bool> = states
        .iter()
        .map(|f| f.labels.contains(Label::Incomplete))
        .collect();
    assert_eq!(incomplete, [false, false, true, false]);
    let last = states.last().unwrap();
    assert_eq!((last.request.packets, last.reply.packets), (4, 4));
    assert_eq!(last.reply.incomplete_packets, 1);
    assert!(last.reply.incomplete.is_none());
    assert_eq!(
        last.request.path[1].ts_ns, 3_018_000,
        "latest journey's times"
    );
    assert_eq!(last.request.latency.veth_to_eni_ns, Some(18_000));
    assert_eq!(last.labels, labels(&[Label::Snat]));
    assert_eq!(last.reply.path.len(), 2);
}

#[test]
fn complete_journeys_are_not_incomplete() {
    // To the node's own address: delivered locally after the veth.
    let local = Pkt::udp("192.168.1.21", 5000, "192.168.1.5", 10250).at(0, A, VETH1, IN);
    // Sampled: the next hook had no reason to report it too.
    let mut sampled = Pkt::udp("192.168.1.21", 5001, "203.0.113.10", 53);
    sampled.reason = tracer_common::reason::SAMPLED;
    let (eng, seen) = run(Config::default(), &[local, sampled.at(5, A, VETH1, IN)]);
    assert_eq!(seen.journeys.len(), 2);
    assert_eq!(eng.stats().incomplete_journeys, 0);
    assert!(
        seen.last_flows()
            .iter()
            .all(|f| !f.labels.contains(Label::Incomplete))
    );

    // A filter could hide the packet after NAT: only probes are judged.
    let cfg = Config {
        complete_reports: false,
        ..Config::default()
    };
    let mut probe = Pkt::udp("192.168.1.21", 5002, "203.0.113.10", 53).id(2);
    probe.probe = true;
    let plain = Pkt::udp("192.168.1.21", 5003, "203.0.113.10", 53).id(3);
    let (eng, seen) = run(cfg, &[probe.at(0, A, VETH1, IN), plain.at(1, A, VETH1, IN)]);
    assert_eq!(eng.stats().incomplete_journeys, 1);
    assert!(
        seen.journeys
            .iter()
            .all(|j| j.incomplete.is_some() == j.probe)
    );
}

#[test]
fn out_of_order_within_window() {
    let mut pkts = snat_ping();
    pkts.swap(0, 1); // the ENI's CPU was drained first
    pkts.swap(2, 3);
    let (eng, seen) = run(Config::default(), &pkts);
    assert_eq!(seen.journeys.len(), 2);
    let req = &seen.journeys[0];
    assert_eq!(
        req.hops[0].place.iface, "eni-pod-1",
        "ordered by kernel time"
    );
    assert_eq!(req.first_ns, 0);
    let r = &req.rewrites[0];
    assert_eq!(
        (r.kind, r.before.src, r.after.src),
        (NatKind::Snat, ip("192.168.1.21"), ip("192.168.1.5"))
    );
    assert_eq!(eng.stats().late, 0);
    assert_eq!(seen.last_flows()[0].labels, labels(&[Label::Snat]));

    // Later than the window: counted, and the journey splits.
    let cfg = Config {
        window_ns: 5_000,
        ..Config::default()
    };
    let base = Pkt::udp("192.168.1.21", 5000, "203.0.113.10", 53);
    let other = base.id(77);
    let late = [
        base.at(0, A, VETH1, IN),
        other.at(100, A, VETH1, IN),
        base.at(1, A, ENS5, OUT),
    ];
    let (eng, seen) = run(cfg, &late);
    assert_eq!(eng.stats().late, 1);
    assert_eq!(seen.journeys.len(), 3);
}

#[test]
fn same_hook_twice_starts_a_new_journey_and_hops_are_bounded() {
    let p = Pkt::udp("192.168.1.21", 5000, "192.168.2.21", 53).id(0);
    let pkts = [
        p.at(0, A, VETH1, IN),
        p.at(10, A, ENS5, OUT),
        p.at(20, A, VETH1, IN),
    ];
    let (eng, seen) = run(Config::default(), &pkts);
    assert_eq!(seen.journeys.len(), 2);
    assert_eq!(seen.journeys[0].hops.len(), 2);
    assert_eq!(seen.journeys[1].hops.len(), 1);
    assert_eq!(eng.stats().repeated_hook, 1);

    let extra = 3;
    let many: Vec<Packet> = (0..super::MAX_HOPS as u32 + extra)
        .map(|i| p.at(u64::from(i), B, 100 + i, OUT))
        .collect();
    let (eng, seen) = run(Config::default(), &many);
    assert_eq!(seen.journeys.len(), 1);
    assert_eq!(seen.journeys[0].hops.len(), super::MAX_HOPS);
    assert_eq!(eng.stats().hop_overflow, u64::from(extra));
    assert_eq!(
        seen.journeys[0].hops[0].place.role,
        super::PlaceRole::Unknown
    );
}

#[test]
fn look_alike_packets_of_two_flows_stay_apart() {
    // Same IP id, length and payload: only the ports tell them apart, and
    // the ports are what NAT may change.
    let one = Pkt::udp("192.168.1.21", 5000, "203.0.113.10", 53).id(0);
    let two = one.sport(5001);
    let nat = |p: Pkt, port| p.src("192.168.1.5").sport(port);
    // SNAT keeping the ports: the later twin overtakes, continuity decides.
    let kept = [
        one.at(0, A, VETH1, IN),
        two.at(1, A, VETH1, IN),
        nat(two, 5001).at(2, A, ENS5, OUT),
        nat(one, 5000).at(3, A, ENS5, OUT),
    ];
    // `--random-fully`: nothing to tell them apart, first in first out.
    let random = [
        one.at(0, A, VETH1, IN),
        two.at(1, A, VETH1, IN),
        nat(one, 30001).at(2, A, ENS5, OUT),
        nat(two, 30002).at(3, A, ENS5, OUT),
    ];
    for (pkts, ports) in [(kept, [5000, 5001]), (random, [30001, 30002])] {
        let (eng, seen) = run(Config::default(), &pkts);
        assert_eq!(seen.journeys.len(), 2, "{:#?}", seen.journeys);
        for (j, (sport, nat_port)) in seen
            .journeys
            .iter()
            .zip([(5000, ports[0]), (5001, ports[1])])
        {
            assert_eq!(j.hops.len(), 2);
            assert_eq!(j.hops[0].tuple.sport, sport);
            assert_eq!(j.hops[1].tuple.sport, nat_port);
        }
        assert_eq!(eng.stats().repeated_hook, 1, "the twin at the same veth");
        assert_eq!(seen.last_flows().len(), 2);
    }
}

#[test]
fn multicast_is_not_a_journey() {
    // An IGMP join from the VPC router reaches both nodes' ENIs: one
    // datagram, two hooks, no path to tell and no rewrite to invent.
    let join = Pkt::udp("192.168.1.1", 0, "224.0.0.22", 0);
    let pkts = [join.at(0, A, ENS6, IN), join.at(30, B, ENS5, IN)];
    let (eng, seen) = run(Config::default(), &pkts);
    assert!(
        seen.journeys.is_empty() && seen.flows.is_empty(),
        "{seen:#?}"
    );
    assert_eq!(eng.stats().ignored, 2);
}

#[test]
fn changes_by_id_name_the_flows_whole_updates_would_show() {
    for events in [cross_node_ping(), snat_ping()] {
        let (_, whole) = run(Config::default(), &events);
        let (eng, by_id) = run(
            Config {
                changes_by_id: true,
                ..Config::default()
            },
            &events,
        );
        assert!(by_id.flows.is_empty(), "no whole flow is built");
        let ids: Vec<_> = whole.flows.iter().map(|f| f.id).collect();
        assert_eq!(by_id.changed, ids, "one change per whole update, in order");
        for f in whole.last_flows() {
            assert_eq!(
                eng.flow(f.id).as_ref(),
                Some(&f),
                "read back, the same flow"
            );
        }
        assert_eq!(by_id.journeys.len(), whole.journeys.len());
    }
}

/// pod-1 sends a UDP datagram to 203.0.113.10:53, SNATed to node-a's IP;
/// the host answers port unreachable to node-a, and conntrack undoes the
/// SNAT on the error (and on the datagram it quotes) before pod-1's veth.
fn udp_refused_after_snat() -> Vec<Packet> {
    let req = Pkt::udp("192.168.1.21", 40000, "203.0.113.10", 53).id(500);
    let err = Pkt::icmp("203.0.113.10", "192.168.1.5", 3, 0, 0).id(77);
    let quoting = |p: Pkt, src: &str, sport| Pkt {
        l4: L4::IcmpError {
            ty: 3,
            code: 3,
            mtu: 0,
            quote: Quote {
                src: ip(src),
                dst: ip("203.0.113.10"),
                proto: 17,
                sport,
                dport: 53,
                seq: 0,
            },
        },
        ..p
    };
    vec![
        req.at(0, A, VETH1, IN),
        req.src("192.168.1.5")
            .sport(31000)
            .ttl(63)
            .at(15, A, ENS5, OUT),
        quoting(err, "192.168.1.5", 31000).at(900, A, ENS5, IN),
        quoting(err.dst("192.168.1.21").ttl(63), "192.168.1.21", 40000).at(910, A, VETH1, OUT),
    ]
}

#[test]
fn an_icmp_error_joins_the_flow_it_quotes_across_snat() {
    let (eng, seen) = run(Config::default(), &udp_refused_after_snat());
    assert_eq!(seen.journeys.len(), 2, "{:#?}", seen.journeys);
    let (req, err) = (&seen.journeys[0], &seen.journeys[1]);
    assert_eq!(err.hops.len(), 2, "one error, seen at two hooks");
    assert_eq!(
        err.flow, req.flow,
        "the error belongs to the datagram's flow"
    );
    assert_eq!(err.side, Side::Reply, "it went the reply's way");
    assert_eq!(
        err.quote.map(|q| q.sport),
        Some(31000),
        "quoted at its first hop"
    );
    assert_eq!(
        err.rewrites
            .iter()
            .map(|r| (r.kind, r.reverse))
            .collect::<Vec<_>>(),
        [(NatKind::Snat, true)],
    );

    let flows = seen.last_flows();
    assert_eq!(flows.len(), 1, "no flow of its own: {flows:#?}");
    let f = &flows[0];
    assert_eq!(f.labels, labels(&[Label::Snat, Label::IcmpError]));
    assert_eq!((f.request.packets, f.reply.packets), (1, 0));
    let e = f.icmp_error.as_ref().expect("the error is on the flow");
    assert_eq!((e.ty, e.code, e.name), (3, 3, "port unreachable"));
    assert_eq!(
        (e.from, e.answers, e.packets),
        (ip("203.0.113.10"), Side::Request, 1)
    );
    assert_eq!(e.path.len(), 2);
    assert!(
        super::format::flow(f).contains(
            "  error    icmp port unreachable from 203.0.113.10: node-a ens5 (ENI 0) > pod-1 veth\n"
        ),
        "{}",
        super::format::flow(f)
    );
    assert_eq!(eng.stats().flows, 1);
}

#[test]
fn an_icmp_error_about_an_unseen_packet_is_a_flow_of_its_own() {
    let packets = udp_refused_after_snat();
    let (_, seen) = run(Config::default(), &packets[2..]);
    let flows = seen.last_flows();
    assert_eq!(flows.len(), 1);
    let f = &flows[0];
    assert_eq!(f.tuple.proto, 1);
    assert!(f.request.path.is_empty(), "the error is the flow's reply");
    assert_eq!(
        f.labels,
        labels(&[Label::Snat, Label::IcmpError]),
        "conntrack undid a SNAT on it"
    );
    let e = f.icmp_error.as_ref().expect("it says what it answers");
    assert!(e.quote_unseen);
    assert_eq!((e.quote.src, e.quote.sport), (ip("192.168.1.5"), 31000));
    assert!(
        super::format::flow(f).contains(
            "  error    icmp port unreachable from 203.0.113.10, about udp \
             192.168.1.5:31000 > 203.0.113.10:53, which podtrace did not see (not traced here, or filtered out)\n"
        ),
        "{}",
        super::format::flow(f)
    );
}

/// An error of another kind starts its count again; the sender is named
/// when it is a traced node or pod; a "fragmentation needed" gives the MTU.
#[test]
fn icmp_errors_name_their_kind_sender_and_mtu() {
    let mut packets = udp_refused_after_snat();
    let mut frag = packets[2];
    frag.ts_ns += 1_000_000;
    frag.l3 = match frag.l3 {
        L3::Ipv4 { dst, .. } => L3::Ipv4 {
            src: ip("192.168.1.6"),
            dst,
            id: 78,
            total_len: 84,
            ttl: 64,
            proto: 1,
            frag: 0,
        },
        l3 => l3,
    };
    if let L4::IcmpError { quote, .. } = frag.l4 {
        frag.l4 = L4::IcmpError {
            ty: 3,
            code: 4,
            mtu: 1400,
            quote,
        };
    }
    packets.push(frag);
    let (_, seen) = run(Config::default(), &packets);
    let f = &seen.last_flows()[0];
    let e = f.icmp_error.as_ref().unwrap();
    assert_eq!(
        (e.name, e.mtu, e.packets),
        ("fragmentation needed", Some(1400), 1)
    );
    assert_eq!(
        super::format::icmp_error(e),
        "icmp fragmentation needed (mtu 1400) from 192.168.1.6 (node-a ens6): node-a ens5 (ENI 0)"
    );
}

/// An error sent to someone else than the quoted packet's sender is not
/// that packet's answer.
#[test]
fn an_icmp_error_to_another_host_is_not_linked() {
    let mut packets = udp_refused_after_snat();
    for p in &mut packets[2..] {
        if let L3::Ipv4 { dst, .. } = &mut p.l3 {
            *dst = ip("192.168.1.31");
        }
    }
    let (_, seen) = run(Config::default(), &packets);
    let flows = seen.last_flows();
    assert_eq!(flows.len(), 2, "{flows:#?}");
    assert!(flows[0].icmp_error.is_none());
}

/// Errors of one kind add up; the line says how many.
#[test]
fn icmp_errors_of_one_kind_are_counted() {
    let mut packets = udp_refused_after_snat();
    let again: Vec<Packet> = packets[2..]
        .iter()
        .map(|p| {
            let mut p = *p;
            p.ts_ns += 2_000_000;
            if let L3::Ipv4 { id, .. } = &mut p.l3 {
                *id += 1;
            }
            p
        })
        .collect();
    packets.extend(again);
    let (_, seen) = run(Config::default(), &packets);
    let e = seen.last_flows()[0].icmp_error.clone().unwrap();
    assert_eq!(e.packets, 2);
    assert!(
        super::format::icmp_error(&e)
            .starts_with("icmp port unreachable from 203.0.113.10, 2 times:"),
        "{}",
        super::format::icmp_error(&e)
    );
}

#[test]
fn a_kernel_drop_is_filed_with_its_flow_by_any_hops_addresses() {
    // The request was SNATed at node-a's ENI: the drop beyond it has the
    // rewritten source, and still belongs to the flow.
    let packets = udp_refused_after_snat();
    let (mut eng, mut seen) = run(Config::default(), &packets[..2]);
    let drop = |reason: &str| KernelDrop {
        side: Side::Reply,
        reason: reason.into(),
        code: 9,
        at: Some("nft_do_chain+0x3e8".into()),
        node: Some("node-a".into()),
        iface: Some("ens5".into()),
        packet: "udp 192.168.1.5:31000 > 203.0.113.10:53".into(),
        tuple: Default::default(),
        packets: 0,
        ts_ns: 20,
    };
    let beyond_snat = Pkt::udp("192.168.1.5", 31000, "203.0.113.10", 53)
        .id(500)
        .at(20, A, ENS5, OUT);
    assert!(eng.note_drop(&beyond_snat, &drop("NETFILTER_DROP"), |u| seen.take(u)));
    assert!(eng.note_drop(&beyond_snat, &drop("NETFILTER_DROP"), |u| seen.take(u)));
    let f = seen.last_flows().pop().expect("the flow");
    assert_eq!(f.labels, labels(&[Label::Snat, Label::Dropped]));
    let d = f.drop.as_ref().expect("the drop is on the flow");
    assert_eq!((d.side, d.packets), (Side::Request, 2), "{d:?}");
    assert!(
        super::format::flow(&f).contains(
            "  dropped  request by the kernel on node-a (ens5): NETFILTER_DROP in \
             nft_do_chain+0x3e8 (an iptables or nftables rule): udp 192.168.1.5:31000 > \
             203.0.113.10:53 (2 packets like it)\n"
        ),
        "{}",
        super::format::flow(&f)
    );
    // A packet of no known flow is not filed.
    let other = Pkt::udp("192.168.1.21", 40001, "203.0.113.10", 53).at(30, A, VETH1, IN);
    assert!(!eng.note_drop(&other, &drop("NETFILTER_DROP"), |u| seen.take(u)));
    // Another reason starts the count again.
    assert!(eng.note_drop(&beyond_snat, &drop("IP_RPFILTER"), |u| seen.take(u)));
    let f = seen.last_flows().pop().expect("the flow");
    let d = f.drop.as_ref().expect("the drop");
    assert_eq!((d.reason.as_str(), d.packets), ("IP_RPFILTER", 1));
    // A dropped ICMP error about the flow's request is the flow's, on the
    // reply's side, found by what it quotes. Right after the request's
    // drop it is that drop's answer (a REJECT's error), and the request's
    // stays the flow's story; later, it is news.
    let err = &packets[2];
    assert!(eng.note_drop(err, &drop("NETFILTER_DROP"), |u| seen.take(u)));
    let f = seen.last_flows().pop().expect("the flow");
    assert_eq!(
        f.drop.as_ref().map(|d| (d.side, d.reason.as_str())),
        Some((Side::Request, "IP_RPFILTER"))
    );
    let later = KernelDrop {
        ts_ns: 2_000_000_000,
        ..drop("NETFILTER_DROP")
    };
    assert!(eng.note_drop(err, &later, |u| seen.take(u)));
    let f = seen.last_flows().pop().expect("the flow");
    assert_eq!(f.drop.as_ref().map(|d| d.side), Some(Side::Reply));
}

#[test]
fn a_drop_after_a_dnat_no_hook_saw_waits_for_its_journey() {
    // A service call, seen leaving the pod; DNAT then sent it to a
    // backend, and the kernel dropped it before any hook saw it again.
    let topo = super::testkit::lab();
    let cfg = Config::default();
    let mut eng = super::Correlator::new(cfg);
    let mut seen = super::testkit::Seen::default();
    let req = Pkt::udp("192.168.1.21", 40000, "10.100.0.10", 53).id(700);
    eng.push(&req.at(0, A, VETH1, IN), &topo, |u| seen.take(u));
    let dropped = req.dst("192.168.2.21").dport(5353).at(30, A, VETH1, IN);
    let drop = KernelDrop {
        side: Side::Reply,
        reason: "NETFILTER_DROP".into(),
        code: 9,
        at: None,
        node: Some("node-a".into()),
        iface: None,
        packet: "udp 192.168.1.21:40000 > 192.168.2.21:5353".into(),
        tuple: Default::default(),
        packets: 0,
        ts_ns: 30,
    };
    assert!(
        eng.note_drop(&dropped, &drop, |u| seen.take(u)),
        "taken, to be filed when its journey closes"
    );
    eng.advance(cfg.window_ns + 1_000_000, |u| seen.take(u));
    let f = seen.last_flows().pop().expect("the flow");
    assert_eq!(f.tuple.dst, ip("10.100.0.10"));
    assert!(
        f.labels.contains(Label::Dnat)
            && f.labels.contains(Label::Dropped)
            && !f.labels.contains(Label::Direct),
        "the drop shows the DNAT no hook saw: {:?}",
        f.labels.iter().collect::<Vec<_>>()
    );
    let d = f.drop.as_ref().expect("filed at the journey's close");
    assert_eq!((d.side, d.packets), (Side::Request, 1));
    // The flow's first line names the backend the dropped packet was
    // sent to.
    let first = super::format::flow(&f);
    let first = first.lines().next().unwrap_or_default();
    assert!(
        first.contains("10.100.0.10:53 => 192.168.2.21:5353"),
        "{first}"
    );
    // A packet that matches no journey and no flow is not taken.
    let stranger = Pkt::udp("192.168.1.21", 40002, "192.168.2.21", 5353)
        .id(701)
        .at(500_000, A, VETH1, IN);
    assert!(!eng.note_drop(&stranger, &drop, |u| seen.take(u)));
}

#[test]
fn a_shorter_journey_from_partial_reports_keeps_the_flows_path() {
    // A second echo of the same ping, seen at three hooks of four: in
    // flows mode each hook reports a flow's first packets on its own.
    let mut packets = cross_node_ping();
    let req = Pkt::icmp("192.168.1.21", "192.168.2.21", 8, 4711, 2).id(101);
    packets.extend([
        req.at(5_000, A, VETH1, IN),
        req.ttl(63).at(5_034, B, ENS5, IN),
        req.ttl(62).at(5_041, B, VETH1, OUT),
    ]);
    let path_len = |cfg| {
        let (_, seen) = run(cfg, &packets);
        seen.last_flows()[0].request.path.len()
    };
    let flows_mode = Config {
        complete_reports: false,
        ..Config::default()
    };
    assert_eq!(path_len(flows_mode), 4, "the longer path stays");
    // Where every hook reports every packet, the latest journey is the
    // path, short or not (it stopped short).
    assert_eq!(path_len(Config::default()), 3);
}
