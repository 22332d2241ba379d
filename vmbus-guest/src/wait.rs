//! Bounded waiting. Every blocking convenience wrapper in this crate takes a caller-supplied
//! [`Wait`]: it is called between polls of the connection or channel, and its error ends the
//! wait with a timeout, so a host that never answers can never hang the guest.

#![forbid(unsafe_code)]

use core::fmt;

/// The wait budget ran out before the host answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timed out waiting for the VMBus host")
    }
}

impl core::error::Error for TimedOut {}

/// Lets time pass between two polls of a VMBus state machine.
///
/// On a real kernel this spins, halts until the next interrupt, or yields, and fails once a
/// deadline (for example from `winhv::ReferenceClock`) has passed. In deterministic tests it
/// runs the mock host one step.
pub trait Wait {
    /// Waits a little; `Err(TimedOut)` when the caller must give up.
    fn wait(&mut self) -> Result<(), TimedOut>;

    /// Starts a new wait budget: a long-lived owner of a waiter (a device driver keeping one
    /// for all its requests) calls this before each blocking operation, so each operation gets
    /// the full timeout rather than what earlier ones left over.
    fn restart(&mut self) {}
}

impl<W: Wait + ?Sized> Wait for &mut W {
    fn wait(&mut self) -> Result<(), TimedOut> {
        (**self).wait()
    }

    fn restart(&mut self) {
        (**self).restart()
    }
}

/// A [`Wait`] that runs `step` at most `budget` times, then times out.
#[derive(Debug)]
pub struct BoundedWait<F> {
    budget: u32,
    remaining: u32,
    step: F,
}

impl<F: FnMut()> BoundedWait<F> {
    /// Allows `budget` waits, each running `step` (spin, halt, or a test host's step).
    pub fn new(budget: u32, step: F) -> Self {
        Self {
            budget,
            remaining: budget,
            step,
        }
    }

    /// Waits left before a timeout.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }
}

impl<F: FnMut()> Wait for BoundedWait<F> {
    fn wait(&mut self) -> Result<(), TimedOut> {
        if self.remaining == 0 {
            return Err(TimedOut);
        }
        self.remaining -= 1;
        (self.step)();
        Ok(())
    }

    fn restart(&mut self) {
        self.remaining = self.budget;
    }
}

/// A [`Wait`] with a deadline on a monotonic clock read by `now` (for example the partition
/// reference counter in 100 ns units); `relax` runs between checks (spin hint, `hlt`, yield).
#[derive(Debug)]
pub struct DeadlineWait<N, R> {
    timeout: u64,
    deadline: u64,
    now: N,
    relax: R,
}

impl<N: FnMut() -> u64, R: FnMut()> DeadlineWait<N, R> {
    /// Times out once `now()` reaches `now() + timeout` (same units as `now`).
    pub fn new(timeout: u64, mut now: N, relax: R) -> Self {
        let deadline = now().saturating_add(timeout);
        Self {
            timeout,
            deadline,
            now,
            relax,
        }
    }
}

impl<N: FnMut() -> u64, R: FnMut()> Wait for DeadlineWait<N, R> {
    fn wait(&mut self) -> Result<(), TimedOut> {
        if (self.now)() >= self.deadline {
            return Err(TimedOut);
        }
        (self.relax)();
        Ok(())
    }

    fn restart(&mut self) {
        self.deadline = (self.now)().saturating_add(self.timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_wait_runs_out() {
        let mut w = BoundedWait::new(3, || {});
        assert!(w.wait().is_ok() && w.wait().is_ok() && w.wait().is_ok());
        assert_eq!(w.wait(), Err(TimedOut));
        assert_eq!(w.remaining(), 0);
        w.restart();
        assert_eq!(w.remaining(), 3);
        assert!(w.wait().is_ok());
    }

    #[test]
    fn deadline_wait_expires() {
        let mut t = 0u64;
        let mut w = DeadlineWait::new(
            10,
            || {
                t += 4;
                t
            },
            || {},
        );
        assert!(w.wait().is_ok());
        assert!(w.wait().is_ok());
        assert_eq!(w.wait(), Err(TimedOut));
    }
}
