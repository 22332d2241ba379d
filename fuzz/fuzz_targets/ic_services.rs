//! The integration services against a hostile host: each service's messages without a
//! channel (`src/ic.rs`: heartbeat, KVP, shutdown, time sync, negotiation, against models),
//! and an `IcChannel` of each service on a hostile ring: the host sends requests (well
//! formed, truncated, arbitrary, too large for the channel's buffer), packets that are not
//! requests (completions for unknown ids, GPA-direct, transfer pages), reads the replies
//! late or never (the outbound ring fills), rewrites the rings, rescinds.
//!
//! Invariants beyond "no panic": every request is answered at most once, in order, with the
//! host's transaction id, in-band without a completion request, and with exactly the bytes a
//! second copy of the service (fed the same requests) produces — requests it drops get no
//! answer; a poll reads at most its budget (plus the 64 unknown completions one receive may
//! skip); the counters agree with what the host saw; close frees the rings when the host
//! confirms.
#![no_main]

use hyperv_guest_fuzz::dev::{self, Chaos, DevHal, Devices, HostPacket, HostWait, Step};
use hyperv_guest_fuzz::host::Scripted;
use hyperv_guest_fuzz::ic::{self, request};
use hyperv_guest_fuzz::{Input, trace};
use ic_services::channel::IcChannel;
use ic_services::heartbeat::{self, Heartbeat};
use ic_services::kvp::{GuestInfo, Kvp};
use ic_services::shutdown::{self, Shutdown, ShutdownRequest};
use ic_services::timesync::{self, TimeSync};
use ic_services::{IcHandler, IcService};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use vmbus_guest::Released;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    match inp.u8() % 4 {
        0 => ic::services(&mut inp),
        _ => match inp.u8() % 4 {
            0 => channel::<_, { heartbeat::MAX_PACKET }>(inp, Heartbeat::new),
            1 => channel::<_, 8192>(inp, || Kvp::<'static, 1200>::new(GuestInfo::default())),
            2 => channel::<_, { shutdown::MAX_PACKET }>(inp, || {
                Shutdown::new(|r: &ShutdownRequest| r.force)
            }),
            _ => channel::<_, { timesync::MAX_PACKET }>(inp, || {
                let mut t = 0u64;
                TimeSync::new(move || {
                    t += 1_000_000;
                    t
                })
            }),
        },
    }
});

/// A request the host sent: transaction id, the bytes the guest sees (payload padded to 8),
/// and whether the channel drops it unread (larger than its buffer).
struct Sent {
    tid: u64,
    bytes: Vec<u8>,
    oversized: bool,
}

struct Sim<'a, H> {
    dev: Devices,
    inp: Input<'a>,
    sent: VecDeque<Sent>,
    reference: IcService<H>,
    /// Every in-band packet the guest may have taken as a request is in `sent`.
    exact: bool,
    replies: u64,
    next_tid: u64,
    buf: usize,
}

impl<H: IcHandler> Sim<'_, H> {
    /// The reply `tid` with `payload` arrived: the requests before it must be the ones the
    /// guest dropped, and it must carry what the reference answers.
    fn reply(&mut self, tid: u64, payload: &[u8]) {
        self.replies += 1;
        if !self.exact {
            return;
        }
        loop {
            let s = self
                .sent
                .pop_front()
                .unwrap_or_else(|| panic!("reply {tid:#x} to no request"));
            if s.oversized {
                assert_ne!(s.tid, tid, "a request larger than the buffer was answered");
                continue;
            }
            let mut b = vec![0u8; self.buf - 16];
            b[..s.bytes.len()].copy_from_slice(&s.bytes);
            match self.reference.handle_in_place(&mut b, s.bytes.len()) {
                Ok(r) => {
                    assert_eq!(tid, s.tid, "reply out of order or a request lost");
                    assert_eq!(&payload[..r.len], &b[..r.len], "reply bytes of {tid:#x}");
                    return;
                }
                Err(e) => {
                    assert_ne!(
                        s.tid, tid,
                        "{tid:#x} answered, but the service drops it: {e}"
                    );
                }
            }
        }
    }
}

impl<H: IcHandler> Step for Sim<'_, H> {
    fn step(&mut self) {
        while let Some(p) = self.dev.recv(1) {
            if !p.trusted {
                self.exact = false;
                continue;
            }
            assert_eq!(
                p.packet_type, 6,
                "IC reply of packet type {}",
                p.packet_type
            );
            assert!(!p.completion_requested, "IC reply asks for a completion");
            self.reply(p.tid, &p.payload);
        }
        self.dev.flush(1);
    }
}

