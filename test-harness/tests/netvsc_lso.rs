//! netvsc LSO v2 sends against the mock network VSP, which checks the guest's duties (LSO
//! PPI, zeroed IP length, preload without the length) and cuts the frame into segments as a
//! NIC does: the peer guest receives the segments with right checksums (smoltcp's parsers
//! and the host's receive verdicts agree) and the payload whole, in order.

mod common;

use common::frames::*;
use common::net::*;
use netvsc::offload::{CsumStatus, LsoError};
use netvsc::{Busy, NetError};
use test_harness::network::{HostOffloadCaps, NetVspConfig, NetworkVsp, OffloadHostConfig};
use test_harness::vmbus::MockVmbusHost;
use vmbus_guest::Released;

/// A guest-to-guest pair on a switch: rigs for A (sender) and B (receiver).
fn pair(a_config: NetVspConfig) -> (Rig, Rig, NetworkVsp, NetworkVsp) {
    switched_pair(
        NetVspConfig {
            mac: MAC_A,
            ..a_config
        },
        with_mac(MAC_B),
    )
}

/// Steps both hosts and collects B's frames with their TCP verdicts.
fn collect(
    a: &mut GuestNic<'_>,
    host_a: &mut MockVmbusHost,
    b: &mut GuestNic<'_>,
    host_b: &mut MockVmbusHost,
    want: usize,
) -> Vec<(Vec<u8>, CsumStatus)> {
    let mut got = Vec::new();
    for _ in 0..50 {
        host_a.step();
        while a.poll(64, |_| {}).unwrap() {}
        host_b.step();
        while b
            .poll_with_checksum(64, |f, c| got.push((f.to_vec(), c.tcp)))
            .unwrap()
        {}
        if got.len() >= want {
            break;
        }
    }
    got
}

/// The TCP payload of a received IPv4 or IPv6 segment and its sequence number.
fn tcp_payload(f: &[u8]) -> (u32, &[u8]) {
    let l4 = if f[12] == 0x86 {
        54
    } else {
        14 + usize::from(f[14] & 15) * 4
    };
    let seq = u32::from_be_bytes([f[l4 + 4], f[l4 + 5], f[l4 + 6], f[l4 + 7]]);
    (seq, &f[l4 + usize::from(f[l4 + 12] >> 4) * 4..])
}

#[test]
fn lso_sends_arrive_as_segments_with_the_payload_whole() {
    let (mut ra, mut rb, vsp_a, vsp_b) = pair(NetVspConfig::default());
    let mut a = GuestNic::open(&ra.guest, ra.relid, &small(), &mut waiter(&mut ra.host)).unwrap();
    let mut b = GuestNic::open(&rb.guest, rb.relid, &small(), &mut waiter(&mut rb.host)).unwrap();
    let (host_a, host_b) = (&mut ra.host, &mut rb.host);
    let data4 = payload(20_000, 0x41);
    let data6 = payload(9_999, 0x66);
    let big4 = ipv4(6, false, &tcp(&data4));
    let big6 = ipv6(6, &tcp(&data6));
    // A small frame queued first goes first.
    let first = eth(MAC_B, MAC_A, 0x88B5)
        .into_iter()
        .chain(payload(46, 1))
        .collect::<Vec<_>>();
    a.queue_frame(&first).unwrap();
    a.send_lso(&big4, 1460).unwrap();
    a.send_lso(&big6, 1440).unwrap();
    let (n4, n6) = (20_000usize.div_ceil(1460), 9_999usize.div_ceil(1440));
    let got = collect(&mut a, host_a, &mut b, host_b, 1 + n4 + n6);
    assert_eq!(got.len(), 1 + n4 + n6);
    assert_eq!(got[0].0, first);
    let (mut joined4, mut joined6) = (Vec::new(), Vec::new());
    for (i, (f, tcp_verdict)) in got[1..].iter().enumerate() {
        assert!(f.len() <= 1514, "segment {i}: {} bytes", f.len());
        // The host validated every segment's checksum on B's side.
        assert_eq!(*tcp_verdict, CsumStatus::Good, "segment {i}");
        let (seq, data) = tcp_payload(f);
        let joined = if i < n4 {
            assert!(smoltcp_ok(f), "segment {i}");
            &mut joined4
        } else {
            &mut joined6
        };
        assert_eq!(seq, 0x100 + joined.len() as u32, "segment {i}");
        joined.extend_from_slice(data);
    }
    assert_eq!(joined4, data4);
    assert_eq!(joined6, data6);
    let s = a.stats();
    assert_eq!((s.tx_lso, s.tx_lso_segments), (2, (n4 + n6) as u64));
    assert_eq!((s.tx_frames, s.tx_completed, s.tx_failed), (3, 3, 0));
    let o = vsp_a.offload_stats();
    assert_eq!((o.tx_lso_sends, o.tx_lso_segments), (2, (n4 + n6) as u64));
    assert_eq!(o.tx_verified, (n4 + n6) as u64);
    assert_eq!(a.close(&mut waiter(host_a)), Released::Freed);
    assert_eq!(b.close(&mut waiter(host_b)), Released::Freed);
    assert_clean(host_a, &vsp_a);
    assert_clean(host_b, &vsp_b);
}

