//! Negotiation, offers and hostile input against a scripted host (no hypervisor).

use super::*;
use crate::protocol::{
    GpadlCreated, MessageHeader, MessageType, OfferChannel, OpenResult, VersionResponse,
    VersionResponseWithFeatures,
};
use crate::test_util::{Scripted, StdHal};
use crate::wait::BoundedWait;
use zerocopy::FromZeros;
extern crate std;
use std::vec::Vec;

fn version_response(supported: bool, conn_id: u32, features: Option<u32>) -> Vec<u8> {
    let mut r = VersionResponseWithFeatures::new_zeroed();
    r.base.header = MessageHeader::new(MessageType::VERSION_RESPONSE);
    r.base.version_supported = supported as u8;
    r.base.selected_version_or_connection_id = conn_id;
    match features {
        Some(f) => {
            r.supported_features = f;
            r.as_bytes().to_vec()
        }
        None => r.base.as_bytes().to_vec(),
    }
}

fn header(t: MessageType) -> Vec<u8> {
    MessageHeader::new(t).as_bytes().to_vec()
}

fn offer(relid: u32, inst: u32, sub: u16) -> Vec<u8> {
    let mut o = OfferChannel::new_zeroed();
    o.header = MessageHeader::new(MessageType::OFFERCHANNEL);
    o.interface_type =
        crate::protocol::Guid::from_str_const("f8615163-df3e-46c5-913f-f2d2f965ed0e");
    o.interface_instance.data1 = inst;
    o.relid = relid;
    o.subchannel_index = sub;
    o.connection_id = 0x100 + relid;
    o.is_dedicated_interrupt = 1;
    o.as_bytes().to_vec()
}

fn new_conn() -> (Connection<Scripted, StdHal>, Scripted) {
    let t = Scripted::default();
    (
        Connection::new(t.clone(), StdHal, ConnectionConfig::default()),
        t,
    )
}

fn contact_version(p: &[u8]) -> u32 {
    assert_eq!(p[0], MessageType::INITIATE_CONTACT.0 as u8);
    u32::from_le_bytes(p[8..12].try_into().unwrap())
}

#[test]
fn pre_5_0_host_falls_back_on_invalid_connection_id() {
    let (mut c, t) = new_conn();
    t.0.borrow_mut().reject_connection = Some(4);
    c.start_connect().unwrap();
    {
        let s = t.0.borrow();
        assert_eq!(s.posted.len(), 1);
        assert_eq!(s.posted[0].0, 1);
        assert_eq!(contact_version(&s.posted[0].1), VmbusVersion::V4_1.0);
    }
    // Stale leftovers are discarded before the VERSION_RESPONSE.
    t.0.borrow_mut().inbox.push_back(offer(9, 1, 0));
    t.0.borrow_mut().inbox.push_back(vec![1, 2, 3]);
    t.0.borrow_mut()
        .inbox
        .push_back(version_response(false, 0, None));
    c.poll();
    assert_eq!(c.stats().stale_discarded, 2);
    assert_eq!(c.state(), ConnectionState::Contacting { index: 6 });
    t.0.borrow_mut()
        .inbox
        .push_back(version_response(true, VmbusVersion::V4_0.0, None));
    c.poll();
    let n = c.negotiated().unwrap();
    assert_eq!(n.version, VmbusVersion::V4_0);
    assert_eq!(n.message_connection_id, 1);
    let s = t.0.borrow();
    let last = &s.posted.last().unwrap().1;
    assert_eq!(last[0], MessageType::REQUESTOFFERS.0 as u8);
    assert_eq!(c.offers().len(), 0);
}

use std::vec;

#[test]
fn v6_switches_connection_id_and_keeps_granted_features() {
    let (mut c, t) = new_conn();
    c.start_connect().unwrap();
    {
        let s = t.0.borrow();
        let p = &s.posted[0].1;
        assert_eq!(s.posted[0].0, 4);
        assert_eq!(contact_version(p), VmbusVersion::V6_0.0);
        assert_eq!(p[16], 2, "target SINT");
        assert_eq!(u32::from_le_bytes(p[20..24].try_into().unwrap()), 1);
        let m1 = u64::from_le_bytes(p[24..32].try_into().unwrap());
        let m2 = u64::from_le_bytes(p[32..40].try_into().unwrap());
        assert!(m1 != 0 && m2 == m1 + 4096);
    }
    t.0.borrow_mut()
        .inbox
        .push_back(version_response(true, 0x0a, Some(0xFF)));
    c.poll();
    let n = c.negotiated().unwrap();
    assert_eq!(n.message_connection_id, 0x0a);
    assert_eq!(n.features, FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS);
    assert_eq!(t.0.borrow().posted.last().unwrap().0, 0x0a);
    // A second VERSION_RESPONSE is a violation, not a state change.
    t.0.borrow_mut()
        .inbox
        .push_back(version_response(true, 0x0b, None));
    c.poll();
    assert_eq!(c.negotiated().unwrap().message_connection_id, 0x0a);
    assert_eq!(c.stats().violations, 1);
}

