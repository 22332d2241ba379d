//! What a kernel does at boot to bring up the hypervisor interface on one virtual processor, on
//! the mock: a thin wrapper over [`winhv::bringup`] so tests and the demo share it and use the
//! same public API a kernel does.

use winhv::bringup::{Partition, Vp};
use winhv::{
    Cpu, GuestOsId, HvPage, Hypercalls, HypervInfo, OpenSourceOsType, Privileges, ReferenceClock,
    Synic, SyntheticRegister,
};

use crate::hv::{MockHypervisor, MockVp};

pub use winhv::bringup::BootError;

/// The interrupt vector the guest routes the VMBus SINT to (Linux x86 uses 0xF3).
pub const VMBUS_VECTOR: u8 = 0xF3;

/// The guest OS id the harness reports: open-source encoding, an unallocated OS type (a new
/// kernel has none of its own), version 0.1.0.
pub fn harness_guest_os_id() -> GuestOsId {
    match GuestOsId::open_source(OpenSourceOsType(0x7F), 0x52, 0x00_0100, 1) {
        Ok(id) => id,
        Err(e) => panic!("constant guest OS id is valid: {e}"),
    }
}

/// One booted virtual processor: detection done, hypercalls, SynIC and the reference clock up.
pub struct BootedVp {
    /// The processor.
    pub cpu: MockVp,
    /// What detection found.
    pub info: HypervInfo,
    /// Typed hypercalls with this VP's parameter pages.
    pub hypercalls: Hypercalls<MockVp>,
    /// The SynIC, with the VMBus SINT routed to [`VMBUS_VECTOR`].
    pub synic: Synic,
    /// Reference time. The VP that brought the partition up holds the partition's clock, which
    /// reads the one reference TSC page (falling back to the counter register); a VP booted
    /// later gets a clock on the counter register alone, since the TSC page is partition-wide
    /// and already owned.
    pub clock: ReferenceClock,
}

/// A fresh zeroed page of guest memory as an [`HvPage`].
pub fn guest_page(mock: &MockHypervisor) -> HvPage {
    let (virt, gpa) = mock.alloc_page();
    // SAFETY: the mock hands out each page once, 4 KiB aligned, mapped for the mock's lifetime,
    // and `gpa` is its true guest-physical address.
    unsafe { HvPage::new(virt, gpa) }
}

/// Brings up VP `index` the way a kernel does with [`winhv::bringup`]: the partition-wide steps
/// ([`Partition::bring_up`]) if GUEST_OS_ID is still 0, then this VP's ([`Vp::bring_up`]).
pub fn boot_vp(mock: &MockHypervisor, index: u32) -> Result<BootedVp, BootError> {
    let cpu = mock.vp(index);
    let mut pages = || Some(guest_page(mock));
    let (info, clock) = if cpu.read_register(SyntheticRegister::GuestOsId) == 0 {
        // SAFETY: a `MockVp` issues hypercalls through whatever page the HYPERCALL register
        // names (it models the page rather than jumping into it), so any page is "the page the
        // Cpu calls into"; this one is fresh from the mock's allocator and otherwise unused.
        let partition = unsafe {
            Partition::bring_up(&cpu, harness_guest_os_id(), guest_page(mock), &mut pages)
        }?;
        // The rest of `partition` is the hypercall page: dropping it leaves the page with the
        // hypervisor for the partition's lifetime, as on a real kernel.
        (partition.info, partition.clock)
    } else {
        // The partition is up: this VP only needs what detection says and a clock of its own.
        let info = winhv::detect(&cpu).map_err(BootError::Detect)?;
        info.require(Privileges::REQUIRED_FOR_VMBUS)
            .map_err(BootError::Detect)?;
        let clock = ReferenceClock::from_counter(&info).map_err(BootError::Time)?;
        (info, clock)
    };
    let Vp { hypercalls, synic } = Vp::bring_up(cpu.clone(), &info, &mut pages, VMBUS_VECTOR)?;
    Ok(BootedVp {
        cpu,
        info,
        hypercalls,
        synic,
        clock,
    })
}
