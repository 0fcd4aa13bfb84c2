//! The userspace micro-benchmarks (`tracer/benches/decode_correlate.rs`, with
//! criterion): run with `cargo bench`, results read from criterion's JSON
//! files in a directory of this run's own.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// criterion's benchmark ids, with what the table calls them.
pub const BENCHES: [(&str, &str); 5] = [
    ("decode/udp_64b", "decode"),
    ("correlate/1k_flows", "correlate, 1k flows"),
    ("correlate/100k_flows", "correlate, 100k flows"),
    ("decode_correlate/1k_flows", "decode + correlate, 1k flows"),
    (
        "decode_correlate/100k_flows",
        "decode + correlate, 100k flows",
    ),
];

/// What the micro-benchmarks measured.
#[derive(Clone, Debug, Default)]
pub struct Micro {
    /// Events per second on one core, per entry of [`BENCHES`]: criterion's
    /// estimate with its 95 % confidence bounds (low, estimate, high).
    pub rates: Vec<(&'static str, [f64; 3])>,
    /// The engine's live heap after N flows: (N, bytes).
    pub heap: Vec<(u64, u64)>,
}

impl Micro {
    /// The estimate for criterion id `id`.
    pub fn rate(&self, id: &str) -> Option<f64> {
        let label = BENCHES.iter().find(|(i, _)| *i == id)?.1;
        self.rates
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, r)| r[1])
    }

    /// Heap bytes per flow added between the smallest and largest table.
    pub fn bytes_per_flow(&self) -> Option<f64> {
        let (small, big) = (self.heap.first()?, self.heap.last()?);
        (big.0 > small.0).then(|| (big.1 as f64 - small.1 as f64) / (big.0 - small.0) as f64)
    }
}

/// Runs the benches (`quick`: criterion's quick mode, about 10 s in all).
pub fn run(quick: bool, results: &Path) -> Result<Micro> {
    let mut c = cmd::cargo();
    c.env("CRITERION_HOME", results).args([
        "bench",
        "-p",
        "tracer",
        "--bench",
        "decode_correlate",
        "--",
    ]);
    if quick {
        c.args([
            "--quick",
            "--warm-up-time",
            "0.5",
            "--measurement-time",
            "1",
        ]);
    } else {
        c.args(["--warm-up-time", "2", "--measurement-time", "5"]);
    }
    let mut micro = Micro::default();
    let status = cmd::stream(&mut c, false, |line| {
        println!("{line}");
        if let Some(heap) = heap_line(line) {
            micro.heap.push(heap);
        }
    })?;
    if !status.success() {
        bail!("the micro-benchmarks failed ({status})");
    }
    for (id, label) in BENCHES {
        micro
            .rates
            .push((label, rate(&results.join(id).join("new"))?));
    }
    Ok(micro)
}

/// `podtrace-bench: heap flows=N bytes=B`.
fn heap_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("podtrace-bench: heap flows=")?;
    let (flows, bytes) = rest.split_once(" bytes=")?;
    Some((flows.parse().ok()?, bytes.trim().parse().ok()?))
}

/// Events per second from one benchmark's estimates (one event per
/// iteration): criterion's slope if it fitted one, else the mean.
fn rate(dir: &Path) -> Result<[f64; 3]> {
    let path = dir.join("estimates.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).context("parsing criterion's estimates")?;
    let est = if json["slope"].is_object() {
        &json["slope"]
    } else {
        &json["mean"]
    };
    let ns = |v: &serde_json::Value| v.as_f64().filter(|n| *n > 0.0).map(|n| 1e9 / n);
    let ci = &est["confidence_interval"];
    match (
        ns(&ci["upper_bound"]),
        ns(&est["point_estimate"]),
        ns(&ci["lower_bound"]),
    ) {
        (Some(lo), Some(mid), Some(hi)) => Ok([lo, mid, hi]),
        _ => bail!("no estimate in {}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_heap_lines() {
        assert_eq!(
            heap_line("podtrace-bench: heap flows=1000 bytes=42"),
            Some((1000, 42))
        );
        assert_eq!(heap_line("decode/udp_64b time: [1 ns]"), None);
    }

    #[test]
    fn bytes_per_flow_is_marginal() {
        let m = Micro {
            rates: Vec::new(),
            heap: vec![(1_000, 10_000_000), (100_000, 30_000_000)],
        };
        assert!((m.bytes_per_flow().unwrap() - 202.02).abs() < 0.01);
    }
}
