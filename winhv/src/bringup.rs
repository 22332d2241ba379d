//! The bring-up sequence a kernel runs at boot: once per partition ([`Partition::bring_up`], on
//! the bootstrap processor), then once on every virtual processor ([`Vp::bring_up`], VP 0 first,
//! then each application processor on itself).
//!
//! | step                                              | scope     | registers                 |
//! |---------------------------------------------------|-----------|---------------------------|
//! | [`detect`], require VMBus privileges              | partition | CPUID                     |
//! | write the [`GuestOsId`]                           | partition | GUEST_OS_ID               |
//! | enable the hypercall page                         | partition | HYPERCALL                 |
//! | enable the TSC page, build the [`ReferenceClock`] | partition | REFERENCE_TSC             |
//! | hypercall parameter pages ([`Hypercalls`])        | VP        | none                      |
//! | SynIC, VMBus SINT by [`SintConfig::recommended`]  | VP        | SIMP SIEFP SINT2 SCONTROL |
//!
//! GUEST_OS_ID, HYPERCALL and REFERENCE_TSC are partition-wide registers (TLFS): repeating them
//! on each VP is redundant at best. For REFERENCE_TSC it is harmful: each enable with a new page
//! moves the partition's single TSC page, and a clock reading the old page silently falls back
//! to TIME_REF_COUNT, an intercept on every read. So the partition step owns the one clock and
//! every VP reads it (it is `Sync`).
//!
//! `winhv` has no allocator: the kernel supplies pages through a [`PageSource`].

use core::fmt;

use crate::cpu::Cpu;
use crate::detect::{DetectError, HypervInfo, Privileges, detect};
use crate::guest_id::GuestOsId;
use crate::hypercall::{HypercallError, HypercallSetupError, Hypercalls, enable_hypercall_page};
use crate::page::HvPage;
use crate::register::SyntheticRegister;
use crate::synic::{SintConfig, Synic, SynicError, VMBUS_MESSAGE_SINT};
use crate::time::{ReferenceClock, ReferenceTscPage, TimeError};

/// HYPERCALL register bit 0: the hypercall page is enabled.
const HYPERCALL_ENABLED: u64 = 1;

/// Where bring-up gets its pages: the kernel's page allocator.
///
/// Implemented for closures `FnMut() -> Option<HvPage>`. Each page must be ordinary RAM that is
/// not in use elsewhere, which [`HvPage::new`]'s contract already guarantees, so the trait is
/// safe to implement. Pages need not be zeroed: bring-up zeroes every page whose initial contents
/// matter (the SynIC pages and the TSC page). Every page taken is either handed to the
/// hypervisor or kept by the returned value; on an error, pages already taken are not returned
/// (treat them as leaked, see [`HvPage::new`]).
pub trait PageSource {
    /// A 4 KiB page of guest RAM, or `None` when the allocator has none left.
    fn page(&mut self) -> Option<HvPage>;
}

impl<F: FnMut() -> Option<HvPage>> PageSource for F {
    fn page(&mut self) -> Option<HvPage> {
        self()
    }
}

/// Why bring-up failed, naming the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootError {
    /// Not Hyper-V, or the partition lacks a privilege VMBus needs.
    Detect(DetectError),
    /// The hypercall page could not be enabled.
    HypercallPage(HypercallSetupError),
    /// A VP was brought up while the hypercall page is disabled: [`Partition::bring_up`] has
    /// not run (or the guest OS id was cleared since).
    HypercallPageDisabled,
    /// The [`PageSource`] returned `None`.
    OutOfPages,
    /// The hypercall parameter pages were rejected.
    Hypercalls(HypercallError),
    /// The SynIC could not be enabled, or the VMBus vector is invalid.
    Synic(SynicError),
    /// The reference TSC page or the reference counter is unavailable.
    Time(TimeError),
}

/// Names the failed step followed by the underlying error's message, so a kernel log line is
/// complete on its own; [`core::error::Error::source`] is therefore left empty (an error
/// reporter that walks sources would print the message twice).
impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Detect(e) => write!(f, "Hyper-V detection: {e}"),
            Self::HypercallPage(e) => write!(f, "hypercall page: {e}"),
            Self::HypercallPageDisabled => {
                f.write_str("hypercall page is not enabled: bring the partition up before its VPs")
            }
            Self::OutOfPages => f.write_str("the page source ran out of pages"),
            Self::Hypercalls(e) => write!(f, "hypercall parameter pages: {e}"),
            Self::Synic(e) => write!(f, "SynIC: {e}"),
            Self::Time(e) => write!(f, "reference clock: {e}"),
        }
    }
}

