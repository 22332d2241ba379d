//! storvsc against a hostile storage host. The first input byte picks the part:
//!
//! - the pure parsers: VSTOR completions (`SrbCompletion`), sense data and its
//!   classification, INQUIRY, READ CAPACITY (10)/(16), REPORT LUNS, the VPD pages, UNMAP
//!   lists, CDB builders and transfer splitting, each checked against the bytes it read;
//! - the handshake state machine fed arbitrary completions, against a model of what it
//!   must have negotiated;
//! - a `ScsiDisk` (discovery, retries, rescans, splitting) over a transport whose
//!   completions and data come from the input, against the disk model;
//! - the channel request table storvsc's ids come from, against a model;
//! - the whole controller on the bus: open (handshake, sub-channels) against the VSTOR
//!   host of `vstor.rs`, then queued and blocking I/O while the host answers late, twice,
//!   wrongly, rescinds, rewrites the rings.
//!
//! (MODE SENSE is not parsed by storvsc — it only builds the CDB — so there is nothing of
//! it to fuzz.)
//!
//! Controller invariants: every queued request is reported exactly once by `poll` (or by
//! `close_with`), a request reported with its memory held is reclaimed exactly once at
//! close, tags are never reused while live, a caller buffer is given back only when the host
//! no longer holds it (the HAL checks every free against the host's DMA), successful reads
//! carry disk data, writes carry the caller's data, and every guest packet is well formed.
#![no_main]

use hyperv_guest_fuzz::Input;
use hyperv_guest_fuzz::stor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    match inp.u8() % 8 {
        0 => stor::parsers(&mut inp),
        1 => stor::handshake(&mut inp),
        2 => stor::disk(&mut inp),
        3 => stor::request_table(&mut inp),
        _ => controller(inp),
    }
});

use hyperv_guest_fuzz::dev::{self, Chaos, DevHal, Devices, HostWait, Step};
use hyperv_guest_fuzz::host::Scripted;
use hyperv_guest_fuzz::scsi::{Disk, write_lba, written};
use hyperv_guest_fuzz::trace;
use hyperv_guest_fuzz::vstor::Vstor;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::Rc;
use storvsc::block::{BlockDevice, DataBuf, ScsiDisk, ScsiTransport};
use storvsc::controller::{ControllerOptions, StorvscController};
use storvsc::protocol::DataDirection;
use storvsc::queue::{Done, IoBuffer, Memory, Polled, Reclaimed, Tag};
use storvsc::request::{LunAddress, ScsiRequest};
use storvsc::scsi::Cdb;
use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::{Hal, Released};

type Ctl<'b, 'a> = StorvscController<'b, Scripted, DevHal, HostWait<Vstor<'a>>, 4, 8>;

/// A caller buffer of a queued request: HAL pages (host-visible: GPA-direct on it) or plain
/// heap memory (the controller bounces it).
struct Buf {
    ptr: NonNull<u8>,
    len: usize,
    /// HAL pages, or `None` for the heap.
    pages: Option<usize>,
}

impl Buf {
    fn new(hal: &DevHal, len: usize, visible: bool) -> Option<Buf> {
        let len = len.max(1);
        if visible {
            let pages = len.div_ceil(4096);
            let ptr = hal.alloc_pages(pages).ok()?;
            Some(Buf {
                ptr,
                len,
                pages: Some(pages),
            })
        } else {
            // SAFETY: non-zero size.
            let ptr = NonNull::new(unsafe { alloc_zeroed(heap_layout(len)) })?;
            Some(Buf {
                ptr,
                len,
                pages: None,
            })
        }
    }

    fn fill(&mut self, f: impl Fn(usize) -> u8) {
        for i in 0..self.len {
            // SAFETY: inside the buffer, which no request names yet.
            unsafe { self.ptr.add(i).write(f(i)) };
        }
    }

    fn bytes(&self) -> Vec<u8> {
        // SAFETY: the buffer is the caller's again (reported with its memory returned).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }.to_vec()
    }

    fn free(self, hal: &DevHal) {
        match self.pages {
            // SAFETY: allocated by `hal` with this page count; the controller gave it back, and
            // the HAL checks the host no longer maps it.
            Some(pages) => unsafe { hal.free_pages(self.ptr, pages) },
            // SAFETY: allocated in `new` with this layout; given back.
            None => unsafe { dealloc(self.ptr.as_ptr(), heap_layout(self.len)) },
        }
    }
}

