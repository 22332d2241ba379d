//! What a kernel does at boot to bring up the hypervisor interface on one virtual processor,
//! written once against the mock so tests and the demo share it. It uses only the public
//! `winhv` API, exactly as a kernel would.

use winhv::synic::VMBUS_MESSAGE_SINT;
use winhv::{
    Cpu, GuestOsId, HvPage, Hypercalls, HypervInfo, OpenSourceOsType, ReferenceClock,
    ReferenceTscPage, SintConfig, Synic,
};

use crate::hv::{MockHypervisor, MockVp};

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
    /// Reference time via the TSC page (falls back to the counter register).
    pub clock: ReferenceClock,
}

/// Why bring-up failed, with the step that failed.
#[derive(Debug)]
pub enum BootError {
    /// Detection or a privilege check.
    Detect(winhv::DetectError),
    /// Enabling the hypercall page.
    HypercallPage(winhv::hypercall::HypercallSetupError),
    /// Creating the hypercall interface.
    Hypercalls(winhv::HypercallError),
    /// Enabling the SynIC.
    Synic(winhv::SynicError),
    /// Enabling the reference TSC page.
    Time(winhv::time::TimeError),
}

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Detect(e) => write!(f, "detection: {e}"),
            Self::HypercallPage(e) => write!(f, "hypercall page: {e}"),
            Self::Hypercalls(e) => write!(f, "hypercalls: {e}"),
            Self::Synic(e) => write!(f, "SynIC: {e}"),
            Self::Time(e) => write!(f, "reference TSC page: {e}"),
        }
    }
}

impl std::error::Error for BootError {}

/// A fresh zeroed page of guest memory as an [`HvPage`].
pub fn guest_page(mock: &MockHypervisor) -> HvPage {
    let (virt, gpa) = mock.alloc_page();
    // SAFETY: the mock hands out each page once, 4 KiB aligned, mapped for the mock's lifetime,
    // and `gpa` is its true guest-physical address.
    unsafe { HvPage::new(virt, gpa) }
}

/// Brings up VP `index` the way a kernel does: detect, require the VMBus privileges, write the
/// guest OS id and enable the hypercall page (partition-wide, harmless to repeat), then this
/// VP's hypercall pages, SynIC and reference TSC page.
pub fn boot_vp(mock: &MockHypervisor, index: u32) -> Result<BootedVp, BootError> {
    let cpu = mock.vp(index);
    let info = winhv::detect(&cpu).map_err(BootError::Detect)?;
    info.require(winhv::Privileges::REQUIRED_FOR_VMBUS)
        .map_err(BootError::Detect)?;
    if cpu.read_register(winhv::SyntheticRegister::GuestOsId) == 0 {
        harness_guest_os_id().write(&cpu);
        let hypercall_page = guest_page(mock);
        // SAFETY: the page was just allocated for this purpose and is never used again (it is
        // leaked to the hypervisor for the partition's lifetime, as on a real kernel).
        unsafe { winhv::enable_hypercall_page(&cpu, hypercall_page.gpa()) }
            .map_err(BootError::HypercallPage)?;
    }
    let hypercalls = Hypercalls::new(cpu.clone(), guest_page(mock), guest_page(mock))
        .map_err(BootError::Hypercalls)?;
    let sint = SintConfig::recommended(&info, VMBUS_MESSAGE_SINT, VMBUS_VECTOR);
    let synic = Synic::enable(&cpu, &info, guest_page(mock), guest_page(mock), &[sint])
        .map_err(BootError::Synic)?;
    let tsc_page =
        ReferenceTscPage::enable(&cpu, &info, guest_page(mock)).map_err(BootError::Time)?;
    let clock = ReferenceClock::with_tsc_page(&info, tsc_page).map_err(BootError::Time)?;
    Ok(BootedVp {
        cpu,
        info,
        hypercalls,
        synic,
        clock,
    })
}
