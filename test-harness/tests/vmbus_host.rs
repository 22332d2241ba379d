//! The mock VMBus host driven by hand, as a guest would: messages are built from the wire
//! structs, posted with HvCallPostMessage on a booted VP and read back from the SynIC; ring
//! packets are written byte by byte from vmbus-core §7. Deterministic (stepped mode) except the
//! one bounded threaded test.

use std::ptr::NonNull;
use std::time::{Duration, Instant};

use test_harness::guest::{BootedVp, boot_vp};
use test_harness::hv::{HostPreset, MockConfig, MockHypervisor};
use test_harness::vmbus::{
    ChannelState, DEFAULT_MESSAGE_CONNECTION_ID, DeviceModel, DeviceOffer, EchoDevice, HostChannel,
    HostPacket, HostRelease, MockVmbusHost,
};
use vmbus_guest::Hal;
use vmbus_guest::protocol::{
    CANDIDATE_VERSIONS, CloseChannel, FeatureFlags, GpaRange, GpadlBody, GpadlHeader,
    GpadlTeardown, Guid, InitiateContact, MessageHeader, MessageType, OfferChannel, OfferFlags,
    OpenChannel, RelidReleased, RequestOffers, Unload, VmbusVersion, WirePfn,
    message_connection_id_for,
};
use winhv::{HvError, HvStatus, HypercallError};
use zerocopy::{FromZeros, IntoBytes};

const NET: Guid = Guid::from_str_const("f8615163-df3e-46c5-913f-f2d2f965ed0e");
const SCSI: Guid = Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
const INSTANCE_A: Guid = Guid::from_str_const("00000000-0000-0000-0000-00000000000a");
const INSTANCE_B: Guid = Guid::from_str_const("00000000-0000-0000-0000-00000000000b");

/// A hand-played guest: one booted VP and the connection id it posts on.
struct Rig {
    hv: MockHypervisor,
    host: MockVmbusHost,
    vp: BootedVp,
    conn: u32,
    /// The last INITIATE_CONTACT sent.
    contact: Option<InitiateContact>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Rig {
    fn new(release: HostRelease) -> Self {
        let hv =
            MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(2 << 20));
        let vp = boot_vp(&hv, 0).expect("boot");
        let host = MockVmbusHost::new(hv.clone(), release);
        Rig {
            hv,
            host,
            vp,
            conn: 1,
            contact: None,
        }
    }

    fn post_on(&mut self, conn: u32, bytes: &[u8]) -> Result<(), HypercallError> {
        self.vp.hypercalls.post_message(conn, 1, bytes)
    }

    fn post(&mut self, bytes: &[u8]) {
        let conn = self.conn;
        self.post_on(conn, bytes).expect("post");
    }

    fn recv(&self) -> Option<Vec<u8>> {
        let m = self.vp.synic.take_message(&self.vp.cpu, 2).expect("slot")?;
        assert_eq!(m.message_type(), 1);
        Some(m.payload().to_vec())
    }

    /// Steps the host and returns the next message, which must be of type `t`.
    fn expect(&mut self, t: MessageType) -> Vec<u8> {
        self.host.step();
        let m = self
            .recv()
            .unwrap_or_else(|| panic!("no message, expected {t}"));
        assert_eq!(MessageType(u32_at(&m, 0)), t, "message {m:?}");
        m
    }

    fn alloc(&self, pages: usize) -> (NonNull<u8>, u64) {
        let hal = self.hv.hal();
        let p = hal.alloc_pages(pages).expect("alloc");
        (p, hal.virt_to_phys(p).expect("phys"))
    }

    /// Builds INITIATE_CONTACT as a guest does for `version`.
    fn contact_msg(&self, version: VmbusVersion, features: u32) -> InitiateContact {
        let (_, p2c) = self.alloc(1);
        let (_, c2p) = self.alloc(1);
        let info = if version >= VmbusVersion::V5_0 {
            InitiateContact::target_info(2, 0, features)
        } else if version < VmbusVersion::V2_4 {
            self.alloc(1).1
        } else {
            0
        };
        InitiateContact {
            header: MessageHeader::new(MessageType::INITIATE_CONTACT),
            version_requested: version.0,
            target_vp: 0,
            interrupt_page_or_target_info: info,
            parent_to_child_monitor_page_gpa: p2c,
            child_to_parent_monitor_page_gpa: c2p,
        }
    }

    /// Proposes `version`: `None` if the post failed with INVALID_CONNECTION_ID, else the
    /// VERSION_RESPONSE bytes (switching to the returned connection id when accepted ≥ 5.0).
    fn try_version(&mut self, version: VmbusVersion) -> Option<Vec<u8>> {
        let msg = self.contact_msg(version, 0);
        self.contact = Some(msg);
        match self.post_on(message_connection_id_for(version), msg.as_bytes()) {
            Err(HypercallError::Hv(HvError(HvStatus::INVALID_CONNECTION_ID))) => return None,
            r => r.expect("post INITIATE_CONTACT"),
        }
        let r = self.expect(MessageType::VERSION_RESPONSE);
        if r[8] != 0 {
            self.conn = if version >= VmbusVersion::V5_0 {
                u32_at(&r, 12)
            } else {
                1
            };
        }
        Some(r)
    }

    /// Linux-style negotiation: highest candidate first.
    fn negotiate(&mut self) -> VmbusVersion {
        for v in CANDIDATE_VERSIONS {
            if let Some(r) = self.try_version(v)
                && r[8] != 0
            {
                return v;
            }
        }
        panic!("no version accepted");
    }

    /// REQUESTOFFERS → offers until ALLOFFERS_DELIVERED.
    fn request_offers(&mut self) -> Vec<OfferChannel> {
        self.post(RequestOffers::new().as_bytes());
        self.host.step();
        let mut offers = Vec::new();
        loop {
            let m = self.recv().expect("offer or ALLOFFERS_DELIVERED");
            match MessageType(u32_at(&m, 0)) {
                MessageType::OFFERCHANNEL => {
                    assert_eq!(m.len(), 196);
                    offers.push(zerocopy::FromBytes::read_from_bytes(&m[..]).unwrap());
                }
                MessageType::ALLOFFERS_DELIVERED => {
                    assert_eq!(m.len(), 8);
                    return offers;
                }
                t => panic!("unexpected {t}"),
            }
        }
    }

    /// Posts a single-range GPADL over `pages` pages at `gpa` (header + bodies), steps, and
    /// returns the GPADL_CREATED status.
    fn gpadl(&mut self, relid: u32, handle: u32, gpa: u64, pages: usize) -> u32 {
        let pfns: Vec<WirePfn> = (0..pages as u64)
            .map(|i| WirePfn::new(gpa / 4096 + i))
            .collect();
        let first = pfns.len().min(26);
        let mut m = GpadlHeader::new(relid, handle, (8 + 8 * pages) as u16, 1)
            .as_bytes()
            .to_vec();
        m.extend_from_slice(
            GpaRange {
                byte_count: (pages * 4096) as u32,
                byte_offset: 0,
            }
            .as_bytes(),
        );
        m.extend_from_slice(pfns[..first].as_bytes());
        self.post(&m);
        for chunk in pfns[first..].chunks(28) {
            let mut b = GpadlBody::new(handle).as_bytes().to_vec();
            b.extend_from_slice(chunk.as_bytes());
            self.post(&b);
        }
        let r = self.expect(MessageType::GPADL_CREATED);
        assert_eq!((u32_at(&r, 8), u32_at(&r, 12)), (relid, handle));
        u32_at(&r, 16)
    }

    fn open(&mut self, relid: u32, gpadl: u32, downstream: u32) -> u32 {
        let mut o = OpenChannel::new_zeroed();
        o.header = MessageHeader::new(MessageType::OPENCHANNEL);
        o.relid = relid;
        o.open_id = relid;
        o.ring_gpadl_handle = gpadl;
        o.target_vp = 0;
        o.downstream_ring_page_offset = downstream;
        self.post(o.as_bytes());
        let r = self.expect(MessageType::OPENCHANNEL_RESULT);
        assert_eq!((u32_at(&r, 8), u32_at(&r, 12)), (relid, relid));
        u32_at(&r, 16)
    }

