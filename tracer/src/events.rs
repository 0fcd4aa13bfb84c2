//! Reading the event ring buffers (one per CPU) from tokio:
//! woken by the kernel when it has a batch (or a probe) to deliver, and
//! drained on a timer otherwise, since the programs submit most records
//! without a wakeup (a wakeup costs microseconds).

use std::{cmp::Reverse, collections::BinaryHeap, io, time::Duration};

use futures_util::future::select_all;
use tokio::io::unix::AsyncFd;
use tracer_common::PacketEvent;

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

    /// Reads whatever is in the rings now, without waiting: one CPU's ring
    /// in its own order, several merged by timestamp, so that what one
    /// packet did on two CPUs comes out in the order it happened.
    pub fn drain_now(&mut self, mut f: impl FnMut(Record<'_>)) -> usize {
        // Read in place: copying the whole record first cost as much as
        // decoding it.
        if let [ring] = self.rings.as_mut_slice() {
            return ring
                .get_mut()
                .drain(|bytes| f(decode::decode_record(bytes)));
        }
        let mut heads = BinaryHeap::with_capacity(self.rings.len());
        for (i, ring) in self.rings.iter_mut().enumerate() {
            if let Some(r) = ring.get_mut().peek() {
                heads.push(Reverse((record_ts(r), i)));
            }
        }
        let mut read = 0;
        while let Some(Reverse((_, i))) = heads.pop() {
            let ring = self.rings[i].get_mut();
            if let Some(r) = ring.peek() {
                f(decode::decode_record(r));
                ring.consume();
                read += 1;
            }
            if let Some(r) = ring.peek() {
                heads.push(Reverse((record_ts(r), i)));
            }
        }
        for ring in &mut self.rings {
            ring.get_mut().publish();
        }
        read
    }
}

/// A record's kernel timestamp (0 if it is too short to hold one).
fn record_ts(r: &[u8]) -> u64 {
    const AT: usize = std::mem::offset_of!(PacketEvent, ts_ns);
    r.get(AT..AT + 8)
        .map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
}

impl Default for EventReader {
    fn default() -> Self {
        Self::new()
    }
}
