//! The host side of device channels, for the driver targets (storvsc, ic-services, netvsc,
//! synthvid, synthhid): a connected bus on the scripted host of [`crate::host`] (which
//! answers every channel-management message correctly), the host ends of every ring the
//! guest opens, host DMA into the pages GPA-direct packets name, and a [`Wait`] that runs the
//! device host one step each time the guest waits.
//!
//! Memory the host touches is guest memory only while the host model says the host maps it:
//! a ring while its GPADL is in [`World::gpadls`] (the host answered no teardown of it), a
//! GPA-direct page while it is live in the HAL. Every access re-checks that after the guest
//! ran ([`Devices::sync`]); a guest that frees such memory early trips the HAL's check first.

use crate::host::{self, Policy, Scripted, TrackingHal, World};
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use vmbus_guest::protocol::{CANDIDATE_VERSIONS, DEVICE_CLASSES, DeviceClass, FeatureFlags};
use vmbus_guest::ring::{
    GpaRange, OutgoingPacket, PacketKind, RawRingMemory, RingReader, RingWriter, TransferPageRange,
    WriteError,
};
use vmbus_guest::wait::BoundedWait;
use vmbus_guest::{ConnectionConfig, Hal, HalError, PhysAddr, TimedOut, Vmbus, Wait};

/// The bus every driver target runs on.
pub type Bus = Vmbus<Scripted, DevHal>;

/// Guest-physical address of the MMIO window [`DevHal`] maps (above any heap address).
pub const MMIO_GPA: u64 = 0x7f00_0000_0000;

/// An MMIO window backed by host memory (the synthetic video VRAM).
struct Mmio {
    ptr: NonNull<u8>,
    len: usize,
}

impl Drop for Mmio {
    fn drop(&mut self) {
        // SAFETY: allocated in `DevHal::with_mmio` with this layout; the bus (and the driver
        // holding the mapping) is gone once the last `DevHal` clone drops this.
        unsafe { dealloc(self.ptr.as_ptr(), mmio_layout(self.len)) };
    }
}

fn mmio_layout(len: usize) -> Layout {
    Layout::from_size_align(len, 4096).expect("MMIO layout")
}

/// [`TrackingHal`] plus an MMIO window at [`MMIO_GPA`].
#[derive(Clone)]
pub struct DevHal {
    /// The page allocator checked against the host model.
    pub pages: TrackingHal,
    mmio: Option<Rc<Mmio>>,
}

impl DevHal {
    /// No MMIO.
    pub fn new(world: &Rc<RefCell<World>>) -> Self {
        Self {
            pages: TrackingHal(world.clone()),
            mmio: None,
        }
    }

    /// With `len` bytes of MMIO at [`MMIO_GPA`].
    pub fn with_mmio(world: &Rc<RefCell<World>>, len: usize) -> Self {
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(mmio_layout(len)) }).expect("MMIO memory");
        Self {
            pages: TrackingHal(world.clone()),
            mmio: Some(Rc::new(Mmio { ptr, len })),
        }
    }

    /// `len` MMIO bytes at `offset` (the host's view of the VRAM); empty outside the window.
    pub fn mmio_read(&self, offset: usize, len: usize) -> Vec<u8> {
        match &self.mmio {
            Some(m) if offset.checked_add(len).is_some_and(|e| e <= m.len) => {
                let mut v = vec![0u8; len];
                // SAFETY: inside the window's allocation, alive while `self` holds the Rc; the
                // guest writes it only with volatile stores on this thread.
                unsafe {
                    std::ptr::copy_nonoverlapping(m.ptr.as_ptr().add(offset), v.as_mut_ptr(), len)
                };
                v
            }
            _ => Vec::new(),
        }
    }
}

// SAFETY: page allocation is `TrackingHal`'s (zeroed, aligned, exclusive until freed);
// `map_mmio` hands out the window's own memory, inside its bounds, only for the GPA range it
// stands for.
unsafe impl Hal for DevHal {
    fn alloc_pages(&self, pages: usize) -> Result<NonNull<u8>, HalError> {
        self.pages.alloc_pages(pages)
    }

