//! Real-time priority for the threads that read the rings.
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
//! The reader runs when a ring or its drain timer wakes it, drains, and
//! sleeps again: a few % of a core for `-w`, a quarter for JSON at 400 k
//! events/s. The threads are raised once everything is attached: loading
//! and verifying the programs, and finding the pods, run at normal
//! priority. The kernel's real-time throttling (`sched_rt_runtime_us`, 95 %
//! of each second by default) leaves even a runaway reader's CPU to the
//! others for the rest. With `SCHED_RESET_ON_FORK`, threads and processes
//! that podtrace starts run at normal priority unless they ask for it, as
//! the async runtime's blocking threads do.

use std::{
    io,
    sync::atomic::{AtomicBool, AtomicU8, Ordering},
};

/// The priority asked for: the lowest of `SCHED_FIFO`.
pub const PRIORITY: i32 = 1;

const NOT_WANTED: u8 = 0;
const QUIETLY: u8 = 1;
const SAYING_SO: u8 = 2;

/// What the command asked for with [`want`], until [`raise_all`].
static WANTED: AtomicU8 = AtomicU8::new(NOT_WANTED);
/// [`raise_all`] raised the threads: the ones started since raise
/// themselves (see [`on_thread_start`]).
static RAISED: AtomicBool = AtomicBool::new(false);

/// Asks [`raise_all`] to raise this process's threads; `say`: tell the
/// user, once, if the kernel refuses.
pub fn want(say: bool) {
    WANTED.store(if say { SAYING_SO } else { QUIETLY }, Ordering::Relaxed);
}

/// For the async runtime's `on_thread_start`: a thread started after
/// [`raise_all`] joins the others (`SCHED_RESET_ON_FORK` started it at
/// normal priority).
pub fn on_thread_start() {
    if RAISED.load(Ordering::Acquire) {
        let _ = set(0);
    }
}

/// Once everything is attached: runs every thread of this process at
/// `SCHED_FIFO` [`PRIORITY`], with `SCHED_RESET_ON_FORK`, if [`want`]
/// asked for it. Where the kernel refuses (no `CAP_SYS_NICE`, or a cgroup
/// without real-time runtime), they stay at normal priority, and the user
/// is told once if asked.
pub fn raise_all() {
    let wanted = WANTED.swap(NOT_WANTED, Ordering::Relaxed);
    if wanted == NOT_WANTED {
        return;
    }
    RAISED.store(true, Ordering::Release);
    let tids: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for tid in tids {
        // ESRCH: a thread that ended since the listing.
        if let Err(e) = set(tid)
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            RAISED.store(false, Ordering::Release);
            if wanted == SAYING_SO {
                eprintln!(
                    "podtrace: note: reading at normal priority ({e}; real-time needs \
                     CAP_SYS_NICE, and real-time runtime in podtrace's cgroup where the \
                     kernel shares it out): busy pods may keep the reader off the CPU and \
                     events be lost (the totals count them); --no-realtime silences this"
                );
            }
            return;
        }
    }
}

/// Runs thread `tid` (0: the calling one) at `SCHED_FIFO` [`PRIORITY`],
/// with `SCHED_RESET_ON_FORK`.
fn set(tid: i32) -> io::Result<()> {
    // SAFETY: a plain C struct, for which zero is valid; musl's has more
    // fields than glibc's, all of them 0 here.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = PRIORITY;
    // The system call, not libc's wrapper: musl's (the image's libc)
    // fails with ENOSYS, since the call acts on one thread where POSIX
    // says process; one thread is what is wanted here.
    // SAFETY: sched_setscheduler(2) on one thread, with a parameter that
    // outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            tid,
            libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
            &raw const param,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
