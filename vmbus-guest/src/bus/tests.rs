//! Negotiation, offers and hostile input against a scripted host (no hypervisor).

use super::*;
use crate::protocol::{
    GpadlCreated, MessageHeader, MessageType, OfferChannel, OpenResult, VersionResponse,
    VersionResponseWithFeatures,
};
use crate::shared::SharedPages;
use crate::test_util::{Scripted, StdHal};
use crate::wait::BoundedWait;
use zerocopy::{FromZeros, IntoBytes};
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

fn new_conn() -> (Vmbus<Scripted, StdHal>, Scripted) {
    let t = Scripted::default();
    (
        Vmbus::new(t.clone(), StdHal, ConnectionConfig::default()),
        t,
    )
}

fn contact_version(p: &[u8]) -> u32 {
    assert_eq!(p[0], MessageType::INITIATE_CONTACT.0 as u8);
    u32::from_le_bytes(p[8..12].try_into().unwrap())
}

#[test]
fn pre_5_0_host_falls_back_on_invalid_connection_id() {
    let (c, t) = new_conn();
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
    assert_eq!(c.with_offers(|o| o.len()), 0);
}

use std::vec;

#[test]
fn v6_switches_connection_id_and_keeps_granted_features() {
    // By default no 6.0 feature is requested (as Linux).
    let (c, t) = new_conn();
    c.start_connect().unwrap();
    assert_eq!(
        u32::from_le_bytes(t.0.borrow().posted[0].1[20..24].try_into().unwrap()),
        0
    );
    let t = Scripted::default();
    let c = Vmbus::new(
        t.clone(),
        StdHal,
        ConnectionConfig {
            features: FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS,
            ..ConnectionConfig::default()
        },
    );
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
    let (c, t) = new_conn();
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
    let (c, t) = new_conn();
    t.0.borrow_mut().fail_posts.extend([0x13, 0x13, 0x13]);
    c.start_connect().unwrap();
    assert_eq!(c.stats().post_retries, 3);
    assert_eq!(t.0.borrow().posted.len(), 1);
    let (c, t) = new_conn();
    t.0.borrow_mut()
        .fail_posts
        .extend([0x13; POST_ATTEMPTS as usize]);
    assert!(matches!(c.start_connect(), Err(VmbusError::Post(_))));
    let (c, t) = new_conn();
    t.0.borrow_mut().fail_posts.push_back(0x05);
    assert!(matches!(c.start_connect(), Err(VmbusError::Post(_))));
}

/// Connects `c` at the highest version (the host accepts on connection 1).
fn connect(c: &Vmbus<Scripted, StdHal>, t: &Scripted) {
    c.start_connect().unwrap();
    t.0.borrow_mut()
        .inbox
        .push_back(version_response(true, 1, Some(0)));
    c.poll();
    assert_eq!(c.state(), ConnectionState::Connected);
}

fn connected() -> (Vmbus<Scripted, StdHal>, Scripted) {
    let (c, t) = new_conn();
    connect(&c, &t);
    t.0.borrow_mut().posted.clear();
    (c, t)
}

#[test]
fn offers_rescind_and_hostile_messages() {
    let (c, t) = connected();
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
    // A driver that watches for offers sees each once, by sequence number.
    let seen: Vec<(u32, u32)> =
        c.with_offers(|t| t.offered_after(0).map(|(g, o)| (g, o.relid)).collect());
    assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), [5, 6]);
    let last = seen[1].0;
    assert_eq!(c.with_offers(|t| t.offered_after(last).count()), 0);
    assert_eq!(c.with_offers(|o| o.len()), 2);
    assert_eq!(c.offer(6).unwrap().primary_relid, Some(5));
    assert_eq!(c.stats().violations, 6);
    // Rescind of an unopened channel releases the relid at once.
    let mut rescind = header(MessageType::RESCIND_CHANNELOFFER);
    rescind.extend_from_slice(&6u32.to_le_bytes());
    t.0.borrow_mut().inbox.push_back(rescind.clone());
    t.0.borrow_mut().inbox.push_back(rescind);
    c.poll();
    assert!(c.offer(6).is_none());
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
    let before = c.stats().messages;
    assert!(c.poll().control, "a full poll says more is waiting");
    assert_eq!(c.stats().messages - before, MAX_MESSAGES_PER_POLL as u64);
    let mut polls = 0;
    while c.poll().control {
        polls += 1;
        assert!(polls < 100);
    }
    assert_eq!(c.state(), ConnectionState::Connected);
    assert!(c.offer(5).is_some());
    let _ = VersionResponse::new_zeroed();
}