    fn write_mem(&self, gpa: u64, data: &[u8]) {
        let p = self.hv.gpa_to_ptr(gpa, data.len()).unwrap();
        // SAFETY: the range is guest RAM of `hv`; the host only touches it inside `step`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len()) };
    }

    fn read_mem(&self, gpa: u64, len: usize) -> Vec<u8> {
        let p = self.hv.gpa_to_ptr(gpa, len).unwrap();
        // SAFETY: as in `write_mem`.
        unsafe { std::slice::from_raw_parts(p.as_ptr(), len).to_vec() }
    }

    fn assert_clean(&self) {
        assert_eq!(self.host.protocol_errors(), Vec::<String>::new());
    }
}

fn echo_offer(t: Guid, i: Guid) -> DeviceOffer {
    DeviceOffer::new(t, i)
}

#[test]
fn each_release_answers_every_version_the_right_way() {
    for &release in HostRelease::all() {
        let max = release.max_version();
        for v in CANDIDATE_VERSIONS {
            let mut rig = Rig::new(release);
            let r = rig.try_version(v);
            let multi = max >= VmbusVersion::V5_0;
            if v >= VmbusVersion::V5_0 && !multi {
                assert!(
                    r.is_none(),
                    "{}: {v} must fail on connection 4",
                    release.name()
                );
                continue;
            }
            let r = r.unwrap_or_else(|| panic!("{}: no answer to {v}", release.name()));
            let accepted = v <= max;
            assert_eq!(r[8] != 0, accepted, "{} answering {v}", release.name());
            assert_eq!(r[9], 0, "connection state");
            if accepted && v >= VmbusVersion::V6_0 {
                assert_eq!(r.len(), 20);
            } else {
                assert_eq!(r.len(), 16);
            }
            if accepted && v >= VmbusVersion::V5_0 {
                assert_eq!(u32_at(&r, 12), DEFAULT_MESSAGE_CONNECTION_ID);
            }
            assert_eq!(rig.host.negotiated_version(), accepted.then_some(v));
            rig.assert_clean();
        }
        let mut rig = Rig::new(release);
        assert_eq!(rig.negotiate(), max, "{}", release.name());
        rig.assert_clean();
    }
}

#[test]
fn copper_intersects_feature_flags_and_checks_monitor_pages() {
    let mut rig = Rig::new(HostRelease::Copper);
    let want = FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS | FeatureFlags::PAUSE_RESUME;
    let msg = rig.contact_msg(VmbusVersion::V6_0, want.bits());
    rig.post_on(4, msg.as_bytes()).unwrap();
    let r = rig.expect(MessageType::VERSION_RESPONSE);
    assert_eq!(r[8], 1);
    assert_eq!(
        u32_at(&r, 16),
        FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS.bits()
    );
    rig.assert_clean();

    let mut rig = Rig::new(HostRelease::Ws2022);
    let mut msg = rig.contact_msg(VmbusVersion::V5_3, 0);
    msg.child_to_parent_monitor_page_gpa = 0;
    rig.post_on(4, msg.as_bytes()).unwrap();
    let r = rig.expect(MessageType::VERSION_RESPONSE);
    assert_eq!(r[8], 0, "mixed monitor pages rejected");
    assert_eq!(rig.host.protocol_errors().len(), 1);
}

#[test]
fn wrong_connection_and_messages_before_contact_are_errors() {
    let mut rig = Rig::new(HostRelease::Ws2019);
    rig.post_on(1, RequestOffers::new().as_bytes()).unwrap();
    rig.host.step();
    assert!(rig.recv().is_none());
    assert_eq!(rig.host.protocol_errors().len(), 1);
    assert_eq!(rig.negotiate(), VmbusVersion::V5_2);
    // After a 5.x contact the guest must use the returned id, not 4 or 1.
    rig.post_on(4, RequestOffers::new().as_bytes()).unwrap();
    rig.host.step();
    assert!(rig.recv().is_none());
    assert_eq!(rig.host.protocol_errors().len(), 2);
    // Unknown message type and wrong size.
    rig.post(&[99, 0, 0, 0, 0, 0, 0, 0]);
    rig.post(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    rig.host.step();
    assert!(rig.recv().is_none());
    assert_eq!(rig.host.protocol_errors().len(), 4);
}

#[test]
fn offers_then_alloffers_and_duplicate_requestoffers_flagged() {
    let mut rig = Rig::new(HostRelease::Ws2022);
    let a = rig
        .host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    let mut mon = echo_offer(SCSI, INSTANCE_B);
    mon.flags = OfferFlags::REQUEST_MONITORED_NOTIFICATION;
    let b = rig.host.add_device(mon, Box::new(EchoDevice));
    assert_eq!((a, b), (1, 2));
    rig.negotiate();
    let offers = rig.request_offers();
    assert_eq!(offers.len(), 2);
    assert_eq!(offers[0].relid, 1);
    assert_eq!(offers[0].interface_type, NET);
    assert_eq!(offers[0].interface_instance, INSTANCE_A);
    assert!(!offers[0].has_monitor());
    assert!(offers[0].dedicated_interrupt());
    assert_eq!(offers[1].relid, 2);
    assert!(offers[1].has_monitor());
    assert_ne!(offers[0].connection_id, offers[1].connection_id);
    assert_eq!(rig.host.channel_state(1), Some(ChannelState::Offered));
    rig.assert_clean();

    rig.post(RequestOffers::new().as_bytes());
    rig.host.step();
    assert!(rig.recv().is_none(), "no second burst");
    assert_eq!(rig.host.protocol_errors().len(), 1);
}

#[test]
fn gpadl_of_100_pages_over_bodies_then_teardown() {
    let mut rig = Rig::new(HostRelease::Ws2016);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    rig.negotiate();
    rig.request_offers();
    let (_, gpa) = rig.alloc(100);
    // 100 pages = header (26) + 3 bodies (28 + 28 + 18).
    assert_eq!(rig.gpadl(1, 0xE1E10, gpa, 100), 0);
    assert_eq!(rig.host.gpadls(), 1);
    rig.assert_clean();
    rig.post(
        GpadlTeardown {
            header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
            relid: 1,
            gpadl_handle: 0xE1E10,
        }
        .as_bytes(),
    );
    let r = rig.expect(MessageType::GPADL_TORNDOWN);
    assert_eq!(u32_at(&r, 8), 0xE1E10);
    assert_eq!(rig.host.gpadls(), 0);
    rig.assert_clean();
    // Unknown handle: error, no answer.
    rig.post(
        GpadlTeardown {
            header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
            relid: 1,
            gpadl_handle: 0x1234,
        }
        .as_bytes(),
    );
    rig.host.step();
    assert!(rig.recv().is_none());
    assert_eq!(rig.host.protocol_errors().len(), 1);
}

#[test]
fn malformed_gpadls_rejected() {
    let mut rig = Rig::new(HostRelease::Ws2016);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    rig.negotiate();
    rig.request_offers();
    // PFN outside guest RAM.
    let bad = 0x7FFF_0000_0000u64;
    assert_ne!(rig.gpadl(1, 0x10, bad, 2), 0);
    assert_eq!(rig.host.gpadls(), 0);
    assert_eq!(rig.host.protocol_errors().len(), 1);
    // range_buflen inconsistent with the byte count (1 page announced, 2 PFNs).
    let (_, gpa) = rig.alloc(2);
    let mut m = GpadlHeader::new(1, 0x11, 8 + 16, 1).as_bytes().to_vec();
    m.extend_from_slice(
        GpaRange {
            byte_count: 4096,
            byte_offset: 0,
        }
        .as_bytes(),
    );
    m.extend_from_slice([WirePfn::new(gpa / 4096), WirePfn::new(gpa / 4096 + 1)].as_bytes());
    rig.post(&m);
    let r = rig.expect(MessageType::GPADL_CREATED);
    assert_ne!(u32_at(&r, 16), 0);
    assert_eq!(rig.host.protocol_errors().len(), 2);
    // Body for a handle that is not in progress.
    let mut b = GpadlBody::new(0x99).as_bytes().to_vec();
    b.extend_from_slice(WirePfn::new(gpa / 4096).as_bytes());
    rig.post(&b);
    rig.host.step();
    assert!(rig.recv().is_none());
    assert_eq!(rig.host.protocol_errors().len(), 3);
    // Handle 0.
    assert_eq!(rig.host.gpadls(), 0);
}

/// Ring GPADL: 8 pages, outbound = pages 0..4, inbound = pages 4..8.
struct Rings {
    gpa: u64,
}

impl Rings {
    const K: u64 = 4;
    fn out_ctl(&self) -> u64 {
        self.gpa
    }
    fn out_data(&self) -> u64 {
        self.gpa + 4096
    }
    fn in_ctl(&self) -> u64 {
        self.gpa + Self::K * 4096
    }
    fn in_data(&self) -> u64 {
        self.gpa + (Self::K + 1) * 4096
    }
}

/// Negotiated, offered, GPADL'd and opened echo channel 1.
fn open_echo(release: HostRelease) -> (Rig, Rings, OfferChannel) {
    let mut rig = Rig::new(release);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    rig.negotiate();
    let offer = rig.request_offers()[0];
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 0xE1E10, gpa, 8), 0);
    // §7.6: the guest initialises its rings (zeroed pages; feature bit on its outbound ring).
    rig.write_mem(gpa + 0x40, &1u32.to_le_bytes());
    assert_eq!(rig.open(1, 0xE1E10, Rings::K as u32), 0);
    assert_eq!(rig.host.channel_state(1), Some(ChannelState::Open));
    rig.assert_clean();
    (rig, Rings { gpa }, offer)
}

