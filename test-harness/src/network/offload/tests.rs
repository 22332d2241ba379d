//! The offload oracle is not an echo: it refuses bad parameters, catches a wrong preload
//! and reports corrupted frames. Checksums it produces are checked with smoltcp's parsers.

use super::frame::{folded, parse, pseudo, word_sum};
use super::*;
use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};

/// Ethernet + IPv4 (right header checksum) + TCP with `payload`; TCP checksum field = `csum`.
fn tcp4(payload: &[u8], csum: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = (40 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 7, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    let c = !folded(word_sum(&f[14..34]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&[
        0x04, 0xD2, 0x16, 0x2E, 0, 0, 0, 9, 0, 0, 0, 0, 0x50, 0x10, 0x20, 0,
    ]);
    f.extend_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn smoltcp_ok(f: &[u8]) -> bool {
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    ip.verify_checksum() && tcp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst))
}

fn tx_on() -> OffloadState {
    let mut s = OffloadState::new(OffloadHostConfig::default());
    s.enabled.tx.tcp4 = true;
    s.enabled.rx.tcp4 = true;
    s.enabled.rx.ip4 = true;
    s
}

/// Checksum PPI for TCP over IPv4 at offset 34.
const PPI: u32 = 0b0101 | (34 << 16);

#[test]
fn a_right_preload_gives_the_checksum_smoltcp_accepts() {
    let mut s = tx_on();
    let f0 = tcp4(b"hello, wire", 0);
    let p = parse(&f0).unwrap();
    let preload = folded(pseudo(&f0, &p));
    let mut f = tcp4(b"hello, wire", preload);
    assert!(!smoltcp_ok(&f));
    assert_eq!(s.transmit_checksum(&mut f, PPI), Ok(vec![]));
    assert!(smoltcp_ok(&f));
    s.verify_sent(&f, true);
    assert_eq!(
        (
            s.stats.tx_checksummed,
            s.stats.tx_bad_preloads,
            s.stats.tx_bad_checksums
        ),
        (1, 0, 0)
    );
}

#[test]
fn a_wrong_preload_is_caught_and_the_frame_counts_as_bad() {
    let mut s = tx_on();
    // A zero field (the guest forgot the preload) and one with the length left out (LSO's
    // convention used for plain checksum offload).
    let f0 = tcp4(b"abc", 0);
    let p = parse(&f0).unwrap();
    let without_len = folded(pseudo(&f0, &p) - p.l4_len as u64);
    for bad in [0, without_len] {
        let mut f = tcp4(b"abc", bad);
        let notes = s.transmit_checksum(&mut f, PPI).unwrap();
        assert!(notes[0].contains("preload"), "{notes:?}");
        s.verify_sent(&f, true);
        assert!(!smoltcp_ok(&f));
    }
    assert_eq!((s.stats.tx_bad_preloads, s.stats.tx_bad_checksums), (2, 2));
}

#[test]
fn bad_checksum_ppis_are_refused_or_noted() {
    let mut s = tx_on();
    let mut f = tcp4(b"x", 0);
    // OpenVMM's offset rule.
    let low = 0b0101 | (20 << 16);
    assert!(
        s.transmit_checksum(&mut f, low)
            .unwrap_err()
            .contains("InvalidTcpHeaderOffset")
    );
    let beyond = 0b0101 | (200 << 16);
    assert!(s.transmit_checksum(&mut f, beyond).is_err());
    // Wrong IP version, protocol, offset; an offload not enabled: noted, not computed.
    for (v, what) in [
        (0b0110 | (54 << 16), "IP version"),
        (0b1001 | (34 << 16), "protocol"),
        (0b0101 | (38 << 16), "header offset"),
    ] {
        let notes = s.transmit_checksum(&mut f, v).unwrap();
        assert!(notes[0].contains(what), "{notes:?}");
    }
    s.enabled.tx.tcp4 = false;
    let notes = s.transmit_checksum(&mut f, PPI).unwrap();
    assert!(notes[0].contains("did not enable"), "{notes:?}");
    assert_eq!(s.stats.tx_checksummed, 0);
}

fn params(rev: u8, size: u16, values: &[(usize, u8)]) -> Vec<u8> {
    let mut b = vec![0u8; 28];
    b[0] = 0x80;
    b[1] = rev;
    b[2..4].copy_from_slice(&size.to_le_bytes());
    for &(at, v) in values {
        b[at] = v;
    }
    b
}

#[test]
fn offload_parameters_are_checked_like_a_host() {
    let mut s = OffloadState::new(OffloadHostConfig::default());
    let v61 = 0x6_0001;
    // Malformed objects.
    for bad in [
        params(3, 28, &[])[..3].to_vec(),
        {
            let mut b = params(3, 28, &[]);
            b[0] = 0xA7;
            b
        },
        params(0, 28, &[]),
        params(3, 19, &[]),
        params(3, 40, &[]),
        params(3, 28, &[(5, 5)]),
        params(3, 28, &[(11, 3)]),
    ] {
        assert_eq!(
            s.set_parameters(&bad, v61).unwrap_err().0,
            STATUS_INVALID_DATA,
            "{bad:?}"
        );
    }
    // UDP at NVSP 4 and anything the host did not advertise: refused.
    let (st, why) = s
        .set_parameters(&params(2, 22, &[(6, 4)]), 0x4_0000)
        .unwrap_err();
    assert_eq!(st, STATUS_FAILURE);
    assert!(why.unwrap().contains("UDP"));
    s.config.caps = Some(HostOffloadCaps::none());
    let (_, why) = s
        .set_parameters(&params(3, 28, &[(5, 4)]), v61)
        .unwrap_err();
    assert!(why.unwrap().contains("TCPv4 tx"));
    s.config.caps = None;
    // Accepted: TCPv4 tx+rx, UDPv6 rx only, RSC on at 6.1; values 0 keep what was set.
    let current = s
        .set_parameters(&params(3, 28, &[(5, 4), (8, 3), (22, 2)]), v61)
        .unwrap();
    assert_eq!((current[0], current[1], current.len()), (0xA7, 3, 156));
    assert!(s.enabled.tx.tcp4 && s.enabled.rx.tcp4 && s.enabled.rx.udp6 && !s.enabled.tx.udp6);
    assert!(s.enabled.rsc && s.enabled.rsc_ipv4 && !s.enabled.rsc_ipv6);
    // RSC fields in a revision-2 object (sized to hold them): refused.
    let (st, why) = s
        .set_parameters(&params(2, 28, &[(23, 2)]), v61)
        .unwrap_err();
    assert_eq!(st, STATUS_INVALID_DATA);
    assert!(why.unwrap().contains("revision-2"));
    assert!(!s.enabled.rsc_ipv6);
    s.set_parameters(&params(3, 28, &[(7, 2)]), v61).unwrap();
    assert!(s.enabled.tx.tcp4 && s.enabled.tx.tcp6 && !s.enabled.rx.tcp6);
    assert_eq!(s.stats.parameters_header, Some((3, 28)));
    // Refusing host.
    s.config.refuse_parameters = true;
    assert_eq!(
        s.set_parameters(&params(3, 28, &[]), v61),
        Err((STATUS_FAILURE, None))
    );
}

#[test]
fn capability_replies_follow_the_host_generation() {
    let mut s = OffloadState::new(OffloadHostConfig::default());
    for (nvsp, rev, len) in [(0x2, 1, 112), (0x4_0000, 2, 144), (0x5_0000, 3, 156)] {
        let b = s.query(0xFC01_020D, &[], nvsp).unwrap();
        assert_eq!((b[0], b[1], b.len()), (0xA7, rev, len));
        assert_eq!(u16::from_le_bytes([b[2], b[3]]) as usize, len);
    }
    let b = s.query(0xFC01_020D, &[], 0x6_0001).unwrap();
    assert_eq!((b[144], b[145]), (1, 1), "RSC at 6.1");
    s.config.reply = CapsReply::Revision3;
    assert_eq!(s.query(0xFC01_020D, &[], 0x2).unwrap().len(), 156);
    s.config.reply = CapsReply::NotSupported;
    assert_eq!(s.query(0xFC01_020D, &[], 0x2), Err(0xC000_00BB));
    assert_eq!(s.stats.capability_queries, 6);
}

#[test]
fn receive_verdicts_report_what_the_host_finds() {
    let mut s = tx_on();
    let f0 = tcp4(b"data", 0);
    let p = parse(&f0).unwrap();
    let mut good = tcp4(b"data", folded(pseudo(&f0, &p)));
    s.transmit_checksum(&mut good, PPI).unwrap();
    let mut f = good.clone();
    assert_eq!(s.receive_bits(&mut f), (1 << 3) | (1 << 5));
    s.corrupt_rx = 1;
    let mut f = good.clone();
    assert_eq!(s.receive_bits(&mut f), 1 | (1 << 5));
    assert!(!smoltcp_ok(&f));
    let mut f = good.clone();
    f[22] ^= 1; // TTL: the IPv4 header checksum is now wrong
    assert_eq!(s.receive_bits(&mut f) & 0b100, 0b100);
    // Not enabled: nothing reported.
    s.enabled.rx = EnabledChecksums::default();
    let mut f = good.clone();
    assert_eq!(s.receive_bits(&mut f), 0);
    assert_eq!((s.stats.rx_reported_good, s.stats.rx_reported_bad), (1, 2));
}

/// An LSO frame as a guest hands it over: IPv4 total length and checksum 0, TCP flags
/// PSH|ACK|FIN, the preload `preload`.
fn lso4(payload: &[u8], preload: u16) -> Vec<u8> {
    let mut f = tcp4(payload, preload);
    f[16..18].fill(0);
    f[24..26].fill(0);
    f[47] = 0x19;
    f
}

fn lso_on() -> OffloadState {
    let mut s = tx_on();
    s.enabled.lso_v2_ipv4 = true;
    s
}

/// LSO v2 PPI: MSS, TCP offset 34, v2, IPv4.
fn lso_ppi(mss: u32) -> u32 {
    mss | (34 << 20) | (1 << 30)
}

#[test]
fn an_lso_frame_is_cut_into_segments_smoltcp_accepts() {
    let mut s = lso_on();
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    // Preload: addresses and protocol, no length.
    let preload = folded(word_sum(&[10, 0, 0, 1, 10, 0, 0, 2]) + 6);
    let f = lso4(&data, preload);
    let (segs, notes) = s.transmit_lso(&f, lso_ppi(1460), 1514, 0x6_0001).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(segs.len(), 3);
    let mut joined = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        assert!(seg.len() <= 1514);
        assert!(smoltcp_ok(seg), "segment {i}");
        let tcp = TcpPacket::new_checked(&seg[34..]).unwrap();
        assert_eq!(tcp.seq_number().0 as u32, 9 + (i as u32) * 1460);
        assert_eq!(tcp.fin(), i == 2);
        assert_eq!(tcp.psh(), i == 2);
        assert!(tcp.ack());
        joined.extend_from_slice(tcp.payload());
        s.verify_sent(seg, true);
    }
    assert_eq!(joined, data);
    assert_eq!((s.stats.tx_lso_segments, s.stats.tx_bad_checksums), (3, 0));
}

