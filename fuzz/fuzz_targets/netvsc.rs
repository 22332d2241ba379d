//! netvsc against a hostile network host. The first input byte picks the part:
//!
//! - the pure RNDIS parsers (`rndis::parse_message`, `rndis::ppis`) on arbitrary bytes, and
//!   the RNDIS writers round-tripped through them (`src/rndis_check.rs`);
//! - an open NIC (`Nic::open`, or `Nic::open_multi` for several queues, against the
//!   NVSP/RNDIS host of `nvsp.rs`: handshake, buffers, RNDIS initialisation and queries, the
//!   offload capabilities and parameters, the RSS capabilities, SUBCHANNEL and the RSS
//!   parameters, each answer correct or hostile) whose receive path is then fed
//!   transfer-page packets on any queue — valid frames with checksum verdicts, ranges outside
//!   the buffer or shorter than a header, wrong page-set ids, garbage and oversized RNDIS
//!   messages, PPIs, indications, stray control replies — while it sends frames, bursts,
//!   checksum-offloaded frames, LSO sends and steered frames, the host holds or fails
//!   completions, sends send tables, announces VFs, rewrites the rings or rescinds, and the
//!   queues are closed and opened again.
//!
//! NIC invariants: every transfer-page packet is completed exactly once, on its channel (at
//! most once at any time; all of them once the NIC has drained, unless it counted a lost
//! completion); frames are delivered in order per queue with the bytes the host sent and
//! the checksum verdict the model gives for the offloads the host saw enabled (while no
//! hostile packet could have changed them); sent frames reach the host in order per queue,
//! intact once the host filled in an offloaded checksum, LSO sends cut into segments that
//! verify; a steered frame goes where the send table says; a send table the host sent is
//! the one in use once the primary drained; a poll never delivers more than it read; close
//! frees everything when the host confirms.
#![no_main]

use hyperv_guest_fuzz::dev::{self, Chaos, DevHal, Devices, HostPacket, HostWait, Step};
use hyperv_guest_fuzz::host::Scripted;
use hyperv_guest_fuzz::net;
use hyperv_guest_fuzz::nvsp::Nvsp;
use hyperv_guest_fuzz::nvsp_offload::{Caps, Expected, send_table, with_checksum};
use hyperv_guest_fuzz::rndis_check::parsers;
use hyperv_guest_fuzz::{Input, trace};
use libfuzzer_sys::fuzz_target;
use netvsc::nic::{MultiQueueConfig, SubQueue};
use netvsc::offload::RxChecksum;
use netvsc::protocol::{NvspVersion, rss_hash};
use netvsc::rss::MICROSOFT_RSS_KEY;
use netvsc::{NetError, Nic, NicConfig};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::{ChannelConfig, Released, Wait};

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    match inp.u8() % 4 {
        0 => parsers(&mut inp),
        _ => nic(inp),
    }
});

type Shared<'a> = Rc<RefCell<Nvsp<'a>>>;
type TheNic<'b> = Nic<'b, Scripted, DevHal, 16>;
type Subs<'b> = [Option<SubQueue<'b, Scripted, DevHal, 16>>];

/// Sub-queues the target keeps room for.
const SUB_QUEUES: usize = 3;

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

/// An RNDIS PACKET message carrying `frame`, with a checksum PPI of `ppi` first.
fn packet_message(frame: &[u8], ppi: Option<u32>) -> Vec<u8> {
    let ppi_len = if ppi.is_some() { 16 } else { 0 };
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
        if ppi.is_some() { 36 } else { 0 },
        ppi_len,
        0,
        0,
    ] {
        m.extend_from_slice(&(w as u32).to_le_bytes());
    }
    if let Some(v) = ppi {
        for w in [16u32, 0, 12, v] {
            m.extend_from_slice(&w.to_le_bytes());
        }
    }
    m.extend_from_slice(frame);
    m
}

