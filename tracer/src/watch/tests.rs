//! Snapshot tests of the main screens, drawn into ratatui's `TestBackend`
//! from flows that synthetic packets made through the real engine.

use ratatui::{Terminal, backend::TestBackend, buffer::Buffer, style::Color};

use super::{
    app::{App, Header, Pane},
    row::Column,
    synth::{Kind, Lab},
    ui,
};
use crate::{
    cli::Mode,
    correlate::{Config, Correlator, EndReason, Update},
};

/// A lab with one flow of each kind, on a screen state at 2 s after the
/// last packet.
fn four_flows() -> (Lab, App) {
    let mut lab = Lab::new(2, 1000);
    let mut app = App::new();
    lab.fill(4, |u| app.apply(u));
    app.now_ns = lab.now_ns() + 2_000_000_000;
    app.header = Header {
        hooks: vec![("node-a".into(), 4), ("node-b".into(), 4)],
        events_per_s: 1234.0,
        events: 32,
        lost: 0,
        evicted: 0,
        expired: 0,
        mode: Some(Mode::Flows),
        kernel_filter: "none".into(),
    };
    (lab, app)
}

fn render(app: &mut App, lab: &Lab, w: u16, h: u16) -> Vec<String> {
    if let Some(id) = app.detail_id() {
        app.set_detail(lab.engine.flow(id).as_ref());
    }
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::draw(f, app)).unwrap();
    lines(t.backend().buffer())
}

/// The buffer's rows as text, trailing spaces trimmed.
fn lines(b: &Buffer) -> Vec<String> {
    (0..b.area.height)
        .map(|y| {
            let row: String = (0..b.area.width).map(|x| b[(x, y)].symbol()).collect();
            row.trim_end().to_owned()
        })
        .collect()
}

fn assert_lines(got: &[String], want: &[&str]) {
    let got: Vec<&str> = got.iter().map(String::as_str).collect();
    assert_eq!(got, want, "\n{}", got.join("\n"));
}

#[test]
fn table() {
    let (lab, mut app) = four_flows();
    let got = render(&mut app, &lab, 150, 12);
    assert_lines(
        &got,
        &[
            " podtrace watch  |  mode flows  |  kernel filter: none  |  hooks: node-a 4, node-b 4",
            " 1.2k events/s  32 events  0 lost  |  flows 4 tracked, 0 evicted, 0 idle",
            "  SOURCE      DESTINATION  PROTO/PORTS   PATH                  ENI  REWRITE                                               PKTS     BYTES    RATE LAST▼",
            "> pod-a1      pod-b0       tcp 1025>80   direct,asymmetric-eni ens6                                                          2     196 B       -    2s",
            "  pod-a0      pod-b1       udp 1025>5353 dnat                  ens6 DNAT 10.100.0.10:53>192.168.32.21:5353                   2     196 B       -    2s",
            "  pod-a1      203.0.113.10 icmp id 1024  snat                  ens5 SNAT 192.168.16.21>192.168.16.5                          2     196 B       -    2s",
            "  pod-a0      pod-b1       tcp 1024>80   direct                ens5                                                          2     196 B       -    2s",
            "",
            "",
            "",
            "",
            " 4/4 flows  sort: last seen ▼  | q quit  ↑↓ move  Enter details  / filter  s sort  space pause  ? help",
        ],
    );
}

#[test]
fn table_narrow_keeps_the_path_and_eni() {
    let (lab, mut app) = four_flows();
    let got = render(&mut app, &lab, 80, 12);
    assert_lines(
        &got,
        &[
            " podtrace watch  |  mode flows  |  kernel filter: none  |  hooks: node-a 4, node",
            " 1.2k events/s  32 events  0 lost  |  flows 4 tracked, 0 evicted, 0 idle",
            "  SOURCE      DESTINATION  PROTO/PORTS   PATH               ENI      PKTS LAST▼",
            "> pod-a1      pod-b0       tcp 1025>80   direct,asymmetric… ens6        2    2s",
            "  pod-a0      pod-b1       udp 1025>5353 dnat               ens6        2    2s",
            "  pod-a1      203.0.113.10 icmp id 1024  snat               ens5        2    2s",
            "  pod-a0      pod-b1       tcp 1024>80   direct             ens5        2    2s",
            "",
            "",
            "",
            "",
            " 4/4 flows  sort: last seen ▼  | q quit  ? help",
        ],
    );
}