#[test]
fn gpadl_round_trip_and_rescind_revokes() {
    let (c, t) = connected();
    t.0.borrow_mut().inbox.push_back(offer(5, 1, 0));
    c.poll();
    let pages = SharedPages::alloc(&StdHal, 100).unwrap();
    let h = c.lock().start_gpadl(5, &pages).unwrap();
    assert_eq!(t.0.borrow().posted.len(), 1 + 3);
    let mut g = GpadlCreated::new_zeroed();
    g.header = MessageHeader::new(MessageType::GPADL_CREATED);
    g.relid = 5;
    g.gpadl_handle = h;
    t.0.borrow_mut().inbox.push_back(g.as_bytes().to_vec());
    let mut w = BoundedWait::new(3, || {});
    assert!(matches!(c.wait_gpadl_created(h, &mut w), Created::Yes(x) if x == h));
    let h2 = c.lock().start_gpadl(5, &pages).unwrap();
    assert_ne!(h, h2);
    let mut rescind = header(MessageType::RESCIND_CHANNELOFFER);
    rescind.extend_from_slice(&5u32.to_le_bytes());
    t.0.borrow_mut().inbox.push_back(rescind);
    let mut w = BoundedWait::new(3, || {});
    assert!(matches!(
        c.wait_gpadl_created(h2, &mut w),
        Created::Unknown(VmbusError::Rescinded(5))
    ));
    // Never answered: timeout, not a hang; the outcome is unknown, so the pages must leak.
    let (c, t) = connected();
    t.0.borrow_mut().inbox.push_back(offer(5, 1, 0));
    c.poll();
    let h = c.lock().start_gpadl(5, &pages).unwrap();
    let mut w = BoundedWait::new(10, || {});
    assert!(matches!(
        c.wait_gpadl_created(h, &mut w),
        Created::Unknown(VmbusError::Timeout)
    ));
    // The scripted host maps nothing.
    pages.free(&StdHal);
}

#[test]
fn teardown_without_torndown_leaks_and_stale_epochs_leak() {
    let (c, t) = connected();
    t.0.borrow_mut().inbox.push_back(offer(5, 1, 0));
    c.poll();
    let pages = SharedPages::alloc(&StdHal, 1).unwrap();
    let h = c.lock().start_gpadl(5, &pages).unwrap();
    let mut g = GpadlCreated::new_zeroed();
    g.header = MessageHeader::new(MessageType::GPADL_CREATED);
    g.relid = 5;
    g.gpadl_handle = h;
    t.0.borrow_mut().inbox.push_back(g.as_bytes().to_vec());
    assert!(matches!(
        c.wait_gpadl_created(h, &mut BoundedWait::new(3, || {})),
        Created::Yes(_)
    ));
    // A handle that is not a created GPADL: nothing is sent, nothing freed (and no
    // self-deadlock on the control lock in that error path).
    assert_eq!(
        c.teardown_gpadl(0x999, c.epoch(), &mut BoundedWait::new(5, || {})),
        Released::Leaked
    );
    // GPADL_TORNDOWN never comes: leaked, and the handle forgotten.
    let epoch = c.epoch();
    assert_eq!(
        c.teardown_gpadl(h, epoch, &mut BoundedWait::new(5, || {})),
        Released::Leaked
    );
    assert_eq!(c.gpadl_count(), 0);
    // After abandon, objects of the old epoch leak without posting anything.
    c.abandon();
    assert_ne!(c.epoch(), epoch);
    let posted = t.0.borrow().posted.len();
    assert_eq!(c.ended_epoch_release(epoch), Released::Leaked);
    assert_eq!(
        c.teardown_gpadl(h, epoch, &mut BoundedWait::new(5, || {})),
        Released::Leaked
    );
    assert_eq!(t.0.borrow().posted.len(), posted);
    // After a clean UNLOAD_RESPONSE the host released everything of that epoch.
    let (c, t) = connected();
    let epoch = c.epoch();
    c.start_unload().unwrap();
    t.0.borrow_mut()
        .inbox
        .push_back(header(MessageType::UNLOAD_RESPONSE));
    c.poll();
    assert_eq!(c.ended_epoch_release(epoch), Released::Freed);
    pages.leak();
}

