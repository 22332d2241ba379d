//! Regression tests for bugs the fuzz targets (`fuzz/`) found, each replaying the minimized
//! scenario through the public API with a small scripted host.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;
use vmbus_guest::protocol::VmbusVersion;
use vmbus_guest::wait::BoundedWait;
use vmbus_guest::{
    Channel, ChannelConfig, ConnectionConfig, ConnectionState, Hal, HalError, PhysAddr, RawMessage,
    Released, Transport, Vmbus,
};
use winhv::{HvError, HypercallError, SynicError};

/// A host that answers INITIATE_CONTACT (accept), REQUESTOFFERS (one offer, relid 1),
/// GPADL_HEADER (created) and OPENCHANNEL (opened) — and never UNLOAD or GPADL_TEARDOWN.
#[derive(Clone, Default)]
struct Host(
    Rc<RefCell<VecDeque<Vec<u8>>>>,
    Rc<Cell<u64>>,
    Rc<Cell<bool>>,
);

fn msg(ty: u32, words: &[u32]) -> Vec<u8> {
    let mut m = ty.to_le_bytes().to_vec();
    m.extend_from_slice(&[0; 4]);
    for w in words {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m
}

fn word(p: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(p[at..at + 4].try_into().unwrap())
}

impl Transport for Host {
    fn post_message(&self, _connection_id: u32, p: &[u8]) -> Result<(), HypercallError> {
        let mut q = self.0.borrow_mut();
        match word(p, 0) {
            // INITIATE_CONTACT -> VERSION_RESPONSE (accepted)
            14 => q.push_back(msg(15, &[1, 1])),
            // REQUESTOFFERS -> one offer (relid 1), ALLOFFERS_DELIVERED
            3 => {
                let mut o = vec![0u8; 196];
                o[0] = 1;
                o[184] = 1;
                o[192] = 0x10;
                q.push_back(o);
                q.push_back(msg(4, &[]));
            }
            // GPADL_HEADER -> GPADL_CREATED(relid, handle, 0); remember the first page
            8 => {
                self.1
                    .set(u64::from_le_bytes(p[28..36].try_into().unwrap()) * 4096);
                q.push_back(msg(10, &[word(p, 8), word(p, 12), 0]));
            }
            // OPENCHANNEL -> OPENCHANNEL_RESULT(relid, open id, 0)
            5 => q.push_back(msg(6, &[word(p, 8), word(p, 12), 0])),
            _ => {}
        }
        Ok(())
    }
    fn signal_event(&self, _connection_id: u32) -> Result<(), HvError> {
        if self.2.get() {
            return Err(HvError(winhv::HvStatus::INVALID_CONNECTION_ID));
        }
        Ok(())
    }
    fn take_message(&self) -> Result<Option<RawMessage>, SynicError> {
        Ok(self.0.borrow_mut().pop_front().map(|m| RawMessage::new(&m)))
    }
    fn take_event_flags(&self, _limit: u32, _on_flag: &mut dyn FnMut(u32)) {}
    fn vp_index(&self) -> u32 {
        0
    }
}

/// Pages from the std allocator; GPA = address.
struct StdHal;

// SAFETY: zeroed, 4 KiB-aligned allocations; identity translation (the "host" is this test).
unsafe impl Hal for StdHal {
    fn alloc_pages(&self, pages: usize) -> Result<NonNull<u8>, HalError> {
        let layout = std::alloc::Layout::from_size_align(pages * 4096, 4096)
            .map_err(|_| HalError::InvalidRequest)?;
        // SAFETY: non-zero size.
        NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or(HalError::OutOfMemory)
    }
    unsafe fn free_pages(&self, vaddr: NonNull<u8>, pages: usize) {
        let layout = std::alloc::Layout::from_size_align(pages * 4096, 4096).unwrap();
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(vaddr.as_ptr(), layout) }
    }
    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Result<PhysAddr, HalError> {
        Ok(vaddr.as_ptr() as u64)
    }
    unsafe fn map_mmio(&self, _gpa: PhysAddr, _size: usize) -> Result<NonNull<u8>, HalError> {
        Err(HalError::NotTranslatable)
    }
}

