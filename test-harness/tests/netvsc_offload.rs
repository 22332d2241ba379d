//! netvsc checksum offloads against the mock network VSP's offload model: what is negotiated
//! at every host version and reply form, frames sent through the checksum API arriving with
//! correct checksums (checked by the host and by smoltcp's parsers), receive verdicts per
//! frame including bad ones, the smoltcp device's checksum duties, and hostile capability
//! replies and verdicts.

mod common;

use common::frames::*;
use common::net::*;
use netvsc::NicConfig;
use netvsc::offload::{ChecksumSet, CsumStatus, Offloads, RxChecksum, negotiate, parse_offload};
use netvsc::protocol::NvspVersion;
use smoltcp::phy::Device;
use smoltcp::time::Instant;
use test_harness::network::{
    CapsReply, HostOffloadCaps, NVSP_VERSIONS, NetVspConfig, NetworkVsp, OffloadHostConfig,
};
use test_harness::vmbus::MockVmbusHost;
use vmbus_guest::Released;

fn drain(nic: &mut GuestNic<'_>, host: &mut MockVmbusHost) {
    for _ in 0..5 {
        host.step();
        while nic.poll(64, |_| {}).unwrap() {}
    }
}

fn host(config: OffloadHostConfig) -> NetVspConfig {
    NetVspConfig {
        offload: config,
        ..NetVspConfig::default()
    }
}

#[test]
fn offloads_are_negotiated_per_host_version() {
    for &v in &NVSP_VERSIONS {
        let mut rig = rig(NetVspConfig {
            max_version: v,
            ..NetVspConfig::default()
        });
        let vsp = rig.vsp.clone();
        let (nic, host) = open(&mut rig, &small());
        let info = *nic.info();
        let caps = info.offload_caps.expect("capabilities answered");
        let (rev, size) = if v >= NvspVersion::V5.0 {
            (3, 156)
        } else if v >= NvspVersion::V4.0 {
            (2, 144)
        } else {
            (1, 112)
        };
        // The query named the revision of the guest's NDIS; the host answered that one.
        let st = vsp.offload_stats();
        assert_eq!(st.query_header, Some((0xA7, rev, size)), "NVSP {v:#x}");
        assert_eq!((caps.revision, caps.size), (rev, size));
        // Parameters: revision 2 / 22 bytes for NDIS 6.1, 3 / 28 for NDIS 6.30.
        let want_params = if v >= NvspVersion::V5.0 {
            (3, 28)
        } else {
            (2, 22)
        };
        assert_eq!(st.parameters_header, Some(want_params), "NVSP {v:#x}");
        let udp = v >= NvspVersion::V5.0;
        let o = nic.offloads();
        let tx = ChecksumSet {
            ip4: false,
            tcp4: true,
            udp4: udp,
            tcp6: true,
            udp6: udp,
        };
        assert_eq!(o.tx, tx, "NVSP {v:#x}");
        assert_eq!(o.rx, ChecksumSet { ip4: true, ..tx });
        assert_eq!(
            o.lso_v2_ipv4.map(|l| (l.max_size, l.min_segments)),
            Some((62780, 2))
        );
        assert!(o.lso_v2_ipv6.is_some());
        assert_eq!(o.rsc_offered, v == NvspVersion::V61.0);
        // The host enabled exactly what the guest believes.
        let e = vsp.offloads_enabled();
        assert_eq!(
            (e.tx.ip4, e.tx.tcp4, e.tx.udp4, e.tx.tcp6, e.tx.udp6),
            (false, true, udp, true, udp)
        );
        assert_eq!(
            (e.rx.ip4, e.rx.tcp4, e.rx.udp4, e.rx.tcp6, e.rx.udp6),
            (true, true, udp, true, udp)
        );
        assert!(e.lso_v2_ipv4 && e.lso_v2_ipv6 && !e.rsc);
        assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
        assert_clean(host, &vsp);
    }
}

