//! The physical reference: a bare two-thread request/response loop over shared memory, with
//! no VMBus framing, no hypervisor and no protocol. The guest thread writes 64-byte request
//! slots into a ring and publishes them with one index store per burst; the host thread spins
//! on that index, copies the 4 KiB block each request names from its disk into the guest's
//! page (one plain memcpy, the least a block device must do), and publishes 4-byte responses
//! the same way. What VMBus, the mock host and storvsc cost on top of this is the rest of the
//! table.

use std::cell::UnsafeCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use test_harness::vmbus::YIELD_AFTER;

use crate::rig::{IO, Rng, Run, insns_guest_turn, insns_host_step};

/// Request and response slots (a power of two, above any queue depth used).
const SLOTS: usize = 64;
/// Blocks of the host's disk (32 MiB, the size of the benchmark's LUN).
const DISK_IOS: usize = 8192;

/// An index on its own cache line.
#[repr(align(64))]
struct Index(AtomicU32);

/// A request: which guest page, which disk block; padded to the size of an EXECUTE_SRB.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Request {
    page: u32,
    block: u32,
    _srb: [u8; 56],
}

/// The memory both threads see.
struct Shared {
    /// Requests published by the guest (count, wrapping).
    req_tail: Index,
    /// Responses published by the host (count, wrapping).
    resp_tail: Index,
    requests: [UnsafeCell<Request>; SLOTS],
    responses: [UnsafeCell<u32>; SLOTS],
    /// The guest's data pages, `depth` × 4 KiB, written by the host.
    pages: Box<[UnsafeCell<u8>]>,
    stop: AtomicBool,
}

// SAFETY: the slots and pages are accessed by the single-producer/single-consumer protocol
// below: a slot is written only by its producer before the index store (release) that
// publishes it and read only by its consumer after the acquire load that sees it; the
// producer reuses a slot only after the consumer's answer for it came back (at most `depth`
// ≤ SLOTS requests are outstanding). A data page is written by the host only while its
// request is outstanding, and the guest never reads it.
unsafe impl Sync for Shared {}

impl Shared {
    fn new(depth: usize) -> Self {
        Self {
            req_tail: Index(AtomicU32::new(0)),
            resp_tail: Index(AtomicU32::new(0)),
            requests: std::array::from_fn(|_| {
                UnsafeCell::new(Request {
                    page: 0,
                    block: 0,
                    _srb: [0; 56],
                })
            }),
            responses: std::array::from_fn(|_| UnsafeCell::new(0)),
            pages: (0..depth * IO).map(|_| UnsafeCell::new(0)).collect(),
            stop: AtomicBool::new(false),
        }
    }
}

/// The guest end: submits requests for its free pages and reaps responses.
struct Guest {
    shared: Arc<Shared>,
    free: Vec<u32>,
    tail: u32,
    reaped: u32,
    rng: Rng,
}