    unsafe fn free_pages(&self, vaddr: NonNull<u8>, pages: usize) {
        // SAFETY: the caller's contract is TrackingHal's.
        unsafe { self.pages.free_pages(vaddr, pages) }
    }

    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Result<PhysAddr, HalError> {
        self.pages.virt_to_phys(vaddr)
    }

    unsafe fn map_mmio(&self, gpa: PhysAddr, size: usize) -> Result<NonNull<u8>, HalError> {
        let m = self.mmio.as_ref().ok_or(HalError::NotTranslatable)?;
        let off = gpa.checked_sub(MMIO_GPA).ok_or(HalError::InvalidRequest)? as usize;
        if off.checked_add(size).is_none_or(|end| end > m.len) {
            return Err(HalError::InvalidRequest);
        }
        // SAFETY: `off + size <= len`: inside the window's allocation.
        Ok(unsafe { m.ptr.add(off) })
    }
}

/// An offer message of `class` (patched: MMIO megabytes at message offset 58).
pub fn offer(
    class: DeviceClass,
    relid: u32,
    instance: u8,
    subchannel: u16,
    mmio_mb: u16,
) -> Vec<u8> {
    let index = DEVICE_CLASSES
        .iter()
        .position(|(_, c, _)| *c == class)
        .expect("known class");
    let mut m = host::offer(relid, index, instance, subchannel, 0, 0, 0, 0x10 + relid);
    m[58..60].copy_from_slice(&mmio_mb.to_le_bytes());
    m
}

/// A scripted host in [`Policy::Accept`] offering `offers`; teardowns answered if
/// `answer_teardown`.
pub fn world(offers: Vec<Vec<u8>>, answer_teardown: bool) -> Rc<RefCell<World>> {
    let w = World::new(Policy::Accept, Vec::new());
    {
        let mut world = w.borrow_mut();
        world.accept_offers = offers;
        world.answer_teardown = answer_teardown;
    }
    w
}

/// A bus connected to `world` at the version `CANDIDATE_VERSIONS[version_index..]` yields.
pub fn connect(world: &Rc<RefCell<World>>, hal: DevHal, version_index: usize) -> Bus {
    let config = ConnectionConfig {
        versions: &CANDIDATE_VERSIONS[version_index.min(CANDIDATE_VERSIONS.len() - 1)..],
        features: FeatureFlags::empty(),
        target_vp: None,
        backoff: |_| {},
    };
    let bus = Vmbus::new(Scripted(world.clone()), hal, config);
    bus.connect(&mut BoundedWait::new(8, || {}))
        .expect("connect to a correct host");
    bus
}

/// A packet the guest wrote, copied out of its ring by the host.
#[derive(Clone, Debug)]
pub struct GuestPacket {
    /// Channel.
    pub relid: u32,
    /// VMBus packet type.
    pub packet_type: u16,
    /// Transaction id.
    pub tid: u64,
    /// The guest asked for a completion.
    pub completion_requested: bool,
    /// Payload (padding included).
    pub payload: Vec<u8>,
    /// GPA-direct ranges: (byte offset, byte count, PFNs). Empty when not `trusted`.
    pub ranges: Vec<(u32, u32, Vec<u64>)>,
    /// The host never overwrote this ring, so the packet is what the guest wrote: checks of
    /// the guest's output apply.
    pub trusted: bool,
}

/// A packet the host queued for the guest (written when the ring has room).
#[derive(Clone, Debug)]
pub enum HostPacket {
    /// In-band data.
    InBand {
        /// Transaction id.
        tid: u64,
        /// Completion requested.
        completion: bool,
        /// Payload.
        payload: Vec<u8>,
    },
    /// A completion.
    Completion {
        /// Transaction id of the request it completes.
        tid: u64,
        /// Payload.
        payload: Vec<u8>,
    },
    /// A transfer-page packet.
    TransferPages {
        /// Transaction id.
        tid: u64,
        /// Transfer page set.
        set: u16,
        /// (byte count, byte offset) ranges.
        ranges: Vec<(u32, u32)>,
        /// Payload after the ranges.
        payload: Vec<u8>,
    },
    /// A GPA-direct packet naming `pfns` (two at most).
    GpaDirect {
        /// Transaction id.
        tid: u64,
        /// Offset into the first page.
        offset: u32,
        /// Bytes.
        count: u32,
        /// Pages.
        pfns: Vec<u64>,
        /// Payload.
        payload: Vec<u8>,
    },
}