#[test]
fn detail() {
    let (lab, mut app) = four_flows();
    app.pane = Pane::Detail;
    // The SNAT flow: second by the oldest-first tie break.
    app.move_by(1);
    let got = render(&mut app, &lab, 150, 30);
    assert_lines(
        &got,
        &[
            " podtrace watch  |  mode flows  |  kernel filter: none  |  hooks: node-a 4, node-b 4",
            " 1.2k events/s  32 events  0 lost  |  flows 4 tracked, 0 evicted, 0 idle",
            "  SOURCE      DESTINATION  PROTO/PORTS   PATH                  ENI  REWRITE                                               PKTS     BYTES    RATE LAST▼",
            "  pod-a1      pod-b0       tcp 1025>80   direct,asymmetric-eni ens6                                                          2     196 B       -    2s",
            "> pod-a0      pod-b1       udp 1025>5353 dnat                  ens6 DNAT 10.100.0.10:53>192.168.32.21:5353                   2     196 B       -    2s",
            "  pod-a1      203.0.113.10 icmp id 1024  snat                  ens5 SNAT 192.168.16.21>192.168.16.5                          2     196 B       -    2s",
            "  pod-a0      pod-b1       tcp 1024>80   direct                ens5                                                          2     196 B       -    2s",
            "",
            "",
            "",
            "",
            "",
            "",
            " flow 3 ──────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────",
            " udp 1025>5353  pod-a0 192.168.16.20:1025 (node-a) -> 10.100.0.10:53 => pod-b1 192.168.32.21:5353 (node-b)  [dnat]",
            " ENI out node-a ens6, in node-a ens6   request 1 pkts 98 B, reply 1 pkts 98 B",
            " request: latest packet, 4 hops in 0.021 ms",
            "    +0.000 ms  node-a  eni10000000000  ingress  pod veth of pod-a0  192.168.16.20.1025 > 10.100.0.10.53",
            "    +0.007 ms  node-a  ens6            egress   ENI 1               192.168.16.20.1025 > 192.168.32.21.5353",
            "               ^ DNAT 10.100.0.10:53 -> 192.168.32.21:5353",
            "    +0.014 ms  node-b  ens5            ingress  ENI 0 (primary)     192.168.16.20.1025 > 192.168.32.21.5353",
            "    +0.021 ms  node-b  eni20000000001  egress   pod veth of pod-b1  192.168.16.20.1025 > 192.168.32.21.5353",
            " reply: latest packet, 4 hops in 0.021 ms",
            "    +0.000 ms  node-b  eni20000000001  ingress  pod veth of pod-b1  192.168.32.21.5353 > 192.168.16.20.1025",
            "    +0.007 ms  node-b  ens5            egress   ENI 0 (primary)     192.168.32.21.5353 > 192.168.16.20.1025",
            "    +0.014 ms  node-a  ens6            ingress  ENI 1               192.168.32.21.5353 > 192.168.16.20.1025",
            "    +0.021 ms  node-a  eni10000000000  egress   pod veth of pod-a0  10.100.0.10.53 > 192.168.16.20.1025",
            "               ^ un-DNAT (conntrack) 192.168.32.21:5353 -> 10.100.0.10:53",
            "",
            " 4/4 flows  sort: last seen ▼  | q quit  ↑↓ move  Enter details  / filter  s sort  space pause  ? help",
        ],
    );
}

