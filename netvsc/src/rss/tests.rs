use super::*;
use std::vec;
use std::vec::Vec;

/// (source, destination, source port, destination port, 2-tuple hash, 4-tuple hash).
type Case<const A: usize> = ([u8; A], [u8; A], u16, u16, u32, u32);

/// The Microsoft RSS verification suite, IPv4: (source, destination, source port,
/// destination port, 2-tuple hash, 4-tuple hash) under [`MICROSOFT_RSS_KEY`].
const IPV4: [Case<4>; 5] = [
    (
        [66, 9, 149, 187],
        [161, 142, 100, 80],
        2794,
        1766,
        0x323e8fc2,
        0x51ccc178,
    ),
    (
        [199, 92, 111, 2],
        [65, 69, 140, 83],
        14230,
        4739,
        0xd718262a,
        0xc626b0ea,
    ),
    (
        [24, 19, 198, 95],
        [12, 22, 207, 184],
        12898,
        38024,
        0xd2d0a5de,
        0x5c2b394a,
    ),
    (
        [38, 27, 205, 30],
        [209, 142, 163, 6],
        48228,
        2217,
        0x82989176,
        0xafc7327f,
    ),
    (
        [153, 39, 163, 191],
        [202, 188, 127, 2],
        44251,
        1303,
        0x5d1809c5,
        0x10e828a2,
    ),
];

fn v6(words: [u16; 8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        a[i * 2..i * 2 + 2].copy_from_slice(&w.to_be_bytes());
    }
    a
}

/// The suite's IPv6 cases.
fn ipv6_cases() -> [Case<16>; 3] {
    [
        (
            v6([0x3ffe, 0x2501, 0x200, 0x1fff, 0, 0, 0, 7]),
            v6([0x3ffe, 0x2501, 0x200, 3, 0, 0, 0, 1]),
            2794,
            1766,
            0x2cc18cd5,
            0x40207d3d,
        ),
        (
            v6([0x3ffe, 0x501, 8, 0, 0x260, 0x97ff, 0xfe40, 0xefab]),
            v6([0xff02, 0, 0, 0, 0, 0, 0, 1]),
            14230,
            4739,
            0x0f0c461c,
            0xdde51bbf,
        ),
        (
            v6([0x3ffe, 0x1900, 0x4545, 3, 0x200, 0xf8ff, 0xfe21, 0x67cf]),
            v6([0xfe80, 0, 0, 0, 0x200, 0xf8ff, 0xfe21, 0x67cf]),
            44251,
            38024,
            0x4b61e985,
            0x02d1feef,
        ),
    ]
}

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4_frame(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = ethernet(0x0800);
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0; 16]);
    f
}

fn ipv6_frame(src: [u8; 16], dst: [u8; 16], next: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = ethernet(0x86DD);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, next, 64]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0; 16]);
    f
}

#[test]
fn toeplitz_matches_the_microsoft_verification_suite() {
    for (src, dst, sport, dport, two, four) in IPV4 {
        let mut input = Vec::new();
        input.extend_from_slice(&src);
        input.extend_from_slice(&dst);
        assert_eq!(toeplitz(&MICROSOFT_RSS_KEY, &input), two);
        input.extend_from_slice(&sport.to_be_bytes());
        input.extend_from_slice(&dport.to_be_bytes());
        assert_eq!(toeplitz(&MICROSOFT_RSS_KEY, &input), four);
    }
    for (src, dst, sport, dport, two, four) in ipv6_cases() {
        let mut input = Vec::new();
        input.extend_from_slice(&src);
        input.extend_from_slice(&dst);
        assert_eq!(toeplitz(&MICROSOFT_RSS_KEY, &input), two);
        input.extend_from_slice(&sport.to_be_bytes());
        input.extend_from_slice(&dport.to_be_bytes());
        assert_eq!(toeplitz(&MICROSOFT_RSS_KEY, &input), four);
    }
}

