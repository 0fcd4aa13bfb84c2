//! Drawing: pure functions from the [`App`] to a ratatui [`Frame`]. Only
//! the rows that fit are formatted; nothing here reads a clock or a socket.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState},
};

use super::{
    app::{App, Pane},
    detail,
    row::{Column, FlowRow, ago_cell, rate_cell},
};
use crate::correlate::{Label, Labels, format};

/// The smallest screen the layout works in.
pub const MIN_SIZE: (u16, u16) = (60, 12);

/// Draws the whole screen (rebuilding the row order first if needed).
pub fn draw(frame: &mut Frame, app: &mut App) {
    let area = frame.area();
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        too_small(frame, area);
        return;
    }
    app.refresh();
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    header(frame, head, app);
    let (table_area, detail_area) = match app.pane {
        Pane::Table => (body, None),
        Pane::Detail => {
            let want = detail::height(app).saturating_add(2);
            // Keep at least a header and four rows of the table.
            let h = want.min(body.height.saturating_sub(5)).max(3);
            let [t, d] = Layout::vertical([Constraint::Fill(1), Constraint::Length(h)]).areas(body);
            (t, Some(d))
        }
    };
    table(frame, table_area, app);
    if let Some(d) = detail_area {
        detail::draw(frame, d, app);
    }
    footer(frame, foot, app);
    if app.help {
        help(frame, area);
    }
}

fn too_small(frame: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("podtrace watch: terminal too small"),
        Line::from(format!(
            "{}x{}, needs at least {}x{}",
            area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
        )),
        Line::from("enlarge it, or press q to quit"),
    ];
    let h = u16::try_from(text.len())
        .unwrap_or(u16::MAX)
        .min(area.height);
    let y = area.y + area.height.saturating_sub(h) / 2;
    let p = Paragraph::new(text)
        .centered()
        .style(Style::new().fg(Color::Yellow));
    frame.render_widget(p, Rect::new(area.x, y, area.width, h));
}

