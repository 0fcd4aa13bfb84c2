//! Reading the event ring buffers (one per CPU) from tokio:
//! woken by the kernel when it has a batch (or a probe) to deliver, and
//! drained on a timer otherwise, since the programs submit most records
//! without a wakeup (a wakeup costs microseconds).

use std::{cmp::Reverse, collections::BinaryHeap, io, ops::Range, time::Duration};

use futures_util::future::select_all;
use tokio::io::unix::AsyncFd;
use tracer_common::{BatchHeader, EventKind, MAX_SNAPLEN, PacketEvent, STAGE_DELAY_NS};

use crate::{
    decode::{self, DecodeError, Packet},
    kernel::{Kernel, KernelError},
    ring::Ring,
};

/// A decoded packet and the bytes it was decoded from.
pub type Record<'a> = Result<(Packet, &'a [u8]), DecodeError>;

/// How often the ring buffers are drained when the kernel did not wake us.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// How soon a reader that held records back looks again (see
/// [`EventReader::drain_now`]), rather than at the next drain tick: the
/// batch it waits for reaches its ring without waking anyone.
pub const HELD_RETRY: Duration = Duration::from_millis(5);

/// Async reader of the kernel's packet events.
pub struct EventReader {
    rings: Vec<Source>,
    drain: tokio::time::Interval,
    /// The last drain left records in the rings for another CPU's batch.
    held: bool,
    /// The last drain stopped at a ring's budget for one pass (see
    /// [`Ring::begin_pass`]) with records left: drain again at once.
    more: bool,
    /// Parse each record's frame (else only its header: see
    /// [`decode::decode_record_as`]).
    frames: bool,
}

