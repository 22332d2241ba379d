//! The 4 KiB monitor page used for monitored notification (MNF) (vmbus-core §8.2).
//!
//! The guest allocates two (parent→child and child→parent) unless the 6.0
//! SERVER_SPECIFIED_MONITOR_PAGES feature hands it the host's. Because the page is shared with
//! the host, live access goes through volatile/atomic accesses at the offsets this struct
//! fixes; the struct documents and checks that layout.

#![forbid(unsafe_code)]

use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Number of trigger groups on a monitor page.
pub const MONITOR_GROUPS: usize = 4;
/// Monitor ids per trigger group; monitor id `m` is bit `m % 32` of group `m / 32`.
pub const MONITOR_IDS_PER_GROUP: usize = 32;

/// One trigger group: a guest sets bit `monitor_id % 32` of `pending` to signal the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MonitorTriggerGroup {
    /// Pending bits, one per monitor id.
    pub pending: u32,
    /// Armed bits (hypervisor bookkeeping).
    pub armed: u32,
}
const_assert_eq!(size_of::<MonitorTriggerGroup>(), 8);

/// Per-monitor-id parameters: which connection/flag the hypervisor signals.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MonitorParameter {
    /// Connection id signalled.
    pub connection_id: u32,
    /// Event flag number.
    pub flag_number: u16,
    /// Reserved.
    pub reserved: u16,
}
const_assert_eq!(size_of::<MonitorParameter>(), 8);

/// Layout of a monitor page (4096 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MonitorPage {
    /// @0x000: trigger state, bits 3:0 = group enable.
    pub trigger_state: u32,
    /// @0x004: reserved.
    pub reserved1: u32,
    /// @0x008: trigger groups 0..3.
    pub trigger_groups: [MonitorTriggerGroup; MONITOR_GROUPS],
    /// @0x028: reserved.
    pub reserved2: [u8; 24],
    /// @0x040: next check time per monitor id.
    pub next_check_time: [[i32; MONITOR_IDS_PER_GROUP]; MONITOR_GROUPS],
    /// @0x240: latency per monitor id, in 100 ns units.
    pub latency: [[u16; MONITOR_IDS_PER_GROUP]; MONITOR_GROUPS],
    /// @0x340: reserved.
    pub reserved3: [u8; 256],
    /// @0x440: parameters per monitor id.
    pub parameters: [[MonitorParameter; MONITOR_IDS_PER_GROUP]; MONITOR_GROUPS],
    /// @0x840: reserved to the end of the page.
    pub reserved4: [u8; 1984],
}
const_assert_eq!(size_of::<MonitorPage>(), 4096);
const_assert_eq!(offset_of!(MonitorPage, trigger_state), 0x000);
const_assert_eq!(offset_of!(MonitorPage, trigger_groups), 0x008);
const_assert_eq!(offset_of!(MonitorPage, reserved2), 0x028);
const_assert_eq!(offset_of!(MonitorPage, next_check_time), 0x040);
const_assert_eq!(offset_of!(MonitorPage, latency), 0x240);
const_assert_eq!(offset_of!(MonitorPage, reserved3), 0x340);
const_assert_eq!(offset_of!(MonitorPage, parameters), 0x440);
const_assert_eq!(offset_of!(MonitorPage, reserved4), 0x840);

impl MonitorPage {
    /// Byte offset within the page of the `pending` word that carries `monitor_id`, and the bit
    /// to set in it; `None` if the id is out of range (≥ 128).
    pub const fn pending_bit(monitor_id: u8) -> Option<(usize, u32)> {
        let group = monitor_id as usize / MONITOR_IDS_PER_GROUP;
        if group >= MONITOR_GROUPS {
            return None;
        }
        let offset = offset_of!(MonitorPage, trigger_groups)
            + group * size_of::<MonitorTriggerGroup>()
            + offset_of!(MonitorTriggerGroup, pending);
        Some((offset, 1 << (monitor_id as usize % MONITOR_IDS_PER_GROUP)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_bit_locations() {
        assert_eq!(MonitorPage::pending_bit(0), Some((0x8, 1)));
        assert_eq!(MonitorPage::pending_bit(33), Some((0x10, 2)));
        assert_eq!(MonitorPage::pending_bit(127), Some((0x20, 1 << 31)));
        assert_eq!(MonitorPage::pending_bit(128), None);
    }
}
