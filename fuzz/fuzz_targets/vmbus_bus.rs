//! The whole VMBus connection state machine against a scripted hostile host: host messages
//! (offers, rescinds, GPADL created/torn down, open results, version responses, unload, raw
//! bytes) from the input, the host's answers to each post from a decision tape, post failures,
//! SynIC read failures, event flags and allocation failures — interleaved with every guest
//! entry point: `start_connect`, `connect`, `poll`, `handle_interrupt`, `handle_message`,
//! `abandon`, `start_unload`, `unload`, channel open/close, host buffers with GPADLs, and a
//! little channel traffic.
//!
//! Invariants beyond "no panic" (and no hang: CI runs with a timeout):
//! - no guest page is freed while the host may map it, every free matches an allocation, every
//!   GPA the guest hands out is its memory, no GPADL handle is reused while mapped
//!   (`TrackingHal` and `Scripted` in `host.rs`);
//! - every post is a well-formed guest→host message on a connection id the host handed out;
//! - bounded work: a `poll` takes at most `MAX_MESSAGES_PER_POLL + INBOX` messages and
//!   a bounded number of SynIC reads, `handle_interrupt` at most `2 * INBOX` reads; a poll
//!   that says no control work is left has drained the host's queue;
//! - `gpadl_count()` never exceeds the table size; the state agrees with `negotiated()`;
//! - every request completes or fails exactly once (rescind, unload, close).
#![no_main]

use hyperv_guest_fuzz::host::{self, Policy, Scripted, TrackingHal, World};
use hyperv_guest_fuzz::{Input, trace};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::rc::Rc;
use vmbus_guest::bus::{EVENT_QUEUE, INBOX, MAX_MESSAGES_PER_POLL, POST_ATTEMPTS};
use vmbus_guest::gpadl::MAX_GPADLS;
use vmbus_guest::protocol::{CANDIDATE_VERSIONS, FeatureFlags, MAX_CHANNELS, VmbusVersion};
use vmbus_guest::wait::BoundedWait;
use vmbus_guest::{
    Channel, ChannelConfig, ChannelError, ConnectionConfig, ConnectionState, HostBuffer, Received,
    RequestId, Vmbus,
};

fuzz_target!(|data: &[u8]| run(data));

type Bus = Vmbus<Scripted, TrackingHal>;
type Chan<'b> = Channel<'b, Scripted, TrackingHal, u32, 4>;

static UNSORTED: [VmbusVersion; 2] = [VmbusVersion::V1_1, VmbusVersion::V6_0];
static UNKNOWN: [VmbusVersion; 1] = [VmbusVersion::V0_13];

fn waiter(inp: &mut Input) -> BoundedWait<fn()> {
    BoundedWait::new(inp.u8() as u32 % 6, (|| {}) as fn())
}

struct Open<'b> {
    ch: Chan<'b>,
    pending: Vec<(RequestId, u32)>,
}

fn check_received(o: &mut Open<'_>, r: Received<'_, u32>) {
    match r {
        Received::Completion {
            request,
            context,
            packet,
        } => {
            let i = o
                .pending
                .iter()
                .position(|(id, _)| *id == request)
                .expect("completion of a request not in flight");
            assert_eq!(o.pending.swap_remove(i).1, context);
            assert_eq!(packet.transaction_id(), request.transaction_id());
        }
        Received::Failed {
            request, context, ..
        } => {
            let i = o
                .pending
                .iter()
                .position(|(id, _)| *id == request)
                .expect("failure of a request not in flight");
            assert_eq!(o.pending.swap_remove(i).1, context);
        }
        Received::Packet(p) => assert_ne!(p.packet_type().0, 11, "completion returned as data"),
    }
}

fn host_message(w: &Rc<RefCell<World>>, inp: &mut Input) {
    let relid = if inp.u8().is_multiple_of(8) {
        inp.u32()
    } else {
        1 + inp.u8() as u32 % 8
    };
    let mut world = w.borrow_mut();
    let handle = if inp.bool() {
        // A handle the guest really used.
        let hs: Vec<u32> = world.gpadls.keys().copied().collect();
        hs.get(inp.below(hs.len().max(1)))
            .copied()
            .unwrap_or(0xE1E10)
    } else {
        0xE1E10 + inp.u8() as u32 % 8
    };
    let m = match inp.u8() % 10 {
        0 => {
            let sup = inp.u8() % 2;
            let state = if inp.u8().is_multiple_of(4) {
                inp.u8()
            } else {
                0
            };
            let id = if inp.bool() {
                1 + inp.u8() as u32 % 0x40
            } else {
                inp.u32()
            };
            if sup == 1 {
                world.conn_ids.insert(id);
            }
            let f = inp.bool().then(|| inp.u32());
            host::version_response(sup, state, id, f)
        }
        1 | 2 => {
            let b = (
                inp.u8() as usize % 12,
                inp.u8() % 4,
                if inp.u8().is_multiple_of(4) {
                    inp.u16() % 3
                } else {
                    0
                },
                inp.u8(),
                inp.u8() % 2,
                if inp.u8().is_multiple_of(8) {
                    0x2000
                } else {
                    0
                },
                inp.u8() as u32,
            );
            host::offer(relid, b.0, b.1, b.2, b.3, b.4, b.5, b.6)
        }
        3 => host::rescind(relid),
        4 => host::all_offers(),
        5 => {
            let open_id = world
                .opens
                .last()
                .map_or(1, |o| o.open_id)
                .wrapping_add(inp.u8() as u32 % 3)
                .wrapping_sub(1);
            let status = if inp.bool() { 0 } else { inp.u32() };
            host::open_result(relid, open_id, status)
        }
        6 => {
            let status = if inp.bool() { 0 } else { inp.u32() };
            let rel = world.gpadls.get(&handle).map_or(relid, |g| g.relid);
            host::gpadl_created(rel, handle, status)
        }
        7 => host::gpadl_torndown(handle),
        8 => host::unload_response(),
        _ => host::msg(inp.u8() as u32 % 32, &inp.bytes(64)),
    };
    world.send(m);
}

