//! The event ring buffer, read through its own mappings.
//!
//! aya's reader publishes the consumer position after every record. The
//! programs read that position in every output to the ring, on the
//! packet's CPU, so each record cost them a cache line fetched back from
//! the reader's CPU. This reader publishes it once per [`PUBLISH_EVERY`]
//! records or [`PUBLISH_SHARE`] of the ring, whichever comes first, and
//! whenever it catches up, which keeps the line in the producers' caches.
//! The ring loses at most that much room.
//!
//! The layout is the kernel's (`kernel/bpf/ringbuf.c`): a read-write page
//! with the consumer position, then a read-only page with the producer
//! position followed by the data pages mapped twice in a row, so that a
//! record that wraps is still contiguous.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence},
};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

/// Records read between two publications of the consumer position.
pub const PUBLISH_EVERY: usize = 64;
/// Or this share of the ring (1/N), when records are large: 64 batches of
/// records could be half a ring the kernel would think still unread.
pub const PUBLISH_SHARE: usize = 32;

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HDR: usize = 8;

/// A `BPF_MAP_TYPE_RINGBUF` map, mapped for reading.
pub struct Ring {
    fd: OwnedFd,
    consumer: NonNull<u8>,
    producer: NonNull<u8>,
    page: usize,
    size: usize,
    /// Next record to read; published to the kernel in batches.
    pos: usize,
    /// The producer position last read.
    prod: usize,
    /// Size with header and padding of the record `peek` returned.
    next_len: usize,
    /// Records consumed since the position was last published.
    unpublished: usize,
    /// Bytes consumed since then.
    unpublished_bytes: usize,
    /// Bytes this pass may still read (see [`Ring::begin_pass`]).
    budget: usize,
    /// This pass stopped at its budget with records left.
    stopped: bool,
}

// SAFETY: the mappings are owned by the Ring and only touched through
// `&mut self` (or atomically); nothing is tied to a thread.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps the ring buffer whose map fd is `fd` and whose data area is
    /// `size` bytes (a power of two, as the kernel requires).
    pub fn new(fd: OwnedFd, size: usize) -> io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(io::Error::other(format!(
                "ring size {size} is not a power of two"
            )));
        }
        let page = page_size() as usize;
        let map_len = |len: usize| std::num::NonZeroUsize::new(len).expect("non-zero");
        // SAFETY: fresh shared mappings of the map's fd at the offsets and
        // protections the kernel allows; unmapped in Drop.
        let consumer = unsafe {
            mmap(
                None,
                map_len(page),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }?;
        // SAFETY: as above.
        let producer = match unsafe {
            mmap(
                None,
                map_len(page + 2 * size),
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                i64::try_from(page).expect("page size fits"),
            )
        } {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above with this length.
                let _ = unsafe { munmap(consumer, page) };
                return Err(e.into());
            }
        };
        let mut ring = Self {
            fd,
            consumer: consumer.cast(),
            producer: producer.cast(),
            page,
            size,
            pos: 0,
            prod: 0,
            next_len: 0,
            unpublished: 0,
            unpublished_bytes: 0,
            budget: usize::MAX,
            stopped: false,
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        ring.prod = ring.pos;
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the first word of the consumer page, which the kernel
        // only reads.
        unsafe { self.consumer.cast::<AtomicUsize>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicUsize {
        // SAFETY: the first word of the producer page, written by the
        // kernel with release semantics.
        unsafe { self.producer.cast::<AtomicUsize>().as_ref() }
    }

    /// The next committed record, without consuming it; None when there is
    /// none, or when the next one is still being written.
    pub fn peek(&mut self) -> Option<&[u8]> {
        let mask = self.size - 1;
        // SAFETY: the data pages follow the producer page; they are mapped
        // twice, so `2 * size` bytes are readable from there.
        let data = unsafe { self.producer.as_ptr().add(self.page) };
        loop {
            if self.pos == self.prod {
                self.publish();
                // Either a record committed after this point is seen by the
                // load below, or its producer sees the position just stored.
                fence(Ordering::SeqCst);
                self.prod = self.producer_pos().load(Ordering::Acquire);
                if self.pos == self.prod {
                    return None;
                }
            }
            let off = self.pos & mask;
            // SAFETY: `off < size`, and a header is 8-aligned inside the
            // data area; the kernel commits it with a full barrier, which
            // this acquire load pairs with.
            let header = unsafe { &*data.add(off).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if header & BUSY != 0 {
                return None;
            }
            let len = (header & !(BUSY | DISCARD)) as usize;
            if len > self.size {
                // Not a header the kernel writes: stop rather than read past
                // the mapping.
                return None;
            }
            self.next_len = (HDR + len).next_multiple_of(8);
            if self.next_len > self.budget {
                self.stopped = true;
                return None;
            }
            if header & DISCARD == 0 {
                // SAFETY: `off + HDR + len < 2 * size`: the record lies in
                // the double mapping, and the kernel does not reuse it
                // before the consumer position passes it.
                return Some(unsafe { std::slice::from_raw_parts(data.add(off + HDR), len) });
            }
            self.consume();
        }
    }

    /// Bytes the kernel has committed or reserved past what this reader
    /// has read: how full the ring is.
    pub fn filled(&self) -> usize {
        self.producer_pos()
            .load(Ordering::Acquire)
            .wrapping_sub(self.pos)
    }

    /// Bytes of the data area.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Consumes the record [`peek`](Self::peek) returned. The kernel learns
    /// of it with the next publication.
    pub fn consume(&mut self) {
        let len = std::mem::take(&mut self.next_len);
        self.pos += len;
        self.budget = self.budget.saturating_sub(len);
        self.unpublished += 1;
        self.unpublished_bytes += len;
        if self.unpublished == PUBLISH_EVERY || self.unpublished_bytes >= self.size / PUBLISH_SHARE
        {
            self.publish();
        }
    }

    /// Tells the kernel how far this reader has read.
    pub fn publish(&mut self) {
        if self.unpublished != 0 {
            self.consumer_pos().store(self.pos, Ordering::Release);
            self.unpublished = 0;
            self.unpublished_bytes = 0;
        }
    }

    /// Starts a pass: [`peek`](Self::peek) returns records worth at most
    /// one ring's size until the next pass. Under a kernel that writes as
    /// fast as the reader reads, a pass still ends, and the reader gets
    /// back to its signals and timers (it runs at real-time priority,
    /// where nothing else would take the CPU from it).
    pub fn begin_pass(&mut self) {
        self.budget = self.size;
        self.stopped = false;
    }

    /// The pass stopped at its budget, with records left to read.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Hands every committed record to `f`, in order, in one pass (see
    /// [`begin_pass`](Self::begin_pass)), and returns how many there
    /// were. Stops at a record still being written: the next call starts
    /// there.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        self.begin_pass();
        let mut read = 0;
        while let Some(record) = self.peek() {
            f(record);
            self.consume();
            read += 1;
        }
        self.publish();
        read
    }
}

/// The system's page size (4096 if it cannot be read).
pub fn page_size() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(4096)
}