#[test]
fn refusals_walk_down_to_1_1_then_fail() {
    let (mut c, t) = new_conn();
    c.start_connect().unwrap();
    for v in crate::protocol::CANDIDATE_VERSIONS {
        let s = t.0.borrow().posted.last().unwrap().clone();
        assert_eq!(contact_version(&s.1), v.0);
        assert_eq!(s.0, message_connection_id_for(v));
        t.0.borrow_mut()
            .inbox
            .push_back(version_response(false, 0, None));
        c.poll();
    }
    assert_eq!(
        c.state(),
        ConnectionState::Failed(VmbusError::NoCompatibleVersion)
    );
    let mut w = BoundedWait::new(5, || {});
    // connect() restarts, and times out when nobody answers.
    assert_eq!(c.connect(&mut w), Err(VmbusError::Timeout));
}

use crate::protocol::message_connection_id_for;

#[test]
fn insufficient_buffers_is_retried() {
    let (mut c, t) = new_conn();
    t.0.borrow_mut().fail_posts.extend([0x13, 0x13, 0x13]);
    c.start_connect().unwrap();
    assert_eq!(c.stats().post_retries, 3);
    assert_eq!(t.0.borrow().posted.len(), 1);
    let (mut c, t) = new_conn();
    t.0.borrow_mut()
        .fail_posts
        .extend([0x13; POST_ATTEMPTS as usize]);
    assert!(matches!(c.start_connect(), Err(VmbusError::Post(_))));
    let (mut c, t) = new_conn();
    t.0.borrow_mut().fail_posts.push_back(0x05);
    assert!(matches!(c.start_connect(), Err(VmbusError::Post(_))));
}

fn connected() -> (Connection<Scripted, StdHal>, Scripted) {
    let (mut c, t) = new_conn();
    c.start_connect().unwrap();
    t.0.borrow_mut()
        .inbox
        .push_back(version_response(true, 1, Some(0)));
    c.poll();
    assert_eq!(c.state(), ConnectionState::Connected);
    t.0.borrow_mut().posted.clear();
    (c, t)
}

#[test]
fn offers_rescind_and_hostile_messages() {
    let (mut c, t) = connected();
    {
        let mut s = t.0.borrow_mut();
        s.inbox.push_back(offer(5, 1, 0));
        s.inbox.push_back(offer(6, 1, 1));
        s.inbox.push_back(offer(0, 2, 0));
        s.inbox.push_back(offer(2048, 2, 0));
        s.inbox.push_back(offer(5, 3, 0));
        s.inbox.push_back(offer(7, 1, 0));
        s.inbox.push_back(offer(8, 3, 0)[..100].to_vec());
        s.inbox.push_back(header(MessageType::ALLOFFERS_DELIVERED));
        s.inbox.push_back(header(MessageType::ALLOFFERS_DELIVERED));
    }
    c.poll();
    assert!(c.all_offers_delivered());
    assert_eq!(c.offers().len(), 2);
    assert_eq!(c.offers().offer(6).unwrap().primary_relid, Some(5));
    assert_eq!(c.stats().violations, 6);
    // Rescind of an unopened channel releases the relid at once.
    let mut rescind = header(MessageType::RESCIND_CHANNELOFFER);
    rescind.extend_from_slice(&6u32.to_le_bytes());
    t.0.borrow_mut().inbox.push_back(rescind.clone());
    t.0.borrow_mut().inbox.push_back(rescind);
    c.poll();
    assert!(c.offers().offer(6).is_none());
    {
        let s = t.0.borrow();
        assert_eq!(s.posted.len(), 1);
        assert_eq!(s.posted[0].1[0], MessageType::RELID_RELEASED.0 as u8);
    }
    assert_eq!(c.stats().violations, 7);
    // Unknown GPADL and open results.
    let mut g = GpadlCreated::new_zeroed();
    g.header = MessageHeader::new(MessageType::GPADL_CREATED);
    g.relid = 5;
    g.gpadl_handle = 0x1234;
    let mut o = OpenResult::new_zeroed();
    o.header = MessageHeader::new(MessageType::OPENCHANNEL_RESULT);
    o.relid = 77;
    t.0.borrow_mut().inbox.push_back(g.as_bytes().to_vec());
    t.0.borrow_mut().inbox.push_back(o.as_bytes().to_vec());
    c.poll();
    assert_eq!(c.stats().violations, 9);
    // A flood: bounded per poll, every message eventually taken, no panic.
    for i in 0..1000u32 {
        let mut m = vec![0u8; (i % 250) as usize];
        for (j, b) in m.iter_mut().enumerate() {
            *b = (i as usize * 31 + j * 7) as u8;
        }
        t.0.borrow_mut().inbox.push_back(m);
    }
    assert_eq!(c.poll(), MAX_MESSAGES_PER_POLL);
    while c.poll() > 0 {}
    assert_eq!(c.state(), ConnectionState::Connected);
    assert!(c.offers().offer(5).is_some());
    let _ = VersionResponse::new_zeroed();
}