/// Writes one in-band packet into the outbound ring at write index `w`; returns the new index.
fn write_packet(rig: &Rig, rings: &Rings, w: u32, tid: u64, flags: u16, payload: &[u8]) -> u32 {
    let len = (16 + payload.len()).next_multiple_of(8);
    let mut p = Vec::new();
    p.extend_from_slice(&6u16.to_le_bytes());
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((len / 8) as u16).to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&tid.to_le_bytes());
    p.extend_from_slice(payload);
    p.resize(len, 0);
    p.extend_from_slice(&(u64::from(w) << 32).to_le_bytes());
    rig.write_mem(rings.out_data() + u64::from(w), &p);
    let nw = w + p.len() as u32;
    rig.write_mem(rings.out_ctl(), &nw.to_le_bytes());
    nw
}

/// Reads the packet at read index `r` of the inbound ring: (type, flags, tid, payload, next).
fn read_packet(rig: &Rig, rings: &Rings, r: u32) -> (u16, u16, u64, Vec<u8>, u32) {
    let d = rig.read_mem(rings.in_data() + u64::from(r), 16);
    let ty = u16::from_le_bytes([d[0], d[1]]);
    let off8 = u16::from_le_bytes([d[2], d[3]]) as usize;
    let len8 = u16::from_le_bytes([d[4], d[5]]) as usize;
    let flags = u16::from_le_bytes([d[6], d[7]]);
    let tid = u64_at(&d, 8);
    let all = rig.read_mem(rings.in_data() + u64::from(r), len8 * 8 + 8);
    assert_eq!(u64_at(&all, len8 * 8), u64::from(r) << 32, "trailer");
    (
        ty,
        flags,
        tid,
        all[off8 * 8..len8 * 8].to_vec(),
        r + (len8 * 8 + 8) as u32,
    )
}

#[test]
fn echo_round_trip_through_hand_written_ring_packets() {
    for release in [HostRelease::Ws2012R2, HostRelease::Ws2022] {
        let (mut rig, rings, offer) = open_echo(release);
        // Feature bit set by the host on the ring it writes.
        assert_eq!(u32_at(&rig.read_mem(rings.in_ctl() + 0x40, 4), 0) & 1, 1);
        let w = write_packet(&rig, &rings, 0, 0x55, 0, b"hello, host!");
        rig.vp
            .hypercalls
            .signal_event(offer.connection_id, 0)
            .unwrap();
        assert!(rig.host.step() > 0);
        // The host consumed the packet and published its read index.
        assert_eq!(u32_at(&rig.read_mem(rings.out_ctl() + 4, 4), 0), w);
        let in_w = u32_at(&rig.read_mem(rings.in_ctl(), 4), 0);
        let (ty, flags, tid, payload, next) = read_packet(&rig, &rings, 0);
        assert_eq!((ty, flags, tid), (6, 0, 0x55));
        assert_eq!(&payload[..12], b"hello, host!");
        assert_eq!(next, in_w);
        // Inbound ring was empty and unmasked: relid flag set in SIEFP slot 2.
        assert!(rig.vp.synic.test_and_clear_event_flag(2, 1).unwrap());

        // A completion-requested packet comes back as COMP with the same payload.
        rig.write_mem(rings.in_ctl() + 4, &in_w.to_le_bytes());
        let w2 = write_packet(&rig, &rings, w, 0x77, 1, b"ping");
        rig.vp
            .hypercalls
            .signal_event(offer.connection_id, 0)
            .unwrap();
        rig.host.step();
        assert_eq!(u32_at(&rig.read_mem(rings.out_ctl() + 4, 4), 0), w2);
        let (ty, _, tid, payload, _) = read_packet(&rig, &rings, in_w);
        assert_eq!((ty, tid), (11, 0x77));
        assert_eq!(&payload[..4], b"ping");
        rig.assert_clean();
    }
}

#[test]
fn no_signal_no_service_and_masked_ring_not_signalled() {
    let (mut rig, rings, offer) = open_echo(HostRelease::Ws2022);
    write_packet(&rig, &rings, 0, 1, 0, b"quiet");
    rig.host.step();
    assert_eq!(
        u32_at(&rig.read_mem(rings.out_ctl() + 4, 4), 0),
        0,
        "not signalled"
    );
    // Guest masks its inbound ring: the host writes but does not interrupt.
    rig.write_mem(rings.in_ctl() + 8, &1u32.to_le_bytes());
    rig.vp
        .hypercalls
        .signal_event(offer.connection_id, 0)
        .unwrap();
    rig.host.step();
    assert_ne!(u32_at(&rig.read_mem(rings.in_ctl(), 4), 0), 0);
    assert!(!rig.vp.synic.test_and_clear_event_flag(2, 1).unwrap());
    rig.assert_clean();
}

#[test]
fn monitored_notification_is_a_signal() {
    let mut rig = Rig::new(HostRelease::Ws2019);
    let mut o = echo_offer(NET, INSTANCE_A);
    o.monitor = true;
    rig.host.add_device(o, Box::new(EchoDevice));
    let msg = rig.contact_msg(VmbusVersion::V5_2, 0);
    rig.post_on(4, msg.as_bytes()).unwrap();
    let r = rig.expect(MessageType::VERSION_RESPONSE);
    rig.conn = u32_at(&r, 12);
    let offer = rig.request_offers()[0];
    assert!(offer.has_monitor());
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 7, gpa, 8), 0);
    assert_eq!(rig.open(1, 7, 4), 0);
    let rings = Rings { gpa };
    write_packet(&rig, &rings, 0, 9, 0, b"mnf");
    let (off, bit) = vmbus_guest::protocol::MonitorPage::pending_bit(offer.monitor_id).unwrap();
    let c2p = msg.child_to_parent_monitor_page_gpa;
    rig.write_mem(c2p + off as u64, &bit.to_le_bytes());
    rig.host.step();
    assert_eq!(
        u32_at(&rig.read_mem(c2p + off as u64, 4), 0),
        0,
        "bit cleared"
    );
    let (ty, _, tid, _, _) = read_packet(&rig, &rings, 0);
    assert_eq!((ty, tid), (6, 9));
    rig.assert_clean();
}

