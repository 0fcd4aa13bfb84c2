//! The bench's traffic, from namespace `a` to `b` of a [`Pair`]: bulk TCP
//! and 64-byte UDP with iperf3, and request/response with a small client
//! and server of xtask's own. Every run is bounded in time.

use std::{
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::pair::{IP_A, IP_B, Pair, in_netns};
use crate::scratch::Background;

/// What traffic a cell carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// One iperf3 TCP stream.
    BulkTcp,
    /// iperf3 UDP, 64-byte payloads, as fast as the sender goes.
    SmallUdp,
    /// [`RR_CONNS`] connections, each one 64-byte request then one 64-byte
    /// response at a time.
    RequestResponse,
}

impl Scenario {
    /// Every scenario, in the table's order.
    pub const ALL: [Self; 3] = [Self::BulkTcp, Self::SmallUdp, Self::RequestResponse];

    /// Name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Self::BulkTcp => "bulk TCP (iperf3, 1 stream)",
            Self::SmallUdp => "small UDP (iperf3 -u -b 0 -l 64)",
            Self::RequestResponse => "request/response (4 conns, 64 B)",
        }
    }

    /// Unit of its throughput.
    pub fn unit(self) -> &'static str {
        match self {
            Self::BulkTcp => "Gbit/s",
            Self::SmallUdp => "Mpps",
            Self::RequestResponse => "k trans/s",
        }
    }
}

/// Connections of the request/response scenario.
pub const RR_CONNS: usize = 4;
/// Bytes of each request and each response.
const RR_BYTES: usize = 64;
const RR_PORT: u16 = 7001;
const IPERF_PORT: &str = "5201";

/// The servers in namespace `b`, for the whole bench; stopped on drop.
pub struct Servers {
    _iperf: Background,
    stop: Arc<AtomicBool>,
    rr: Option<JoinHandle<Result<()>>>,
}