#[test]
fn an_lso_frame_with_a_checksum_offload_preload_is_caught() {
    let mut s = lso_on();
    let data = vec![7u8; 2000];
    // The plain checksum-offload preload (with the length) is wrong for LSO.
    let with_len = folded(word_sum(&[10, 0, 0, 1, 10, 0, 0, 2]) + 6 + 2020);
    let mut f = lso4(&data, with_len);
    f[16..18].copy_from_slice(&2040u16.to_be_bytes()); // and the length not zeroed
    let (segs, notes) = s.transmit_lso(&f, lso_ppi(1000), 1514, 0x6_0001).unwrap();
    assert_eq!(notes.len(), 2, "{notes:?}");
    for seg in &segs {
        s.verify_sent(seg, true);
    }
    assert_eq!(s.stats.tx_bad_preloads, 1);
    assert_eq!(s.stats.tx_bad_checksums, 2);
    // Refusals: LSO not enabled, v1, an MSS beyond the frame size, OpenVMM's offset rule.
    let ok = lso4(&data, 0);
    assert!(
        s.transmit_lso(&ok, lso_ppi(1000) & !(1 << 30), 1514, 0x6_0001)
            .is_err()
    );
    assert!(s.transmit_lso(&ok, lso_ppi(1481), 1514, 0x6_0001).is_err());
    assert!(
        s.transmit_lso(&ok, 1000 | (20 << 20) | (1 << 30), 1514, 0x6_0001)
            .is_err()
    );
    s.enabled.lso_v2_ipv4 = false;
    assert!(s.transmit_lso(&ok, lso_ppi(1000), 1514, 0x6_0001).is_err());
}