#[test]
fn corrupt_outbound_packet_is_a_protocol_error() {
    let (mut rig, rings, offer) = open_echo(HostRelease::Ws2022);
    // Type 8 (legacy GPADL packet) with flag bit 1: both invalid.
    let mut p = vec![8, 0, 2, 0, 2, 0, 2, 0];
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&0u64.to_le_bytes());
    rig.write_mem(rings.out_data(), &p);
    rig.write_mem(rings.out_ctl(), &24u32.to_le_bytes());
    rig.vp
        .hypercalls
        .signal_event(offer.connection_id, 0)
        .unwrap();
    rig.host.step();
    assert_eq!(rig.host.protocol_errors().len(), 1);
}

#[test]
fn open_failures_and_close() {
    let mut rig = Rig::new(HostRelease::Ws2022);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    rig.negotiate();
    rig.request_offers();
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 5, gpa, 8), 0);
    // Unknown GPADL, downstream offset 1 and 7 (of 8 pages): failures.
    assert_ne!(rig.open(1, 6, 4), 0);
    assert_ne!(rig.open(1, 5, 1), 0);
    assert_ne!(rig.open(1, 5, 7), 0);
    assert_eq!(rig.host.protocol_errors().len(), 3);
    assert_eq!(rig.open(1, 5, 4), 0);
    // Teardown while open is deferred until CLOSECHANNEL.
    rig.post(
        GpadlTeardown {
            header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
            relid: 1,
            gpadl_handle: 5,
        }
        .as_bytes(),
    );
    rig.host.step();
    assert!(rig.recv().is_none());
    rig.post(CloseChannel::new(1).as_bytes());
    let r = rig.expect(MessageType::GPADL_TORNDOWN);
    assert_eq!(u32_at(&r, 8), 5);
    assert_eq!(rig.host.channel_state(1), Some(ChannelState::Closed));
    assert_eq!(rig.host.protocol_errors().len(), 3);
}

#[test]
fn withheld_open_result() {
    let mut rig = Rig::new(HostRelease::Ws2022);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    rig.host.set_withhold_open_result(1, true);
    rig.negotiate();
    rig.request_offers();
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 5, gpa, 8), 0);
    let mut o = OpenChannel::new_zeroed();
    o.header = MessageHeader::new(MessageType::OPENCHANNEL);
    o.relid = 1;
    o.ring_gpadl_handle = 5;
    o.downstream_ring_page_offset = 4;
    rig.post(o.as_bytes());
    rig.host.step();
    assert!(rig.recv().is_none());
    assert_eq!(rig.host.channel_state(1), Some(ChannelState::Opening));
    rig.host.set_withhold_open_result(1, false);
    let r = rig.recv().expect("result");
    assert_eq!(u32_at(&r, 16), 0);
    assert_eq!(rig.host.channel_state(1), Some(ChannelState::Open));
    rig.assert_clean();
}

#[test]
fn rescind_close_release_and_hot_add() {
    let (mut rig, _rings, _) = open_echo(HostRelease::Ws2022);
    // RELID_RELEASED before rescind is an error.
    rig.post(RelidReleased::new(1).as_bytes());
    rig.host.step();
    assert_eq!(rig.host.protocol_errors().len(), 1);
    rig.host.rescind(1);
    let r = rig.recv().expect("rescind");
    assert_eq!(
        MessageType(u32_at(&r, 0)),
        MessageType::RESCIND_CHANNELOFFER
    );
    assert_eq!(u32_at(&r, 8), 1);
    assert_eq!(rig.host.channel_state(1), Some(ChannelState::Rescinded));
    rig.post(CloseChannel::new(1).as_bytes());
    rig.post(
        GpadlTeardown {
            header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
            relid: 1,
            gpadl_handle: 0xE1E10,
        }
        .as_bytes(),
    );
    rig.expect(MessageType::GPADL_TORNDOWN);
    rig.post(RelidReleased::new(1).as_bytes());
    rig.host.step();
    assert_eq!(rig.host.channel_state(1), Some(ChannelState::Released));
    assert_eq!(rig.host.protocol_errors().len(), 1);
    // Hot add after ALLOFFERS_DELIVERED: offered at once, relid 1 reused.
    let relid = rig
        .host
        .add_device(echo_offer(SCSI, INSTANCE_B), Box::new(EchoDevice));
    assert_eq!(relid, 1);
    let r = rig.recv().expect("hot-add offer");
    assert_eq!(MessageType(u32_at(&r, 0)), MessageType::OFFERCHANNEL);
    assert_eq!(u32_at(&r, 184), 1);
    assert_eq!(rig.host.protocol_errors().len(), 1);
}

#[test]
fn unload_then_reconnect() {
    let (mut rig, _rings, _) = open_echo(HostRelease::Copper);
    rig.post(Unload::new().as_bytes());
    let r = rig.expect(MessageType::UNLOAD_RESPONSE);
    assert_eq!(r.len(), 8);
    assert!(rig.host.unloaded());
    assert_eq!(rig.host.gpadls(), 0);
    assert_eq!(rig.host.negotiated_version(), None);
    assert_eq!(rig.negotiate(), VmbusVersion::V6_0);
    assert!(!rig.host.unloaded());
    let offers = rig.request_offers();
    assert_eq!(offers.len(), 1);
    assert_eq!(rig.host.channel_state(1), Some(ChannelState::Offered));
    rig.assert_clean();
}

#[test]
fn threaded_host_answers_while_guest_polls() {
    let mut rig = Rig::new(HostRelease::Ws2022);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    let Rig {
        hv: _hv,
        host,
        mut vp,
        ..
    } = rig;
    let threaded = host.spawn();
    let msg = {
        let mut m = InitiateContact::new_zeroed();
        m.header = MessageHeader::new(MessageType::INITIATE_CONTACT);
        m.version_requested = VmbusVersion::V5_3.0;
        m.interrupt_page_or_target_info = InitiateContact::target_info(2, 0, 0);
        m
    };
    vp.hypercalls.post_message(4, 1, msg.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        if let Some(m) = vp.synic.take_message(&vp.cpu, 2).unwrap() {
            break m.payload().to_vec();
        }
        assert!(Instant::now() < deadline, "threaded host did not answer");
        std::thread::sleep(Duration::from_micros(100));
    };
    assert_eq!(reply[8], 1);
    assert_eq!(
        threaded.with_host(|h| h.negotiated_version()),
        Some(VmbusVersion::V5_3)
    );
    let host = threaded.stop();
    assert_eq!(host.protocol_errors(), Vec::<String>::new());
}

/// Packets a [`Recorder`] saw, with the GPA-direct bytes it read.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(HostPacket, Vec<u8>)>>>;

/// Records every packet and, for GPA-direct ones, the first bytes of the first range.
#[derive(Clone, Default)]
struct Recorder {
    seen: Seen,
}

impl DeviceModel for Recorder {
    fn on_packet(&mut self, ch: &mut HostChannel, packet: &HostPacket) {
        let mut data = Vec::new();
        if let Some((count, offset, pfns)) = packet.gpa_ranges.first() {
            data = vec![0u8; *count as usize];
            ch.read_gpa(pfns[0] * 4096 + u64::from(*offset), &mut data)
                .unwrap();
            ch.write_gpa(pfns[0] * 4096 + u64::from(*offset), b"done")
                .unwrap();
        }
        self.seen.lock().unwrap().push((packet.clone(), data));
    }
}

#[test]
fn legacy_1_1_host_signals_through_the_interrupt_page() {
    let (mut rig, rings, offer) = open_echo(HostRelease::Ws2008R2);
    assert_eq!(rig.host.negotiated_version(), Some(VmbusVersion::V1_1));
    write_packet(&rig, &rings, 0, 3, 0, b"old");
    rig.vp
        .hypercalls
        .signal_event(offer.connection_id, 0)
        .unwrap();
    rig.host.step();
    let page = rig.contact.unwrap().interrupt_page_or_target_info;
    assert_eq!(u32_at(&rig.read_mem(page, 4), 0), 1 << 1, "relid 1 bit");
    assert!(rig.vp.synic.test_and_clear_event_flag(2, 0).unwrap());
    assert!(!rig.vp.synic.test_and_clear_event_flag(2, 1).unwrap());
    rig.assert_clean();
}

