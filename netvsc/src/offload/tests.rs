use super::frame::*;
use super::*;
use crate::protocol::{PpiU32, csum_rx};
use std::vec;
use std::vec::Vec;
use zerocopy::IntoBytes;

/// A revision-3 NDIS_OFFLOAD as OpenVMM answers it (checksum TCP/UDP/options both ways,
/// LSO v2 62780 bytes / 2 segments, RSC when `rsc`).
fn openvmm_caps(rsc: bool) -> Vec<u8> {
    let mut b = vec![0u8; 156];
    b[0] = 0xA7;
    b[1] = 3;
    b[2..4].copy_from_slice(&156u16.to_le_bytes());
    let w = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    for (i, v) in [2, 0x155, 2, 0x155, 2, 0x55, 2, 0x55]
        .into_iter()
        .enumerate()
    {
        w(&mut b, 4 + 4 * i, v);
    }
    for (i, v) in [2, 0xF53C, 2, 2, 0xF53C, 2, 0x5].into_iter().enumerate() {
        w(&mut b, 80 + 4 * i, v);
    }
    if rsc {
        b[144] = 1;
        b[145] = 1;
    }
    b
}

#[test]
fn an_openvmm_capability_object_parses() {
    let c = parse_offload(&openvmm_caps(true)).unwrap();
    assert_eq!((c.revision, c.size), (3, 156));
    assert_eq!((c.ip4_tx, c.ip6_rx), (0x155, 0x55));
    let lso = Some(LsoV2 {
        max_size: 0xF53C,
        min_segments: 2,
    });
    assert_eq!((c.lso_v2_ipv4, c.lso_v2_ipv6), (lso, lso));
    assert!(c.rsc_ipv4 && c.rsc_ipv6);
}

#[test]
fn fields_beyond_size_or_revision_read_as_zero() {
    let mut b = openvmm_caps(true);
    // Revision 2 / 144 bytes: no RSC even though the bytes are there.
    b[1] = 2;
    b[2..4].copy_from_slice(&144u16.to_le_bytes());
    let c = parse_offload(&b).unwrap();
    assert!(!c.rsc_ipv4 && !c.rsc_ipv6);
    // Revision 3 but only 112 bytes: RSC lies beyond the object.
    b[1] = 3;
    b[2..4].copy_from_slice(&112u16.to_le_bytes());
    let c = parse_offload(&b[..112]).unwrap();
    assert!(!c.rsc_ipv4);
    assert_eq!(c.ip4_tx, 0x155);
}

#[test]
fn malformed_capability_objects_are_refused() {
    let b = openvmm_caps(false);
    assert_eq!(parse_offload(&b[..100]), Err(OffloadError::Truncated(100)));
    let mut t = b.clone();
    t[0] = 0x80;
    assert_eq!(parse_offload(&t), Err(OffloadError::ObjectType(0x80)));
    let mut t = b.clone();
    t[1] = 0;
    assert_eq!(parse_offload(&t), Err(OffloadError::Revision(0)));
    let mut t = b.clone();
    t[2..4].copy_from_slice(&200u16.to_le_bytes());
    assert_eq!(
        parse_offload(&t),
        Err(OffloadError::Size {
            size: 200,
            len: 156
        })
    );
    t[2..4].copy_from_slice(&100u16.to_le_bytes());
    assert!(matches!(parse_offload(&t), Err(OffloadError::Size { .. })));
    // LSO without 802.3 encapsulation or with size 0 is no LSO.
    let mut t = b.clone();
    t[80..84].copy_from_slice(&0u32.to_le_bytes());
    t[96..100].copy_from_slice(&0u32.to_le_bytes());
    let c = parse_offload(&t).unwrap();
    assert_eq!((c.lso_v2_ipv4, c.lso_v2_ipv6), (None, None));
}

