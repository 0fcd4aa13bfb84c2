//! The detail pane: the selected flow's latest packet in each direction,
//! hop by hop, with the time between hops, interface and role, the
//! addresses as seen there (what NAT changed highlighted), and conntrack's
//! tuples where known.

use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Wrap},
};

use super::{
    app::App,
    row::{flow_proto_cell, pod_display},
    ui::label_style,
};
use crate::correlate::{Flow, FlowSide, Hop, Place, Rewrite, Side, Tuple, format};

const CHANGED: Style = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);

/// Lines the pane wants (without its border).
pub fn height(app: &App) -> u16 {
    u16::try_from(lines(app).len()).unwrap_or(u16::MAX)
}

/// Draws the pane in `area`.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let title = match (&app.detail, app.detail_ended) {
        (Some(f), false) => format!(" flow {} ", f.id),
        (Some(f), true) => format!(" flow {} (ended) ", f.id),
        (None, _) => " flow ".to_owned(),
    };
    let block = Block::new()
        .borders(Borders::TOP)
        .title(title)
        .border_style(Style::new().fg(Color::Cyan));
    frame.render_widget(
        Paragraph::new(lines(app))
            .block(block)
            .wrap(Wrap { trim: false }),
        area,
    );
}

fn lines(app: &App) -> Vec<Line<'static>> {
    let Some(f) = &app.detail else {
        let msg = match app.selected() {
            None => "no flow selected",
            Some(_) if app.detail_ended => "this flow has ended",
            Some(_) => "waiting for the flow's state...",
        };
        return vec![Line::from(format!(" {msg}"))];
    };
    let mut out = vec![summary(f), enis(f)];
    if let Some(a) = format::asymmetry(f) {
        out.push(Line::from(format!(" ENI asymmetric on {a}")));
    }
    let w = Widths::of(f);
    for (name, side) in [("request", &f.request), ("reply", &f.reply)] {
        if side.path.is_empty() {
            let refused = name == "reply"
                && f.icmp_error
                    .as_ref()
                    .is_some_and(|e| e.answers == Side::Request);
            out.push(Line::from(vec![
                Span::styled(format!(" {name}"), BOLD),
                Span::raw(if refused {
                    ": none seen; an ICMP error came back instead (below)"
                } else {
                    ": not seen yet"
                }),
            ]));
            continue;
        }
        let head = format!(
            ": latest packet, {} hops in {}",
            side.path.len(),
            format::ms(side.latency.total_ns)
        );
        section(&mut out, (name, head), &side.path, &side.rewrites, &w);
        if let Some(inc) = &side.incomplete {
            out.push(Line::from(Span::styled(
                format!(
                    "  {:>11}  x not seen at {} (expected next hop)",
                    "",
                    format::expected(&inc.expected)
                ),
                Style::new().fg(Color::Red),
            )));
        }
    }
    if let Some(d) = &f.drop {
        out.push(Line::from(vec![
            Span::styled(" dropped", BOLD),
            Span::styled(
                format!(": {}", format::kernel_drop(d)),
                Style::new().fg(Color::Red),
            ),
        ]));
    }
    if let Some(reset) = &f.reset_on_the_way {
        out.push(Line::from(vec![
            Span::styled(" reset", BOLD),
            Span::styled(format!(": {reset}"), Style::new().fg(Color::Red)),
        ]));
    }
    if let Some(e) = &f.icmp_error {
        let (first, last) = (e.path.first(), e.path.last());
        let took = last
            .zip(first)
            .map_or(0, |(l, f)| l.ts_ns.saturating_sub(f.ts_ns));
        let text = format::icmp_error(e);
        // The path is on the hop lines below.
        let what = text.split_once(": ").map_or(text.as_str(), |(w, _)| w);
        let head = format!(": {what}, {} hops in {}", e.path.len(), format::ms(took));
        section(&mut out, ("error", head), &e.path, &e.rewrites, &w);
    }
    if let Some(ct) = &f.conntrack {
        let id = ct.id.map_or_else(String::new, |i| format!(" id {i}"));
        out.push(Line::from(vec![
            Span::styled(
                format!(" conntrack{id}"),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(
                ": original {}, reply {}, mark {:#x}",
                ct.original, ct.reply, ct.mark
            )),
        ]));
    }
    out
}

fn endpoint(ip: std::net::Ipv4Addr, port: u16, t: &Tuple, pod: Option<&Place>) -> String {
    let addr = if matches!(t.proto, 6 | 17) {
        format!("{ip}:{port}")
    } else {
        ip.to_string()
    };
    match pod.and_then(Place::pod) {
        Some(name) => format!(
            "{} {addr} ({})",
            pod_display(name),
            pod.map_or("", |p| &p.node)
        ),
        None => addr,
    }
}