#[test]
fn control_messages_go_to_the_target_vp_from_3_0() {
    for (release, expect_vp) in [(HostRelease::Ws2012, 0), (HostRelease::Ws2012R2, 1)] {
        let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_vp_count(2));
        let mut vp0 = boot_vp(&hv, 0).unwrap();
        let vp1 = boot_vp(&hv, 1).unwrap();
        let mut host = MockVmbusHost::new(hv.clone(), release);
        let mut m = InitiateContact::new_zeroed();
        m.header = MessageHeader::new(MessageType::INITIATE_CONTACT);
        m.version_requested = release.max_version().0;
        m.target_vp = 1;
        vp0.hypercalls.post_message(1, 1, m.as_bytes()).unwrap();
        host.step();
        let on0 = vp0.synic.take_message(&vp0.cpu, 2).unwrap();
        let on1 = vp1.synic.take_message(&vp1.cpu, 2).unwrap();
        let got = if expect_vp == 0 { on0 } else { on1 };
        assert_eq!(got.expect("response").payload()[8], 1, "{}", release.name());
        assert_eq!(host.protocol_errors(), Vec::<String>::new());
    }
}

#[test]
fn host_queues_when_the_inbound_ring_is_full_and_flushes_on_signal() {
    let (mut rig, rings, offer) = open_echo(HostRelease::Ws2022);
    let payload = [0xAB; 1000];
    for i in 0..20 {
        rig.host
            .with_channel(1, |ch, _| ch.send_inband(&payload, i, false))
            .unwrap()
            .unwrap();
    }
    let backlog = rig.host.with_channel(1, |ch, _| ch.backlog_len()).unwrap();
    // 3 data pages = 12288 bytes; each packet is 1016 + 8 = 1024: 11 fit (a write needs
    // strictly more free space than its size).
    assert_eq!(backlog, 9);
    let pending = u32_at(&rig.read_mem(rings.in_ctl() + 12, 4), 0);
    assert_eq!(pending, 1024, "pending send size set by the blocked host");
    // The guest consumes everything and signals (it honours pending send size).
    let w = u32_at(&rig.read_mem(rings.in_ctl(), 4), 0);
    rig.write_mem(rings.in_ctl() + 4, &w.to_le_bytes());
    rig.vp
        .hypercalls
        .signal_event(offer.connection_id, 0)
        .unwrap();
    rig.host.step();
    assert_eq!(
        rig.host.with_channel(1, |ch, _| ch.backlog_len()).unwrap(),
        0
    );
    assert_eq!(u32_at(&rig.read_mem(rings.in_ctl() + 12, 4), 0), 0);
    let (_, _, tid, _, _) = read_packet(&rig, &rings, w);
    assert_eq!(tid, 11);
    rig.assert_clean();
}

#[test]
fn guest_blocked_on_pending_send_size_is_signalled_once_space_appears() {
    let mut rig = Rig::new(HostRelease::Ws2022);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(Recorder::default()));
    rig.negotiate();
    let offer = rig.request_offers()[0];
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 1, gpa, 8), 0);
    rig.write_mem(gpa + 0x40, &1u32.to_le_bytes());
    assert_eq!(rig.open(1, 1, 4), 0);
    let rings = Rings { gpa };
    let mut w = 0;
    for i in 0..11 {
        w = write_packet(&rig, &rings, w, i, 0, &[1; 1000]);
    }
    // Blocked: 11 packets of 1024 bytes leave 1024 free; the guest wants more than that.
    rig.write_mem(rings.out_ctl() + 12, &1032u32.to_le_bytes());
    rig.vp
        .hypercalls
        .signal_event(offer.connection_id, 0)
        .unwrap();
    rig.host.step();
    assert_eq!(u32_at(&rig.read_mem(rings.out_ctl() + 4, 4), 0), w);
    assert!(rig.vp.synic.test_and_clear_event_flag(2, 1).unwrap());
    assert_eq!(rig.host.guest_signal_count(1), 1);
    rig.assert_clean();
}

#[test]
fn gpa_direct_packet_reaches_the_device_with_its_pages() {
    let rec = Recorder::default();
    let mut rig = Rig::new(HostRelease::Ws2022);
    rig.host
        .add_device(echo_offer(SCSI, INSTANCE_A), Box::new(rec.clone()));
    rig.negotiate();
    let offer = rig.request_offers()[0];
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 1, gpa, 8), 0);
    assert_eq!(rig.open(1, 1, 4), 0);
    let rings = Rings { gpa };
    let (_, buf) = rig.alloc(1);
    rig.write_mem(buf + 16, b"payload!");
    // Descriptor type 9, one range of 8 bytes at offset 16, one PFN, then 8 bytes of request.
    let mut p = Vec::new();
    p.extend_from_slice(&9u16.to_le_bytes());
    p.extend_from_slice(&5u16.to_le_bytes()); // (24 + 16) / 8
    p.extend_from_slice(&6u16.to_le_bytes());
    p.extend_from_slice(&1u16.to_le_bytes());
    p.extend_from_slice(&42u64.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&8u32.to_le_bytes());
    p.extend_from_slice(&16u32.to_le_bytes());
    p.extend_from_slice(&(buf / 4096).to_le_bytes());
    p.extend_from_slice(b"request!");
    p.extend_from_slice(&0u64.to_le_bytes());
    rig.write_mem(rings.out_data(), &p);
    rig.write_mem(rings.out_ctl(), &(p.len() as u32).to_le_bytes());
    rig.vp
        .hypercalls
        .signal_event(offer.connection_id, 0)
        .unwrap();
    rig.host.step();
    let seen = rec.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (pkt, data) = &seen[0];
    assert_eq!((pkt.packet_type, pkt.transaction_id), (9, 42));
    assert_eq!(pkt.gpa_ranges, vec![(8, 16, vec![buf / 4096])]);
    assert_eq!(pkt.payload, b"request!");
    assert_eq!(data, b"payload!");
    assert_eq!(&rig.read_mem(buf + 16, 4), b"done");
    rig.assert_clean();
}

#[test]
fn open_rejects_rings_the_guest_did_not_zero() {
    let mut rig = Rig::new(HostRelease::Ws2022);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    rig.negotiate();
    rig.request_offers();
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 1, gpa, 8), 0);
    rig.write_mem(gpa + 4 * 4096 + 4, &64u32.to_le_bytes());
    assert_ne!(rig.open(1, 1, 4), 0);
    assert_eq!(rig.host.take_protocol_errors().len(), 1);
    rig.write_mem(gpa + 4 * 4096 + 4, &0u32.to_le_bytes());
    assert_eq!(
        rig.open(1, 1, 4),
        0,
        "GPADL free again after the failed open"
    );
    rig.assert_clean();
}

/// Offers one sub-channel of its own device when asked with any packet.
struct SubChannelMaker;

impl DeviceModel for SubChannelMaker {
    fn on_packet(&mut self, ch: &mut HostChannel, packet: &HostPacket) {
        let mut o = ch.offer().clone();
        o.sub_channel_index = 1;
        ch.add_offer(o, Box::new(EchoDevice));
        ch.send_completion(packet.transaction_id, &[1]).unwrap();
    }
}

#[test]
fn device_model_offers_a_sub_channel() {
    let mut rig = Rig::new(HostRelease::Ws2016);
    rig.host
        .add_device(echo_offer(SCSI, INSTANCE_A), Box::new(SubChannelMaker));
    rig.negotiate();
    let offer = rig.request_offers()[0];
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 1, gpa, 8), 0);
    assert_eq!(rig.open(1, 1, 4), 0);
    let rings = Rings { gpa };
    write_packet(&rig, &rings, 0, 13, 1, &[13, 0, 0, 0]);
    rig.vp
        .hypercalls
        .signal_event(offer.connection_id, 0)
        .unwrap();
    let m = rig.expect(MessageType::OFFERCHANNEL);
    let sub: OfferChannel = zerocopy::FromBytes::read_from_bytes(&m[..]).unwrap();
    assert_eq!(
        (sub.relid, sub.subchannel_index, sub.interface_instance),
        (2, 1, INSTANCE_A)
    );
    rig.assert_clean();
}

