//! netvsc against a hostile network host. The first input byte picks the part:
//!
//! - the pure RNDIS parsers (`rndis::parse_message`, `rndis::ppis`) on arbitrary bytes, and
//!   the RNDIS writers round-tripped through them;
//! - an open NIC (`Nic::open` against the NVSP/RNDIS host of `nvsp.rs`: handshake, buffers,
//!   RNDIS initialisation and queries, each answer correct or hostile) whose receive path is
//!   then fed transfer-page packets — valid frames, ranges outside the buffer or shorter than
//!   a header, wrong page-set ids, garbage and oversized RNDIS messages, PPIs, indications,
//!   stray control replies — while it sends frames and bursts, the host holds or fails
//!   completions, announces VFs, rewrites the rings or rescinds.
//!
//! NIC invariants: every transfer-page packet is completed exactly once (at most once at
//! any time; all of them once the NIC has drained, unless it counted a lost completion);
//! frames are delivered in order with the bytes the host sent (while no hostile packet could
//! have changed them); sent frames reach the host in order and intact; a poll never delivers
//! more than it read; close frees everything when the host confirms.
#![no_main]

use hyperv_guest_fuzz::dev::{self, Chaos, DevHal, Devices, HostWait, Step};
use hyperv_guest_fuzz::host::Scripted;
use hyperv_guest_fuzz::nvsp::Nvsp;
use hyperv_guest_fuzz::{Input, trace};
use libfuzzer_sys::fuzz_target;
use netvsc::protocol::{NvspVersion, RNDIS_OFFSET_BASE};
use netvsc::rndis::{
    Message, Ppi, RndisError, parse_message, ppis, write_oid_request, write_packet,
};
use netvsc::{NetError, Nic, NicConfig};
use std::cell::RefCell;
use std::rc::Rc;
use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::{ChannelConfig, Released};

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    match inp.u8() % 4 {
        0 => parsers(&mut inp),
        _ => nic(inp),
    }
});

fn le32(b: &[u8], at: usize) -> usize {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()) as usize)
}

/// Whether `inner` is `outer[at..at + inner.len()]`.
fn is_at(outer: &[u8], inner: &[u8], at: usize) -> bool {
    inner.is_empty()
        || inner.as_ptr() as usize == outer.as_ptr() as usize + at
            && at + inner.len() <= outer.len()
}

/// The PPI walk as devices §2.11 defines it: size ≥ 12 and within what is left, offset in
/// 12..=size; the first bad element ends the walk.
fn ppi_model(area: &[u8]) -> Vec<Result<(u32, usize, usize), ()>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < area.len() {
        let rest = &area[at..];
        if rest.len() < 12 {
            out.push(Err(()));
            break;
        }
        let (size, ty, off) = (le32(rest, 0), le32(rest, 4) as u32, le32(rest, 8));
        if size < 12 || size > rest.len() || off < 12 || off > size {
            out.push(Err(()));
            break;
        }
        out.push(Ok((ty, at + off, size - off)));
        at += size;
    }
    out
}

fn check_ppis(area: &[u8]) {
    let got: Vec<Result<Ppi<'_>, RndisError>> = ppis(area).collect();
    let want = ppi_model(area);
    assert_eq!(got.len(), want.len(), "PPI walk length");
    for (g, w) in got.iter().zip(&want) {
        match (g, w) {
            (Ok(p), Ok((ty, at, len))) => {
                assert_eq!(p.ppi_type, *ty);
                assert_eq!(p.payload.len(), *len);
                assert!(is_at(area, p.payload, *at), "PPI payload misplaced");
            }
            (Err(RndisError::BadPpi), Err(())) => {}
            other => panic!("PPI walk: {other:?}"),
        }
    }
}

/// The bytes at `offset` (from byte 8) of length `len` in `msg`, as the guest must find them.
fn range(msg: &[u8], offset: usize, len: usize) -> Option<usize> {
    let start = offset.checked_add(RNDIS_OFFSET_BASE)?;
    (start.checked_add(len)? <= msg.len()).then_some(start)
}

