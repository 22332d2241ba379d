//! A scripted hostile VMBus host for the bus and channel targets.
//!
//! [`World`] is the host's side: the messages it queued for the guest, what the guest posted,
//! and — the part that finds memory bugs — which guest pages the host may still map: GPADL
//! pages from the GPADL_HEADER/BODY until the host itself says it let go (GPADL_TORNDOWN, a
//! failed GPADL_CREATED, UNLOAD_RESPONSE), and the monitor pages from INITIATE_CONTACT until a
//! refusal or UNLOAD_RESPONSE. [`TrackingHal`] allocates from the std allocator (GPA =
//! address) and asserts that no page the host may map is ever freed, and that every free
//! matches an allocation. [`Scripted`] is the `Transport`: posts are recorded, checked and
//! answered by a [`Policy`]; host messages come from the queue.
//!
//! The host's answers in [`Policy::Tape`] come from a byte tape (part of the fuzz input):
//! 0 = the correct answer, so an exhausted tape is a well-behaved host.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ptr::NonNull;
use std::rc::Rc;
use vmbus_guest::protocol::{DEVICE_CLASSES, VmbusVersion};
use vmbus_guest::{Hal, HalError, PhysAddr, RawMessage, Transport};
use winhv::{HvError, HvStatus, HypercallError, SynicError};
use zerocopy::IntoBytes;

/// How the host answers the guest's posts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// From the tape (hostile, erratic).
    Tape,
    /// Always the correct success answer (for targets that need an open channel).
    Accept,
}

/// A GPADL the host was told about.
#[derive(Clone, Debug)]
pub struct Gpadl {
    /// Channel it was created for.
    pub relid: u32,
    /// PFNs received so far (header, then bodies).
    pub pfns: Vec<u64>,
    /// Pages the header announced.
    pub pages: usize,
    /// GPADL_CREATED was sent for it.
    pub answered: bool,
}

/// An OPENCHANNEL the host received.
#[derive(Clone, Copy, Debug)]
pub struct Open {
    /// Channel.
    pub relid: u32,
    /// Open id.
    pub open_id: u32,
    /// Ring GPADL handle.
    pub gpadl: u32,
    /// Pages of the outbound (guest→host) ring: the inbound ring starts there.
    pub downstream_offset: u32,
}

