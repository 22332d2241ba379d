//! netvsc on a real VMBus channel against the mock network VSP: the handshake at every NVSP
//! version, two guests exchanging frames through a virtual switch, link changes, withheld
//! completions (back-pressure), hostile host messages, and the size of the user-held types.

mod common;

use common::net::*;
use netvsc::nic::{ETHERNET_HEADER, MAX_RECEIVE_MESSAGE};
use netvsc::protocol::{NvspVersion, filter};
use netvsc::{Busy, NetError, NicConfig};
use test_harness::network::{NVSP_VERSIONS, NetVspConfig, NetworkVsp, VirtualSwitch};
use test_harness::vmbus::MockVmbusHost;
use vmbus_guest::Released;

fn frame(dst: [u8; 6], src: [u8; 6], seq: u16, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x88B5u16.to_be_bytes()); // local experimental ethertype
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push((f.len() as u8).wrapping_mul(7).wrapping_add(seq as u8));
    }
    f
}

/// Polls `nic` (stepping `host` in between) until `want` frames arrived or 50 rounds pass.
fn receive(nic: &mut GuestNic<'_>, host: &mut MockVmbusHost, want: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for _ in 0..50 {
        host.step();
        while nic.poll(64, |f| got.push(f.to_vec())).unwrap() {}
        if got.len() >= want {
            break;
        }
    }
    got
}

#[test]
fn handshake_at_every_nvsp_version() {
    for &max in &NVSP_VERSIONS {
        let mut rig = rig(NetVspConfig {
            max_version: max,
            ..NetVspConfig::default()
        });
        let vsp = rig.vsp.clone();
        let (nic, host) = open(&mut rig, &small());
        let info = *nic.info();
        assert_eq!(info.version, NvspVersion(max), "host max {max:#x}");
        assert_eq!(vsp.version(), Some(max));
        let ndis = if max <= NvspVersion::V4.0 {
            (6, 1)
        } else {
            (6, 30)
        };
        assert_eq!(vsp.ndis_version(), Some(ndis));
        if max >= NvspVersion::V2.0 {
            assert_eq!(vsp.ndis_config().map(|c| c.0), Some(1514));
        } else {
            assert_eq!(vsp.ndis_config(), None);
        }
        assert_eq!(info.mac, NetVspConfig::default().mac);
        assert_eq!(info.mtu, 1500);
        assert_eq!(info.section_size, 6144);
        assert_eq!(info.sections, 10);
        assert_eq!(info.recv_slots, (256 << 10) / 1806);
        assert_eq!(info.max_packets_per_message, 8);
        assert_eq!(
            info.link_speed,
            if max >= NvspVersion::V5.0 {
                100_000_000
            } else {
                0
            }
        );
        assert!(nic.link_up());
        assert_eq!(vsp.filter(), filter::DEFAULT);
        assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
        assert_eq!(vsp.filter(), 0, "filter cleared on close");
        assert_eq!(host.gpadls(), 0);
        assert_clean(host, &vsp);
    }
}

#[test]
fn a_host_accepting_no_version_fails_the_open_and_frees_everything() {
    let mut rig = rig(NetVspConfig::default());
    let only_newer: &'static [NvspVersion] = &[NvspVersion(0x0007_0000)];
    let config = NicConfig {
        versions: only_newer,
        ..small()
    };
    let r = GuestNic::open(&rig.guest, rig.relid, &config, &mut waiter(&mut rig.host));
    assert_eq!(r.err(), Some(NetError::NoVersion));
    assert_eq!(rig.host.gpadls(), 0);
    assert_clean(&rig.host, &rig.vsp);
}