fn summary(f: &Flow) -> Line<'static> {
    let t = &f.tuple;
    let (server_ip, server_port) = f
        .request
        .path
        .last()
        .map_or((t.dst, t.dport), |h| (h.tuple.dst, h.tuple.dport));
    let mut dst = endpoint(t.dst, t.dport, t, None);
    if server_ip != t.dst || f.server_pod.is_some() {
        let server = endpoint(server_ip, server_port, t, f.server_pod.as_deref());
        dst = if server_ip == t.dst {
            server
        } else {
            format!("{dst} => {server}")
        };
    }
    let labels: Vec<&str> = f.labels.iter().map(|l| l.name()).collect();
    Line::from(vec![
        Span::styled(
            format!(" {}", flow_proto_cell(f)),
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!(
            "  {} -> {dst}  ",
            endpoint(t.src, t.sport, t, f.client_pod.as_deref())
        )),
        Span::styled(format!("[{}]", labels.join(", ")), label_style(f.labels)),
    ])
}

fn counters(s: &FlowSide) -> String {
    match s.kernel {
        Some(k) => format!("{} pkts {}", k.packets, format::bytes(k.bytes)),
        None => format!("{} pkts {}", s.packets, format::bytes(s.bytes)),
    }
}

fn enis(f: &Flow) -> Line<'static> {
    let eni = |p: &Option<crate::correlate::Shared<Place>>| {
        // The role is on the hop lines already (`ENI 0 (primary)`).
        p.as_deref()
            .map_or_else(|| "-".to_owned(), |p| format!("{} {}", p.node, p.iface))
    };
    Line::from(format!(
        " ENI out {}, in {}   request {}, reply {}",
        eni(&f.egress_eni),
        eni(&f.ingress_eni),
        counters(&f.request),
        counters(&f.reply)
    ))
}

/// Column widths shared by both directions, so that hops line up.
struct Widths {
    node: usize,
    iface: usize,
    role: usize,
}

impl Widths {
    fn of(f: &Flow) -> Self {
        let error = f.icmp_error.as_ref().map_or(&[][..], |e| &e.path);
        let hops = || f.request.path.iter().chain(&f.reply.path).chain(error);
        Self {
            node: hops().map(|h| h.place.node.len()).max().unwrap_or(0),
            iface: hops().map(|h| h.place.iface.len()).max().unwrap_or(0),
            role: hops()
                .map(|h| h.place.role.to_string().len())
                .max()
                .unwrap_or(0),
        }
    }
}

const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);

/// A heading (`name`, in bold, then the rest), then a line per hop and
/// one under each hop where a rewrite appears.
fn section(
    out: &mut Vec<Line<'static>>,
    (name, head): (&str, String),
    path: &[Hop],
    rewrites: &[Rewrite],
    w: &Widths,
) {
    out.push(Line::from(vec![
        Span::styled(format!(" {name}"), BOLD),
        Span::raw(head),
    ]));
    let mut prev: Option<&Hop> = None;
    // Time since the first hop, as ping and trace give it.
    let first_ns = path.first().map_or(0, |h| h.ts_ns);
    for (i, h) in path.iter().enumerate() {
        let mut spans = vec![Span::raw(format!(
            "  {:>11}  {:wn$}  {:wi$}  {:7}  {:wr$}  ",
            format!("+{}", format::ms(h.ts_ns.saturating_sub(first_ns))),
            h.place.node,
            h.place.iface,
            h.dir.to_string(),
            h.place.role.to_string(),
            wn = w.node,
            wi = w.iface,
            wr = w.role,
        ))];
        spans.extend(tuple_spans(&h.tuple, prev.map(|p| &p.tuple)));
        out.push(Line::from(spans));
        for r in rewrites.iter().filter(|r| r.hop == i) {
            let how = if r.reverse { " (conntrack)" } else { "" };
            out.push(Line::from(Span::styled(
                format!(
                    "  {:>11}  ^ {}{how} {}",
                    "",
                    format::rule(r),
                    format::rewrite_change(r)
                ),
                CHANGED,
            )));
        }
        prev = Some(h);
    }
}

/// `src.port > dst.port` (tcpdump style; ICMP with its echo id), each
/// side highlighted where it differs from the previous hop.
fn tuple_spans(t: &Tuple, prev: Option<&Tuple>) -> Vec<Span<'static>> {
    let ports = matches!(t.proto, 6 | 17);
    let side = |ip: std::net::Ipv4Addr, port: u16| {
        if ports {
            format!("{ip}.{port}")
        } else {
            ip.to_string()
        }
    };
    // For ICMP the "ports" are the echo id, shown (and compared) apart.
    let src_changed = prev.is_some_and(|p| {
        if ports {
            t.src_differs(p)
        } else {
            p.src != t.src
        }
    });
    let dst_changed = prev.is_some_and(|p| {
        if ports {
            t.dst_differs(p)
        } else {
            p.dst != t.dst
        }
    });
    let style = |changed: bool| if changed { CHANGED } else { Style::new() };
    let mut v = vec![
        Span::styled(side(t.src, t.sport), style(src_changed)),
        Span::raw(" > "),
        Span::styled(side(t.dst, t.dport), style(dst_changed)),
    ];
    if t.proto == 1 && (t.sport | t.dport) != 0 {
        let changed = prev.is_some_and(|p| (p.sport, p.dport) != (t.sport, t.dport));
        v.push(Span::styled(
            format!(" id {}", t.sport.max(t.dport)),
            style(changed),
        ));
    }
    v
}
