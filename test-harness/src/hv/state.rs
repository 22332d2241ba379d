//! The mock's mutable state (everything behind the one mutex) and the operations shared by
//! the register, hypercall and host-control paths.

use std::collections::{BTreeMap, BTreeSet};

use super::clock::Clock;
use super::config::MockConfig;
use super::hal::PageAllocator;
use super::memory::{GuestMemory, PAGE_SIZE};
use super::presets::{HostPreset, Identity};
use super::synic::{QueuedMessage, Synic, enabled_page};
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
}

/// A message port created by the host for HvCallPostMessage.
#[derive(Debug)]
pub(crate) struct MessagePort {
    pub capacity: usize,
    pub queued: usize,
}

/// The hypercall page overlay: where it is and the RAM it covers.
#[derive(Debug)]
pub(crate) struct HypercallOverlay {
    pub gpa: u64,
    pub saved: Vec<u8>,
}

/// Everything mutable.
pub(crate) struct State {
    pub preset: HostPreset,
    pub id: Identity,
    pub tsc_frequency: u64,
    pub apic_frequency: u64,
    pub guest_os_id: u64,
    pub hypercall_msr: u64,
    pub hypercall_overlay: Option<HypercallOverlay>,
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
    pub ipis: Vec<(u8, u64)>,
    pub hypercall_log: Vec<(u16, u16)>,
    pub protocol_errors: Vec<String>,
    pub allocator: PageAllocator,
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
            hypercall_overlay: None,
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
            ipis: Vec::new(),
            hypercall_log: Vec::new(),
            protocol_errors: Vec::new(),
            allocator: PageAllocator::new(mem.ram_pages()),
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
        let mut pages: Vec<u64> = self.hypercall_overlay.iter().map(|o| o.gpa).collect();
        for vp in &self.vps {
            pages.extend(enabled_page(vp.synic.simp));
            pages.extend(enabled_page(vp.synic.siefp));
        }
        pages.extend(enabled_page(self.clock.reference_tsc_msr));
        pages
    }

    /// Removes the hypercall page overlay, restoring the RAM under it.
    pub(crate) fn unmap_hypercall_page(&mut self, mem: &GuestMemory) {
        if let Some(o) = self.hypercall_overlay.take() {
            mem.write(o.gpa, &o.saved);
        }
    }

    /// Overlays the hypercall page at `gpa` (inside RAM, checked by the caller).
    pub(crate) fn map_hypercall_page(&mut self, mem: &GuestMemory, gpa: u64) {
        self.unmap_hypercall_page(mem);
        let saved = mem.read(gpa, PAGE_SIZE).unwrap_or_default();
        let mut page = vec![0u8; PAGE_SIZE];
        // vmcall; ret
        page[..4].copy_from_slice(&[0x0F, 0x01, 0xC1, 0xC3]);
        mem.write(gpa, &page);
        self.hypercall_overlay = Some(HypercallOverlay { gpa, saved });
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
    pub(crate) fn run_timers(&mut self, mem: &GuestMemory, limit: u64) {
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
