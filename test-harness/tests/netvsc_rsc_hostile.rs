//! netvsc RSC reassembly against a hostile host: fragment sequences out of order, without a
//! first or last fragment, with packet ids mixing, a frame beyond the reassembly buffer,
//! fragments split across transfer-page packets, ordinary frames in between. The NIC drops
//! and counts what is wrong (like Linux, or stricter), delivers what is right, never panics,
//! and completes every transfer-page packet exactly once (the mock host flags an unknown or
//! repeated completion).

mod common;

use common::frames::*;
use common::net::*;
use netvsc::offload::rsc::RSC_MAX_FRAME;
use netvsc::{NicStats, RxInfo};
use test_harness::network::{FIRST_FRAGMENT as F, LAST_FRAGMENT as L, SUB_ALLOCATION as S};
use test_harness::network::{Fragment, NetVspConfig};
use vmbus_guest::Released;

/// Data room of a receive slot of the mock (1806-byte slots, data at 256).
const ROOM: usize = 1550;

fn frag(flags: u8, id: u16, data: &[u8]) -> Fragment {
    Fragment {
        flags,
        packet_id: id,
        data: data.to_vec(),
    }
}

/// A frame of `n` bytes for B, distinct per `seed`.
fn frame(n: usize, seed: u8) -> Vec<u8> {
    let mut f = eth(MAC_B, MAC_A, 0x88B5);
    f.extend(payload(n - 14, seed));
    f
}

enum Pull {
    Poll,
    Receive,
}

/// Injects `packets`, then takes every frame (by polling or one `receive_with_info` at a
/// time); returns the frames and the stats, after checking that every packet was completed
/// once.
fn run(
    packets: &[Vec<Fragment>],
    with_storage: bool,
    pull: Pull,
) -> (Vec<(Vec<u8>, RxInfo)>, NicStats) {
    let mut rig = rig(NetVspConfig {
        mac: MAC_B,
        ..NetVspConfig::default()
    });
    let mut storage = vec![0u8; if with_storage { RSC_MAX_FRAME } else { 0 }];
    let mut nic = GuestNic::open_with_rsc(
        &rig.guest,
        rig.relid,
        &small(),
        &mut storage,
        &mut waiter(&mut rig.host),
    )
    .unwrap();
    assert_eq!(nic.offloads().rsc, with_storage);
    let (host, vsp) = (&mut rig.host, rig.vsp.clone());
    let before = vsp.receive_completions();
    vsp.inject_fragments(packets);
    let mut got = Vec::new();
    for _ in 0..200 {
        host.step();
        match pull {
            Pull::Poll => {
                while nic
                    .poll_with_info(8, |f, i| got.push((f.to_vec(), i)))
                    .unwrap()
                {}
            }
            Pull::Receive => {
                while let Some(x) = nic.receive_with_info(8, |f, i| (f.to_vec(), i)).unwrap() {
                    got.push(x);
                }
            }
        }
        if vsp.rsc_stats().injected_packets == packets.len() as u64
            && vsp.receives_outstanding() == 0
        {
            break;
        }
    }
    assert_eq!(vsp.rsc_stats().injected_packets, packets.len() as u64);
    // At least once each (nothing outstanding; the completions also include control
    // messages such as the offload indication), at most once (a repeated completion is one
    // for an unknown packet, a protocol error `assert_clean` reports).
    assert_eq!(vsp.receives_outstanding(), 0, "every packet completed");
    assert!(vsp.receive_completions() - before >= packets.len() as u64);
    let stats = nic.stats();
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
    (got, stats)
}

/// Packets of fragments, the frames (with fragment counts) they must give, fragments dropped.
type Sequence = (Vec<Vec<Fragment>>, Vec<(Vec<u8>, u16)>, u64);