fn parsers(inp: &mut Input<'_>) {
    for _ in 0..6 {
        if inp.is_empty() {
            break;
        }
        let b = inp.bytes(300);
        check_ppis(&b);
        let r = parse_message(&b);
        let len = le32(&b, 4);
        if b.len() < 8 || len < 8 || len > b.len() {
            assert!(r.is_err(), "{r:?}");
            continue;
        }
        let msg = &b[..len];
        match r {
            Ok(Message::Packet { frame, ppi }) => {
                assert_eq!(le32(&b, 0), 1);
                assert!(len >= 44 && !frame.is_empty());
                let at = range(msg, le32(msg, 8), le32(msg, 12)).expect("frame inside");
                assert!(at >= 44 && is_at(msg, frame, at), "frame misplaced");
                assert_eq!(frame.len(), le32(msg, 12));
                if !ppi.is_empty() {
                    let at = range(msg, le32(msg, 28), le32(msg, 32)).expect("PPIs inside");
                    assert!(at >= 44 && is_at(msg, ppi, at), "PPIs misplaced");
                }
                assert!(
                    ppis(ppi).all(|p| p.is_ok()),
                    "a PACKET accepted with bad PPIs"
                );
                assert_eq!(
                    (le32(msg, 16), le32(msg, 20), le32(msg, 24), le32(msg, 36)),
                    (0, 0, 0, 0)
                );
            }
            Ok(Message::QueryComplete {
                info,
                request_id,
                status,
            }) => {
                assert_eq!(
                    (request_id, status),
                    (le32(msg, 8) as u32, le32(msg, 12) as u32)
                );
                if !info.is_empty() {
                    let at = range(msg, le32(msg, 20), le32(msg, 16)).expect("info inside");
                    assert!(at >= 24 && is_at(msg, info, at), "info misplaced");
                }
            }
            Ok(Message::IndicateStatus { status, buffer }) => {
                assert_eq!(status, le32(msg, 8) as u32);
                if !buffer.is_empty() {
                    let at = range(msg, le32(msg, 16), le32(msg, 12)).expect("buffer inside");
                    assert!(
                        at >= 20 && is_at(msg, buffer, at),
                        "status buffer misplaced"
                    );
                }
            }
            Ok(Message::InitComplete(c)) => {
                assert!(len >= 52 && c.request_id.get() as usize == le32(msg, 8))
            }
            Ok(Message::SetComplete { .. } | Message::KeepaliveComplete { .. }) => {
                assert!(len >= 16)
            }
            Err(_) => {}
        }
        // Writers round-trip through the parser.
        let frame = inp.bytes(200);
        let mut out = vec![0u8; inp.below(300)];
        match write_packet(&mut out, &frame) {
            Some(n) => match parse_message(&out[..n]) {
                Ok(Message::Packet { frame: f, ppi }) => {
                    assert_eq!(f, &frame[..]);
                    assert!(ppi.is_empty());
                }
                other => assert!(
                    frame.is_empty() && other == Err(RndisError::EmptyPacket),
                    "{other:?}"
                ),
            },
            None => assert!(out.len() < netvsc::rndis::packet_message_len(frame.len())),
        }
        let info = inp.bytes(40);
        let mut out = vec![0u8; 128];
        let (id, oid) = (inp.u32(), inp.u32());
        let n = write_oid_request(&mut out, 5, id, oid, &info).unwrap();
        assert_eq!(
            (le32(&out, 0), le32(&out, 4), le32(&out, 8), le32(&out, 12)),
            (5, n, id as usize, oid as usize)
        );
        assert_eq!(le32(&out, 16), info.len());
        if !info.is_empty() {
            assert_eq!(&out[8 + le32(&out, 20)..n], &info[..]);
        }
    }
}

type Shared<'a> = Rc<RefCell<Nvsp<'a>>>;
type TheNic<'b> = Nic<'b, Scripted, DevHal, 16>;

/// A frame from the input: an Ethernet header and a payload of the given length.
fn frame(inp: &mut Input<'_>, max: usize) -> Vec<u8> {
    let len = match inp.u8() % 8 {
        0 => inp.below(max + 20),
        1 => 14,
        _ => 14 + inp.below(120),
    };
    let mut f = inp.fill(len.min(max + 20));
    if f.len() >= 12 {
        f[..6].copy_from_slice(&[0x00, 0x15, 0x5D, 1, 2, 3]);
    }
    f
}

/// An RNDIS PACKET message carrying `frame`, optionally with a checksum PPI first.
fn packet_message(frame: &[u8], ppi: bool) -> Vec<u8> {
    let ppi_len = if ppi { 16 } else { 0 };
    let len = 44 + ppi_len + frame.len();
    let mut m = Vec::with_capacity(len);
    for w in [
        1,
        len,
        36 + ppi_len,
        frame.len(),
        0,
        0,
        0,
        if ppi { 36 } else { 0 },
        ppi_len,
        0,
        0,
    ] {
        m.extend_from_slice(&(w as u32).to_le_bytes());
    }
    if ppi {
        for w in [16u32, 0, 12, 0x5] {
            m.extend_from_slice(&w.to_le_bytes());
        }
    }
    m.extend_from_slice(frame);
    m
}

