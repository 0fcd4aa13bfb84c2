//! Userspace cost per kernel event, against the target of issue 8: at least
//! 5 M events/s per core through decode and correlation at 100k flows, and
//! about 200 bytes of memory per tracked flow.
//!
//! - `decode`: [`decode::decode_record`] of ring buffer records, read
//!   from their bytes as `EventReader` does (Ethernet, IPv4, UDP, 64
//!   payload bytes, 128 captured).
//! - `correlate/<n>_flows`: [`Correlator::push`] of decoded packets.
//! - `decode_correlate/<n>_flows`: both, from the record bytes, as
//!   `podtrace trace` does per record (changed flows reported by id).
//!
//! Records are whole 304-byte `PacketEvent`s, back to back: the kernel now
//! cuts a record after its size class (176 bytes for these frames), so a
//! real ring holds these events in less memory than the bench does.
//!
//! Each packet is seen twice, at a pod veth and (SNATed) at an ENI, like the
//! engine's own bench (`correlate::bench`); flows take turns, one packet
//! each, so at 100k flows nothing stays in cache: the worst order there is.
//! Throughput is one element per event: criterion prints events/s, per
//! core, timed in the thread's CPU time (see [`timed`]).
//!
//! Also prints, once, `podtrace-bench: heap flows=N bytes=B` lines (the
//! engine's live heap after N flows, from a counting allocator) for
//! `cargo xtask bench`'s memory column.
//!
//! `cargo bench -p tracer --bench decode_correlate -- --quick`

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    net::Ipv4Addr,
    sync::atomic::{AtomicUsize, Ordering},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tracer::{
    correlate::{Config, Correlator},
    decode::{self, Packet},
    topology::{Iface, Role, Topology},
};

use common::timed;
use tracer_common::{Direction, EventKind, MAX_SNAPLEN, PacketEvent, reason};

/// Counts live heap bytes, so the bench can say what a flow costs.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const POD: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 21);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 5);
const PEER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const POD_VETH: u32 = 10;
const ENI: u32 = 2;
/// UDP payload bytes; the kernel copies 128 bytes of the 106-byte frame.
const PAYLOAD: usize = 64;
const ETH: usize = 14;
/// Offsets in a record's `data`: IP id and the first payload bytes.
const IP_ID: usize = ETH + 4;
const PAYLOAD_AT: usize = ETH + 20 + 8;
/// Kernel time between packets: 1 M packets/s.
const GAP_NS: u64 = 1_000;
/// Kernel time from the pod veth to the ENI.
const HOP_NS: u64 = 3_000;

/// One node: a pod veth and the primary ENI, in one namespace.
fn topology() -> Topology {
    let mut topo = Topology::default();
    let ifaces = [
        (
            ENI,
            "ens5",
            Role::Eni {
                index: Some(0),
                addrs: vec![NODE],
            },
        ),
        (
            POD_VETH,
            "eni-pod-1",
            Role::PodVeth {
                pod_ip: Some(POD),
                pod: Some("default/pod-1".into()),
            },
        ),
    ];
    for (ifindex, name, role) in ifaces {
        let iface = Iface {
            node: "node-a".into(),
            name: name.into(),
            ifindex,
            role,
        };
        topo.insert(1, iface);
    }
    topo
}

