//! Real-time priority for the threads that read the rings, when they need
//! it.
//!
//! The fair scheduler shares a CPU between sessions and cgroups before it
//! shares it between their threads. A reader in a session or cgroup of
//! its own, as on a node where the traffic comes from pods, could then be
//! kept off the CPU for seconds by busy request/response traffic while its
//! rings overflowed: on this project's 2-CPU test VM, podtrace started
//! with `setsid` lost 97 % of the events of four request/response
//! connections, where the same podtrace in the traffic's own session lost
//! none (tcpdump, single-threaded, lost 0.07 % either way). At `SCHED_FIFO`
//! priority 1, the lowest real-time priority, it lost none in both.
//!
//! But a real-time thread that wakes up runs at once on the CPU it last
//! ran on, taking it from whatever runs there, where a thread at normal
//! priority goes to an idle CPU if there is one. With bulk TCP between
//! two pods, which leaves each CPU of the test VM a third idle, a reader
//! always at real-time priority cost the traffic about 5 % more than one
//! at normal priority, and neither lost anything.
//!
//! So the readers run at normal priority, and a watch thread at
//! `SCHED_FIFO` [`WATCH_PRIORITY`] looks at them every [`PERIOD`]. When a
//! ring is more than half full (the reader is woken at a quarter), or the
//! reader has not been round its loop for [`LATE`] (it goes round at
//! least every drain tick, 20 ms), the reader was kept off the CPU: the
//! watch raises every other thread of the process to `SCHED_FIFO`
//! [`PRIORITY`], and lowers them again once neither has been seen for
//! [`HOLD`]. The rest of a ring of the default 2 MiB per CPU takes about
//! 35 ms of the busiest traffic measured to fill; the watch's own wakeups
//! cost a few µs each.
//!
//! Threads are watched once everything is attached: loading and verifying
//! the programs, and finding the pods, run at normal priority. The
//! kernel's real-time throttling (`sched_rt_runtime_us`, 95 % of each
//! second by default) leaves even a runaway reader's CPU to the others for
//! the rest. With `SCHED_RESET_ON_FORK`, threads and processes that
//! podtrace starts run at normal priority unless they ask for it, as the
//! async runtime's blocking threads do.