/// A channel the host serves, chosen by the input (no input read with one channel).
fn some_relid(s: &mut Nvsp<'_>) -> u32 {
    let served = s.live();
    let i = s.inp.below(served.len());
    served.get(i).copied().unwrap_or(1)
}

fn deliver_frames(sim: &Shared<'_>, max_frame: usize) {
    let mut s = sim.borrow_mut();
    let n = 1 + s.inp.below(4);
    let frames: Vec<Vec<u8>> = (0..n).map(|_| frame(&mut s.inp, max_frame)).collect();
    let ppi = s
        .inp
        .bool()
        .then(|| s.inp.pick(&[0x5, 0x8, 0x10, 0x28, 0x9], |i| i.u32()));
    let msgs: Vec<Vec<u8>> = frames.iter().map(|f| packet_message(f, ppi)).collect();
    let slot = s.recv.as_ref().map_or(0, |r| r.slot);
    let relid = some_relid(&mut s);
    if s.deliver(relid, &msgs, None).is_some() {
        for (f, m) in frames.into_iter().zip(&msgs) {
            // Delivered if it is a valid frame that fit its slot.
            if !f.is_empty() && f.len() <= max_frame && m.len() <= slot {
                s.rx_expected.entry(relid).or_default().push_back((f, ppi));
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
            let mut m = packet_message(&f, Some(5));
            let at = 8 + s.inp.below(40);
            let v = s.inp.u32();
            m[at..at + 4].copy_from_slice(&v.to_le_bytes());
            m
        }
        2 => {
            // An indication.
            let code = s
                .inp
                .pick(&[0x4001_000B, 0x4001_000C, 0x4001_0013, 0x4001_0018], |i| {
                    i.u32()
                });
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
        4 => packet_message(&vec![0xAB; 1600 + s.inp.below(3000)], None),
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
    let relid = some_relid(&mut s);
    s.deliver(relid, &[msg], ranges);
}

fn accepted(sim: &Shared<'_>, relid: u32, frames: impl IntoIterator<Item = Expected>) {
    let mut s = sim.borrow_mut();
    s.tx_expected.entry(relid).or_default().extend(frames);
}

/// The channel of queue `q` (0: the primary).
fn relid_of(subs: &Subs<'_>, q: usize) -> Option<u32> {
    match q {
        0 => Some(1),
        _ => subs.get(q - 1)?.as_ref().map(|s| s.relid()),
    }
}

/// The queue the send table must name for `f`: the Toeplitz hash of the model's input
/// tuple under the NIC's key and hash types (hash 0 without one), table slot `hash & 15`.
fn steered_queue(nic: &TheNic<'_>, f: &[u8]) -> usize {
    let shared = nic.shared();
    let info = match shared.hash_info() {
        0 => rss_hash::LINUX_DEFAULT,
        i => i,
    };
    let hash = net::hash_input(f, info).map_or(0, |i| net::toeplitz(shared.key(), &i));
    let q = usize::from(shared.send_table().entries()[hash as usize % 16]);
    if q < shared.send_table().queues() {
        q
    } else {
        0
    }
}

/// What the target tracks of the run.
#[derive(Default)]
struct Run {
    /// Frames handed out per channel.
    delivered: BTreeMap<u32, u64>,
    rescinded: bool,
    /// The host rewrote a ring: what it reads there may not be the guest's.
    tampered: bool,
    /// A send table the host sent (valid) that the primary must have taken once drained;
    /// `table_known` false once something may have sent another.
    table: Option<[u32; 16]>,
    table_known: bool,
    /// Largest frame a poll may hand out.
    max_rx: usize,
}

impl Run {
    fn on_frame(&mut self, sim: &Shared<'_>, relid: u32, f: &[u8], v: Option<RxChecksum>) {
        *self.delivered.entry(relid).or_default() += 1;
        assert!(
            !f.is_empty() && f.len() <= self.max_rx,
            "frame of {} bytes",
            f.len()
        );
        let mut s = sim.borrow_mut();
        if s.exact {
            let (want, bits) = s
                .rx_expected
                .get_mut(&relid)
                .and_then(|q| q.pop_front())
                .expect("a frame the host never sent on this channel");
            assert_eq!(f, &want[..], "received frame changed");
            if let Some(v) = v.filter(|_| !s.offload.unsure) {
                let model = net::rx_verdict(bits.unwrap_or(0), f, s.offload.rx);
                assert_eq!(v, model, "checksum verdict of PPI {bits:?}");
            }
        }
    }

    /// After a poll of the primary that found its ring empty with nothing left to write:
    /// the host's last send table is the one in use.
    fn check_table(&mut self, nic: &TheNic<'_>, drained: bool) {
        if !drained || !self.table_known || self.tampered || self.rescinded {
            return;
        }
        if let Some(t) = self.table.take() {
            let want: [u8; 16] = t.map(|q| q as u8);
            assert_eq!(
                nic.shared().send_table().entries(),
                want,
                "the host's send table"
            );
        }
    }

    /// Frames of closed sub-channels are gone with them.
    fn forget_subs(&mut self, sim: &Shared<'_>) {
        let mut s = sim.borrow_mut();
        s.rx_expected.retain(|r, _| *r == 1);
        s.tx_expected.retain(|r, _| *r == 1);
        self.delivered.retain(|r, _| *r == 1);
    }
}

fn nic(mut inp: Input<'_>) {
    let answer_teardown = !inp.u8().is_multiple_of(8);
    let version_index = inp.below(8);
    static VERSIONS: [NvspVersion; 6] = NvspVersion::ALL_NEWEST_FIRST;
    let versions = &VERSIONS[inp.below(6)..];
    let mtu = [1500u16, 1500, 576, 68][inp.below(4)];
    let mut config = NicConfig {
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
    // RSC is never negotiated with this host, so frames stay within the MTU. One area per
    // queue the NIC may open.
    let mut rsc_storage = vec![
        0u8;
        if config.packet_filter >> 31 == 1 {
            netvsc::offload::rsc::RSC_MAX_FRAME * (1 + SUB_QUEUES)
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
    // Offloads and multi-queue: what the host offers, how many queues the guest wants.
    match host.inp.u8() % 4 {
        0 => {}
        1 => host.offload.garbage = Some(host.inp.bytes(200)),
        _ => host.offload.caps = Some(Caps::from_input(&mut host.inp)),
    }
    if !host.inp.u8().is_multiple_of(4) {
        host.offload.rss_queues = Some(1 + host.inp.below(8) as u32);
    }
    host.offload.max_grant = host.inp.below(4) as u32;
    let max_queues = 1 + host.inp.below(4) as u16;
    let key = if host.inp.bool() {
        host.inp.fill(40).try_into().unwrap()
    } else {
        MICROSOFT_RSS_KEY
    };
    host.offload.key = key.to_vec();
    config.multi_queue = MultiQueueConfig {
        max_queues,
        rss_key: key,
        queue_vps: &[],
    };
    let sim = Rc::new(RefCell::new(host));
    let mut waiter = HostWait::new(sim.clone(), 6);
    let mut subs: Vec<Option<SubQueue<'_, Scripted, DevHal, 16>>> =
        (0..SUB_QUEUES).map(|_| None).collect();
    let opened = if max_queues > 1 && rsc_storage.is_empty() {
        TheNic::open_multi(&bus, 1, &config, &mut subs, &mut waiter).map(|(n, setup)| {
            trace!("queues: {setup:?}");
            assert_eq!(n.queue_count(), setup.queues);
            assert!(setup.queues <= usize::from(max_queues));
            n
        })
    } else {
        TheNic::open_with_rsc(&bus, 1, &config, &mut rsc_storage, &mut waiter).inspect(|_| {
            if max_queues > 1 {
                waiter.restart();
            }
        })
    };
    let mut nic = match opened {
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
    let mut run = Run {
        table_known: true,
        max_rx,
        ..Run::default()
    };
    for _ in 0..64 {
        let op = {
            let mut s = sim.borrow_mut();
            if s.inp.is_empty() {
                break;
            }
            s.inp.u8() % 20
        };
        trace!("op {op}");
        match op {
            0 | 1 => deliver_frames(&sim, max_frame),
            2 => hostile_receive(&sim),
            3 | 4 => {
                let budget = 1 + sim.borrow_mut().inp.below(64);
                let drained = sim.borrow_mut().dev.queued(1) == 0;
                let mut got = Vec::new();
                let r = nic.poll(budget, |f| got.push(f.to_vec()));
                trace!("  poll {r:?}: {} frames", got.len());
                assert!(got.len() <= budget * 562, "more frames than packets allow");
                for f in got {
                    run.on_frame(&sim, 1, &f, None);
                }
                run.check_table(&nic, drained && r == Ok(false));
            }
            5 => {
                let budget = 1 + sim.borrow_mut().inp.below(8);
                if sim.borrow_mut().inp.bool() {
                    if let Ok(Some((f, v))) =
                        nic.receive_with_checksum(budget, |f, v| (f.to_vec(), v))
                    {
                        run.on_frame(&sim, 1, &f, Some(v));
                    }
                } else if let Ok(Some(f)) = nic.receive_with(budget, |f| f.to_vec()) {
                    run.on_frame(&sim, 1, &f, None);
                }
            }
            6 => {
                let f = frame(&mut sim.borrow_mut().inp, max_frame);
                match nic.send_frame(&f) {
                    Ok(()) => accepted(&sim, 1, [Expected::Frame(f)]),
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
                let n = match nic.send_batch(&refs) {
                    Ok(n) => {
                        assert!(bad.is_none_or(|b| n <= b), "a frame of a bad size taken");
                        n
                    }
                    Err(NetError::FrameSize(_)) => bad.unwrap(),
                    Err(_) => {
                        sim.borrow_mut().tx_exact = false;
                        0
                    }
                };
                accepted(&sim, 1, frames[..n].iter().cloned().map(Expected::Frame));
            }
            8 => {
                let f = frame(&mut sim.borrow_mut().inp, max_frame);
                if nic.queue_frame(&f).is_ok() {
                    accepted(&sim, 1, [Expected::Frame(f)]);
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
                let relid = some_relid(&mut s);
                let Nvsp { dev, inp, .. } = &mut *s;
                let c = dev::chaos(dev, inp, relid);
                trace!("  chaos {c:?} on {relid}");
                run.table_known = false;
                match c {
                    Chaos::Rescind => run.rescinded = true,
                    Chaos::Ring => {
                        run.tampered = true;
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
            13 => {
                let before = nic.stats().rx_not_ready;
                let r = nic.keepalive(&mut waiter);
                trace!("  keepalive {r:?}");
                // Frames that arrived meanwhile were dropped (counted), the oldest first.
                let mut s = sim.borrow_mut();
                for _ in before..nic.stats().rx_not_ready {
                    s.rx_expected.entry(1).or_default().pop_front();
                }
            }
            14 => checksum_send(&sim, &mut nic, &mut subs, max_frame),
            15 => lso_send(&sim, &mut nic, max_frame),
            16 => {
                let f = net::frame(&mut sim.borrow_mut().inp, 200);
                let want = steered_queue(&nic, &f);
                match nic.send_steered(&mut subs, &f) {
                    Ok(q) => {
                        assert_eq!(q, want, "steered off the send table");
                        let relid = relid_of(&subs, q).expect("an open queue");
                        accepted(&sim, relid, [Expected::Frame(f)]);
                    }
                    Err(NetError::FrameSize(_)) => assert!(f.len() < 14 || f.len() > max_frame),
                    Err(NetError::Busy(_)) => {}
                    Err(_) => sim.borrow_mut().tx_exact = false,
                }
            }
            17 => {
                let budget = 1 + sim.borrow_mut().inp.below(64);
                let drained = sim.borrow_mut().dev.queued(1) == 0;
                let mut got = Vec::new();
                let r = if sim.borrow_mut().inp.bool() {
                    nic.poll_queues(&mut subs, budget, |q, f| got.push((q, f.to_vec(), None)))
                } else {
                    nic.poll_with_checksum(budget, |f, v| got.push((0, f.to_vec(), Some(v))))
                };
                trace!("  poll {r:?}: {} frames", got.len());
                for (q, f, v) in got {
                    let relid = relid_of(&subs, q).expect("a frame from a closed queue");
                    run.on_frame(&sim, relid, &f, v);
                }
                run.check_table(&nic, drained && r == Ok(false));
            }
            18 => {
                let mut s = sim.borrow_mut();
                let queues = s.live().len();
                let (m, table) = send_table(&mut s.inp, queues);
                trace!("  host send table {table:?}: {m:02x?}");
                let p = HostPacket::InBand {
                    tid: 0,
                    completion: false,
                    payload: m,
                };
                if s.dev.send(1, p) {
                    match table {
                        Some(Some(t)) => run.table = Some(t),
                        Some(None) => {}
                        None => run.table_known = false,
                    }
                }
            }
            _ => {
                // Frames the primary receives during a control request are dropped
                // (counted), the oldest first.
                let before = nic.stats().rx_not_ready;
                if nic.queue_count() > 1 {
                    let r = nic.close_queues(&mut subs, &mut waiter);
                    trace!("  close_queues {r:?}");
                    run.forget_subs(&sim);
                    run.table = None;
                } else if max_queues > 1 {
                    waiter.restart();
                    let r = nic.open_queues(&mut subs, &mut waiter);
                    trace!("  open_queues {r:?}");
                    // The set-up starts the table afresh (i mod n) over any sent before.
                    run.table = None;
                    if r.is_err() {
                        sim.borrow_mut().tx_exact = false;
                    }
                }
                waiter.restart();
                let mut s = sim.borrow_mut();
                for _ in before..nic.stats().rx_not_ready {
                    s.rx_expected.entry(1).or_default().pop_front();
                }
            }
        }
    }
    drain_and_close(&sim, nic, &mut subs, &mut waiter, run, answer_teardown, &w);
}

/// A frame whose checksum is left to the NIC, on a queue the input picks.
fn checksum_send<'b>(
    sim: &Shared<'_>,
    nic: &mut TheNic<'b>,
    subs: &mut Subs<'b>,
    max_frame: usize,
) {
    let (f, q, queued) = {
        let mut s = sim.borrow_mut();
        let f = net::frame(&mut s.inp, max_frame.saturating_sub(20));
        (f, s.inp.below(nic.queue_count()), s.inp.bool())
    };
    let Some(relid) = relid_of(subs, q) else {
        return;
    };
    let Some(mut queue) = nic.queue(subs, q) else {
        return;
    };
    let r = if queued {
        queue.queue_frame_checksum(&f)
    } else {
        queue.send_frame_checksum(&f)
    };
    trace!("  checksum send of {} bytes on queue {q}: {r:?}", f.len());
    match r {
        Ok(()) => accepted(sim, relid, [Expected::Frame(with_checksum(&f))]),
        Err(NetError::FrameSize(_)) => assert!(f.len() < 14 || f.len() > max_frame),
        Err(NetError::Busy(_)) => {}
        Err(_) => sim.borrow_mut().tx_exact = false,
    }
    if queued && sim.borrow_mut().inp.bool() {
        let _ = queue.flush();
    }
}

/// A large TCP segment for the host to cut (LSO v2), or a frame that fits.
fn lso_send(sim: &Shared<'_>, nic: &mut TheNic<'_>, max_frame: usize) {
    let (f, mss) = {
        let mut s = sim.borrow_mut();
        let f = net::frame(&mut s.inp, 66000);
        (f, s.inp.pick(&[1460, 1448, 536], |i| 1 + i.below(2000)))
    };
    let r = nic.send_lso(&f, mss);
    trace!("  LSO send of {} bytes, MSS {mss}: {r:?}", f.len());
    match r {
        Ok(()) if f.len() <= max_frame => {
            accepted(sim, 1, [Expected::Frame(with_checksum(&f))]);
        }
        Ok(()) => accepted(sim, 1, [Expected::Lso { frame: f, mss }]),
        Err(NetError::FrameSize(_)) => assert!(f.len() < 14 || f.len() > max_frame),
        Err(NetError::Lso(_)) => assert!(f.len() > max_frame, "LSO refused a frame that fits"),
        Err(NetError::Busy(_) | NetError::InvalidArgument(_)) => {}
        Err(_) => sim.borrow_mut().tx_exact = false,
    }
}

/// Drain: the host answers, the NIC receives and completes on every queue, until the host
/// has nothing left to write and the NIC found its rings empty twice in a row. Then the
/// end-of-run invariants, and close.
fn drain_and_close<'b>(
    sim: &Shared<'_>,
    mut nic: TheNic<'b>,
    subs: &mut Subs<'b>,
    waiter: &mut HostWait<Nvsp<'_>>,
    mut run: Run,
    answer_teardown: bool,
    w: &Rc<RefCell<hyperv_guest_fuzz::host::World>>,
) {
    let queued = |sim: &Shared<'_>| {
        let mut s = sim.borrow_mut();
        s.live().into_iter().map(|r| s.dev.queued(r)).sum::<usize>()
    };
    let mut alive = true;
    let mut quiet = 0;
    for _ in 0..64 {
        sim.borrow_mut().step();
        let drained = sim.borrow_mut().dev.queued(1) == 0;
        let mut got = Vec::new();
        let r = nic.poll_queues(subs, 64, |q, f| got.push((q, f.to_vec())));
        trace!("  drain poll {r:?}");
        for (q, f) in got {
            let relid = relid_of(subs, q).expect("an open queue");
            run.on_frame(sim, relid, &f, None);
        }
        match r {
            Err(_) => {
                alive = false;
                break;
            }
            Ok(false) if queued(sim) == 0 => {
                run.check_table(&nic, drained);
                quiet += 1;
                if quiet == 2 {
                    break;
                }
            }
            Ok(_) => quiet = 0,
        }
    }
    sim.borrow_mut().step();
    let left = queued(sim);
    {
        let s = sim.borrow();
        let mut stats = vec![(1, nic.stats())];
        stats.extend(subs.iter().flatten().map(|q| (q.relid(), q.stats())));
        let lost: u64 = stats.iter().map(|(_, s)| s.rx_completions_lost).sum();
        let lied = s.dev.world.borrow().lied;
        trace!(
            "end: {stats:?}, outstanding {:?}, filled {}",
            s.outstanding.keys().collect::<Vec<_>>(),
            s.offload.filled
        );
        if alive && !run.rescinded && !run.tampered && !lied && lost == 0 && left == 0 {
            assert!(
                s.outstanding.is_empty(),
                "transfer-page packets never completed: {:?}",
                s.outstanding
            );
        }
        for (relid, st) in &stats {
            assert_eq!(
                st.rx_frames,
                run.delivered.get(relid).copied().unwrap_or(0),
                "rx_frames of channel {relid} counts the frames handed out"
            );
        }
        if alive && !run.rescinded && !lied && s.tx_exact && s.held.is_empty() {
            for (relid, q) in &s.tx_expected {
                assert!(
                    q.is_empty(),
                    "{} accepted frames never reached the host on channel {relid}",
                    q.len()
                );
            }
        }
    }
    waiter.restart();
    let released = if nic.queue_count() > 1 {
        nic.close_all(subs, waiter)
    } else {
        nic.close(waiter)
    };
    let lied = w.borrow().lied;
    if answer_teardown && !run.rescinded && !lied {
        assert_eq!(released, Released::Freed, "close with a host that confirms");
    }
}
