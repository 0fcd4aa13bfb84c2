//! What the benches share: timing in the thread's CPU time.

use std::time::Duration;

/// CPU time of `iters` calls of `step`, on this thread (user and system):
/// the targets are per core, and on a shared machine wall time would also
/// count the time the thread waited for a CPU.
pub fn timed(iters: u64, mut step: impl FnMut()) -> Duration {
    let start = thread_cpu();
    for _ in 0..iters {
        step();
    }
    thread_cpu().saturating_sub(start)
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