static V3_0: [VmbusVersion; 1] = [VmbusVersion::V3_0];

/// Runs `f` on its own thread and fails the test if it does not finish in time (a spin-lock
/// deadlock never returns; the stuck thread is abandoned when the test binary exits).
fn within(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlock: no return in {secs} s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the scenario panicked"),
    }
}

/// Closing a channel while UNLOAD is pending: GPADL_TEARDOWN cannot be posted (the connection
/// is no longer `Connected`). `teardown_gpadl` used to lock the bus again inside an
/// `if let Err(..) = self.lock().start_gpadl_teardown(..)` whose guard (a temporary of the
/// scrutinee) lives for the whole block: a self-deadlock on the spin lock. Found by the
/// `vmbus_bus` fuzz target (a timeout).
#[test]
fn close_while_unloading_does_not_deadlock() {
    within(10, || {
        let host = Host::default();
        let config = ConnectionConfig {
            versions: &V3_0,
            ..ConnectionConfig::default()
        };
        let bus = Vmbus::new(host, StdHal, config);
        let mut w = BoundedWait::new(8, || {});
        bus.connect(&mut w).expect("connect");
        let mut w = BoundedWait::new(8, || {});
        let ch: Channel<'_, Host, StdHal> =
            Channel::open(&bus, 1, &ChannelConfig::default(), &mut w).expect("open");
        bus.start_unload().expect("UNLOAD posted");
        assert_eq!(bus.state(), ConnectionState::Unloading);
        let mut w = BoundedWait::new(2, || {});
        // The host never confirmed anything: the ring pages must stay the host's.
        assert_eq!(ch.close(&mut w), Released::Leaked);
        assert_eq!(
            bus.gpadl_count(),
            0,
            "the unsendable teardown's handle is forgotten"
        );
    });
}