/// The number of possible CPUs: one ring each.
pub fn possible_cpus() -> io::Result<u32> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    u32::try_from(n).map_err(io::Error::other)
}

/// Ring memory when the user does not say: 4 MiB, or 256 KiB per possible
/// CPU where that is more (rounded up to a power of two), so that each
/// CPU's ring holds a burst between two drains on a big machine too.
pub fn default_bytes() -> u32 {
    default_bytes_for(possible_cpus().unwrap_or(1))
}

fn default_bytes_for(cpus: u32) -> u32 {
    cpus.saturating_mul(256 << 10)
        .checked_next_power_of_two()
        .unwrap_or(1 << 30)
        .clamp(4 << 20, 1 << 30)
}

/// Bytes of each CPU's ring when `total` bytes are shared out among `cpus`
/// rings: the largest power of two that fits, and never less than a page
/// (the kernel's minimum).
pub fn size_per_cpu(total: u32, cpus: u32, page: u32) -> u32 {
    let share = total / cpus.max(1);
    if share <= page {
        return page;
    }
    1 << share.ilog2()
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with these lengths, unmapped once.
        unsafe {
            let _ = munmap(self.consumer.cast(), self.page);
            let _ = munmap(self.producer.cast(), self.page + 2 * self.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{default_bytes_for, size_per_cpu};

    #[test]
    fn big_machines_get_256_kib_of_ring_per_cpu_by_default() {
        assert_eq!(default_bytes_for(2), 4 << 20);
        assert_eq!(default_bytes_for(16), 4 << 20);
        assert_eq!(default_bytes_for(96), 32 << 20);
        assert_eq!(size_per_cpu(default_bytes_for(96), 96, 4096), 256 << 10);
        assert_eq!(default_bytes_for(u32::MAX), 1 << 30);
    }

    #[test]
    fn rings_share_the_memory_in_powers_of_two() {
        assert_eq!(size_per_cpu(4 << 20, 2, 4096), 2 << 20);
        assert_eq!(size_per_cpu(4 << 20, 96, 4096), 32 << 10);
        assert_eq!(size_per_cpu(4 << 20, 3, 4096), 1 << 20);
        assert_eq!(size_per_cpu(4096, 2, 4096), 4096);
        assert_eq!(size_per_cpu(16 << 10, 1, 4096), 16 << 10);
        assert_eq!(size_per_cpu(64 << 10, 4, 16384), 16384);
    }
}