#[test]
fn copper_guest_specified_signal_parameters() {
    let mut rig = Rig::new(HostRelease::Copper);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    let want = FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS.bits();
    let msg = rig.contact_msg(VmbusVersion::V6_0, want);
    rig.post_on(4, msg.as_bytes()).unwrap();
    let r = rig.expect(MessageType::VERSION_RESPONSE);
    assert_eq!(u32_at(&r, 16), want);
    rig.conn = u32_at(&r, 12);
    rig.request_offers();
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 1, gpa, 8), 0);
    let mut o = vmbus_guest::protocol::OpenChannelExtended::new_zeroed();
    o.open.header = MessageHeader::new(MessageType::OPENCHANNEL);
    o.open.relid = 1;
    o.open.ring_gpadl_handle = 1;
    o.open.downstream_ring_page_offset = 4;
    o.connection_id = 0x3000;
    o.event_flag = 77;
    rig.post(o.as_bytes());
    let r = rig.expect(MessageType::OPENCHANNEL_RESULT);
    assert_eq!(u32_at(&r, 16), 0);
    let rings = Rings { gpa };
    write_packet(&rig, &rings, 0, 5, 0, b"copper");
    rig.vp.hypercalls.signal_event(0x3000, 0).unwrap();
    rig.host.step();
    assert!(rig.vp.synic.test_and_clear_event_flag(2, 77).unwrap());
    rig.assert_clean();
}

#[test]
fn modifychannel_is_acknowledged_from_5_3() {
    for (release, acked) in [(HostRelease::Ws2019, false), (HostRelease::Ws2022, true)] {
        let (mut rig, _, _) = open_echo(release);
        let m = vmbus_guest::protocol::ModifyChannel {
            header: MessageHeader::new(MessageType::MODIFYCHANNEL),
            relid: 1,
            target_vp: 0,
        };
        rig.post(m.as_bytes());
        rig.host.step();
        let r = rig.recv();
        assert_eq!(r.is_some(), acked, "{}", release.name());
        if let Some(r) = r {
            assert_eq!(
                MessageType(u32_at(&r, 0)),
                MessageType::MODIFYCHANNEL_RESPONSE
            );
            assert_eq!(u32_at(&r, 12), 0);
        }
        rig.assert_clean();
    }
}

#[test]
fn fault_injection_helpers() {
    // Connection state: supported but failed, host stays disconnected.
    let mut rig = Rig::new(HostRelease::Ws2016);
    rig.host.set_connection_state(1);
    let r = rig.try_version(VmbusVersion::V4_0).unwrap();
    assert_eq!((r[8], r[9]), (1, 1));
    assert_eq!(rig.host.negotiated_version(), None);
    rig.host.set_connection_state(0);
    assert_eq!(rig.negotiate(), VmbusVersion::V4_0);

    // Failed GPADL and failed open, without protocol errors.
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    rig.request_offers();
    let (_, gpa) = rig.alloc(8);
    rig.host.fail_next_gpadl(0xC000_009A);
    assert_eq!(rig.gpadl(1, 1, gpa, 8), 0xC000_009A);
    assert_eq!(rig.host.gpadls(), 0);
    assert_eq!(rig.gpadl(1, 1, gpa, 8), 0, "handle reusable after failure");
    rig.host.fail_next_open(1, 0xC000_0001);
    assert_eq!(rig.open(1, 1, 4), 0xC000_0001);
    assert_eq!(rig.open(1, 1, 4), 0);
    rig.assert_clean();

    // Raw injected message reaches the guest's control SINT.
    rig.host
        .inject_raw_message(&[200, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
    let m = rig.recv().unwrap();
    assert_eq!(m, vec![200, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]);

    // A garbage inbound write index for the guest to reject.
    assert!(rig.host.corrupt_inbound_write_index(1, 0xFFFF_FFF0));
    assert_eq!(u32_at(&rig.read_mem(gpa + 4 * 4096, 4), 0), 0xFFFF_FFF0);
}

#[test]
fn more_rejections() {
    let mut rig = Rig::new(HostRelease::Copper);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    // CLIENT_ID requested but the 40-byte form sent: rejected.
    let msg = rig.contact_msg(VmbusVersion::V6_0, FeatureFlags::CLIENT_ID.bits());
    rig.post_on(4, msg.as_bytes()).unwrap();
    let r = rig.expect(MessageType::VERSION_RESPONSE);
    assert_eq!(r[8], 0);
    assert_eq!(rig.host.take_protocol_errors().len(), 1);
    // < 5.0 on connection 4 of a multi-client host: rejected.
    let msg = rig.contact_msg(VmbusVersion::V4_1, 0);
    rig.post_on(4, msg.as_bytes()).unwrap();
    let r = rig.expect(MessageType::VERSION_RESPONSE);
    assert_eq!(r[8], 0);
    assert_eq!(rig.host.take_protocol_errors().len(), 1);
    assert_eq!(rig.negotiate(), VmbusVersion::V6_0);
    // INITIATE_CONTACT again without UNLOAD: flagged, host resets and answers.
    let msg = rig.contact_msg(VmbusVersion::V6_0, 0);
    rig.post_on(4, msg.as_bytes()).unwrap();
    let r = rig.expect(MessageType::VERSION_RESPONSE);
    assert_eq!(r[8], 1);
    assert_eq!(rig.host.take_protocol_errors().len(), 1);
    rig.request_offers();
    // OPENCHANNEL for an unknown relid: failure status; CLOSECHANNEL of a closed channel.
    assert_ne!(rig.open(9, 1, 4), 0);
    rig.post(CloseChannel::new(1).as_bytes());
    rig.host.step();
    assert_eq!(rig.host.take_protocol_errors().len(), 2);
    // GPADL_HEADER with handle 0 and with a relid never offered.
    let (_, gpa) = rig.alloc(2);
    let mut m = GpadlHeader::new(1, 0, 24, 1).as_bytes().to_vec();
    m.extend_from_slice(
        GpaRange {
            byte_count: 8192,
            byte_offset: 0,
        }
        .as_bytes(),
    );
    m.extend_from_slice([WirePfn::new(gpa / 4096), WirePfn::new(gpa / 4096 + 1)].as_bytes());
    rig.post(&m);
    rig.host.step();
    assert!(rig.recv().is_none());
    assert_ne!(rig.gpadl(7, 3, gpa, 2), 0);
    assert_eq!(rig.host.take_protocol_errors().len(), 2);
    // Rescinding a device the guest has not seen yet sends nothing.
    let mut rig = Rig::new(HostRelease::Ws2022);
    let relid = rig
        .host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    rig.host.rescind(relid);
    assert_eq!(rig.host.channel_state(relid), None);
    rig.negotiate();
    assert!(rig.request_offers().is_empty());
    rig.assert_clean();
}

#[test]
fn rescind_cancels_a_withheld_open() {
    let mut rig = Rig::new(HostRelease::Ws2022);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    rig.host.set_withhold_open_result(1, true);
    rig.negotiate();
    rig.request_offers();
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 5, gpa, 8), 0);
    let mut o = OpenChannel::new_zeroed();
    o.header = MessageHeader::new(MessageType::OPENCHANNEL);
    o.relid = 1;
    o.ring_gpadl_handle = 5;
    o.downstream_ring_page_offset = 4;
    rig.post(o.as_bytes());
    rig.host.step();
    rig.host.rescind(1);
    rig.host.set_withhold_open_result(1, false);
    let r = rig.recv().expect("rescind");
    assert_eq!(
        MessageType(u32_at(&r, 0)),
        MessageType::RESCIND_CHANNELOFFER
    );
    assert!(rig.recv().is_none(), "the open never completes");
    // The ring GPADL is no longer in use: teardown is answered at once.
    rig.post(
        GpadlTeardown {
            header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
            relid: 1,
            gpadl_handle: 5,
        }
        .as_bytes(),
    );
    rig.expect(MessageType::GPADL_TORNDOWN);
    rig.post(RelidReleased::new(1).as_bytes());
    rig.host.step();
    assert_eq!(rig.host.channel_state(1), Some(ChannelState::Released));
    rig.assert_clean();
}