/// The host ends of one open channel.
struct HostChannel {
    relid: u32,
    gpadl: u32,
    base: *mut u8,
    out_size: u32,
    in_size: u32,
    out_pages: usize,
    to_guest: RingWriter<RawRingMemory>,
    from_guest: RingReader<RawRingMemory>,
    queue: VecDeque<HostPacket>,
    /// The host wrote into the outbound ring: what it reads there is no longer the guest's.
    tampered: bool,
}

/// Which ring of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Guest → host.
    Outbound,
    /// Host → guest.
    Inbound,
}

/// The host side of every open device channel.
pub struct Devices {
    /// The channel-management host.
    pub world: Rc<RefCell<World>>,
    chans: Vec<HostChannel>,
    opens_seen: usize,
    /// Host DMA in progress: (relid, transaction id) → key in `World::dma`.
    dma: BTreeMap<(u32, u64), u64>,
    /// Requests (completion requested) the host read: (relid, transaction id).
    read: std::collections::BTreeSet<(u32, u64)>,
    /// A completion the host never meant may have reached the guest (raw bytes in its ring,
    /// a forged id): the guest may take back memory the host still holds, so host DMA stops
    /// and the model of it is dropped (the page checks of rings and buffers stay).
    pub dma_off: bool,
    /// Packets that could never be written (too large for the ring, malformed): (relid,
    /// transaction id). They never reached the guest.
    pub dropped: Vec<(u32, u64)>,
    next_key: u64,
    buf: Vec<u8>,
}

impl Devices {
    /// No channel open yet.
    pub fn new(world: Rc<RefCell<World>>) -> Self {
        Self {
            world,
            chans: Vec::new(),
            opens_seen: 0,
            dma: BTreeMap::new(),
            read: Default::default(),
            dma_off: false,
            dropped: Vec::new(),
            next_key: 1 << 62,
            buf: vec![0; 1 << 16],
        }
    }

    /// Attaches to channels opened since the last call and drops those whose rings the host
    /// no longer maps (GPADL torn down, UNLOAD). Call after the guest ran, before touching
    /// any ring.
    pub fn sync(&mut self) {
        let w = self.world.borrow();
        let gone: Vec<u32> = self
            .chans
            .iter()
            .filter(|c| !w.gpadls.contains_key(&c.gpadl))
            .map(|c| c.relid)
            .collect();
        self.chans.retain(|c| w.gpadls.contains_key(&c.gpadl));
        for o in &w.opens[self.opens_seen..] {
            let Some(g) = w.gpadls.get(&o.gpadl) else {
                continue;
            };
            let out_pages = o.downstream_offset as usize;
            if out_pages < 2 || g.pfns.len() < out_pages + 2 || g.pfns.len() != g.pages {
                continue;
            }
            assert!(
                g.pfns.windows(2).all(|p| p[1] == p[0] + 1),
                "ring pages not contiguous"
            );
            let base = (g.pfns[0] * 4096) as *mut u8;
            let out_size = ((out_pages - 1) * 4096) as u32;
            let in_size = ((g.pfns.len() - out_pages - 1) * 4096) as u32;
            // SAFETY: the ring pages of a GPADL the host maps (checked above, and again at
            // every use through `sync`); the guest freed none of them (TrackingHal asserts
            // that). One host writer on the inbound ring, one host reader on the outbound.
            let (to_guest, from_guest) = unsafe {
                let inbound = base.add(out_pages * 4096);
                (
                    RingWriter::new(
                        RawRingMemory::from_pages(NonNull::new(inbound).unwrap(), in_size).unwrap(),
                    ),
                    RingReader::new(
                        RawRingMemory::from_pages(NonNull::new(base).unwrap(), out_size).unwrap(),
                    ),
                )
            };
            let (Ok(to_guest), Ok(from_guest)) = (to_guest, from_guest) else {
                continue;
            };
            self.chans.retain(|c| c.relid != o.relid);
            self.chans.push(HostChannel {
                relid: o.relid,
                gpadl: o.gpadl,
                base,
                out_size,
                in_size,
                out_pages,
                to_guest,
                from_guest,
                queue: VecDeque::new(),
                tampered: false,
            });
        }
        self.opens_seen = w.opens.len();
        drop(w);
        for relid in gone {
            // The host stopped serving the channel: its DMA ends.
            self.end_dma_of(relid);
        }
    }

