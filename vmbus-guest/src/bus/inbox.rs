//! The inbox between the interrupt path, which copies host messages out of the SynIC slot,
//! and the control path, which processes them under the bus lock: a bounded single-producer,
//! single-consumer queue in safe code. The producer side runs only while the bus's "taking"
//! flag is held, the consumer side only under the control lock, so each side has one user at
//! a time; a slot's lock is never contended because the producer checks for room (which only
//! the consumer can take away) before it takes a message from the SynIC.

#![forbid(unsafe_code)]

use crate::transport::RawMessage;
use core::sync::atomic::{AtomicU32, Ordering};

/// Messages the inbox holds.
pub const INBOX: usize = 8;

pub(crate) struct Inbox {
    slots: [spin::Mutex<RawMessage>; INBOX],
    /// Next slot to read (consumer).
    head: AtomicU32,
    /// Next slot to write (producer).
    tail: AtomicU32,
}

impl Inbox {
    pub(crate) fn new() -> Self {
        Self {
            slots: core::array::from_fn(|_| spin::Mutex::new(RawMessage::new(&[]))),
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
        }
    }

    /// Messages waiting.
    pub(crate) fn len(&self) -> usize {
        let tail = self.tail.load(Ordering::Acquire);
        tail.wrapping_sub(self.head.load(Ordering::Acquire)) as usize
    }

    /// Whether the producer can add a message (only the consumer makes room).
    pub(crate) fn has_room(&self) -> bool {
        self.len() < INBOX
    }

    /// Adds a message (producer side). Fails only when full, which a producer that checked
    /// [`Inbox::has_room`] never sees.
    // The message goes back to the producer by value: boxing it would allocate in interrupt
    // context, and the crate has no allocator.
    #[allow(clippy::result_large_err)]
    pub(crate) fn push(&self, m: RawMessage) -> Result<(), RawMessage> {
        let tail = self.tail.load(Ordering::Relaxed);
        if tail.wrapping_sub(self.head.load(Ordering::Acquire)) as usize >= INBOX {
            return Err(m);
        }
        let Some(mut slot) = self.slots[tail as usize % INBOX].try_lock() else {
            return Err(m);
        };
        *slot = m;
        drop(slot);
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Takes the oldest message (consumer side).
    pub(crate) fn pop(&self) -> Option<RawMessage> {
        let head = self.head.load(Ordering::Relaxed);
        if head == self.tail.load(Ordering::Acquire) {
            return None;
        }
        let m = *self.slots[head as usize % INBOX].lock();
        self.head.store(head.wrapping_add(1), Ordering::Release);
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_bounded() {
        let q = Inbox::new();
        for i in 0..INBOX as u8 {
            assert!(q.has_room());
            q.push(RawMessage::new(&[i])).unwrap();
        }
        assert!(!q.has_room());
        assert!(q.push(RawMessage::new(&[99])).is_err());
        for i in 0..INBOX as u8 {
            assert_eq!(q.pop().unwrap().payload(), &[i]);
        }
        assert!(q.pop().is_none());
        for round in 0..3 * INBOX as u8 {
            q.push(RawMessage::new(&[round])).unwrap();
            assert_eq!(q.pop().unwrap().payload(), &[round]);
        }
    }
}
