//! Channels against a scripted host that answers control messages and echoes ring packets.

use super::*;
use crate::connection::{ConnectionConfig, ConnectionState};
use crate::protocol::{
    GpadlCreated, GpadlTorndown, MessageHeader, MessageType, OfferChannel, OpenResult,
    VersionResponseWithFeatures,
};
use crate::ring::PacketType;
use crate::test_util::{Scripted, StdHal};
use crate::wait::BoundedWait;
use zerocopy::{FromZeros, IntoBytes};
extern crate std;
use std::cell::RefCell;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

type Conn = Connection<Scripted, StdHal>;

#[derive(Default)]
struct HostSide {
    seen: usize,
    withhold_open: bool,
    echo: bool,
    gpadl_base: std::collections::HashMap<u32, u64>,
    rings: Option<(RingReader<RawRingMemory>, RingWriter<RawRingMemory>)>,
    closes: usize,
    released: usize,
}

#[derive(Clone)]
struct Host(Scripted, Rc<RefCell<HostSide>>);

impl Host {
    fn reply(&self, m: &[u8]) {
        self.0.0.borrow_mut().inbox.push_back(m.to_vec());
    }

    /// Answers control messages and echoes ring packets.
    fn step(&self) {
        let posted: Vec<(u32, Vec<u8>)> = {
            let s = self.0.0.borrow();
            s.posted[self.1.borrow().seen..].to_vec()
        };
        self.1.borrow_mut().seen += posted.len();
        for (_, p) in posted {
            let u32_at = |o: usize| u32::from_le_bytes(p[o..o + 4].try_into().unwrap());
            match MessageType(u32_at(0)) {
                MessageType::GPADL_HEADER => {
                    let pfn = u64::from_le_bytes(p[28..36].try_into().unwrap());
                    self.1.borrow_mut().gpadl_base.insert(u32_at(12), pfn << 12);
                    let mut g = GpadlCreated::new_zeroed();
                    g.header = MessageHeader::new(MessageType::GPADL_CREATED);
                    g.relid = u32_at(8);
                    g.gpadl_handle = u32_at(12);
                    self.reply(g.as_bytes());
                }
                MessageType::OPENCHANNEL => {
                    let base = self.1.borrow().gpadl_base[&u32_at(16)] as *mut u8;
                    let k = u32_at(24) as usize;
                    // SAFETY: identity-mapped StdHal pages of the ring GPADL (test host).
                    let (out, inb) = unsafe {
                        (
                            RawRingMemory::from_pages(
                                NonNull::new(base).unwrap(),
                                ((k - 1) * 4096) as u32,
                            )
                            .unwrap(),
                            RawRingMemory::from_pages(
                                NonNull::new(base.add(k * 4096)).unwrap(),
                                ((ChannelConfig::default().inbound_pages - 1) * 4096) as u32,
                            )
                            .unwrap(),
                        )
                    };
                    self.1.borrow_mut().rings =
                        Some((RingReader::new(out).unwrap(), RingWriter::new(inb).unwrap()));
                    if !self.1.borrow().withhold_open {
                        let mut r = OpenResult::new_zeroed();
                        r.header = MessageHeader::new(MessageType::OPENCHANNEL_RESULT);
                        r.relid = u32_at(8);
                        r.open_id = u32_at(12);
                        self.reply(r.as_bytes());
                    }
                }
                MessageType::CLOSECHANNEL => {
                    self.1.borrow_mut().rings = None;
                    self.1.borrow_mut().closes += 1;
                }
                MessageType::GPADL_TEARDOWN => {
                    let mut t = GpadlTorndown::new_zeroed();
                    t.header = MessageHeader::new(MessageType::GPADL_TORNDOWN);
                    t.gpadl_handle = u32_at(12);
                    self.reply(t.as_bytes());
                }
                MessageType::RELID_RELEASED => self.1.borrow_mut().released += 1,
                _ => {}
            }
        }
        let mut side = self.1.borrow_mut();
        let echo = side.echo;
        if let Some((reader, writer)) = side.rings.as_mut() {
            let mut buf = vec![0u8; 65536];
            #[allow(clippy::while_immutable_condition)] // left by `break`
            while echo {
                let Ok(p) = reader.read(&mut buf) else { break };
                let payload = p.payload().to_vec();
                let tid = p.transaction_id();
                let parts = [&payload[..]];
                let out = if p.completion_requested() {
                    OutgoingPacket::completion(tid, &parts)
                } else {
                    OutgoingPacket::in_band(tid, false, &parts)
                };
                let _ = writer.send(&out);
            }
            let _ = reader.publish();
        }
    }
}

fn setup() -> (Conn, Host) {
    let t = Scripted::default();
    let host = Host(
        t.clone(),
        Rc::new(RefCell::new(HostSide {
            echo: true,
            ..Default::default()
        })),
    );
    let mut c = Connection::new(t, StdHal, ConnectionConfig::default());
    c.start_connect().unwrap();
    let mut r = VersionResponseWithFeatures::new_zeroed();
    r.base.header = MessageHeader::new(MessageType::VERSION_RESPONSE);
    r.base.version_supported = 1;
    r.base.selected_version_or_connection_id = 1;
    host.reply(r.as_bytes());
    let mut o = OfferChannel::new_zeroed();
    o.header = MessageHeader::new(MessageType::OFFERCHANNEL);
    o.relid = 3;
    o.connection_id = 0x33;
    o.is_dedicated_interrupt = 1;
    host.reply(o.as_bytes());
    host.reply(MessageHeader::new(MessageType::ALLOFFERS_DELIVERED).as_bytes());
    c.poll();
    assert_eq!(c.state(), ConnectionState::Connected);
    host.1.borrow_mut().seen = host.0.0.borrow().posted.len();
    (c, host)
}