#[test]
fn gpadl_ranges_and_modify_connection() {
    let mut rig = Rig::new(HostRelease::Copper);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    let want = FeatureFlags::MODIFY_CONNECTION.bits();
    let msg = rig.contact_msg(VmbusVersion::V6_0, want);
    rig.post_on(4, msg.as_bytes()).unwrap();
    let r = rig.expect(MessageType::VERSION_RESPONSE);
    rig.conn = u32_at(&r, 12);
    rig.request_offers();
    let (_, gpa) = rig.alloc(30);
    assert_eq!(rig.gpadl(1, 0x42, gpa, 30), 0);
    let ranges = rig.host.gpadl_ranges(0x42).unwrap();
    assert_eq!(ranges.len(), 1);
    assert_eq!(ranges[0].byte_count, 30 * 4096);
    assert_eq!(ranges[0].pfns.first(), Some(&(gpa / 4096)));
    assert_eq!(ranges[0].pfns.len(), 30);
    // MODIFY_CONNECTION with new monitor pages: answered with state 0.
    let (_, p) = rig.alloc(2);
    let mut m = MessageType::MODIFY_CONNECTION.0.to_le_bytes().to_vec();
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&p.to_le_bytes());
    m.extend_from_slice(&(p + 4096).to_le_bytes());
    rig.post(&m);
    let r = rig.expect(MessageType::MODIFY_CONNECTION_RESPONSE);
    assert_eq!((r.len(), r[8]), (9, 0));
    rig.assert_clean();
}

#[test]
fn relid_released_needs_close_first_and_rings_need_their_own_gpadl() {
    // §10.1: a channel open when rescinded must be closed before RELID_RELEASED.
    let (mut rig, _rings, _) = open_echo(HostRelease::Ws2022);
    rig.host.rescind(1);
    rig.expect(MessageType::RESCIND_CHANNELOFFER);
    rig.post(RelidReleased::new(1).as_bytes());
    rig.host.step();
    assert_eq!(
        rig.host.protocol_errors().len(),
        1,
        "released while still open"
    );
    assert_ne!(rig.host.channel_state(1), Some(ChannelState::Released));
    rig.post(CloseChannel::new(1).as_bytes());
    rig.post(RelidReleased::new(1).as_bytes());
    rig.host.step();
    assert_eq!(rig.host.channel_state(1), Some(ChannelState::Released));
    assert_eq!(rig.host.protocol_errors().len(), 1);

    // A ring GPADL created for one channel cannot open another.
    let mut rig = Rig::new(HostRelease::Ws2022);
    for instance in [INSTANCE_A, INSTANCE_B] {
        rig.host
            .add_device(echo_offer(NET, instance), Box::new(EchoDevice));
    }
    rig.negotiate();
    rig.request_offers();
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 0x77, gpa, 8), 0);
    assert_ne!(
        rig.open(2, 0x77, 4),
        0,
        "channel 2 with channel 1's ring GPADL"
    );
    assert!(
        rig.host
            .protocol_errors()
            .iter()
            .any(|e| e.contains("was created for channel 1"))
    );
}

// ---- Guest frees memory the host still maps (vmbus-core §6.3, §6.4, §10.2, §10.3) ----

impl Rig {
    /// The guest frees `pages` pages at `gpa` through the HAL, as a driver would.
    fn free(&self, gpa: u64, pages: usize) {
        let p = self.hv.gpa_to_ptr(gpa, pages * 4096).expect("RAM");
        // SAFETY: `p` is the start of a live `pages`-page allocation from this HAL (every
        // caller frees what it got from `alloc`), and the test keeps no reference into it.
        unsafe { self.hv.hal().free_pages(p, pages) };
    }

    fn teardown(&mut self, relid: u32, handle: u32) {
        self.post(
            GpadlTeardown {
                header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
                relid,
                gpadl_handle: handle,
            }
            .as_bytes(),
        );
    }
}

/// Negotiated and offered echo channel 1 (not opened).
fn offered_echo(release: HostRelease) -> Rig {
    let mut rig = Rig::new(release);
    rig.host
        .add_device(echo_offer(NET, INSTANCE_A), Box::new(EchoDevice));
    rig.negotiate();
    rig.request_offers();
    rig
}

#[test]
fn freeing_pages_under_a_live_gpadl_is_recorded_and_the_pages_poisoned() {
    let mut rig = offered_echo(HostRelease::Ws2022);
    let (_, gpa) = rig.alloc(3);
    rig.write_mem(gpa, b"guest data");
    assert_eq!(rig.gpadl(1, 0x77, gpa, 3), 0);
    assert!(rig.hv.is_host_mapped(gpa + 2 * 4096));
    rig.assert_clean();

    rig.free(gpa, 3);
    let v = rig.host.freed_while_mapped();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!((v[0].gpa, v[0].pages), (gpa, 3));
    assert_eq!(v[0].pfns, [gpa / 4096, gpa / 4096 + 1, gpa / 4096 + 2]);
    assert!(v[0].owner.contains("GPADL 0x77"), "{}", v[0].owner);
    let errors = rig.host.protocol_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("GPADL 0x77"), "{}", errors[0]);
    // Freed pages read as the poison pattern.
    assert!(
        rig.read_mem(gpa, 3 * 4096)
            .iter()
            .all(|&b| b == test_harness::hv::POISON_BYTE)
    );
    assert_eq!(test_harness::hv::POISON_BYTE, 0xDB);
    // Not fatal: the host still answers the (late) teardown.
    rig.teardown(1, 0x77);
    rig.expect(MessageType::GPADL_TORNDOWN);
    assert_eq!(rig.host.protocol_errors().len(), 1);
}

#[test]
fn freeing_after_gpadl_torndown_is_not_recorded() {
    let mut rig = offered_echo(HostRelease::Ws2022);
    let (_, gpa) = rig.alloc(2);
    assert_eq!(rig.gpadl(1, 0x78, gpa, 2), 0);
    rig.teardown(1, 0x78);
    let r = rig.expect(MessageType::GPADL_TORNDOWN);
    assert_eq!(u32_at(&r, 8), 0x78);
    assert!(!rig.hv.is_host_mapped(gpa));
    rig.free(gpa, 2);
    assert_eq!(rig.host.freed_while_mapped(), []);
    rig.assert_clean();
    assert!(rig.read_mem(gpa, 2 * 4096).iter().all(|&b| b == 0xDB));
}

#[test]
fn freeing_before_the_teardown_is_answered_is_recorded() {
    // TEARDOWN posted but not yet processed.
    let mut rig = offered_echo(HostRelease::Ws2022);
    let (_, gpa) = rig.alloc(1);
    assert_eq!(rig.gpadl(1, 0x79, gpa, 1), 0);
    rig.teardown(1, 0x79);
    rig.free(gpa, 1);
    assert_eq!(rig.host.freed_while_mapped().len(), 1);
    rig.expect(MessageType::GPADL_TORNDOWN);

    // The ring GPADL of an open channel: TEARDOWN is deferred until CLOSECHANNEL.
    let (mut rig, rings, _) = open_echo(HostRelease::Ws2022);
    rig.teardown(1, 0xE1E10);
    rig.host.step();
    assert!(rig.recv().is_none(), "TORNDOWN waits for the close");
    rig.free(rings.gpa, 8);
    let v = rig.host.freed_while_mapped();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].pfns.len(), 8);
    assert_eq!(rig.host.protocol_errors().len(), 1);
}

#[test]
fn close_then_torndown_then_free_is_clean() {
    let (mut rig, rings, _) = open_echo(HostRelease::Ws2022);
    rig.post(
        CloseChannel {
            header: MessageHeader::new(MessageType::CLOSECHANNEL),
            relid: 1,
        }
        .as_bytes(),
    );
    rig.teardown(1, 0xE1E10);
    rig.expect(MessageType::GPADL_TORNDOWN);
    rig.free(rings.gpa, 8);
    assert_eq!(rig.host.freed_while_mapped(), []);
    rig.assert_clean();
}