/// A request whose write finds the ring corrupt: the channel dies during `request`, which
/// fails every request in flight — the new one included — and then tried to cancel it, but
/// `cancel` only took back pending requests. `request` returned the error (the caller's
/// context is gone) and the same request was reported again as `Received::Failed` by the next
/// `recv` (or handed to `close_with`): failed twice. Found by the `channel_recv` fuzz target.
#[test]
fn request_that_kills_the_channel_is_reported_once() {
    let host = Host::default();
    let ring_base = host.1.clone();
    let config = ConnectionConfig {
        versions: &V3_0,
        ..ConnectionConfig::default()
    };
    let bus = Vmbus::new(host, StdHal, config);
    bus.connect(&mut BoundedWait::new(8, || {}))
        .expect("connect");
    let cfg = ChannelConfig {
        outbound_pages: 2,
        inbound_pages: 2,
        ..ChannelConfig::default()
    };
    let mut ch: Channel<'_, Host, StdHal, u32> =
        Channel::open(&bus, 1, &cfg, &mut BoundedWait::new(8, || {})).expect("open");
    // Fill most of the 4 KiB outbound ring, so the next write must read the read index.
    ch.send(&[&[0u8; 3000]]).expect("first send");
    // The host corrupts the outbound ring's read index (control page offset 4).
    let read_index = ring_base.get() as usize + 4;
    // SAFETY: the outbound control page of the open channel (the first ring page, GPA = address
    // with StdHal); the word is only accessed atomically.
    unsafe { std::sync::atomic::AtomicU32::from_ptr(read_index as *mut u32) }
        .store(5, std::sync::atomic::Ordering::SeqCst);
    let r = ch.request(&[&[0u8; 2000]], 7);
    assert!(
        matches!(r, Err(vmbus_guest::ChannelError::Corrupt(_))),
        "{r:?}"
    );
    let mut buf = [0u8; 256];
    match ch.recv(&mut buf) {
        Err(vmbus_guest::ChannelError::Corrupt(_)) => {}
        Ok(Some(vmbus_guest::Received::Failed { context, .. })) => {
            panic!("request {context} failed twice: its request() already returned the error")
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut reported = 0;
    let _ = ch.close_with(&mut BoundedWait::new(2, || {}), |_, _, _| reported += 1);
    assert_eq!(
        reported, 0,
        "close reported a request that request() had failed"
    );
}

/// HvSignalEvent failing after the request's packet was committed to the ring (the offer's
/// connection id is the host's, and a bad one makes every signal fail): `request` used to
/// cancel the request and return the error although the packet was already the host's to
/// read. The host then worked on a request the guest had forgotten — its completion matched
/// nothing, and for `request_dma` the buffer was marked quiet while the host could still be
/// writing it. Found by the `channel_recv` fuzz target ("reached the host although request()
/// failed"). Now the request stays in flight and the failed signal is counted.
#[test]
fn request_whose_signal_fails_stays_in_flight() {
    let host = Host::default();
    let (ring_base, signal_fails) = (host.1.clone(), host.2.clone());
    let config = ConnectionConfig {
        versions: &V3_0,
        ..ConnectionConfig::default()
    };
    let bus = Vmbus::new(host, StdHal, config);
    bus.connect(&mut BoundedWait::new(8, || {}))
        .expect("connect");
    let mut ch: Channel<'_, Host, StdHal, u32> = Channel::open(
        &bus,
        1,
        &ChannelConfig::default(),
        &mut BoundedWait::new(8, || {}),
    )
    .expect("open");
    signal_fails.set(true);
    let id = ch
        .request(&[b"req"], 42)
        .expect("the packet is in the ring: the request is in flight");
    assert_eq!(ch.requests_in_flight(), 1);
    assert_eq!(ch.stats().signal_failures, 1);
    // The host completes it from the inbound ring (the second ring of the GPADL, 16 pages in).
    let inbound = ring_base.get() as usize + 16 * 4096;
    // SAFETY: the open channel's inbound ring (StdHal: GPA = address); this test is its only
    // writer, and the guest's reader copies out with volatile reads.
    let mem = unsafe {
        vmbus_guest::ring::RawRingMemory::from_pages(
            NonNull::new(inbound as *mut u8).unwrap(),
            15 * 4096,
        )
    }
    .unwrap();
    let mut host_w = vmbus_guest::ring::RingWriter::new(mem).unwrap();
    let _ = host_w
        .send(&vmbus_guest::ring::OutgoingPacket::completion(
            id.transaction_id(),
            &[b"done"],
        ))
        .unwrap();
    let mut buf = [0u8; 256];
    match ch.recv(&mut buf) {
        Ok(Some(vmbus_guest::Received::Completion {
            request, context, ..
        })) => assert_eq!((request, context), (id, 42)),
        other => panic!("expected the completion, got {other:?}"),
    }
    signal_fails.set(false);
}

/// The `channel_recv` crash of issue 13 ("page freed while the host may still map it" from
/// `HostBuffer::release`) was the fuzz oracle's, not the guest's: the host completed a
/// GPA-direct request, then rewrote the outbound ring's write index so that its own reader
/// walked back over the consumed packet and "read" the request again, and the model counted
/// that stale copy as a new claim on the buffer. The guest side of the scenario, pinned here:
/// a completion ends exactly one GPA-direct request (a duplicate or stale completion of it
/// matches nothing and counts nothing down), a buffer is kept from the HAL while any such
/// request of its channel is in flight, and is freed once the host completed them all.
#[test]
fn stale_and_duplicate_completions_keep_dma_buffers_held() {
    use vmbus_guest::ring::{OutgoingPacket, PacketKind, RawRingMemory, RingReader, RingWriter};
    use vmbus_guest::{HostBuffer, Received};

    let host = Host::default();
    let ring_base = host.1.clone();
    let config = ConnectionConfig {
        versions: &V3_0,
        ..ConnectionConfig::default()
    };
    let bus = Vmbus::new(host, StdHal, config);
    bus.connect(&mut BoundedWait::new(8, || {}))
        .expect("connect");
    let cfg = ChannelConfig {
        outbound_pages: 2,
        inbound_pages: 2,
        ..ChannelConfig::default()
    };
    let mut ch: Channel<'_, Host, StdHal, u32> =
        Channel::open(&bus, 1, &cfg, &mut BoundedWait::new(8, || {})).expect("open");
    let ring = |page: usize| {
        let base = NonNull::new((ring_base.get() as usize + page * 4096) as *mut u8).unwrap();
        // SAFETY: a ring of the open channel (StdHal: GPA = address), live until the close at
        // the end; this test is the host's only end of it, and the guest accesses the shared
        // bytes only by volatile copies and atomics.
        unsafe { RawRingMemory::from_pages(base, 4096) }.unwrap()
    };
    let mut host_r = RingReader::new(ring(0)).unwrap();
    let mut host_w = RingWriter::new(ring(2)).unwrap();

    let a = HostBuffer::new(&bus, 1).expect("buffer a");
    let b = HostBuffer::new(&bus, 1).expect("buffer b");
    let ra = ch
        .request_dma(&[a.dma(0, 512).unwrap()], &[b"a"], 1)
        .expect("request on a");
    let rb = ch
        .request_dma(&[b.dma(0, 512).unwrap()], &[b"b"], 2)
        .expect("request on b");
    // The host takes both requests: each names its buffer's page.
    let mut hbuf = [0u8; 512];
    let mut named = Vec::new();
    for id in [ra, rb] {
        let p = host_r.read(&mut hbuf).expect("the request is in the ring");
        assert_eq!(p.transaction_id(), id.transaction_id());
        let PacketKind::GpaDirect(g) = p.kind else {
            panic!("not GPA direct: {:?}", p.kind)
        };
        named.extend(g.ranges().flat_map(|r| r.pfns().collect::<Vec<_>>()));
    }
    assert_eq!(named.len(), 2);
    assert_ne!(named[0], named[1], "one page of each buffer");
    let _ = host_r.finish_drain();

    // The host completes A three times over (the last two are stale: it is done with A).
    for _ in 0..3 {
        let _ = host_w
            .send(&OutgoingPacket::completion(ra.transaction_id(), &[b"ok"]))
            .unwrap();
    }
    let mut rx = [0u8; 256];
    match ch.recv(&mut rx) {
        Ok(Some(Received::Completion {
            request, context, ..
        })) => assert_eq!((request, context), (ra, 1)),
        other => panic!("expected A's completion, got {other:?}"),
    }
    assert!(
        matches!(ch.recv(&mut rx), Ok(None)),
        "a stale completion matches nothing"
    );
    assert_eq!(ch.stats().unknown_completions, 2);
    assert_eq!(ch.requests_in_flight(), 1);
    let _ = ch.end_batch();

    // B is still the host's: the stale completions of A did not count it down.
    assert_eq!(b.release(&mut BoundedWait::new(2, || {})), Released::Leaked);

    // Once the host completed B too, nothing of the channel is in flight: A's buffer is free.
    let _ = host_w
        .send(&OutgoingPacket::completion(rb.transaction_id(), &[b"ok"]))
        .unwrap();
    match ch.recv(&mut rx) {
        Ok(Some(Received::Completion {
            request, context, ..
        })) => assert_eq!((request, context), (rb, 2)),
        other => panic!("expected B's completion, got {other:?}"),
    }
    let _ = ch.end_batch();
    assert_eq!(a.release(&mut BoundedWait::new(2, || {})), Released::Freed);
    // This host never answers GPADL_TEARDOWN: the ring pages stay its own (never freed, so
    // the host ends above never outlive them).
    assert_eq!(ch.close(&mut BoundedWait::new(2, || {})), Released::Leaked);
}
