//! netvsc and what real hosts send or do beyond the basic data path: RNDIS KEEPALIVE and
//! HALT, zero-length completions, an SR-IOV VF association and a host-side data-path switch
//! (answered, no VF driver), buffers the host revokes, and jumbo frames sent as GPA-direct
//! page buffers.

mod common;

use common::net::*;
use netvsc::protocol::NvspVersion;
use test_harness::network::NetVspConfig;
use test_harness::vmbus::MockVmbusHost;
use vmbus_guest::Released;

fn frame(dst: [u8; 6], src: [u8; 6], seq: u16, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x88B5u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push((f.len() as u8).wrapping_mul(13).wrapping_add(seq as u8));
    }
    f
}

fn pump(nic: &mut GuestNic<'_>, host: &mut MockVmbusHost, rounds: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for _ in 0..rounds {
        host.step();
        while nic.poll(64, |f| got.push(f.to_vec())).unwrap() {}
    }
    got
}

#[test]
fn keepalive_is_answered_and_close_sends_halt_after_the_filter() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    nic.keepalive(&mut waiter(host)).unwrap();
    nic.keepalive(&mut waiter(host)).unwrap();
    assert!(!vsp.halted());
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert!(vsp.halted(), "HALT sent on close");
    assert_eq!(vsp.filter(), 0, "filter 0 before HALT");
    assert_clean(host, &vsp);
}