fn waiter(h: &Host) -> BoundedWait<impl FnMut() + '_> {
    BoundedWait::new(50, move || h.step())
}

#[test]
fn echo_round_trip_and_close() {
    let (mut c, h) = setup();
    let mut ch = Channel::open(&mut c, 3, &ChannelConfig::default(), &mut waiter(&h)).unwrap();
    let msg = *b"hello VMBus host";
    let id = ch
        .send_request(&c, &[&msg[..]], 7, RequestMode::Await)
        .unwrap();
    let mut comp = [0u8; 64];
    let mut rx = vec![0u8; 65536];
    let len = ch
        .wait_completion(&mut c, id, &mut comp, &mut rx, |_| {}, &mut waiter(&h))
        .unwrap();
    assert_eq!(&comp[..msg.len()], &msg);
    assert!(len >= msg.len());
    // Plain in-band: echoed as in-band.
    ch.send(&c, &[b"ping", b"pong"]).unwrap();
    h.step();
    let mut got = Vec::new();
    ch.poll(&c, &mut rx, |r| {
        if let Received::Packet(p) = r {
            assert_eq!(p.packet_type(), PacketType::DATA_IN_BAND);
            got.extend_from_slice(&p.payload()[..8]);
        }
    })
    .unwrap();
    assert_eq!(&got, b"pingpong");
    // The offer had no monitor: signals went through HvSignalEvent on its connection id.
    assert!(h.0.0.borrow().signals.iter().all(|&s| s == 0x33));
    assert!(!h.0.0.borrow().signals.is_empty());
    ch.close(&mut c, &mut waiter(&h)).unwrap();
    assert_eq!(h.1.borrow().closes, 1);
    assert!(c.gpadls().is_empty());
    // Reopen works (open/close loop).
    for _ in 0..20 {
        let ch = Channel::open(&mut c, 3, &ChannelConfig::default(), &mut waiter(&h)).unwrap();
        ch.close(&mut c, &mut waiter(&h)).unwrap();
    }
    assert!(c.gpadls().is_empty());
}

#[test]
fn rescind_fails_requests_in_flight() {
    let (mut c, h) = setup();
    let mut ch = Channel::open(&mut c, 3, &ChannelConfig::default(), &mut waiter(&h)).unwrap();
    h.1.borrow_mut().echo = false;
    let ids: Vec<_> = (0..5)
        .map(|i| {
            ch.send_request(&c, &[b"io"], i, RequestMode::Await)
                .unwrap()
        })
        .collect();
    assert_eq!(ch.requests_in_flight(), 5);
    let mut m = MessageHeader::new(MessageType::RESCIND_CHANNELOFFER)
        .as_bytes()
        .to_vec();
    m.extend_from_slice(&3u32.to_le_bytes());
    h.reply(&m);
    c.poll();
    let mut rx = vec![0u8; 65536];
    assert_eq!(ch.poll(&c, &mut rx, |_| {}), Err(ChannelError::Rescinded));
    for id in ids {
        assert_eq!(
            ch.take_completion(id, &mut []),
            Err(ChannelError::Rescinded)
        );
    }
    assert_eq!(ch.send(&c, &[b"x"]), Err(ChannelError::Rescinded));
    ch.close(&mut c, &mut waiter(&h)).unwrap();
    h.step();
    assert_eq!(h.1.borrow().released, 1);
    assert!(c.offers().is_empty());
}

#[test]
fn withheld_open_times_out_and_rescind_cancels_open() {
    let (mut c, h) = setup();
    h.1.borrow_mut().withhold_open = true;
    let r = Channel::open(&mut c, 3, &ChannelConfig::default(), &mut waiter(&h));
    assert_eq!(r.err(), Some(ChannelError::Timeout));
    // The abort closed the half-open channel; the offer is free for another open.
    let mut p = PendingOpen::start(&mut c, 3, &ChannelConfig::default()).unwrap();
    h.step();
    c.poll();
    assert_eq!(p.poll(&mut c).unwrap().map(|_| ()), None);
    h.step();
    c.poll();
    assert!(p.poll(&mut c).unwrap().is_none());
    let mut m = MessageHeader::new(MessageType::RESCIND_CHANNELOFFER)
        .as_bytes()
        .to_vec();
    m.extend_from_slice(&3u32.to_le_bytes());
    h.reply(&m);
    c.poll();
    assert_eq!(p.poll(&mut c).err(), Some(ChannelError::Rescinded));
    p.abort(&mut c, &mut waiter(&h));
    h.step();
    assert_eq!(h.1.borrow().released, 1);
}

#[test]
fn corrupt_ring_is_an_error_not_a_panic() {
    let (mut c, h) = setup();
    let mut ch = Channel::open(&mut c, 3, &ChannelConfig::default(), &mut waiter(&h)).unwrap();
    h.1.borrow_mut().echo = false;
    let id = ch
        .send_request(&c, &[b"io"], 1, RequestMode::Await)
        .unwrap();
    // The host scribbles an unaligned write index into the inbound control page.
    let base = ch.pages.as_ptr();
    // SAFETY: the inbound control page of this test channel's ring allocation.
    unsafe {
        let ctl = base.add(ChannelConfig::default().outbound_pages * 4096) as *mut u32;
        ctl.write_volatile(13);
    }
    let mut rx = vec![0u8; 65536];
    assert!(matches!(
        ch.poll(&c, &mut rx, |_| {}),
        Err(ChannelError::Corrupt(_))
    ));
    assert!(matches!(
        ch.take_completion(id, &mut []),
        Err(ChannelError::Corrupt(_))
    ));
    ch.close(&mut c, &mut waiter(&h)).unwrap();
}
