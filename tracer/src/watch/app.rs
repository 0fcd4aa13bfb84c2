//! The state of the screen, pure: flows as rows, which of them are shown
//! and in which order, the selection, the filter being typed, pause, help.
//! Updated from the engine's [`Update`]s and from keys; the renderer reads it.
//!
//! Ordering 100k rows: rows live in a `Vec` found by id; the shown order
//! (`view`, indices into it) is rebuilt only when something changed and at
//! most once per frame ([`App::refresh`], called by the renderer on the
//! draw tick), never per event. A rebuild filters, then sorts `(key, index)`
//! pairs whose key is a `u64` (numbers, or the first 8 bytes of a text), so
//! the full comparison runs only on ties. The renderer then formats only the
//! rows that fit on the screen.

use std::collections::{HashMap, HashSet};

use super::row::{Column, FlowRow};
use crate::{
    cli::Mode,
    correlate::{Flow, FlowId, Update},
};

/// Figures for the header, refreshed by the edge about once a second.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    /// `(netns, hooked interfaces)` per traced namespace.
    pub hooks: Vec<(String, usize)>,
    /// Events received from the kernel per second.
    pub events_per_s: f64,
    /// Events received in total.
    pub events: u64,
    /// Events the kernel could not deliver (ring buffer full).
    pub lost: u64,
    /// Flows pushed out of the engine's full table.
    pub evicted: u64,
    /// Flows ended by the idle timeout.
    pub expired: u64,
    /// Kernel report mode.
    pub mode: Option<Mode>,
    /// The kernel filter, as flags (`none` when empty).
    pub kernel_filter: String,
}

/// What the flows part of the screen shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    /// The table alone.
    Table,
    /// The table and the selected flow's details.
    Detail,
}

/// A flow change held back while paused.
enum Held {
    Changed(Box<FlowRow>),
    Ended,
}

/// The whole screen state.
pub struct App {
    rows: Vec<FlowRow>,
    by_id: HashMap<FlowId, usize>,
    /// Indices into `rows`: the rows shown, in order. Valid only when not
    /// `dirty`.
    view: Vec<u32>,
    dirty: bool,
    /// Sort column and direction.
    pub sort: Column,
    /// True for largest/most recent first.
    pub descending: bool,
    /// The `/` filter, as typed.
    pub filter: String,
    /// True while the filter is being typed (keys go to it).
    pub editing: bool,
    selected: Option<FlowId>,
    sel_pos: usize,
    offset: usize,
    /// Which pane is open.
    pub pane: Pane,
    /// The selected flow as the engine last had it (for the detail pane).
    pub detail: Option<Flow>,
    /// True when the detail flow has left the engine.
    pub detail_ended: bool,
    /// True while the help is shown.
    pub help: bool,
    /// True while paused: flow changes are held, the screen stays put.
    pub paused: bool,
    held: HashMap<FlowId, Held>,
    /// Flows the engine changed since [`App::take_changes`] last ran: the
    /// engine reports ids, and a row is rebuilt once per frame, not once
    /// per packet.
    changed: HashSet<FlowId>,
    /// Header figures.
    pub header: Header,
    /// Kernel time now, ns (for "last seen").
    pub now_ns: u64,
    /// Set by `q` or Ctrl-C.
    pub quit: bool,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An empty screen, sorted by last seen.
    pub fn new() -> Self {
        Self {
            rows: Vec::new(),
            by_id: HashMap::new(),
            view: Vec::new(),
            dirty: false,
            sort: Column::Last,
            descending: true,
            filter: String::new(),
            editing: false,
            selected: None,
            sel_pos: 0,
            offset: 0,
            pane: Pane::Table,
            detail: None,
            detail_ended: false,
            help: false,
            paused: false,
            held: HashMap::new(),
            changed: HashSet::new(),
            header: Header::default(),
            now_ns: 0,
            quit: false,
        }
    }

