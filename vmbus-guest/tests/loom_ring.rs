//! Loom models of the ring's index / interrupt-mask / pending-send-size protocol, running the
//! real `RingWriter` and `RingReader` code on loom atomics, with the data area in loom cells so
//! a byte read before it is published (a data race) is reported.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p vmbus-guest --release --test loom_ring`
//!
//! Signals go through an auto-reset event (mutex + condvar). A lost wake-up leaves one side
//! waiting forever with the other finished, which loom reports as a deadlock.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use vmbus_guest::ring::*;

struct LoomMemory {
    control: ControlPage,
    data: Vec<UnsafeCell<u8>>,
}

// SAFETY: the data cells are loom cells: loom checks every access for races and fails the
// model on one, which is exactly what the test is for.
unsafe impl Sync for LoomMemory {}
// SAFETY: as above.
unsafe impl Send for LoomMemory {}

impl LoomMemory {
    fn new(size: u32) -> Self {
        Self {
            control: ControlPage::new(),
            data: (0..size).map(|_| UnsafeCell::new(0)).collect(),
        }
    }
}

impl RingMemory for LoomMemory {
    fn control(&self) -> &ControlPage {
        &self.control
    }
    fn data_size(&self) -> u32 {
        self.data.len() as u32
    }
    fn read_data(&self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: loom tracks the access; a concurrent write fails the model.
            *b = self.data[offset + i].with(|p| unsafe { *p });
        }
    }
    fn write_data(&self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            // SAFETY: loom tracks the access; a concurrent access fails the model.
            self.data[offset + i].with_mut(|p| unsafe { *p = *b });
        }
    }
}

/// An auto-reset event: what the SynIC / event flag signal looks like to a sleeper.
#[derive(Default)]
struct Event {
    set: Mutex<bool>,
    cv: Condvar,
}

impl Event {
    fn signal(&self) {
        *self.set.lock().unwrap() = true;
        self.cv.notify_one();
    }
    fn wait(&self) {
        let mut set = self.set.lock().unwrap();
        while !*set {
            set = self.cv.wait(set).unwrap();
        }
        *set = false;
    }
}

struct Shared {
    mem: LoomMemory,
    data_ready: Event,
    space_ready: Event,
    data_signals: AtomicUsize,
    drain_ends: AtomicUsize,
}

/// Writer sends `packets` packets with payload byte = index, `batch` per commit, sleeping on
/// `space_ready` when full. Reader drains, masks while draining if `mask`, and sleeps on
/// `data_ready` whenever `finish_drain` says the ring stayed empty.
fn model(size: u32, packets: u8, payload: usize, batch: u8, mask: bool, bound: usize) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(bound);
    builder.check(move || {
        let shared = Arc::new(Shared {
            mem: LoomMemory::new(size),
            data_ready: Event::default(),
            space_ready: Event::default(),
            data_signals: AtomicUsize::new(0),
            drain_ends: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let writer = loom::thread::spawn(move || {
            let mut w = RingWriter::new(&s.mem).unwrap();
            let mut i = 0u8;
            while i < packets {
                let bytes = vec![i; payload];
                match w.write(&OutgoingPacket::in_band(i as u64, false, &[&bytes])) {
                    Ok(()) => {
                        i += 1;
                        if (i.is_multiple_of(batch) || i == packets) && w.commit().is_needed() {
                            s.data_signals.fetch_add(1, Ordering::Relaxed);
                            s.data_ready.signal();
                        }
                    }
                    Err(WriteError::Full { needed }) => {
                        if w.commit().is_needed() {
                            s.data_signals.fetch_add(1, Ordering::Relaxed);
                            s.data_ready.signal();
                        }
                        if !w.request_space(needed).unwrap() {
                            s.space_ready.wait();
                        }
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
        });
        let mut r = RingReader::new(&shared.mem).unwrap();
        let mut buf = [0u8; 64];
        let mut next = 0u8;
        if mask {
            r.begin_drain();
        }
        loop {
            loop {
                match r.read(&mut buf) {
                    Ok(p) => {
                        assert_eq!(p.transaction_id(), next as u64);
                        assert!(p.payload()[..payload].iter().all(|&b| b == next));
                        next += 1;
                    }
                    Err(ReadError::Empty) => break,
                    Err(e) => panic!("{e:?}"),
                }
            }
            let end = r.finish_drain();
            // Every drain end clears the mask (if set) and publishes: the points after which
            // the writer may legitimately signal again.
            shared.drain_ends.fetch_add(1, Ordering::Relaxed);
            if end.signal.is_needed() {
                shared.space_ready.signal();
            }
            if next == packets {
                break;
            }
            if !end.more {
                shared.data_ready.wait();
            }
            if mask {
                r.begin_drain();
            }
        }
        writer.join().unwrap();
        let signals = shared.data_signals.load(Ordering::Relaxed);
        let ends = shared.drain_ends.load(Ordering::Relaxed);
        assert!(
            signals <= ends + 1,
            "{signals} data signals for {ends} unmask/drain ends"
        );
    });
}

/// One 32-byte packet at a time fits a 64-byte ring: every packet after the first waits for
/// space, so both wake-up directions are exercised.
#[test]
fn no_lost_wakeup_full_ring_masked_reader() {
    model(64, 3, 8, 1, true, 3);
}

/// Two 24-byte packets fit; the writer batches two per commit.
#[test]
fn no_lost_wakeup_batched_writer_masked_reader() {
    model(64, 4, 0, 2, true, 3);
}

/// A reader that never masks (relies on the read-index check alone).
#[test]
fn no_lost_wakeup_unmasked_reader() {
    model(64, 3, 0, 1, false, 3);
}