fn deliver_frames(sim: &Shared<'_>, max_frame: usize) {
    let mut s = sim.borrow_mut();
    let n = 1 + s.inp.below(4);
    let frames: Vec<Vec<u8>> = (0..n).map(|_| frame(&mut s.inp, max_frame)).collect();
    let ppi = s.inp.bool();
    let msgs: Vec<Vec<u8>> = frames.iter().map(|f| packet_message(f, ppi)).collect();
    let slot = s.recv.as_ref().map_or(0, |r| r.slot);
    if s.deliver(&msgs, None).is_some() {
        for (f, m) in frames.into_iter().zip(&msgs) {
            // Delivered if it is a valid frame that fit its slot.
            if !f.is_empty() && f.len() <= max_frame && m.len() <= slot {
                s.rx_expected.push_back(f);
            }
        }
    }
}

fn hostile_receive(sim: &Shared<'_>) {
    let mut s = sim.borrow_mut();
    let was_exact = s.exact;
    let mut harmless = false;
    let slot = s.recv.as_ref().map_or(1, |r| r.slot) as u32;
    let msg = match s.inp.u8() % 6 {
        0 => s.inp.bytes(200),
        1 => {
            let f = s.inp.bytes(64);
            let mut m = packet_message(&f, true);
            let at = 8 + s.inp.below(40);
            let v = s.inp.u32();
            m[at..at + 4].copy_from_slice(&v.to_le_bytes());
            m
        }
        2 => {
            // An indication.
            let code = [
                0x4001_000B,
                0x4001_000C,
                0x4001_0013,
                0x4001_0018,
                s.inp.u32(),
            ][s.inp.below(5)];
            let buf = s.inp.bytes(8);
            let mut m = Vec::new();
            for w in [
                7,
                20 + buf.len() as u32,
                code,
                buf.len() as u32,
                if buf.is_empty() { 0 } else { 12 },
            ] {
                m.extend_from_slice(&w.to_le_bytes());
            }
            m.extend_from_slice(&buf);
            harmless = true; // an indication changes no frame
            m
        }
        3 => {
            // A stray control reply.
            let id = u32::from(s.inp.u8() % 8);
            let mut m = Vec::new();
            for w in [0x8000_0005u32, 16, id, 0] {
                m.extend_from_slice(&w.to_le_bytes());
            }
            m
        }
        4 => packet_message(&vec![0xAB; 1600 + s.inp.below(3000)], false),
        _ => vec![0; s.inp.below(12)],
    };
    let ranges = match s.inp.u8() % 6 {
        0 => None,
        1 => Some(vec![(s.inp.u32(), s.inp.u32())]),
        2 => Some(vec![(msg.len() as u32, s.inp.u32() % (64 * slot))]),
        3 => Some(vec![]),
        4 => Some(
            (0..1 + s.inp.below(600))
                .map(|i| (msg.len() as u32, i as u32 * slot))
                .collect(),
        ),
        _ => Some(vec![(s.inp.u32() % 16, 0)]),
    };
    // Ranges of its own may name other slots, with other frames in them.
    s.exact = was_exact && harmless && ranges.is_none();
    s.deliver(&[msg], ranges);
}

fn accepted(sim: &Shared<'_>, frames: &[Vec<u8>]) {
    let mut s = sim.borrow_mut();
    s.tx_expected.extend(frames.iter().cloned());
}

