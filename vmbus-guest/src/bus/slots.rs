//! The liveness of open channels, shared lock-free between the bus (which learns of rescinds,
//! unloads and confirmed closes) and the channel objects drivers own (which check it on their
//! data path and when they release memory).
//!
//! One slot per open channel: its relid, a generation that changes whenever the slot is
//! reused, a status, and the number of GPA-direct requests the host may still be working on.
//! Everything is an atomic; interrupt context may update a slot (a rescind) and any VP may read
//! it.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, Ordering};

/// Channels one bus can have open (opening included) at once.
pub const MAX_OPEN_CHANNELS: usize = 64;

/// What a channel's owner learns from its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Open and usable.
    Live,
    /// The host rescinded the offer: requests in flight fail, the channel must be closed.
    Rescinded,
    /// The connection is gone (unloaded or abandoned) or the slot was reused: the channel is
    /// dead and its memory may still be mapped by an abandoned host.
    Gone,
}

const FREE: u32 = 0;
const LIVE: u32 = 1;
const RESCINDED: u32 = 2;
const GONE: u32 = 3;
/// The channel's close was not confirmed while GPA-direct requests could still be in flight:
/// the slot is never reused, so a buffer that names it can see that its memory stays the
/// host's.
const POISONED: u32 = 4;

#[derive(Debug)]
struct Slot {
    relid: AtomicU32,
    /// `generation << 3 | status`.
    state: AtomicU32,
    /// GPA-direct requests over bus host buffers not yet completed by the host.
    dma_in_flight: AtomicU32,
}

/// Identifies one use of a slot: a channel holds it for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotRef {
    pub(crate) index: u16,
    pub(crate) generation: u32,
}

/// The table of slots.
#[derive(Debug)]
pub(crate) struct Slots {
    slots: [Slot; MAX_OPEN_CHANNELS],
}

fn pack(generation: u32, status: u32) -> u32 {
    (generation << 3) | status
}

impl Slots {
    pub(crate) const fn new() -> Self {
        Self {
            slots: [const {
                Slot {
                    relid: AtomicU32::new(0),
                    state: AtomicU32::new(0),
                    dma_in_flight: AtomicU32::new(0),
                }
            }; MAX_OPEN_CHANNELS],
        }
    }

    /// Takes a free slot for `relid` (control path only, under the bus lock).
    pub(crate) fn claim(&self, relid: u32) -> Option<SlotRef> {
        for (i, s) in self.slots.iter().enumerate() {
            let cur = s.state.load(Ordering::Acquire);
            if cur & 7 != FREE {
                continue;
            }
            let generation = ((cur >> 3) + 1) & (u32::MAX >> 3);
            s.relid.store(relid, Ordering::Relaxed);
            s.dma_in_flight.store(0, Ordering::Relaxed);
            if s.state
                .compare_exchange(
                    cur,
                    pack(generation, LIVE),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return Some(SlotRef {
                    index: i as u16,
                    generation,
                });
            }
        }
        None
    }

    fn slot(&self, r: SlotRef) -> Option<&Slot> {
        self.slots.get(usize::from(r.index))
    }

    /// The liveness of the channel holding `r`.
    pub(crate) fn liveness(&self, r: SlotRef) -> Liveness {
        let Some(s) = self.slot(r) else {
            return Liveness::Gone;
        };
        let st = s.state.load(Ordering::Acquire);
        if st >> 3 != r.generation {
            return Liveness::Gone;
        }
        match st & 7 {
            LIVE => Liveness::Live,
            RESCINDED => Liveness::Rescinded,
            _ => Liveness::Gone,
        }
    }

    /// Marks every live slot of `relid` rescinded; returns whether one was. Interrupt-safe.
    pub(crate) fn rescind(&self, relid: u32) -> bool {
        let mut hit = false;
        for s in &self.slots {
            if s.relid.load(Ordering::Relaxed) != relid {
                continue;
            }
            let cur = s.state.load(Ordering::Acquire);
            if cur & 7 == LIVE
                && s.state
                    .compare_exchange(
                        cur,
                        (cur & !7) | RESCINDED,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                hit = true;
            }
        }
        hit
    }