/// The host side of the scripted connection.
pub struct World {
    /// Live allocations of the HAL: base address → pages.
    pub allocs: BTreeMap<usize, usize>,
    /// GPADLs the host maps (handle → pages).
    pub gpadls: BTreeMap<u32, Gpadl>,
    /// PFNs of GPADLs of an abandoned connection (the host may map them forever).
    pub orphans: BTreeSet<u64>,
    /// Monitor/interrupt PFNs of every INITIATE_CONTACT the host did not refuse (it answers
    /// each contact as it arrives, or never): it may use them until UNLOAD_RESPONSE.
    pub contacts: Vec<Vec<u64>>,
    /// Guest pages named by GPA-direct requests the host read (transaction id → PFNs): the
    /// host may DMA into them until it completes the request, or stops serving the channel
    /// (its ring GPADL torn down, or UNLOAD_RESPONSE).
    pub dma: BTreeMap<u64, Vec<u64>>,
    /// The host stopped serving channels (a ring GPADL torn down, or UNLOAD_RESPONSE): it
    /// must not start DMA for their requests any more.
    pub stopped_serving: bool,
    /// GPADL handles the guest asked to tear down and the host has not answered.
    pub teardowns: BTreeSet<u32>,
    /// UNLOADs not answered yet.
    pub unloads: u32,
    /// The host made a statement about its mappings that was not an answer to the guest
    /// (an unsolicited refusal, GPADL_TORNDOWN, failed GPADL_CREATED or UNLOAD_RESPONSE).
    /// A guest that believes a lying host may free what the host still maps: that is the
    /// host's fault, so the freed-while-mapped check is off for the rest of the run.
    pub lied: bool,
    /// `host_receive` is answering a guest message (its VERSION_RESPONSE is no lie).
    answering: bool,
    /// Host messages queued for the guest.
    pub inbox: VecDeque<Vec<u8>>,
    /// Every message the guest posted: (connection id, bytes).
    pub posted: Vec<(u32, Vec<u8>)>,
    /// Every OPENCHANNEL.
    pub opens: Vec<Open>,
    /// Message connection ids the host handed out (and 1, the pre-5.0 one).
    pub conn_ids: BTreeSet<u32>,
    /// Answer policy.
    pub policy: Policy,
    /// Decision tape for [`Policy::Tape`].
    pub tape: Vec<u8>,
    tape_pos: usize,
    /// Event flags set for the guest's next `take_event_flags`.
    pub flags: BTreeSet<u32>,
    /// Bit i: the i-th `take_message` fails.
    pub take_errors: u64,
    /// `take_message` calls, and how many returned a message.
    pub takes: usize,
    /// Of which returned a message.
    pub takes_ok: usize,
    /// Of which failed.
    pub take_errs: usize,
    /// Signal-event calls (connection ids).
    pub signals: Vec<u32>,
    /// Bit i: the i-th signal-event call fails (INVALID_CONNECTION_ID).
    pub signal_failures: u64,
    /// Allocation requests failed on purpose (bit i: the i-th allocation fails).
    pub alloc_failures: u64,
    allocs_seen: u32,
    /// Offers the host sends on REQUESTOFFERS in [`Policy::Accept`].
    pub accept_offers: Vec<Vec<u8>>,
    /// Whether GPADL_TEARDOWN is answered in [`Policy::Accept`].
    pub answer_teardown: bool,
    /// The guest's VP index.
    pub vp: u32,
}

impl World {
    /// A host with no guest memory yet.
    pub fn new(policy: Policy, tape: Vec<u8>) -> Rc<RefCell<World>> {
        Rc::new(RefCell::new(World {
            allocs: BTreeMap::new(),
            gpadls: BTreeMap::new(),
            orphans: BTreeSet::new(),
            contacts: Vec::new(),
            dma: BTreeMap::new(),
            stopped_serving: false,
            teardowns: BTreeSet::new(),
            unloads: 0,
            lied: false,
            answering: false,
            inbox: VecDeque::new(),
            posted: Vec::new(),
            opens: Vec::new(),
            conn_ids: [1].into_iter().collect(),
            policy,
            tape,
            tape_pos: 0,
            flags: BTreeSet::new(),
            take_errors: 0,
            takes: 0,
            takes_ok: 0,
            take_errs: 0,
            signals: Vec::new(),
            signal_failures: 0,
            alloc_failures: 0,
            allocs_seen: 0,
            accept_offers: Vec::new(),
            answer_teardown: true,
            vp: 0,
        }))
    }

    /// Next tape byte (0 = the correct answer once the tape is used up).
    pub fn tape(&mut self) -> u8 {
        let b = self.tape.get(self.tape_pos).copied().unwrap_or(0);
        self.tape_pos += 1;
        b
    }

    fn decide(&mut self) -> u8 {
        match self.policy {
            Policy::Accept => 0,
            Policy::Tape => self.tape() % 4,
        }
    }

    /// Whether page `pfn` may be mapped by the host.
    pub fn mapped(&self, pfn: u64) -> bool {
        self.contacts.iter().any(|c| c.contains(&pfn))
            || self.orphans.contains(&pfn)
            || self.dma.values().any(|p| p.contains(&pfn))
            || self.gpadls.values().any(|g| g.pfns.contains(&pfn))
    }

    /// Whether `[addr, addr + len)` lies in one live allocation.
    pub fn live(&self, addr: u64, len: u64) -> bool {
        self.allocs
            .range(..=addr as usize)
            .next_back()
            .is_some_and(|(&base, &pages)| {
                addr + len <= base as u64 + (pages * 4096) as u64 && addr >= base as u64
            })
    }