impl Servers {
    /// Starts `iperf3 -s` and the request/response server.
    pub fn start(pair: &Pair, dir: &Path) -> Result<Self> {
        let log = File::create(dir.join("iperf3-server.log")).context("iperf3's log file")?;
        let iperf = Background::spawn(
            Command::new("ip")
                .args([
                    "netns", "exec", &pair.b, "iperf3", "-s", "-B", IP_B, "-p", IPERF_PORT,
                ])
                .stdout(log.try_clone().context("iperf3's log file")?)
                .stderr(log),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let addr: SocketAddr = format!("{IP_B}:{RR_PORT}").parse()?;
        let listener = in_netns(&pair.b, move || {
            TcpListener::bind(addr).with_context(|| format!("binding {addr}"))
        })
        .join()
        .map_err(|_| anyhow!("the bind thread panicked"))??;
        let flag = Arc::clone(&stop);
        let rr = thread::spawn(move || serve(&listener, &flag));
        // iperf3 needs a moment to listen; its client retries only once.
        thread::sleep(Duration::from_millis(300));
        Ok(Self {
            _iperf: iperf,
            stop,
            rr: Some(rr),
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(rr) = self.rr.take() {
            let _ = rr.join();
        }
    }
}

/// Accepts until `stop`; each connection answers every request in turn.
fn serve(listener: &TcpListener, stop: &Arc<AtomicBool>) -> Result<()> {
    listener.set_nonblocking(true)?;
    let mut workers = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                let flag = Arc::clone(stop);
                workers.push(thread::spawn(move || echo(conn, &flag)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn echo(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nodelay(true);
    // Wakes up now and then to see `stop`, should a client vanish.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; RR_BYTES];
    while !stop.load(Ordering::SeqCst) {
        match conn.read_exact(&mut buf) {
            Ok(()) => {
                if conn.write_all(&buf).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Runs one scenario for `secs` seconds; returns its throughput in the
/// scenario's unit.
pub fn run(scenario: Scenario, pair: &Pair, secs: u32, dir: &Path) -> Result<f64> {
    match scenario {
        Scenario::BulkTcp => {
            let json = iperf(pair, secs, &[], dir)?;
            let bps = json["end"]["sum_received"]["bits_per_second"].as_f64();
            bps.map(|b| b / 1e9)
                .context("no sum_received in iperf3's report")
        }
        Scenario::SmallUdp => {
            // Packets that crossed the veth: iperf3's server drops many
            // once its socket buffer is full, after the hooks saw them.
            let json = iperf(pair, secs, &["-u", "-b", "0", "-l", "64"], dir)?;
            let sent = &json["end"]["sum_sent"];
            match (sent["packets"].as_f64(), sent["seconds"].as_f64()) {
                (Some(p), Some(s)) if s > 0.0 => Ok(p / s / 1e6),
                _ => bail!("no sum_sent in iperf3's report"),
            }
        }
        Scenario::RequestResponse => request_response(pair, secs).map(|t| t / 1e3),
    }
}

/// The CPUs [`iperf`] pins iperf3's client and server to: the first two
/// that xtask may run on, `None` with fewer.
pub fn pinned() -> Option<(usize, usize)> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity writes
    // at most its size, and CPU_ISSET reads within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) } != 0 {
        return None;
    }
    let mut cpus = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) });
    Some((cpus.next()?, cpus.next()?))
}

/// `iperf3 -c` from `a` to `b`, its JSON report.
///
/// The client runs on the first CPU xtask may use and has the server run
/// on the second (`-A 0,1` on most machines; see [`pinned`]). Left to the
/// scheduler, the two ends share a CPU at some moments and not at others,
/// and a tracer's wake-ups move them (sampled here: together in 3-11 of
/// 25 samples of a run with no tracer, 11-17 under podtrace), so an
/// unpinned run measures where the scheduler put iperf3 as well as what
/// the tracer costs. The tracers are not pinned.
fn iperf(pair: &Pair, secs: u32, extra: &[&str], dir: &Path) -> Result<serde_json::Value> {
    let out = dir.join("iperf3.json");
    let pin = pinned().map(|(client, server)| ["-A".to_owned(), format!("{client},{server}")]);
    let mut client = Background::spawn(
        Command::new("ip")
            .args([
                "netns", "exec", &pair.a, "iperf3", "-c", IP_B, "-p", IPERF_PORT,
            ])
            .args([
                "-B",
                IP_A,
                "-J",
                "--connect-timeout",
                "3000",
                "-t",
                &secs.to_string(),
            ])
            .args(pin.iter().flatten())
            .args(extra)
            .stdout(File::create(&out).context("iperf3's report file")?),
    )?;
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs) + 15);
    let status = loop {
        if let Some(status) = client.exited()? {
            break status;
        }
        if Instant::now() > deadline {
            client.stop(Duration::from_secs(2))?;
            bail!("iperf3 did not finish within {secs} s + 15 s");
        }
        crate::cmd::check_interrupt()?;
        thread::sleep(Duration::from_millis(20));
    };
    let text = fs::read_to_string(&out).context("reading iperf3's report")?;
    let json: serde_json::Value = serde_json::from_str(&text).context("parsing iperf3's report")?;
    if !status.success() {
        bail!(
            "iperf3 failed ({status}): {}",
            json["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(json)
}

/// [`RR_CONNS`] clients in `a`, each sending a request and waiting for
/// its response, for `secs` seconds; transactions per second in total.
fn request_response(pair: &Pair, secs: u32) -> Result<f64> {
    let addr: SocketAddr = format!("{IP_B}:{RR_PORT}").parse()?;
    let length = Duration::from_secs(u64::from(secs));
    let start = Instant::now();
    let clients: Vec<_> = (0..RR_CONNS)
        .map(|_| {
            in_netns(&pair.a, move || {
                let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                    .with_context(|| format!("connecting to {addr}"))?;
                conn.set_nodelay(true)?;
                conn.set_read_timeout(Some(Duration::from_secs(3)))?;
                let mut buf = [7u8; RR_BYTES];
                let mut done = 0u64;
                while start.elapsed() < length {
                    conn.write_all(&buf)?;
                    conn.read_exact(&mut buf)
                        .context("waiting for a response")?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for c in clients {
        total += c
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