fn heap_layout(len: usize) -> Layout {
    Layout::from_size_align(len, 8).unwrap()
}

/// A queued request the target submitted.
struct Sub {
    tag: Tag,
    buf: Buf,
    /// READ of this LBA (data checked when it succeeds).
    read: Option<u64>,
    /// Reported with its memory held until close.
    held: bool,
}

struct Queue {
    subs: Vec<Sub>,
    reported: u64,
}

impl Queue {
    fn done(&mut self, d: Done, hal: &DevHal, host: &Vstor<'_>) {
        let i = self
            .subs
            .iter()
            .position(|s| s.tag == d.tag && !s.held)
            .unwrap_or_else(|| panic!("{:?} reported twice, or never submitted", d.tag));
        self.reported += 1;
        trace!("  done {:?} {:?} {:?}", d.tag, d.result, d.memory);
        if d.memory == Memory::HeldUntilClose {
            assert!(
                self.subs[i].buf.pages.is_some(),
                "a bounced buffer reported as held by the host"
            );
            self.subs[i].held = true;
            return;
        }
        let s = self.subs.remove(i);
        if let (Some(lba), Ok(c)) = (s.read, &d.result)
            && c.check(s.buf.len as u32).is_ok()
            && !host.corrupted
            && !host.dev.dma_off
            && !host.dev.world.borrow().lied
        {
            let bs = host.disk.block_size as usize;
            for (k, b) in s.buf.bytes().chunks(bs).enumerate() {
                assert!(
                    host.disk.block_ok(lba + k as u64, b),
                    "a completed read of block {} carries other data",
                    lba + k as u64
                );
            }
        }
        s.buf.free(hal);
    }

    fn reclaimed(&mut self, r: Reclaimed, hal: &DevHal) {
        let i = self
            .subs
            .iter()
            .position(|s| s.tag == r.tag)
            .unwrap_or_else(|| panic!("close reclaimed {:?}, not outstanding", r.tag));
        let s = self.subs.remove(i);
        assert_eq!(
            r.result.is_none(),
            s.held,
            "{:?}: a result at close iff poll never reported it",
            r.tag
        );
        match (r.memory, s.buf.pages) {
            (Released::Freed, _) => s.buf.free(hal),
            (Released::Leaked, Some(_)) => {} // never reused: the World frees it at the end
            (Released::Leaked, None) => panic!("a bounced buffer leaked at close"),
        }
    }
}

fn submit(ctl: &mut Ctl<'_, '_>, sim: &Rc<RefCell<Vstor<'_>>>, q: &mut Queue, hal: &DevHal) {
    let mut s = sim.borrow_mut();
    let kind = s.inp.u8() % 3;
    let visible = s.inp.bool();
    let bs = s.disk.block_size as usize;
    let lba = u64::from(s.inp.u8()) % (s.disk.blocks + 2);
    let n = 1 + s.inp.below(4);
    // A raw WRITE(10)/WRITE(16) CDB writes at its own LBA: the disk oracle checks the data
    // the host reads against the write pattern there, whatever direction the request says.
    let mut cdb_lba = None;
    let (request, write, read) = match kind {
        0 | 1 => {
            let write = kind == 1;
            let cdb = Cdb::read_write(write, lba, n as u32).unwrap();
            let dir = if write {
                DataDirection::WRITE
            } else {
                DataDirection::READ
            };
            let r = ScsiRequest::new(LunAddress::lun(0), cdb, dir, (n * bs) as u32);
            (r, write, (!write).then_some(lba))
        }
        _ => {
            let raw = s.inp.bytes(16);
            let Some(cdb) = Cdb::from_bytes(&raw) else {
                return;
            };
            cdb_lba = write_lba(cdb.as_bytes());
            let dir = DataDirection(s.inp.u8() % 3);
            let len = s.inp.below(9000) as u32;
            let lun = LunAddress::lun(s.inp.u8() % 3);
            (
                ScsiRequest::new(lun, cdb, dir, len),
                dir == DataDirection::WRITE,
                None,
            )
        }
    };
    drop(s);
    let len = request.transfer_length as usize;
    let Some(mut buf) = Buf::new(hal, len, visible) else {
        return;
    };
    let base = cdb_lba.unwrap_or(lba).wrapping_mul(bs as u64);
    if write || cdb_lba.is_some() {
        buf.fill(|i| written(base.wrapping_add(i as u64)));
    }
    let io = match (len, request.direction) {
        (0, _) => IoBuffer::None,
        (_, DataDirection::WRITE) => IoBuffer::ToDevice { ptr: buf.ptr, len },
        _ => IoBuffer::FromDevice { ptr: buf.ptr, len },
    };
    // SAFETY: the buffer stays allocated and untouched until the controller gives it back
    // (`Queue::done` with its memory returned, or `Queue::reclaimed` with `Freed`); a leaked
    // one is never reused.
    match unsafe { ctl.submit(&request, io) } {
        Ok(tag) => {
            trace!("  submitted {tag:?}: {request:?}");
            assert!(
                q.subs.iter().all(|s| s.tag != tag),
                "{tag:?} reused while live"
            );
            q.subs.push(Sub {
                tag,
                buf,
                read,
                held: false,
            });
        }
        Err(e) => {
            trace!("  submit failed: {e}");
            buf.free(hal);
        }
    }
}