#[test]
fn rescind_is_seen_by_the_interrupt_path_without_the_lock() {
    let (c, t) = connected();
    t.0.borrow_mut().inbox.push_back(offer(5, 1, 0));
    c.poll();
    let slot = c.slots.claim(5).unwrap();
    let mut rescind = header(MessageType::RESCIND_CHANNELOFFER);
    rescind.extend_from_slice(&5u32.to_le_bytes());
    t.0.borrow_mut().inbox.push_back(rescind);
    // Hold the control lock: the interrupt path must not need it.
    let guard = c.lock();
    let work = c.handle_interrupt();
    drop(guard);
    assert!(work.channels.contains(5));
    assert!(work.control, "the RESCIND waits for the control path");
    assert_eq!(c.slots.liveness(slot), Liveness::Rescinded);
    c.poll();
    assert!(c.offer(5).is_none());
}

#[test]
fn version_lists_are_validated() {
    static UNSORTED: [VmbusVersion; 2] = [VmbusVersion::V4_0, VmbusVersion::V5_0];
    static EMPTY: [VmbusVersion; 0] = [];
    for versions in [&UNSORTED[..], &EMPTY[..]] {
        let c = Vmbus::new(
            Scripted::default(),
            StdHal,
            ConnectionConfig {
                versions,
                ..ConnectionConfig::default()
            },
        );
        assert_eq!(c.start_connect(), Err(VmbusError::NoCompatibleVersion));
    }
}

#[test]
fn unload_then_reconnect() {
    let (c, t) = connected();
    t.0.borrow_mut().inbox.push_back(offer(5, 1, 0));
    c.poll();
    c.start_unload().unwrap();
    t.0.borrow_mut().inbox.push_back(offer(9, 9, 0));
    t.0.borrow_mut()
        .inbox
        .push_back(header(MessageType::UNLOAD_RESPONSE));
    c.poll();
    assert_eq!(c.state(), ConnectionState::Disconnected);
    assert!(c.with_offers(|o| o.is_empty()));
    c.start_connect().unwrap();
    t.0.borrow_mut()
        .inbox
        .push_back(version_response(true, 1, Some(0)));
    t.0.borrow_mut().inbox.push_back(offer(5, 1, 0));
    t.0.borrow_mut()
        .inbox
        .push_back(header(MessageType::ALLOFFERS_DELIVERED));
    c.poll();
    assert!(c.all_offers_delivered() && c.offer(5).is_some());
    let requests =
        t.0.borrow()
            .posted
            .iter()
            .filter(|p| p.1[0] == MessageType::REQUESTOFFERS.0 as u8)
            .count();
    assert_eq!(requests, 1);
}