    /// Stops host DMA for good (see [`Devices::dma_off`]).
    pub fn stop_dma(&mut self) {
        self.dma_off = true;
        let mut w = self.world.borrow_mut();
        for (_, key) in std::mem::take(&mut self.dma) {
            w.dma.remove(&key);
        }
    }

    fn end_dma_of(&mut self, relid: u32) {
        let keys: Vec<(u32, u64)> = self.dma.keys().filter(|k| k.0 == relid).copied().collect();
        let mut w = self.world.borrow_mut();
        for k in keys {
            if let Some(key) = self.dma.remove(&k) {
                w.dma.remove(&key);
            }
        }
    }

    /// Channels the host serves now.
    pub fn relids(&mut self) -> Vec<u32> {
        self.sync();
        self.chans.iter().map(|c| c.relid).collect()
    }

    /// Whether the host serves `relid`.
    pub fn serves(&mut self, relid: u32) -> bool {
        self.sync();
        self.chans.iter().any(|c| c.relid == relid)
    }

    fn chan(&mut self, relid: u32) -> Option<&mut HostChannel> {
        self.sync();
        self.chans.iter_mut().find(|c| c.relid == relid)
    }

    /// Reads the next guest packet of `relid` (publishing the read index); `None` when the
    /// ring is empty or corrupt. A GPA-direct request starts host DMA on its pages, which
    /// must be guest memory.
    pub fn recv(&mut self, relid: u32) -> Option<GuestPacket> {
        self.chan(relid)?;
        let mut buf = std::mem::take(&mut self.buf);
        let got = {
            let c = self
                .chans
                .iter_mut()
                .find(|c| c.relid == relid)
                .expect("synced above");
            match c.from_guest.read(&mut buf) {
                Ok(p) => {
                    let mut ranges = Vec::new();
                    if let PacketKind::GpaDirect(g) = p.kind
                        && !c.tampered
                    {
                        for r in g.ranges() {
                            ranges.push((r.byte_offset, r.byte_count, r.pfns().collect()));
                        }
                    }
                    let g = GuestPacket {
                        relid,
                        packet_type: p.packet_type().0,
                        tid: p.transaction_id(),
                        completion_requested: p.completion_requested(),
                        payload: p.payload().to_vec(),
                        ranges,
                        trusted: !c.tampered,
                    };
                    let _ = c.from_guest.publish();
                    Some(g)
                }
                Err(_) => {
                    let _ = c.from_guest.finish_drain();
                    None
                }
            }
        };
        self.buf = buf;
        let g = got?;
        if g.completion_requested && g.trusted {
            self.read.insert((relid, g.tid));
        }
        if !g.ranges.is_empty() {
            let w = self.world.borrow();
            for (_, _, pfns) in &g.ranges {
                for pfn in pfns {
                    assert!(
                        w.lied || self.dma_off || w.live(pfn * 4096, 4096),
                        "GPA-direct packet names page {pfn:#x}, not guest memory"
                    );
                }
            }
            drop(w);
            if g.completion_requested && !self.dma_off {
                let key = self.next_key;
                self.next_key += 1;
                let pfns: Vec<u64> = g.ranges.iter().flat_map(|r| r.2.clone()).collect();
                self.world.borrow_mut().dma.insert(key, pfns);
                if let Some(old) = self.dma.insert((relid, g.tid), key) {
                    // The guest reused a transaction id the host still holds.
                    panic!(
                        "transaction id {:#x} reused on channel {relid} while the host holds it \
                         (old DMA key {old})",
                        g.tid
                    );
                }
            }
        }
        Some(g)
    }

    /// Whether the host holds a GPA-direct request `tid` of `relid` (read, not completed).
    pub fn holds(&self, relid: u32, tid: u64) -> bool {
        self.dma.contains_key(&(relid, tid))
    }

    /// Queues `p` for `relid` and writes what fits. Returns false if the host does not serve
    /// the channel.
    pub fn send(&mut self, relid: u32, p: HostPacket) -> bool {
        let Some(c) = self.chan(relid) else {
            return false;
        };
        c.queue.push_back(p);
        self.flush(relid);
        true
    }

