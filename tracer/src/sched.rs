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

use std::io;

/// The priority asked for: the lowest of `SCHED_FIFO`.
pub const PRIORITY: i32 = 1;

/// Runs the calling thread at `SCHED_FIFO` [`PRIORITY`], with
/// `SCHED_RESET_ON_FORK`. Fails with `EPERM` without `CAP_SYS_NICE`.
pub fn raise_this_thread() -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: PRIORITY,
    };
    // SAFETY: sched_setscheduler(2) on the calling thread (pid 0), with a
    // parameter that outlives the call.
    let r = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