#[test]
fn default_capacities_register_16_mib_and_1_mib_and_fit_16_kib() {
    let mut rig = rig_with(NetworkVsp::new(NetVspConfig::default()), 64 << 20);
    let vsp = rig.vsp.clone();
    let (nic, host) = open(&mut rig, &NicConfig::default());
    assert_eq!(nic.info().recv_slots, (16 << 20) / 1806);
    assert_eq!(nic.info().sections, ((1 << 20) / 6144) as u16);
    let size = size_of::<GuestNic<'_>>();
    println!("size_of Nic (default capacities) = {size} bytes");
    println!("size_of NicConfig = {} bytes", size_of::<NicConfig>());
    assert!(size <= 16 << 10, "Nic is {size} bytes");
    assert!(size_of::<NicConfig>() <= 16 << 10);
    const {
        assert!(
            MAX_RECEIVE_MESSAGE >= 1806,
            "a whole OpenVMM slot fits the copy buffer"
        )
    };
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn two_guests_on_a_virtual_switch_exchange_frames_both_ways() {
    let mac_a = [0x00, 0x15, 0x5D, 0, 0, 0xA];
    let mac_b = [0x00, 0x15, 0x5D, 0, 0, 0xB];
    let (mut a, mut b, vsp_a, vsp_b) = switched_pair(
        with_mac(mac_a),
        NetVspConfig {
            max_version: NvspVersion::V4.0,
            ..with_mac(mac_b)
        },
    );
    let (mut nic_a, host_a) = open(&mut a, &small());
    let (mut nic_b, host_b) = open(&mut b, &small());
    assert_eq!(nic_a.mac(), mac_a);
    assert_eq!(nic_b.mac(), mac_b);

    // A → B: more frames than send sections, of every size up to the MTU.
    let sizes = [60usize, 64, 100, 512, 1000, 1514];
    let sent_ab: Vec<Vec<u8>> = (0..30u16)
        .map(|i| frame(mac_b, mac_a, i, sizes[usize::from(i) % sizes.len()]))
        .collect();
    let mut busy = 0;
    for f in &sent_ab {
        loop {
            match nic_a.send_frame(f) {
                Ok(()) => break,
                Err(NetError::Busy(_)) => {
                    busy += 1;
                    host_a.step();
                    nic_a.poll(64, |_| panic!("A receives nothing")).unwrap();
                }
                Err(e) => panic!("send failed: {e}"),
            }
        }
    }
    host_a.step();
    let got_b = receive(&mut nic_b, host_b, sent_ab.len());
    assert_eq!(got_b, sent_ab);
    assert!(
        busy > 0,
        "30 frames through 10 sections needs back-pressure"
    );

    // B → A, and a broadcast both ways.
    let sent_ba: Vec<Vec<u8>> = (0..8u16)
        .map(|i| frame(mac_a, mac_b, 100 + i, 200 + usize::from(i)))
        .collect();
    for f in &sent_ba {
        nic_b.send_frame(f).unwrap();
    }
    let bcast = frame([0xFF; 6], mac_b, 999, 90);
    nic_b.send_frame(&bcast).unwrap();
    host_b.step();
    let mut want = sent_ba.clone();
    want.push(bcast);
    assert_eq!(receive(&mut nic_a, host_a, want.len()), want);

    // A frame to a third MAC is not delivered (directed filter).
    nic_a
        .send_frame(&frame([2, 0, 0, 0, 0, 9], mac_a, 5, 60))
        .unwrap();
    host_a.step();
    assert!(receive(&mut nic_b, host_b, 1).is_empty());

    // Completions reaped, every receive range returned.
    for _ in 0..5 {
        host_a.step();
        host_b.step();
        nic_a.poll(64, |_| {}).unwrap();
        nic_b.poll(64, |_| {}).unwrap();
    }
    let (sa, sb) = (nic_a.stats(), nic_b.stats());
    assert_eq!(sa.tx_frames, 31);
    assert_eq!(sa.tx_completed, 31);
    assert_eq!(sb.tx_completed, 9);
    assert_eq!(sb.rx_frames, 30);
    assert_eq!(sa.rx_frames, 9);
    assert_eq!(sa.tx_failed + sb.tx_failed, 0);
    assert_eq!(nic_a.sends_in_flight() + nic_b.sends_in_flight(), 0);
    assert_eq!(
        vsp_a.receives_outstanding() + vsp_b.receives_outstanding(),
        0
    );
    assert!(
        sb.rx_packets < 30,
        "several frames per transfer-page packet: {}",
        sb.rx_packets
    );
    assert_eq!(nic_a.close(&mut waiter(host_a)), Released::Freed);
    assert_eq!(nic_b.close(&mut waiter(host_b)), Released::Freed);
    assert_clean(host_a, &vsp_a);
    assert_clean(host_b, &vsp_b);
}

#[test]
fn link_down_and_up_are_indicated_and_frames_stop_while_down() {
    let switch = VirtualSwitch::new();
    let mac_a = [0x00, 0x15, 0x5D, 0, 1, 0xA];
    let mac_b = [0x00, 0x15, 0x5D, 0, 1, 0xB];
    let vsp_a = NetworkVsp::new(with_mac(mac_a)).on_switch(&switch);
    let vsp_b = NetworkVsp::new(with_mac(mac_b)).on_switch(&switch);
    let mut a = rig_with(vsp_a.clone(), 16 << 20);
    let mut b = rig_with(vsp_b.clone(), 16 << 20);
    let (mut nic_a, host_a) = open(&mut a, &small());
    let (mut nic_b, host_b) = open(&mut b, &small());
    assert!(nic_b.link_up());
    assert!(!nic_b.take_link_change());
    // The open saw TASK_OFFLOAD_CURRENT_CONFIG after its offload parameters.
    let opened = nic_b.stats().indications;

    vsp_b.set_link(false);
    receive(&mut nic_b, host_b, 0);
    assert!(!nic_b.link_up());
    assert!(nic_b.take_link_change());
    nic_a.send_frame(&frame(mac_b, mac_a, 1, 60)).unwrap();
    host_a.step();
    assert!(receive(&mut nic_b, host_b, 1).is_empty());
    assert_eq!(switch.stats().dropped_link_down, 1);

    vsp_b.set_link(true);
    vsp_b.indicate(0x4001_0013, &50_000u32.to_le_bytes());
    receive(&mut nic_b, host_b, 0);
    assert!(nic_b.link_up());
    assert!(nic_b.take_link_change());
    assert_eq!(nic_b.info().link_speed, 50_000);
    let f = frame(mac_b, mac_a, 2, 80);
    nic_a.send_frame(&f).unwrap();
    host_a.step();
    assert_eq!(receive(&mut nic_b, host_b, 1), vec![f]);
    assert_eq!(nic_b.stats().indications, opened + 3);
    assert_eq!(nic_a.close(&mut waiter(host_a)), Released::Freed);
    assert_eq!(nic_b.close(&mut waiter(host_b)), Released::Freed);
    assert_clean(host_a, &vsp_a);
    assert_clean(host_b, &vsp_b);
}

#[test]
fn withheld_completions_give_back_pressure_never_a_lost_frame() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    let mac = nic.mac();
    vsp.withhold_completions(true);
    let mut sent = 0;
    let err = loop {
        match nic.send_frame(&frame([0xFF; 6], mac, sent, 100)) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        host.step();
        nic.poll(16, |_| {}).unwrap();
    };
    assert_eq!(err, NetError::Busy(Busy::NoSection));
    assert_eq!(sent, 10, "one frame per section");
    assert!(!nic.can_send());
    assert_eq!(nic.stats().tx_busy_section, 1);
    assert_eq!(vsp.withheld(), 10);
    vsp.withhold_completions(false);
    for _ in 0..5 {
        host.step();
        nic.poll(64, |_| {}).unwrap();
    }
    assert_eq!(nic.stats().tx_completed, 10);
    assert!(nic.can_send());
    nic.send_frame(&frame([0xFF; 6], mac, 99, 100)).unwrap();
    let from_guest = vsp.frames_from_guest();
    assert_eq!(from_guest.len(), 10);
    assert!(
        from_guest
            .iter()
            .enumerate()
            .all(|(i, f)| *f == frame([0xFF; 6], mac, i as u16, 100))
    );
    // Oversized and runt frames are refused and counted.
    assert_eq!(nic.send_frame(&[0u8; 1515]), Err(NetError::FrameSize(1515)));
    assert_eq!(
        nic.send_frame(&[0u8; ETHERNET_HEADER - 1]),
        Err(NetError::FrameSize(13))
    );
    // A length no buffer has is refused before any size arithmetic (it overflowed).
    assert_eq!(
        nic.queue_frame_with(usize::MAX, |_| ()),
        Err(NetError::FrameSize(usize::MAX))
    );
    assert_eq!(nic.stats().tx_bad_size, 3);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn hostile_receive_messages_are_rejected_counted_and_completed() {
    let switch = VirtualSwitch::new();
    let vsp = NetworkVsp::new(NetVspConfig::default()).on_switch(&switch);
    let mut rig = rig_with(vsp.clone(), 16 << 20);
    let (mut nic, host) = open(&mut rig, &small());
    let words = |w: &[u32]| -> Vec<u8> { w.iter().flat_map(|x| x.to_le_bytes()).collect() };
    // Malformed RNDIS in a valid range.
    vsp.inject_rndis(&words(&[1, 8])); // PACKET shorter than its header
    vsp.inject_rndis(&words(&[1, 4000, 36, 10, 0, 0, 0, 0, 0, 0, 0])); // msg_len beyond the range
    vsp.inject_rndis(&words(&[1, 44, 36, 100, 0, 0, 0, 0, 0, 0, 0])); // data beyond msg_len
    vsp.inject_rndis(&words(&[1, 56, u32::MAX, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])); // offset overflow
    vsp.inject_rndis(&words(&[1, 60, 48, 4, 4, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0])); // OOB data
    vsp.inject_rndis(&words(&[
        1, 68, 52, 4, 0, 0, 0, 36, 12, 0, 0, 999, 0, 12, 0, 0, 0,
    ])); // bad PPI
    vsp.inject_rndis(&words(&[0x8000_0004, 24, 77, 0, 4, 16])); // info beyond msg_len
    vsp.inject_rndis(&words(&[0x8000_0005, 16, 12345, 0])); // reply to no request
    vsp.inject_rndis(&words(&[0x4242, 8])); // unknown type
    vsp.inject_rndis(&[1, 2, 3]); // a range shorter than a header
    // A well-formed PACKET whose frame is longer than MTU + 14.
    let mut big = words(&[1, 44 + 1600, 36, 1600, 0, 0, 0, 0, 0, 0, 0]);
    big.resize(44 + 1600, 0xEE);
    vsp.inject_rndis(&big);
    // Hostile transfer-page packets.
    let nvsp = words(&[107, 0, u32::MAX, 0]);
    vsp.inject_transfer_pages(0xBEEF, &[(64, 0)], &nvsp); // wrong page set id
    vsp.inject_transfer_pages(0xCAFE, &[(64, 300 << 10)], &nvsp); // past the buffer
    vsp.inject_transfer_pages(0xCAFE, &[(u32::MAX, u32::MAX)], &nvsp); // overflowing
    vsp.inject_transfer_pages(0xCAFE, &[(64, 0)], &words(&[108, 1])); // not SEND_RNDIS_PKT
    vsp.inject_transfer_pages(0xCAFE, &[], &nvsp); // no ranges
    let frames = receive(&mut nic, host, 1);
    assert!(frames.is_empty());
    let s = nic.stats();
    assert_eq!(s.rx_bad_messages, 8, "{s:#?}");
    assert_eq!(s.unexpected, 1, "{s:#?}");
    assert_eq!(s.rx_too_large, 1, "{s:#?}");
    assert_eq!(s.rx_bad_packets, 3, "{s:#?}");
    assert_eq!(s.rx_bad_ranges, 3, "{s:#?}");
    assert_eq!(vsp.receives_outstanding(), 0, "every packet completed");
    // Still working afterwards.
    let mac = nic.mac();
    let good = frame(mac, [2, 0, 0, 0, 0, 1], 7, 70);
    switch.inject(0, &good);
    assert_eq!(receive(&mut nic, host, 1), vec![good]);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert!(host.protocol_errors().is_empty());
}

#[test]
fn invalid_host_answers_fail_the_open_cleanly() {
    // A send section too small for one full frame.
    let mut small_sections = rig(NetVspConfig {
        section_size: 1024,
        ..NetVspConfig::default()
    });
    let r = GuestNic::open(
        &small_sections.guest,
        small_sections.relid,
        &small(),
        &mut waiter(&mut small_sections.host),
    );
    assert_eq!(r.err(), Some(NetError::HostValue("send section size")));
    assert_eq!(small_sections.host.gpadls(), 0, "both buffers torn down");
    assert!(small_sections.host.protocol_errors().is_empty());
    assert!(small_sections.host.freed_while_mapped().is_empty());

    // A host that refuses RNDIS control: the open fails at INITIALIZE without waiting for a
    // reply that cannot come.
    let mut rig = rig(NetVspConfig::default());
    rig.vsp.refuse_control(true);
    let (r, left) = {
        let mut w = waiter(&mut rig.host);
        let r = GuestNic::open(&rig.guest, rig.relid, &small(), &mut w);
        (r, w.remaining())
    };
    assert!(left > 400, "no timeout: {left} waits left");
    assert_eq!(
        r.err(),
        Some(NetError::HostStatus {
            what: "RNDIS control message",
            status: 2
        })
    );
    assert_eq!(rig.host.gpadls(), 0);
    assert!(rig.host.protocol_errors().is_empty());
}

#[test]
fn a_rescind_with_sends_in_flight_fails_them_and_leaks_nothing_the_host_maps() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let relid = rig.relid;
    let (mut nic, host) = open(&mut rig, &small());
    let mac = nic.mac();
    vsp.withhold_completions(true);
    for i in 0..3 {
        nic.send_frame(&frame([0xFF; 6], mac, i, 64)).unwrap();
    }
    host.step();
    assert_eq!(vsp.withheld(), 3);
    host.rescind(relid);
    host.step();
    nic.bus().poll();
    let mut err = None;
    for _ in 0..5 {
        match nic.poll(64, |_| {}) {
            Ok(_) => {
                host.step();
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert_eq!(
        err,
        Some(NetError::Channel(vmbus_guest::ChannelError::Rescinded))
    );
    assert_eq!(nic.stats().tx_failed, 3);
    assert_eq!(
        nic.send_frame(&frame([0xFF; 6], mac, 9, 64)),
        Err(NetError::Channel(vmbus_guest::ChannelError::Rescinded))
    );
    // The host confirms the buffer GPADL teardowns (sent before RELID_RELEASED), so the
    // buffers are freed; nothing the host still maps is.
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert!(
        host.freed_while_mapped().is_empty(),
        "{:?}",
        host.freed_while_mapped()
    );
    assert!(
        host.protocol_errors().is_empty(),
        "{:?}",
        host.protocol_errors()
    );
}

#[test]
fn frames_can_be_pulled_one_at_a_time_and_the_packet_completes_after_the_last() {
    let mac_a = [0x00, 0x15, 0x5D, 0, 2, 0xA];
    let mac_b = [0x00, 0x15, 0x5D, 0, 2, 0xB];
    let (mut a, mut b, vsp_a, vsp_b) = switched_pair(with_mac(mac_a), with_mac(mac_b));
    let (mut nic_a, host_a) = open(&mut a, &small());
    let (mut nic_b, host_b) = open(&mut b, &small());
    let sent: Vec<Vec<u8>> = (0..4u16)
        .map(|i| frame(mac_b, mac_a, i, 70 + usize::from(i)))
        .collect();
    for f in &sent {
        nic_a.send_frame(f).unwrap();
    }
    host_a.step();
    host_b.step();
    let before = nic_b.stats().rx_packets;
    let mut got = Vec::new();
    for i in 0..4 {
        let f = nic_b.receive_with(8, |f| f.to_vec()).unwrap().unwrap();
        got.push(f);
        host_b.step();
        if i < 3 {
            assert_eq!(
                vsp_b.receives_outstanding(),
                1,
                "completed only after the last frame"
            );
        }
    }
    assert_eq!(got, sent);
    assert_eq!(
        nic_b.stats().rx_packets - before,
        1,
        "all four in one transfer-page packet"
    );
    assert_eq!(nic_b.receive_with(8, |f| f.to_vec()).unwrap(), None);
    host_b.step();
    assert_eq!(vsp_b.receives_outstanding(), 0);
    assert_eq!(nic_a.close(&mut waiter(host_a)), Released::Freed);
    assert_eq!(nic_b.close(&mut waiter(host_b)), Released::Freed);
    assert_clean(host_a, &vsp_a);
    assert_clean(host_b, &vsp_b);
}

#[test]
fn two_smoltcp_guests_on_the_switch_ping_each_other() {
    use netvsc::phy::NetvscDevice;
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::socket::icmp;
    use smoltcp::time::Instant;
    use smoltcp::wire::{
        EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr,
    };

    let mac_a = [0x00, 0x15, 0x5D, 0, 3, 0xA];
    let mac_b = [0x00, 0x15, 0x5D, 0, 3, 0xB];
    let (mut a, mut b, vsp_a, vsp_b) = switched_pair(with_mac(mac_a), with_mac(mac_b));
    let (mut nic_a, host_a) = open(&mut a, &small());
    let (mut nic_b, host_b) = open(&mut b, &small());

    let iface = |nic: &mut GuestNic<'_>, ip: [u8; 4]| {
        let mac = nic.mac();
        let mut dev = NetvscDevice::new(nic);
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        let mut iface = Interface::new(config, &mut dev, Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::v4(ip[0], ip[1], ip[2], ip[3]), 24))
                .unwrap();
        });
        iface
    };
    let mut iface_a = iface(&mut nic_a, [10, 0, 0, 1]);
    let mut iface_b = iface(&mut nic_b, [10, 0, 0, 2]);
    let mut sockets_a = SocketSet::new(vec![]);
    let mut sockets_b = SocketSet::new(vec![]);
    let icmp_socket = || {
        icmp::Socket::new(
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        )
    };
    let ha = sockets_a.add(icmp_socket());
    let hb = sockets_b.add(icmp_socket());
    sockets_a
        .get_mut::<icmp::Socket>(ha)
        .bind(icmp::Endpoint::Ident(0xA1))
        .unwrap();
    sockets_b
        .get_mut::<icmp::Socket>(hb)
        .bind(icmp::Endpoint::Ident(0xB2))
        .unwrap();

    let caps = ChecksumCapabilities::default();
    let echo = |ident: u16, seq_no: u16, data: &[u8]| {
        let repr = Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut bytes), &caps);
        bytes
    };
    let payload_a: Vec<u8> = (0..56u8).collect();
    let payload_b: Vec<u8> = (0..200u8).rev().collect();
    // A pings B and B pings A, at the same time.
    let mut sent = false;
    let mut replies_a = Vec::new();
    let mut replies_b = Vec::new();
    for t in 0..200u64 {
        let now = Instant::from_millis(t as i64);
        if !sent {
            let sa = sockets_a.get_mut::<icmp::Socket>(ha);
            sa.send_slice(&echo(0xA1, 1, &payload_a), IpAddress::v4(10, 0, 0, 2))
                .unwrap();
            let sb = sockets_b.get_mut::<icmp::Socket>(hb);
            sb.send_slice(&echo(0xB2, 7, &payload_b), IpAddress::v4(10, 0, 0, 1))
                .unwrap();
            sent = true;
        }
        iface_a.poll(now, &mut NetvscDevice::new(&mut nic_a), &mut sockets_a);
        iface_b.poll(now, &mut NetvscDevice::new(&mut nic_b), &mut sockets_b);
        host_a.step();
        host_b.step();
        for (sockets, h, replies) in [
            (&mut sockets_a, ha, &mut replies_a),
            (&mut sockets_b, hb, &mut replies_b),
        ] {
            let s = sockets.get_mut::<icmp::Socket>(h);
            while s.can_recv() {
                let (data, from) = s.recv().unwrap();
                let packet = Icmpv4Packet::new_checked(data).unwrap();
                if let Ok(Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                }) = Icmpv4Repr::parse(&packet, &caps)
                {
                    replies.push((from, ident, seq_no, data.to_vec()));
                }
            }
        }
        if !replies_a.is_empty() && !replies_b.is_empty() {
            break;
        }
    }
    assert_eq!(
        replies_a,
        vec![(IpAddress::v4(10, 0, 0, 2), 0xA1, 1, payload_a)]
    );
    assert_eq!(
        replies_b,
        vec![(IpAddress::v4(10, 0, 0, 1), 0xB2, 7, payload_b)]
    );
    // ARP both ways, the echo requests and the replies: every frame accounted for.
    let (sa, sb) = (nic_a.stats(), nic_b.stats());
    for s in [sa, sb] {
        assert_eq!(
            (s.tx_frames, s.tx_completed, s.rx_frames),
            (4, 4, 4),
            "{s:#?}"
        );
    }
    assert_eq!(
        sa.tx_busy_section + sa.tx_busy_ring + sb.tx_busy_section + sb.tx_busy_ring,
        0
    );
    assert_eq!(nic_a.close(&mut waiter(host_a)), Released::Freed);
    assert_eq!(nic_b.close(&mut waiter(host_b)), Released::Freed);
    assert_clean(host_a, &vsp_a);
    assert_clean(host_b, &vsp_b);
}