    /// Writes queued packets of `relid` while the inbound ring has room (a packet that can
    /// never be written is dropped).
    pub fn flush(&mut self, relid: u32) {
        loop {
            let Some(c) = self.chan(relid) else {
                return;
            };
            let Some(p) = c.queue.front().cloned() else {
                return;
            };
            let r = write_packet(&mut c.to_guest, &p);
            match r {
                Err(WriteError::Full { .. }) => return,
                Err(e) => {
                    crate::trace!("  host packet {:#x} dropped: {e:?}", packet_tid(&p));
                    c.queue.pop_front();
                    self.dropped.push((relid, packet_tid(&p)));
                }
                Ok(()) => {
                    c.queue.pop_front();
                    if let HostPacket::Completion { tid, .. } = p {
                        if let Some(key) = self.dma.remove(&(relid, tid)) {
                            self.world.borrow_mut().dma.remove(&key);
                        }
                        if !self.read.contains(&(relid, tid)) && plausible_id(tid) {
                            // A completion for a request the host never read, with an id the
                            // guest may have handed out (ids are predictable): if it matches,
                            // the guest believes a lie about what the host is done with.
                            self.stop_dma();
                        }
                    }
                }
            }
        }
    }

    /// Writes what is queued on every channel.
    pub fn flush_all(&mut self) {
        for relid in self.relids() {
            self.flush(relid);
        }
    }

    /// Packets queued on `relid` and not yet written.
    pub fn queued(&mut self, relid: u32) -> usize {
        self.chan(relid).map_or(0, |c| c.queue.len())
    }

    /// Writes raw bytes into the data area of one ring of `relid` at `at` (wrapping).
    pub fn poke(&mut self, relid: u32, dir: Dir, at: u32, bytes: &[u8]) {
        let Some(c) = self.chan(relid) else {
            return;
        };
        c.tampered |= dir == Dir::Outbound;
        let (base, size) = ring_of(c, dir);
        for (i, b) in bytes.iter().enumerate() {
            let off = 4096 + (at as usize + i) % size as usize;
            // SAFETY: inside the ring's data area (modulo its size) of a ring the host maps
            // (`chan` synced); the guest reads it only with volatile copies.
            unsafe { base.add(off).write_volatile(*b) };
        }
    }

    /// Stores a raw value in a control word of one ring of `relid` (offset 0 write index, 4
    /// read index, 8 interrupt mask, 12 pending send size, 0x40 feature bits).
    pub fn set_control(&mut self, relid: u32, dir: Dir, offset: usize, value: u32) {
        let Some(c) = self.chan(relid) else {
            return;
        };
        c.tampered |= dir == Dir::Outbound;
        let (base, _) = ring_of(c, dir);
        // SAFETY: a 4-aligned word of the control page of a ring the host maps; control words
        // are only accessed atomically.
        unsafe { AtomicU32::from_ptr(base.add(offset).cast()) }.store(value, SeqCst);
    }

    /// Reads a control word of one ring of `relid` (see [`Devices::set_control`]).
    pub fn control(&mut self, relid: u32, dir: Dir, offset: usize) -> Option<u32> {
        let c = self.chan(relid)?;
        let (base, _) = ring_of(c, dir);
        // SAFETY: as in `set_control`.
        Some(unsafe { AtomicU32::from_ptr(base.add(offset).cast()) }.load(SeqCst))
    }

    /// Data-area size of one ring of `relid`.
    pub fn ring_size(&mut self, relid: u32, dir: Dir) -> u32 {
        self.chan(relid).map_or(0, |c| match dir {
            Dir::Outbound => c.out_size,
            Dir::Inbound => c.in_size,
        })
    }

    /// Host DMA: copies `data` into the guest pages `ranges` name (in range order), as far as
    /// they reach; returns the bytes written.
    pub fn dma_write(&self, ranges: &[(u32, u32, Vec<u64>)], data: &[u8]) -> usize {
        let mut done = 0;
        self.dma_walk(ranges, data.len(), |addr, at, n| {
            // SAFETY: `addr..addr + n` lies in one live guest page (checked by `dma_walk`),
            // which a request the host holds names; the guest does not access it until the
            // completion.
            unsafe { std::ptr::copy_nonoverlapping(data[at..].as_ptr(), addr, n) };
            done = at + n;
        });
        done
    }