#[test]
fn negotiation_follows_the_host_version() {
    let caps = parse_offload(&openvmm_caps(true)).unwrap();
    let n = negotiate(&caps, NvspVersion::V61);
    let p = n.params;
    assert_eq!((p.header.object_type, p.header.revision), (0x80, 3));
    assert_eq!(n.bytes().len(), 28);
    assert_eq!(p.ipv4_checksum, offload_param::RX);
    assert_eq!(
        [
            p.tcp_ipv4_checksum,
            p.udp_ipv4_checksum,
            p.tcp_ipv6_checksum,
            p.udp_ipv6_checksum
        ],
        [offload_param::TX_RX; 4]
    );
    assert_eq!((p.lso_v2_ipv4, p.lso_v2_ipv6), (2, 2));
    assert_eq!((p.rsc_ipv4, p.rsc_ipv6), (1, 1), "RSC explicitly off");
    assert!(n.offloads.tx.udp6 && n.offloads.rx.ip4 && !n.offloads.tx.ip4);
    assert!(n.offloads.rsc_offered);

    let n = negotiate(&caps, NvspVersion::V4);
    assert_eq!(n.params.header.revision, 2);
    assert_eq!(n.bytes().len(), 22);
    assert_eq!(
        (n.params.udp_ipv4_checksum, n.params.udp_ipv6_checksum),
        (0, 0)
    );
    assert!(!n.offloads.tx.udp4 && !n.offloads.rx.udp6 && n.offloads.tx.tcp4);
}

#[test]
fn negotiation_asks_only_for_what_the_host_has() {
    let mut caps = parse_offload(&openvmm_caps(false)).unwrap();
    caps.ip4_tx = csum_cap::TCP; // no TCP options: Linux leaves TCPv4 off
    caps.ip6_tx = csum_cap::TCP | csum_cap::TCP_OPTIONS; // no extension headers
    caps.ip6_rx = 0;
    caps.lso_v2_ipv6_opts = lso_cap::TCP_OPTIONS;
    let n = negotiate(&caps, NvspVersion::V5);
    let p = n.params;
    assert_eq!(p.tcp_ipv4_checksum, offload_param::RX);
    assert_eq!(p.tcp_ipv6_checksum, offload_param::DISABLED);
    assert_eq!(p.udp_ipv6_checksum, offload_param::DISABLED);
    assert_eq!((p.lso_v2_ipv4, p.lso_v2_ipv6), (1, 1), "LSO needs TCP tx");
    assert_eq!((p.rsc_ipv4, p.rsc_ipv6), (0, 0), "RSC not offered");
    let none = negotiate(&OffloadCaps::default(), NvspVersion::V61);
    assert_eq!(none.offloads, Offloads::NONE);
}

