//! Threaded mode: the host steps on its own thread while the guest runs on another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::MockVmbusHost;

/// How long the host thread sleeps when a step found nothing to do.
const IDLE_SLEEP: Duration = Duration::from_micros(50);

/// A [`MockVmbusHost`] stepping on its own thread. Dropping it stops the thread.
pub struct ThreadedHost {
    host: Arc<Mutex<MockVmbusHost>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<MockVmbusHost>) -> MutexGuard<'_, MockVmbusHost> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MockVmbusHost {
    /// Moves the host to a thread that loops [`Self::step`], sleeping briefly when idle.
    pub fn spawn(self) -> ThreadedHost {
        let host = Arc::new(Mutex::new(self));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let host = host.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("mock-vmbus-host".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let work = lock(&host).step();
                        if work == 0 {
                            std::thread::sleep(IDLE_SLEEP);
                        }
                    }
                })
                .ok()
        };
        ThreadedHost { host, stop, thread }
    }
}

impl ThreadedHost {
    /// Runs `f` on the host between two steps (add devices, rescind, inspect state).
    pub fn with_host<R>(&self, f: impl FnOnce(&mut MockVmbusHost) -> R) -> R {
        f(&mut lock(&self.host))
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