#[test]
fn help() {
    let (lab, mut app) = four_flows();
    app.help = true;
    let got = render(&mut app, &lab, 80, 20);
    assert_lines(
        &got,
        &[
            " podtrace watch  |  mode flows  |  kernel filter: none  |  hooks: node-a 4, node",
            " 1.2k events/s  32 events  0 lost  |  flows 4 tracked, 0 evicted, 0 idle",
            "  SOUR┌ podtrace watch: keys ────────────────────────────────────────────┐LAST▼",
            "> pod-│ ↑ ↓  j k       move the selection                                │   2s",
            "  pod-│ PgUp PgDn      move by 10 rows                                   │   2s",
            "  pod-│ g G  Home End  first / last row                                  │   2s",
            "  pod-│ Enter          open / close the selected flow's path             │   2s",
            "      │ Esc            close the path, or clear the filter               │",
            "      │ /              filter: pod, IP, port, label, ENI (words AND)     │",
            "      │ s  S           sort by the next / previous column                │",
            "      │ r              reverse the sort                                  │",
            "      │ space          pause / resume the table                          │",
            "      │ ?              this help (any key closes it)                     │",
            "      │ q  Ctrl-C      quit (everything is detached)                     │",
            "      │                                                                  │",
            "      │ Labels: direct (no NAT), snat, dnat, asymmetric-eni, incomplete, │",
            "      │   icmp-error, dropped (by the kernel): why is in the path pane   │",
            "      │ A flow idle for 60 s leaves the table (the header counts them).  │",
            "      └──────────────────────────────────────────────────────────────────┘",
            " 4/4 flows  sort: last seen ▼  | q quit  ? help",
        ],
    );
}

#[test]
fn too_small() {
    let (lab, mut app) = four_flows();
    let got = render(&mut app, &lab, 50, 10);
    assert_lines(
        &got,
        &[
            "",
            "",
            "",
            "        podtrace watch: terminal too small",
            "            50x10, needs at least 60x12",
            "          enlarge it, or press q to quit",
            "",
            "",
            "",
            "",
        ],
    );
}

#[test]
fn rewrites_are_highlighted() {
    let (lab, mut app) = four_flows();
    app.pane = Pane::Detail;
    app.move_by(1);
    if let Some(id) = app.detail_id() {
        app.set_detail(lab.engine.flow(id).as_ref());
    }
    let mut t = Terminal::new(TestBackend::new(150, 30)).unwrap();
    t.draw(|f| ui::draw(f, &mut app)).unwrap();
    let b = t.backend().buffer();
    let rows = lines(b);
    let y = rows
        .iter()
        .position(|l| l.contains("node-a  ens6            egress"))
        .expect("the DNAT hop");
    let at = |s: &str| {
        let x = rows[y].find(s).expect("address on the hop line");
        b[(u16::try_from(x).unwrap(), u16::try_from(y).unwrap())].fg
    };
    assert_eq!(
        at("192.168.32.21.5353"),
        Color::Yellow,
        "rewritten destination"
    );
    assert_eq!(at("192.168.16.20.1025"), Color::Reset, "unchanged source");
}

#[test]
fn filter_sort_selection_and_pause() {
    let (mut lab, mut app) = four_flows();
    let shown = |app: &mut App, filter: &str| {
        app.filter = filter.into();
        app.invalidate();
        app.refresh();
        app.shown()
    };
    assert_eq!(shown(&mut app, "snat"), 1, "by label");
    assert_eq!(
        shown(&mut app, "pod-a0 53"),
        1,
        "by pod and port, words AND"
    );
    assert_eq!(shown(&mut app, "203.0.113.10"), 1, "by IP");
    assert_eq!(shown(&mut app, "ens5"), 2, "by ENI");
    assert_eq!(shown(&mut app, "nothing-like-this"), 0);
    assert_eq!(shown(&mut app, ""), 4);

    app.move_by(2);
    let picked = app.selected();
    app.sort = Column::Src;
    app.descending = false;
    app.invalidate();
    app.refresh();
    let srcs: Vec<&str> = app.visible(0, 10).map(|r| r.src.as_str()).collect();
    assert_eq!(srcs, ["pod-a0", "pod-a0", "pod-a1", "pod-a1"]);
    assert_eq!(app.selected(), picked, "the selection follows its flow");

    app.toggle_pause();
    lab.fill(1, |u| app.apply(u));
    app.refresh();
    assert_eq!(app.len(), 4, "held while paused");
    app.toggle_pause();
    app.refresh();
    assert_eq!(app.len(), 5, "applied on resume");
}

