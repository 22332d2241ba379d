//! The mock hypervisor: a std model of Hyper-V at the instruction boundary (CPUID, synthetic
//! MSRs, hypercalls, SynIC, reference time, synthetic timers) over a block of guest-physical
//! memory, written from `protocol/vmbus-core.md` and the TLFS. It is the guest library's test
//! oracle: accesses real Hyper-V rejects with #GP panic with a message starting "#GP:" and
//! every rejected guest action is listed in [`MockHypervisor::protocol_errors`].

mod clock;
mod config;
mod hal;
mod host_map;
mod hypercall;
mod memory;
mod overlay;
mod presets;
mod registers;
mod state;
mod synic;
mod timers;
mod types;
mod vp;

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use config::MockConfig;
pub use hal::{MockHal, POISON_BYTE};
pub use host_map::{
    FreedWhileMapped, HostMapping, MapOwner, RequestSet, SharedRequestSet, ViolationHook,
};
pub use hypercall::status;
pub use hypercall::{
    FLUSH_VIRTUAL_ADDRESS_LIST, FLUSH_VIRTUAL_ADDRESS_SPACE, NOTIFY_LONG_SPIN_WAIT, POST_MESSAGE,
    SEND_SYNTHETIC_CLUSTER_IPI, SIGNAL_EVENT,
};
pub use memory::PAGE_SIZE;
pub use presets::{HV_INTERFACE_SIGNATURE, HostPreset, feature, privilege, recommendation};
pub use timers::TIMER_EXPIRED_MESSAGE;
pub use types::{CrashReport, MockError, PostedMessage, TlbFlush};
pub use vp::MockVp;

use memory::GuestMemory;
use state::State;
use synic::{MAX_PAYLOAD, QueuedMessage};

/// State shared by every handle: memory outside the lock (the guest touches it directly),
/// everything else inside.
pub(crate) struct Shared {
    memory: GuestMemory,
    state: Mutex<State>,
    /// Bumped after every PostMessage or SignalEvent hypercall (outside the lock), so a
    /// host that polls can tell without taking the lock that nothing was posted or
    /// signalled since it last looked ([`MockHypervisor::guest_activity`]).
    activity: AtomicU64,
}

/// Locks the state, ignoring poisoning (faults panic only after the guard is dropped).
pub(crate) fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A mock Hyper-V partition: guest memory, VPs and host-side controls. Cloning gives another
/// handle to the same partition; memory is freed when the last handle is dropped.
#[derive(Clone)]
pub struct MockHypervisor {
    shared: Arc<Shared>,
}