#[test]
fn gpadl_round_trip_and_rescind_revokes() {
    let (mut c, t) = connected();
    t.0.borrow_mut().inbox.push_back(offer(5, 1, 0));
    c.poll();
    let pages = StdHal.alloc_pages(100).unwrap();
    // SAFETY: test pages from the std HAL, leaked for the test.
    let h = unsafe { c.start_gpadl(5, pages, 100) }.unwrap();
    assert_eq!(t.0.borrow().posted.len(), 1 + 3);
    let mut g = GpadlCreated::new_zeroed();
    g.header = MessageHeader::new(MessageType::GPADL_CREATED);
    g.relid = 5;
    g.gpadl_handle = h;
    t.0.borrow_mut().inbox.push_back(g.as_bytes().to_vec());
    let mut w = BoundedWait::new(3, || {});
    c.wait_gpadl_created(h, &mut w).unwrap();
    // SAFETY: as above.
    let h2 = unsafe { c.start_gpadl(5, pages, 1) }.unwrap();
    assert_ne!(h, h2);
    let mut rescind = header(MessageType::RESCIND_CHANNELOFFER);
    rescind.extend_from_slice(&5u32.to_le_bytes());
    t.0.borrow_mut().inbox.push_back(rescind);
    let mut w = BoundedWait::new(3, || {});
    assert_eq!(
        c.wait_gpadl_created(h2, &mut w),
        Err(VmbusError::Rescinded(5))
    );
    // Never answered: timeout, not a hang.
    let (mut c, _t) = connected();
    _t.0.borrow_mut().inbox.push_back(offer(5, 1, 0));
    c.poll();
    // SAFETY: as above.
    let h = unsafe { c.start_gpadl(5, pages, 1) }.unwrap();
    let mut w = BoundedWait::new(10, || {});
    assert_eq!(c.wait_gpadl_created(h, &mut w), Err(VmbusError::Timeout));
    // SAFETY: test allocation; the scripted host maps nothing.
    unsafe { StdHal.free_pages(pages, 100) };
}

#[test]
fn unload_then_reconnect() {
    let (mut c, t) = connected();
    t.0.borrow_mut().inbox.push_back(offer(5, 1, 0));
    c.poll();
    c.start_unload().unwrap();
    t.0.borrow_mut().inbox.push_back(offer(9, 9, 0));
    t.0.borrow_mut()
        .inbox
        .push_back(header(MessageType::UNLOAD_RESPONSE));
    c.poll();
    assert_eq!(c.state(), ConnectionState::Disconnected);
    assert!(c.offers().is_empty());
    c.start_connect().unwrap();
    t.0.borrow_mut()
        .inbox
        .push_back(version_response(true, 1, Some(0)));
    t.0.borrow_mut().inbox.push_back(offer(5, 1, 0));
    t.0.borrow_mut()
        .inbox
        .push_back(header(MessageType::ALLOFFERS_DELIVERED));
    c.poll();
    assert!(c.all_offers_delivered() && c.offers().offer(5).is_some());
    let requests =
        t.0.borrow()
            .posted
            .iter()
            .filter(|p| p.1[0] == MessageType::REQUESTOFFERS.0 as u8)
            .count();
    assert_eq!(requests, 1);
}