    /// Calls `f` with the relid of every open (live) channel. Interrupt-safe.
    pub(crate) fn open_relids(&self, mut f: impl FnMut(u32)) {
        for s in &self.slots {
            if s.state.load(Ordering::Acquire) & 7 == LIVE {
                f(s.relid.load(Ordering::Relaxed));
            }
        }
    }

    /// The connection ended (unload, abandon): every open channel is dead.
    pub(crate) fn all_gone(&self) {
        for s in &self.slots {
            let cur = s.state.load(Ordering::Acquire);
            if matches!(cur & 7, LIVE | RESCINDED) {
                let _ = s.state.compare_exchange(
                    cur,
                    (cur & !7) | GONE,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// Counts a GPA-direct request over a bus host buffer as in flight on `r`.
    pub(crate) fn dma_started(&self, r: SlotRef) {
        if let Some(s) = self.slot(r) {
            s.dma_in_flight.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The host completed such a request.
    pub(crate) fn dma_completed(&self, r: SlotRef) {
        if let Some(s) = self.slot(r) {
            let _ = s
                .dma_in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Whether memory a GPA-direct request on `r` named may be reused: the host completed every
    /// such request of that channel, or the channel's close was confirmed (the slot moved on
    /// to a later generation without being poisoned).
    pub(crate) fn dma_quiet(&self, r: SlotRef) -> bool {
        let Some(s) = self.slot(r) else {
            return false;
        };
        let st = s.state.load(Ordering::Acquire);
        if st & 7 == POISONED {
            return false;
        }
        if st >> 3 != r.generation || st & 7 == FREE {
            // Closed with the host's confirmation (or with nothing outstanding), possibly
            // reused since: an unconfirmed close with requests out poisons the slot instead.
            return true;
        }
        s.dma_in_flight.load(Ordering::Acquire) == 0
    }

    /// The channel holding `r` is closed. `confirmed`: the host acknowledged (its ring GPADL
    /// was torn down), so it no longer touches anything the channel's requests named and the
    /// slot can be reused; otherwise a slot with GPA-direct requests outstanding is poisoned.
    pub(crate) fn release(&self, r: SlotRef, confirmed: bool) {
        let Some(s) = self.slot(r) else {
            return;
        };
        let st = s.state.load(Ordering::Acquire);
        if st >> 3 != r.generation {
            return;
        }
        let outstanding = s.dma_in_flight.load(Ordering::Acquire) != 0;
        if confirmed {
            // Requests that failed without a completion (rescind, unload) were never counted
            // down; the confirmed close ends them all. Without this, `dma_quiet` would read
            // their stale count until the slot is claimed again and keep every buffer they
            // named from being freed.
            s.dma_in_flight.store(0, Ordering::Release);
        }
        let status = if confirmed || !outstanding {
            FREE
        } else {
            POISONED
        };
        s.state.store(pack(r.generation, status), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_rescind_release_and_poison() {
        let t = Slots::new();
        let a = t.claim(5).unwrap();
        assert_eq!(t.liveness(a), Liveness::Live);
        assert!(t.rescind(5));
        assert!(!t.rescind(5));
        assert_eq!(t.liveness(a), Liveness::Rescinded);
        t.dma_started(a);
        assert!(!t.dma_quiet(a));
        t.release(a, false);
        assert!(!t.dma_quiet(a), "an unconfirmed close with DMA out poisons");
        assert_eq!(t.liveness(a), Liveness::Gone);
        let b = t.claim(6).unwrap();
        assert_ne!(a.index, b.index, "a poisoned slot is never reused");
        t.dma_started(b);
        t.dma_completed(b);
        assert!(t.dma_quiet(b));
        t.dma_started(b);
        t.release(b, true);
        assert!(t.dma_quiet(b));
        let c = t.claim(7).unwrap();
        assert_eq!(c.index, b.index);
        assert_ne!(c.generation, b.generation);
        assert_eq!(t.liveness(b), Liveness::Gone);
        t.all_gone();
        assert_eq!(t.liveness(c), Liveness::Gone);
    }
}