fn check_counts(ctl: &Ctl<'_, '_>, q: &Queue) {
    let held = q.subs.iter().filter(|s| s.held).count();
    assert_eq!(ctl.held_until_close(), held, "held_until_close");
    assert!(
        ctl.in_flight() >= q.subs.len() - held,
        "in_flight {} below the {} unreported requests",
        ctl.in_flight(),
        q.subs.len() - held
    );
}

/// Blocking I/O: a `ScsiDisk` on the controller (discovery, reads, writes).
fn blocking(ctl: &mut Ctl<'_, '_>, sim: &Rc<RefCell<Vstor<'_>>>) {
    let limit = ctl.max_transfer_bytes();
    let Ok(mut disk) = ScsiDisk::open(&mut *ctl, LunAddress::lun(0), limit) else {
        return;
    };
    let (bs, blocks, exact) = {
        let s = sim.borrow();
        let lied = s.dev.world.borrow().lied || s.dev.dma_off;
        (
            s.disk.block_size,
            s.disk.blocks,
            !s.corrupted && !s.forged && !lied,
        )
    };
    if exact {
        assert_eq!(
            (disk.block_size(), disk.num_blocks()),
            (bs, blocks),
            "disk geometry"
        );
    }
    for _ in 0..2 {
        // The block size the guest believes (a hostile READ CAPACITY may have set it); the
        // model checks written bytes by their offset in its own blocks, so only while the
        // two agree.
        let dbs = disk.block_size() as usize;
        let (op, lba, n) = {
            let mut s = sim.borrow_mut();
            s.disk.check_writes &= dbs == s.disk.block_size as usize;
            (
                s.inp.u8() % 3,
                u64::from(s.inp.u8()) % (blocks + 1),
                1 + s.inp.below(6),
            )
        };
        match op {
            0 => {
                let mut buf = vec![0u8; n * dbs];
                if disk.read_blocks(lba, &mut buf).is_ok() {
                    let s = sim.borrow();
                    if !s.corrupted && !s.forged && !s.dev.dma_off && !s.dev.world.borrow().lied {
                        for (k, b) in buf.chunks(dbs).enumerate() {
                            assert!(s.disk.block_ok(lba + k as u64, b), "blocking read data");
                        }
                    }
                }
            }
            1 => {
                let base = lba * dbs as u64;
                let buf: Vec<u8> = (0..(n * dbs) as u64).map(|i| written(base + i)).collect();
                let _ = disk.write_blocks(lba, &buf);
            }
            _ => {
                let _ = disk.flush();
            }
        }
    }
}

