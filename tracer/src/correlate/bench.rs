//! Throughput of the engine at many flows, against the userspace target
//! of `docs/performance.md` (5 M events/s/core through decode and
//! correlation at 100k flows). Ignored by default; run it in release:
//! `cargo test --release -p tracer --lib correlate::bench -- --ignored --nocapture`.
//! Each packet is seen at a pod veth and, SNATed, at an ENI; a round sends
//! one packet (or a burst) per flow, flows in turn: no locality at all.

use std::{net::Ipv4Addr, time::Instant};

use tracer_common::{Direction, reason};

use super::{Config, Correlator, Update};
use crate::{
    decode::{HookId, L3, L4, Packet, fnv1a},
    topology::{Iface, Role, Topology},
};

fn packet(
    ts_ns: u64,
    ifindex: u32,
    dir: Direction,
    src: Ipv4Addr,
    ports: (u16, u16),
    id: u16,
    hash: u64,
) -> Packet {
    Packet {
        ts_ns,
        hook: HookId {
            netns_cookie: 1,
            ifindex,
            dir,
        },
        reason: reason::MATCH,
        len: 98,
        cap_len: 98,
        mark: 0,
        l3: L3::Ipv4 {
            src,
            dst: Ipv4Addr::new(203, 0, 113, 10),
            id,
            total_len: 84,
            ttl: 64,
            proto: 17,
            frag: 0,
        },
        l4: L4::Udp {
            sport: ports.0,
            dport: ports.1,
            ulen: 72,
            room: 72,
        },
        payload_hash: hash,
        probe: false,
        length: 64,
    }
}

fn run(flows: u32, rounds: u32, burst: u32) -> f64 {
    let (pod, node) = (
        Ipv4Addr::new(192, 168, 1, 21),
        Ipv4Addr::new(192, 168, 1, 5),
    );
    let mut topo = Topology::default();
    for (ifindex, name, role) in [
        (
            2,
            "ens5",
            Role::Eni {
                index: Some(0),
                addrs: vec![node],
            },
        ),
        (
            10,
            "eni-pod-1",
            Role::PodVeth {
                pod_ip: Some(pod),
                pod: Some("default/pod-1".into()),
            },
        ),
    ] {
        topo.insert(
            1,
            Iface {
                node: "node-a".into(),
                name: name.into(),
                ifindex,
                role,
            },
        );
    }
    let cfg = Config {
        max_flows: 128 * 1024,
        ..Config::default()
    };
    let mut eng = Correlator::new(cfg);
    let (mut events, mut journeys, mut ts) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    for r in 0..rounds {
        for f in 0..flows {
            let ports = ((f % 60_000) as u16, 53 + (f / 60_000) as u16);
            for b in 0..burst {
                // Each flow counts its own IP ids; payloads differ.
                let n = r * burst + b;
                let id = (f.wrapping_mul(2_654_435_761) >> 16).wrapping_add(n) as u16;
                let hash = fnv1a(&(u64::from(f) << 32 | u64::from(n)).to_le_bytes());
                ts += 1_000;
                let seen = [
                    packet(ts, 10, Direction::Ingress, pod, ports, id, hash),
                    packet(ts + 3_000, 2, Direction::Egress, node, ports, id, hash),
                ];
                for p in &seen {
                    eng.push(p, &topo, |u| {
                        journeys += u64::from(matches!(u, Update::Journey(_)))
                    });
                }
                events += 2;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eng.flush(|u| journeys += u64::from(matches!(u, Update::Journey(_))));
    let s = eng.stats();
    assert_eq!(
        journeys * 2,
        events,
        "every packet's two hops in one journey"
    );
    assert_eq!(s.incomplete_journeys, 0);
    assert_eq!(s.flows, flows as usize);
    let rate = events as f64 / secs / 1e6;
    eprintln!("{flows} flows, bursts of {burst}: {events} events, {rate:.2} M events/s");
    rate
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn throughput_at_many_flows() {
    run(100_000, 20, 1);
    run(100_000, 4, 5);
    run(1_000, 2_000, 1);
}
