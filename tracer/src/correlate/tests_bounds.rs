//! Tests of the engine's bounds and side inputs: eviction under a flood,
//! idle timeouts, TCP tuple reuse, kernel counters, conntrack, JSON.

use std::collections::BTreeMap;

use tracer_common::{FlowKey, FlowStats};

use super::{
    ConntrackInfo, Correlator, EndReason, Label, Update,
    testkit::{A, ENS5, IN, OUT, Pkt, Seen, VETH1, lab, run, snat_ping},
};

#[test]
fn flood_of_one_packet_flows_stays_bounded() {
    let cfg = super::Config {
        max_pending: 16,
        max_flows: 32,
        window_ns: 1_000_000,
        ..super::Config::default()
    };
    let topo = lab();
    let mut eng = Correlator::new(cfg);
    let mut seen = Seen::default();
    let n: u16 = 2000;
    for i in 0..n {
        // One packet per flow, 1 us apart: 1000 of them fit in the window,
        // so only the table bounds close them.
        let p = Pkt::udp("192.168.1.21", 10_000 + i, "203.0.113.10", 53).id(i);
        eng.push(&p.at(u64::from(i), A, VETH1, IN), &topo, |u| seen.take(u));
        let s = eng.stats();
        assert!(s.pending <= 16, "pending {} at {i}", s.pending);
        assert!(s.flows <= 32, "flows {} at {i}", s.flows);
        assert!(s.flow_aliases <= 32, "aliases {} at {i}", s.flow_aliases);
    }
    let s = eng.stats();
    assert_eq!(s.pending, 16);
    assert_eq!(s.pending_evicted, u64::from(n) - 16);
    eng.advance(10_000_000, |u| seen.take(u));
    let s = eng.stats();
    assert_eq!((s.pending, s.flows, s.journeys), (0, 32, u64::from(n)));
    assert_eq!(s.flows_evicted, u64::from(n) - 32);
    assert_eq!(seen.ended.len(), usize::from(n) - 32);
    assert!(seen.ended.iter().all(|(_, r)| *r == EndReason::Evicted));
    // Journeys cut short by eviction are never judged; the 16 that closed
    // by the window were (they left pod-1 and were seen nowhere else).
    assert_eq!(s.incomplete_journeys, 16);
    assert_eq!(
        seen.journeys.iter().filter(|j| j.evicted).count(),
        usize::from(n) - 16
    );
    // The survivors are the most recent flows.
    let mut live: Vec<u16> = eng.flows().map(|f| f.tuple.sport).collect();
    let mut each = Vec::new();
    eng.each_flow(|f| each.push(f.clone()));
    assert_eq!(each, eng.flows().collect::<Vec<_>>());
    live.sort_unstable();
    assert_eq!(live, (10_000 + n - 32..10_000 + n).collect::<Vec<_>>());
}

#[test]
fn a_settled_journey_closed_for_room_is_judged() {
    let cfg = super::Config {
        max_pending: 1,
        ..super::Config::default()
    };
    let lost = |sport, us| Pkt::udp("192.168.1.21", sport, "203.0.113.10", 53).at(us, A, VETH1, IN);
    // 20 ms apart (> settle_ns): the first had settled. 2 us apart: not.
    for (gap_us, judged) in [(20_000, true), (2, false)] {
        let (_, seen) = run(cfg, &[lost(1, 0), lost(2, gap_us)]);
        let first = &seen.journeys[0];
        assert_eq!(first.evicted, !judged);
        assert_eq!(first.incomplete.is_some(), judged);
        assert!(
            seen.journeys[1].incomplete.is_some(),
            "closed by the window"
        );
    }
}

#[test]
fn idle_flows_expire() {
    let p = Pkt::icmp("192.168.1.21", "203.0.113.10", 8, 1, 1);
    let (mut eng, mut seen) = run(super::Config::default(), &[p.at(0, A, VETH1, IN)]);
    assert_eq!(eng.stats().flows, 1);
    eng.advance(59_000_000_000, |u| seen.take(u));
    assert_eq!(eng.stats().flows, 1, "not idle yet");
    eng.advance(61_000_000_000, |u| seen.take(u));
    assert_eq!(eng.stats().flows, 0);
    assert_eq!(eng.stats().flows_expired, 1);
    assert_eq!(seen.ended.len(), 1);
    assert_eq!(seen.ended[0].1, EndReason::Idle);
}

#[test]
fn new_syn_on_same_tuple_is_a_new_flow() {
    let syn = |isn, id| Pkt::tcp("192.168.1.21", 40000, "203.0.113.10", 443, isn, 0x02).id(id);
    let pkts = [
        syn(1000, 1).at(0, A, VETH1, IN),
        syn(1000, 2).at(1_000, A, VETH1, IN), // retransmission: same flow
        syn(9000, 3).at(2_000, A, VETH1, IN), // new connection
    ];
    let (eng, seen) = run(super::Config::default(), &pkts);
    assert_eq!(eng.stats().flows_replaced, 1);
    assert_eq!(seen.ended.len(), 1);
    assert_eq!(seen.ended[0].0.request.packets, 2);
    assert_eq!(seen.ended[0].1, EndReason::Replaced);
    assert_eq!(eng.flows().count(), 1);
}

