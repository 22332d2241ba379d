//! Transfer-page packets the guest has not completed yet, by transaction id.
//!
//! The VSP numbers its packets in increasing order, so the table is a window of ids starting
//! at the oldest one still in flight: inserting and completing are O(1) with no allocation per
//! packet (a `BTreeMap` of the thousands of packets a 16 MiB receive buffer keeps in flight
//! cost the mock host more than the packet itself).

use std::collections::VecDeque;

/// Packets in flight: transaction id → the receive slots each holds.
#[derive(Debug)]
pub(super) struct InFlight {
    /// The id the next packet gets.
    next: u64,
    /// Slots of ids `next - window.len()` to `next - 1`; `None` once completed (the front
    /// is always live).
    window: VecDeque<Option<Vec<usize>>>,
    live: usize,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            next: 1,
            window: VecDeque::new(),
            live: 0,
        }
    }
}

impl InFlight {
    /// Records a new packet holding `slots`; returns its transaction id.
    pub(super) fn add(&mut self, slots: Vec<usize>) -> u64 {
        let tid = self.next;
        self.next += 1;
        self.window.push_back(Some(slots));
        self.live += 1;
        tid
    }

    /// The slots of packet `tid`, which is no longer in flight; `None` if it was not.
    pub(super) fn remove(&mut self, tid: u64) -> Option<Vec<usize>> {
        let base = self.next - self.window.len() as u64;
        let at = usize::try_from(tid.checked_sub(base)?).ok()?;
        let slots = self.window.get_mut(at)?.take()?;
        self.live -= 1;
        while matches!(self.window.front(), Some(None)) {
            self.window.pop_front();
        }
        Some(slots)
    }

    /// Packets in flight.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// Forgets every packet (the channel closed); ids go on increasing.
    pub(super) fn clear(&mut self) {
        self.window.clear();
        self.live = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::InFlight;

    #[test]
    fn completions_in_any_order_each_once() {
        let mut t = InFlight::default();
        let ids: Vec<u64> = (0..3).map(|i| t.add(vec![i])).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(t.len(), 3);
        assert_eq!(t.remove(2), Some(vec![1]));
        assert_eq!(t.remove(2), None, "completed twice");
        assert_eq!(t.remove(4), None, "never sent");
        assert_eq!(t.remove(0), None, "before the first");
        assert_eq!(t.remove(u64::MAX), None);
        assert_eq!(t.remove(1), Some(vec![0]));
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.window.len(),
            1,
            "the window starts at the oldest live packet"
        );
        assert_eq!(t.remove(3), Some(vec![2]));
        assert_eq!((t.len(), t.window.len()), (0, 0));
        let id = t.add(vec![7]);
        t.clear();
        assert_eq!((t.len(), t.remove(id)), (0, None));
        assert_eq!(t.add(vec![]), id + 1, "ids are never reused");
    }
}
