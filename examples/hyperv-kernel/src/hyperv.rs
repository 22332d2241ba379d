//! The Hyper-V platform: partition and VP bring-up (winhv), the partition reference clock,
//! the idle tick (synthetic timer 0 in direct mode), the one VMBus connection every driver
//! shares, and the VMBus interrupt handler.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use spin::Once;
use vmbus_guest::{ConnectionConfig, DeadlineWait, SynicTransport, Vmbus};
use winhv::bringup::{BootError, Partition, Vp};
use winhv::x86_64::NativeCpu;
use winhv::{
    GuestOsId, HypervInfo, OpenSourceOsType, ReferenceClock, SyntheticTimer, TimerDelivery,
};

use crate::interrupts::{TIMER_VECTOR, VMBUS_VECTOR, wait_for_interrupt};
use crate::memory::{self, KernelHal};
use crate::{apic, println};

/// The transport every driver reaches the host through: hypercalls and the SynIC of VP 0.
pub type Transport = SynicTransport<NativeCpu>;
/// The VMBus connection with this kernel's memory.
pub type Bus = Vmbus<Transport, KernelHal>;
/// How every blocking driver call waits: a deadline on the reference clock, halting between
/// polls when the idle tick runs.
pub type Waiter = DeadlineWait<fn() -> u64, fn()>;

/// Reference time units per second (100 ns).
pub const SECOND: u64 = 10_000_000;
/// The idle tick's period: 10 ms.
const TICK: u64 = SECOND / 100;

/// Open-source guest OS id: an unregistered OS type, version 0.1.0.
const GUEST_OS_ID: GuestOsId = match GuestOsId::open_source(OpenSourceOsType(0x7F), 0, 0x00_0100, 0)
{
    Ok(id) => id,
    Err(_) => panic!("invalid guest OS id"),
};

/// The connection, shared by every driver; the interrupt handler reaches it here.
static BUS: Once<Bus> = Once::new();
/// The partition reference clock and the CPU it is read on.
static CLOCK: Once<(ReferenceClock, NativeCpu)> = Once::new();
/// Whether the VMBus SINT delivers with AutoEOI (otherwise the handler signals EOI).
static AUTO_EOI: AtomicBool = AtomicBool::new(true);
/// Whether the idle tick runs, so waits may halt.
static TICKING: AtomicBool = AtomicBool::new(false);
/// Set by the interrupt handler when host control messages wait for `Vmbus::poll`.
static CONTROL_PENDING: AtomicBool = AtomicBool::new(false);

/// Partition reference time in 100 ns units (0 before bring-up).
pub fn now() -> u64 {
    CLOCK.get().map_or(0, |(clock, cpu)| clock.now(cpu))
}

/// Lets time pass: halt until the next interrupt when the tick runs, spin otherwise.
pub fn relax() {
    if TICKING.load(Ordering::Relaxed) {
        wait_for_interrupt();
    } else {
        core::hint::spin_loop();
    }
}

/// A waiter giving up after `timeout` (100 ns units).
pub fn waiter(timeout: u64) -> Waiter {
    DeadlineWait::new(timeout, now as fn() -> u64, relax as fn())
}

/// Whether the interrupt handler saw control messages since the last call.
pub fn take_control_pending() -> bool {
    CONTROL_PENDING.swap(false, Ordering::Relaxed)
}

/// The VMBus SINT's handler (called from the interrupt stub): the bus's lock-free interrupt
/// path takes the event flags and the message slot; the drivers are polled after the wake-up.
pub fn on_vmbus_interrupt() {
    if let Some(bus) = BUS.get()
        && bus.handle_interrupt().control
    {
        CONTROL_PENDING.store(true, Ordering::Relaxed);
    }
    if !AUTO_EOI.load(Ordering::Relaxed) {
        apic::end_of_interrupt();
    }
}

/// Brings up the partition and VP 0, the clock and the idle tick, and creates the bus.
pub fn bring_up(info: &HypervInfo) -> Result<&'static Bus, BootError> {
    let hypercall_page = memory::hv_page().ok_or(BootError::OutOfPages)?;
    let virt = NonNull::new(hypercall_page.as_ptr()).ok_or(BootError::OutOfPages)?;
    // SAFETY: CPL 0 under Hyper-V (detected); `virt` is identity mapped and executable (the
    // boot page tables set no NX bit), and Partition::bring_up enables this very page before
    // any hypercall is issued.
    let cpu = unsafe { NativeCpu::new(virt) };
    let mut pages = memory::hv_page;
    // SAFETY: `hypercall_page` is the page `cpu` calls into: its address went to
    // NativeCpu::new just above.
    let partition = unsafe { Partition::bring_up(&cpu, GUEST_OS_ID, hypercall_page, &mut pages) }?;
    println!(
        "hyperv: guest OS id written, hypercall page at {:#x} enabled",
        partition.hypercall_page_gpa()
    );
    let vp = Vp::bring_up(cpu, &partition.info, &mut pages, VMBUS_VECTOR)?;
    AUTO_EOI.store(info.auto_eoi_allowed(), Ordering::Relaxed);
    println!(
        "hyperv: SynIC on VP 0, VMBus SINT -> vector {VMBUS_VECTOR:#x} ({})",
        if info.auto_eoi_allowed() {
            "AutoEOI"
        } else {
            "explicit EOI"
        }
    );
    // The partition state is kept for good: the hypercall page stays enabled.
    let Partition { info: _, clock, .. } = partition;
    CLOCK.call_once(|| (clock, cpu));
    let t = now();
    println!(
        "hyperv: reference clock reads {}.{:03} s since the partition started",
        t / SECOND,
        t % SECOND / 10_000
    );
    start_tick(info, &cpu);
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    Ok(BUS.call_once(|| Vmbus::new(transport, KernelHal, ConnectionConfig::default())))
}

/// Starts synthetic timer 0, periodic, in direct mode on [`TIMER_VECTOR`]: the tick that wakes
/// waits and the idle loop. Without direct mode (hosts before Windows Server 2016) the kernel
/// spins instead of halting.
fn start_tick(info: &HypervInfo, cpu: &NativeCpu) {
    let started = SyntheticTimer::new(
        info,
        0,
        TimerDelivery::Direct {
            vector: TIMER_VECTOR,
        },
    )
    .and_then(|timer| timer.arm_periodic(cpu, TICK));
    match started {
        Ok(()) => {
            TICKING.store(true, Ordering::Relaxed);
            println!(
                "hyperv: stimer0 periodic every 10 ms, direct mode -> vector {TIMER_VECTOR:#x}; waits halt"
            );
        }
        Err(e) => println!("hyperv: no idle tick ({e}); waits spin"),
    }
}
