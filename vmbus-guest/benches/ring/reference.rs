//! The reference: a plain single-producer single-consumer byte ring with the same framing as
//! VMBus (16-byte header, payload padded to 8, 8-byte trailer: 24 bytes per packet), head and
//! tail on separate cache lines, each side caching the other's index, copy in and copy out,
//! index published once per packet. No signalling: a side that finds the ring full or empty
//! spins, and yields its CPU after a short spin (so an oversubscribed machine does not turn a
//! spin into a lost time slice).

use std::cell::UnsafeCell;
use std::hint::spin_loop;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[repr(align(128))]
struct Padded(AtomicUsize);

struct Shared {
    buf: Box<[UnsafeCell<u8>]>,
    mask: usize,
    tail: Padded,
    head: Padded,
}

// SAFETY: the producer only writes bytes between tail and head + size, the consumer only reads
// bytes between head and tail; the Release/Acquire index stores order them.
unsafe impl Sync for Shared {}

/// Spin a little, then give the CPU away.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 256 {
        spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Producer end.
pub struct Producer {
    s: Arc<Shared>,
    tail: usize,
    cached_head: usize,
}

/// Consumer end.
pub struct Consumer {
    s: Arc<Shared>,
    head: usize,
    cached_tail: usize,
}

/// A ring of `size` bytes (a power of two).
pub fn ring(size: usize) -> (Producer, Consumer) {
    assert!(size.is_power_of_two());
    let s = Arc::new(Shared {
        buf: (0..size).map(|_| UnsafeCell::new(0)).collect(),
        mask: size - 1,
        tail: Padded(AtomicUsize::new(0)),
        head: Padded(AtomicUsize::new(0)),
    });
    (
        Producer {
            s: s.clone(),
            tail: 0,
            cached_head: 0,
        },
        Consumer {
            s,
            head: 0,
            cached_tail: 0,
        },
    )
}

impl Shared {
    fn base(&self) -> *mut u8 {
        UnsafeCell::raw_get(self.buf.as_ptr())
    }

    /// # Safety
    /// The producer owns `[pos, pos + data.len())`.
    unsafe fn copy_in(&self, pos: usize, data: &[u8]) {
        let off = pos & self.mask;
        let first = data.len().min(self.buf.len() - off);
        // SAFETY: both parts are inside the buffer and owned by the producer.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base().add(off), first);
            std::ptr::copy_nonoverlapping(
                data.as_ptr().add(first),
                self.base(),
                data.len() - first,
            );
        }
    }

    /// # Safety
    /// The consumer owns `[pos, pos + out.len())`.
    unsafe fn copy_out(&self, pos: usize, out: &mut [u8]) {
        let off = pos & self.mask;
        let first = out.len().min(self.buf.len() - off);
        // SAFETY: both parts are inside the buffer and owned by the consumer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base().add(off), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(
                self.base(),
                out.as_mut_ptr().add(first),
                out.len() - first,
            );
        }
    }
}

impl Producer {
    /// Writes one packet, spinning while the ring is full.
    pub fn push(&mut self, id: u64, payload: &[u8]) {
        let len = (16 + payload.len()).next_multiple_of(8);
        let total = len + 8;
        let size = self.s.buf.len();
        let mut spins = 0u32;
        while size - (self.tail - self.cached_head) - 8 < total {
            self.cached_head = self.s.head.0.load(Ordering::Acquire);
            if size - (self.tail - self.cached_head) - 8 < total {
                backoff(&mut spins);
            }
        }
        let mut hdr = [0u8; 16];
        hdr[0..2].copy_from_slice(&6u16.to_le_bytes());
        hdr[2..4].copy_from_slice(&2u16.to_le_bytes());
        hdr[4..6].copy_from_slice(&((len / 8) as u16).to_le_bytes());
        hdr[8..16].copy_from_slice(&id.to_le_bytes());
        let mut trailer = [0u8; 16];
        let pad = len - 16 - payload.len();
        trailer[pad..pad + 8]
            .copy_from_slice(&(((self.tail & self.s.mask) as u64) << 32).to_le_bytes());
        // SAFETY: the space check above gives the producer these bytes.
        unsafe {
            self.s.copy_in(self.tail, &hdr);
            self.s.copy_in(self.tail + 16, payload);
            self.s
                .copy_in(self.tail + 16 + payload.len(), &trailer[..pad + 8]);
        }
        self.tail += total;
        self.s.tail.0.store(self.tail, Ordering::Release);
    }
}

impl Consumer {
    /// Reads one packet into `out`, spinning while the ring is empty; returns its id and
    /// payload length (padded).
    pub fn pop(&mut self, out: &mut [u8]) -> (u64, usize) {
        let mut spins = 0u32;
        while self.head == self.cached_tail {
            self.cached_tail = self.s.tail.0.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                backoff(&mut spins);
            }
        }
        let mut hdr = [0u8; 16];
        // SAFETY: the producer published these bytes (Acquire above).
        unsafe { self.s.copy_out(self.head, &mut hdr) };
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize * 8;
        let id = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
        assert!(len >= 16 && len + 8 <= self.cached_tail - self.head);
        let payload = len - 16;
        // SAFETY: as above, within the published packet.
        unsafe { self.s.copy_out(self.head + 16, &mut out[..payload]) };
        self.head += len + 8;
        self.s.head.0.store(self.head, Ordering::Release);
        (id, payload)
    }
}