/// The sequence of the main test and what it must give: (frame, fragments) delivered, and
/// the fragments dropped.
fn hostile_sequence() -> Sequence {
    let one = frame(3000, 1);
    let two = frame(2000, 2);
    let plain = frame(600, 3);
    let single = frame(900, 4);
    let big = frame(45 * ROOM, 5);
    assert!(big.len() > RSC_MAX_FRAME);
    let mut packets = vec![
        // Whole, in three fragments.
        vec![
            frag(S | F, 7, &one[..1000]),
            frag(S, 7, &one[1000..2500]),
            frag(S | L, 7, &one[2500..]),
        ],
        // No first fragment: both dropped.
        vec![frag(S, 8, &[1; 100]), frag(S | L, 8, &[2; 100])],
        // Packet ids mixing: the whole frame dropped (stricter than Linux).
        vec![
            frag(S | F, 9, &[1; 100]),
            frag(S, 10, &[2; 100]),
            frag(S | L, 9, &[3; 100]),
        ],
        // Split across transfer-page packets: dropped (Linux too).
        vec![frag(S | F, 11, &[1; 100]), frag(S, 11, &[2; 100])],
        vec![frag(S | L, 11, &[3; 100])],
        // A new first fragment before the last: the open one dropped, the new one whole.
        vec![
            frag(S | F, 12, &[9; 100]),
            frag(S | F, 13, &two[..1500]),
            frag(S | L, 13, &two[1500..]),
        ],
        // An ordinary frame (no sub-allocation flag) in between: delivered; the frame it
        // interrupts is dropped, and its last fragment with it.
        vec![
            frag(S | F, 14, &[1; 100]),
            frag(0, 14, &plain),
            frag(S | L, 14, &[2; 100]),
        ],
    ];
    // A frame beyond the reassembly buffer: 45 full fragments, all dropped.
    let mut p = vec![frag(S | F, 15, &big[..ROOM])];
    p.extend((1..44).map(|i| frag(S, 15, &big[i * ROOM..(i + 1) * ROOM])));
    p.push(frag(S | L, 15, &big[44 * ROOM..]));
    packets.push(p);
    // A single-fragment frame.
    packets.push(vec![frag(S | F | L, 16, &single)]);
    let want = vec![(one, 3), (two, 2), (plain, 0), (single, 1)];
    let dropped = 2 + 3 + 3 + 1 + 2 + 45;
    (packets, want, dropped)
}

#[test]
fn hostile_fragment_sequences_are_dropped_counted_and_completed_once() {
    let (packets, want, dropped) = hostile_sequence();
    for pull in [Pull::Poll, Pull::Receive] {
        let (got, s) = run(&packets, true, pull);
        let got: Vec<_> = got.into_iter().map(|(f, i)| (f, i.rsc_fragments)).collect();
        assert_eq!(got, want);
        assert_eq!(s.rx_rsc_dropped, dropped);
        assert_eq!((s.rx_rsc_frames, s.rx_rsc_fragments), (3, 6));
        assert_eq!(s.rx_frames, 4);
        assert_eq!(
            (s.rx_bad_messages, s.rx_bad_ranges, s.rx_bad_packets),
            (0, 0, 0)
        );
    }
}

#[test]
fn without_storage_only_single_fragment_frames_arrive() {
    let one = frame(3000, 1);
    let single = frame(900, 4);
    let packets = vec![
        vec![frag(S | F, 1, &one[..1500]), frag(S | L, 1, &one[1500..])],
        vec![frag(S | F | L, 2, &single)],
        // Beyond the MTU: RSC is off, so a single fragment may not exceed it.
        vec![frag(S | F | L, 3, &frame(ROOM, 6))],
    ];
    let (got, s) = run(&packets, false, Pull::Poll);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.as_slice(), got[0].1.rsc_fragments),
        (&single[..], 1)
    );
    assert_eq!((s.rx_rsc_dropped, s.rx_rsc_frames), (3, 1));
}

#[test]
fn random_fragment_sequences_never_panic_and_every_fragment_is_accounted_for() {
    let mut x: u32 = 0x2545_F491;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut packets = Vec::new();
    let (mut subs, mut plain) = (0u64, 0u64);
    for _ in 0..120 {
        let n = 1 + next() as usize % 8;
        let p: Vec<Fragment> = (0..n)
            .map(|_| {
                let v = next();
                let flags = (v & 7) as u8;
                let len = 1 + (v >> 8) as usize % 1514;
                if flags & S != 0 {
                    subs += 1;
                } else {
                    plain += 1;
                }
                frag(flags, (v >> 3 & 1) as u16, &payload(len, v as u8))
            })
            .collect();
        packets.push(p);
    }
    let (got, s) = run(&packets, true, Pull::Poll);
    assert_eq!(s.rx_rsc_fragments + s.rx_rsc_dropped, subs);
    assert_eq!(s.rx_frames - s.rx_rsc_frames, plain);
    assert_eq!(got.len() as u64, s.rx_frames);
    for (f, i) in &got {
        assert!(f.len() <= RSC_MAX_FRAME);
        assert!(i.rsc_fragments as usize <= 8);
    }
}