#[test]
fn lso_is_refused_where_it_cannot_go_and_back_pressure_is_reported() {
    let (mut ra, _rb, vsp_a, _) = pair(NetVspConfig::default());
    let mut a = GuestNic::open(&ra.guest, ra.relid, &small(), &mut waiter(&mut ra.host)).unwrap();
    let host_a = &mut ra.host;
    // A segment that fits the MTU goes as one checksum-offloaded frame.
    a.send_lso(&ipv4(6, false, &tcp(&payload(1000, 2))), 500)
        .unwrap();
    assert_eq!((a.stats().tx_lso, a.stats().tx_csum_offloaded), (0, 1));
    // Not TCP; an MSS whose segments exceed the MTU.
    let udp_big = ipv4(17, false, &udp(&payload(5000, 3)));
    assert_eq!(
        a.send_lso(&udp_big, 1000),
        Err(NetError::Lso(LsoError::NotTcp(None)))
    );
    let big = ipv4(6, false, &tcp(&payload(5000, 4)));
    assert_eq!(
        a.send_lso(&big, 1461),
        Err(NetError::Lso(LsoError::Mss(1461)))
    );
    // Two LSO slots: a third send waits for a completion.
    vsp_a.withhold_completions(true);
    a.send_lso(&big, 1460).unwrap();
    a.send_lso(&big, 1460).unwrap();
    assert_eq!(a.send_lso(&big, 1460), Err(NetError::Busy(Busy::NoSection)));
    host_a.step();
    vsp_a.withhold_completions(false);
    for _ in 0..4 {
        host_a.step();
        while a.poll(64, |_| {}).unwrap() {}
    }
    a.send_lso(&big, 1460).unwrap();
    for _ in 0..4 {
        host_a.step();
        while a.poll(64, |_| {}).unwrap() {}
    }
    let s = a.stats();
    assert_eq!((s.tx_lso, s.tx_completed, s.tx_failed), (3, 4, 0));
    assert_eq!(a.close(&mut waiter(host_a)), Released::Freed);
    assert_clean(host_a, &vsp_a);
}

#[test]
fn a_host_without_lso_leaves_it_off() {
    let caps = HostOffloadCaps {
        lso_v2_max_size: 0,
        ..HostOffloadCaps::hyper_v(0x6_0001)
    };
    let (mut ra, _rb, vsp_a, _) = pair(NetVspConfig {
        offload: OffloadHostConfig {
            caps: Some(caps),
            ..OffloadHostConfig::default()
        },
        ..NetVspConfig::default()
    });
    let mut a = GuestNic::open(&ra.guest, ra.relid, &small(), &mut waiter(&mut ra.host)).unwrap();
    let o = a.offloads();
    assert!(o.lso_v2_ipv4.is_none() && o.lso_v2_ipv6.is_none() && o.tx.tcp4);
    let e = vsp_a.offloads_enabled();
    assert!(!e.lso_v2_ipv4 && !e.lso_v2_ipv6);
    let big = ipv4(6, false, &tcp(&payload(5000, 5)));
    assert_eq!(
        a.send_lso(&big, 1460),
        Err(NetError::Lso(LsoError::NotNegotiated))
    );
    assert_eq!(a.close(&mut waiter(&mut ra.host)), Released::Freed);
    assert_clean(&ra.host, &vsp_a);
}