    /// Queues a host message for the guest and updates what the host maps accordingly: only
    /// answers to the guest's own requests release memory; anything else is a lie.
    pub fn send(&mut self, msg: Vec<u8>) {
        self.observe(&msg);
        crate::trace!(
            "  host -> {} {:02x?}",
            le32(&msg, 0),
            &msg[8.min(msg.len())..msg.len().min(24)]
        );
        self.inbox.push_back(msg);
    }

    /// Updates the host model for a message the host hands the guest.
    pub fn observe(&mut self, msg: &[u8]) {
        if msg.len() < 8 {
            return;
        }
        match le32(msg, 0) {
            15 if msg.len() >= 16 => {
                if msg[8] != 0 {
                    // Whatever id an accepting answer carries, the guest may use.
                    self.conn_ids.insert(le32(msg, 12));
                }
                // The host answers each INITIATE_CONTACT when it arrives (`host_receive`):
                // any other VERSION_RESPONSE is unsolicited.
                if !self.answering {
                    self.lied = true;
                }
            }
            10 if msg.len() >= 20 => {
                let (h, status) = (le32(msg, 12), le32(msg, 16));
                match self.gpadls.get_mut(&h) {
                    Some(g) if !g.answered => {
                        g.answered = true;
                        if status != 0 {
                            self.gpadls.remove(&h);
                        }
                    }
                    _ => self.lied |= status != 0,
                }
            }
            12 if msg.len() >= 12 => {
                let h = le32(msg, 8);
                if self.teardowns.remove(&h) {
                    self.gpadls.remove(&h);
                    if self.opens.iter().any(|o| o.gpadl == h) {
                        // The channel's rings are gone: no request of it is served any more.
                        self.dma.clear();
                        self.stopped_serving = true;
                    }
                } else {
                    self.lied = true;
                }
            }
            17 => {
                if self.unloads > 0 {
                    self.unloads = 0;
                    self.gpadls.clear();
                    self.orphans.clear();
                    self.contacts.clear();
                    self.teardowns.clear();
                    self.dma.clear();
                    self.stopped_serving = true;
                } else {
                    self.lied = true;
                }
            }
            _ => {}
        }
    }

    /// The guest abandoned the connection: whatever the host maps stays mapped, but GPADL
    /// handles start afresh on the next connection.
    ///
    /// Host messages of the abandoned connection still queued (here or in the bus's inbox)
    /// reach the next connection, and VMBus has no way to tell them apart: a stale
    /// VERSION_RESPONSE is taken as the answer to the new INITIATE_CONTACT (a stale refusal
    /// makes the guest believe the host holds no monitor page). That ambiguity is the
    /// protocol's, so such runs count as a lying host.
    pub fn abandon(&mut self, bus_inbox_maybe_full: bool) {
        if !self.inbox.is_empty() || bus_inbox_maybe_full {
            self.lied = true;
        }
        let pfns: Vec<u64> = self.gpadls.values().flat_map(|g| g.pfns.clone()).collect();
        self.orphans.extend(pfns);
        self.gpadls.clear();
    }

    /// A random-ish offer from the tape.
    pub fn tape_offer(&mut self) -> Vec<u8> {
        // Zeros (an exhausted tape) give a valid primary offer on relid 1.
        let relid = match self.tape() % 16 {
            15 => self.tape() as u32 * 16,
            14 => 0,
            _ => 1 + self.tape() as u32 % 8,
        };
        let class = self.tape() as usize % (DEVICE_CLASSES.len() + 1);
        let instance = self.tape() % 4;
        let sub = if self.tape().is_multiple_of(4) {
            self.tape() as u16 % 3
        } else {
            0
        };
        let monitor = self.tape();
        let allocated = self.tape() % 2;
        let flags = if self.tape().is_multiple_of(8) {
            0x2000
        } else {
            0
        };
        let conn = self.tape() as u32;
        offer(relid, class, instance, sub, monitor, allocated, flags, conn)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Everything the guest leaked goes back to the allocator once the bus is gone, so long
        // fuzzing runs do not grow.
        for (&base, &pages) in &self.allocs {
            // SAFETY: allocated by TrackingHal with this layout; the bus and every object that
            // named the memory are gone (the World outlives them: they hold its Rc).
            unsafe { dealloc(base as *mut u8, layout(pages)) };
        }
    }
}

