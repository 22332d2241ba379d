//! The mock's mutable state (everything behind the one mutex) and the operations shared by
//! the register, hypercall and host-control paths.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use winhv::SyntheticRegister;

use super::clock::Clock;
use super::config::MockConfig;
use super::hal::PageAllocator;
use super::host_map::HostMap;
use super::memory::GuestMemory;
use super::overlay::Overlay;
use super::presets::{HostPreset, Identity};
use super::synic::{QueuedMessage, Synic};
use super::timers::{self, Fire, Timer};
use super::types::{CrashReport, PostedMessage, TlbFlush};

/// A fault the guest's instruction raises; turned into a panic after the lock is released.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// General protection fault.
    Gp(String),
    /// Invalid opcode.
    Ud(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gp(m) => write!(f, "#GP: {m}"),
            Self::Ud(m) => write!(f, "#UD: {m}"),
        }
    }
}

/// Per-VP state.
#[derive(Debug, Default)]
pub(crate) struct VpState {
    pub synic: Synic,
    pub timers: [Timer; 4],
    pub interrupts: Vec<u8>,
    pub eom_count: u64,
    pub simp_page: Overlay,
    pub siefp_page: Overlay,
}

/// A message port created by the host for HvCallPostMessage.
#[derive(Debug)]
pub(crate) struct MessagePort {
    pub capacity: usize,
    pub queued: usize,
}

/// Hypercall page contents at offset 0: `vmcall; ret` (Intel).
pub(crate) const HYPERCALL_STUB: [u8; 4] = [0x0F, 0x01, 0xC1, 0xC3];

/// Everything mutable.
pub(crate) struct State {
    pub preset: HostPreset,
    pub id: Identity,
    pub tsc_frequency: u64,
    pub apic_frequency: u64,
    pub guest_os_id: u64,
    pub hypercall_msr: u64,
    pub hypercall_page: Overlay,
    pub tsc_page: Overlay,
    pub clock: Clock,
    pub vps: Vec<VpState>,
    pub message_ports: BTreeMap<u32, MessagePort>,
    pub event_ports: BTreeSet<u32>,
    pub posted: Vec<PostedMessage>,
    pub signaled: Vec<(u32, u16)>,
    pub fail_posts: (usize, u16),
    pub crash_parameters: [u64; 5],
    pub crash_report: Option<CrashReport>,
    pub tlb_flushes: Vec<TlbFlush>,
    /// Rep calls complete at most this many reps per call (the hypervisor's time budget).
    pub max_reps_per_call: Option<u16>,
    pub ipis: Vec<(u8, u64)>,
    pub hypercall_log: Vec<(u16, u16)>,
    pub protocol_errors: Vec<String>,
    /// Accepted register writes per (VP, register): a count, not a log, so a long run of EOM
    /// writes costs nothing.
    pub register_writes: HashMap<(usize, SyntheticRegister), u64>,
    pub allocator: PageAllocator,
    /// Guest pages the host side maps (GPADLs, in-flight requests, connection pages).
    pub host_map: HostMap,
}

impl State {
    pub(crate) fn new(config: &MockConfig, mem: &GuestMemory) -> Self {
        Self {
            preset: config.preset,
            id: config.identity(),
            tsc_frequency: config.tsc_frequency_hz,
            apic_frequency: config.apic_frequency_hz,
            guest_os_id: 0,
            hypercall_msr: 0,
            hypercall_page: Overlay::default(),
            tsc_page: Overlay::default(),
            clock: Clock::new(config.tsc_frequency_hz),
            vps: (0..config.vp_count.max(1))
                .map(|_| VpState::default())
                .collect(),
            message_ports: BTreeMap::new(),
            event_ports: BTreeSet::new(),
            posted: Vec::new(),
            signaled: Vec::new(),
            fail_posts: (0, 0),
            crash_parameters: [0; 5],
            crash_report: None,
            tlb_flushes: Vec::new(),
            max_reps_per_call: None,
            ipis: Vec::new(),
            hypercall_log: Vec::new(),
            protocol_errors: Vec::new(),
            register_writes: HashMap::new(),
            allocator: PageAllocator::new(mem.ram_pages()),
            host_map: HostMap::default(),
        }
    }