impl core::error::Error for BootError {}

/// The partition-wide half of bring-up, done once: what detection found, the enabled hypercall
/// page and the partition's reference clock.
///
/// Keep it (or at least its fields) for the partition's lifetime. It owns the hypercall page:
/// dropping it leaves the page enabled and with the hypervisor, so the page must then be treated
/// as leaked ([`HvPage::new`]). The public fields may be moved out, for example `info` and
/// `clock` into kernel statics for the application processors.
#[must_use = "dropping the partition state leaks the hypercall page to the hypervisor"]
pub struct Partition {
    /// What detection found. Each VP's [`Vp::bring_up`] takes it.
    pub info: HypervInfo,
    /// Partition reference time for every VP: through the reference TSC page when the partition
    /// has [`Privileges::ACCESS_PARTITION_REFERENCE_TSC`], TIME_REF_COUNT otherwise.
    pub clock: ReferenceClock,
    hypercall_page: HvPage,
}

impl Partition {
    /// Brings up the partition-wide state on the calling (bootstrap) processor, in the TLFS
    /// order: [`detect`] Hyper-V and require [`Privileges::REQUIRED_FOR_VMBUS`], write
    /// `guest_os_id` to GUEST_OS_ID, enable `hypercall_page` as the hypercall page, then enable
    /// a reference TSC page taken from `pages` (skipped when the partition may not) and build
    /// [`Partition::clock`] on it.
    ///
    /// Call once per partition, then [`Vp::bring_up`] on each VP, this one first. Privileges and
    /// pages are checked and taken before any register is written, so a missing privilege, a
    /// misaligned page or an empty page source leaves the partition untouched. A second call
    /// would move the partition's TSC page away from the first call's clock.
    ///
    /// # Safety
    ///
    /// `hypercall_page` is the page that `cpu`, and every [`Cpu`] the kernel will issue
    /// hypercalls with on any VP, calls into. For
    /// [`NativeCpu`](crate::x86_64::NativeCpu) that is the page whose virtual address was given
    /// to `NativeCpu::new`, mapped executable there. A `Cpu` that does not execute the page,
    /// such as a test double, is satisfied by any page.
    ///
    /// Why this call is `unsafe` and nothing else in bring-up is: every other page handed to the
    /// hypervisor (SynIC pages, TSC page) is fully described by its [`HvPage`], which is owned
    /// exclusively by construction and afterwards by the value that enabled it, so
    /// [`HvPage::new`]'s contract covers it and [`PageSource`] can be a safe trait. The link
    /// between the hypercall page and the address the `Cpu` jumps to is something no type here
    /// records: overlaying the hypervisor's code on another page would make every later
    /// hypercall jump into ordinary RAM. A page source never sees the `Cpu` and cannot vouch for
    /// that link, so the obligation sits on this call, where the page and the `Cpu` meet. The
    /// rest of the "reserved for the hypervisor" obligation of [`enable_hypercall_page`] is met
    /// by taking `hypercall_page` by value and keeping it.
    ///
    /// # Example
    ///
    /// A kernel's boot path on x86_64: the bootstrap processor brings up the partition and
    /// itself; each application processor then brings itself up.
    ///
    /// ```no_run
    /// # #[cfg(target_arch = "x86_64")]
    /// # mod kernel {
    /// use core::ptr::NonNull;
    ///
    /// use winhv::bringup::{BootError, Partition, Vp};
    /// use winhv::x86_64::NativeCpu;
    /// use winhv::{GuestOsId, HvPage, HypervInfo, OpenSourceOsType};
    ///
    /// /// Where the kernel installed its VMBus interrupt handler.
    /// const VMBUS_VECTOR: u8 = 0xF3;
    ///
    /// /// Open-source encoding, an unallocated OS type, version 0.1.0 (checked at compile time).
    /// const GUEST_OS_ID: GuestOsId =
    ///     match GuestOsId::open_source(OpenSourceOsType(0x7F), 0, 0x00_0100, 0) {
    ///         Ok(id) => id,
    ///         Err(_) => panic!("invalid guest OS id"),
    ///     };
    ///
    /// /// The kernel's page allocator: a fresh 4 KiB-aligned page of RAM, mapped for good (and
    /// /// executable), with its guest-physical address.
    /// fn alloc_page() -> Option<(NonNull<u8>, u64)> {
    ///     // ...
    ///     # None
    /// }
    ///
    /// /// The page source bring-up draws from.
    /// fn page() -> Option<HvPage> {
    ///     let (virt, gpa) = alloc_page()?;
    ///     // SAFETY: the allocator hands out each page once, aligned, mapped for good, with its
    ///     // true GPA.
    ///     Some(unsafe { HvPage::new(virt, gpa) })
    /// }
    ///
    /// /// On the bootstrap processor, early in boot.
    /// pub fn boot_bsp() -> Result<(Partition, Vp<NativeCpu>), BootError> {
    ///     let (virt, gpa) = alloc_page().ok_or(BootError::OutOfPages)?;
    ///     // SAFETY: as in `page`.
    ///     let hypercall_page = unsafe { HvPage::new(virt, gpa) };
    ///     // SAFETY: CPL 0; until detection below has found Hyper-V only CPUID runs through
    ///     // `cpu`; `virt` is mapped executable and its page is enabled below before the
    ///     // first hypercall.
    ///     let cpu = unsafe { NativeCpu::new(virt) };
    ///     // SAFETY: `hypercall_page` is the page `cpu` calls into: its virtual address is the
    ///     // one just given to `NativeCpu::new`, mapped executable.
    ///     let partition =
    ///         unsafe { Partition::bring_up(&cpu, GUEST_OS_ID, hypercall_page, &mut page) }?;
    ///     let vp0 = Vp::bring_up(cpu, &partition.info, &mut page, VMBUS_VECTOR)?;
    ///     Ok((partition, vp0))
    /// }
    ///
    /// /// On each application processor once the bootstrap processor is done, with the same
    /// /// `NativeCpu` (it is `Copy`) and `partition.info`, shared through kernel statics.
    /// pub fn boot_ap(cpu: NativeCpu, info: &HypervInfo) -> Result<Vp<NativeCpu>, BootError> {
    ///     Vp::bring_up(cpu, info, &mut page, VMBUS_VECTOR)
    /// }
    /// # }
    /// ```
    pub unsafe fn bring_up(
        cpu: &impl Cpu,
        guest_os_id: GuestOsId,
        hypercall_page: HvPage,
        pages: &mut impl PageSource,
    ) -> Result<Self, BootError> {
        let info = detect(cpu).map_err(BootError::Detect)?;
        info.require(Privileges::REQUIRED_FOR_VMBUS)
            .map_err(BootError::Detect)?;
        // The fallback clock needs the reference counter; check it before writing anything.
        let counter_clock = ReferenceClock::from_counter(&info).map_err(BootError::Time)?;
        if !hypercall_page.is_aligned() {
            let gpa = hypercall_page.gpa();
            return Err(BootError::HypercallPage(HypercallSetupError::Misaligned(
                gpa,
            )));
        }
        let tsc_page = if info
            .privileges
            .contains(Privileges::ACCESS_PARTITION_REFERENCE_TSC)
        {
            let page = pages.page().ok_or(BootError::OutOfPages)?;
            if !page.is_aligned() {
                return Err(BootError::Time(TimeError::BadPage));
            }
            Some(page)
        } else {
            None
        };

        guest_os_id.write(cpu);
        // SAFETY: the returned value keeps `hypercall_page` (and it is leaked if that value is
        // dropped), so nothing else uses the RAM the overlay hides (HvPage contract); the caller
        // guarantees it is the page `cpu` calls into (this function's contract).
        unsafe { enable_hypercall_page(cpu, hypercall_page.gpa()) }
            .map_err(BootError::HypercallPage)?;
        let clock = match tsc_page {
            Some(mut page) => {
                // Sequence 0 marks the page invalid until the hypervisor fills it.
                page.zero();
                let page = ReferenceTscPage::enable(cpu, &info, page).map_err(BootError::Time)?;
                ReferenceClock::with_tsc_page(&info, page).map_err(BootError::Time)?
            }
            None => counter_clock,
        };
        Ok(Self {
            info,
            clock,
            hypercall_page,
        })
    }