    /// Host DMA: reads `len` bytes from the guest pages `ranges` name.
    pub fn dma_read(&self, ranges: &[(u32, u32, Vec<u64>)], len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut done = 0;
        self.dma_walk(ranges, len, |addr, at, n| {
            // SAFETY: as in `dma_write`; the guest does not write the page meanwhile.
            unsafe { std::ptr::copy_nonoverlapping(addr, out[at..].as_mut_ptr(), n) };
            done = at + n;
        });
        out.truncate(done);
        out
    }

    fn dma_walk(
        &self,
        ranges: &[(u32, u32, Vec<u64>)],
        len: usize,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) {
        let w = self.world.borrow();
        if w.lied || self.dma_off {
            return;
        }
        let mut at = 0;
        for (offset, count, pfns) in ranges {
            let mut pos = *offset as usize;
            let end = pos + *count as usize;
            while pos < end && at < len {
                let page = pos / 4096;
                let Some(pfn) = pfns.get(page) else {
                    return;
                };
                let in_page = pos % 4096;
                let n = (4096 - in_page).min(end - pos).min(len - at);
                let addr = pfn * 4096 + in_page as u64;
                assert!(
                    w.live(addr, n as u64),
                    "host DMA to {addr:#x}: not guest memory any more"
                );
                f(addr as *mut u8, at, n);
                at += n;
                pos += n;
            }
        }
    }
}

fn packet_tid(p: &HostPacket) -> u64 {
    match p {
        HostPacket::InBand { tid, .. }
        | HostPacket::Completion { tid, .. }
        | HostPacket::TransferPages { tid, .. }
        | HostPacket::GpaDirect { tid, .. } => *tid,
    }
}

/// Whether `tid` looks like an id a guest request table hands out (slot + 1 in the low
/// half, a small non-zero generation in the high half).
fn plausible_id(tid: u64) -> bool {
    let (slot, generation) = (tid as u32, (tid >> 32) as u32);
    (1..=0x1_0000).contains(&slot) && (1..0x1000_0000).contains(&generation)
}

fn ring_of(c: &HostChannel, dir: Dir) -> (*mut u8, u32) {
    match dir {
        Dir::Outbound => (c.base, c.out_size),
        // SAFETY: the inbound ring starts `out_pages` pages into the GPADL's pages.
        Dir::Inbound => (unsafe { c.base.add(c.out_pages * 4096) }, c.in_size),
    }
}

fn write_packet(w: &mut RingWriter<RawRingMemory>, p: &HostPacket) -> Result<(), WriteError> {
    match p {
        HostPacket::InBand {
            tid,
            completion,
            payload,
        } => w.send(&OutgoingPacket::in_band(*tid, *completion, &[payload])),
        HostPacket::Completion { tid, payload } => {
            w.send(&OutgoingPacket::completion(*tid, &[payload]))
        }
        HostPacket::TransferPages {
            tid,
            set,
            ranges,
            payload,
        } => {
            let r: Vec<TransferPageRange> = ranges
                .iter()
                .map(|&(byte_count, byte_offset)| TransferPageRange {
                    byte_count,
                    byte_offset,
                })
                .collect();
            w.send(&OutgoingPacket::transfer_pages(
                *tid,
                *set,
                false,
                &r,
                &[payload],
            ))
        }
        HostPacket::GpaDirect {
            tid,
            offset,
            count,
            pfns,
            payload,
        } => {
            let r = [GpaRange {
                byte_count: *count,
                byte_offset: *offset,
                pfns,
            }];
            w.send(&OutgoingPacket::gpa_direct(*tid, &r, &[payload]))
        }
    }
    .map(|_| ())
}

/// One step of a device host, run each time the guest waits.
pub trait Step {
    /// Lets the host act.
    fn step(&mut self);
}

/// A [`Wait`] that runs the device host one step per wait, `budget` waits per operation.
pub struct HostWait<S> {
    sim: Rc<RefCell<S>>,
    budget: u32,
    left: u32,
}