#[test]
fn rsc_is_enabled_only_when_asked_for_and_offered_for_both_ip_versions() {
    let caps = parse_offload(&openvmm_caps(true)).unwrap();
    let n = negotiate_rsc(&caps, NvspVersion::V61, true);
    assert_eq!((n.params.rsc_ipv4, n.params.rsc_ipv6), (2, 2));
    assert!(n.offloads.rsc && n.offloads.rsc_offered);
    // The rest is what `negotiate` chooses.
    let plain = negotiate(&caps, NvspVersion::V61);
    assert_eq!(n.offloads.tx, plain.offloads.tx);
    assert_eq!(n.params.lso_v2_ipv4, plain.params.lso_v2_ipv4);
    // One IP version only: off (Linux needs both).
    let mut one = caps;
    one.rsc_ipv6 = false;
    let n = negotiate_rsc(&one, NvspVersion::V61, true);
    assert_eq!((n.params.rsc_ipv4, n.params.rsc_ipv6), (0, 0));
    assert!(!n.offloads.rsc);
    // Before NVSP 5 the parameters have no RSC fields.
    let n = negotiate_rsc(&caps, NvspVersion::V4, true);
    assert_eq!(n.bytes().len(), 22);
    assert!(!n.offloads.rsc);
    // Not offered.
    let n = negotiate_rsc(
        &parse_offload(&openvmm_caps(false)).unwrap(),
        NvspVersion::V61,
        true,
    );
    assert_eq!(
        (n.params.rsc_ipv4, n.params.rsc_ipv6, n.offloads.rsc),
        (0, 0, false)
    );
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// IPv4 (optionally with 4 bytes of options) carrying `l4`.
fn ipv4(proto: u8, options: bool, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(ETHERTYPE_IPV4);
    let ihl = if options { 24 } else { 20 };
    let total = (ihl + l4.len()) as u16;
    f.push(0x40 | (ihl / 4) as u8);
    f.push(0);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0, 192, 0, 2, 10, 192, 0, 2, 1]);
    if options {
        f.extend_from_slice(&[1, 1, 1, 0]);
    }
    let c = !fold(ones_sum(&f[14..14 + ihl], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(l4);
    f
}

fn ipv6(next: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(ETHERTYPE_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(l4);
    f
}

fn tcp(payload: &[u8]) -> Vec<u8> {
    let mut s = vec![
        0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xFF, 0xFF,
    ];
    s.extend_from_slice(&[0xAB, 0xCD, 0, 0]); // checksum garbage, urgent pointer
    s.extend_from_slice(payload);
    s
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut s = vec![0x10, 0x00, 0x00, 0x35];
    s.extend_from_slice(&len.to_be_bytes());
    s.extend_from_slice(&[0xAB, 0xCD]);
    s.extend_from_slice(payload);
    s
}

#[test]
fn the_ipv4_header_checksum_matches_a_known_vector() {
    // RFC 1071-style worked example: 4500 0073 0000 4000 4011 ---- c0a8 0001 c0a8 00c7.
    let h = [
        0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7,
    ];
    assert_eq!(!fold(ones_sum(&h, 0)), 0xb861);
    let mut f = eth(ETHERTYPE_IPV4);
    f.extend_from_slice(&h);
    f[24..26].copy_from_slice(&0xb861u16.to_be_bytes());
    assert_eq!(ipv4_header_ok(&f), Some(true));
    f[25] ^= 1;
    assert_eq!(ipv4_header_ok(&f), Some(false));
    assert_eq!(ipv4_header_ok(&eth(0x88B5)), None);
}

/// What a host NIC does with an offloaded frame: sum from the L4 header over the preload,
/// complement, store.
fn host_fill(frame: &mut [u8], ppi: u32) {
    let off = ((ppi >> 16) & 0x3FF) as usize;
    let l4 = l4_of(frame).unwrap();
    assert_eq!(off, l4.offset);
    let sum = ones_sum(&frame[l4.offset..l4.offset + l4.len], 0);
    let mut c = !fold(sum);
    if c == 0 && l4.proto == L4Proto::Udp {
        c = 0xFFFF;
    }
    let at = l4.checksum_offset();
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn offloaded_and_software_checksums_agree_for_every_kind() {
    let all = negotiate(
        &parse_offload(&openvmm_caps(false)).unwrap(),
        NvspVersion::V61,
    )
    .offloads;
    let payload: Vec<u8> = (0..=200u8).collect(); // odd length
    let frames = [
        ipv4(6, false, &tcp(&payload)),
        ipv4(6, true, &tcp(&payload)),
        ipv4(17, false, &udp(&payload)),
        ipv6(6, &tcp(&payload)),
        ipv6(17, &udp(&payload[..10])),
    ];
    for f in frames {
        let mut soft = f.clone();
        assert_eq!(
            prepare_tx_checksum(&mut soft, &Offloads::NONE),
            TxChecksum::Software
        );
        let l4 = l4_of(&soft).unwrap();
        assert!(l4_checksum_ok(&soft, &l4));
        let mut off = f.clone();
        let TxChecksum::Offload(ppi) = prepare_tx_checksum(&mut off, &all) else {
            panic!("not offloaded: {l4:?}");
        };
        let want = match (l4.ip, l4.proto) {
            (IpVersion::V4, L4Proto::Tcp) => 0b0101,
            (IpVersion::V4, L4Proto::Udp) => 0b1001,
            (IpVersion::V6, L4Proto::Tcp) => 0b0110,
            (IpVersion::V6, L4Proto::Udp) => 0b1010,
        };
        assert_eq!(ppi & 0xFFFF, want);
        assert!(!l4_checksum_ok(&off, &l4), "only the preload is there");
        host_fill(&mut off, ppi);
        assert_eq!(off, soft, "{l4:?}");
        // A corrupted byte is caught.
        let last = soft.len() - 1;
        soft[last] ^= 0x40;
        assert!(!l4_checksum_ok(&soft, &l4));
    }
}

#[test]
fn ipv4_options_go_to_software_when_the_host_lacks_them() {
    let mut o = Offloads::NONE;
    o.tx.tcp4 = true;
    let mut f = ipv4(6, true, &tcp(b"x"));
    assert_eq!(prepare_tx_checksum(&mut f, &o), TxChecksum::Software);
    o.tx_ip4_options = true;
    assert!(matches!(
        prepare_tx_checksum(&mut f, &o),
        TxChecksum::Offload(_)
    ));
}

#[test]
fn frames_without_an_offloadable_checksum_are_named() {
    assert_eq!(l4_of(&eth(0x88B5)), Err(FrameError::NotIp(0x88B5)));
    assert_eq!(l4_of(&eth(0x0800)[..10]), Err(FrameError::Truncated));
    assert_eq!(
        l4_of(&ipv4(1, false, &[8, 0, 0, 0])),
        Err(FrameError::NotTcpUdp(1))
    );
    // IPv6 hop-by-hop header first.
    assert_eq!(l4_of(&ipv6(0, &tcp(b""))), Err(FrameError::NotTcpUdp(0)));
    let mut frag = ipv4(17, false, &udp(b"abc"));
    frag[20] |= 0x20; // more fragments
    assert_eq!(l4_of(&frag), Err(FrameError::Fragment));
    let mut f = ipv4(17, false, &udp(b"abc"));
    f[38..40].copy_from_slice(&3u16.to_be_bytes());
    assert_eq!(l4_of(&f), Err(FrameError::BadL4Header));
    let mut f = ipv4(6, false, &tcp(b""));
    f[46] = 0xF0; // data offset 60 > segment
    assert_eq!(l4_of(&f), Err(FrameError::BadL4Header));
    let mut f = ipv4(6, false, &tcp(b"abcd"));
    f[16..18].copy_from_slice(&200u16.to_be_bytes()); // total length beyond the frame
    assert_eq!(l4_of(&f), Err(FrameError::Truncated));
    f[16..18].copy_from_slice(&10u16.to_be_bytes()); // below the header
    assert_eq!(l4_of(&f), Err(FrameError::BadIpHeader));
    let mut f = ipv4(6, false, &tcp(b""));
    f[14] = 0x44; // IHL 4
    assert_eq!(l4_of(&f), Err(FrameError::BadIpHeader));
    let mut padded = ipv4(17, false, &udp(b"a"));
    padded.resize(60, 0); // Ethernet padding after the datagram is fine
    assert_eq!(l4_of(&padded).unwrap().len, 9);
    let mut f = eth(ETHERTYPE_IPV4);
    f.extend_from_slice(&[0x45, 0, 0, 40]);
    let mut o = Offloads::NONE;
    o.tx.tcp4 = true;
    assert_eq!(prepare_tx_checksum(&mut f, &o), TxChecksum::NotApplicable);
}

fn ppi_area(values: &[(u32, u32)]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&(t, v)| PpiU32::new(t, v).as_bytes().to_vec())
        .collect()
}

#[test]
fn receive_verdicts_decode_and_mask() {
    let good = ppi_area(&[(6, 5), (0, csum_rx::TCP_SUCCEEDED | csum_rx::IP_SUCCEEDED)]);
    let r = rx_checksum_of(&good);
    assert_eq!(
        (r.ip, r.tcp, r.udp),
        (CsumStatus::Good, CsumStatus::Good, CsumStatus::NotChecked)
    );
    // Conflicting PPIs: failed wins.
    let mixed = ppi_area(&[(0, csum_rx::UDP_SUCCEEDED), (0, csum_rx::UDP_FAILED)]);
    assert_eq!(rx_checksum_of(&mixed).udp, CsumStatus::Bad);
    assert!(rx_checksum_of(&mixed).is_bad());
    assert_eq!(rx_checksum_of(&[]), RxChecksum::NOT_CHECKED);
    // A malformed element ends the walk; what came before counts.
    let mut bad = good.clone();
    bad.extend_from_slice(&[200, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0]);
    assert_eq!(rx_checksum_of(&bad), r);
    // A short checksum payload is ignored.
    let mut short = Vec::new();
    short.extend_from_slice(&14u32.to_le_bytes());
    short.extend_from_slice(&0u32.to_le_bytes());
    short.extend_from_slice(&12u32.to_le_bytes());
    short.extend_from_slice(&[0xFF, 0xFF]);
    assert_eq!(rx_checksum_of(&short), RxChecksum::NOT_CHECKED);

    let mut rx = ChecksumSet::default();
    let v4 = ipv4(6, false, &tcp(b""));
    assert_eq!(r.masked(&v4, &rx), RxChecksum::NOT_CHECKED);
    rx.tcp4 = true;
    assert_eq!(r.masked(&v4, &rx).tcp, CsumStatus::Good);
    assert_eq!(r.masked(&v4, &rx).ip, CsumStatus::NotChecked);
    let v6 = ipv6(6, &tcp(b""));
    assert_eq!(r.masked(&v6, &rx), RxChecksum::NOT_CHECKED);
    assert_eq!(r.masked(&eth(0x88B5), &rx), RxChecksum::NOT_CHECKED);
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut x: u32 = 0x9E37_79B9;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let all = negotiate(
        &parse_offload(&openvmm_caps(false)).unwrap(),
        NvspVersion::V61,
    )
    .offloads;
    let templates = [
        openvmm_caps(true),
        ipv4(6, true, &tcp(b"0123456789")),
        ipv6(17, &udp(b"0123456789")),
        ppi_area(&[(0, 0x18), (6, 1)]),
    ];
    for round in 0..20_000 {
        let mut b = templates[round % templates.len()].clone();
        for _ in 0..(next() % 4) {
            let i = next() as usize % b.len();
            b[i] = next() as u8;
        }
        b.truncate(next() as usize % (b.len() + 1));
        let _ = parse_offload(&b);
        let _ = rx_checksum_of(&b);
        if let Ok(l4) = l4_of(&b) {
            assert!(l4.offset + l4.len <= b.len());
            let _ = l4_checksum_ok(&b, &l4);
        }
        let _ = ipv4_header_ok(&b);
        if let Ok(plan) = lso_plan(&b, 8 + round % 1500, 1514, &all) {
            assert!(plan.header_len <= b.len());
            prepare_lso_headers(&mut b[..plan.header_len], &plan);
        }
        let _ = prepare_tx_checksum(&mut b, &all);
    }
}

fn lso_offloads() -> Offloads {
    negotiate(
        &parse_offload(&openvmm_caps(false)).unwrap(),
        NvspVersion::V61,
    )
    .offloads
}

/// What a host does with an LSO frame, written out: segments with their lengths set and
/// the checksum summed over the preload plus the segment length.
fn host_segments(frame: &[u8], plan: &LsoPlan, mss: usize) -> Vec<Vec<u8>> {
    let l4 = plan.l4;
    let payload = &frame[plan.header_len..];
    let doff = plan.header_len - l4.offset;
    payload
        .chunks(mss)
        .map(|chunk| {
            let mut s = frame[..plan.header_len].to_vec();
            s.extend_from_slice(chunk);
            let l4_len = doff + chunk.len();
            match l4.ip {
                IpVersion::V4 => {
                    let total = (l4.offset - 14 + l4_len) as u16;
                    s[16..18].copy_from_slice(&total.to_be_bytes());
                    let c = !fold(ones_sum(&s[14..l4.offset], 0));
                    s[24..26].copy_from_slice(&c.to_be_bytes());
                }
                IpVersion::V6 => s[18..20].copy_from_slice(&(l4_len as u16).to_be_bytes()),
            }
            let c = !fold(ones_sum(&s[l4.offset..], l4_len as u64));
            let at = l4.checksum_offset();
            s[at..at + 2].copy_from_slice(&c.to_be_bytes());
            s
        })
        .collect()
}

#[test]
fn an_lso_plan_and_its_headers_give_segments_with_right_checksums() {
    let o = lso_offloads();
    for f in [
        ipv4(6, false, &tcp(&payload_of(5000))),
        ipv4(6, true, &tcp(&payload_of(2921))),
        ipv6(6, &tcp(&payload_of(4000))),
    ] {
        let l4 = l4_of(&f).unwrap();
        let mss = 1514 - (l4.offset + 20); // 1460 for IPv4, less with options or IPv6
        assert_eq!(lso_plan(&f, mss + 1, 1514, &o), Err(LsoError::Mss(mss + 1)));
        let plan = lso_plan(&f, mss, 1514, &o).unwrap();
        assert_eq!(plan.header_len, l4.offset + 20);
        let payload = f.len() - plan.header_len;
        assert_eq!(plan.segments, payload.div_ceil(mss));
        assert_eq!(plan.ppi & lso_tx::MSS_MASK, mss as u32);
        assert_eq!((plan.ppi >> 20) & 0x3FF, l4.offset as u32);
        assert_ne!(plan.ppi & lso_tx::TYPE_V2, 0);
        assert_eq!(plan.ppi & lso_tx::IPV6 != 0, l4.ip == IpVersion::V6);
        let mut g = f.clone();
        prepare_lso_headers(&mut g[..plan.header_len], &plan);
        match l4.ip {
            IpVersion::V4 => assert_eq!(&g[16..18], &[0, 0]),
            IpVersion::V6 => assert_eq!(&g[18..20], &[0, 0]),
        }
        for s in host_segments(&g, &plan, mss) {
            let sl4 = l4_of(&s).unwrap();
            assert!(l4_checksum_ok(&s, &sl4), "{:?}", l4.ip);
            if l4.ip == IpVersion::V4 {
                assert_eq!(ipv4_header_ok(&s), Some(true));
            }
            assert!(s.len() <= 1514);
        }
    }
}

fn payload_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7) as u8).collect()
}

