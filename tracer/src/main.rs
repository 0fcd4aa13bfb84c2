//! `podtrace`: which path did my pod's packet take?

use std::{io::Write as _, process::ExitCode};

use clap::{Parser, Subcommand};
use tracer::{capture, lab, ping, sched, trace, watch};

/// podtrace traces packets through Kubernetes pod networking (AWS VPC CNI):
/// pod veths, ENIs (ens5, ens6, ...), SNAT and DNAT, with eBPF programs at TC
/// ingress and egress.
///
/// Exit codes: 0 success; 1 the traced traffic failed (`ping` got no
/// reply) or no complete lab is up (`lab status`); 2 bad input, missing
/// privileges or a setup error.
#[derive(Parser, Debug)]
#[command(
    name = "podtrace",
    version,
    about,
    long_about,
    after_help = "\
Examples (in the built-in lab; on a node use your pods' names):
  podtrace lab up                      build the lab: two nodes, four pods, no cluster needed
  podtrace ping pod-1 pod-3            the path of 3 probes between two pods
  podtrace trace --duration 10s        live traffic as flows, for 10 s
  podtrace watch                       the same in a terminal UI
  podtrace capture --netns node-a --iface ens5 -w a.pcapng
                                       every packet on node-a's ens5, for Wireshark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print every packet crossing pod veths and ENIs, one line each
    /// (tcpdump-like), or write them to a pcapng file.
    #[command(after_help = "\
Examples:
  podtrace capture --netns node-a --iface ens5
      every packet on node-a's ens5, both directions
  podtrace capture --netns node-a --filter-host 192.168.1.21 --filter-proto icmp
      one pod's ICMP on every pod veth and ENI of node-a
  podtrace capture --netns node-a -w node-a.pcapng --duration 30s
      30 s of packets to a file for Wireshark or tshark (-r)
  podtrace capture --netns node-a --mode flows --json
      only each flow's first packets, with exact counters at exit

At exit, per interface and direction: pkts and B (IPv4 packets and bytes
the filter kept), seen (every packet at the hook), matched (kept by the
filter), events (records received), lost (records the kernel could not
hand over: raise --ring-size).

Lines read like tcpdump's, `length` included: a TCP segment's or UDP
datagram's payload, an ICMP message's length, taken from the headers
(so also where the payload was not copied; JSON's `len` is the whole
packet's), or from the packet's length for a BIG TCP packet over 64 KiB,
whose IPv4 header says 0. A record holds up to 128 bytes of its packet; of an IPv4 TCP
segment whose payload the kernel keeps apart from its headers (a local
sender's, often a received one after GRO), only the headers. Any
--snaplen copies that many bytes of every packet.")]
    Capture(capture::CaptureArgs),
    /// Build, inspect or remove the built-in lab: a two-node AWS VPC CNI data
    /// path made of network namespaces on this host.
    Lab(lab::LabArgs),
    /// Send probes from one pod to another (or to any IP) and show the path
    /// each took.
    ///
    /// Each probe's hops with times, the ENI used, SNAT/DNAT rewrites, where
    /// a lost probe was last seen, and, when the kernel dropped it, why (its
    /// drop reason, such as NETFILTER_DROP or IP_RPFILTER). Exit status 0
    /// when any probe got a reply, 1 when none did, 2 on bad input (a pod
    /// that cannot be found included), missing privileges or a setup
    /// error.
    #[command(after_help = "\
Examples:
  podtrace ping pod-1 pod-3
      3 ICMP probes: pod veth, ENI out, ENI in, pod veth, and back
  podtrace ping default/pod-1 10.100.0.10 --proto tcp --port 80 -c 6
      through a ClusterIP: which backend each probe reached (DNAT)
  podtrace ping pod-1 203.0.113.10 -c 1 --json
      to an address outside the VPC (SNAT to the node's IP), as JSON")]
    Ping(ping::PingArgs),
    /// Follow live traffic as flows: their paths, NAT, ENIs and drops.
    ///
    /// Each packet's path across pod veths and
    /// ENIs (both nodes in the lab), SNAT/DNAT rewrites with conntrack's
    /// tuples, the ENIs used, and labels direct, snat, dnat,
    /// asymmetric-eni, incomplete (judged with --mode packets and no
    /// filter only), icmp-error (an ICMP error such as port unreachable
    /// answered the flow: shown with its sender and path), dropped (the
    /// kernel dropped one of its packets: where, and its drop reason, such
    /// as NETFILTER_DROP). Each drop is also a line as it happens.
    #[command(after_help = "\
Examples:
  podtrace trace
      every flow on this node (both nodes in the lab), until Ctrl-C
  podtrace trace --filter-host 192.168.1.21 --duration 30s --journeys
      one pod's flows for 30 s, with each reported packet's hops (hops
      after a NAT that rewrote the pod's address do not match the filter)
  podtrace trace --json
      one JSON object per line, for scripts")]
    Trace(trace::TraceArgs),
    /// A live terminal UI of flows: path label, ENI, NAT, counters, and the
    /// hop-by-hop path of the selected flow (`q` quits).
    #[command(after_help = "\
Examples:
  podtrace watch
      every flow on this node (both nodes in the lab)
  podtrace watch --filter-proto tcp --filter-port 443
      only HTTPS flows")]
    Watch(watch::WatchArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Capture(args) => reader_runtime(args.report.no_realtime, true)
            .and_then(|rt| rt.block_on(capture::run(args))),
        Command::Lab(args) => runtime().and_then(|rt| rt.block_on(lab::run(args))),
        Command::Ping(args) => {
            reader_runtime(args.no_realtime, false).and_then(|rt| rt.block_on(ping::run(args)))
        }
        Command::Trace(args) => reader_runtime(args.report.no_realtime, true)
            .and_then(|rt| rt.block_on(trace::run(args))),
        Command::Watch(args) => reader_runtime(args.report.no_realtime, true)
            .and_then(|rt| rt.block_on(watch::run(args))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Not eprintln!, which panics when stderr fails (a terminal
            // that hung up): the exit code says it either way.
            let _ = writeln!(std::io::stderr(), "podtrace: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The async runtime of `lab`, whose many netlink calls may run at once.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A runtime for commands that read the rings: once they are attached,
/// this thread, which runs their loop, runs at real-time priority (see
/// `tracer::sched`), unless `normal`. If the kernel refuses, the command
/// says so when `say`: `ping` does not, since it reads a few records and
/// its output is a contract (a container in a cgroup without real-time
/// runtime, under CONFIG_RT_GROUP_SCHED, is refused even when privileged).
///
/// One thread, which waits on the rings' epoll itself: on a multi-thread
/// runtime a worker did, and woke this thread for every wakeup from the
/// kernel and every timer, two context switches where one does: the
/// reader took 104 ns of CPU per event where it now takes 86 (capture
/// `-w` at 500 k events/s). A thread the runtime starts later (its
/// blocking pool) joins this one's priority.
fn reader_runtime(normal: bool, say: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    if !normal {
        sched::want(say);
    }
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(sched::on_thread_start)
        .build()?)
}

/// "context: cause: root cause" on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for (i, c) in e.chain().enumerate() {
        let m = c.to_string();
        if s.contains(&m) {
            continue;
        }
        if i > 0 {
            s.push_str(": ");
        }
        s.push_str(&m);
    }
    s
}