#[test]
fn frames_hash_by_the_enabled_types() {
    let all = rss_hash::LINUX_DEFAULT | rss_hash::UDP_IPV4 | rss_hash::UDP_IPV6;
    for (src, dst, sport, dport, two, four) in IPV4 {
        let tcp = ipv4_frame(src, dst, 6, sport, dport);
        let udp = ipv4_frame(src, dst, 17, sport, dport);
        assert_eq!(flow_hash(&MICROSOFT_RSS_KEY, all, &tcp), Some(four));
        assert_eq!(flow_hash(&MICROSOFT_RSS_KEY, all, &udp), Some(four));
        // UDP hashing off (Linux's set): the 2-tuple.
        assert_eq!(
            flow_hash(&MICROSOFT_RSS_KEY, rss_hash::LINUX_DEFAULT, &udp),
            Some(two)
        );
        // TCP off, IPv4 on: the 2-tuple; IPv4 off too: no hash.
        assert_eq!(
            flow_hash(&MICROSOFT_RSS_KEY, rss_hash::IPV4, &tcp),
            Some(two)
        );
        assert_eq!(flow_hash(&MICROSOFT_RSS_KEY, rss_hash::IPV6, &tcp), None);
        // A fragment: no ports.
        let mut frag = tcp.clone();
        frag[14 + 6] = 0x20; // more fragments
        assert_eq!(flow_hash(&MICROSOFT_RSS_KEY, all, &frag), Some(two));
        // One 802.1Q tag is skipped.
        let mut tagged = tcp[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&tcp[12..]);
        assert_eq!(flow_hash(&MICROSOFT_RSS_KEY, all, &tagged), Some(four));
    }
    for (src, dst, sport, dport, two, four) in ipv6_cases() {
        let tcp = ipv6_frame(src, dst, 6, sport, dport);
        assert_eq!(flow_hash(&MICROSOFT_RSS_KEY, all, &tcp), Some(four));
        let ext = ipv6_frame(src, dst, 0, sport, dport); // hop-by-hop options first
        assert_eq!(flow_hash(&MICROSOFT_RSS_KEY, all, &ext), Some(two));
    }
}

#[test]
fn frames_without_a_hash() {
    let arp = ethernet(0x0806);
    assert_eq!(
        flow_hash(&MICROSOFT_RSS_KEY, rss_hash::LINUX_DEFAULT, &arp),
        None
    );
    let tcp = ipv4_frame([1, 2, 3, 4], [5, 6, 7, 8], 6, 1, 2);
    for cut in 0..34 {
        assert_eq!(
            hash_input(&tcp[..cut], rss_hash::LINUX_DEFAULT),
            None,
            "{cut} bytes"
        );
    }
    // Addresses present, ports cut off: the 2-tuple.
    assert_eq!(
        hash_input(&tcp[..36], rss_hash::LINUX_DEFAULT).map(|i| i.as_bytes().len()),
        Some(8)
    );
    let mut bad_ihl = tcp.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(hash_input(&bad_ihl, rss_hash::LINUX_DEFAULT), None);
    let mut bad_version = tcp.clone();
    bad_version[14] = 0x65;
    assert_eq!(hash_input(&bad_version, rss_hash::LINUX_DEFAULT), None);
}

fn caps(rev: u8, size: u16, flags: u32, queues: u32, entries: u16) -> Vec<u8> {
    let mut b = vec![0x88, rev];
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&queues.to_le_bytes());
    b.extend_from_slice(&entries.to_le_bytes());
    b
}

