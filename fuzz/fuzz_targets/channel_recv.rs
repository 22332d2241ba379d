//! An open `Channel` fed by a hostile host: the bus connects and opens against a host that
//! answers correctly (GPADL_CREATED, OPENCHANNEL_RESULT), then the host — which knows the ring
//! pages from the GPADL PFNs (identity-mapped HAL) — writes whatever the input says into the
//! inbound ring (well-formed packets, completions for real, stale, duplicate and forged
//! transaction ids, raw bytes, raw indices, masks and pending sizes), reads the guest's
//! requests from the outbound ring, and rescinds or unloads, while the guest sends requests,
//! receives in batches and finally closes.
//!
//! Invariants beyond "no panic":
//! - every request completes or fails exactly once: a completion or failure names a request in
//!   flight with its own context, a completion carries that request's transaction id, nothing
//!   is left over after `close_with`, and a channel error comes only after every failure was
//!   reported;
//! - unknown, stale or duplicate transaction ids never match a request;
//! - a completion is never returned as a data packet;
//! - the page-ownership checks of the host model (no ring page freed while mapped).
#![no_main]

use hyperv_guest_fuzz::host::{self, Policy, Scripted, TrackingHal, World};
use hyperv_guest_fuzz::{Input, trace};
use libfuzzer_sys::fuzz_target;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use vmbus_guest::protocol::{CANDIDATE_VERSIONS, FeatureFlags};
use vmbus_guest::ring::PacketKind;
use vmbus_guest::ring::{
    GpaRange, OutgoingPacket, RawRingMemory, RingReader, RingWriter, TransferPageRange,
};
use vmbus_guest::wait::BoundedWait;
use vmbus_guest::{
    Channel, ChannelConfig, ChannelError, ConnectionConfig, HostBuffer, Received, RequestId, Vmbus,
};

fuzz_target!(|data: &[u8]| run(data));

type Chan<'b> = Channel<'b, Scripted, TrackingHal, u64, 8>;

fn wait(n: u32) -> BoundedWait<fn()> {
    BoundedWait::new(n, (|| {}) as fn())
}

/// The host's raw view of one ring: control words and data bytes.
struct RawRing {
    base: *mut u8,
    size: u32,
}

impl RawRing {
    fn ctl(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: the control page is live while the channel is open (the target drops every
        // RawRing before closing) and its words are only accessed atomically.
        unsafe { AtomicU32::from_ptr(self.base.add(offset).cast()) }
    }
    fn poke(&self, at: u32, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let off = 4096 + (at as usize + i) % self.size as usize;
            // SAFETY: inside the ring's data area (modulo its size), live while open; the guest
            // only copies from it with volatile reads.
            unsafe { self.base.add(off).write_volatile(*b) };
        }
    }
}

fn check_received(
    pending: &mut Vec<(RequestId, u64)>,
    r: Received<'_, u64>,
    host_read: &std::collections::BTreeSet<u64>,
) -> bool {
    let mut lie = false;
    match r {
        Received::Completion {
            request,
            context,
            packet,
        } => {
            let i = pending
                .iter()
                .position(|(id, _)| *id == request)
                .expect("completion of a request not in flight");
            assert_eq!(pending.swap_remove(i).1, context, "wrong context");
            assert_eq!(packet.transaction_id(), request.transaction_id());
            // Completed by a host that never read it: a forged (predicted) id.
            lie = !host_read.contains(&request.transaction_id());
            trace!("  completed {request:?}");
        }
        Received::Failed {
            request, context, ..
        } => {
            let i = pending
                .iter()
                .position(|(id, _)| *id == request)
                .expect("failure of a request not in flight");
            assert_eq!(pending.swap_remove(i).1, context, "wrong context");
            trace!("  failed {request:?}");
        }
        Received::Packet(p) => {
            assert_ne!(p.packet_type().0, 11, "completion returned as data");
        }
    }
    lie
}

fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let w = World::new(Policy::Accept, Vec::new());
    let relid = 1;
    {
        let mut world = w.borrow_mut();
        let monitor = inp.u8();
        let allocated = inp.u8() % 2;
        world.accept_offers = vec![host::offer(relid, 1, 0, 0, monitor, allocated, 0, 0x10)];
        world.answer_teardown = !inp.u8().is_multiple_of(8);
        if inp.u8().is_multiple_of(4) {
            world.signal_failures = inp.u64();
        }
    }
    let config = ConnectionConfig {
        versions: &CANDIDATE_VERSIONS[inp.below(CANDIDATE_VERSIONS.len())..],
        features: if inp.bool() {
            FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS
        } else {
            FeatureFlags::empty()
        },
        target_vp: None,
        backoff: |_| {},
    };
    let bus = Vmbus::new(Scripted(w.clone()), TrackingHal(w.clone()), config);
    bus.connect(&mut wait(8))
        .expect("connect to a correct host");
    let cfg = ChannelConfig {
        outbound_pages: 2 + inp.below(2),
        inbound_pages: 2 + inp.below(2),
        ..ChannelConfig::default()
    };
    let mut ch = Chan::open(&bus, relid, &cfg, &mut wait(8)).expect("open on a correct host");

    // Where the rings are: the GPADL the OPENCHANNEL named (PFN = address / 4096).
    let (pfns, out_pages) = {
        let world = w.borrow();
        let o = *world.opens.last().expect("OPENCHANNEL posted");
        (
            world.gpadls[&o.gpadl].pfns.clone(),
            o.downstream_offset as usize,
        )
    };
    assert_eq!(out_pages, cfg.outbound_pages);
    assert_eq!(pfns.len(), cfg.outbound_pages + cfg.inbound_pages);
    assert!(pfns.windows(2).all(|p| p[1] == p[0] + 1));
    let base = (pfns[0] * 4096) as *mut u8;
    // SAFETY: the ring pages stay allocated while the channel is open; the host objects below
    // are dropped before the close. One host writer on the inbound ring (the guest reads it)
    // and one host reader on the outbound ring (the guest writes it).
    let inbound = unsafe { base.add(out_pages * 4096) };
    let in_size = ((cfg.inbound_pages - 1) * 4096) as u32;
    let out_size = ((cfg.outbound_pages - 1) * 4096) as u32;
    // SAFETY: as above: this channel's ring pages, live until the close, one host end each.
    let (mut host_w, mut host_r) = unsafe {
        (
            RingWriter::new(
                RawRingMemory::from_pages(NonNull::new(inbound).unwrap(), in_size).unwrap(),
            )
            .unwrap(),
            RingReader::new(
                RawRingMemory::from_pages(NonNull::new(base).unwrap(), out_size).unwrap(),
            )
            .unwrap(),
        )
    };
    let raw_in = RawRing {
        base: inbound,
        size: in_size,
    };
    let raw_out = RawRing {
        base,
        size: out_size,
    };

    let mut hb: Option<HostBuffer<'_, Scripted, TrackingHal>> = None;
    let mut pending: Vec<(RequestId, u64)> = Vec::new();
    let mut tids: Vec<u64> = Vec::new();
    // Requests the host read, and completions it sent for requests it had not read (forged
    // or predicted ids: transaction ids are predictable). A forged completion that matches a
    // request is the host lying about what it is done with (see `World::lied`).
    let mut host_read: std::collections::BTreeSet<u64> = Default::default();
    let mut forged: std::collections::BTreeSet<u64> = Default::default();
    let mut out_tampered = false;
    // Transaction ids of every request `request` accepted: only those may reach the ring.
    let mut accepted: std::collections::BTreeSet<u64> = Default::default();
    let mut ctx = 0u64;
    let mut buf = vec![0u8; 16384];
    let mut hbuf = vec![0u8; 16384];

    for _ in 0..200 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8() % 21;
        trace!("op {op}");
        match op {
            0 | 1 => {
                ctx += 1;
                let payload = inp.bytes(96);
                if let Ok(id) = ch.request(&[&payload], ctx) {
                    assert!(
                        pending.iter().all(|(x, _)| *x != id),
                        "id reused while live"
                    );
                    pending.push((id, ctx));
                    accepted.insert(id.transaction_id());
                }
            }
            2 => {
                let payload = inp.bytes(96);
                let _ = ch.send(&[&payload]);
            }
            3..=5 => {
                let cap = match inp.u8() % 4 {
                    0 => inp.below(256),
                    _ => buf.len(),
                };
                for _ in 0..8 {
                    match ch.recv(&mut buf[..cap]) {
                        Ok(Some(r)) => {
                            let lie = check_received(&mut pending, r, &host_read);
                            w.borrow_mut().lied |= lie;
                        }
                        Ok(None) => break,
                        Err(ChannelError::BufferTooSmall { needed }) => {
                            assert!(needed > cap);
                            break;
                        }
                        Err(e) => {
                            assert!(
                                pending.is_empty(),
                                "{e:?} before every failure: {pending:?}"
                            );
                            break;
                        }
                    }
                }
            }
            6 => {
                let _ = if inp.bool() {
                    ch.end_batch().map(|_| ())
                } else {
                    ch.yield_batch()
                };
            }
            7 | 8 => {
                // The host reads the guest's requests.
                for _ in 0..16 {
                    match host_r.read(&mut hbuf) {
                        Ok(p) => {
                            trace!("  host reads {:?} tid {:#x}", p.kind, p.transaction_id());
                            if p.completion_requested() {
                                let fresh = host_read.insert(p.transaction_id());
                                if forged.contains(&p.transaction_id()) {
                                    w.borrow_mut().lied = true;
                                }
                                // Unless the host moved the outbound read index past what it
                                // read (then it reads whatever the guest overwrote).
                                assert!(
                                    out_tampered || fresh,
                                    "request {:#x} sent twice",
                                    p.transaction_id()
                                );
                                assert!(
                                    out_tampered || accepted.contains(&p.transaction_id()),
                                    "request {:#x} reached the host although request() failed",
                                    p.transaction_id()
                                );
                                tids.push(p.transaction_id());
                                // Only the first read of a request the guest sent gives the
                                // host a claim on the memory it names, held until the host
                                // completes it. Reading it again, or reading bytes that were
                                // never an accepted request, is possible only after the host
                                // rewrote the outbound ring's indices (op 14) and so walked its
                                // reader back over data it had consumed: that stale copy claims
                                // nothing, since the guest may reuse the memory once the host
                                // completed the request (as every guest does).
                                if let PacketKind::GpaDirect(g) = p.kind
                                    && fresh
                                    && accepted.contains(&p.transaction_id())
                                {
                                    let mut pfns = Vec::new();
                                    for r in g.ranges() {
                                        pfns.extend(r.pfns());
                                    }
                                    let mut world = w.borrow_mut();
                                    if world.stopped_serving {
                                        // DMA for a channel the host said it released.
                                        world.lied = true;
                                    } else {
                                        world.dma.insert(p.transaction_id(), pfns);
                                    }
                                }
                            }
                        }
                        Err(_) => break,
                    }
                }
                let _ = host_r.finish_drain();
            }
            9..=11 => {
                // A completion: a real id (maybe again), a forged one, or a stale generation.
                let tid = match inp.u8() % 5 {
                    0 => inp.u64(),
                    1 => tids
                        .get(inp.below(tids.len().max(1)))
                        .map_or(0, |t| t ^ (1 << 32)),
                    2 => tids.get(inp.below(tids.len().max(1))).copied().unwrap_or(1),
                    _ => {
                        if tids.is_empty() {
                            inp.u64()
                        } else {
                            tids.remove(inp.below(tids.len()))
                        }
                    }
                };
                let payload = inp.bytes(64);
                trace!("  host completes {tid:#x}");
                if !host_read.contains(&tid) {
                    forged.insert(tid);
                }
                if host_w
                    .send(&OutgoingPacket::completion(tid, &[&payload]))
                    .is_ok()
                {
                    w.borrow_mut().dma.remove(&tid);
                }
            }
            12 => {
                let payload = inp.bytes(128);
                let slices: [&[u8]; 1] = [&payload];
                let tid = inp.u64();
                let p = match inp.u8() % 4 {
                    0 => OutgoingPacket::in_band(tid, inp.bool(), &slices),
                    1 => {
                        let ranges = [TransferPageRange {
                            byte_count: inp.u32(),
                            byte_offset: inp.u32(),
                        }];
                        let _ = host_w.send(&OutgoingPacket::transfer_pages(
                            tid,
                            inp.u16(),
                            inp.bool(),
                            &ranges,
                            &[&payload],
                        ));
                        continue;
                    }
                    2 => {
                        let pfns = [inp.u64(), inp.u64()];
                        let off = inp.u16() as u32 % 4096;
                        let count = (inp.u16() as u32 % (8192 - off)).max(1);
                        let n = (off + count).div_ceil(4096) as usize;
                        let ranges = [GpaRange {
                            byte_count: count,
                            byte_offset: off,
                            pfns: &pfns[..n],
                        }];
                        let _ = host_w.send(&OutgoingPacket::gpa_direct(tid, &ranges, &[&payload]));
                        continue;
                    }
                    _ => OutgoingPacket::in_band(tid, false, &[]),
                };
                let _ = host_w.send(&p);
            }
            13 => {
                let at = inp.u32() % in_size;
                let bytes = inp.bytes(48);
                raw_in.poke(at, &bytes);
            }
            14 => {
                let (ring, size) = if inp.u8().is_multiple_of(4) {
                    out_tampered = true;
                    (&raw_out, out_size)
                } else {
                    (&raw_in, in_size)
                };
                let off = [0usize, 4, 8, 12, 0x40][inp.below(5)];
                let v = if off < 8 {
                    inp.ring_index(size)
                } else {
                    inp.u32()
                };
                trace!(
                    "  host sets {} ring word {off:#x} = {v:#x}",
                    if std::ptr::eq(ring, &raw_out) {
                        "outbound"
                    } else {
                        "inbound"
                    }
                );
                ring.ctl(off).store(v, SeqCst);
            }
            15 => {
                w.borrow_mut().send(host::rescind(relid));
                if inp.bool() {
                    let _ = bus.handle_interrupt();
                } else {
                    let _ = bus.poll();
                }
            }
            16 => {
                if inp.bool() {
                    let _ = bus.start_unload();
                    let _ = bus.poll();
                } else {
                    bus.abandon();
                    w.borrow_mut().abandon(true);
                }
            }
            17 => {
                let _ = ch.is_alive();
            }
            18 => {
                if hb.is_none() {
                    hb = HostBuffer::new(&bus, 1 + inp.below(3)).ok();
                }
            }
            19 => {
                // A GPA-direct request naming part of the host buffer.
                if let Some(b) = &hb {
                    let off = inp.below(b.len());
                    let len = 1 + inp.below(b.len() - off);
                    ctx += 1;
                    let payload = inp.bytes(32);
                    if let Ok(d) = b.dma(off, len)
                        && let Ok(id) = ch.request_dma(&[d], &[&payload], ctx)
                    {
                        trace!("  request_dma {id:?} {off:#x}+{len:#x}");
                        pending.push((id, ctx));
                        accepted.insert(id.transaction_id());
                    }
                }
            }
            _ => {
                if let Some(b) = hb.take() {
                    trace!("  release host buffer: host DMA {:x?}", w.borrow().dma);
                    let r = b.release(&mut wait(inp.u8() as u32 % 4));
                    trace!("  -> {r:?}");
                }
            }
        }
        assert!(ch.requests_in_flight() <= pending.len());
    }
    trace!("end: host lied = {}", w.borrow().lied);
    let mut failed = Vec::new();
    let _ = ch.close_with(&mut wait(4), |id, c, _| failed.push((id, c)));
    for (id, c) in failed {
        let i = pending
            .iter()
            .position(|(x, _)| *x == id)
            .expect("close failed a request not in flight");
        assert_eq!(pending.swap_remove(i).1, c);
    }
    assert!(pending.is_empty(), "requests lost at close: {pending:?}");
    if let Some(b) = hb.take() {
        let _ = b.release(&mut wait(2));
    }
}