#[test]
fn an_openvmm_style_revision_3_reply_is_taken_at_any_version() {
    let mut rig = rig(NetVspConfig {
        max_version: NvspVersion::V4.0,
        ..host(OffloadHostConfig {
            reply: CapsReply::Revision3,
            ..OffloadHostConfig::default()
        })
    });
    let vsp = rig.vsp.clone();
    let (nic, host) = open(&mut rig, &small());
    assert_eq!(nic.info().offload_caps.map(|c| c.revision), Some(3));
    // The parameters still follow the guest's NDIS 6.1: no UDP.
    assert!(nic.offloads().tx.tcp4 && !nic.offloads().tx.udp4);
    assert_eq!(vsp.offload_stats().parameters_header, Some((2, 22)));
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

/// Frames of every kind, through the checksum API, on a NIC with `offloads`; returns them.
fn every_kind() -> Vec<Vec<u8>> {
    vec![
        ipv4(6, false, &tcp(&payload(100, 1))),
        ipv4(6, true, &tcp(&payload(33, 2))),
        ipv4(17, false, &udp(&payload(201, 3))),
        ipv6(6, &tcp(&payload(64, 4))),
        ipv6(17, &udp(&payload(7, 5))),
        // Not TCP/UDP: sent as built.
        eth(MAC_B, MAC_A, 0x88B5)
            .into_iter()
            .chain(payload(50, 6))
            .collect(),
    ]
}

/// Sends `frames` through the three checksum entry points and checks what left the host:
/// every IPv4 frame accepted by smoltcp, the rest unchanged but for the checksum field,
/// nothing counted bad by the host.
fn send_every_kind(nic: &mut GuestNic<'_>, host: &mut MockVmbusHost, vsp: &NetworkVsp) {
    let frames = every_kind();
    nic.send_frame_checksum(&frames[0]).unwrap();
    let rest: Vec<&[u8]> = frames[1..5].iter().map(|f| f.as_slice()).collect();
    assert_eq!(nic.send_batch_checksum(&rest), Ok(4));
    // Built in place in the NIC's private buffer.
    let last = &frames[5];
    nic.queue_frame_checksum_with(last.len(), |b| b.copy_from_slice(last))
        .unwrap();
    nic.flush().unwrap();
    drain(nic, host);
    let got = vsp.frames_from_guest();
    assert_eq!(got.len(), frames.len());
    for (sent, out) in frames.iter().zip(&got) {
        if sent[12..14] == [0x08, 0x00] {
            assert!(smoltcp_ok(out), "{out:02x?}");
        }
        let mut masked = out.clone();
        if sent[12..14] != [0x88, 0xB5] {
            let c = checksum_field(sent);
            masked[c.clone()].copy_from_slice(&sent[c]);
        }
        assert_eq!(&masked, sent);
    }
    let o = vsp.offload_stats();
    assert_eq!(o.tx_verified, 5, "{o:#?}");
}

#[test]
fn checksum_offload_fills_every_tcp_and_udp_checksum() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    send_every_kind(&mut nic, host, &vsp);
    // The host computed all five over the guest's preload (IPv4 options: the host has them).
    let s = nic.stats();
    assert_eq!((s.tx_csum_offloaded, s.tx_csum_software), (5, 0));
    assert_eq!(vsp.offload_stats().tx_checksummed, 5);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn without_offloads_the_checksum_api_computes_in_software() {
    let no_caps = host(OffloadHostConfig {
        reply: CapsReply::NotSupported,
        ..OffloadHostConfig::default()
    });
    let refusing = host(OffloadHostConfig {
        refuse_parameters: true,
        ..OffloadHostConfig::default()
    });
    for (config, nic_config, queried) in [
        (no_caps, small(), true),
        (refusing.clone(), small(), true),
        (
            refusing,
            NicConfig {
                offloads: false,
                ..small()
            },
            false,
        ),
    ] {
        let mut rig = rig(config);
        let vsp = rig.vsp.clone();
        let (mut nic, host) = open(&mut rig, &nic_config);
        assert_eq!(nic.offloads(), Offloads::NONE);
        assert_eq!(vsp.offload_stats().capability_queries, u32::from(queried));
        assert_eq!(vsp.offload_stats().parameters_set, 0);
        send_every_kind(&mut nic, host, &vsp);
        let s = nic.stats();
        assert_eq!((s.tx_csum_offloaded, s.tx_csum_software), (0, 5));
        assert_eq!(vsp.offload_stats().tx_checksummed, 0);
        assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
        assert_clean(host, &vsp);
    }
}

#[test]
fn a_partial_host_gets_only_what_it_has_and_the_rest_is_software() {
    // TCPv4 transmit only, without IPv4 options support; nothing on receive.
    let caps = HostOffloadCaps {
        ip4_tx: 0x14,
        ..HostOffloadCaps::none()
    };
    let mut rig = rig(host(OffloadHostConfig {
        caps: Some(caps),
        ..OffloadHostConfig::default()
    }));
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    let o = nic.offloads();
    assert_eq!(
        o.tx,
        ChecksumSet {
            tcp4: true,
            ..ChecksumSet::default()
        }
    );
    assert!(o.rx.is_empty() && o.lso_v2_ipv4.is_none() && !o.tx_ip4_options);
    send_every_kind(&mut nic, host, &vsp);
    // Only TCPv4 without options went to the host.
    let s = nic.stats();
    assert_eq!((s.tx_csum_offloaded, s.tx_csum_software), (1, 4));
    assert_eq!(vsp.offload_stats().tx_checksummed, 1);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

/// The receive copy buffer a 9000-byte MTU needs.
const JUMBO_M: usize = netvsc::nic::receive_message_for(9000);
type JumboNic<'b> = netvsc::Nic<
    'b,
    vmbus_guest::SynicTransport<test_harness::hv::MockVp>,
    test_harness::hv::MockHal,
    64,
    JUMBO_M,
>;

#[test]
fn a_jumbo_frame_carries_its_checksum_ppi_in_the_first_page() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let config = NicConfig {
        mtu: 9000,
        recv_buffer_bytes: 1 << 20,
        ..small()
    };
    let mut nic =
        JumboNic::open(&rig.guest, rig.relid, &config, &mut waiter(&mut rig.host)).unwrap();
    let host = &mut rig.host;
    let big = ipv4(6, false, &tcp(&payload(9000 - 40, 9)));
    assert_eq!(big.len(), 9014);
    nic.send_frame_checksum(&big).unwrap();
    for _ in 0..5 {
        host.step();
        while nic.poll(64, |_| {}).unwrap() {}
    }
    let got = vsp.frames_from_guest();
    assert_eq!(got.len(), 1);
    assert!(smoltcp_ok(&got[0]));
    assert_eq!(nic.stats().tx_csum_offloaded, 1);
    assert_eq!(nic.stats().tx_completed, 1);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn the_host_counts_a_wrong_checksum_the_guest_sent() {
    // The oracle is not an echo: a frame sent without the checksum API and with a wrong
    // TCP checksum is counted.
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    nic.send_frame(&ipv4(6, false, &tcp(b"bad"))).unwrap();
    drain(&mut nic, host);
    assert_eq!(vsp.offload_stats().tx_bad_checksums, 1);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
}

/// Two guests on a switch: A sends, B receives.
struct Pair {
    a: Rig,
    b: Rig,
    vsp_b: NetworkVsp,
}

fn pair(b_config: NetVspConfig) -> Pair {
    let (a, b, _, vsp_b) = switched_pair(
        with_mac(MAC_A),
        NetVspConfig {
            mac: MAC_B,
            ..b_config
        },
    );
    Pair { a, b, vsp_b }
}

/// Sends `frames` from A and returns what B received with the verdicts.
fn through(
    a: &mut GuestNic<'_>,
    host_a: &mut MockVmbusHost,
    b: &mut GuestNic<'_>,
    host_b: &mut MockVmbusHost,
    frames: &[Vec<u8>],
) -> Vec<(Vec<u8>, RxChecksum)> {
    for f in frames {
        a.send_frame_checksum(f).unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..10 {
        host_a.step();
        while a.poll(64, |_| {}).unwrap() {}
        host_b.step();
        while b
            .poll_with_checksum(64, |f, c| got.push((f.to_vec(), c)))
            .unwrap()
        {}
        if got.len() >= frames.len() {
            break;
        }
    }
    got
}

#[test]
fn receive_verdicts_are_exposed_per_frame_including_bad_ones() {
    let mut p = pair(NetVspConfig::default());
    let vsp_b = p.vsp_b.clone();
    let mut a =
        GuestNic::open(&p.a.guest, p.a.relid, &small(), &mut waiter(&mut p.a.host)).unwrap();
    let mut b =
        GuestNic::open(&p.b.guest, p.b.relid, &small(), &mut waiter(&mut p.b.host)).unwrap();
    let (host_a, host_b) = (&mut p.a.host, &mut p.b.host);
    let frames = every_kind();
    let got = through(&mut a, host_a, &mut b, host_b, &frames);
    assert_eq!(got.len(), frames.len());
    use CsumStatus::{Good, NotChecked};
    let want = [
        (Good, Good, NotChecked),
        (Good, Good, NotChecked),
        (Good, NotChecked, Good),
        (NotChecked, Good, NotChecked),
        (NotChecked, NotChecked, Good),
        (NotChecked, NotChecked, NotChecked),
    ];
    for ((f, c), w) in got.iter().zip(want) {
        assert_eq!((c.ip, c.tcp, c.udp), w, "{f:02x?}");
    }
    assert_eq!(b.stats().rx_csum_good, 5);

    // The host corrupts the next two TCP/UDP frames before checking them: reported bad,
    // handed over with the verdict.
    vsp_b.corrupt_rx_checksums(2);
    let got = through(&mut a, host_a, &mut b, host_b, &frames[2..4]);
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].1.udp, got[0].1.ip), (CsumStatus::Bad, Good));
    assert_eq!(got[1].1.tcp, CsumStatus::Bad);
    assert_eq!(b.stats().rx_csum_bad, 2);

    // Pull style.
    a.send_frame_checksum(&frames[0]).unwrap();
    host_a.step();
    host_b.step();
    let pulled = b.receive_with_checksum(64, |f, c| (f.len(), c)).unwrap();
    assert_eq!(
        pulled.map(|(n, c)| (n, c.tcp)),
        Some((frames[0].len(), Good))
    );
    drain(&mut a, host_a);
    drain(&mut b, host_b);
    assert_eq!(a.close(&mut waiter(host_a)), Released::Freed);
    assert_eq!(b.close(&mut waiter(host_b)), Released::Freed);
    assert_clean(host_b, &vsp_b);
}