fn key(
    cookie: u64,
    ifindex: u32,
    dir: u8,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    ty: u8,
) -> FlowKey {
    FlowKey {
        netns_cookie: cookie,
        ifindex,
        src,
        dst,
        sport,
        dport: u16::from(ty) << 8,
        proto: 1,
        direction: dir,
        _pad: [0; 6],
    }
}

fn stats(packets: u64, last_ns: u64) -> FlowStats {
    FlowStats {
        packets,
        bytes: packets * 98,
        first_ns: 0,
        last_ns,
        tcp_flags: 0,
        _pad: 0,
    }
}

#[test]
fn kernel_counters_go_to_the_first_hop_of_each_direction() {
    let (mut eng, _) = run(super::Config::default(), &snat_ping());
    let (pod, node, far) = ([192, 168, 1, 21], [192, 168, 1, 5], [203, 0, 113, 10]);
    let mut m = BTreeMap::new();
    m.insert(
        key(A, VETH1, 0, pod, far, 4711, 8),
        stats(5, 30_000_000_000),
    );
    m.insert(key(A, ENS5, 1, node, far, 20946, 8), stats(5, 0)); // not an entry hop
    m.insert(key(A, ENS5, 0, far, node, 20946, 0), stats(4, 0));
    let mut updates = 0;
    let used =
        eng.merge_kernel_counters(&m, |u| updates += usize::from(matches!(u, Update::Flow(_))));
    assert_eq!((used, updates), (2, 2));
    let f = eng.flows().next().unwrap();
    assert_eq!(f.request.kernel.unwrap().packets, 5);
    assert_eq!(f.reply.kernel.unwrap().packets, 4);
    assert_eq!(
        f.last_ns, 30_000_000_000,
        "kernel progress keeps the flow alive"
    );

    let id = f.id;
    let t = f.tuple;
    let ct = ConntrackInfo {
        id: Some(81733),
        original: t,
        reply: t.reversed(),
        mark: 0,
    };
    assert!(eng.set_conntrack(id, ct.clone()));
    assert_eq!(eng.flow(id).unwrap().conntrack, Some(ct.clone()));
    assert!(!eng.set_conntrack(super::FlowId(999), ct));
}

/// A later journey that only a later hook saw moves the entry hop; the
/// counts it reads there, lower, do not replace the entry hook's.
#[test]
fn kernel_counters_do_not_go_down_when_the_entry_hop_moves() {
    let topo = super::testkit::lab();
    let (mut eng, _) = run(super::Config::default(), &snat_ping());
    let (pod, node, far) = ([192, 168, 1, 21], [192, 168, 1, 5], [203, 0, 113, 10]);
    let mut m = BTreeMap::new();
    m.insert(key(A, VETH1, 0, pod, far, 4711, 8), stats(7, 1));
    eng.merge_kernel_counters(&m, |_| {});
    // The next echo request seen at the ENI only.
    let req = Pkt::icmp("192.168.1.5", "203.0.113.10", 8, 20946, 2).id(301);
    eng.push(&req.ttl(63).at(5_000, A, ENS5, OUT), &topo, |_| {});
    eng.advance(1_000_000_000, |_| {});
    let mut m = BTreeMap::new();
    m.insert(key(A, ENS5, 1, node, far, 20946, 8), stats(6, 2));
    eng.merge_kernel_counters(&m, |_| {});
    let f = eng.flows().next().unwrap();
    assert_eq!(f.request.path.len(), 1, "the entry hop moved: {f:#?}");
    assert_eq!(f.request.kernel.unwrap().packets, 7);
}

#[test]
fn updates_serialize_to_json() {
    let req = Pkt::icmp("192.168.1.21", "203.0.113.10", 8, 4711, 1);
    let pkts = [
        req.at(0, A, VETH1, IN),
        req.src("192.168.1.5").sport(20946).at(15, A, ENS5, OUT),
    ];
    let (eng, seen) = run(super::Config::default(), &pkts);
    let f = eng.flows().next().unwrap();
    let v = serde_json::to_value(Update::Flow(&f)).unwrap();
    assert_eq!(v["type"], "flow");
    assert_eq!(v["labels"], serde_json::json!(["snat"]));
    assert_eq!(v["request"]["path"][1]["iface"], "ens5");
    assert_eq!(v["request"]["path"][1]["role"]["kind"], "eni");
    assert_eq!(v["request"]["rewrites"][0]["kind"], "snat");
    assert_eq!(v["egress_eni"]["node"], "node-a");
    let j = serde_json::to_value(Update::Journey(&seen.journeys[0])).unwrap();
    assert_eq!(j["type"], "journey");
    assert_eq!(j["hops"][0]["tuple"]["src"], "192.168.1.21");
    assert_eq!(j["icmp"]["seq"], 1);
    assert!(f.labels.contains(Label::Snat));
    let s = serde_json::to_value(eng.stats()).unwrap();
    assert_eq!(s["journeys"], 1);
}