    /// Takes one engine update (journeys are not shown here).
    pub fn apply(&mut self, u: Update<'_>) {
        match u {
            Update::Journey(_) => {}
            Update::Flow(f) if self.paused => match self.held.get_mut(&f.id) {
                Some(Held::Changed(r)) => r.update(f),
                _ => {
                    let row = match self.by_id.get(&f.id) {
                        Some(&i) => {
                            let mut r = self.rows[i].clone();
                            r.update(f);
                            r
                        }
                        None => FlowRow::new(f),
                    };
                    self.held.insert(f.id, Held::Changed(Box::new(row)));
                }
            },
            Update::Flow(f) => match self.by_id.get(&f.id) {
                Some(&i) => {
                    self.rows[i].update(f);
                    self.dirty = true;
                }
                None => self.insert(FlowRow::new(f)),
            },
            Update::FlowEnded { flow, .. } if self.paused => {
                self.held.insert(flow.id, Held::Ended);
            }
            Update::FlowEnded { flow, .. } => self.remove(flow.id),
            Update::FlowChanged { id } => {
                self.changed.insert(id);
            }
        }
    }

    /// Rebuilds the rows of the flows changed since the last call, from
    /// `flow` (the engine's current state of a flow; None once it ended).
    pub fn take_changes(&mut self, mut flow: impl FnMut(FlowId) -> Option<Flow>) {
        for id in std::mem::take(&mut self.changed) {
            if let Some(f) = flow(id) {
                self.apply(Update::Flow(&f));
            }
        }
    }

    fn insert(&mut self, row: FlowRow) {
        self.by_id.insert(row.id, self.rows.len());
        self.rows.push(row);
        self.dirty = true;
    }

    fn remove(&mut self, id: FlowId) {
        if let Some(i) = self.by_id.remove(&id) {
            self.rows.swap_remove(i);
            if let Some(moved) = self.rows.get(i) {
                self.by_id.insert(moved.id, i);
            }
            self.dirty = true;
        }
    }

    /// Pauses, or resumes and applies what was held.
    pub fn toggle_pause(&mut self) {
        self.paused = !self.paused;
        if !self.paused {
            for (id, h) in std::mem::take(&mut self.held) {
                match h {
                    Held::Changed(row) => match self.by_id.get(&id) {
                        Some(&i) => self.rows[i] = *row,
                        None => self.insert(*row),
                    },
                    Held::Ended => self.remove(id),
                }
            }
            self.dirty = true;
        }
    }

    /// Recomputes every row's rate, `secs` after the previous sweep.
    pub fn sweep(&mut self, secs: f64) {
        if self.paused {
            return;
        }
        for r in &mut self.rows {
            r.sweep(secs);
        }
        if self.sort == Column::Rate {
            self.dirty = true;
        }
    }

    /// Flows tracked (shown or not).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True with no flow at all.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Marks the view for a rebuild (after the sort or filter changed).
    pub fn invalidate(&mut self) {
        self.dirty = true;
    }

