//! Reading the event ring buffer from tokio: woken by the kernel when it has
//! a batch (or a probe) to deliver, and drained on a timer otherwise, since
//! the programs submit most records without a wakeup (a wakeup costs ~1 us).

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::decode::{self, DecodeError, Packet};

/// How often the ring buffer is drained when the kernel did not wake us.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Async reader of the kernel's packet events.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    drain: tokio::time::Interval,
}

impl EventReader {
    /// Wraps the ring buffer taken from [`crate::kernel::Kernel::take_events`].
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        let mut drain = tokio::time::interval(DRAIN_INTERVAL);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            // SAFETY: the ring buffer owns its map fd for as long as the
            // AsyncFd owns the ring buffer.
            ring: unsafe { AsyncFd::register(ring) }.map_err(io::Error::from)?,
            drain,
        })
    }

    /// Waits until records may be there, then hands each one, decoded, to
    /// `f`. Returns how many records were read (possibly 0 after a tick).
    pub async fn next_batch(
        &mut self,
        mut f: impl FnMut(Result<Packet, DecodeError>),
    ) -> io::Result<usize> {
        tokio::select! {
            guard = self.ring.readable_mut() => {
                let mut guard = guard?;
                let n = drain(guard.get_inner_mut(), &mut f);
                guard.clear_ready();
                Ok(n)
            }
            _ = self.drain.tick() => Ok(drain(self.ring.get_mut(), &mut f)),
        }
    }

    /// Reads whatever is in the ring now, without waiting.
    pub fn drain_now(&mut self, mut f: impl FnMut(Result<Packet, DecodeError>)) -> usize {
        drain(self.ring.get_mut(), &mut f)
    }
}

fn drain(ring: &mut RingBuf<MapData>, f: &mut impl FnMut(Result<Packet, DecodeError>)) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        f(decode::raw_event(&item).and_then(|ev| decode::decode(&ev)));
    }
    n
}