#[test]
fn verdicts_for_offloads_not_enabled_are_not_trusted() {
    // B turned offloads off; its host claims every checksum succeeded anyway.
    let mut p = pair(NetVspConfig::default());
    let vsp_b = p.vsp_b.clone();
    let mut a =
        GuestNic::open(&p.a.guest, p.a.relid, &small(), &mut waiter(&mut p.a.host)).unwrap();
    let off = NicConfig {
        offloads: false,
        ..small()
    };
    let mut b = GuestNic::open(&p.b.guest, p.b.relid, &off, &mut waiter(&mut p.b.host)).unwrap();
    let (host_a, host_b) = (&mut p.a.host, &mut p.b.host);
    vsp_b.force_rx_checksum_bits(Some(0x38));
    let got = through(&mut a, host_a, &mut b, host_b, &every_kind());
    assert_eq!(got.len(), 6);
    assert!(got.iter().all(|(_, c)| *c == RxChecksum::NOT_CHECKED));
    assert_eq!(b.stats().rx_csum_good, 0);
    assert_eq!(a.close(&mut waiter(host_a)), Released::Freed);
    assert_eq!(b.close(&mut waiter(host_b)), Released::Freed);
}

/// An RNDIS PACKET carrying `frame` with a checksum PPI of `bits` (a host message).
fn rndis_packet(frame: &[u8], bits: u32) -> Vec<u8> {
    let len = 44 + 16 + frame.len();
    let mut m = Vec::new();
    for w in [
        1,
        len as u32,
        36 + 16,
        frame.len() as u32,
        0,
        0,
        0,
        36,
        16,
        0,
        0,
    ] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    for w in [16u32, 0, 12, bits] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m.extend_from_slice(frame);
    m
}

