//! Regression tests for netvsc offload bugs found while writing the `netvsc_offload` fuzz
//! target's oracle (`fuzz/fuzz_targets/netvsc_offload.rs`: an LSO plan's segments cover the
//! TCP payload exactly), each replayed against the mock network VSP, which cuts LSO frames
//! as a host NIC does.

mod common;

use common::frames::*;
use common::net::*;
use netvsc::offload::CsumStatus;
use vmbus_guest::Released;

/// The TCP payload of a received IPv4 segment.
fn tcp_payload(f: &[u8]) -> &[u8] {
    let l4 = 14 + usize::from(f[14] & 15) * 4;
    &f[l4 + usize::from(f[l4 + 12] >> 4) * 4..]
}

/// `lso_plan` counts the payload up to the IP datagram's end, but `send_lso` handed the
/// host the whole frame. With the IP length zeroed for LSO, a host cannot tell bytes after
/// the datagram (trailing padding or garbage) from payload: it sent them as TCP data.
#[test]
fn bytes_after_the_ip_datagram_are_not_sent_as_lso_payload() {
    let (mut ra, mut rb, vsp_a, vsp_b) = switched_pair(with_mac(MAC_A), with_mac(MAC_B));
    let mut a = GuestNic::open(&ra.guest, ra.relid, &small(), &mut waiter(&mut ra.host)).unwrap();
    let mut b = GuestNic::open(&rb.guest, rb.relid, &small(), &mut waiter(&mut rb.host)).unwrap();
    let (host_a, host_b) = (&mut ra.host, &mut rb.host);
    let data = payload(3000, 0x5A);
    let mut frame = ipv4(6, false, &tcp(&data));
    frame.extend_from_slice(&[0xEE; 6]);
    a.send_lso(&frame, 1460).unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        host_a.step();
        while a.poll(64, |_| {}).unwrap() {}
        host_b.step();
        while b
            .poll_with_checksum(64, |f, c| got.push((f.to_vec(), c.tcp)))
            .unwrap()
        {}
    }
    assert_eq!(got.len(), 3, "3000 bytes in segments of 1460");
    let mut joined = Vec::new();
    for (f, verdict) in &got {
        assert_eq!(*verdict, CsumStatus::Good);
        joined.extend_from_slice(tcp_payload(f));
    }
    assert_eq!(
        joined.len(),
        data.len(),
        "the segments carry the TCP payload, nothing after it"
    );
    assert!(joined == data, "the payload arrives intact");
    assert_eq!(a.close(&mut waiter(host_a)), Released::Freed);
    assert_eq!(b.close(&mut waiter(host_b)), Released::Freed);
    assert_clean(host_a, &vsp_a);
    assert_clean(host_b, &vsp_b);
}

/// The LSO (and page-buffer) slots are named only by GPA-direct requests, never by a GPADL,
/// so the host lets go of them once the channel is closed with its confirmation. `close`
/// released them before closing the channel: with an LSO send the host never completed,
/// they could only be leaked, though the host confirmed the close right after. Fuzz input:
/// an LSO send, the host rewrites a ring (the channel dies with the send in flight), close
/// on a host that answers every teardown — `Leaked`.
#[test]
fn lso_slots_with_a_send_in_flight_are_freed_once_the_channel_closed() {
    let mut rig = rig(test_harness::network::NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    vsp.withhold_completions(true);
    let frame = ipv4(6, false, &tcp(&payload(5000, 0x33)));
    nic.send_lso(&frame, 1460).unwrap();
    host.step();
    assert_eq!(vsp.withheld(), 1, "the host holds the LSO send");
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_eq!(host.gpadls(), 0);
}