fn header(frame: &mut Frame, area: Rect, app: &App) {
    let h = &app.header;
    let dim = Style::new().fg(Color::DarkGray);
    let hooks: Vec<String> = h.hooks.iter().map(|(ns, n)| format!("{ns} {n}")).collect();
    let mode = match h.mode {
        Some(crate::cli::Mode::Packets) => "packets",
        Some(crate::cli::Mode::Flows) => "flows",
        None => "-",
    };
    let sep = || Span::styled("  |  ", dim);
    let first = Line::from(vec![
        Span::styled(" podtrace watch", Style::new().add_modifier(Modifier::BOLD)),
        sep(),
        Span::raw(format!("mode {mode}")),
        sep(),
        Span::raw(format!("kernel filter: {}", h.kernel_filter)),
        sep(),
        Span::raw(format!(
            "hooks: {}",
            if hooks.is_empty() {
                "none".into()
            } else {
                hooks.join(", ")
            }
        )),
    ]);
    let lost = Span::styled(
        format!("{} lost", h.lost),
        if h.lost > 0 {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        },
    );
    let mut second = vec![
        Span::raw(format!(
            " {} events/s  {} events  ",
            si(h.events_per_s),
            h.events
        )),
        lost,
        sep(),
        Span::raw(format!(
            "flows {} tracked, {} evicted, {} idle",
            app.len(),
            h.evicted,
            h.expired
        )),
    ];
    if app.paused {
        second.push(sep());
        second.push(Span::styled(
            "PAUSED (space resumes)",
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    frame.render_widget(Paragraph::new(vec![first, Line::from(second)]), area);
}

/// `950`, `12.3k`, `4.5M`.
fn si(v: f64) -> String {
    if v < 1e3 {
        format!("{v:.0}")
    } else if v < 1e6 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{:.1}M", v / 1e6)
    }
}

/// Columns that fit in `width`, with their widths. Text columns are as
/// wide as their widest visible cell, within bounds; when space is short
/// they shrink to their minimum (cells are cut), then the least useful
/// columns go.
fn layout_columns(width: u16, rows: &[&FlowRow]) -> Vec<(Column, u16)> {
    struct Col {
        c: Column,
        w: u16,
        min: u16,
    }
    enum Step {
        Shrink(Column),
        Drop(Column),
    }
    let col = |c: Column, min: u16, max: u16| {
        let widest = rows
            .iter()
            .map(|r| u16::try_from(r.text(c).chars().count()).unwrap_or(max))
            .max()
            .unwrap_or(0);
        let title = u16::try_from(c.title().len()).unwrap_or(max);
        let w = widest.max(title).clamp(min, max);
        Col {
            c,
            w,
            min: min.min(w),
        }
    };
    let mut cols = vec![
        col(Column::Src, 11, 24),
        col(Column::Dst, 11, 24),
        col(Column::Proto, 11, 15),
        col(Column::Label, 6, 21),
        col(Column::Eni, 4, 12),
        col(Column::Rewrite, 10, 48),
        col(Column::Packets, 8, 8),
        col(Column::Bytes, 9, 9),
        col(Column::Rate, 7, 7),
        col(Column::Last, 5, 5),
    ];
    // 2 for the selection mark, 1 after each column.
    let need = |cols: &[Col]| 2 + cols.iter().map(|c| c.w + 1).sum::<u16>();
    let steps = [
        Step::Shrink(Column::Rewrite),
        Step::Drop(Column::Rewrite),
        Step::Drop(Column::Bytes),
        Step::Drop(Column::Rate),
        Step::Shrink(Column::Label),
        Step::Shrink(Column::Dst),
        Step::Shrink(Column::Src),
        Step::Shrink(Column::Proto),
        Step::Drop(Column::Last),
        Step::Drop(Column::Packets),
        Step::Drop(Column::Label),
        Step::Drop(Column::Proto),
    ];
    for step in steps {
        let excess = need(&cols).saturating_sub(width);
        if excess == 0 {
            break;
        }
        match step {
            Step::Shrink(s) => {
                if let Some(c) = cols.iter_mut().find(|c| c.c == s) {
                    c.w -= excess.min(c.w - c.min);
                }
            }
            Step::Drop(d) => cols.retain(|c| c.c != d),
        }
    }
    cols.into_iter().map(|c| (c.c, c.w)).collect()
}

/// `text` in `width` columns, ending in `…` when cut: a cell cut short
/// silently reads as another valid value (`203.0.113.1` for
/// `203.0.113.10`, port `8` for `80`).
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Colour of a row's path label: the worst label wins.
pub fn label_style(labels: Labels) -> Style {
    let c = if labels.contains(Label::Incomplete)
        || labels.contains(Label::IcmpError)
        || labels.contains(Label::Dropped)
    {
        Color::Red
    } else if labels.contains(Label::AsymmetricEni) {
        Color::Magenta
    } else if labels.contains(Label::Snat) || labels.contains(Label::Dnat) {
        Color::Yellow
    } else {
        Color::Green
    };
    Style::new().fg(c)
}

fn cell(r: &FlowRow, c: Column, width: u16, now_ns: u64) -> Cell<'static> {
    let text = match c {
        Column::Packets => r.packets.to_string(),
        Column::Bytes => format::bytes(r.bytes),
        Column::Rate => rate_cell(r.rate),
        Column::Last => ago_cell(now_ns, r.last_ns),
        _ => cut(r.text(c), usize::from(width)),
    };
    let line = if c.numeric() {
        Line::from(text).right_aligned()
    } else {
        Line::from(text)
    };
    match c {
        Column::Label => Cell::new(line).style(label_style(r.labels)),
        Column::Rewrite => Cell::new(line).style(Style::new().fg(Color::Yellow)),
        _ => Cell::new(line),
    }
}

fn table(frame: &mut Frame, area: Rect, app: &mut App) {
    // One line for the column titles.
    let height = usize::from(area.height.saturating_sub(1));
    let offset = app.scroll(height);
    let rows: Vec<&FlowRow> = app.visible(offset, height).collect();
    let cols = layout_columns(area.width, &rows);
    let now = app.now_ns;
    let titles = cols.iter().map(|&(c, _)| {
        let mark = match (c == app.sort, app.descending) {
            (false, _) => "",
            (true, true) => "▼",
            (true, false) => "▲",
        };
        let t = Line::from(format!("{}{mark}", c.title()));
        Cell::new(if c.numeric() { t.right_aligned() } else { t })
    });
    let header = Row::new(titles).style(Style::new().add_modifier(Modifier::BOLD).fg(Color::Cyan));
    let body = rows
        .iter()
        .map(|r| Row::new(cols.iter().map(|&(c, w)| cell(r, c, w, now))));
    let widths = cols.iter().map(|&(c, w)| {
        if c == Column::Rewrite {
            Constraint::Min(w)
        } else {
            Constraint::Length(w)
        }
    });
    let empty = rows.is_empty();
    let t = Table::new(body, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ")
        .highlight_spacing(ratatui::widgets::HighlightSpacing::Always);
    let mut state = TableState::default()
        .with_selected((!empty).then(|| app.selected_pos().saturating_sub(offset)));
    frame.render_stateful_widget(t, area, &mut state);
    if empty && area.height > 2 {
        let msg = if app.is_empty() {
            "no flows yet: waiting for traffic on the hooked interfaces"
        } else {
            "no flow matches the filter (Esc clears it)"
        };
        let r = Rect::new(area.x + 2, area.y + 2, area.width.saturating_sub(2), 1);
        frame.render_widget(
            Paragraph::new(msg).style(Style::new().fg(Color::DarkGray)),
            r,
        );
    }
}

fn footer(frame: &mut Frame, area: Rect, app: &App) {
    let dim = Style::new().fg(Color::DarkGray);
    let dir = if app.descending { "▼" } else { "▲" };
    let mut spans = vec![Span::raw(format!(
        " {}/{} flows  sort: {} {dir}",
        app.shown(),
        app.len(),
        app.sort.name()
    ))];
    if app.editing {
        spans.push(Span::raw("  filter: "));
        spans.push(Span::styled(
            format!("{}_", app.filter),
            Style::new().fg(Color::Black).bg(Color::Cyan),
        ));
        spans.push(Span::styled("  Enter keeps, Esc clears", dim));
    } else {
        if !app.filter.is_empty() {
            spans.push(Span::styled(
                format!("  filter: {}", app.filter),
                Style::new().fg(Color::Cyan),
            ));
        }
        // The keys, as many as the width leaves room for: `? help` and
        // `q quit` always.
        const KEYS: &str =
            "  | q quit  ↑↓ move  Enter details  / filter  s sort  space pause  ? help";
        const FEW: &str = "  | q quit  ? help";
        let used: usize = spans.iter().map(|s| s.content.chars().count()).sum();
        let keys = if used + KEYS.chars().count() <= usize::from(area.width) {
            KEYS
        } else {
            FEW
        };
        spans.push(Span::styled(keys, dim));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

const HELP: [(&str, &str); 12] = [
    ("↑ ↓  j k", "move the selection"),
    ("PgUp PgDn", "move by 10 rows"),
    ("g G  Home End", "first / last row"),
    ("Enter", "open / close the selected flow's path"),
    ("Esc", "close the path, or clear the filter"),
    ("/", "filter: pod, IP, port, label, ENI (words AND)"),
    ("s  S", "sort by the next / previous column"),
    ("r", "reverse the sort"),
    ("space", "pause / resume the table"),
    ("?", "this help (any key closes it)"),
    ("q  Ctrl-C", "quit (everything is detached)"),
    ("", ""),
];

fn help(frame: &mut Frame, area: Rect) {
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!(" {k:<15}"), Style::new().fg(Color::Cyan)),
                Span::raw(*v),
            ])
        })
        .collect();
    lines.push(Line::from(
        " Labels: direct (no NAT), snat, dnat, asymmetric-eni, incomplete,",
    ));
    lines.push(Line::from(
        "   icmp-error, dropped (by the kernel): why is in the path pane",
    ));
    lines.push(Line::from(
        " A flow idle for 60 s leaves the table (the header counts them).",
    ));
    let h = u16::try_from(lines.len()).unwrap_or(u16::MAX) + 2;
    let r = area.centered(
        Constraint::Length(68.min(area.width)),
        Constraint::Length(h.min(area.height)),
    );
    frame.render_widget(Clear, r);
    let block = Block::new()
        .borders(Borders::ALL)
        .title(" podtrace watch: keys ");
    frame.render_widget(Paragraph::new(lines).block(block), r);
}