fn controller(mut inp: Input<'_>) {
    let answer_teardown = !inp.u8().is_multiple_of(8);
    let version_index = inp.below(8);
    let bs = if inp.bool() { 512 } else { 4096 };
    let mut disk = Disk::new(bs, 16 + u64::from(inp.u8() % 64));
    disk.thin = inp.bool();
    disk.max_transfer_blocks = [0, 2, 8][inp.below(3)];
    let host_max = [0x0602, 0x0600, 0x0501, 0x0402, 0x0200][inp.below(5)];
    let props = (
        u16::from(inp.u8() % 4),
        u32::from(inp.u8() % 2),
        [0, 4096, 0x10000, 0x40000][inp.below(4)],
    );
    let options = ControllerOptions {
        sub_channels: u16::from(inp.u8() % 4),
        spill_depth: inp.below(3),
        pool_pages: 1 + inp.below(8),
    };
    let w = dev::world(
        vec![dev::offer(DeviceClass::Scsi, 1, 0, 0, 0)],
        answer_teardown,
    );
    let hal = DevHal::new(&w);
    let bus = dev::connect(&w, hal.clone(), version_index);
    let mut host = Vstor::new(Devices::new(w.clone()), inp, disk);
    host.host_max = host_max;
    host.props = props;
    let sim = Rc::new(RefCell::new(host));
    let waiter = HostWait::new(sim.clone(), 6);
    let mut ctl = match Ctl::open_with(&bus, 1, waiter, options) {
        Ok(c) => c,
        Err(e) => {
            trace!("open: {e}");
            return;
        }
    };
    {
        let s = sim.borrow();
        if !s.forged {
            assert_eq!(
                Some(ctl.negotiated().version),
                s.version,
                "negotiated version"
            );
        }
    }
    let mut q = Queue {
        subs: Vec::new(),
        reported: 0,
    };
    let mut rescinded = false;
    for _ in 0..64 {
        let op = {
            let mut s = sim.borrow_mut();
            if s.inp.is_empty() {
                break;
            }
            s.inp.u8() % 12
        };
        trace!("op {op}");
        match op {
            0..=3 => submit(&mut ctl, &sim, &mut q, &hal),
            4 | 5 => {
                let budget = 1 + sim.borrow_mut().inp.below(16);
                let mut dones = Vec::new();
                let p: Polled = ctl.poll(budget, |d| dones.push(d));
                assert_eq!(p.reported, dones.len());
                for d in dones {
                    q.done(d, &hal, &sim.borrow());
                }
            }
            6 => {
                {
                    let mut world = w.borrow_mut();
                    for &r in ctl.channel_relids() {
                        world.flags.insert(r);
                    }
                }
                let mut work = bus.handle_interrupt();
                let budget = 1 + sim.borrow_mut().inp.below(16);
                let mut dones = Vec::new();
                let p = ctl.poll_interrupt(&mut work, budget, |d| dones.push(d));
                assert_eq!(p.reported, dones.len());
                for d in dones {
                    q.done(d, &hal, &sim.borrow());
                }
            }
            7 => sim.borrow_mut().step(),
            8 => {
                let mut s = sim.borrow_mut();
                for _ in 0..1 + s.inp.below(4) {
                    let n = s.held.len().max(1);
                    let i = s.inp.below(n);
                    s.release(i);
                }
                s.dev.flush_all();
            }
            9 => {
                let relids = ctl.channel_relids().to_vec();
                let mut s = sim.borrow_mut();
                let relid = relids[s.inp.below(relids.len())];
                let Vstor { dev, inp, .. } = &mut *s;
                match dev::chaos(dev, inp, relid) {
                    Chaos::Rescind => rescinded = true,
                    Chaos::Ring => s.corrupted = true,
                    Chaos::Packet => {}
                }
            }
            10 => blocking(&mut ctl, &sim),
            _ => {
                let (cdb, len) = {
                    let mut s = sim.borrow_mut();
                    (s.inp.bytes(16), s.inp.below(5000))
                };
                if let Some(cdb) = Cdb::from_bytes(&cdb) {
                    let mut buf = vec![0u8; len];
                    let r =
                        ScsiRequest::new(LunAddress::lun(0), cdb, DataDirection::READ, len as u32);
                    let _ = ctl.execute(&r, DataBuf::FromDevice(&mut buf));
                }
            }
        }
        check_counts(&ctl, &q);
    }
    // Drain what the host still holds, then close.
    {
        let mut s = sim.borrow_mut();
        while !s.held.is_empty() && s.inp.bool() {
            s.release(0);
        }
        s.step();
    }
    let mut reclaimed = Vec::new();
    let released = ctl.close_with(|r| reclaimed.push(r));
    for r in reclaimed {
        q.reclaimed(r, &hal);
    }
    assert!(
        q.subs.is_empty(),
        "requests neither reported nor reclaimed: {:?}",
        q.subs.iter().map(|s| s.tag).collect::<Vec<_>>()
    );
    let lied = w.borrow().lied;
    trace!("closed: {released:?}, {} reported, lied {lied}", q.reported);
    if answer_teardown && !rescinded && !lied {
        assert_eq!(released, Released::Freed, "close with a host that confirms");
    }
}