fn channel<H: IcHandler, const BUF: usize>(mut inp: Input<'_>, make: impl Fn() -> H) {
    let answer_teardown = !inp.u8().is_multiple_of(8);
    let version = inp.below(8);
    let w = dev::world(
        vec![dev::offer(H::DEVICE_CLASS, 1, 0, 0, 0)],
        answer_teardown,
    );
    let bus = dev::connect(&w, DevHal::new(&w), version);
    let sim = Rc::new(RefCell::new(Sim {
        dev: Devices::new(w.clone()),
        inp,
        sent: VecDeque::new(),
        reference: IcService::new(make()),
        exact: true,
        replies: 0,
        next_tid: 0x1000,
        buf: BUF,
    }));
    let mut waiter = HostWait::new(sim.clone(), 4);
    let Ok(mut ch) = IcChannel::<Scripted, DevHal, H, BUF>::open(&bus, make(), &mut waiter) else {
        return;
    };
    let mut rescinded = false;
    let mut budget = ic_services::channel::DEFAULT_POLL_BUDGET;
    for _ in 0..80 {
        let op = {
            let mut s = sim.borrow_mut();
            if s.inp.is_empty() {
                break;
            }
            s.inp.u8() % 10
        };
        trace!("op {op}");
        match op {
            0..=3 => {
                let mut s = sim.borrow_mut();
                let service = s.reference.handler().service_versions().to_vec();
                let payload = match s.inp.u8() % 5 {
                    0 => ic::negotiate(&mut s.inp, &service),
                    1 => s.inp.bytes(3000),
                    2 => vec![0; s.inp.below(8000)],
                    _ => {
                        let mut p = s.inp.bytes(60);
                        p.resize(if s.inp.bool() { 2580 } else { 60 }, 0);
                        p
                    }
                };
                let ty = match s.inp.u8() % 4 {
                    0 => 0,
                    1 => s.inp.u16() % 9,
                    _ => H::MSG_TYPE.0,
                };
                let v = service[s.inp.below(service.len())];
                let mut bytes = request(ty, (v.major, v.minor), 0, &payload);
                if s.inp.u8().is_multiple_of(16) {
                    let n = s.inp.below(bytes.len());
                    bytes.truncate(n);
                }
                let tid = s.next_tid;
                s.next_tid += 1;
                let padded = bytes.len().next_multiple_of(8);
                let oversized = 16 + padded > BUF;
                let mut seen = bytes.clone();
                seen.resize(padded, 0);
                let sent = s.dev.send(
                    1,
                    HostPacket::InBand {
                        tid,
                        completion: false,
                        payload: bytes,
                    },
                );
                if sent {
                    s.sent.push_back(Sent {
                        tid,
                        bytes: seen,
                        oversized,
                    });
                }
            }
            4 => {
                let mut s = sim.borrow_mut();
                let kind = s.inp.u8() % 3;
                let tid = s.inp.u64();
                let payload = s.inp.bytes(64);
                let p = match kind {
                    0 => HostPacket::Completion { tid, payload },
                    1 => HostPacket::GpaDirect {
                        tid,
                        offset: 0,
                        count: 8,
                        pfns: vec![s.inp.u64()],
                        payload,
                    },
                    _ => HostPacket::TransferPages {
                        tid,
                        set: s.inp.u16(),
                        ranges: vec![(s.inp.u32(), s.inp.u32())],
                        payload,
                    },
                };
                s.dev.send(1, p);
            }
            5 => {
                let mut s = sim.borrow_mut();
                let Sim { dev, inp, .. } = &mut *s;
                match dev::chaos(dev, inp, 1) {
                    Chaos::Rescind => {
                        rescinded = true;
                        drop(s);
                        bus.poll();
                    }
                    _ => s.exact = false,
                }
            }
            6 => sim.borrow_mut().step(),
            7 => {
                budget = 1 + sim.borrow_mut().inp.below(20);
                ch.set_poll_budget(budget);
            }
            _ => {
                let mut events = 0usize;
                let r = ch.poll(|_| events += 1);
                trace!("  poll {r:?}");
                if let Ok(p) = r {
                    assert!(p.read <= budget + 64, "a poll read {} packets", p.read);
                    assert!(p.answered <= p.read + 1);
                    assert_eq!(ch.has_more(), p.more);
                    assert_eq!(ch.reply_pending(), p.reply_pending);
                }
                sim.borrow_mut().dev.flush(1);
            }
        }
    }
    sim.borrow_mut().step();
    {
        let s = sim.borrow();
        if s.exact && !s.dev.world.borrow().lied {
            assert_eq!(
                ch.stats().answered,
                s.replies,
                "answered replies the host never saw"
            );
        }
    }
    let (_, released) = ch.close(&mut waiter);
    let lied = w.borrow().lied;
    if answer_teardown && !rescinded && !lied {
        assert_eq!(released, Released::Freed);
    }
}