#[test]
fn zero_length_completions_are_accepted_for_data_and_control() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    vsp.empty_completions(true);
    let mac = nic.mac();
    for i in 0..20 {
        nic.send_frame(&frame([0xFF; 6], mac, i, 100)).unwrap();
        pump(&mut nic, host, 1);
    }
    // Control messages (their sections come back through empty completions too).
    nic.keepalive(&mut waiter(host)).unwrap();
    pump(&mut nic, host, 2);
    let s = nic.stats();
    assert_eq!((s.tx_frames, s.tx_completed, s.tx_failed), (20, 20, 0));
    assert_eq!(nic.sends_in_flight(), 0);
    assert!(nic.can_send());
    assert_eq!(vsp.frames_from_guest().len(), 20);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn a_vf_association_is_completed_and_answered_with_the_synthetic_data_path() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    assert_eq!(nic.vf(), netvsc::VfState::default());
    vsp.announce_vf(true, 0x1234);
    pump(&mut nic, host, 3);
    let vf = nic.vf();
    assert_eq!(vf.association, Some((true, 0x1234)));
    // OpenVMM answers SWITCH_DATA_PATH with an empty completion; it was accepted.
    assert!(vf.synthetic_confirmed, "{vf:?}");
    assert_eq!(vsp.data_path_requests(), vec![0]);
    let done = vsp.host_request_completions();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, 0x8000_0000_0000_0000);
    assert_eq!(&done[0].1[..8], &[128, 0, 0, 0, 1, 0, 0, 0]);

    // The host switches back itself, then withdraws the VF.
    vsp.host_switch_data_path(0);
    vsp.announce_vf(false, 0x1234);
    pump(&mut nic, host, 3);
    let vf = nic.vf();
    assert_eq!(vf.host_data_path, Some(0));
    assert_eq!(vf.association, Some((false, 0x1234)));
    assert_eq!(vsp.data_path_requests(), vec![0], "no switch for a removal");
    assert_eq!(vsp.host_request_completions().len(), 3);
    // Malformed: a data path value that does not exist is refused, counted, still completed.
    vsp.host_switch_data_path(7);
    pump(&mut nic, host, 2);
    let done = vsp.host_request_completions();
    assert_eq!(done.len(), 4);
    assert_eq!(&done[3].1[..8], &[129, 0, 0, 0, 2, 0, 0, 0]);
    assert_eq!(nic.stats().unexpected, 1);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn no_data_path_switch_below_nvsp_4() {
    let mut rig = rig(NetVspConfig {
        max_version: NvspVersion::V2.0,
        ..Default::default()
    });
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    vsp.announce_vf(true, 9);
    pump(&mut nic, host, 3);
    assert_eq!(nic.vf().association, Some((true, 9)));
    assert!(vsp.data_path_requests().is_empty());
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn revoked_buffers_fail_sends_with_a_count_and_close_still_frees_them() {
    let mac_a = [0x00, 0x15, 0x5D, 0, 5, 0xA];
    let mac_b = [0x00, 0x15, 0x5D, 0, 5, 0xB];
    let (mut a, mut b, vsp_a, vsp_b) = switched_pair(with_mac(mac_a), with_mac(mac_b));
    let (mut nic_a, host_a) = open(&mut a, &small());
    let (mut nic_b, host_b) = open(&mut b, &small());
    vsp_a.revoke_buffers();
    for i in 0..3 {
        nic_a.send_frame(&frame(mac_b, mac_a, i, 90)).unwrap();
    }
    pump(&mut nic_a, host_a, 3);
    let s = nic_a.stats();
    assert_eq!((s.tx_frames, s.tx_completed, s.tx_failed), (3, 0, 3));
    assert!(
        pump(&mut nic_b, host_b, 3).is_empty(),
        "A's failed sends reached nobody"
    );
    // B's frames to A are not delivered (A's receive buffer is gone), nothing panics.
    nic_b.send_frame(&frame(mac_a, mac_b, 7, 90)).unwrap();
    host_b.step();
    assert!(pump(&mut nic_a, host_a, 3).is_empty());
    assert!(nic_a.keepalive(&mut waiter(host_a)).is_err());
    // The GPADL teardowns are still confirmed by the bus: nothing leaks.
    assert_eq!(nic_a.close(&mut waiter(host_a)), Released::Freed);
    assert_eq!(nic_b.close(&mut waiter(host_b)), Released::Freed);
    assert!(host_a.protocol_errors().is_empty());
    assert_eq!(vsp_a.fatal(), None);
    assert_clean(host_b, &vsp_b);
}

/// The receive copy buffer a 9000-byte MTU needs (a whole host slot).
const JUMBO_M: usize = netvsc::nic::receive_message_for(9000);
type JumboNic<'b> = netvsc::Nic<
    'b,
    vmbus_guest::SynicTransport<test_harness::hv::MockVp>,
    test_harness::hv::MockHal,
    64,
    JUMBO_M,
>;

fn jumbo() -> netvsc::NicConfig {
    netvsc::NicConfig {
        mtu: 9000,
        recv_buffer_bytes: 1 << 20,
        send_buffer_bytes: 64 << 10,
        channel: vmbus_guest::ChannelConfig::default(),
        ..netvsc::NicConfig::default()
    }
}

#[test]
fn jumbo_frames_go_as_page_buffers_with_the_header_in_one_page_and_come_back_whole() {
    let mac_a = [0x00, 0x15, 0x5D, 0, 6, 0xA];
    let mac_b = [0x00, 0x15, 0x5D, 0, 6, 0xB];
    let (mut a, mut b, vsp_a, vsp_b) = switched_pair(with_mac(mac_a), with_mac(mac_b));
    let mut nic_a = JumboNic::open(&a.guest, a.relid, &jumbo(), &mut waiter(&mut a.host)).unwrap();
    let mut nic_b = JumboNic::open(&b.guest, b.relid, &jumbo(), &mut waiter(&mut b.host)).unwrap();
    let (host_a, host_b) = (&mut a.host, &mut b.host);
    assert_eq!(nic_a.info().mtu, 9000);
    assert_eq!(nic_a.max_frame_len(), 9014);
    assert_eq!(vsp_a.ndis_config().map(|c| c.0), Some(9014));
    // Largest, a page-crossing middle size, a small one through a section.
    let sent = [
        frame(mac_b, mac_a, 1, 9014),
        frame(mac_b, mac_a, 2, 6200),
        frame(mac_b, mac_a, 3, 200),
    ];
    for f in &sent {
        nic_a.send_frame(f).unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..10 {
        host_a.step();
        host_b.step();
        while nic_a.poll(64, |_| {}).unwrap() {}
        while nic_b.poll(64, |f| got.push(f.to_vec())).unwrap() {}
    }
    assert_eq!(got, sent);
    let s = nic_a.stats();
    assert_eq!((s.tx_frames, s.tx_completed, s.tx_failed), (3, 3, 0));
    assert_eq!(nic_b.stats().rx_too_large, 0);
    // Every page-buffer slot came back: eight more large frames go out at once.
    for i in 0..8 {
        nic_a
            .send_frame(&frame(mac_b, mac_a, 10 + i, 8000))
            .unwrap();
    }
    assert_eq!(
        nic_a.send_frame(&frame(mac_b, mac_a, 99, 8000)),
        Err(netvsc::NetError::Busy(netvsc::Busy::NoSection))
    );
    for _ in 0..4 {
        host_a.step();
        while nic_a.poll(64, |_| {}).unwrap() {}
    }
    assert_eq!(nic_a.stats().tx_completed, 11);
    assert_eq!(nic_a.close(&mut waiter(host_a)), Released::Freed);
    assert_eq!(nic_b.close(&mut waiter(host_b)), Released::Freed);
    assert_clean(host_a, &vsp_a);
    assert_clean(host_b, &vsp_b);
}

#[test]
fn a_jumbo_mtu_falls_back_to_1500_on_an_nvsp_1_host_and_needs_a_large_copy_buffer() {
    let mut rig = rig(NetVspConfig {
        max_version: NvspVersion::V1.0,
        ..Default::default()
    });
    let vsp = rig.vsp.clone();
    let nic = JumboNic::open(&rig.guest, rig.relid, &jumbo(), &mut waiter(&mut rig.host)).unwrap();
    assert_eq!(nic.info().mtu, 1500);
    assert_eq!(nic.max_frame_len(), 1514);
    assert_eq!(nic.close(&mut waiter(&mut rig.host)), Released::Freed);
    assert_clean(&rig.host, &vsp);
    // The default copy buffer cannot hold a 9000-byte MTU's host slot: refused up front.
    let r = GuestNic::open(&rig.guest, rig.relid, &jumbo(), &mut waiter(&mut rig.host));
    assert!(matches!(r, Err(netvsc::NetError::InvalidArgument(_))));
}