#[test]
fn rss_capabilities_are_validated() {
    let c = parse_rss_capabilities(&caps(2, 18, 0x301, 8, 128)).unwrap();
    assert_eq!(c.num_receive_queues, 8);
    assert_eq!(c.num_indirection_table_entries, Some(128));
    assert_eq!(c.channels_for(4), 4);
    assert_eq!(c.channels_for(16), 8);
    assert_eq!(c.channels_for(0), 1);
    // Revision 1: no table entry count; the table defaults to 128.
    let c = parse_rss_capabilities(&caps(1, 16, 0, 3, 0)[..16]).unwrap();
    assert_eq!(
        (c.num_indirection_table_entries, c.table_entries()),
        (None, 128)
    );
    // A small power-of-two table caps the channels; an odd one is ignored.
    let c = parse_rss_capabilities(&caps(2, 18, 1, 64, 4)).unwrap();
    assert_eq!((c.table_entries(), c.channels_for(8)), (4, 4));
    let c = parse_rss_capabilities(&caps(2, 18, 1, 64, 100)).unwrap();
    assert_eq!(c.table_entries(), 128);
    // Hostile objects.
    assert_eq!(
        parse_rss_capabilities(&caps(2, 18, 1, 8, 128)[..10]),
        Err(RssError::Truncated(10))
    );
    let mut wrong = caps(2, 18, 1, 8, 128);
    wrong[0] = 0x89;
    assert_eq!(
        parse_rss_capabilities(&wrong),
        Err(RssError::WrongType(0x89))
    );
    assert_eq!(
        parse_rss_capabilities(&caps(0, 18, 1, 8, 128)),
        Err(RssError::Revision(0))
    );
    assert_eq!(
        parse_rss_capabilities(&caps(2, 200, 1, 8, 128)),
        Err(RssError::Size(200))
    );
    assert_eq!(
        parse_rss_capabilities(&caps(2, 12, 1, 8, 128)),
        Err(RssError::Size(12))
    );
    assert_eq!(
        parse_rss_capabilities(&caps(2, 18, 0x2, 8, 128)),
        Err(RssError::NoToeplitz(2))
    );
    // A size of 16 hides the revision-2 field even at revision 2.
    let c = parse_rss_capabilities(&caps(2, 16, 1, 8, 128)).unwrap();
    assert_eq!(c.num_indirection_table_entries, None);
}

#[test]
fn rss_parameters_match_the_documented_layout() {
    let mut out = [0u8; 600];
    let n = write_rss_parameters(
        &mut out,
        0,
        rss_hash::LINUX_DEFAULT,
        128,
        |i| (i % 3) as u32,
        &MICROSOFT_RSS_KEY,
    )
    .unwrap();
    assert_eq!(n, 592);
    assert_eq!(&out[..4], &[0x89, 2, 40, 0]);
    assert_eq!(u32::from_le_bytes(out[8..12].try_into().unwrap()), 0x1701);
    assert_eq!(u16::from_le_bytes(out[12..14].try_into().unwrap()), 512);
    assert_eq!(u32::from_le_bytes(out[16..20].try_into().unwrap()), 40);
    assert_eq!(u16::from_le_bytes(out[20..22].try_into().unwrap()), 40);
    assert_eq!(u32::from_le_bytes(out[24..28].try_into().unwrap()), 552);
    for i in 0..128 {
        let at = 40 + i * 4;
        assert_eq!(
            u32::from_le_bytes(out[at..at + 4].try_into().unwrap()),
            (i % 3) as u32
        );
    }
    assert_eq!(&out[552..592], &MICROSOFT_RSS_KEY);
    assert_eq!(
        write_rss_parameters(&mut out, 0, 1, 100, |_| 0, &MICROSOFT_RSS_KEY),
        None
    );
    assert_eq!(
        write_rss_parameters(&mut out[..500], 0, 1, 128, |_| 0, &MICROSOFT_RSS_KEY),
        None
    );
}

fn send_table(offset: u32, count: u32, table: &[u32], at: usize, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    m[..4].copy_from_slice(&134u32.to_le_bytes());
    m[4..8].copy_from_slice(&count.to_le_bytes());
    m[8..12].copy_from_slice(&offset.to_le_bytes());
    for (i, q) in table.iter().enumerate() {
        if let Some(b) = m.get_mut(at + i * 4..at + i * 4 + 4) {
            b.copy_from_slice(&q.to_le_bytes());
        }
    }
    m
}