/// The ring buffer record of flow `flow`'s packet at one hook.
fn record(flow: u32, ifindex: u32, dir: Direction, src: Ipv4Addr) -> PacketEvent {
    let total = 20 + 8 + PAYLOAD;
    let mut data = [0u8; MAX_SNAPLEN];
    data[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    data[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    data[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut data[ETH..ETH + 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&PEER.octets());
    let udp = &mut data[ETH + 20..PAYLOAD_AT];
    let (sport, dport) = ports(flow);
    udp[..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    for (i, b) in data[PAYLOAD_AT..PAYLOAD_AT + PAYLOAD]
        .iter_mut()
        .enumerate()
    {
        *b = (flow as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    // Bytes 0-3 change with every packet (see `renew_record`); 4-7 make
    // payloads differ between flows.
    data[PAYLOAD_AT + 4..PAYLOAD_AT + 8].copy_from_slice(&flow.to_le_bytes());
    let len = (ETH + total) as u32;
    PacketEvent {
        kind: EventKind::Packet as u32,
        reason: reason::MATCH,
        ts_ns: 0,
        netns_cookie: 1,
        ifindex,
        direction: dir as u32,
        pkt_len: len,
        cap_len: len.min(128),
        mark: 0,
        l3_offset: ETH as u16,
        ethertype: 0x0800,
        data,
    }
}

/// Distinct ports per flow, up to 60k flows per destination port.
fn ports(flow: u32) -> (u16, u16) {
    ((flow % 60_000) as u16 + 1024, 53 + (flow / 60_000) as u16)
}

/// Records of one round: every flow's packet at the pod veth, then at the ENI.
fn records(flows: u32) -> Vec<PacketEvent> {
    (0..flows)
        .flat_map(|f| {
            [
                record(f, POD_VETH, Direction::Ingress, POD),
                record(f, ENI, Direction::Egress, NODE),
            ]
        })
        .collect()
}

/// Feeds events round after round: each round gives every packet a new
/// time, IP id and payload, as the next packet of its flow would have.
struct Feed<T> {
    events: Vec<T>,
    next: usize,
    round: u32,
}

impl<T> Feed<T> {
    fn new(events: Vec<T>) -> Self {
        Self {
            events,
            next: 0,
            round: 0,
        }
    }

    /// The next event, made the next packet of its flow by `renew`.
    fn next(&mut self, renew: impl FnOnce(&mut T, u64, u32)) -> &T {
        if self.next == self.events.len() {
            self.next = 0;
            self.round += 1;
        }
        let i = self.next;
        self.next += 1;
        let pair = (self.round as u64 * self.events.len() as u64 + i as u64) / 2;
        let ts = pair * GAP_NS + if i % 2 == 1 { HOP_NS } else { 0 };
        let ev = &mut self.events[i];
        renew(ev, ts, self.round);
        ev
    }
}

/// A record as the ring buffer holds it: bytes, not a typed value.
fn bytes_of(ev: &PacketEvent) -> &[u8] {
    // SAFETY: PacketEvent is plain data; viewed as its bytes.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(ev).cast(), size_of::<PacketEvent>()) }
}

/// Makes a record the next packet of its flow: time, IP id, payload.
fn renew_record(ev: &mut PacketEvent, ts: u64, round: u32) {
    ev.ts_ns = ts;
    ev.data[IP_ID..IP_ID + 2].copy_from_slice(&(round as u16).to_be_bytes());
    ev.data[PAYLOAD_AT..PAYLOAD_AT + 4].copy_from_slice(&round.to_le_bytes());
}

/// What [`renew_record`] does, on a decoded packet: the payload's hash
/// changes with the flow's ports and the round.
fn renew_packet(p: &mut Packet, ts: u64, round: u32) {
    p.ts_ns = ts;
    if let decode::L3::Ipv4 { id, .. } = &mut p.l3 {
        *id = round as u16;
    }
    if let decode::L4::Udp { sport, dport, .. } = p.l4 {
        let key = (u64::from(sport) << 48) | (u64::from(dport) << 32) | u64::from(round);
        p.payload_hash = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

fn engine() -> Correlator {
    // As the engine's own bench: room for every flow; and as `podtrace
    // trace` runs it, changed flows reported by id (`watch` asks for whole
    // flows, which costs about 15 % more per event at 100k flows).
    Correlator::new(Config {
        max_flows: 128 * 1024,
        changes_by_id: true,
        ..Config::default()
    })
}

/// An engine that has seen `rounds` packets of every one of `flows` flows.
fn warmed(flows: u32, rounds: u32, topo: &Topology) -> (Correlator, Feed<PacketEvent>) {
    let mut eng = engine();
    let mut feed = Feed::new(records(flows));
    for _ in 0..rounds * flows * 2 {
        let ev = feed.next(renew_record);
        let (p, _) = decode::decode_record(bytes_of(ev)).expect("synthetic records decode");
        eng.push(&p, topo, |u| {
            black_box(u);
        });
    }
    (eng, feed)
}

fn decode_only(c: &mut Criterion) {
    let mut feed = Feed::new(records(512));
    // Records as the ring buffer holds them: bytes, not typed values.
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("udp_64b", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                let ev = feed.next(renew_record);
                black_box(
                    decode::decode_record(black_box(bytes_of(ev)))
                        .expect("synthetic records decode"),
                );
            })
        });
    });
    g.finish();
}

fn correlate(c: &mut Criterion) {
    let topo = topology();
    for (label, flows) in [("1k_flows", 1_000), ("100k_flows", 100_000)] {
        // Past the journey window (200 ms of kernel time), so that flows
        // exist and journeys close as fast as they open.
        let (mut eng, mut raw) = warmed(flows, (300_000 / flows).max(2), &topo);
        let stats = eng.stats();
        assert_eq!(stats.flows, flows as usize, "every flow is tracked");
        let mut g = c.benchmark_group("correlate");
        g.throughput(Throughput::Elements(1));
        let decoded: Vec<Packet> = raw
            .events
            .iter()
            .map(|e| decode::decode(e).expect("synthetic records decode"))
            .collect();
        let mut feed = Feed {
            events: decoded,
            next: raw.next,
            round: raw.round,
        };
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    let p = feed.next(renew_packet);
                    eng.push(p, &topo, |u| {
                        black_box(u);
                    });
                })
            });
        });
        // Continue in kernel time where the decoded feed stopped, at a
        // packet's first hop: its second would hash its payload otherwise.
        if feed.next % 2 == 1 {
            let p = feed.next(renew_packet);
            eng.push(p, &topo, |u| {
                black_box(u);
            });
        }
        raw.next = feed.next;
        raw.round = feed.round;
        g.finish();
        let mut g = c.benchmark_group("decode_correlate");
        g.throughput(Throughput::Elements(1));
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    let ev = raw.next(renew_record);
                    let (p, _) = decode::decode_record(black_box(bytes_of(ev)))
                        .expect("synthetic records decode");
                    eng.push(&p, &topo, |u| {
                        black_box(u);
                    });
                })
            });
        });
        g.finish();
        let s = eng.stats();
        assert_eq!(s.flows, flows as usize, "no flow lost on the way");
        assert_eq!(s.incomplete_journeys, 0, "every packet's two hops joined");
    }
}

/// The engine's live heap after `flows` flows (pending journeys at their
/// steady state: the same number of events for every size).
fn heap(_: &mut Criterion) {
    let topo = topology();
    for flows in [1_000u32, 100_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let (eng, feed) = warmed(flows, 400_000 / flows, &topo);
        drop(feed);
        let bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
        println!("podtrace-bench: heap flows={flows} bytes={bytes}");
        drop(eng);
    }
}

criterion_group!(benches, heap, decode_only, correlate);
criterion_main!(benches);