impl Guest {
    /// One turn: a burst of requests for every free page (one index store), then every
    /// response that arrived. Returns the I/Os that ended.
    fn turn(&mut self, submit: bool) -> u64 {
        let s = &*self.shared;
        if submit && !self.free.is_empty() {
            while let Some(page) = self.free.pop() {
                let block = (self.rng.next() % DISK_IOS as u64) as u32;
                let slot = &s.requests[self.tail as usize % SLOTS];
                // SAFETY: the slot's previous request was answered (see `Shared`).
                unsafe {
                    *slot.get() = Request {
                        page,
                        block,
                        _srb: [0x5A; 56],
                    }
                };
                self.tail = self.tail.wrapping_add(1);
            }
            s.req_tail.0.store(self.tail, Ordering::Release);
        }
        let end = s.resp_tail.0.load(Ordering::Acquire);
        let mut n = 0;
        while self.reaped != end {
            // SAFETY: published by the host's release store seen above.
            let page = unsafe { *s.responses[self.reaped as usize % SLOTS].get() };
            self.free.push(page);
            self.reaped = self.reaped.wrapping_add(1);
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.tail.wrapping_sub(self.reaped) as usize
    }
}

/// The host end: serves every published request.
struct Host {
    shared: Arc<Shared>,
    disk: Vec<u8>,
    head: u32,
}

impl Host {
    /// Serves what was published; returns how many requests.
    fn step(&mut self) -> usize {
        let s = &*self.shared;
        let end = s.req_tail.0.load(Ordering::Acquire);
        let start = self.head;
        while self.head != end {
            let i = self.head as usize % SLOTS;
            // SAFETY: published by the guest's release store seen above.
            let r = unsafe { *s.requests[i].get() };
            let src = &self.disk[r.block as usize * IO..][..IO];
            let dst = s.pages[r.page as usize * IO..][..IO].as_ptr();
            // SAFETY: the page belongs to this outstanding request (see `Shared`); `dst` is
            // IO bytes inside `pages` and does not overlap the host's disk.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), UnsafeCell::raw_get(dst), IO) };
            // SAFETY: the response slot of request `head` is free: its previous occupant was
            // reaped before the guest could publish this request.
            unsafe { *s.responses[i].get() = r.page };
            self.head = self.head.wrapping_add(1);
        }
        if self.head != start {
            s.resp_tail.0.store(self.head, Ordering::Release);
        }
        self.head.wrapping_sub(start) as usize
    }
}

fn pair(depth: usize) -> (Guest, Host) {
    assert!(depth <= SLOTS);
    let shared = Arc::new(Shared::new(depth));
    let guest = Guest {
        shared: shared.clone(),
        free: (0..depth as u32).rev().collect(),
        tail: 0,
        reaped: 0,
        rng: Rng(0x9E37_79B9_7F4A_7C15),
    };
    let host = Host {
        shared,
        disk: vec![0xA5; DISK_IOS * IO],
        head: 0,
    };
    (guest, host)
}

/// How a side of the loop waits: it spins, and after [`YIELD_AFTER`] without progress it
/// yields its core between looks, as the mock host does (so two threads the scheduler put on
/// one core hand it back and forth instead of by time slice).
#[derive(Default)]
struct Idle {
    since: Option<Instant>,
    looks: u32,
}

impl Idle {
    fn after(&mut self, progress: bool) {
        if progress {
            self.since = None;
            self.looks = 0;
            return;
        }
        self.looks += 1;
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.looks >= 16 && since.elapsed() > YIELD_AFTER {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Runs the loop on two threads for `dur` at queue depth `depth`.
pub fn run_threaded(depth: usize, dur: Duration) -> Run {
    let (mut guest, mut host) = pair(depth);
    let shared = guest.shared.clone();
    let server = std::thread::spawn(move || {
        let mut idle = Idle::default();
        while !host.shared.stop.load(Ordering::Relaxed) {
            idle.after(host.step() > 0);
        }
    });
    let start = Instant::now();
    let mut ops = 0u64;
    let mut iter = 0u64;
    let mut idle = Idle::default();
    let secs = loop {
        let n = guest.turn(true);
        ops += n;
        idle.after(n > 0);
        iter += 1;
        if iter.is_multiple_of(64) && start.elapsed() >= dur {
            break start.elapsed().as_secs_f64();
        }
    };
    while guest.in_flight() > 0 {
        guest.turn(false);
    }
    shared.stop.store(true, Ordering::Relaxed);
    server.join().expect("bare host thread");
    Run {
        ops,
        secs,
        ..Run::default()
    }
}

/// Runs `ios` I/Os single-threaded (a guest turn, then a host step), for instruction counts.
pub fn run_stepped(depth: usize, ios: u64) -> u64 {
    let (mut guest, mut host) = pair(depth);
    let mut ops = 0;
    while ops < ios {
        ops += insns_guest_turn(&mut || guest.turn(true));
        insns_host_step(&mut || host.step());
    }
    while guest.in_flight() > 0 {
        insns_host_step(&mut || host.step());
        guest.turn(false);
    }
    ops
}