fn layout(pages: usize) -> Layout {
    Layout::from_size_align(pages * 4096, 4096).expect("page layout")
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()))
}

fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// Builds a host message: type word, padding, then `body`.
pub fn msg(ty: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + body.len());
    m.extend_from_slice(&ty.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(body);
    m
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// VERSION_RESPONSE (16 bytes, or 20 with features).
pub fn version_response(supported: u8, state: u8, id: u32, features: Option<u32>) -> Vec<u8> {
    let mut b = vec![supported, state, 0, 0];
    b.extend_from_slice(&id.to_le_bytes());
    if let Some(f) = features {
        b.extend_from_slice(&f.to_le_bytes());
    }
    msg(15, &b)
}

/// OFFERCHANNEL (196 bytes). `class` indexes `DEVICE_CLASSES` (past the end: an unknown GUID).
#[allow(clippy::too_many_arguments)]
pub fn offer(
    relid: u32,
    class: usize,
    instance: u8,
    subchannel: u16,
    monitor_id: u8,
    monitor_allocated: u8,
    flags: u16,
    connection_id: u32,
) -> Vec<u8> {
    let mut b = vec![0u8; 188];
    match DEVICE_CLASSES.get(class) {
        Some((g, _, _)) => b[0..16].copy_from_slice(g.as_bytes()),
        None => b[0..16].copy_from_slice(&[0x5a; 16]),
    }
    b[16] = instance;
    b[17] = 0xC0;
    b[48..50].copy_from_slice(&flags.to_le_bytes());
    b[172..174].copy_from_slice(&subchannel.to_le_bytes());
    b[176..180].copy_from_slice(&relid.to_le_bytes());
    b[180] = monitor_id;
    b[181] = monitor_allocated;
    b[182..184].copy_from_slice(&1u16.to_le_bytes());
    b[184..188].copy_from_slice(&connection_id.to_le_bytes());
    msg(1, &b)
}

/// RESCIND_CHANNELOFFER.
pub fn rescind(relid: u32) -> Vec<u8> {
    msg(2, &relid.to_le_bytes())
}
/// ALLOFFERS_DELIVERED.
pub fn all_offers() -> Vec<u8> {
    msg(4, &[])
}
/// OPENCHANNEL_RESULT.
pub fn open_result(relid: u32, open_id: u32, status: u32) -> Vec<u8> {
    msg(6, &words(&[relid, open_id, status]))
}
/// GPADL_CREATED.
pub fn gpadl_created(relid: u32, handle: u32, status: u32) -> Vec<u8> {
    msg(10, &words(&[relid, handle, status]))
}
/// GPADL_TORNDOWN.
pub fn gpadl_torndown(handle: u32) -> Vec<u8> {
    msg(12, &handle.to_le_bytes())
}
/// UNLOAD_RESPONSE.
pub fn unload_response() -> Vec<u8> {
    msg(17, &[])
}

/// Memory from the std allocator, identity-mapped (GPA = address), checked against the host
/// model on every free.
#[derive(Clone)]
pub struct TrackingHal(pub Rc<RefCell<World>>);

// SAFETY: zeroed, 4 KiB-aligned, contiguous allocations used by nothing else until freed;
// identity translation, which is the truth for this "host" (it reaches guest memory by the
// same addresses); no MMIO.
unsafe impl Hal for TrackingHal {
    fn alloc_pages(&self, pages: usize) -> Result<NonNull<u8>, HalError> {
        let mut w = self.0.borrow_mut();
        let i = w.allocs_seen;
        w.allocs_seen += 1;
        if i < 64 && w.alloc_failures & (1 << i) != 0 {
            return Err(HalError::OutOfMemory);
        }
        assert!(
            pages > 0 && pages < 1 << 20,
            "absurd allocation of {pages} pages"
        );
        // SAFETY: non-zero size.
        let p =
            NonNull::new(unsafe { alloc_zeroed(layout(pages)) }).ok_or(HalError::OutOfMemory)?;
        w.allocs.insert(p.as_ptr() as usize, pages);
        crate::trace!(
            "  alloc {pages} pages at pfn {:#x}",
            p.as_ptr() as usize / 4096
        );
        Ok(p)
    }

    unsafe fn free_pages(&self, vaddr: NonNull<u8>, pages: usize) {
        let mut w = self.0.borrow_mut();
        let base = vaddr.as_ptr() as usize;
        assert_eq!(
            w.allocs.get(&base),
            Some(&pages),
            "free of {pages} pages at {base:#x} matches no allocation"
        );
        for i in 0..pages {
            let pfn = (base / 4096 + i) as u64;
            assert!(
                w.lied || !w.mapped(pfn),
                "page {pfn:#x} freed while the host may still map it"
            );
        }
        w.allocs.remove(&base);
        crate::trace!("  free {pages} pages at pfn {:#x}", base / 4096);
        // SAFETY: allocated above with this layout; the guest gave it back.
        unsafe { dealloc(vaddr.as_ptr(), layout(pages)) };
    }

    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Result<PhysAddr, HalError> {
        let a = vaddr.as_ptr() as u64;
        if self.0.borrow().live(a, 1) {
            Ok(a)
        } else {
            Err(HalError::NotTranslatable)
        }
    }

    unsafe fn map_mmio(&self, _gpa: PhysAddr, _size: usize) -> Result<NonNull<u8>, HalError> {
        Err(HalError::NotTranslatable)
    }
}

/// The scripted transport.
#[derive(Clone)]
pub struct Scripted(pub Rc<RefCell<World>>);

const POST_FAILURES: [HvStatus; 4] = [
    HvStatus::INSUFFICIENT_BUFFERS,
    HvStatus::INVALID_CONNECTION_ID,
    HvStatus::INVALID_PARAMETER,
    HvStatus::NO_RESOURCES,
];

impl Transport for Scripted {
    fn post_message(&self, connection_id: u32, payload: &[u8]) -> Result<(), HypercallError> {
        let mut w = self.0.borrow_mut();
        assert!(
            (8..=240).contains(&payload.len()),
            "guest posted a {}-byte message",
            payload.len()
        );
        if w.policy == Policy::Tape {
            let b = w.tape();
            if b >= 0xF0 {
                return Err(HypercallError::Hv(HvError(POST_FAILURES[b as usize & 3])));
            }
        }
        w.posted.push((connection_id, payload.to_vec()));
        let ty = le32(payload, 0);
        crate::trace!(
            "  guest posts type {ty} on {connection_id:#x}: {:02x?}",
            &payload[8..payload.len().min(32)]
        );
        if ty == 14 {
            let version = le32(payload, 8);
            let expect = if version >= VmbusVersion::V5_0.0 {
                4
            } else {
                1
            };
            assert_eq!(
                connection_id, expect,
                "INITIATE_CONTACT on the wrong connection"
            );
        } else {
            assert!(
                w.conn_ids.contains(&connection_id),
                "type {ty} posted on connection {connection_id:#x}, never handed out"
            );
        }
        host_receive(&mut w, ty, payload);
        Ok(())
    }

    fn signal_event(&self, connection_id: u32) -> Result<(), HvError> {
        let mut w = self.0.borrow_mut();
        let i = w.signals.len();
        w.signals.push(connection_id);
        if i < 64 && w.signal_failures & (1 << i) != 0 {
            return Err(HvError(HvStatus::INVALID_CONNECTION_ID));
        }
        Ok(())
    }

    fn take_message(&self) -> Result<Option<RawMessage>, SynicError> {
        let mut w = self.0.borrow_mut();
        let i = w.takes;
        w.takes += 1;
        if i < 64 && w.take_errors & (1 << i) != 0 {
            w.take_errs += 1;
            return Err(SynicError::OversizedMessage {
                sint: 2,
                payload_size: 241,
            });
        }
        let m = w.inbox.pop_front().map(|m| RawMessage::new(&m));
        if m.is_some() {
            w.takes_ok += 1;
        }
        Ok(m)
    }

    fn take_event_flags(&self, limit: u32, on_flag: &mut dyn FnMut(u32)) {
        assert!(
            limit <= 2048,
            "event flag limit {limit} beyond the SIEFP slot"
        );
        let taken: Vec<u32> = {
            let mut w = self.0.borrow_mut();
            let t: Vec<u32> = w.flags.range(..limit).copied().collect();
            for f in &t {
                w.flags.remove(f);
            }
            t
        };
        for f in taken {
            on_flag(f);
        }
    }

    fn vp_index(&self) -> u32 {
        self.0.borrow().vp
    }
}

/// The host receives a guest message: bookkeeping, checks, and the policy's answer.
fn host_receive(w: &mut World, ty: u32, p: &[u8]) {
    match ty {
        // INITIATE_CONTACT
        14 => {
            let version = le32(p, 8);
            let mut gpas = vec![le64(p, 24), le64(p, 32)];
            if version < VmbusVersion::V2_4.0 {
                gpas.push(le64(p, 16));
            }
            for g in &gpas {
                assert!(
                    g % 4096 == 0 && w.live(*g, 4096),
                    "monitor page {g:#x} not guest memory"
                );
            }
            let pfns: Vec<u64> = gpas.iter().map(|g| g / 4096).collect();
            let decision = w.decide();
            if decision != 2 {
                w.contacts.push(pfns);
            }
            w.answering = true;
            match decision {
                0 => {
                    let id = if version >= VmbusVersion::V5_0.0 {
                        match w.policy {
                            Policy::Accept => 0x2000 + version % 7,
                            Policy::Tape => 1 + w.tape() as u32 % 0x40,
                        }
                    } else {
                        version
                    };
                    let features = (version >= VmbusVersion::V6_0.0).then(|| match w.policy {
                        Policy::Accept => 0x1F,
                        Policy::Tape => w.tape() as u32,
                    });
                    w.send(version_response(1, 0, id, features));
                }
                1 => {}
                2 => w.send(version_response(0, 0, 0, None)),
                _ => {
                    let (state, id) = match w.tape() % 3 {
                        0 => (1 + w.tape() % 3, 1),
                        1 => (0, 0),
                        _ => (0, 0x0100_0000 | w.tape() as u32),
                    };
                    w.send(version_response(1, state, id, None));
                }
            }
            w.answering = false;
        }
        // REQUESTOFFERS
        3 => match w.decide() {
            0 => {
                if w.policy == Policy::Accept {
                    for o in w.accept_offers.clone() {
                        w.send(o);
                    }
                } else {
                    for _ in 0..1 + w.tape() % 4 {
                        let o = w.tape_offer();
                        w.send(o);
                    }
                }
                w.send(all_offers());
            }
            1 => {}
            2 => w.send(all_offers()),
            _ => {
                let o = w.tape_offer();
                w.send(o.clone());
                w.send(o);
                w.send(all_offers());
                w.send(all_offers());
            }
        },
        // GPADL_HEADER
        8 => {
            let relid = le32(p, 8);
            let handle = le32(p, 12);
            let count = le32(p, 20) as usize;
            assert_eq!(le32(p, 24), 0, "GPADL range offset");
            assert!(
                count.is_multiple_of(4096) && count > 0,
                "GPADL byte count {count}"
            );
            assert!(
                !w.gpadls.contains_key(&handle),
                "GPADL handle {handle:#x} reused while the host maps it"
            );
            let pages = count / 4096;
            let pfns: Vec<u64> = p[28..].chunks_exact(8).map(|c| le64(c, 0)).collect();
            assert!(pfns.len() <= pages);
            let g = Gpadl {
                relid,
                pfns,
                pages,
                answered: false,
            };
            w.gpadls.insert(handle, g);
            gpadl_progress(w, handle);
        }
        // GPADL_BODY
        9 => {
            let handle = le32(p, 12);
            let more: Vec<u64> = p[16..].chunks_exact(8).map(|c| le64(c, 0)).collect();
            let g = w
                .gpadls
                .get_mut(&handle)
                .unwrap_or_else(|| panic!("GPADL_BODY for unknown handle {handle:#x}"));
            assert!(g.pfns.len() < g.pages, "GPADL_BODY after the last page");
            g.pfns.extend(more);
            assert!(
                g.pfns.len() <= g.pages,
                "GPADL_BODY beyond the announced pages"
            );
            gpadl_progress(w, handle);
        }
        // GPADL_TEARDOWN
        11 => {
            let handle = le32(p, 12);
            w.teardowns.insert(handle);
            if w.policy == Policy::Accept && !w.answer_teardown {
                return;
            }
            match w.decide() {
                0 => w.send(gpadl_torndown(handle)),
                1 => {}
                2 => w.send(gpadl_torndown(handle.wrapping_add(1))),
                _ => {
                    w.send(gpadl_torndown(handle));
                    w.send(gpadl_torndown(handle));
                }
            }
        }
        // OPENCHANNEL
        5 => {
            let o = Open {
                relid: le32(p, 8),
                open_id: le32(p, 12),
                gpadl: le32(p, 16),
                downstream_offset: le32(p, 24),
            };
            let g = w.gpadls.get(&o.gpadl);
            assert!(
                g.is_none_or(|g| g.relid == o.relid),
                "OPENCHANNEL names GPADL {:#x} of another channel",
                o.gpadl
            );
            w.opens.push(o);
            match w.decide() {
                0 => w.send(open_result(o.relid, o.open_id, 0)),
                1 => {}
                2 => {
                    let s = 1 | w.tape() as u32;
                    w.send(open_result(o.relid, o.open_id, s));
                }
                _ => w.send(open_result(o.relid, o.open_id.wrapping_add(1), 0)),
            }
        }
        // UNLOAD
        16 => {
            w.unloads += 1;
            match w.decide() {
                0 => w.send(unload_response()),
                1 => {}
                _ => {
                    w.send(unload_response());
                    w.send(unload_response());
                }
            }
        }
        // CLOSECHANNEL: no answer; a hostile host may rescind.
        7 => {
            if w.decide() == 2 {
                w.send(rescind(le32(p, 8)));
            }
        }
        // RELID_RELEASED, MODIFYCHANNEL, ...: no answer.
        13 | 22 => {}
        other => panic!("guest posted message type {other}"),
    }
}

/// Answers a GPADL once all its pages arrived; checks they are guest memory.
fn gpadl_progress(w: &mut World, handle: u32) {
    let g = w.gpadls[&handle].clone();
    if g.pfns.len() < g.pages {
        return;
    }
    for pfn in &g.pfns {
        assert!(
            w.live(pfn * 4096, 4096),
            "GPADL page {pfn:#x} not guest memory"
        );
    }
    match w.decide() {
        0 => w.send(gpadl_created(g.relid, handle, 0)),
        1 => {}
        2 => {
            let s = 0xC000_0001 | w.tape() as u32;
            w.send(gpadl_created(g.relid, handle, s));
        }
        _ => {
            if w.tape().is_multiple_of(2) {
                w.send(gpadl_created(g.relid + 1, handle, 0));
            } else {
                w.send(gpadl_created(g.relid, handle ^ 1, 0));
            }
        }
    }
}