    /// Records a rejected guest action.
    pub(crate) fn error(&mut self, reason: impl Into<String>) {
        let reason = reason.into();
        log::debug!("mock hv: {reason}");
        self.protocol_errors.push(reason);
    }

    /// Whether the partition has all privilege bits in `mask`.
    pub(crate) fn has_privilege(&self, mask: u64) -> bool {
        self.id.privileges & mask == mask
    }

    /// Whether CPUID 0x40000003 EDX has all bits in `mask`.
    pub(crate) fn has_feature(&self, mask: u32) -> bool {
        self.id.features & mask == mask
    }

    /// The enabled overlay pages (hypercall, every VP's SIMP/SIEFP, TSC page).
    pub(crate) fn overlay_pages(&self) -> Vec<u64> {
        let mut pages: Vec<u64> = self.hypercall_page.gpa().into_iter().collect();
        pages.extend(self.tsc_page.gpa());
        for vp in &self.vps {
            pages.extend(vp.simp_page.gpa());
            pages.extend(vp.siefp_page.gpa());
        }
        pages
    }

    /// Maps the hypercall page overlay at `gpa` (a RAM page) or unmaps it; each mapping shows
    /// a fresh stub page.
    pub(crate) fn set_hypercall_page(&mut self, mem: &GuestMemory, gpa: Option<u64>) {
        self.hypercall_page.set(mem, None);
        if gpa.is_some() {
            self.hypercall_page = Overlay::with_contents(&HYPERCALL_STUB);
            self.hypercall_page.set(mem, gpa);
        }
    }

    /// Queues a message for `vp`/`sint` and tries to deliver it.
    pub(crate) fn queue_message(
        &mut self,
        mem: &GuestMemory,
        vp: usize,
        sint: usize,
        msg: QueuedMessage,
    ) {
        self.vps[vp].synic.queues[sint].push_back(msg);
        self.scan(mem, vp, sint);
    }

    /// Rescans one SINT's queue and raises its interrupt on delivery.
    pub(crate) fn scan(&mut self, mem: &GuestMemory, vp: usize, sint: usize) {
        let v = &mut self.vps[vp];
        if let Some(vector) = v.synic.scan(mem, sint) {
            v.interrupts.push(vector);
        }
    }

    /// Rescans every SINT of `vp`.
    pub(crate) fn scan_all(&mut self, mem: &GuestMemory, vp: usize) {
        let v = &mut self.vps[vp];
        let vectors = v.synic.scan_all(mem);
        v.interrupts.extend(vectors);
    }

    /// Fires every timer due at or before `limit`, in expiry order, moving the clock to each
    /// expiry; the clock ends at `max(now, limit)`.
    ///
    /// # Panics
    ///
    /// After a million expiries in one call (a periodic timer far shorter than the step): the
    /// test should advance time in smaller steps.
    pub(crate) fn run_timers(&mut self, mem: &GuestMemory, limit: u64) {
        const MAX_FIRINGS: u32 = 1_000_000;
        let mut firings = 0;
        loop {
            let next = self
                .vps
                .iter()
                .enumerate()
                .flat_map(|(v, s)| {
                    s.timers
                        .iter()
                        .enumerate()
                        .filter_map(move |(t, tm)| tm.expiry.map(|e| (e, v, t)))
                })
                .filter(|(e, _, _)| *e <= limit)
                .min();
            let Some((expiry, vp, index)) = next else {
                break;
            };
            firings += 1;
            assert!(
                firings <= MAX_FIRINGS,
                "mock hv: over {MAX_FIRINGS} synthetic timer expiries in one advance_time step"
            );
            self.clock.now = self.clock.now.max(expiry);
            match self.vps[vp].timers[index].fire(expiry) {
                Fire::Interrupt(vector) => self.vps[vp].interrupts.push(vector),
                Fire::Message { sint, expiration } => {
                    let payload = timers::expiry_payload(index as u8, expiration, self.clock.now);
                    let msg = QueuedMessage {
                        message_type: timers::TIMER_EXPIRED_MESSAGE,
                        origin: 0,
                        payload,
                    };
                    self.queue_message(mem, vp, usize::from(sint), msg);
                }
            }
        }
        self.clock.now = self.clock.now.max(limit);
    }
}
