//! What `podtrace capture` costs per printed event, per core: formatting
//! decoded packets as JSON lines (`--json`) or text lines, and writing them.
//!
//! - `<mode>/vec`: formatting into a `Vec` that is cleared every 4096 events
//!   (the bytes are really written, no syscall);
//! - `<mode>/sink_lineout_64k`: into `capture`'s 64 KiB [`LineOut`] over
//!   [`std::io::sink`]: formatting and buffering, no syscall;
//! - `<mode>/devnull_line_buffered`: `write_*_line` to `/dev/null` through
//!   a `LineWriter`, which is what Rust's stdout is: one `write(2)` per
//!   event, as `capture` printed before;
//! - `<mode>/devnull_lineout_64k`: to `/dev/null` through a 64 KiB
//!   [`LineOut`], as `capture` prints now: one `write(2)` per 64 KiB.
//!
//! The packets are a mix seen at a pod veth and at an ENI: UDP, TCP and
//! ICMP. Throughput is one element per event, timed in the thread's CPU
//! time (user and system), so criterion's elements/s are events/s per core.
//!
//! `cargo bench -p tracer --bench capture_output -- --quick`

mod common;

use std::{
    fs::File,
    hint::black_box,
    io::{LineWriter, Write},
    net::Ipv4Addr,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tracer::{
    decode::{HookId, L3, L4, Packet},
    output::{self, Clock, LineOut},
    topology::{Iface, Role, Topology},
};

use common::timed;
use tracer_common::Direction;

const POD_VETH: u32 = 10;
const ENI: u32 = 2;
const COOKIE: u64 = 4096;

fn topology() -> Topology {
    let mut t = Topology::default();
    t.insert(
        COOKIE,
        Iface {
            node: "node-a".into(),
            name: "eni3b1f0a9c2d4".into(),
            ifindex: POD_VETH,
            role: Role::PodVeth {
                pod_ip: Some(Ipv4Addr::new(192, 168, 1, 21)),
                pod: Some("default/pod-1".into()),
            },
        },
    );
    t.insert(
        COOKIE,
        Iface {
            node: "node-a".into(),
            name: "ens5".into(),
            ifindex: ENI,
            role: Role::Eni {
                index: Some(0),
                addrs: vec![Ipv4Addr::new(192, 168, 1, 5)],
            },
        },
    );
    t
}

/// 512 packets: UDP (most), TCP and ICMP, alternating hooks and directions.
fn packets() -> Vec<Packet> {
    (0..512u32)
        .map(|i| {
            let l4 = match i % 4 {
                0 | 1 => L4::Udp {
                    sport: 40_000 + (i % 1000) as u16,
                    dport: 5201,
                    ulen: 72,
                    room: 72,
                },
                2 => L4::Tcp {
                    sport: 5201,
                    dport: 40_000 + (i % 1000) as u16,
                    seq: 1_000_000 + i * 1448,
                    ack: 77_000 + i,
                    flags: 0x18,
                },
                _ => L4::Icmp {
                    ty: 8,
                    code: 0,
                    id: 7,
                    seq: i as u16,
                },
            };
            let proto = match l4 {
                L4::Tcp { .. } => 6,
                L4::Icmp { .. } => 1,
                _ => 17,
            };
            Packet {
                ts_ns: 1_000_000_000 + u64::from(i) * 1_000,
                hook: HookId {
                    netns_cookie: COOKIE,
                    ifindex: if i % 2 == 0 { POD_VETH } else { ENI },
                    dir: if i % 3 == 0 {
                        Direction::Ingress
                    } else {
                        Direction::Egress
                    },
                },
                reason: 1,
                len: 106,
                cap_len: 106,
                mark: 0,
                l3: L3::Ipv4 {
                    src: Ipv4Addr::new(192, 168, 1, 21),
                    dst: Ipv4Addr::new(203, 0, 113, (i % 200) as u8),
                    id: i as u16,
                    total_len: 92,
                    ttl: 64,
                    proto,
                    frag: 0,
                },
                l4,
                payload_hash: u64::from(i),
                probe: i % 97 == 0,
                length: 64,
            }
        })
        .collect()
}

/// One line into a plain `Vec`.
fn to_vec(json: bool, v: &mut Vec<u8>, p: &Packet, t: &Topology, c: &Clock) {
    if json {
        output::format_json_line(v, p, t, c);
    } else {
        output::write_text_line(v, p, t, c).expect("to a Vec");
    }
}

/// One line through any writer, one `write_all` per line.
fn to_writer(json: bool, out: &mut impl Write, p: &Packet, t: &Topology, c: &Clock) {
    if json {
        output::write_json_line(out, p, t, c).expect("write");
    } else {
        output::write_text_line(out, p, t, c).expect("write");
    }
}

/// One line as `capture` prints it: into its [`LineOut`].
fn to_line_out<W: Write>(json: bool, out: &mut LineOut<W>, p: &Packet, t: &Topology, c: &Clock) {
    if json {
        out.json(p, t, c).expect("write");
    } else {
        out.text(p, t, c).expect("write");
    }
}

/// `capture`'s buffer size.
const CAP: usize = 64 * 1024;

fn bench_mode(c: &mut Criterion, name: &str, json: bool) {
    let topo = topology();
    let pkts = packets();
    let clock = Clock::now();
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));

    // Monomorphised per writer, as capture is.
    macro_rules! run {
        ($label:expr, $out:expr, $line:expr) => {
            g.bench_function($label, |b| {
                let mut out = $out;
                let mut i = 0usize;
                b.iter_custom(|iters| {
                    timed(iters, || {
                        let p = &pkts[i % pkts.len()];
                        i += 1;
                        ($line)(&mut out, black_box(p), i);
                    })
                });
            });
        };
    }
    run!(
        "vec",
        Vec::<u8>::with_capacity(4096 * 512),
        |v: &mut Vec<u8>, p: &Packet, i: usize| {
            to_vec(json, v, p, &topo, &clock);
            if i.is_multiple_of(4096) {
                black_box(v.len());
                v.clear();
            }
        }
    );
    run!(
        "sink_lineout_64k",
        LineOut::new(std::io::sink(), CAP),
        |o: &mut LineOut<std::io::Sink>, p: &Packet, _| to_line_out(json, o, p, &topo, &clock)
    );
    let null = || {
        File::options()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null")
    };
    run!(
        "devnull_line_buffered",
        LineWriter::new(null()),
        |o: &mut LineWriter<File>, p: &Packet, _| to_writer(json, o, p, &topo, &clock)
    );
    run!(
        "devnull_lineout_64k",
        LineOut::new(null(), CAP),
        |o: &mut LineOut<File>, p: &Packet, _| to_line_out(json, o, p, &topo, &clock)
    );
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_mode(c, "capture_json", true);
    bench_mode(c, "capture_text", false);
}

criterion_group!(capture, benches);
criterion_main!(capture);
