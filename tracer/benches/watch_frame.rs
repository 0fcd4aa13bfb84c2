//! Frame time of `podtrace watch` with 100k tracked flows, on a 200x50
//! screen: the target is under 50 ms whatever the flow count.
//!
//! - `steady`: nothing changed since the last frame (the common case
//!   between bursts): only the visible rows are formatted.
//! - `resorted`: flows changed, so the frame first rebuilds the shown
//!   order (filter + sort of all 100k rows), as it does at most once a tick.
//! - `filtered`: the same with a `/` filter typed.
//! - `detail`: the detail pane open on the selected flow.
//!
//! `cargo bench -p tracer --bench watch_frame -- --quick`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ratatui::{Terminal, backend::TestBackend};
use tracer::watch::{
    app::{App, Pane},
    row::Column,
    synth::Lab,
    ui,
};

const FLOWS: usize = 100_000;

fn setup() -> (Lab, App) {
    let mut lab = Lab::new(250, FLOWS + 1);
    let mut app = App::new();
    lab.fill(FLOWS, |u| app.apply(u));
    assert_eq!(app.len(), FLOWS, "every synthetic flow is tracked");
    app.now_ns = lab.now_ns() + 1_000_000_000;
    app.sort = Column::Bytes;
    (lab, app)
}

fn frames(c: &mut Criterion) {
    let (lab, mut app) = setup();
    let mut term = Terminal::new(TestBackend::new(200, 50)).expect("test backend");
    let mut g = c.benchmark_group("watch_frame_100k_flows_200x50");
    g.sample_size(30);
    g.bench_function("steady", |b| {
        b.iter(|| {
            term.draw(|f| ui::draw(f, black_box(&mut app)))
                .expect("draw");
        });
    });
    g.bench_function("resorted", |b| {
        b.iter(|| {
            app.invalidate();
            term.draw(|f| ui::draw(f, black_box(&mut app)))
                .expect("draw");
        });
    });
    app.filter = "pod-a1".into();
    g.bench_function("filtered", |b| {
        b.iter(|| {
            app.invalidate();
            term.draw(|f| ui::draw(f, black_box(&mut app)))
                .expect("draw");
        });
    });
    app.filter.clear();
    app.invalidate();
    app.pane = Pane::Detail;
    app.move_by(20);
    g.bench_function("detail", |b| {
        b.iter(|| {
            if let Some(id) = app.detail_id() {
                app.set_detail(lab.engine.flow(id).as_ref());
            }
            term.draw(|f| ui::draw(f, black_box(&mut app)))
                .expect("draw");
        });
    });
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