#[test]
fn rates_follow_counters_and_ended_flows_leave() {
    let (lab, mut app) = four_flows();
    app.refresh();
    let rates = |app: &App| app.visible(0, 10).map(|r| r.rate).collect::<Vec<_>>();
    app.sweep(2.0);
    assert_eq!(rates(&app), [1.0; 4], "2 packets in 2 s");
    app.sweep(1.0);
    assert_eq!(rates(&app), [0.0; 4], "nothing since");

    let first = app.selected().expect("a selection");
    let gone = lab.engine.flow(first).expect("live");
    let ended = |app: &mut App| {
        app.apply(Update::FlowEnded {
            flow: &gone,
            reason: EndReason::Idle,
        });
    };
    app.toggle_pause();
    ended(&mut app);
    app.refresh();
    assert_eq!(app.len(), 4, "held while paused");
    app.toggle_pause();
    app.refresh();
    assert_eq!((app.len(), app.shown()), (3, 3));
    assert_ne!(app.selected(), Some(first), "the selection moved on");
    ended(&mut app);
    assert_eq!(app.len(), 3, "ending twice is harmless");
}

#[test]
fn the_detail_pane_keeps_its_flow_when_it_ends() {
    let (lab, mut app) = four_flows();
    app.refresh();
    app.pane = Pane::Detail;
    let first = app.selected().expect("a selection");
    let gone = lab.engine.flow(first).expect("live");
    app.set_detail(Some(&gone));
    app.apply(Update::FlowEnded {
        flow: &gone,
        reason: EndReason::Idle,
    });
    app.refresh();
    assert_eq!(app.selected(), Some(first), "the pane still names its flow");
    // The engine no longer has it (as in watch; `render` would ask the
    // test's engine, which still does).
    app.set_detail(None);
    assert!(app.detail_ended);
    let mut t = Terminal::new(TestBackend::new(150, 30)).unwrap();
    t.draw(|f| ui::draw(f, &mut app)).unwrap();
    let got = lines(t.backend().buffer());
    assert!(
        got.iter()
            .any(|l| l.contains(&format!(" flow {first} (ended) "))),
        "{got:#?}"
    );
    // Moving the selection picks a live flow again.
    app.move_by(1);
    assert_ne!(app.selected(), Some(first));
}

/// `watch` runs its engine reporting changed flows by id: rows appear when
/// the changes are taken (once per frame), the same rows whole-flow
/// updates give, and a pause holds them back.
#[test]
fn changed_ids_become_the_same_rows_once_taken() {
    let by_id = |lab: &mut Lab| {
        lab.engine = Correlator::new(Config {
            max_flows: 1000,
            flow_idle_ns: u64::MAX / 4,
            changes_by_id: true,
            ..Config::default()
        });
    };
    let (whole_lab, mut whole) = four_flows();
    let mut lab = Lab::new(2, 1000);
    by_id(&mut lab);
    let mut app = App::new();
    lab.fill(4, |u| app.apply(u));
    assert_eq!(app.len(), 0, "no row before the changes are taken");
    app.take_changes(|id| lab.engine.flow(id));
    assert_eq!(app.len(), 4);
    (app.now_ns, app.header) = (whole.now_ns, whole.header.clone());
    assert_eq!(
        render(&mut app, &lab, 100, 12),
        render(&mut whole, &whole_lab, 100, 12)
    );

    app.toggle_pause();
    lab.fill(4, |u| app.apply(u));
    app.take_changes(|id| lab.engine.flow(id));
    assert_eq!(app.len(), 4, "paused: new flows are held");
    app.toggle_pause();
    assert_eq!(app.len(), 8, "resumed: they are shown");
}