#[test]
fn send_tables_are_parsed_and_bounded() {
    let t: Vec<u32> = (0..16).map(|i| i % 3).collect();
    // OpenVMM: right after the header, 76 bytes padded to 80.
    let m = send_table(12, 16, &t, 12, 80);
    assert_eq!(
        parse_send_indirection_table(&m, NvspVersion::V61)
            .unwrap()
            .to_vec(),
        t
    );
    assert_eq!(
        parse_send_indirection_table(&m, NvspVersion::V5)
            .unwrap()
            .to_vec(),
        t
    );
    // An NVSP ≤ 6 host with a wrong offset and a full-size message: read at 40.
    let m = send_table(4, 16, &t, 40, 104);
    assert_eq!(
        parse_send_indirection_table(&m, NvspVersion::V6)
            .unwrap()
            .to_vec(),
        t
    );
    // The same on NVSP 6.1: the offset is trusted, and 4 is inside the header.
    assert_eq!(
        parse_send_indirection_table(&m, NvspVersion::V61),
        Err(RssError::Offset(4))
    );
    // Hostile: wrong count, offset beyond the message, overflowing, short, wrong type.
    assert_eq!(
        parse_send_indirection_table(&send_table(12, 15, &t, 12, 80), NvspVersion::V61),
        Err(RssError::Count(15))
    );
    assert_eq!(
        parse_send_indirection_table(&send_table(20, 16, &t, 20, 80), NvspVersion::V61),
        Err(RssError::Offset(20))
    );
    assert_eq!(
        parse_send_indirection_table(&send_table(u32::MAX, 16, &t, 12, 80), NvspVersion::V61),
        Err(RssError::Offset(u32::MAX))
    );
    assert_eq!(
        parse_send_indirection_table(&m[..11], NvspVersion::V61),
        Err(RssError::Truncated(11))
    );
    let mut wrong = send_table(12, 16, &t, 12, 80);
    wrong[0] = 133;
    assert_eq!(
        parse_send_indirection_table(&wrong, NvspVersion::V61),
        Err(RssError::WrongType(133))
    );
}

#[test]
fn the_send_table_refuses_unknown_queues_and_keeps_the_old_one() {
    let t = SendTable::new();
    assert_eq!(t.queues(), 1);
    assert_eq!(t.queue_for_hash(0xFFFF_FFFF), 0);
    t.set_default(4);
    assert_eq!(t.entries(), core::array::from_fn(|i| (i % 4) as u8));
    assert_eq!(t.queue_for_hash(6), 2);
    assert_eq!(t.queue_for_hash(16 + 7), 3);
    let mut host = [1u32; 16];
    host[15] = 3;
    t.apply(&host).unwrap();
    assert_eq!(t.queue_for_hash(15), 3);
    assert_eq!(t.queue_for_hash(0), 1);
    host[2] = 4;
    assert_eq!(t.apply(&host), Err(RssError::Entry { slot: 2, queue: 4 }));
    assert_eq!(t.queue_for_hash(2), 1, "the previous table stays");
    host[2] = u32::MAX;
    assert!(t.apply(&host).is_err());
    assert_eq!(t.host_updates(), (1, 2));
    t.set_default(1);
    assert!((0..64).all(|h| t.queue_for_hash(h) == 0));
    t.set_default(1000);
    assert_eq!(t.queues(), 64);
}

#[test]
fn arbitrary_bytes_never_panic_the_parsers() {
    let mut buf = [0u8; 120];
    let mut x: u32 = 0x9E37_79B9;
    for round in 0..20_000usize {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        if round % 2 == 0 {
            buf[0..4].copy_from_slice(&134u32.to_le_bytes());
            buf[4..8].copy_from_slice(&16u32.to_le_bytes());
            buf[8..12].copy_from_slice(&(x % 128).to_le_bytes());
        } else {
            buf[0] = 0x88;
        }
        let len = round % buf.len();
        let _ = parse_send_indirection_table(&buf[..len], NvspVersion::V6);
        let _ = parse_send_indirection_table(&buf[..len], NvspVersion::V61);
        let _ = parse_rss_capabilities(&buf[..len]);
        let _ = hash_input(&buf[..len], u32::MAX);
    }
}
