//! The control page as shared atomics: the only view of the ring header the endpoints use.

#![forbid(unsafe_code)]

use super::sync::AtomicU32;

/// The first 0x44 bytes of a ring control page, as atomics at the protocol offsets (the rest
/// of the 4 KiB page is reserved and never touched).
///
/// A `&ControlPage` into shared memory is sound because every field is an atomic: the peer
/// (host) may change any of them at any time and each access is a single atomic load or store.
/// Values read from here come from the peer and are validated by the endpoints before use.
#[repr(C)]
#[derive(Debug)]
pub struct ControlPage {
    /// 0x00: write index, owned by the ring's writer.
    pub write_index: AtomicU32,
    /// 0x04: read index, owned by the ring's reader.
    pub read_index: AtomicU32,
    /// 0x08: interrupt mask, owned by the reader (non-zero: do not signal me).
    pub interrupt_mask: AtomicU32,
    /// 0x0C: pending send size, owned by the writer (free bytes it waits for).
    pub pending_send_size: AtomicU32,
    reserved: [AtomicU32; 12],
    /// 0x40: feature bits, set by the ring's writer (bit 0: pending-send-size supported).
    pub feature_bits: AtomicU32,
}

#[cfg(not(loom))]
mod layout {
    use super::ControlPage;
    use crate::ring::protocol::ControlPageLayout;
    use core::mem::offset_of;
    use static_assertions::const_assert_eq;

    const_assert_eq!(size_of::<ControlPage>(), 0x44);
    const_assert_eq!(align_of::<ControlPage>(), 4);
    const_assert_eq!(
        offset_of!(ControlPage, write_index),
        offset_of!(ControlPageLayout, write_index)
    );
    const_assert_eq!(
        offset_of!(ControlPage, read_index),
        offset_of!(ControlPageLayout, read_index)
    );
    const_assert_eq!(
        offset_of!(ControlPage, interrupt_mask),
        offset_of!(ControlPageLayout, interrupt_mask)
    );
    const_assert_eq!(
        offset_of!(ControlPage, pending_send_size),
        offset_of!(ControlPageLayout, pending_send_size)
    );
    const_assert_eq!(
        offset_of!(ControlPage, feature_bits),
        offset_of!(ControlPageLayout, feature_bits)
    );
}

impl ControlPage {
    /// A control page with every field zero: empty ring, unmasked, nobody waiting, no
    /// features. For memory that is not shared with a real peer (tests, models).
    pub fn new() -> Self {
        Self {
            write_index: AtomicU32::new(0),
            read_index: AtomicU32::new(0),
            interrupt_mask: AtomicU32::new(0),
            pending_send_size: AtomicU32::new(0),
            reserved: core::array::from_fn(|_| AtomicU32::new(0)),
            feature_bits: AtomicU32::new(0),
        }
    }
}

/// The control fields as read at one moment (each field loaded once, relaxed): for
/// diagnostics, logs and tests. Not a consistent snapshot if the peer is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlSnapshot {
    /// Write index.
    pub write_index: u32,
    /// Read index.
    pub read_index: u32,
    /// Interrupt mask.
    pub interrupt_mask: u32,
    /// Pending send size.
    pub pending_send_size: u32,
    /// Feature bits.
    pub feature_bits: u32,
}

impl ControlPage {
    /// Loads every field once.
    pub fn snapshot(&self) -> ControlSnapshot {
        use super::sync::Ordering::Relaxed;
        ControlSnapshot {
            write_index: self.write_index.load(Relaxed),
            read_index: self.read_index.load(Relaxed),
            interrupt_mask: self.interrupt_mask.load(Relaxed),
            pending_send_size: self.pending_send_size.load(Relaxed),
            feature_bits: self.feature_bits.load(Relaxed),
        }
    }
}

impl Default for ControlPage {
    fn default() -> Self {
        Self::new()
    }
}