#[test]
fn an_icmp_error_shows_in_the_path_pane() {
    let mut lab = Lab::new(2, 100);
    let mut app = App::new();
    lab.add(Kind::Refused, |u| app.apply(u));
    lab.engine.flush(|u| app.apply(u));
    app.now_ns = lab.now_ns() + 2_000_000_000;
    app.pane = Pane::Detail;
    app.move_by(0);
    let got = render(&mut app, &lab, 130, 24);
    assert_lines(
        &got[2..],
        &[
            "  SOURCE      DESTINATION PROTO/PORTS   PATH              ENI  REWRITE                                PKTS     BYTES    RATE LAST▼",
            "> pod-a0      pod-b1      udp 1024>9999 direct,icmp-error ens5                                           1      98 B       -    2s",
            "",
            "",
            "",
            "",
            " flow 1 ──────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────",
            " udp 1024>9999  pod-a0 192.168.16.20:1024 (node-a) -> pod-b1 192.168.32.21:9999 (node-b)  [direct, icmp-error]",
            " ENI out node-a ens5, in node-a ens5   request 1 pkts 98 B, reply 0 pkts 0 B",
            " request: latest packet, 4 hops in 0.021 ms",
            "    +0.000 ms  node-a  eni10000000000  ingress  pod veth of pod-a0  192.168.16.20.1024 > 192.168.32.21.9999",
            "    +0.007 ms  node-a  ens5            egress   ENI 0 (primary)     192.168.16.20.1024 > 192.168.32.21.9999",
            "    +0.014 ms  node-b  ens5            ingress  ENI 0 (primary)     192.168.16.20.1024 > 192.168.32.21.9999",
            "    +0.021 ms  node-b  eni20000000001  egress   pod veth of pod-b1  192.168.16.20.1024 > 192.168.32.21.9999",
            " reply: none seen; an ICMP error came back instead (below)",
            " error: icmp port unreachable from 192.168.32.21 (pod-b1), 4 hops in 0.021 ms",
            "    +0.000 ms  node-b  eni20000000001  ingress  pod veth of pod-b1  192.168.32.21 > 192.168.16.20",
            "    +0.007 ms  node-b  ens5            egress   ENI 0 (primary)     192.168.32.21 > 192.168.16.20",
            "    +0.014 ms  node-a  ens5            ingress  ENI 0 (primary)     192.168.32.21 > 192.168.16.20",
            "    +0.021 ms  node-a  eni10000000000  egress   pod veth of pod-a0  192.168.32.21 > 192.168.16.20",
            "",
            " 1/1 flows  sort: last seen ▼  | q quit  ↑↓ move  Enter details  / filter  s sort  space pause  ? help",
        ],
    );
}

#[test]
fn a_kernel_drop_shows_in_the_row_and_the_path_pane() {
    let mut lab = Lab::new(2, 100);
    let mut app = App::new();
    lab.add(Kind::Direct, |u| app.apply(u));
    lab.engine.flush(|u| app.apply(u));
    // The first flow's request (pod-a0 to pod-b1, tcp 1024 > 80), as the
    // kernel dropped it on node-b.
    let dropped = crate::decode::Packet {
        ts_ns: lab.now_ns(),
        hook: crate::decode::HookId {
            netns_cookie: 0,
            ifindex: 0,
            dir: tracer_common::Direction::Ingress,
        },
        reason: 0,
        len: 98,
        cap_len: 98,
        mark: 0,
        l3: crate::decode::L3::Ipv4 {
            src: [192, 168, 16, 20].into(),
            dst: [192, 168, 32, 21].into(),
            id: 0,
            total_len: 84,
            ttl: 63,
            proto: 6,
            frag: 0,
        },
        l4: crate::decode::L4::Tcp {
            sport: 1024,
            dport: 80,
            seq: 0,
            ack: 0,
            flags: 0x18,
        },
        payload_hash: 1,
        probe: false,
        length: 64,
    };
    let drop = crate::correlate::KernelDrop {
        side: crate::correlate::Side::Request,
        reason: "NETFILTER_DROP".into(),
        code: 9,
        at: Some("nft_do_chain+0x3e8".into()),
        node: Some("node-b".into()),
        iface: Some("ens5".into()),
        packet: "tcp 192.168.16.20:1024 > 192.168.32.21:80".into(),
        tuple: Default::default(),
        packets: 0,
        ts_ns: 0,
    };
    assert!(lab.engine.note_drop(&dropped, &drop, |u| app.apply(u)));
    app.now_ns = lab.now_ns() + 2_000_000_000;
    app.pane = Pane::Detail;
    app.move_by(0);
    let got = render(&mut app, &lab, 130, 24);
    assert!(got.iter().any(|l| l.contains("direct,dropped")), "{got:#?}");
    assert!(
        got.iter().any(|l| l.contains(
            " dropped: request by the kernel on node-b (ens5): NETFILTER_DROP in nft_do_chain+0x3e8 (an iptables or nftables rule)"
        )),
        "{got:#?}"
    );
}