    /// The guest-physical address of the enabled hypercall page.
    pub fn hypercall_page_gpa(&self) -> u64 {
        self.hypercall_page.gpa()
    }
}

/// The per-VP half of bring-up: what one virtual processor needs for VMBus.
///
/// Per-VP state: use it only on the VP that brought it up (see [`Synic`]).
#[must_use = "dropping an enabled SynIC leaks its pages to the hypervisor"]
pub struct Vp<C: Cpu> {
    /// Typed hypercalls through this VP's own input and output parameter pages; it owns the
    /// `Cpu` ([`Hypercalls::cpu`]).
    pub hypercalls: Hypercalls<C>,
    /// This VP's SynIC, with [`VMBUS_MESSAGE_SINT`] routed to the vector given to
    /// [`Vp::bring_up`].
    pub synic: Synic,
}

impl<C: Cpu> Vp<C> {
    /// Brings up the virtual processor `cpu` runs on (call it on that VP): two hypercall
    /// parameter pages, then the SynIC (SIMP, SIEFP, the VMBus SINT routed to `vmbus_vector`
    /// with AutoEOI as [`SintConfig::recommended`] says, SCONTROL).
    ///
    /// `info` is [`Partition::info`]; the partition must be up ([`Partition::bring_up`] on any
    /// VP), which is checked through the HYPERCALL register. The vector, privileges and pages
    /// are checked and taken before any register is written, so an error leaves this VP
    /// untouched.
    pub fn bring_up(
        cpu: C,
        info: &HypervInfo,
        pages: &mut impl PageSource,
        vmbus_vector: u8,
    ) -> Result<Self, BootError> {
        let sint = SintConfig::recommended(info, VMBUS_MESSAGE_SINT, vmbus_vector);
        sint.validate().map_err(BootError::Synic)?;
        info.require(Privileges::REQUIRED_FOR_VMBUS)
            .map_err(BootError::Detect)?;
        if cpu.read_register(SyntheticRegister::Hypercall) & HYPERCALL_ENABLED == 0 {
            return Err(BootError::HypercallPageDisabled);
        }
        let mut take = || pages.page().ok_or(BootError::OutOfPages);
        let [input, output, simp, siefp] = [take()?, take()?, take()?, take()?];

        let hypercalls = Hypercalls::new(cpu, input, output).map_err(BootError::Hypercalls)?;
        let synic = Synic::enable(hypercalls.cpu(), info, simp, siefp, &[sint])
            .map_err(BootError::Synic)?;
        Ok(Self { hypercalls, synic })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::cell::RefCell;
    use core::ptr::NonNull;
    use std::alloc::{Layout, alloc_zeroed, dealloc};
    use std::format;
    use std::rc::Rc;
    use std::string::ToString;
    use std::vec::Vec;

    use super::*;
    use crate::cpu::CpuidResult;
    use crate::detect::{HV_INTERFACE_SIGNATURE, Recommendations};
    use crate::guest_id::OpenSourceOsType;
    use crate::page::HV_PAGE_SIZE;

    use SyntheticRegister as R;

    /// GUEST_OS_ID, HYPERCALL and REFERENCE_TSC are one register per partition.
    fn partition_wide(register: R) -> bool {
        matches!(
            register,
            R::GuestOsId | R::Hypercall | R::ReferenceTsc | R::TimeRefCount
        )
    }

    /// A partition with a few VPs: CPUID answers and a register file, nothing more.
    struct FakeHv {
        privileges: Privileges,
        recommendations: Recommendations,
        /// (VP, or `None` for partition-wide, register, value).
        registers: Vec<(Option<usize>, R, u64)>,
        /// Every register write: (VP, register, value).
        writes: Vec<(usize, R, u64)>,
    }

    #[derive(Clone)]
    struct FakeCpu {
        vp: usize,
        hv: Rc<RefCell<FakeHv>>,
    }

    fn fake(privileges: Privileges, recommendations: Recommendations) -> Rc<RefCell<FakeHv>> {
        let mut hv = FakeHv {
            privileges,
            recommendations,
            registers: Vec::new(),
            writes: Vec::new(),
        };
        hv.set(None, R::TimeRefCount, 4242);
        Rc::new(RefCell::new(hv))
    }

    fn all_privileges() -> Privileges {
        Privileges::REQUIRED_FOR_VMBUS
            | Privileges::ACCESS_PARTITION_REFERENCE_COUNTER
            | Privileges::ACCESS_PARTITION_REFERENCE_TSC
    }

    impl FakeHv {
        fn get(&self, vp: Option<usize>, register: R) -> u64 {
            self.registers
                .iter()
                .find(|(v, r, _)| *v == vp && *r == register)
                .map_or(0, |&(_, _, value)| value)
        }

        fn set(&mut self, vp: Option<usize>, register: R, value: u64) {
            self.registers
                .retain(|(v, r, _)| !(*v == vp && *r == register));
            self.registers.push((vp, register, value));
        }
    }

    impl FakeCpu {
        fn scope(&self, register: R) -> Option<usize> {
            (!partition_wide(register)).then_some(self.vp)
        }
    }

    impl Cpu for FakeCpu {
        fn cpuid(&self, leaf: u32, _subleaf: u32) -> CpuidResult {
            let hv = self.hv.borrow();
            let word = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            match leaf {
                1 => CpuidResult {
                    ecx: 1 << 31,
                    ..CpuidResult::default()
                },
                0x4000_0000 => CpuidResult {
                    eax: 0x4000_000A,
                    ebx: word(b"Micr"),
                    ecx: word(b"osof"),
                    edx: word(b"t Hv"),
                },
                0x4000_0001 => CpuidResult {
                    eax: HV_INTERFACE_SIGNATURE,
                    ..CpuidResult::default()
                },
                0x4000_0003 => CpuidResult {
                    eax: hv.privileges.bits() as u32,
                    ebx: (hv.privileges.bits() >> 32) as u32,
                    ..CpuidResult::default()
                },
                0x4000_0004 => CpuidResult {
                    eax: hv.recommendations.bits(),
                    ..CpuidResult::default()
                },
                _ => CpuidResult::default(),
            }
        }

        fn read_register(&self, register: R) -> u64 {
            if register == R::VpIndex {
                return self.vp as u64;
            }
            self.hv.borrow().get(self.scope(register), register)
        }

        unsafe fn write_register(&self, register: R, mut value: u64) {
            let mut hv = self.hv.borrow_mut();
            hv.writes.push((self.vp, register, value));
            if register == R::Hypercall && hv.get(None, R::GuestOsId) == 0 {
                value &= !HYPERCALL_ENABLED;
            }
            hv.set(self.scope(register), register, value);
        }

        unsafe fn hypercall(&self, _control: u64, _input_gpa: u64, _output_gpa: u64) -> u64 {
            0
        }

        fn fast_hypercall(&self, _control: u64, _input0: u64, _input1: u64) -> u64 {
            0
        }

        fn read_tsc(&self) -> u64 {
            0
        }
    }

    /// Heap pages standing in for guest RAM (GPA = address), freed when the pool is dropped:
    /// declare it before anything holding its pages.
    struct Pages {
        allocated: Vec<NonNull<u8>>,
        left: usize,
    }

    const PAGE: Layout = match Layout::from_size_align(HV_PAGE_SIZE, HV_PAGE_SIZE) {
        Ok(layout) => layout,
        Err(_) => panic!("page layout"),
    };

    impl Pages {
        fn new(left: usize) -> Self {
            Self {
                allocated: Vec::new(),
                left,
            }
        }

        fn taken(&self) -> usize {
            self.allocated.len()
        }
    }

    impl PageSource for Pages {
        fn page(&mut self) -> Option<HvPage> {
            self.left = self.left.checked_sub(1)?;
            // SAFETY: PAGE has a non-zero size.
            let virt = NonNull::new(unsafe { alloc_zeroed(PAGE) })?;
            self.allocated.push(virt);
            // SAFETY: a fresh aligned heap page, freed only when the pool is dropped, which the
            // tests do after every value holding it; its "GPA" is its address.
            Some(unsafe { HvPage::new(virt, virt.as_ptr() as u64) })
        }
    }

    impl Drop for Pages {
        fn drop(&mut self) {
            for page in self.allocated.drain(..) {
                // SAFETY: allocated in `page` with the same layout, and freed once.
                unsafe { dealloc(page.as_ptr(), PAGE) };
            }
        }
    }

    fn guest_os_id() -> GuestOsId {
        GuestOsId::open_source(OpenSourceOsType(0x7F), 0, 1, 0).unwrap()
    }

    fn bring_up_partition(cpu: &FakeCpu, pages: &mut Pages) -> Result<(Partition, u64), BootError> {
        let hypercall_page = pages.page().ok_or(BootError::OutOfPages)?;
        let gpa = hypercall_page.gpa();
        // SAFETY: the fake never executes the hypercall page.
        let p = unsafe { Partition::bring_up(cpu, guest_os_id(), hypercall_page, pages) }?;
        Ok((p, gpa))
    }

    #[test]
    fn partition_once_then_each_vp_writes_its_registers_in_order() {
        let mut pages = Pages::new(16);
        let hv = fake(all_privileges(), Recommendations::empty());
        let cpu = |vp| FakeCpu { vp, hv: hv.clone() };
        let (partition, hypercall_gpa) = bring_up_partition(&cpu(0), &mut pages).unwrap();
        assert_eq!(partition.hypercall_page_gpa(), hypercall_gpa);
        let vp0 = Vp::bring_up(cpu(0), &partition.info, &mut pages, 0xF3).unwrap();
        let vp1 = Vp::bring_up(cpu(1), &partition.info, &mut pages, 0xF3).unwrap();
        assert_eq!(pages.taken(), 1 + 1 + 4 + 4, "hypercall, TSC, 4 per VP");

        let writes = hv.borrow().writes.clone();
        let order: Vec<(usize, R)> = writes.iter().map(|&(vp, r, _)| (vp, r)).collect();
        let per_vp = |vp| {
            [
                (vp, R::Simp),
                (vp, R::Siefp),
                (vp, R::Sint(2)),
                (vp, R::Scontrol),
            ]
        };
        let mut expected = std::vec![(0, R::GuestOsId), (0, R::Hypercall), (0, R::ReferenceTsc)];
        expected.extend(per_vp(0));
        expected.extend(per_vp(1));
        assert_eq!(order, expected);

        assert_eq!(writes[0].2, guest_os_id().raw());
        assert_eq!(writes[1].2, hypercall_gpa | 1);
        assert_eq!(writes[2].2 & 1, 1, "TSC page enabled");
        for (vp, bringup) in [(0, &vp0), (1, &vp1)] {
            let hv = hv.borrow();
            let simp = hv.get(Some(vp), R::Simp);
            let siefp = hv.get(Some(vp), R::Siefp);
            assert_eq!((simp & 1, siefp & 1), (1, 1), "VP {vp}");
            assert_ne!(simp >> 12, siefp >> 12);
            let sint = hv.get(Some(vp), R::Sint(2));
            assert_eq!(sint & 0xFF, 0xF3);
            assert_eq!(sint & (1 << 16), 0, "unmasked");
            assert_ne!(sint & (1 << 17), 0, "AutoEOI: not deprecated here");
            assert_eq!(hv.get(Some(vp), R::Scontrol), 1);
            assert_eq!(bringup.hypercalls.cpu().vp, vp);
        }
        assert_ne!(
            hv.borrow().get(Some(0), R::Simp),
            hv.borrow().get(Some(1), R::Simp),
            "each VP has its own message page"
        );
    }

    #[test]
    fn deprecated_auto_eoi_is_not_set() {
        let mut pages = Pages::new(16);
        let hv = fake(all_privileges(), Recommendations::DEPRECATE_AUTO_EOI);
        let cpu = FakeCpu {
            vp: 0,
            hv: hv.clone(),
        };
        let (partition, _) = bring_up_partition(&cpu, &mut pages).unwrap();
        let _vp = Vp::bring_up(cpu, &partition.info, &mut pages, 0x40).unwrap();
        let sint = hv.borrow().get(Some(0), R::Sint(2));
        assert_eq!(sint & (1 << 17), 0);
        assert_eq!(sint & 0xFF, 0x40);
    }

    #[test]
    fn missing_vmbus_privileges_write_nothing() {
        let mut pages = Pages::new(16);
        let hv = fake(
            all_privileges().difference(Privileges::ACCESS_SYNIC_REGS),
            Recommendations::empty(),
        );
        let cpu = FakeCpu {
            vp: 0,
            hv: hv.clone(),
        };
        assert_eq!(
            bring_up_partition(&cpu, &mut pages).err(),
            Some(BootError::Detect(DetectError::MissingPrivileges(
                Privileges::ACCESS_SYNIC_REGS
            )))
        );
        assert_eq!(hv.borrow().writes, []);
        assert_eq!(pages.taken(), 1, "only the hypercall page the caller took");
    }

    #[test]
    fn a_vp_before_the_partition_is_refused() {
        let mut pages = Pages::new(16);
        let hv = fake(all_privileges(), Recommendations::empty());
        let cpu = FakeCpu {
            vp: 0,
            hv: hv.clone(),
        };
        let info = detect(&cpu).unwrap();
        assert_eq!(
            Vp::bring_up(cpu, &info, &mut pages, 0xF3).err(),
            Some(BootError::HypercallPageDisabled)
        );
        assert_eq!(hv.borrow().writes, []);
        assert_eq!(pages.taken(), 0);
    }

    #[test]
    fn running_out_of_pages_leaves_the_vp_untouched() {
        let mut pages = Pages::new(1 + 1 + 3);
        let hv = fake(all_privileges(), Recommendations::empty());
        let cpu = FakeCpu {
            vp: 0,
            hv: hv.clone(),
        };
        let (partition, _) = bring_up_partition(&cpu, &mut pages).unwrap();
        let writes_before = hv.borrow().writes.len();
        assert_eq!(
            Vp::bring_up(cpu, &partition.info, &mut pages, 0xF3).err(),
            Some(BootError::OutOfPages)
        );
        assert_eq!(hv.borrow().writes.len(), writes_before);

        let mut pool = Pages::new(1);
        let hypercall_page = pool.page().unwrap();
        let mut empty = || None;
        let hv = fake(all_privileges(), Recommendations::empty());
        let cpu = FakeCpu {
            vp: 0,
            hv: hv.clone(),
        };
        // SAFETY: the fake never executes the hypercall page.
        let r = unsafe { Partition::bring_up(&cpu, guest_os_id(), hypercall_page, &mut empty) };
        assert_eq!(r.err(), Some(BootError::OutOfPages));
        assert_eq!(hv.borrow().writes, [], "no TSC page: nothing written");
    }

    #[test]
    fn an_invalid_vector_is_refused_before_any_page_is_taken() {
        let mut pages = Pages::new(16);
        let hv = fake(all_privileges(), Recommendations::empty());
        let cpu = FakeCpu {
            vp: 0,
            hv: hv.clone(),
        };
        let (partition, _) = bring_up_partition(&cpu, &mut pages).unwrap();
        let taken = pages.taken();
        assert_eq!(
            Vp::bring_up(cpu, &partition.info, &mut pages, 15).err(),
            Some(BootError::Synic(SynicError::InvalidVector(15)))
        );
        assert_eq!(pages.taken(), taken);
    }

    #[test]
    fn without_the_tsc_privilege_the_clock_reads_the_counter() {
        let mut pages = Pages::new(16);
        let hv = fake(
            all_privileges().difference(Privileges::ACCESS_PARTITION_REFERENCE_TSC),
            Recommendations::empty(),
        );
        let cpu = FakeCpu {
            vp: 0,
            hv: hv.clone(),
        };
        let (partition, _) = bring_up_partition(&cpu, &mut pages).unwrap();
        assert_eq!(pages.taken(), 1, "no TSC page taken");
        assert!(!hv.borrow().writes.iter().any(|w| w.1 == R::ReferenceTsc));
        assert_eq!(partition.clock.now(&cpu), 4242);

        let hv = fake(
            all_privileges().difference(Privileges::ACCESS_PARTITION_REFERENCE_COUNTER),
            Recommendations::empty(),
        );
        let cpu = FakeCpu {
            vp: 0,
            hv: hv.clone(),
        };
        assert_eq!(
            bring_up_partition(&cpu, &mut pages).err(),
            Some(BootError::Time(TimeError::MissingPrivilege(
                Privileges::ACCESS_PARTITION_REFERENCE_COUNTER
            )))
        );
        assert_eq!(hv.borrow().writes, []);
    }

    #[test]
    fn errors_name_their_step() {
        fn is_error<E: core::error::Error + Send + Sync + 'static>() {}
        is_error::<BootError>();
        assert_eq!(
            BootError::OutOfPages.to_string(),
            "the page source ran out of pages"
        );
        let e = BootError::Synic(SynicError::InvalidVector(3));
        assert_eq!(format!("{e}"), "SynIC: interrupt vector 3 is reserved");
        assert!(
            BootError::HypercallPage(HypercallSetupError::GuestOsIdNotSet)
                .to_string()
                .starts_with("hypercall page: ")
        );
    }
}