use std::{
    io,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::ring::Gauge;

/// The readers' priority when raised: the lowest of `SCHED_FIFO`.
pub const PRIORITY: i32 = 1;
/// The watch thread's: above the readers', so that it can lower them.
pub const WATCH_PRIORITY: i32 = 2;
/// How often the watch looks at the rings.
pub const PERIOD: Duration = Duration::from_millis(5);
/// How long the readers stay raised after they were last seen behind.
pub const HOLD: Duration = Duration::from_secs(2);
/// A reader that has not been round its loop for this long is behind.
pub const LATE: Duration = Duration::from_millis(100);

const NOT_WANTED: u8 = 0;
const QUIETLY: u8 = 1;
const SAYING_SO: u8 = 2;

/// What the command asked for with [`want`], until [`watch`].
static WANTED: AtomicU8 = AtomicU8::new(NOT_WANTED);
/// The readers are raised: threads started since raise themselves (see
/// [`on_thread_start`]).
static RAISED: AtomicBool = AtomicBool::new(false);
/// When the reader last went round its loop (see [`beat`]).
static BEAT_NS: AtomicU64 = AtomicU64::new(0);

/// Time since the first call, in ns: a clock the reader and the watch
/// share.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The reader went round its loop (it does at least once per drain tick).
pub fn beat() {
    BEAT_NS.store(now_ns(), Ordering::Relaxed);
}

/// Asks [`watch`] to watch this process's readers; `say`: tell the user,
/// once, if the kernel refuses real-time priority.
pub fn want(say: bool) {
    WANTED.store(if say { SAYING_SO } else { QUIETLY }, Ordering::Relaxed);
}

/// For the async runtime's `on_thread_start`: a thread started while the
/// readers are raised joins them (`SCHED_RESET_ON_FORK` started it at
/// normal priority).
pub fn on_thread_start() {
    if RAISED.load(Ordering::Acquire) {
        let _ = set(0, Some(PRIORITY));
    }
}

/// The watch thread; stopped (and the readers lowered) when dropped.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Once everything is attached: starts the watch thread over `gauges` (one
/// per ring), if [`want`] asked for it. Where the kernel refuses real-time
/// priority (no `CAP_SYS_NICE`, or a cgroup without real-time runtime),
/// the readers stay at normal priority, and the user is told once if
/// asked.
pub fn watch(gauges: Vec<Gauge>) -> Option<Watch> {
    let wanted = WANTED.swap(NOT_WANTED, Ordering::Relaxed);
    if wanted == NOT_WANTED || gauges.is_empty() {
        return None;
    }
    beat();
    let stop = Arc::new(AtomicBool::new(false));
    let (started, refused) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("podtrace-watch".into())
        .spawn({
            let stop = Arc::clone(&stop);
            move || {
                let r = set(0, Some(WATCH_PRIORITY));
                let ok = r.is_ok();
                let _ = started.send(r);
                if ok {
                    run(&gauges, &stop);
                }
            }
        })
        .ok()?;
    // Said here, before a command takes the terminal (watch's screen).
    if let Ok(Err(e)) = refused.recv() {
        let _ = thread.join();
        if wanted == SAYING_SO {
            eprintln!(
                "podtrace: note: reading at normal priority ({e}; real-time needs \
                 CAP_SYS_NICE, and real-time runtime in podtrace's cgroup where the \
                 kernel shares it out): busy pods may keep the reader off the CPU and \
                 events be lost (the totals count them); --no-realtime silences this"
            );
        }
        return None;
    }
    Some(Watch {
        stop,
        thread: Some(thread),
    })
}

/// The watch thread's loop, at its priority, until `stop`. Should the
/// kernel refuse to raise the readers (it let the watch be raised), they
/// stay at normal priority.
fn run(gauges: &[Gauge], stop: &AtomicBool) {
    // SAFETY: gettid(2) has no preconditions.
    let me = unsafe { libc::gettid() };
    let late_ns = u64::try_from(LATE.as_nanos()).unwrap_or(u64::MAX);
    let mut raised_until: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(PERIOD);
        let late = now_ns().saturating_sub(BEAT_NS.load(Ordering::Relaxed)) > late_ns;
        let behind = late || gauges.iter().any(|g| g.filled() > g.size() / 2);
        let now = Instant::now();
        if behind {
            if raised_until.is_none() {
                RAISED.store(true, Ordering::Release);
                if set_all(me, Some(PRIORITY)).is_err() {
                    RAISED.store(false, Ordering::Release);
                    let _ = set_all(me, None);
                    return;
                }
            }
            raised_until = Some(now + HOLD);
        } else if raised_until.is_some_and(|t| now >= t) {
            RAISED.store(false, Ordering::Release);
            let _ = set_all(me, None);
            raised_until = None;
        }
    }
    if raised_until.is_some() {
        RAISED.store(false, Ordering::Release);
        let _ = set_all(me, None);
    }
}

/// [`set`] on every thread of this process but `except`.
fn set_all(except: i32, priority: Option<i32>) -> io::Result<()> {
    let tids: Vec<i32> = std::fs::read_dir("/proc/self/task")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&tid| tid != except)
        .collect();
    for tid in tids {
        // ESRCH: a thread that ended since the listing.
        if let Err(e) = set(tid, priority)
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            return Err(e);
        }
    }
    Ok(())
}

/// Runs thread `tid` (0: the calling one) at `SCHED_FIFO` `priority`, or
/// at normal priority (`SCHED_OTHER`) for None; with
/// `SCHED_RESET_ON_FORK` either way.
fn set(tid: i32, priority: Option<i32>) -> io::Result<()> {
    // SAFETY: a plain C struct, for which zero is valid; musl's has more
    // fields than glibc's, all of them 0 here.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = priority.unwrap_or(0);
    let policy = if priority.is_some() {
        libc::SCHED_FIFO
    } else {
        libc::SCHED_OTHER
    };
    // The system call, not libc's wrapper: musl's (the image's libc)
    // fails with ENOSYS, since the call acts on one thread where POSIX
    // says process; one thread is what is wanted here.
    // SAFETY: sched_setscheduler(2) on one thread, with a parameter that
    // outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            tid,
            policy | libc::SCHED_RESET_ON_FORK,
            &raw const param,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