impl<S> HostWait<S> {
    /// `budget` steps before a timeout.
    pub fn new(sim: Rc<RefCell<S>>, budget: u32) -> Self {
        Self {
            sim,
            budget,
            left: budget,
        }
    }
}

impl<S: Step> Wait for HostWait<S> {
    fn wait(&mut self) -> Result<(), TimedOut> {
        if self.left == 0 {
            return Err(TimedOut);
        }
        self.left -= 1;
        self.sim.borrow_mut().step();
        Ok(())
    }

    fn restart(&mut self) {
        self.left = self.budget;
    }
}

/// What [`chaos`] did to a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chaos {
    /// A packet the device protocol does not expect (any type, any bytes) was queued.
    Packet,
    /// The rings' bytes or control words were overwritten.
    Ring,
    /// The channel was rescinded (the caller lets the bus see it).
    Rescind,
}

/// One hostile act against channel `relid` chosen by the input: an in-band packet of
/// arbitrary bytes (with or without completion requested), a completion for an arbitrary
/// transaction id, a transfer-page or GPA-direct packet, raw bytes or control words in
/// either ring, or a rescind.
pub fn chaos(dev: &mut Devices, inp: &mut crate::Input<'_>, relid: u32) -> Chaos {
    match inp.u8() % 10 {
        0..=2 => {
            let payload = inp.bytes(300);
            let tid = inp.u64();
            let completion = inp.bool();
            dev.send(
                relid,
                HostPacket::InBand {
                    tid,
                    completion,
                    payload,
                },
            );
            Chaos::Packet
        }
        3 => {
            let tid = match inp.u8() % 3 {
                0 => inp.u64(),
                1 => u64::from(inp.u8() % 4 + 1) | (1 << 32),
                _ => u64::from(inp.u8() % 4 + 1) | (u64::from(inp.u8()) << 32),
            };
            let payload = inp.bytes(96);
            dev.send(relid, HostPacket::Completion { tid, payload });
            Chaos::Packet
        }
        4 => {
            let n = 1 + inp.below(3);
            let ranges = (0..n).map(|_| (inp.u32(), inp.u32())).collect();
            let tid = inp.u64();
            let set = inp.u16();
            let payload = inp.bytes(64);
            dev.send(
                relid,
                HostPacket::TransferPages {
                    tid,
                    set,
                    ranges,
                    payload,
                },
            );
            Chaos::Packet
        }
        5 => {
            let offset = u32::from(inp.u16()) % 4096;
            let count = (u32::from(inp.u16()) % (8192 - offset)).max(1);
            let pages = (offset + count).div_ceil(4096) as usize;
            let pfns = (0..pages).map(|_| inp.u64()).collect();
            let tid = inp.u64();
            let payload = inp.bytes(64);
            dev.send(
                relid,
                HostPacket::GpaDirect {
                    tid,
                    offset,
                    count,
                    pfns,
                    payload,
                },
            );
            Chaos::Packet
        }
        6 | 7 => {
            let dir = if inp.u8().is_multiple_of(4) {
                Dir::Outbound
            } else {
                Dir::Inbound
            };
            if dir == Dir::Inbound {
                // Raw bytes in the guest's inbound ring may form a completion of a request
                // the host never read: from here on the host may have lied about its DMA.
                dev.stop_dma();
            }
            let size = dev.ring_size(relid, dir).max(1);
            if inp.bool() {
                let at = inp.u32() % size;
                let bytes = inp.bytes(48);
                dev.poke(relid, dir, at, &bytes);
            } else {
                let off = [0usize, 4, 8, 12, 0x40][inp.below(5)];
                let v = if off < 8 {
                    inp.ring_index(size)
                } else {
                    inp.u32()
                };
                dev.set_control(relid, dir, off, v);
            }
            Chaos::Ring
        }
        8 => {
            let n = inp.below(4);
            for _ in 0..n {
                let payload = inp.bytes(64);
                dev.send(
                    relid,
                    HostPacket::InBand {
                        tid: 0,
                        completion: false,
                        payload,
                    },
                );
            }
            Chaos::Packet
        }
        _ => {
            dev.world.borrow_mut().send(host::rescind(relid));
            Chaos::Rescind
        }
    }
}
