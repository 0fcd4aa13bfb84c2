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
//! events/s. The kernel's real-time throttling (`sched_rt_runtime_us`, 95 %
//! of each second by default) leaves even a runaway reader's CPU to the
//! others for the rest. With `SCHED_RESET_ON_FORK`, threads and processes
//! that podtrace starts run at normal priority unless they ask for it, as
//! the async runtime's workers do.

use std::{io, sync::Mutex};

/// The priority asked for: the lowest of `SCHED_FIFO`.
pub const PRIORITY: i32 = 1;

/// Runs the calling thread at `SCHED_FIFO` [`PRIORITY`], with
/// `SCHED_RESET_ON_FORK`. Fails with `EPERM` without `CAP_SYS_NICE`.
pub fn raise_this_thread() -> io::Result<()> {
    // SAFETY: a plain C struct, for which zero is valid; musl's has more
    // fields than glibc's, all of them 0 here.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = PRIORITY;
    // The system call, not libc's wrapper: musl's (the image's libc)
    // fails with ENOSYS, since the call acts on one thread where POSIX
    // says process; one thread is what is wanted here.
    // SAFETY: sched_setscheduler(2) on the calling thread (pid 0), with a
    // parameter that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
            &raw const param,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why the threads read at normal priority, until [`say_if_refused`]
/// says it.
static REFUSED: Mutex<Option<io::Error>> = Mutex::new(None);

/// Keeps `e`, the reason [`raise_this_thread`] failed, for
/// [`say_if_refused`]: said at once, it would come before the clearer
/// error of a podtrace that lacks the privileges to trace at all.
pub fn refused(e: io::Error) {
    if let Ok(mut r) = REFUSED.lock() {
        *r = Some(e);
    }
}

/// Once everything is attached: says, once, that the rings are read at
/// normal priority, if the kernel refused real-time.
pub fn say_if_refused() {
    let Some(e) = REFUSED.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    eprintln!(
        "podtrace: note: reading at normal priority ({e}; real-time needs CAP_SYS_NICE, \
         and real-time runtime in podtrace's cgroup where the kernel shares it out): busy \
         pods may keep the reader off the CPU and events be lost (the totals count them); \
         --no-realtime silences this"
    );
}
