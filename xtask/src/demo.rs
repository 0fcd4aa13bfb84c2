//! `cargo xtask demo`: sets up, builds podtrace (release) and traces real
//! packets, printing what podtrace saw. One function per scenario:
//! [`lab_ping`] (the default) and [`veth_ping`] (the smallest thing that
//! shows real events, without the lab).
//!
//! Traffic stays inside namespaces the demo (or `podtrace lab up`) creates:
//! nothing routes out of the host namespace.

use std::{
    fs::{self, File},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use crate::{
    binary, cmd, lab,
    scratch::{self, Background, Namespaces, TempDir},
    setup,
};

/// `cargo xtask demo` flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// What to show.
    #[arg(long, value_enum, default_value_t = Scenario::Lab)]
    scenario: Scenario,
}

/// The demo's scenarios.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scenario {
    /// `podtrace lab up`, then `podtrace ping pod-1 pod-3`: the path of a
    /// pod-to-pod ping across two nodes, hop by hop; then the same ping
    /// with a firewall rule on node-b that drops it: where, and why.
    Lab,
    /// `podtrace capture` on a veth pair in two scratch namespaces while one
    /// end pings the other.
    Veth,
}

/// Address of the capturing end.
const IP_A: &str = "10.99.0.1";
/// Address of the pinged end.
const IP_B: &str = "10.99.0.2";
/// How long `podtrace capture` may take to attach.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets up, builds, runs the chosen scenario.
pub fn run(opts: &Options) -> Result<()> {
    setup::run(&setup::Options::default())?;
    let podtrace = binary::build(true)?;
    match opts.scenario {
        Scenario::Lab => lab_ping(&podtrace),
        Scenario::Veth => veth_ping(&podtrace),
    }
}

/// The lab (two nodes, four pods, built from namespaces), then
/// `podtrace ping pod-1 pod-3`; brings the lab down again if it built it.
fn lab_ping(podtrace: &Path) -> Result<()> {
    println!("\n== podtrace lab");
    // Dropped last: the lab comes down before another user gets the lock.
    let _lock = lab::Lock::acquire()?;
    let _lab = lab::Lab::up(podtrace)?;
    println!("\n== podtrace ping pod-1 pod-3 (node-a to node-b)");
    cmd::run(Command::new(podtrace).args(["ping", "pod-1", "pod-3"]))?;

    println!("\n== a firewall rule on node-b drops echo requests: where, and why");
    let _rule = DropRule::insert()?;
    let ping = ["ping", "pod-1", "pod-3", "-c", "1", "-W", "1s"];
    let shown = format!("{} {}", podtrace.display(), ping.join(" "));
    println!("$ {shown}");
    let status = Command::new(podtrace)
        .args(ping)
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    cmd::check_interrupt()?;
    // No reply is the point here: ping exits 1 for that.
    if status.code() != Some(1) {
        bail!("`{shown}` should have found no reply ({status})");
    }
    Ok(())
}

/// The demo's firewall rule on node-b, removed when dropped.
struct DropRule;

/// The rule, as `iptables` arguments after `-I` / `-D`.
const DROP_RULE: [&str; 7] = [
    "FORWARD",
    "-p",
    "icmp",
    "--icmp-type",
    "echo-request",
    "-j",
    "DROP",
];

impl DropRule {
    fn insert() -> Result<Self> {
        cmd::run(
            Command::new("ip")
                .args(["netns", "exec", "node-b", "iptables", "-I"])
                .args(DROP_RULE),
        )?;
        Ok(Self)
    }
}

impl Drop for DropRule {
    fn drop(&mut self) {
        cmd::run_cleanup(
            Command::new("ip")
                .args(["netns", "exec", "node-b", "iptables", "-D"])
                .args(DROP_RULE),
        );
    }
}

/// Two scratch namespaces joined by a veth pair; `podtrace capture` on one
/// end while that end pings the other three times.
fn veth_ping(podtrace: &Path) -> Result<()> {
    // Unique to this run, so a leftover of a killed run never collides.
    let tag = format!("ptdemo-{}", std::process::id());
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    println!("\n== scratch namespaces {a} ({IP_A}) and {b} ({IP_B})");
    // Dropped last, after the capture stopped (locals drop in reverse).
    let mut namespaces = Namespaces::default();
    namespaces.add(&a)?;
    namespaces.add(&b)?;
    ip(&[
        "-n", &a, "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", &b,
    ])?;
    for (ns, dev, addr) in [(&a, "veth-a", IP_A), (&b, "veth-b", IP_B)] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }

    println!("\n== podtrace capture on veth-a, ping {IP_B} from {a}");
    let dir = TempDir::new(&tag)?;
    let [ready, out, err] = ["ready", "stdout", "stderr"].map(|f| dir.path().join(f));
    let mut capture = Background::spawn(
        Command::new(podtrace)
            .args([
                "capture",
                "--netns",
                &a,
                "--iface",
                "veth-a",
                "--ready-file",
            ])
            .arg(&ready)
            .stdout(File::create(&out).context("capture's stdout file")?)
            .stderr(File::create(&err).context("capture's stderr file")?),
    )?;
    wait_ready(&mut capture, &ready, &err)?;
    ip(&[
        "netns", "exec", &a, "ping", "-c", "3", "-i", "0.2", "-W", "1", IP_B,
    ])?;
    // The last reply's event may still be in the ring buffer.
    thread::sleep(Duration::from_millis(500));
    let status = capture.stop(Duration::from_secs(5))?;

    let seen = fs::read_to_string(&out).context("reading capture's output")?;
    let complaints = fs::read_to_string(&err).unwrap_or_default();
    println!(
        "\n== podtrace printed ({} lines; {status})",
        seen.lines().count()
    );
    print!("{seen}{complaints}");
    if !scratch::ended_well(status) {
        bail!("podtrace capture failed ({status})");
    }
    let packets = seen.lines().filter(|l| l.contains(IP_B)).count();
    if packets == 0 {
        bail!("podtrace printed no packet to or from {IP_B}");
    }
    println!("\ndemo: podtrace reported {packets} packets to or from {IP_B} on veth-a");
    Ok(())
}

/// Waits for the ready file; fails early if podtrace exits or the user
/// presses Ctrl-C.
fn wait_ready(capture: &mut Background, ready: &Path, err: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready.exists() {
        cmd::check_interrupt()?;
        if let Some(status) = capture.exited()? {
            let why = fs::read_to_string(err).unwrap_or_default();
            bail!(
                "podtrace capture exited before it was ready ({status}): {}",
                why.trim()
            );
        }
        if Instant::now() > deadline {
            bail!("podtrace capture not ready after {READY_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Echoes and runs `ip` with these arguments.
fn ip(args: &[&str]) -> Result<()> {
    cmd::run(Command::new("ip").args(args))
}