#[test]
fn random_hostile_receive_traffic_never_panics_and_every_packet_is_completed() {
    let switch = VirtualSwitch::new();
    let vsp = NetworkVsp::new(NetVspConfig::default()).on_switch(&switch);
    let mut rig = rig_with(vsp.clone(), 16 << 20);
    let (mut nic, host) = open(&mut rig, &small());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let types = [
        1u32,
        7,
        0x8000_0002,
        0x8000_0004,
        0x8000_0005,
        0x8000_0008,
        0x4242,
    ];
    for round in 0..40 {
        for _ in 0..8 {
            // An RNDIS-looking message with random fields and a random length.
            let len = (next() % 400) as usize;
            let mut m: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 8 {
                let t = types[(next() % types.len() as u64) as usize];
                m[..4].copy_from_slice(&t.to_le_bytes());
                let msg_len = (next() % (len as u64 + 64)) as u32;
                m[4..8].copy_from_slice(&msg_len.to_le_bytes());
            }
            vsp.inject_rndis(&m);
        }
        // Transfer-page packets with random ranges (some inside the buffer).
        let ranges: Vec<(u32, u32)> = (0..(next() % 5))
            .map(|_| ((next() % 5000) as u32, (next() % (300 << 10)) as u32))
            .collect();
        let set = if round % 3 == 0 { 0xBEEF } else { 0xCAFE };
        let nvsp: Vec<u8> = [107u32, (next() % 2) as u32, u32::MAX, 0]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        vsp.inject_transfer_pages(set, &ranges, &nvsp);
        receive(&mut nic, host, 0);
    }
    receive(&mut nic, host, 0);
    assert_eq!(vsp.receives_outstanding(), 0, "every packet completed");
    let s = nic.stats();
    assert!(
        s.rx_packets >= 40 * 9,
        "every injected packet was received: {s:#?}"
    );
    assert!(
        s.rx_bad_messages + s.rx_bad_ranges + s.rx_bad_packets > 100,
        "{s:#?}"
    );
    // The NIC still carries traffic afterwards.
    let good = frame(nic.mac(), [2, 0, 0, 0, 0, 1], 1, 100);
    switch.inject(0, &good);
    assert_eq!(receive(&mut nic, host, 1), vec![good]);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert!(
        host.protocol_errors().is_empty(),
        "{:?}",
        host.protocol_errors()
    );
}