    /// Rebuilds the shown order if anything changed since the last time.
    pub fn refresh(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let words: Vec<String> = self
            .filter
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        let (c, rows) = (self.sort, &self.rows);
        let mut keyed: Vec<(u64, u32)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| words.is_empty() || r.matches(&words))
            .map(|(i, r)| (r.key(c), u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        let full = |a: &(u64, u32), b: &(u64, u32)| {
            a.0.cmp(&b.0)
                .then_with(|| rows[a.1 as usize].cmp_by(&rows[b.1 as usize], c))
        };
        if self.descending {
            keyed.sort_unstable_by(|a, b| full(b, a));
        } else {
            keyed.sort_unstable_by(full);
        }
        self.view.clear();
        self.view.extend(keyed.into_iter().map(|(_, i)| i));
        // Follow the selected flow to its new place; if it is gone, keep
        // the same position.
        let found = self.selected.and_then(|id| {
            self.view
                .iter()
                .position(|&i| self.rows[i as usize].id == id)
        });
        self.sel_pos = found
            .unwrap_or(self.sel_pos)
            .min(self.view.len().saturating_sub(1));
        let ended = self
            .selected
            .is_some_and(|id| !self.rows.iter().any(|r| r.id == id));
        if found.is_none() && ended && self.pane == Pane::Detail {
            // The flow in the open detail pane ended: keep it there, marked
            // ended, rather than show whichever flow now sits in its row
            // under its title. Moving the selection picks a live one. (A
            // flow the filter hides is not ended: the selection moves.)
            return;
        }
        self.selected = self
            .view
            .get(self.sel_pos)
            .map(|&i| self.rows[i as usize].id);
    }

    /// Rows shown (after [`App::refresh`]).
    pub fn shown(&self) -> usize {
        self.view.len()
    }

    /// Index of the selected row among those shown.
    pub fn selected_pos(&self) -> usize {
        self.sel_pos
    }

    /// The selected flow's id.
    pub fn selected(&self) -> Option<FlowId> {
        self.selected
    }

    /// Moves the selection by `delta` rows (clamped).
    pub fn move_by(&mut self, delta: isize) {
        self.refresh();
        if self.view.is_empty() {
            return;
        }
        let last = self.view.len() - 1;
        self.sel_pos = self.sel_pos.saturating_add_signed(delta).min(last);
        self.selected = Some(self.rows[self.view[self.sel_pos] as usize].id);
    }

    /// Moves to the first (`false`) or last (`true`) row.
    pub fn jump(&mut self, end: bool) {
        self.move_by(if end { isize::MAX } else { isize::MIN });
    }

    /// Scrolls so that the selection is inside a window of `height` rows;
    /// returns the first visible row.
    pub fn scroll(&mut self, height: usize) -> usize {
        let height = height.max(1);
        if self.sel_pos < self.offset {
            self.offset = self.sel_pos;
        } else if self.sel_pos >= self.offset + height {
            self.offset = self.sel_pos + 1 - height;
        }
        self.offset = self.offset.min(self.view.len().saturating_sub(height));
        self.offset
    }

    /// The rows from `offset`, at most `n`, in shown order.
    pub fn visible(&self, offset: usize, n: usize) -> impl Iterator<Item = &FlowRow> {
        self.view
            .iter()
            .skip(offset)
            .take(n)
            .map(|&i| &self.rows[i as usize])
    }

    /// The detail pane's flow id, if it is open.
    pub fn detail_id(&self) -> Option<FlowId> {
        (self.pane == Pane::Detail)
            .then_some(self.selected)
            .flatten()
    }

    /// Gives the detail pane the selected flow's latest state (`None`: the
    /// engine no longer has it). While paused, the shown state stays.
    pub fn set_detail(&mut self, flow: Option<&Flow>) {
        let want = self.detail_id();
        if self.detail.as_ref().map(|d| d.id) != want {
            self.detail = None;
            self.detail_ended = false;
        }
        if want.is_none() || (self.paused && self.detail.is_some()) {
            return;
        }
        match (flow, &mut self.detail) {
            (Some(f), Some(d)) if Some(f.id) == want => {
                d.clone_from(f);
                self.detail_ended = false;
            }
            (Some(f), d) if Some(f.id) == want => {
                *d = Some(f.clone());
                self.detail_ended = false;
            }
            _ => self.detail_ended = true,
        }
    }

    /// Next sort column (same column twice flips direction with `S`).
    pub fn cycle_sort(&mut self, back: bool) {
        let all = Column::ALL;
        let i = all.iter().position(|&c| c == self.sort).unwrap_or(0);
        let n = all.len();
        self.sort = all[if back { (i + n - 1) % n } else { (i + 1) % n }];
        self.descending = self.sort.descending_by_default();
        self.dirty = true;
    }

    /// Flips the sort direction.
    pub fn reverse_sort(&mut self) {
        self.descending = !self.descending;
        self.dirty = true;
    }
}