fn nic(mut inp: Input<'_>) {
    let answer_teardown = !inp.u8().is_multiple_of(8);
    let version_index = inp.below(8);
    static VERSIONS: [NvspVersion; 6] = NvspVersion::ALL_NEWEST_FIRST;
    let versions = &VERSIONS[inp.below(6)..];
    let mtu = [1500u16, 1500, 576, 68][inp.below(4)];
    let config = NicConfig {
        versions,
        mtu,
        recv_buffer_bytes: (4 + inp.below(60)) * 4096,
        send_buffer_bytes: (1 + inp.below(16)) * 4096,
        packet_filter: inp.u32(),
        channel: ChannelConfig {
            outbound_pages: 2 + inp.below(8),
            inbound_pages: 2 + inp.below(8),
            ..ChannelConfig::default()
        },
        offloads: inp.u8().is_multiple_of(2),
        multi_queue: Default::default(),
        rsc: true,
    };
    // Half the NICs have RSC reassembly storage (chosen by a bit already read, so the seeds
    // keep their meaning): fragments the host makes up are then reassembled, not dropped;
    // RSC is never negotiated with this host, so frames stay within the MTU.
    let mut rsc_storage = vec![
        0u8;
        if config.packet_filter >> 31 == 1 {
            netvsc::offload::rsc::RSC_MAX_FRAME
        } else {
            0
        }
    ];
    let w = dev::world(
        vec![dev::offer(DeviceClass::Network, 1, 0, 0, 0)],
        answer_teardown,
    );
    let bus = dev::connect(&w, DevHal::new(&w), version_index);
    let mut host = Nvsp::new(Devices::new(w.clone()), inp);
    host.host_max = [0x6_0001, 0x6_0000, 0x5_0000, 0x4_0000, 0x3_0002, 2][host.inp.below(6)];
    host.section_size = [6144, 1560, 2048, 16384][host.inp.below(4)];
    host.slot_size = [1806, 1600, 2048, 512, 4096][host.inp.below(5)];
    host.packing = (u32::from(host.inp.u8() % 17), u32::from(host.inp.u8() % 8));
    host.max_frame = [1500, 1500, 700, 67, 9000][host.inp.below(5)];
    let sim = Rc::new(RefCell::new(host));
    let mut waiter = HostWait::new(sim.clone(), 6);
    let mut nic = match TheNic::open_with_rsc(&bus, 1, &config, &mut rsc_storage, &mut waiter) {
        Ok(n) => n,
        Err(e) => {
            trace!("open: {e}");
            return;
        }
    };
    {
        let s = sim.borrow();
        if s.exact {
            assert_eq!(nic.mac(), s.mac);
            assert_eq!(Some(nic.info().version.0), s.version);
        }
    }
    let max_frame = nic.max_frame_len();
    // A coalesced frame may exceed the MTU (if this host ever enabled RSC).
    let max_rx = if nic.offloads().rsc {
        netvsc::offload::rsc::RSC_MAX_FRAME
    } else {
        max_frame
    };
    let mut rescinded = false;
    // The host rewrote a ring: what it reads there may not be the guest's.
    let mut tampered = false;
    let mut delivered = 0u64;
    let mut on_frame = |sim: &Shared<'_>, f: &[u8]| {
        delivered += 1;
        let mut s = sim.borrow_mut();
        assert!(
            !f.is_empty() && f.len() <= max_rx,
            "frame of {} bytes",
            f.len()
        );
        if s.exact {
            let want = s
                .rx_expected
                .pop_front()
                .expect("a frame the host never sent");
            assert_eq!(f, &want[..], "received frame changed");
        }
    };
    for _ in 0..64 {
        let op = {
            let mut s = sim.borrow_mut();
            if s.inp.is_empty() {
                break;
            }
            s.inp.u8() % 14
        };
        trace!("op {op}");
        match op {
            0 | 1 => deliver_frames(&sim, max_frame),
            2 => hostile_receive(&sim),
            3 | 4 => {
                let budget = 1 + sim.borrow_mut().inp.below(64);
                let mut got = Vec::new();
                let r = nic.poll(budget, |f| got.push(f.to_vec()));
                trace!("  poll {r:?}: {} frames", got.len());
                assert!(got.len() <= budget * 562, "more frames than packets allow");
                for f in got {
                    on_frame(&sim, &f);
                }
            }
            5 => {
                let budget = 1 + sim.borrow_mut().inp.below(8);
                if let Ok(Some(f)) = nic.receive_with(budget, |f| f.to_vec()) {
                    on_frame(&sim, &f);
                }
            }
            6 => {
                let f = frame(&mut sim.borrow_mut().inp, max_frame);
                match nic.send_frame(&f) {
                    Ok(()) => accepted(&sim, &[f]),
                    Err(NetError::FrameSize(_)) => assert!(f.len() < 14 || f.len() > max_frame),
                    Err(NetError::Busy(_)) => {}
                    Err(_) => sim.borrow_mut().tx_exact = false,
                }
            }
            7 => {
                let frames: Vec<Vec<u8>> = {
                    let mut s = sim.borrow_mut();
                    let n = 1 + s.inp.below(10);
                    (0..n).map(|_| frame(&mut s.inp, max_frame)).collect()
                };
                let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
                let bad = frames
                    .iter()
                    .position(|f| f.len() < 14 || f.len() > max_frame);
                match nic.send_batch(&refs) {
                    Ok(n) => {
                        assert!(bad.is_none_or(|b| n <= b), "a frame of a bad size taken");
                        accepted(&sim, &frames[..n]);
                    }
                    Err(NetError::FrameSize(_)) => accepted(&sim, &frames[..bad.unwrap()]),
                    Err(_) => sim.borrow_mut().tx_exact = false,
                }
            }
            8 => {
                let f = frame(&mut sim.borrow_mut().inp, max_frame);
                if nic.queue_frame(&f).is_ok() {
                    accepted(&sim, &[f]);
                }
                if sim.borrow_mut().inp.bool() {
                    let _ = nic.flush();
                }
            }
            9 => sim.borrow_mut().step(),
            10 => {
                let mut s = sim.borrow_mut();
                for _ in 0..1 + s.inp.below(3) {
                    let n = s.held.len().max(1);
                    let i = s.inp.below(n);
                    s.release(i);
                }
                s.dev.flush_all();
            }
            11 => {
                let mut s = sim.borrow_mut();
                let m = if s.inp.bool() {
                    let a = u32::from(s.inp.u8() % 3);
                    let serial = s.inp.u32();
                    [128u32, a, serial]
                } else {
                    [129, u32::from(s.inp.u8() % 3), 0]
                };
                let mut p: Vec<u8> = m.iter().flat_map(|w| w.to_le_bytes()).collect();
                p.resize(40, 0);
                s.ask(p);
            }
            12 => {
                let mut s = sim.borrow_mut();
                s.untracked = true;
                let Nvsp { dev, inp, .. } = &mut *s;
                let c = dev::chaos(dev, inp, 1);
                trace!("  chaos {c:?}");
                match c {
                    Chaos::Rescind => rescinded = true,
                    Chaos::Ring => {
                        tampered = true;
                        s.exact = false;
                        s.tx_exact = false;
                    }
                    Chaos::Packet => {
                        // A completion for an id the host never read frees a section the
                        // host has not read yet: what it then reads there is newer.
                        s.exact = false;
                        s.tx_exact = false;
                    }
                }
            }
            _ => {
                let before = nic.stats().rx_not_ready;
                let r = nic.keepalive(&mut waiter);
                trace!("  keepalive {r:?}");
                // Frames that arrived meanwhile were dropped (counted), the oldest first.
                let mut s = sim.borrow_mut();
                for _ in before..nic.stats().rx_not_ready {
                    s.rx_expected.pop_front();
                }
            }
        }
    }
    // Drain: the host answers, the NIC receives and completes, until the host has nothing
    // left to write and the NIC found its ring empty twice in a row.
    let mut alive = true;
    let mut quiet = 0;
    for _ in 0..64 {
        sim.borrow_mut().step();
        let mut got = Vec::new();
        let r = nic.poll(64, |f| got.push(f.to_vec()));
        trace!("  drain poll {r:?}");
        for f in got {
            on_frame(&sim, &f);
        }
        match r {
            Err(_) => {
                alive = false;
                break;
            }
            Ok(false) if sim.borrow_mut().dev.queued(1) == 0 => {
                quiet += 1;
                if quiet == 2 {
                    break;
                }
            }
            Ok(_) => quiet = 0,
        }
    }
    sim.borrow_mut().step();
    let queued = sim.borrow_mut().dev.queued(1);
    {
        let mut s = sim.borrow_mut();
        let d = &mut s.dev;
        trace!(
            "  inbound w {:?} r {:?} mask {:?}, outbound w {:?} r {:?}",
            d.control(1, dev::Dir::Inbound, 0),
            d.control(1, dev::Dir::Inbound, 4),
            d.control(1, dev::Dir::Inbound, 8),
            d.control(1, dev::Dir::Outbound, 0),
            d.control(1, dev::Dir::Outbound, 4)
        );
    }
    {
        let s = sim.borrow();
        let stats = nic.stats();
        let lied = s.dev.world.borrow().lied;
        trace!(
            "end: {stats:?}, outstanding {:?}",
            s.outstanding.keys().collect::<Vec<_>>()
        );
        if alive
            && !rescinded
            && !tampered
            && !lied
            && stats.rx_completions_lost == 0
            && queued == 0
        {
            assert!(
                s.outstanding.is_empty(),
                "transfer-page packets never completed: {:?}",
                s.outstanding.keys().collect::<Vec<_>>()
            );
        }
        assert_eq!(
            stats.rx_frames, delivered,
            "rx_frames counts the frames handed out"
        );
        if alive && !rescinded && !lied && s.tx_exact && s.held.is_empty() {
            assert!(
                s.tx_expected.is_empty(),
                "{} accepted frames never reached the host",
                s.tx_expected.len()
            );
        }
    }
    let released = nic.close(&mut waiter);
    let lied = w.borrow().lied;
    if answer_teardown && !rescinded && !lied {
        assert_eq!(released, Released::Freed, "close with a host that confirms");
    }
}