#[test]
fn lso_is_refused_outside_its_limits() {
    let o = lso_offloads();
    let f = ipv4(6, false, &tcp(&payload_of(3000)));
    assert_eq!(lso_plan(&f, 0, 1514, &o), Err(LsoError::Mss(0)));
    assert_eq!(lso_plan(&f, 1461, 1514, &o), Err(LsoError::Mss(1461)));
    assert_eq!(
        lso_plan(&f, 3000, 9014, &o),
        Err(LsoError::TooFewSegments(1)),
        "OpenVMM wants 2 segments at least"
    );
    assert_eq!(
        lso_plan(&f, 1460, 1514, &Offloads::NONE),
        Err(LsoError::NotNegotiated)
    );
    let u = ipv4(17, false, &udp(&payload_of(3000)));
    assert_eq!(lso_plan(&u, 1460, 1514, &o), Err(LsoError::NotTcp(None)));
    assert!(matches!(
        lso_plan(&eth(0x88B5), 1460, 1514, &o),
        Err(LsoError::NotTcp(Some(_)))
    ));
    let mut small = o;
    small.lso_v2_ipv4 = Some(LsoV2 {
        max_size: 2000,
        min_segments: 2,
    });
    assert_eq!(
        lso_plan(&f, 1000, 1514, &small),
        Err(LsoError::TooLarge(3000))
    );
}
