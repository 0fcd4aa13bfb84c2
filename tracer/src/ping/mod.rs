//! `podtrace ping SRC DST`: send tagged probes from inside SRC's netns and
//! tell, per probe, which hooks saw it, with which addresses and rewrites.

pub mod report;
pub mod text;

use std::{
    net::{Ipv4Addr, ToSocketAddrs as _},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use tracer_common::{Config, DropEvent, mode};

use self::report::{Endpoint, ProbeView, probe_view, summarize};
use crate::{
    cli::{WhereArgs, parse_duration, parse_positive_duration},
    decode::{L3, L4, Packet},
    kernel::{KernelError, LoadOptions},
    netns::Netns,
    pods::{self, PodSet, PodSourceArgs, Resolved},
    probe::{self, ProbeProto, ProbeResult, ProbeSpec},
    session::Session,
    signals::Stop,
};

/// `podtrace ping` flags.
#[derive(Args, Debug)]
pub struct PingArgs {
    /// Source: a pod on a traced node (name or namespace/name) or its IP.
    /// The probes are sent from inside its network namespace.
    pub src: String,
    /// Destination: a pod (name or namespace/name), an IPv4 address, or a
    /// hostname with a dot in it, looked up by the resolver of the host
    /// podtrace runs on (not the pod's cluster DNS: for a service, give its
    /// ClusterIP).
    pub dst: String,
    /// Number of probes.
    #[arg(short = 'c', long = "count", value_name = "N", default_value_t = 3, value_parser = crate::cli::parse_probe_count)]
    pub count: u16,
    /// Time between probes (e.g. 200ms, 1s; a bare number is seconds).
    #[arg(short = 'i', long = "interval", value_name = "DURATION", default_value = "200ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// How long to wait for each reply (e.g. 500ms, 2s).
    #[arg(short = 'W', long = "timeout", value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    pub timeout: Duration,
    /// Probe protocol.
    #[arg(long, value_enum, default_value_t = ProbeProto::Icmp)]
    pub proto: ProbeProto,
    /// Destination port for --proto tcp|udp. [default: 80]
    #[arg(long, value_parser = crate::cli::parse_port)]
    pub port: Option<u16>,
    /// Print one JSON document (the contract scripts depend on) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Read the probes' reports at normal priority. By default, as in
    /// `capture`, the threads that read them run `SCHED_FIFO` 1, so that
    /// busy pods cannot hold the reports back past the timeout.
    #[arg(long = "no-realtime")]
    pub no_realtime: bool,
    #[command(flatten)]
    pub place: WhereArgs,
    #[command(flatten)]
    pub pods: PodSourceArgs,
}

/// `--port` unless given.
const DEFAULT_PORT: u16 = 80;

/// A usage or resolution problem: exit code 2, one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs `podtrace ping`.
pub async fn run(args: PingArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        return Err(KernelError::NotPermitted.into());
    }
    if let (Some(port), ProbeProto::Icmp) = (args.port, args.proto) {
        return Err(UsageError(format!(
            "--port {port} needs --proto tcp or udp: ICMP probes have no port"
        ))
        .into());
    }
    let mut pods = pods::load(&args.pods).await?;
    let note = pods.take_note();
    let src = pods.resolve(&args.src)?;
    let src_ip = src.ip();
    let src_end = endpoint_of(&src);
    let dst = resolve_dst(&pods, &args.dst)?;
    let dst_ip = dst.0;
    let dst_end = dst.1;
    if dst_ip.is_loopback()
        || dst_ip.is_unspecified()
        || dst_ip.is_multicast()
        || dst_ip.is_broadcast()
    {
        return Err(UsageError(format!(
            "{dst_ip} is not an address the probes can leave the pod for (loopback, unspecified, \
             multicast or broadcast); give a pod's name or its IPv4 address"
        ))
        .into());
    }
    if dst_ip == src_ip {
        return Err(UsageError(format!(
            "source and destination are the same ({src_ip}): the probes would never leave the \
             pod; give another pod or address as the destination"
        ))
        .into());
    }

    let place = crate::session::traced_namespaces(&args.place, &pods)?;
    let nodes: Vec<Arc<Netns>> = place
        .netns
        .iter()
        .map(|n| Netns::open(n).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let src_netns = find_pod_netns(&nodes, src_ip, &src_end).await?;
    if let Some(n) = note
        && !args.json
    {
        eprintln!("podtrace: {n}");
    }

    let mut config = Config::DEFAULT;
    config.mode = mode::FLOWS;
    match args.proto {
        // Echo replies carry the probe's payload, so they are tagged too.
        ProbeProto::Icmp => config.probes_only = 1,
        // SYN-ACK/RST and UDP answers (data or ICMP port unreachable) are
        // untagged, and NAT may change the port they come from: report the
        // first packets of every flow, enough for each probe's answer.
        ProbeProto::Tcp | ProbeProto::Udp => {
            config.flow_first_n = u32::from(args.count).saturating_mul(2).saturating_add(2);
        }
    }
    // Where and why the kernel drops a probe, from its BTF; ping works
    // without, saying only where the probe was last seen.
    // Said only if a probe is lost: a ping that works has no use for it.
    let mut no_drop_reasons = None;
    let (drop_offsets, words) = match crate::drops::Words::load() {
        Ok((o, w)) => (Some(o), w),
        Err(e) => {
            no_drop_reasons = Some(e);
            (None, crate::drops::Words::default())
        }
    };
    let opts = LoadOptions {
        config,
        drops: drop_offsets,
        ..LoadOptions::default()
    };
    let mut stop = Stop::install()?;
    let mut session = Session::start(&place, &opts).await?;
    session.topology.name_pods(|ip| pods.name_of(ip));
    if let Some(e) = session.take_drops_error() {
        no_drop_reasons = Some(e);
    }
    let mut drops: Vec<(Packet, DropEvent)> = Vec::new();

    let run_id = run_id();
    let spec = ProbeSpec {
        proto: args.proto,
        src: src_ip,
        dst: dst_ip,
        port: args.port.unwrap_or(DEFAULT_PORT),
        count: args.count,
        interval: args.interval,
        timeout: args.timeout,
    };
    if !args.json {
        print!("{}", text::heading(&src_end, &dst_end, &proto_label(&args)));
        println!();
    }
    let sender_ns = Arc::new(Netns::open(src_netns.to_str().context("netns path")?)?);
    // A probe dropped in the sending pod's namespace (its OUTPUT chain)
    // is named by the pod, which podtrace does not trace.
    let sender = Sender {
        cookie: sender_ns.cookie,
        name: match (&src_end.namespace, &src_end.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
            _ => sender_ns.name.clone(),
        },
    };
    let mut results = probe::spawn(sender_ns, spec.clone(), run_id)?;
    let mut packets: Vec<Packet> = Vec::new();
    let mut views: Vec<ProbeView> = Vec::new();
    let mut interrupted = false;
    loop {
        tokio::select! {
            () = stop.wait() => { interrupted = true; break; }
            res = session.next(|p, _, _| if packets.len() < 100_000 { packets.push(*p) }, |_| {}) => res?,
            r = results.recv() => {
                let Some(r) = r else { break };
                let r = r.context("sending probes")?;
                // Let the last hooks' records arrive (the drain timer is 20 ms).
                let settle = tokio::time::Instant::now() + Duration::from_millis(60);
                while tokio::time::Instant::now() < settle {
                    tokio::select! {
                        res = session.next(|p, _, _| if packets.len() < 100_000 { packets.push(*p) }, |_| {}) => res?,
                        () = tokio::time::sleep_until(settle) => {}
                    }
                }
                // Only what can be a probe's or its answer's, and not older
                // than a probe can wait: a node drops RSTs and ICMP errors
                // all day, and a long run must not keep them all.
                let oldest = crate::output::kernel_now_ns().saturating_sub(
                    u64::try_from((spec.timeout + Duration::from_secs(2)).as_nanos())
                        .unwrap_or(u64::MAX),
                );
                drops.retain(|(_, d)| d.ts_ns >= oldest);
                for d in session.take_drops() {
                    let p = crate::drops::packet(&d);
                    if p.probe || matches!(p.l4, L4::Tcp { .. } | L4::IcmpError { .. }) {
                        drops.push((p, d));
                    }
                }
                let (mut view, reset) = build_view(&r, &spec, run_id, &packets, &session);
                let (mut request_drop, answer_drop) =
                    probe_drop(&r, &spec, run_id, &drops, &packets, &session, &words, &view, &sender);
                // A probe freed as NO_SOCKET reached a host with no socket
                // for it, which answered (a RST, a port unreachable): no
                // loss on the way, unless nothing came back.
                let answered = answer_drop.is_some()
                    || view.hops.iter().any(|h| h.leg == report::Leg::Reply);
                if answered && request_drop.as_ref().is_some_and(|d| d.reason == "NO_SOCKET") {
                    request_drop = None;
                }
                if view.rtt_us.is_none() {
                    // The probe's drop is the story (a REJECT drops what it
                    // answers); its answer's, dropped on the way back, too.
                    if request_drop.is_some() {
                        view.drop = request_drop;
                        view.answer_drop = answer_drop;
                    } else {
                        view.drop = answer_drop;
                    }
                } else if reset
                    && let Some(syn) = request_drop
                    && let Some(reset) = report::reset_on_the_way(&view, &session.topology, &syn)
                {
                    // The SYN was dropped on the way, and a RST came back
                    // in the destination's name: a firewall made it.
                    view.reply = Some(format!(
                        "RST forged as {}, made on the way: the SYN was dropped on {}",
                        reset.pod,
                        syn.node.as_deref().unwrap_or("the way")
                    ));
                    view.reset_on_the_way = Some(reset);
                }
                if !args.json {
                    print!("{}", text::probe(&view, views.last()));
                }
                views.push(view);
            }
        }
    }
    let mut summary = summarize(&views);
    summary
        .drop_reasons_unavailable
        .clone_from(&no_drop_reasons);
    if let Some(e) = no_drop_reasons
        && !args.json
        && views
            .iter()
            .any(|v| v.rtt_us.is_none() && v.reply.is_none())
    {
        eprintln!("podtrace: cannot tell whether the kernel dropped the lost probes: {e}");
    }
    // Untagged answers share a budget with every RST and ICMP error the
    // node drops: a lost probe's may have been left out.
    let left_out = session.drops_suppressed();
    if left_out > 0
        && !args.json
        && views
            .iter()
            .any(|v| v.rtt_us.is_none() && v.reply.is_none() && v.drop.is_none())
    {
        eprintln!(
            "podtrace: {left_out} of the kernel's drops were left out ({}): a lost probe's \
             answer may be among them",
            crate::drops::left_out_why()
        );
    }
    if args.json {
        let doc = json!({
            "src": src_end,
            "dst": dst_end,
            "proto": proto_name(args.proto),
            "port": (args.proto != ProbeProto::Icmp).then(|| args.port.unwrap_or(DEFAULT_PORT)),
            "probes": views,
            "summary": summary,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!();
        print!(
            "{}",
            text::summary(
                &summary,
                &views,
                src_end
                    .node
                    .as_deref()
                    .or_else(|| nodes.first().map(|n| n.name.as_str())),
                // "pod-to-pod" unless the destination is known not to
                // be a pod: no pod of that IP in the pod list, and no
                // probe delivered into a pod's veth.
                dst_end.pod.is_some()
                    || *pods.source() == pods::Source::None
                    || views.iter().flat_map(|v| &v.hops).any(|h| {
                        h.leg == report::Leg::Request && h.role == "pod" && h.dir == "egress"
                    }),
            )
        );
    }
    drop(session);
    if interrupted && views.is_empty() {
        return Ok(ExitCode::from(1));
    }
    Ok(if views.iter().any(|v| v.rtt_us.is_some()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn proto_name(proto: ProbeProto) -> &'static str {
    match proto {
        ProbeProto::Icmp => "icmp",
        ProbeProto::Tcp => "tcp",
        ProbeProto::Udp => "udp",
    }
}

fn proto_label(args: &PingArgs) -> String {
    match args.proto {
        ProbeProto::Icmp => "icmp".into(),
        ProbeProto::Tcp => format!("tcp port {}", args.port.unwrap_or(DEFAULT_PORT)),
        ProbeProto::Udp => format!("udp port {}", args.port.unwrap_or(DEFAULT_PORT)),
    }
}

fn endpoint_of(r: &Resolved<'_>) -> Endpoint {
    match r.pod() {
        Some(p) => Endpoint {
            pod: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            ip: Some(r.ip().to_string()),
            node: p.node.clone(),
        },
        None => Endpoint {
            ip: Some(r.ip().to_string()),
            ..Endpoint::default()
        },
    }
}

/// DST: a pod, an IP, or (when it looks like one: it has a dot) a hostname.
fn resolve_dst(pods: &PodSet, spec: &str) -> anyhow::Result<(Ipv4Addr, Endpoint)> {
    match pods.resolve(spec) {
        Ok(r) => Ok((r.ip(), endpoint_of(&r))),
        Err(e)
            if spec.contains('.')
                && !spec.contains('/')
                && !matches!(e, pods::ResolveError::NotAnEndpoint { .. }) =>
        {
            let ip = (spec, 0)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| {
                    a.find_map(|a| match a.ip() {
                        std::net::IpAddr::V4(v4) => Some(v4),
                        std::net::IpAddr::V6(_) => None,
                    })
                })
                .ok_or_else(|| {
                    UsageError(format!(
                        "\"{spec}\" is not a pod, an IP, or a hostname that resolves ({e})"
                    ))
                })?;
            Ok((
                ip,
                Endpoint {
                    ip: Some(ip.to_string()),
                    ..Endpoint::default()
                },
            ))
        }
        Err(e) => Err(e.into()),
    }
}

async fn find_pod_netns(
    nodes: &[Arc<Netns>],
    ip: Ipv4Addr,
    src: &Endpoint,
) -> anyhow::Result<std::path::PathBuf> {
    let mut last = None;
    for node in nodes {
        match pods::pod_netns(node, ip).await {
            Ok(path) => return Ok(path),
            Err(e) => last = Some(e),
        }
    }
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    // Where the pod list says the pod runs, when that is not traced here.
    if let (Some(pod), Some(node)) = (&src.pod, &src.node)
        && !names.contains(&node.as_str())
    {
        return Err(UsageError(format!(
            "{pod} ({ip}) runs on {node}, which is not traced here ({}): add {node}'s \
             namespace with --netns, or run podtrace on {node}",
            names.join(", ")
        ))
        .into());
    }
    // One node's reason names that node; with several, none of them
    // routes the address to a pod.
    let why = match (nodes.len(), last) {
        (1, Some(e)) => format!(": {e}"),
        (n, _) if n > 1 => ": none of them routes it to a pod veth".to_owned(),
        _ => String::new(),
    };
    Err(UsageError(format!(
        "{ip} is not a pod on a traced node ({}){why}",
        names.join(", ")
    ))
    .into())
}

/// A number that tells this run's probes from any other podtrace's.
fn run_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ std::process::id().rotate_left(16)
}

/// The kernel's latest drops of this probe and of its answer, if it
/// reported them: matched by the probe's tag, or for untagged answers by
/// what they acknowledge or quote.
#[expect(clippy::too_many_arguments, reason = "one probe's whole context")]
fn probe_drop(
    r: &ProbeResult,
    spec: &ProbeSpec,
    run: u32,
    drops: &[(Packet, DropEvent)],
    packets: &[Packet],
    session: &Session,
    words: &crate::drops::Words,
    view: &ProbeView,
    sender: &Sender,
) -> (Option<report::ProbeDrop>, Option<report::ProbeDrop>) {
    // A reply handed to the source pod reached it: what its kernel frees
    // then is no loss on the way (the raw socket that reads the echo
    // reply gets a copy, and the original goes as NO_SOCKET).
    let reply_delivered = view
        .hops
        .iter()
        .any(|h| h.leg == report::Leg::Reply && h.hands_to_pod());
    let tag = probe::payload_hash(r.seq, run);
    let isn = probe::tcp_isn(r.seq, run);
    // The probe as its hooks saw it, hop by hop: an ICMP error quotes it as
    // it was where the error was raised (after any SNAT on the way).
    let sent: Vec<(Ipv4Addr, u16)> = packets
        .iter()
        .filter(|p| match (spec.proto, p.l4) {
            (ProbeProto::Tcp, L4::Tcp { seq, .. }) => p.probe && seq == isn,
            (ProbeProto::Icmp, L4::Icmp { ty: 8, seq, .. }) => {
                p.payload_hash == tag && seq == r.seq
            }
            (ProbeProto::Udp, L4::Udp { .. }) => p.probe && p.payload_hash == tag,
            _ => false,
        })
        .filter_map(|p| match (p.l3, p.l4) {
            (L3::Ipv4 { src, .. }, L4::Tcp { sport, .. } | L4::Udp { sport, .. }) => {
                Some((src, sport))
            }
            (L3::Ipv4 { src, .. }, L4::Icmp { ty, id, .. }) => {
                Some((src, crate::decode::icmp_ports(ty, id).0))
            }
            _ => None,
        })
        .collect();
    // The last of each leg's: a request refused with an ICMP error counts
    // as dropped where it was refused, and the error may then be dropped
    // on its way back.
    let found: Vec<(&DropEvent, report::Leg)> = drops
        .iter()
        .filter_map(|(p, d)| {
            let leg = match (spec.proto, p.l4) {
                // The untagged answers: a SYN-ACK or RST that acknowledges the
                // probe's SYN (as `build_view` matches them), an ICMP error
                // that quotes one of the probe's hops.
                (ProbeProto::Tcp, L4::Tcp { ack, flags, .. })
                    if !p.probe
                        && flags & TCP_ACK != 0
                        && [
                            isn.wrapping_add(1),
                            isn.wrapping_add(probe::PAYLOAD_LEN as u32 + 1),
                        ]
                        .contains(&ack) =>
                {
                    report::Leg::Reply
                }
                (_, L4::IcmpError { quote, .. })
                    if quote.proto == proto_number(spec.proto)
                        && sent.contains(&(quote.src, quote.sport))
                        && (spec.proto != ProbeProto::Icmp || quote.seq == r.seq) =>
                {
                    report::Leg::Reply
                }
                _ if !p.probe => return None,
                (ProbeProto::Icmp, L4::Icmp { ty: 8, seq, .. })
                    if p.payload_hash == tag && seq == r.seq =>
                {
                    report::Leg::Request
                }
                (ProbeProto::Icmp, L4::Icmp { ty: 0, seq, .. })
                    if p.payload_hash == tag && seq == r.seq =>
                {
                    report::Leg::Reply
                }
                (ProbeProto::Tcp, L4::Tcp { seq, .. }) if seq == probe::tcp_isn(r.seq, run) => {
                    report::Leg::Request
                }
                // A UDP server that echoes the probe sends its tag back, from
                // the probed port.
                (ProbeProto::Udp, L4::Udp { dport, .. }) if p.payload_hash == tag => {
                    if dport == spec.port {
                        report::Leg::Request
                    } else {
                        report::Leg::Reply
                    }
                }
                _ => return None,
            };
            let delivered_reply = leg == report::Leg::Reply
                && (reply_delivered || words.reason(d.reason) == "NO_SOCKET");
            (!delivered_reply).then_some((d, leg))
        })
        .collect();
    let latest = |want: report::Leg| {
        found
            .iter()
            .filter(|(_, leg)| *leg == want)
            .max_by_key(|(d, _)| d.ts_ns)
            .map(|&(d, leg)| describe(d, leg, words, session, sender))
    };
    (latest(report::Leg::Request), latest(report::Leg::Reply))
}

/// The namespace the probes are sent from.
struct Sender {
    /// Its netns cookie.
    cookie: u64,
    /// The pod's `namespace/name`, or the namespace's own name.
    name: String,
}

/// A drop report in ping's words.
fn describe(
    d: &DropEvent,
    leg: report::Leg,
    words: &crate::drops::Words,
    session: &Session,
    sender: &Sender,
) -> report::ProbeDrop {
    let dropped = crate::drops::Dropped::of(d, words, &session.topology, session.namespaces());
    let packet = dropped.packet_line();
    let node = dropped.node.or_else(|| {
        (d.netns_cookie != 0 && d.netns_cookie == sender.cookie).then(|| sender.name.clone())
    });
    report::ProbeDrop {
        leg,
        code: d.reason,
        reason: dropped.reason,
        at: dropped.at,
        node,
        iface: dropped.iface,
        packet,
        dst: dropped.dst,
    }
}

/// The IP protocol number of a probe.
fn proto_number(proto: ProbeProto) -> u8 {
    match proto {
        ProbeProto::Icmp => 1,
        ProbeProto::Tcp => 6,
        ProbeProto::Udp => 17,
    }
}

/// Picks the request's and the reply's packets of one probe; true when a
/// TCP RST answered it.
fn build_view(
    r: &ProbeResult,
    spec: &ProbeSpec,
    run: u32,
    packets: &[Packet],
    session: &Session,
) -> (ProbeView, bool) {
    let tag = probe::payload_hash(r.seq, run);
    // A UDP server that echoes the probe sends its tag back: the request
    // is the datagram with the IP id of the first one seen (at the source
    // pod's veth), which NAT leaves alone; the echo has the server's.
    let ip_id = |p: &Packet| match p.l3 {
        L3::Ipv4 { id, .. } => Some(id),
        _ => None,
    };
    let udp_request_id = packets
        .iter()
        .filter(|p| matches!(p.l4, L4::Udp { .. }) && p.probe && p.payload_hash == tag)
        .min_by_key(|p| p.ts_ns)
        .and_then(ip_id);
    let (mut request, mut reply, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for p in packets {
        match (spec.proto, p.l4) {
            (ProbeProto::Icmp, L4::Icmp { ty, seq, .. })
                if p.probe && p.payload_hash == tag && seq == r.seq =>
            {
                if ty == 8 {
                    request.push(*p);
                } else if ty == 0 {
                    reply.push(*p);
                }
            }
            (ProbeProto::Tcp, L4::Tcp { seq, ack, .. }) => {
                let isn = probe::tcp_isn(r.seq, run);
                // Linux ignores data in a SYN (no TCP Fast Open), so the
                // answer may acknowledge the SYN alone or SYN and data.
                let acked = [
                    isn.wrapping_add(1),
                    isn.wrapping_add(probe::PAYLOAD_LEN as u32 + 1),
                ];
                if p.probe && seq == isn {
                    request.push(*p);
                } else if acked.contains(&ack) {
                    reply.push(*p);
                }
            }
            (ProbeProto::Udp, L4::Udp { .. }) if p.probe && p.payload_hash == tag => {
                if ip_id(p) == udp_request_id {
                    request.push(*p);
                } else {
                    reply.push(*p);
                }
            }
            (ProbeProto::Udp, L4::Udp { sport, .. }) if sport == spec.port => reply.push(*p),
            // Errors are matched to the probe by what they quote, below.
            (_, L4::IcmpError { .. }) => errors.push(*p),
            // One cut too short to say what it quotes.
            (ProbeProto::Udp, L4::Icmp { ty: 3, .. }) => reply.push(*p),
            _ => {}
        }
    }
    // An error answers this probe when it quotes one of the probe's hops
    // (NAT rewrites the quote with the error, hop for hop): same source,
    // same protocol, same port or echo id and seq.
    let quotes = |q: &crate::decode::Quote, sent: &[Packet]| {
        sent.iter().any(|sent: &Packet| {
            let L3::Ipv4 { src, proto, .. } = sent.l3 else {
                return false;
            };
            let sport = match sent.l4 {
                L4::Tcp { sport, .. } | L4::Udp { sport, .. } => sport,
                L4::Icmp { ty, id, .. } => crate::decode::icmp_ports(ty, id).0,
                _ => return false,
            };
            // Every echo of a run has the same id: its seq tells them apart.
            (src, proto, sport) == (q.src, q.proto, q.sport) && (proto != 1 || q.seq == r.seq)
        })
    };
    // An error about the reply: the answer came, and was refused on its
    // way back (said below, when no reply reached the sender).
    let refused = errors.iter().find_map(|p| match (p.l3, p.l4) {
        (
            L3::Ipv4 { src, .. },
            L4::IcmpError {
                ty, code, quote, ..
            },
        ) if quotes(&quote, &reply) => Some(probe::icmp_error(ty, code, src)),
        _ => None,
    });
    for p in errors {
        if let L4::IcmpError { quote, .. } = p.l4
            && quotes(&quote, &request)
        {
            reply.push(p);
        }
    }
    reply.sort_by_key(|p| p.ts_ns);
    // UDP answers carry no tag: keep those close to this probe's request.
    if spec.proto == ProbeProto::Udp
        && let Some(t0) = request.iter().map(|p| p.ts_ns).min()
    {
        let window = u64::try_from(spec.timeout.as_nanos()).unwrap_or(u64::MAX);
        reply.retain(|p| p.ts_ns >= t0 && p.ts_ns - t0 <= window);
    }
    #[expect(clippy::cast_precision_loss, reason = "microseconds for display")]
    let rtt = r.rtt.map(|d| d.as_nanos() as f64 / 1000.0);
    let mut v = probe_view(r.seq, rtt, &request, &reply, &session.topology);
    v.reply.clone_from(&r.reply);
    // The probe's socket reads no ICMP error about a TCP SYN; the hooks
    // saw it come back.
    if v.reply.is_none()
        && let Some(e) = &v.icmp_error
    {
        v.reply = Some(probe::icmp_error(e.ty, e.code, e.from));
    }
    if v.reply.is_none()
        && let Some(why) = refused
    {
        v.reply = Some(format!("the reply was refused: {why}"));
    }
    // Who sent the error, when it is a traced node's or pod's address:
    // `port unreachable from 192.168.2.10 (node-b ens5)`.
    if let Some(e) = &v.icmp_error
        && let Some(who) = session.topology.who_has(e.from)
        && let Some(r) = v.reply.as_mut()
        && r.ends_with(&e.from.to_string())
    {
        r.push_str(&format!(" ({who})"));
    }
    let reset = spec.proto == ProbeProto::Tcp
        && reply
            .iter()
            .any(|p| matches!(p.l4, L4::Tcp { flags, .. } if flags & TCP_RST != 0));
    (v, reset)
}

/// The RST bit of a TCP header's flags byte.
const TCP_RST: u8 = 0x04;
/// The ACK bit.
const TCP_ACK: u8 = 0x10;