impl EventReader {
    /// A reader with no ring yet.
    pub fn new() -> Self {
        let mut drain = tokio::time::interval(DRAIN_INTERVAL);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            rings: Vec::new(),
            drain,
            held: false,
            more: false,
            frames: true,
        }
    }

    /// Whether records come with their frame parsed (the default), or with
    /// only their header's fields (L3 and L4 empty), for a reader that
    /// only writes the captured bytes out.
    pub fn parse_frames(&mut self, frames: bool) {
        self.frames = frames;
    }

    /// Adds a ring buffer (from [`crate::kernel::Kernel::take_new_rings`]).
    pub fn add(&mut self, ring: Ring) -> io::Result<()> {
        // SAFETY: the ring buffer owns its map fd for as long as the
        // AsyncFd owns the ring buffer.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(io::Error::from)?;
        self.rings.push(Source { ring, at: 0 });
        Ok(())
    }

    /// Waits until records may be there, then hands each one, decoded, to
    /// `f`, up to what `kernel` says every CPU has handed over (see
    /// [`Kernel::complete_before`]); the rest waits for a later call.
    /// Returns how many events were read (possibly 0 after a tick).
    pub async fn next_batch(
        &mut self,
        kernel: &Kernel,
        mut f: impl FnMut(Record<'_>),
    ) -> io::Result<usize> {
        if self.rings.is_empty() {
            self.drain.tick().await;
            return Ok(0);
        }
        if self.more {
            // Records are waiting: let the caller's other futures (a stop
            // signal, a timer) run, then drain on.
            tokio::task::yield_now().await;
        } else {
            // Woken by any ring or by the timer, drain them all: cheap, and
            // it keeps the namespaces' events close in time.
            let ready = select_all(self.rings.iter().map(|s| Box::pin(s.ring.readable())));
            tokio::select! {
                (guard, _, _) = ready => guard?.clear_ready(),
                _ = self.drain.tick() => {}
                () = tokio::time::sleep(HELD_RETRY), if self.held => {}
            }
        }
        let before = if self.rings.len() > 1 {
            kernel.complete_before().map_err(io::Error::other)?
        } else {
            u64::MAX
        };
        Ok(self.drain_now(&mut f, before))
    }

    /// Reads what is in the rings now, without waiting: one CPU's ring in
    /// its own order, several merged by timestamp, so that what one packet
    /// did on two CPUs comes out in the order it happened. With several
    /// rings, stops at the first event stamped `before` or later, which
    /// stays for the next call, unless a ring is more than half full:
    /// then order gives way, rather than records be lost. Returns how many
    /// events were read.
    pub fn drain_now(&mut self, mut f: impl FnMut(Record<'_>), before: u64) -> usize {
        self.held = false;
        self.more = false;
        let frames = self.frames;
        // Read in place: copying the whole record first cost as much as
        // decoding it.
        if let [src] = self.rings.as_mut_slice() {
            let mut read = 0;
            src.ring.get_mut().drain(|r| {
                let mut at = 0;
                while let Some((range, next)) = event_in(r, at) {
                    f(decode::decode_record_as(&r[range], frames));
                    read += 1;
                    at = next;
                }
            });
            src.at = 0;
            self.more = src.ring.get_ref().stopped();
            return read;
        }
        let pressed = self.rings.iter().any(|s| {
            let ring = s.ring.get_ref();
            ring.filled() > ring.size() / 2
        });
        let before = if pressed { u64::MAX } else { before };
        for src in &mut self.rings {
            src.ring.get_mut().begin_pass();
        }
        // The rings' next events, oldest first. The oldest ring is read on
        // in a run, without going back to the heap, for as long as its
        // events are no newer than the next ring's head: one CPU's events
        // come in runs, and one look at its ring serves a whole record.
        let mut heads = BinaryHeap::with_capacity(self.rings.len());
        for (i, src) in self.rings.iter_mut().enumerate() {
            if let Some(ts) = src.head_ts() {
                heads.push(Reverse((ts, i)));
            }
        }
        let mut read = 0;
        while let Some(Reverse((_, i))) = heads.pop() {
            // The next ring's head, as the heap orders them: by time, then
            // by ring.
            let until = heads.peek().map_or((u64::MAX, usize::MAX), |Reverse(h)| *h);
            match self.rings[i].run(i, until, before, frames, &mut f, &mut read) {
                Run::Next(ts) => heads.push(Reverse((ts, i))),
                Run::Held => self.held = true,
                Run::Empty => {}
                Run::Stopped => {
                    // This ring's next record may be older than the others':
                    // the merge goes on in the next pass.
                    self.more = true;
                    break;
                }
            }
        }
        for src in &mut self.rings {
            src.ring.get_mut().publish();
        }
        read
    }
}

impl EventReader {
    /// [`drain_now`](Self::drain_now), then again until the programs have
    /// no records left gathering in batches (see [`tracer_common::Stage`]):
    /// what a reader calls last, once the packets it waits for were sent.
    /// Gives up after three times the time a record may wait, should a
    /// full ring keep refusing a batch.
    pub async fn drain_settled(
        &mut self,
        kernel: &Kernel,
        mut f: impl FnMut(Record<'_>),
    ) -> Result<usize, KernelError> {
        let until = tokio::time::Instant::now() + 3 * Duration::from_nanos(STAGE_DELAY_NS);
        let mut read = 0;
        loop {
            // A batch leaves the count only once it is in its ring: once
            // none is left, every record is in a ring, and all go out.
            let last = kernel.staged_bytes()? == 0 || tokio::time::Instant::now() >= until;
            let before = if last {
                u64::MAX
            } else {
                kernel.complete_before()?
            };
            read += self.drain_now(&mut f, before);
            if last {
                // Passes are bounded: the last one reads on while a ring
                // stopped at its budget, for as long as 16 rings' worth
                // (traffic may still be coming in).
                for _ in 0..16 {
                    if !self.more {
                        break;
                    }
                    read += self.drain_now(&mut f, before);
                }
                return Ok(read);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// One CPU's ring, and where the reader is in its current record.
struct Source {
    ring: AsyncFd<Ring>,
    /// Offset of the next event in the current record (0: its start).
    at: usize,
}

/// Where a [`Source::run`] stopped.
enum Run {
    /// At an event that comes after `until`, stamped so.
    Next(u64),
    /// At an event stamped `before` or later: the ring is done for now.
    Held,
    /// The ring had nothing more ready.
    Empty,
    /// The ring stopped at its budget for this pass, with records left.
    Stopped,
}

impl Source {
    /// The timestamp of the next event, past records already read
    /// through; None when the ring has none ready.
    fn head_ts(&mut self) -> Option<u64> {
        let ring = self.ring.get_mut();
        loop {
            let r = ring.peek()?;
            if let Some((range, _)) = event_in(r, self.at) {
                return Some(record_ts(&r[range]));
            }
            ring.consume();
            self.at = 0;
        }
    }

    /// Hands this ring's events to `f`, in order, for as long as they are
    /// stamped before `before` and, as the heap orders rings' heads (time,
    /// then ring), before the next ring's head `until`; this ring is ring
    /// `me`.
    fn run(
        &mut self,
        me: usize,
        until: (u64, usize),
        before: u64,
        frames: bool,
        f: &mut impl FnMut(Record<'_>),
        read: &mut usize,
    ) -> Run {
        let ring = self.ring.get_mut();
        loop {
            let Some(r) = ring.peek() else {
                return if ring.stopped() {
                    Run::Stopped
                } else {
                    Run::Empty
                };
            };
            while let Some((range, next)) = event_in(r, self.at) {
                let ev = &r[range];
                let ts = record_ts(ev);
                if ts >= before {
                    return Run::Held;
                }
                if (ts, me) > until {
                    return Run::Next(ts);
                }
                f(decode::decode_record_as(ev, frames));
                *read += 1;
                self.at = next;
            }
            ring.consume();
            self.at = 0;
        }
    }
}

/// The event at offset `at` of ring record `r`, and the offset of the one
/// after it; None past the last. A batch holds events back to back after
/// its header, each as long as its `cap_len` says; any other record is one
/// event. A batch whose lengths do not add up yields its rest as one event,
/// which the decoder rejects, rather than anything read out of step.
fn event_in(r: &[u8], at: usize) -> Option<(Range<usize>, usize)> {
    if u32_at(r, 0) != Some(EventKind::Batch as u32) {
        return (at == 0).then_some((0..r.len(), r.len()));
    }
    let body = u32_at(r, std::mem::offset_of!(BatchHeader, len))? as usize;
    let end = (BatchHeader::LEN + body).min(r.len());
    let pos = at.max(BatchHeader::LEN);
    if pos >= end {
        return None;
    }
    let len = u32_at(&r[pos..end], std::mem::offset_of!(PacketEvent, cap_len))
        .filter(|&cap| cap as usize <= MAX_SNAPLEN)
        .map(PacketEvent::record_len)
        .filter(|&len| pos + len <= end)
        .unwrap_or(end - pos);
    Some((pos..pos + len, pos + len))
}

/// The native-endian `u32` at `at`, if `b` holds it.
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

/// An event's kernel timestamp (0 if it is too short to hold one).
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

#[cfg(test)]
mod tests {
    use super::event_in;
    use tracer_common::{BatchHeader, EventKind, PacketEvent};

    /// A record of `cap` packet bytes, as the kernel writes it in a batch.
    fn record(cap: u32, fill: u8) -> Vec<u8> {
        let mut r = vec![fill; PacketEvent::record_len(cap)];
        r[..4].copy_from_slice(&(EventKind::Packet as u32).to_ne_bytes());
        let at = std::mem::offset_of!(PacketEvent, cap_len);
        r[at..at + 4].copy_from_slice(&cap.to_ne_bytes());
        r
    }

    fn batch(records: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = records.concat();
        let mut b = (EventKind::Batch as u32).to_ne_bytes().to_vec();
        b.extend_from_slice(&u32::try_from(body.len()).unwrap().to_ne_bytes());
        b.extend_from_slice(&body);
        b
    }

    fn events(r: &[u8]) -> Vec<std::ops::Range<usize>> {
        let (mut at, mut out) = (0, Vec::new());
        while let Some((range, next)) = event_in(r, at) {
            out.push(range);
            at = next;
        }
        out
    }

    #[test]
    fn a_batch_yields_its_records_in_order() {
        let (a, b, c) = (record(42, 1), record(0, 2), record(256, 3));
        let r = batch(&[a.clone(), b.clone(), c.clone()]);
        let got = events(&r);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(&r[got[0].clone()], &a[..]);
        assert_eq!(&r[got[1].clone()], &b[..]);
        assert_eq!(&r[got[2].clone()], &c[..]);
        assert_eq!(got[0].start, BatchHeader::LEN);
        assert_eq!(got[2].end, r.len());
    }

    #[test]
    fn a_plain_record_is_one_event() {
        let r = record(60, 7);
        assert_eq!(events(&r), vec![(0..r.len())]);
    }

    #[test]
    fn a_batch_whose_lengths_do_not_add_up_ends_in_one_bad_event() {
        let mut r = batch(&[record(64, 1), record(64, 2)]);
        // The second record claims more bytes than the batch holds.
        let at = BatchHeader::LEN
            + PacketEvent::record_len(64)
            + std::mem::offset_of!(PacketEvent, cap_len);
        r[at..at + 4].copy_from_slice(&200u32.to_ne_bytes());
        let got = events(&r);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1].end, r.len(), "the rest, for the decoder to reject");
        // A header longer than the record stops at the record's end.
        let mut short = batch(&[record(8, 1)]);
        short[4..8].copy_from_slice(&4000u32.to_ne_bytes());
        assert_eq!(events(&short), vec![(BatchHeader::LEN..short.len())]);
        // An empty batch has nothing.
        assert!(events(&batch(&[])).is_empty());
    }
}