#[test]
fn after_unload_response_nothing_is_host_mapped() {
    let (mut rig, rings, _) = open_echo(HostRelease::Copper);
    let contact = rig.contact.expect("contact");
    let (_, extra) = rig.alloc(2);
    assert_eq!(rig.gpadl(1, 0x80, extra, 2), 0);
    assert!(!rig.hv.host_mappings().is_empty());
    rig.post(Unload::new().as_bytes());
    rig.expect(MessageType::UNLOAD_RESPONSE);
    assert_eq!(rig.host.gpadls(), 0);
    assert_eq!(rig.hv.host_mappings(), Vec::<(String, Vec<u64>)>::new());
    rig.free(rings.gpa, 8);
    rig.free(extra, 2);
    rig.free(contact.parent_to_child_monitor_page_gpa, 1);
    rig.free(contact.child_to_parent_monitor_page_gpa, 1);
    assert_eq!(rig.host.freed_while_mapped(), []);
    rig.assert_clean();
}

#[test]
fn an_abandoned_connection_still_maps_its_gpadls_and_monitor_pages() {
    // The guest gives up on the connection without UNLOAD: for the host everything is live.
    let (rig, rings, _) = open_echo(HostRelease::Ws2022);
    let contact = rig.contact.expect("contact");
    rig.free(contact.child_to_parent_monitor_page_gpa, 1);
    rig.free(rings.gpa, 8);
    let v = rig.host.freed_while_mapped();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].owner.contains("child→parent monitor page"), "{}", v[0]);
    assert!(v[1].owner.contains("GPADL 0xe1e10"), "{}", v[1]);
    assert_eq!(rig.host.protocol_errors().len(), 2);
}

/// Keeps every request's transaction id without completing it (a withheld completion).
#[derive(Clone, Default)]
struct Withholder {
    held: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl DeviceModel for Withholder {
    fn on_packet(&mut self, _ch: &mut HostChannel, packet: &HostPacket) {
        self.held.lock().unwrap().push(packet.transaction_id);
    }
}

/// Writes a GPA-direct packet (completion requested) naming the whole page `buf` at write
/// index `w`; returns the new write index.
fn write_gpa_direct(rig: &Rig, rings: &Rings, w: u32, tid: u64, buf: u64) -> u32 {
    let mut p = Vec::new();
    p.extend_from_slice(&9u16.to_le_bytes());
    p.extend_from_slice(&5u16.to_le_bytes()); // (24 + 16) / 8
    p.extend_from_slice(&6u16.to_le_bytes());
    p.extend_from_slice(&1u16.to_le_bytes());
    p.extend_from_slice(&tid.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&4096u32.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&(buf / 4096).to_le_bytes());
    p.extend_from_slice(b"request!");
    p.extend_from_slice(&(u64::from(w) << 32).to_le_bytes());
    rig.write_mem(rings.out_data() + u64::from(w), &p);
    let nw = w + p.len() as u32;
    rig.write_mem(rings.out_ctl(), &nw.to_le_bytes());
    nw
}

#[test]
fn pages_of_an_uncompleted_gpa_direct_request_stay_host_mapped() {
    let dev = Withholder::default();
    let mut rig = Rig::new(HostRelease::Ws2022);
    rig.host
        .add_device(echo_offer(SCSI, INSTANCE_A), Box::new(dev.clone()));
    rig.negotiate();
    let offer = rig.request_offers()[0];
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 1, gpa, 8), 0);
    assert_eq!(rig.open(1, 1, 4), 0);
    let rings = Rings { gpa };
    let (_, a) = rig.alloc(1);
    let (_, b) = rig.alloc(1);
    let w = write_gpa_direct(&rig, &rings, 0, 7, a);
    write_gpa_direct(&rig, &rings, w, 8, b);
    rig.vp
        .hypercalls
        .signal_event(offer.connection_id, 0)
        .unwrap();
    rig.host.step();
    assert_eq!(*dev.held.lock().unwrap(), [7, 8]);
    assert_eq!(rig.host.requests_in_flight(1), [7, 8]);

    // Request 8 completes; its page may then be freed.
    rig.host
        .with_channel(1, |ch, _| ch.send_completion(8, b"ok"))
        .unwrap()
        .unwrap();
    assert_eq!(rig.host.requests_in_flight(1), [7]);
    rig.free(b, 1);
    assert_eq!(rig.host.freed_while_mapped(), []);
    // Request 7 is still withheld: freeing its page is a guest bug.
    rig.free(a, 1);
    let v = rig.host.freed_while_mapped();
    assert_eq!(v.len(), 1);
    assert!(v[0].owner.contains("GPA-direct request 0x7"), "{}", v[0]);
    assert_eq!(v[0].pfns, [a / 4096]);
    assert_eq!(rig.host.protocol_errors().len(), 1);
}

#[test]
fn a_rescind_ends_the_host_s_use_of_the_channel_s_gpadls() {
    // vmbus-core §6.4 step 4: after the host rescinded a channel it may never answer the
    // teardown and Linux treats the GPADLs as revoked, so freeing them is not a guest bug.
    let (mut rig, rings, _) = open_echo(HostRelease::Ws2022);
    let (_, extra) = rig.alloc(1);
    assert_eq!(rig.gpadl(1, 0x81, extra, 1), 0);
    rig.host.rescind(1);
    assert!(!rig.hv.is_host_mapped(rings.gpa) && !rig.hv.is_host_mapped(extra));
    rig.free(rings.gpa, 8);
    rig.free(extra, 1);
    assert_eq!(rig.host.freed_while_mapped(), []);
    // The host still answers the teardowns.
    rig.teardown(1, 0x81);
    let r = rig.expect(MessageType::RESCIND_CHANNELOFFER);
    assert_eq!(u32_at(&r, 8), 1);
    let r = rig.recv().expect("TORNDOWN");
    assert_eq!(MessageType(u32_at(&r, 0)), MessageType::GPADL_TORNDOWN);
    rig.assert_clean();
}

#[test]
fn withheld_torndown_keeps_the_ring_and_the_requests_of_a_closed_channel_mapped() {
    // Fault injection: a host that never confirms the teardown of a closed channel is still
    // working on it: the ring GPADL and the pages of its uncompleted GPA-direct requests
    // stay host-mapped until it answers.
    let dev = Withholder::default();
    let mut rig = Rig::new(HostRelease::Ws2022);
    rig.host
        .add_device(echo_offer(SCSI, INSTANCE_A), Box::new(dev.clone()));
    rig.negotiate();
    let offer = rig.request_offers()[0];
    let (_, gpa) = rig.alloc(8);
    assert_eq!(rig.gpadl(1, 1, gpa, 8), 0);
    assert_eq!(rig.open(1, 1, 4), 0);
    let rings = Rings { gpa };
    let (_, a) = rig.alloc(1);
    let (_, extra) = rig.alloc(1);
    assert_eq!(rig.gpadl(1, 2, extra, 1), 0);
    write_gpa_direct(&rig, &rings, 0, 7, a);
    rig.vp
        .hypercalls
        .signal_event(offer.connection_id, 0)
        .unwrap();
    rig.host.step();
    assert_eq!(rig.host.requests_in_flight(1), [7]);

    rig.host.withhold_gpadl_torndown(true);
    rig.post(
        CloseChannel {
            header: MessageHeader::new(MessageType::CLOSECHANNEL),
            relid: 1,
        }
        .as_bytes(),
    );
    rig.teardown(1, 1);
    rig.teardown(1, 2);
    rig.host.step();
    assert!(rig.recv().is_none(), "no GPADL_TORNDOWN while withheld");
    assert_eq!(rig.host.withheld_torndowns(), 2);
    assert!(rig.hv.is_host_mapped(gpa) && rig.hv.is_host_mapped(extra));
    assert!(rig.hv.is_host_mapped(a), "the uncompleted request's page");
    rig.assert_clean();

    // The host answers at last: everything is unmapped and may be freed.
    rig.host.withhold_gpadl_torndown(false);
    for handle in [1, 2] {
        let m = rig.expect(MessageType::GPADL_TORNDOWN);
        assert_eq!(u32_at(&m, 8), handle);
    }
    rig.free(gpa, 8);
    rig.free(a, 1);
    rig.free(extra, 1);
    assert_eq!(rig.host.freed_while_mapped(), []);
    rig.assert_clean();
}