/// A correct IPv4 TCP frame to B.
fn good_tcp4(seed: u8) -> Vec<u8> {
    let mut f = ipv4(6, false, &tcp(&payload(40, seed)));
    let c = checksum_field(&f);
    f[c.clone()].fill(0);
    let mut s = sum16(&f[26..34]) + 6 + (f.len() - 34) as u32;
    s += sum16(&f[34..]);
    let v = !fold(s);
    f[c].copy_from_slice(&v.to_be_bytes());
    assert!(smoltcp_ok(&f));
    f
}

#[test]
fn the_smoltcp_device_follows_the_offloads_and_checks_what_the_host_did_not() {
    let mut rig = rig(NetVspConfig {
        mac: MAC_B,
        ..NetVspConfig::default()
    });
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    {
        let dev = netvsc::phy::NetvscDevice::new(&mut nic);
        let caps = dev.capabilities();
        // TCP/UDP: neither computed nor verified by smoltcp; IPv4 header: computed only.
        for c in [caps.checksum.tcp, caps.checksum.udp] {
            assert!(!c.tx() && !c.rx());
        }
        assert!(caps.checksum.ipv4.tx() && !caps.checksum.ipv4.rx());
        assert!(caps.checksum.icmpv4.tx() && caps.checksum.icmpv4.rx());
    }
    let good = good_tcp4(1);
    let mut bad_tcp = good.clone();
    *bad_tcp.last_mut().unwrap() ^= 0xFF;
    let mut bad_ip = good.clone();
    bad_ip[22] ^= 1; // TTL without fixing the header checksum
    // (frame, verdict bits the host claims, accepted by the device)
    let cases = [
        (&good, 0x28, true),     // host: IP and TCP good
        (&good, 0x00, true),     // host checked nothing: the device verifies, fine
        (&bad_tcp, 0x00, false), // the device's own check catches it
        (&bad_tcp, 0x28, true),  // a lying host is believed (nothing else can know)
        (&good, 0x01, false),    // host: TCP failed
        (&bad_ip, 0x08, false),  // IPv4 header not checked by the host: the device does
        (&good, 0x24, false),    // host: IP failed
    ];
    let mut dev = netvsc::phy::NetvscDevice::new(&mut nic);
    for (i, (frame, bits, accepted)) in cases.iter().enumerate() {
        vsp.inject_rndis(&rndis_packet(frame, *bits));
        host.step();
        let got = dev.receive(Instant::ZERO).map(|(rx, _tx)| {
            use smoltcp::phy::RxToken;
            rx.consume(|f| f.to_vec())
        });
        assert_eq!(got.is_some(), *accepted, "case {i}");
        if let Some(f) = got {
            assert_eq!(&f, *frame);
        }
    }
    assert_eq!(dev.stats().rx_csum_dropped, 4);
    assert_eq!(dev.stats().rx_unverified, 0);
    drain(&mut nic, host);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn hostile_verdict_bits_are_decoded_and_masked_never_trusted_beyond_the_offloads() {
    let mut rig = rig(NetVspConfig {
        mac: MAC_B,
        max_version: NvspVersion::V4.0, // no UDP offload
        ..NetVspConfig::default()
    });
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    let rx = nic.offloads().rx;
    let frames = [
        good_tcp4(2),
        ipv4(17, false, &udp(b"u")),
        ipv6(6, &tcp(b"t")),
    ];
    let mut x: u32 = 0x2545_F491;
    for round in 0..300 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let frame = &frames[round % frames.len()];
        vsp.inject_rndis(&rndis_packet(frame, x));
        host.step();
        let got = nic
            .receive_with_checksum(64, |f, c| (f.to_vec(), c))
            .unwrap();
        let (f, c) = got.expect("delivered");
        assert_eq!(&f, frame);
        assert_eq!(
            c,
            RxChecksum::from_bits(x).masked(frame, &rx),
            "bits {x:#x}"
        );
        if frame[23] == 17 && frame[12] == 0x08 {
            assert_eq!(c.udp, CsumStatus::NotChecked, "UDP not enabled at NVSP 4");
        }
    }
    drain(&mut nic, host);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn hostile_capability_blobs_never_panic_and_never_break_the_open() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // A well-formed revision-3 object to mutate.
    let mut template = vec![0u8; 156];
    template[..4].copy_from_slice(&[0xA7, 3, 156, 0]);
    let (mut parsed, mut refused, mut enabled) = (0, 0, 0);
    for round in 0..120 {
        let mut blob = template.clone();
        match round % 4 {
            // A few random bytes.
            0 => {
                for _ in 0..4 {
                    let i = next() as usize % blob.len();
                    blob[i] = next() as u8;
                }
            }
            // Everything random, any length up to 300.
            1 => {
                blob = (0..next() % 301).map(|_| next() as u8).collect();
            }
            // A valid header with random capability words.
            2 => {
                for b in &mut blob[4..] {
                    *b = next() as u8;
                }
            }
            // Header fields at their edges.
            _ => {
                blob[1] = [0, 1, 2, 3, 255][next() as usize % 5];
                let size = [0u16, 111, 112, 156, 157, 300, 0xFFFF][next() as usize % 7];
                blob[2..4].copy_from_slice(&size.to_le_bytes());
                blob.truncate([100, 112, 144, 156][next() as usize % 4]);
            }
        }
        vsp.set_offload_config(OffloadHostConfig {
            reply: CapsReply::Raw(blob.clone()),
            ..OffloadHostConfig::default()
        });
        let nic = GuestNic::open(&rig.guest, rig.relid, &small(), &mut waiter(&mut rig.host))
            .unwrap_or_else(|e| panic!("round {round}: {e} with {blob:02x?}"));
        let expect = parse_offload(&blob[..blob.len().min(256)]).ok();
        assert_eq!(nic.info().offload_caps, expect, "round {round}");
        let want = expect.map_or(Offloads::NONE, |c| negotiate(&c, NvspVersion::V61).offloads);
        assert_eq!(nic.offloads(), want, "round {round}");
        parsed += usize::from(expect.is_some());
        refused += usize::from(expect.is_none());
        enabled += usize::from(want != Offloads::NONE);
        assert_eq!(nic.close(&mut waiter(&mut rig.host)), Released::Freed);
    }
    // The mutations reach both sides of the parser and the negotiation.
    assert!(
        parsed >= 20 && refused >= 20 && enabled >= 20,
        "{parsed} {refused} {enabled}"
    );
    assert_clean(&rig.host, &vsp);
}
