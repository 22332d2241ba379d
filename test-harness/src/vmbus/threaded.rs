//! Threaded mode: the host steps on its own thread while the guest runs on another.
//!
//! The thread steps in a loop. After a step that found work it steps again at once; when
//! steps keep finding nothing it spins on for [`SPIN_WINDOW`] (a host that polls, as
//! Hyper-V's and OpenVMM's ring workers do while traffic flows) — yielding its core between
//! steps after [`YIELD_AFTER`] — and only then sleeps [`IDLE_SLEEP`] at a time until work
//! appears. How often it slept is counted
//! ([`ThreadedHost::sleeps`]): a benchmark whose host slept measured the sleep, not the path.
//!
//! With ring polling on ([`MockVmbusHost::set_poll_rings`]) the host masks the guest's
//! signals on every outbound ring while it spins (vmbus-core §7.9: the reader sets the
//! interrupt mask while it drains), so a guest writing into a ring the host is watching does
//! not signal; before sleeping it clears the masks and looks once more, so a packet written
//! in that window is not left waiting for a signal that was never sent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::MockVmbusHost;

/// How long the host thread sleeps once it has been idle for [`SPIN_WINDOW`].
const IDLE_SLEEP: Duration = Duration::from_micros(50);
/// How long the host thread keeps stepping without finding work before it sleeps.
pub const SPIN_WINDOW: Duration = Duration::from_micros(200);
/// After this long without work the spinning host yields its core between steps, so a
/// guest thread the scheduler put on the same core runs at once instead of after a time
/// slice (on a machine with other load); an idle core gives it straight back.
pub const YIELD_AFTER: Duration = Duration::from_micros(5);
/// Idle steps between two clock reads while spinning.
const STEPS_PER_CLOCK_READ: u32 = 16;

/// A [`MockVmbusHost`] stepping on its own thread. Dropping it stops the thread.
pub struct ThreadedHost {
    host: Arc<Mutex<MockVmbusHost>>,
    stop: Arc<AtomicBool>,
    sleeps: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<MockVmbusHost>) -> MutexGuard<'_, MockVmbusHost> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The host thread: step, spin while idle for up to [`SPIN_WINDOW`], then sleep.
fn run(host: &Mutex<MockVmbusHost>, stop: &AtomicBool, sleeps: &AtomicU64) {
    let mut idle_steps = 0u32;
    let mut idle_since: Option<Instant> = None;
    // Whether the outbound rings are masked (traffic is flowing; see `set_polling`).
    let mut polling = false;
    // Idle past `YIELD_AFTER`: the core is offered to others between steps.
    let mut yielding = false;
    while !stop.load(Ordering::Acquire) {
        let work = lock(host).step();
        if work > 0 {
            if !polling {
                lock(host).set_polling(true);
                polling = true;
            }
            idle_steps = 0;
            idle_since = None;
            yielding = false;
            continue;
        }
        idle_steps += 1;
        if !idle_steps.is_multiple_of(STEPS_PER_CLOCK_READ) {
            pause(yielding);
            continue;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        let idle = since.elapsed();
        if idle < SPIN_WINDOW {
            yielding = idle >= YIELD_AFTER;
            pause(yielding);
            continue;
        }
        if polling {
            // Unmask, then look once more: a packet committed while the mask was still set
            // signalled nobody.
            polling = false;
            let work = {
                let mut h = lock(host);
                h.set_polling(false);
                h.step()
            };
            if work > 0 {
                idle_steps = 0;
                idle_since = None;
                yielding = false;
                continue;
            }
        }
        sleeps.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(IDLE_SLEEP);
    }
    lock(host).set_polling(false);
}

/// Between two idle steps: a spin-loop hint, or (`yield_core`) the core offered to another
/// thread (a guest thread the scheduler put on the same core runs now, not after a time
/// slice; an otherwise idle core comes straight back).
fn pause(yield_core: bool) {
    if yield_core {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

impl MockVmbusHost {
    /// Moves the host to a thread that loops [`Self::step`], spinning for a while when idle
    /// before it sleeps (see the module documentation).
    pub fn spawn(self) -> ThreadedHost {
        let host = Arc::new(Mutex::new(self));
        let stop = Arc::new(AtomicBool::new(false));
        let sleeps = Arc::new(AtomicU64::new(0));
        let thread = {
            let host = host.clone();
            let stop = stop.clone();
            let sleeps = sleeps.clone();
            std::thread::Builder::new()
                .name("mock-vmbus-host".into())
                .spawn(move || run(&host, &stop, &sleeps))
                .ok()
        };
        ThreadedHost {
            host,
            stop,
            sleeps,
            thread,
        }
    }
}

impl ThreadedHost {
    /// Runs `f` on the host between two steps (add devices, rescind, inspect state).
    pub fn with_host<R>(&self, f: impl FnOnce(&mut MockVmbusHost) -> R) -> R {
        f(&mut lock(&self.host))
    }

    /// How many times the host thread went to sleep after [`SPIN_WINDOW`] without work.
    pub fn sleeps(&self) -> u64 {
        self.sleeps.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("mock VMBus host thread panicked");
        }
    }

    /// Stops the thread (after its current step) and returns the host for deterministic use.
    pub fn stop(mut self) -> MockVmbusHost {
        self.halt();
        let host = self.host.clone();
        drop(self);
        match Arc::try_unwrap(host) {
            Ok(m) => m.into_inner().unwrap_or_else(PoisonError::into_inner),
            Err(_) => unreachable!("the host thread was joined, so this is the only handle"),
        }
    }
}

impl Drop for ThreadedHost {
    fn drop(&mut self) {
        self.halt();
    }
}
