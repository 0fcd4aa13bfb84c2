//! Reading the event ring buffers (one per traced namespace) from tokio:
//! woken by the kernel when it has a batch (or a probe) to deliver, and
//! drained on a timer otherwise, since the programs submit most records
//! without a wakeup (a wakeup costs ~1 us).

use std::{io, time::Duration};

use futures_util::future::select_all;
use tokio::io::unix::AsyncFd;

use crate::{
    decode::{self, DecodeError, Packet},
    ring::Ring,
};

/// A decoded packet and the bytes it was decoded from.
pub type Record<'a> = Result<(Packet, &'a [u8]), DecodeError>;

/// How often the ring buffers are drained when the kernel did not wake us.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Async reader of the kernel's packet events.
pub struct EventReader {
    rings: Vec<AsyncFd<Ring>>,
    drain: tokio::time::Interval,
}

impl EventReader {
    /// A reader with no ring yet.
    pub fn new() -> Self {
        let mut drain = tokio::time::interval(DRAIN_INTERVAL);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            rings: Vec::new(),
            drain,
        }
    }

    /// Adds a ring buffer (from [`crate::kernel::Kernel::take_new_rings`]).
    pub fn add(&mut self, ring: Ring) -> io::Result<()> {
        // SAFETY: the ring buffer owns its map fd for as long as the
        // AsyncFd owns the ring buffer.
        self.rings
            .push(unsafe { AsyncFd::register(ring) }.map_err(io::Error::from)?);
        Ok(())
    }

    /// Waits until records may be there, then hands each one, decoded, to
    /// `f`. Returns how many records were read (possibly 0 after a tick).
    pub async fn next_batch(&mut self, mut f: impl FnMut(Record<'_>)) -> io::Result<usize> {
        if self.rings.is_empty() {
            self.drain.tick().await;
            return Ok(0);
        }
        {
            // Woken by any ring or by the timer, drain them all: cheap, and
            // it keeps the namespaces' events close in time.
            let ready = select_all(self.rings.iter().map(|r| Box::pin(r.readable())));
            tokio::select! {
                (guard, _, _) = ready => guard?.clear_ready(),
                _ = self.drain.tick() => {}
            }
        }
        Ok(self.drain_now(&mut f))
    }

    /// Reads whatever is in the rings now, without waiting.
    pub fn drain_now(&mut self, mut f: impl FnMut(Record<'_>)) -> usize {
        self.rings
            .iter_mut()
            .map(|r| drain(r.get_mut(), &mut f))
            .sum()
    }
}

impl Default for EventReader {
    fn default() -> Self {
        Self::new()
    }
}

fn drain(ring: &mut Ring, f: &mut impl FnMut(Record<'_>)) -> usize {
    // Read in place: copying the whole record first cost as much as
    // decoding it.
    ring.drain(|bytes| f(decode::decode_record(bytes)))
}