fn check_state(bus: &Bus) {
    match bus.state() {
        ConnectionState::Connected => {
            let n = bus
                .negotiated()
                .expect("connected without negotiated parameters");
            assert!(CANDIDATE_VERSIONS.contains(&n.version));
            assert!(n.message_connection_id != 0 && n.message_connection_id < 1 << 24);
        }
        ConnectionState::Disconnected => assert!(bus.negotiated().is_none()),
        ConnectionState::Contacting { index } => assert!(index < CANDIDATE_VERSIONS.len()),
        _ => {}
    }
    assert!(bus.gpadl_count() <= MAX_GPADLS);
}

fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let tape = inp.bytes(128);
    let w = World::new(Policy::Tape, tape);
    {
        let mut world = w.borrow_mut();
        if inp.u8().is_multiple_of(4) {
            world.take_errors = inp.u64();
        }
        if inp.u8().is_multiple_of(4) {
            world.alloc_failures = inp.u64();
        }
        if inp.u8().is_multiple_of(4) {
            world.signal_failures = inp.u64();
        }
        world.vp = inp.u8() as u32 % 4;
    }
    let versions: &'static [VmbusVersion] = match inp.u8() % 16 {
        0 => &UNSORTED,
        1 => &UNKNOWN,
        k => &CANDIDATE_VERSIONS[k as usize % CANDIDATE_VERSIONS.len()..],
    };
    let config = ConnectionConfig {
        versions,
        features: FeatureFlags::from_bits_retain(inp.u32()),
        target_vp: inp.bool().then(|| inp.u8() as u32),
        backoff: |_| {},
    };
    let bus: Bus = Vmbus::new(Scripted(w.clone()), TrackingHal(w.clone()), config);
    let mut opens: Vec<Open<'_>> = Vec::new();
    let mut buffers: Vec<HostBuffer<'_, Scripted, TrackingHal>> = Vec::new();
    let mut ctx = 0u32;
    // Whether the bus may hold host messages it took but did not process yet.
    let mut bus_inbox = false;

    for _ in 0..192 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8() % 20;
        trace!("op {op} (state {:?})", bus.state());
        match op {
            0 => {
                let r = bus.start_connect();
                if r.is_ok() {
                    assert!(matches!(bus.state(), ConnectionState::Contacting { .. }));
                }
            }
            1 | 2 => {
                let (takes, ok, errs, posts) = {
                    let x = w.borrow();
                    (x.takes, x.takes_ok, x.take_errs, x.posted.len())
                };
                let work = bus.poll();
                let x = w.borrow();
                assert!(
                    x.takes_ok - ok <= MAX_MESSAGES_PER_POLL + INBOX,
                    "poll took too much"
                );
                assert!(x.takes - takes <= (MAX_MESSAGES_PER_POLL + 1) * 2 * INBOX);
                assert!(
                    x.posted.len() - posts
                        <= MAX_MESSAGES_PER_POLL
                            * POST_ATTEMPTS as usize
                            * CANDIDATE_VERSIONS.len()
                );
                bus_inbox = work.control;
                if !work.control && x.take_errs == errs {
                    assert!(
                        x.inbox.is_empty(),
                        "poll left host messages without saying so"
                    );
                }
                for relid in work.channels.iter() {
                    assert!(relid < MAX_CHANNELS, "work reported for relid {relid}");
                }
            }
            3 => {
                let takes = w.borrow().takes;
                let work = bus.handle_interrupt();
                bus_inbox |= work.control;
                assert!(
                    w.borrow().takes - takes <= 2 * INBOX,
                    "interrupt path unbounded"
                );
            }
            4 => {
                let epoch = bus.epoch();
                bus.abandon();
                w.borrow_mut().abandon(bus_inbox);
                assert_eq!(bus.state(), ConnectionState::Disconnected);
                assert_ne!(bus.epoch(), epoch);
            }
            5 => {
                let _ = bus.start_unload();
            }
            6 | 7 => host_message(&w, &mut inp),
            8 => {
                let m = inp.bytes(240);
                w.borrow_mut().send(m);
            }
            9 => {
                let m = inp.bytes(300);
                // The host's view: a message handed over directly counts as sent.
                if m.len() <= 240 {
                    w.borrow_mut().observe(&m);
                }
                bus.handle_message(&m);
            }
            10 => {
                let mut world = w.borrow_mut();
                for _ in 0..inp.u8() % 4 {
                    let f = inp.u16() as u32 % 2100;
                    world.flags.insert(f);
                }
            }
            11 => {
                let mut n = 0;
                while bus.next_event().is_some() {
                    n += 1;
                    assert!(n <= EVENT_QUEUE, "event queue longer than its capacity");
                }
            }
            12 => {
                if opens.len() < 3 {
                    let relid = 1 + inp.u8() as u32 % 8;
                    let cfg = ChannelConfig {
                        outbound_pages: 2 + inp.below(3),
                        inbound_pages: 2 + inp.below(3),
                        target_vp: None,
                        user_data: [0; 120],
                    };
                    let mut wt = waiter(&mut inp);
                    if let Ok(ch) = Chan::open(&bus, relid, &cfg, &mut wt) {
                        opens.push(Open {
                            ch,
                            pending: Vec::new(),
                        });
                    }
                }
            }
            13 => {
                if !opens.is_empty() {
                    let i = inp.below(opens.len());
                    let mut o = opens.swap_remove(i);
                    let mut wt = waiter(&mut inp);
                    let mut failed = Vec::new();
                    let _ = o.ch.close_with(&mut wt, |id, c, _| failed.push((id, c)));
                    for (id, c) in failed {
                        let j = o
                            .pending
                            .iter()
                            .position(|(x, _)| *x == id)
                            .expect("close failed a request not in flight");
                        assert_eq!(o.pending.swap_remove(j).1, c);
                    }
                    assert!(o.pending.is_empty(), "close lost requests");
                }
            }
            14 => {
                if buffers.len() < 3 {
                    let relid = 1 + inp.u8() as u32 % 8;
                    let pages = 1 + inp.below(60);
                    let mut wt = waiter(&mut inp);
                    if let Ok(b) = HostBuffer::with_gpadl(&bus, relid, pages, &mut wt) {
                        assert_eq!(b.len(), pages * 4096);
                        buffers.push(b);
                    }
                }
            }
            15 => {
                if !buffers.is_empty() {
                    let i = inp.below(buffers.len());
                    let b = buffers.swap_remove(i);
                    let mut wt = waiter(&mut inp);
                    let _ = b.release(&mut wt);
                }
            }
            16 => {
                if !opens.is_empty() {
                    let i = inp.below(opens.len());
                    let o = &mut opens[i];
                    match inp.u8() % 4 {
                        0 => {
                            ctx += 1;
                            let payload = inp.bytes(64);
                            if let Ok(id) = o.ch.request(&[&payload], ctx) {
                                assert!(o.pending.iter().all(|(x, _)| *x != id));
                                o.pending.push((id, ctx));
                            }
                        }
                        1 => {
                            let mut buf = vec![0u8; 4096];
                            for _ in 0..4 {
                                match o.ch.recv(&mut buf) {
                                    Ok(Some(r)) => check_received(o, r),
                                    Ok(None) => break,
                                    Err(ChannelError::BufferTooSmall { .. }) => break,
                                    Err(_) => {
                                        assert!(o.pending.is_empty(), "error before all failures");
                                        break;
                                    }
                                }
                            }
                        }
                        2 => {
                            let _ = o.ch.end_batch();
                        }
                        _ => {
                            let payload = inp.bytes(64);
                            let _ = o.ch.send(&[&payload]);
                        }
                    }
                }
            }
            17 => {
                let mut wt = waiter(&mut inp);
                let _ = bus.connect(&mut wt);
            }
            18 => {
                let mut wt = waiter(&mut inp);
                let _ = bus.unload(&mut wt);
            }
            _ => {
                // A driver that drops its channel without closing: the ring stays the host's.
                if !opens.is_empty() {
                    let i = inp.below(opens.len());
                    drop(opens.swap_remove(i));
                }
            }
        }
        if matches!(op, 12 | 13 | 14 | 15 | 17 | 18) {
            // Blocking calls poll until their answer: whatever they left queued may be in the
            // bus's inbox too.
            bus_inbox |= !w.borrow().inbox.is_empty();
        }
        check_state(&bus);
    }
    trace!("end: host lied = {}", w.borrow().lied);
    for o in opens.drain(..) {
        let mut wt = BoundedWait::new(2, (|| {}) as fn());
        let mut n = 0;
        let _ = o.ch.close_with(&mut wt, |_, _, _| n += 1);
        assert_eq!(n, o.pending.len(), "close lost requests");
    }
    for b in buffers.drain(..) {
        let mut wt = BoundedWait::new(2, (|| {}) as fn());
        let _ = b.release(&mut wt);
    }
}