/// A host that accepts every connection and then lets it fail (here: the guest gives up on
/// each) makes the guest leave it at most MAX_LEAKED_MONITOR_SETS sets of monitor pages;
/// later attempts reuse the last set, and a connection still works after any number of them.
#[test]
fn failed_connections_leak_a_bounded_number_of_monitor_pages() {
    let (c, t) = new_conn();
    for _ in 0..20 {
        c.start_connect().unwrap();
        c.abandon();
    }
    let bound = u64::from(MAX_LEAKED_MONITOR_SETS) * SHARED_PAGES as u64;
    assert_eq!(c.stats().pages_leaked, bound);
    c.start_connect().unwrap();
    t.0.borrow_mut()
        .inbox
        .push_back(version_response(true, 1, Some(0)));
    c.poll();
    assert!(matches!(c.state(), ConnectionState::Connected));
    // Every contact named monitor pages; after the bound, always the same ones.
    let gpas: Vec<u64> =
        t.0.borrow()
            .posted
            .iter()
            .filter(|p| p.1[0] == MessageType::INITIATE_CONTACT.0 as u8)
            .map(|p| u64::from_le_bytes(p.1[24..32].try_into().unwrap()))
            .collect();
    assert_eq!(gpas.len(), 21);
    let reused = &gpas[MAX_LEAKED_MONITOR_SETS as usize..];
    assert!(reused.iter().all(|&g| g == reused[0]), "{gpas:x?}");
    let distinct: std::collections::BTreeSet<u64> = gpas.iter().copied().collect();
    assert_eq!(distinct.len(), MAX_LEAKED_MONITOR_SETS as usize + 1);
}

/// Once past the leak bound the guest reuses monitor pages an abandoned connection gave the
/// host, which may map them forever: neither a later clean UNLOAD nor dropping the bus frees
/// them (found by the `vmbus_bus` fuzz target: the bus freed them on drop).
#[test]
fn reused_monitor_pages_are_never_freed() {
    let (c, t) = new_conn();
    for _ in 0..=MAX_LEAKED_MONITOR_SETS {
        c.start_connect().unwrap();
        c.abandon();
    }
    // A clean connection and UNLOAD on the reused pages: the host releases only its own.
    connect(&c, &t);
    c.start_unload().unwrap();
    t.0.borrow_mut()
        .inbox
        .push_back(header(MessageType::UNLOAD_RESPONSE));
    c.poll();
    assert_eq!(c.state(), ConnectionState::Disconnected);
    let freed = crate::test_util::PAGES_FREED.with(|f| f.get());
    drop(c);
    assert_eq!(crate::test_util::PAGES_FREED.with(|f| f.get()), freed);
}

/// Monitor pages no host ever accepted are freed with the bus.
#[test]
fn unshared_monitor_pages_are_freed_with_the_bus() {
    let (c, t) = new_conn();
    c.start_connect().unwrap();
    // Every version refused: the host holds nothing.
    for _ in 0..crate::protocol::CANDIDATE_VERSIONS.len() {
        t.0.borrow_mut()
            .inbox
            .push_back(version_response(false, 0, None));
        c.poll();
    }
    assert!(
        matches!(c.state(), ConnectionState::Failed(_)),
        "{:?}",
        c.state()
    );
    let freed = crate::test_util::PAGES_FREED.with(|f| f.get());
    drop(c);
    assert_eq!(
        crate::test_util::PAGES_FREED.with(|f| f.get()),
        freed + SHARED_PAGES
    );
}

/// Replies of an abandoned connection already taken from the SynIC are dropped with it: they
/// cannot answer the next INITIATE_CONTACT.
#[test]
fn abandon_discards_the_old_connections_messages() {
    let (c, t) = connected();
    t.0.borrow_mut()
        .inbox
        .push_back(version_response(true, 1, Some(0)));
    t.0.borrow_mut().inbox.push_back(offer(5, 1, 0));
    // The interrupt path copies both into the inbox; nothing processes them yet.
    let work = c.handle_interrupt();
    assert!(work.control);
    let before = c.stats().stale_discarded;
    c.abandon();
    assert_eq!(c.stats().stale_discarded, before + 2);
    c.start_connect().unwrap();
    c.poll();
    assert!(matches!(c.state(), ConnectionState::Contacting { .. }));
    assert!(c.offer(5).is_none());
    t.0.borrow_mut()
        .inbox
        .push_back(version_response(true, 1, Some(0)));
    c.poll();
    assert_eq!(c.state(), ConnectionState::Connected);
}
