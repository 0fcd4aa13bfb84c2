//! The event ring buffer, read through its own mappings.
//!
//! aya's reader publishes the consumer position after every record. The
//! programs read that position in every `reserve` and `submit`, on the
//! packet's CPU, so each record cost them a cache line fetched back from
//! the reader's CPU. This reader publishes it once per [`PUBLISH_EVERY`]
//! records and whenever it catches up, which keeps the line in the
//! producers' caches. The ring loses at most that many records' room.
//!
//! The layout is the kernel's (`kernel/bpf/ringbuf.c`): a read-write page
//! with the consumer position, then a read-only page with the producer
//! position followed by the data pages mapped twice in a row, so that a
//! record that wraps is still contiguous.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence},
};

use aya::maps::MapData;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

/// Records read between two publications of the consumer position.
pub const PUBLISH_EVERY: usize = 64;

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HDR: usize = 8;

/// A `BPF_MAP_TYPE_RINGBUF` map, mapped for reading.
pub struct Ring {
    map: MapData,
    consumer: NonNull<u8>,
    producer: NonNull<u8>,
    page: usize,
    size: usize,
    /// Next record to read; published to the kernel in batches.
    pos: usize,
}

// SAFETY: the mappings are owned by the Ring and only touched through
// `&mut self` (or atomically); nothing is tied to a thread.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps the ring buffer `map`, whose data area is `size` bytes (a power
    /// of two, as the kernel requires).
    pub fn new(map: MapData, size: usize) -> io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(io::Error::other(format!(
                "ring size {size} is not a power of two"
            )));
        }
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        let fd = map.fd().as_fd();
        let map_len = |len: usize| std::num::NonZeroUsize::new(len).expect("non-zero");
        // SAFETY: fresh shared mappings of the map's fd at the offsets and
        // protections the kernel allows; unmapped in Drop.
        let consumer = unsafe {
            mmap(
                None,
                map_len(page),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
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
                fd,
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
            map,
            consumer: consumer.cast(),
            producer: producer.cast(),
            page,
            size,
            pos: 0,
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
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

    /// Hands every committed record to `f`, in order, and returns how many
    /// there were. Stops at a record still being written: the next call
    /// starts there.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mask = self.size - 1;
        // SAFETY: the data pages follow the producer page; they are mapped
        // twice, so `2 * size` bytes are readable from here.
        let data = unsafe { self.producer.as_ptr().add(self.page) };
        let mut pos = self.pos;
        let mut prod = self.producer_pos().load(Ordering::Acquire);
        let mut read = 0;
        let mut unpublished = 0;
        loop {
            if pos == prod {
                self.consumer_pos().store(pos, Ordering::Release);
                unpublished = 0;
                // Either a record committed after this point is seen by the
                // load below, or its producer sees the position just stored.
                fence(Ordering::SeqCst);
                prod = self.producer_pos().load(Ordering::Acquire);
                if pos == prod {
                    break;
                }
            }
            let off = pos & mask;
            // SAFETY: `off < size`, and a header is 8-aligned inside the
            // data area; the kernel commits it with a full barrier, which
            // this acquire load pairs with.
            let header = unsafe { &*data.add(off).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if header & BUSY != 0 {
                break;
            }
            let len = (header & !(BUSY | DISCARD)) as usize;
            if len > self.size {
                // Not a header the kernel writes: stop rather than read past
                // the mapping.
                break;
            }
            if header & DISCARD == 0 {
                // SAFETY: `off + HDR + len < 2 * size`: the record lies in
                // the double mapping, and the kernel does not reuse it
                // before the consumer position passes it.
                f(unsafe { std::slice::from_raw_parts(data.add(off + HDR), len) });
                read += 1;
            }
            pos += (HDR + len).next_multiple_of(8);
            unpublished += 1;
            if unpublished == PUBLISH_EVERY {
                self.consumer_pos().store(pos, Ordering::Release);
                unpublished = 0;
            }
        }
        if unpublished != 0 {
            self.consumer_pos().store(pos, Ordering::Release);
        }
        self.pos = pos;
        read
    }
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
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
