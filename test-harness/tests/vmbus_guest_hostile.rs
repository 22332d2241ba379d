//! A hostile VMBus host: malformed and bogus control messages, floods and transient post
//! failures produce typed errors and counted violations, never panics, and the connection
//! keeps working.

mod common;

use common::*;
use test_harness::vmbus::HostRelease;
use vmbus_guest::protocol::{
    GpadlCreated, GpadlTorndown, MessageHeader, MessageType, OfferChannel, OpenResult,
    VersionResponse,
};
use vmbus_guest::{Event, ProtocolViolation, Released};
use zerocopy::{FromZeros, IntoBytes};

fn offer(relid: u32, inst: u32) -> OfferChannel {
    let mut o = OfferChannel::new_zeroed();
    o.header = MessageHeader::new(MessageType::OFFERCHANNEL);
    o.interface_type = NET;
    o.interface_instance = instance(inst);
    o.relid = relid;
    o.connection_id = 0x2_0000 + relid;
    o.is_dedicated_interrupt = 1;
    o
}

fn drain_control(guest: &Guest) {
    let mut polls = 0;
    while guest.poll().control {
        polls += 1;
        assert!(polls < 1000, "control messages never drained");
    }
}

fn violations(guest: &Guest) -> Vec<ProtocolViolation> {
    let mut v = Vec::new();
    while let Some(e) = guest.next_event() {
        if let Event::Violation(x) = e {
            v.push(x);
        }
    }
    v
}

#[test]
fn malformed_and_bogus_control_messages() {
    let (_hv, mut host, guest) = rig(HostRelease::Ws2022);
    let relid = add_echo(&mut host, NET, 1);
    guest.connect(&mut step(&mut host)).unwrap();
    while guest.next_event().is_some() {}
    let good = offer(relid, 1);
    // Truncated offer, relid 0, relid 2048, duplicate relid, duplicate primary.
    host.inject_raw_message(&good.as_bytes()[..150]);
    host.inject_raw_message(offer(0, 50).as_bytes());
    host.inject_raw_message(offer(2048, 51).as_bytes());
    host.inject_raw_message(offer(relid, 52).as_bytes());
    host.inject_raw_message(offer(relid + 10, 1).as_bytes());
    // GPADL_CREATED / TORNDOWN for unknown handles, OPENCHANNEL_RESULT for unknown relids,
    // a rescind of an unknown relid, a late VERSION_RESPONSE, a header-only runt.
    let mut g = GpadlCreated::new_zeroed();
    g.header = MessageHeader::new(MessageType::GPADL_CREATED);
    g.relid = relid;
    g.gpadl_handle = 0xdead;
    host.inject_raw_message(g.as_bytes());
    let mut t = GpadlTorndown::new_zeroed();
    t.header = MessageHeader::new(MessageType::GPADL_TORNDOWN);
    t.gpadl_handle = 0xbeef;
    host.inject_raw_message(t.as_bytes());
    let mut r = OpenResult::new_zeroed();
    r.header = MessageHeader::new(MessageType::OPENCHANNEL_RESULT);
    r.relid = 999;
    host.inject_raw_message(r.as_bytes());
    r.relid = relid; // not opening
    host.inject_raw_message(r.as_bytes());
    let mut rescind = MessageHeader::new(MessageType::RESCIND_CHANNELOFFER)
        .as_bytes()
        .to_vec();
    rescind.extend_from_slice(&1234u32.to_le_bytes());
    host.inject_raw_message(&rescind);
    let mut v = VersionResponse::new_zeroed();
    v.header = MessageHeader::new(MessageType::VERSION_RESPONSE);
    v.version_supported = 1;
    host.inject_raw_message(v.as_bytes());
    host.inject_raw_message(&[3, 0, 0]);
    drain_control(&guest);
    let seen = violations(&guest);
    assert_eq!(seen.len(), 12, "{seen:#?}");
    assert!(seen.contains(&ProtocolViolation::BadRelid(0)));
    assert!(seen.contains(&ProtocolViolation::BadRelid(2048)));
    assert!(seen.contains(&ProtocolViolation::DuplicateRelid(relid)));
    assert!(seen.contains(&ProtocolViolation::DuplicateDevice(relid + 10)));
    assert!(seen.contains(&ProtocolViolation::UnknownGpadl(0xdead)));
    assert!(seen.contains(&ProtocolViolation::UnexpectedOpenResult(999)));
    // Nothing changed: one offer, and the channel still works end to end.
    assert_eq!(guest.with_offers(|t| t.iter().count()), 1);
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    let (mut comp, mut rx) = ([0u8; 64], vec![0u8; 65536]);
    ch.transact(
        &[b"still alive"],
        1,
        &mut comp,
        &mut rx,
        |_| {},
        &mut step(&mut host),
    )
    .unwrap();
    assert_eq!(&comp[..11], b"still alive");
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn flood_of_junk_messages() {
    let (_hv, mut host, guest) = rig(HostRelease::Copper);
    let relid = add_echo(&mut host, NET, 1);
    guest.connect(&mut step(&mut host)).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..1000usize {
        let mut m = vec![0u8; 8 + i % 233];
        for b in m.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        // Mostly types the guest knows, so the parser is exercised.
        m[0] = (i % 30) as u8;
        m[1..4].fill(0);
        host.inject_raw_message(&m);
    }
    drain_control(&guest);
    assert!(guest.stats().messages >= 1000);
    // The connection survives (junk offers may have added channels; the real one is intact).
    assert!(guest.offer(relid).is_some());
    let ch = open_echo_channel(&guest, &mut host, relid);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
}

#[test]
fn insufficient_buffers_is_retried_transparently() {
    let (hv, mut host, guest) = rig(HostRelease::Ws2019);
    let relid = add_echo(&mut host, NET, 1);
    hv.fail_next_post_messages(3, 0x13);
    guest.connect(&mut step(&mut host)).unwrap();
    assert_eq!(guest.stats().post_retries, 3);
    let ch = open_echo_channel(&guest, &mut host, relid);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn stale_messages_before_version_response_are_discarded() {
    let (_hv, mut host, guest) = rig(HostRelease::Ws2022);
    let relid = add_echo(&mut host, NET, 1);
    // Leftovers of a previous instance, queued before the guest makes contact.
    host.inject_raw_message(offer(77, 9).as_bytes());
    host.inject_raw_message(MessageHeader::new(MessageType::UNLOAD_RESPONSE).as_bytes());
    host.inject_raw_message(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    guest.connect(&mut step(&mut host)).unwrap();
    assert!(guest.stats().stale_discarded >= 3);
    assert!(guest.offer(77).is_none());
    assert!(guest.offer(relid).is_some());
    assert_eq!(guest.stats().violations, 0);
    assert_clean(&host);
}