impl MockHypervisor {
    /// Creates the partition described by `config`.
    ///
    /// # Panics
    ///
    /// If `config.tsc_frequency_hz` is below 10 MHz (the TSC page cannot express it).
    pub fn new(config: MockConfig) -> Self {
        let memory = GuestMemory::new(
            config.memory_base_gpa,
            config.memory_bytes,
            config.mmio_base_gpa,
            config.mmio_bytes,
        );
        let state = State::new(&config, &memory);
        Self {
            shared: Arc::new(Shared {
                memory,
                state: Mutex::new(state),
                activity: AtomicU64::new(0),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    fn vp_index(&self, vp: u32) -> Result<usize, MockError> {
        let n = self.state().vps.len();
        let i = vp as usize;
        if i < n {
            Ok(i)
        } else {
            Err(MockError::InvalidVp(vp))
        }
    }

    /// The CPU running on VP `index`.
    ///
    /// # Panics
    ///
    /// If `index` is not below the VP count.
    pub fn vp(&self, index: u32) -> MockVp {
        let index = self
            .vp_index(index)
            .unwrap_or_else(|e| panic!("MockHypervisor::vp: {e}"));
        MockVp {
            hv: self.clone(),
            index,
        }
    }

    /// The platform memory interface over this partition's RAM.
    pub fn hal(&self) -> MockHal {
        MockHal { hv: self.clone() }
    }

    /// First GPA of guest RAM.
    pub fn memory_base_gpa(&self) -> u64 {
        self.shared.memory.ram_base()
    }

    /// Guest RAM size in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.shared.memory.ram_len()
    }

    /// One zeroed page from the HAL's allocator: (virtual address, GPA).
    ///
    /// # Panics
    ///
    /// When guest RAM is exhausted.
    pub fn alloc_page(&self) -> (NonNull<u8>, u64) {
        self.hal().alloc(1).expect("mock guest RAM exhausted")
    }

    /// The MMIO window (VRAM) `MockHal::map_mmio` maps: (first GPA, bytes).
    pub fn mmio_window(&self) -> (u64, usize) {
        self.shared.memory.mmio_window()
    }

    /// Reads `[gpa, gpa+len)` of the MMIO window as the host sees it (what a video device
    /// model scans out of the VRAM); `None` outside the window.
    pub fn read_mmio(&self, gpa: u64, len: usize) -> Option<Vec<u8>> {
        self.shared.memory.read_mmio(gpa, len)
    }

    /// Host pointer of `[gpa, gpa+len)`; `None` unless the range is inside guest RAM.
    pub fn gpa_to_ptr(&self, gpa: u64, len: usize) -> Option<NonNull<u8>> {
        self.shared.memory.ram_ptr(gpa, len)
    }

    /// Queues a message from the host to `vp`'s `sint` (origin 0) and delivers it into the SIMP
    /// slot if it is free and the SynIC, SIMP and SINT are enabled; otherwise it stays queued
    /// (setting the slot's pending flag if the slot is occupied) until EOM, an APIC EOI or the
    /// enabling register write. A delivery raises the SINT's vector unless masked or polling.
    pub fn deliver_message(
        &self,
        vp: u32,
        sint: u8,
        message_type: u32,
        payload: &[u8],
    ) -> Result<(), MockError> {
        self.deliver_message_from(vp, sint, message_type, 0, payload)
    }

    /// [`Self::deliver_message`] with an explicit origin (slot bytes 8..16).
    pub fn deliver_message_from(
        &self,
        vp: u32,
        sint: u8,
        message_type: u32,
        origin: u64,
        payload: &[u8],
    ) -> Result<(), MockError> {
        let v = self.vp_index(vp)?;
        if sint >= 16 {
            return Err(MockError::InvalidSint(sint));
        }
        if message_type == 0 {
            return Err(MockError::InvalidMessageType(message_type));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(MockError::PayloadTooLarge(payload.len()));
        }
        let msg = QueuedMessage {
            message_type,
            origin,
            payload: payload.to_vec(),
        };
        self.state()
            .queue_message(&self.shared.memory, v, usize::from(sint), msg);
        Ok(())
    }

    /// Atomically sets event flag `flag` in `vp`'s SIEFP slot `sint` and raises the SINT's
    /// vector (unless masked or polling).
    pub fn set_event_flag(&self, vp: u32, sint: u8, flag: u32) -> Result<(), MockError> {
        let v = self.vp_index(vp)?;
        if sint >= 16 {
            return Err(MockError::InvalidSint(sint));
        }
        if flag >= 2048 {
            return Err(MockError::InvalidEventFlag(flag));
        }
        let mut state = self.state();
        let vs = &mut state.vps[v];
        match vs
            .synic
            .set_flag(&self.shared.memory, usize::from(sint), flag)
        {
            None => Err(MockError::EventPageDisabled),
            Some(vector) => {
                vs.interrupts.extend(vector);
                Ok(())
            }
        }
    }

    /// Number of messages queued (not yet in the slot) for `vp`/`sint`.
    pub fn queued_messages(&self, vp: u32, sint: u8) -> usize {
        let state = self.state();
        state
            .vps
            .get(vp as usize)
            .and_then(|v| v.synic.queues.get(usize::from(sint)))
            .map_or(0, |q| q.len())
    }

    /// Vectors raised on `vp` since the last call (SINT, direct-timer and IPI interrupts).
    pub fn take_interrupts(&self, vp: u32) -> Vec<u8> {
        let mut state = self.state();
        state
            .vps
            .get_mut(vp as usize)
            .map(|v| std::mem::take(&mut v.interrupts))
            .unwrap_or_default()
    }

    /// The guest's APIC EOI on `vp`: rescans the message queues of SINTs without AutoEOI.
    pub fn apic_eoi(&self, vp: u32) {
        let mut state = self.state();
        if (vp as usize) >= state.vps.len() {
            return;
        }
        for sint in 0..16 {
            if state.vps[vp as usize].synic.sints[sint] & synic::SINT_AUTO_EOI == 0 {
                state.scan(&self.shared.memory, vp as usize, sint);
            }
        }
    }

    /// Makes rep hypercalls stop after at most `limit` reps per call and return success with
    /// the reps completed so far, as Hyper-V does when a call exceeds its time budget; `None`
    /// completes every rep.
    pub fn limit_reps_per_call(&self, limit: Option<u16>) {
        self.state().max_reps_per_call = limit;
    }

    /// How many times any VP read TIME_REF_COUNT.
    pub fn time_ref_count_reads(&self) -> u64 {
        self.state().clock.counter_reads
    }

    /// How many times VP `vp` wrote EOM.
    pub fn eom_count(&self, vp: u32) -> u64 {
        self.state().vps.get(vp as usize).map_or(0, |v| v.eom_count)
    }

    /// Advances the virtual clock by `ticks_100ns`, firing due synthetic timers in order.
    pub fn advance_time(&self, ticks_100ns: u64) {
        let mut state = self.state();
        let limit = state.clock.now.saturating_add(ticks_100ns);
        state.run_timers(&self.shared.memory, limit);
    }

    /// The current reference time (100 ns units since partition start).
    pub fn reference_time(&self) -> u64 {
        self.state().clock.now
    }

    /// The current TSC value.
    pub fn tsc(&self) -> u64 {
        self.state().clock.tsc()
    }

    /// Creates a message port: `connection_id` becomes valid for HvCallPostMessage with at
    /// most `capacity` messages not yet taken by [`Self::take_posted_messages`].
    pub fn connect_message_port(&self, connection_id: u32, capacity: usize) {
        self.state().message_ports.insert(
            connection_id,
            state::MessagePort {
                capacity,
                queued: 0,
            },
        );
    }

    /// Creates an event port: `connection_id` becomes valid for HvCallSignalEvent.
    pub fn connect_event_port(&self, connection_id: u32) {
        self.state().event_ports.insert(connection_id);
    }

    /// Messages the guest posted, in order; frees the ports' capacity.
    pub fn take_posted_messages(&self) -> Vec<PostedMessage> {
        let mut state = self.state();
        if state.posted.is_empty() {
            return Vec::new();
        }
        for port in state.message_ports.values_mut() {
            port.queued = 0;
        }
        std::mem::take(&mut state.posted)
    }

    /// A counter that moves after every PostMessage and SignalEvent hypercall: while it
    /// stands still, [`Self::take_posted_messages`] and [`Self::take_signaled_events`] have
    /// nothing new. A poller reads it, then takes; a call counted after the read is seen at
    /// the next look.
    pub fn guest_activity(&self) -> u64 {
        self.shared.activity.load(Ordering::Acquire)
    }

    /// Events the guest signalled: (connection id, flag number), in order.
    pub fn take_signaled_events(&self) -> Vec<(u32, u16)> {
        std::mem::take(&mut self.state().signaled)
    }

    /// [`Self::take_signaled_events`] into `out` (cleared first), swapping buffers so that a
    /// caller that polls keeps reusing two allocations.
    pub fn take_signaled_events_into(&self, out: &mut Vec<(u32, u16)>) {
        out.clear();
        let mut state = self.state();
        if !state.signaled.is_empty() {
            std::mem::swap(&mut state.signaled, out);
        }
    }

    /// Makes the next `n` otherwise valid PostMessage calls fail with `status`.
    pub fn fail_next_post_messages(&self, n: usize, status: u16) {
        self.state().fail_posts = (n, status);
    }

    /// Marks the reference TSC page valid or invalid (sequence 0) and republishes it.
    pub fn set_tsc_page_valid(&self, valid: bool) {
        let mut state = self.state();
        state.clock.page_valid = valid;
        state.clock.publish(&self.shared.memory);
    }

    /// The next `read_tsc()` moves the TSC (as a migration to another host would) and rewrites
    /// the TSC page with the matching offset and a new sequence before returning, so a guest
    /// that does not re-check the sequence computes a time that is far off.
    pub fn update_tsc_page_during_next_tsc_read(&self) {
        self.state().clock.update_during_next_read = true;
    }

    /// The last crash the guest reported through CRASH_CTL.
    pub fn crash_report(&self) -> Option<CrashReport> {
        self.state().crash_report.clone()
    }

    /// Every successful TLB flush hypercall, decoded.
    pub fn tlb_flushes(&self) -> Vec<TlbFlush> {
        self.state().tlb_flushes.clone()
    }

    /// Every successful HvCallSendSyntheticClusterIpi: (vector, processor mask).
    pub fn ipis(&self) -> Vec<(u8, u64)> {
        self.state().ipis.clone()
    }

    /// Every hypercall that got past the hypercall page: (call code, status).
    pub fn hypercall_log(&self) -> Vec<(u16, u16)> {
        self.state().hypercall_log.clone()
    }

    /// Every rejected guest action with its reason (faults and error statuses).
    pub fn protocol_errors(&self) -> Vec<String> {
        self.state().protocol_errors.clone()
    }

    /// How many writes of `register` by VP `vp` the mock accepted (a write that faults is not
    /// counted). Partition-wide registers such as GUEST_OS_ID count on the VP that wrote them.
    pub fn register_writes(&self, vp: u32, register: winhv::SyntheticRegister) -> u64 {
        self.state()
            .register_writes
            .get(&(vp as usize, register))
            .copied()
            .unwrap_or(0)
    }
}
