//! The pure offload and multi-queue functions of netvsc against reference models
//! (`src/net.rs`, written from the RFCs and devices §2.11–2.15). The first input byte picks:
//!
//! - `parse_offload` (NDIS_OFFLOAD) and `negotiate` / `negotiate_rsc`: fields at the protocol offsets, zero
//!   beyond the object's size or revision, the object never read past its size or the input;
//!   the offloads chosen are exactly the documented policy, never one the host lacks;
//! - `l4_of` and `prepare_tx_checksum`: the headers found are the model's; an offloaded
//!   checksum field holds the pseudo-header sum and, filled in as a host does, verifies; a
//!   software checksum verifies; nothing but the checksum field changes;
//! - `lso_plan` and `prepare_lso_headers`: accepted exactly when no limit is broken; the
//!   segments cover the TCP payload exactly, each within the MSS and, with its headers,
//!   the frame limit; the PPI encodes MSS, header offset and IP version; the rewritten
//!   headers, cut into segments as a host does, give segments whose checksums verify;
//! - `rx_checksum_of`, `RxChecksum::from_bits` / `masked`: the verdict of the PPI walk;
//! - `parse_rss_capabilities`, `table_entries`, `channels_for`, `write_rss_parameters`;
//! - `parse_send_indirection_table` and `SendTable`: the table read where the message says
//!   (or at 40 on NVSP ≤ 6), never outside it; a table naming a queue beyond the count is
//!   refused whole; a hash always steers to an open queue;
//! - `toeplitz`, `hash_input`, `flow_hash`, `indirection_slot` against the models;
//! - RSC: `rsc::packet_id_of`, `rsc::checksum_of` and fragments pushed into
//!   `rsc::Reassembly` against a model of its rules (`src/rsc_check.rs`).
#![no_main]

use hyperv_guest_fuzz::net::{self, Headers, be16, fold, le32, pseudo, sum, verifies};
use hyperv_guest_fuzz::{Input, trace};
use libfuzzer_sys::fuzz_target;
use netvsc::offload::frame::{l4_checksum_ok, write_l4_checksum};
use netvsc::offload::{
    ChecksumSet, CsumStatus, IpVersion, L4, L4Proto, LSO_MAX_HEADERS, LSO_MAX_PAYLOAD, LsoError,
    LsoV2, OffloadError, Offloads, RxChecksum, TxChecksum, l4_of, lso_plan, negotiate,
    negotiate_rsc, parse_offload, prepare_lso_headers, prepare_tx_checksum, rx_checksum_of,
};
use netvsc::protocol::NvspVersion;
use netvsc::rss::{
    RssError, SendTable, flow_hash, hash_input, indirection_slot, parse_rss_capabilities,
    parse_send_indirection_table, toeplitz, write_rss_parameters,
};

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    match inp.u8() % 8 {
        0 => offload_caps(&mut inp),
        1 => tx_checksum(&mut inp),
        2 => lso(&mut inp),
        3 => rx_checksum(&mut inp),
        4 => rss_caps(&mut inp),
        5 => send_table(&mut inp),
        6 => hashing(&mut inp),
        _ => hyperv_guest_fuzz::rsc_check::rsc(&mut inp),
    }
});

static VERSIONS: [NvspVersion; 6] = NvspVersion::ALL_NEWEST_FIRST;

fn set_le32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Capability bits: usually a combination of the defined ones, sometimes anything.
fn cap_bits(inp: &mut Input<'_>) -> u32 {
    if inp.u8().is_multiple_of(4) {
        inp.u32()
    } else {
        u32::from(inp.u16()) & 0x155
    }
}

/// An NDIS_OFFLOAD: arbitrary bytes, or an object of a chosen revision and size.
fn offload_object(inp: &mut Input<'_>) -> Vec<u8> {
    if inp.u8().is_multiple_of(4) {
        return inp.bytes(300);
    }
    let len = [112, 144, 156, 160][inp.below(4)];
    let len = if inp.u8().is_multiple_of(8) {
        inp.below(200)
    } else {
        len
    };
    let mut b = vec![0u8; len.max(4)];
    b[0] = if inp.u8().is_multiple_of(16) {
        inp.u8()
    } else {
        0xA7
    };
    b[1] = inp.below(5) as u8;
    let size = match inp.u8() % 4 {
        0 => inp.u16(),
        1 => [112u16, 144, 156][inp.below(3)],
        _ => len as u16,
    };
    b[2..4].copy_from_slice(&size.to_le_bytes());
    for i in 0..8usize {
        let v = if i.is_multiple_of(2) {
            2
        } else {
            cap_bits(inp)
        };
        set_le32(&mut b, 4 + 4 * i, v);
    }
    for (i, at) in (80..108).step_by(4).enumerate() {
        let v = match i {
            0 | 3 => [2, 0, 1, 3][inp.below(4)],
            1 | 4 => inp.pick(&[62780, 0, 64000, 65535], |i| i.u32()),
            2 | 5 => inp.below(4) as u32,
            _ => inp.below(8) as u32,
        };
        set_le32(&mut b, at, v);
    }
    if let Some(r) = b.get_mut(144..146) {
        r.copy_from_slice(&[inp.u8() % 2, inp.u8() % 2]);
    }
    b
}

fn has(bits: u32, want: u32) -> bool {
    bits & want == want
}

fn offload_caps(inp: &mut Input<'_>) {
    let b = offload_object(inp);
    let r = parse_offload(&b);
    let size = b
        .get(2..4)
        .map_or(0, |s| usize::from(u16::from_le_bytes([s[0], s[1]])));
    let failures = [
        (b.len() < 112, "len"),
        (b.len() >= 112 && b[0] != 0xA7, "type"),
        (b.len() >= 112 && b[1] == 0, "revision"),
        (b.len() >= 112 && (size < 112 || size > b.len()), "size"),
    ];
    let Ok(c) = r else {
        let which = match r {
            Err(OffloadError::Truncated(n)) => {
                assert_eq!(n, b.len());
                "len"
            }
            Err(OffloadError::ObjectType(t)) => {
                assert_eq!(t, b[0]);
                "type"
            }
            Err(OffloadError::Revision(_)) => "revision",
            Err(OffloadError::Size { size: s, len }) => {
                assert_eq!((usize::from(s), len), (size, b.len()));
                "size"
            }
            Ok(_) => unreachable!(),
        };
        assert!(
            failures.iter().any(|&(f, w)| f && w == which),
            "refused for {which} without reason: {r:?}"
        );
        return;
    };
    assert!(failures.iter().all(|&(f, _)| !f), "accepted {failures:?}");
    trace!("offload caps {c:?}");
    assert_eq!((c.revision, usize::from(c.size)), (b[1], size));
    let w = |at: usize| le32(&b, at);
    assert_eq!(
        (c.ip4_tx, c.ip4_rx, c.ip6_tx, c.ip6_rx),
        (w(8), w(16), w(24), w(32))
    );
    let lso = |encap: u32, max: u32, min: u32| {
        (encap & 2 != 0 && max != 0).then_some(LsoV2 {
            max_size: max,
            min_segments: min,
        })
    };
    assert_eq!(c.lso_v2_ipv4, lso(w(80), w(84), w(88)));
    assert_eq!(c.lso_v2_ipv6, lso(w(92), w(96), w(100)));
    assert_eq!(c.lso_v2_ipv6_opts, w(104));
    let rsc = |at: usize| b[1] >= 3 && size > at && b[at] != 0;
    assert_eq!((c.rsc_ipv4, c.rsc_ipv6), (rsc(144), rsc(145)));

    // The policy of `negotiate`, written out.
    let version = VERSIONS[inp.below(6)];
    // RSC asked for or not (`negotiate` is `negotiate_rsc` without it).
    let asked = inp.bool();
    let n = if asked {
        negotiate_rsc(&c, version, true)
    } else {
        negotiate(&c, version)
    };
    let o = n.offloads;
    let new = version >= NvspVersion::V5;
    let tx = ChecksumSet {
        ip4: false,
        tcp4: has(c.ip4_tx, 0x14),
        udp4: new && has(c.ip4_tx, 0x40),
        tcp6: has(c.ip6_tx, 0x15),
        udp6: new && has(c.ip6_tx, 0x40),
    };
    let rx = ChecksumSet {
        ip4: has(c.ip4_rx, 0x100),
        tcp4: has(c.ip4_rx, 0x14),
        udp4: new && has(c.ip4_rx, 0x40),
        tcp6: has(c.ip6_rx, 0x15),
        udp6: new && has(c.ip6_rx, 0x40),
    };
    assert_eq!((o.tx, o.rx), (tx, rx));
    assert_eq!(o.tx_ip4_options, has(c.ip4_tx, 1));
    assert_eq!(o.lso_v2_ipv4, c.lso_v2_ipv4.filter(|_| tx.tcp4));
    assert_eq!(
        o.lso_v2_ipv6,
        c.lso_v2_ipv6
            .filter(|_| tx.tcp6 && has(c.lso_v2_ipv6_opts, 5))
    );
    assert_eq!(o.rsc_offered, c.rsc_ipv4 && c.rsc_ipv6);
    let param = |t: bool, r: bool| match (t, r) {
        (true, true) => 4,
        (true, false) => 2,
        (false, true) => 3,
        (false, false) => 1,
    };
    let p = n.bytes();
    let (rev, len) = if new { (3, 28) } else { (2, 22) };
    assert_eq!(p.len(), len);
    assert_eq!(&p[..4], &[0x80, rev, len as u8, 0]);
    let udp = |t, r| if new { param(t, r) } else { 0 };
    let want = [
        param(false, rx.ip4),
        param(tx.tcp4, rx.tcp4),
        udp(tx.udp4, rx.udp4),
        param(tx.tcp6, rx.tcp6),
        udp(tx.udp6, rx.udp6),
        0,
        0,
        if o.lso_v2_ipv4.is_some() { 2 } else { 1 },
        if o.lso_v2_ipv6.is_some() { 2 } else { 1 },
    ];
    assert_eq!(
        &p[4..13],
        &want,
        "OFFLOAD_PARAMETERS for {c:?} at {version:?}"
    );
    assert!(p[13..22].iter().all(|&x| x == 0));
    // RSC on only when asked for and offered for both IP versions, from NVSP 5.
    assert_eq!(o.rsc, asked && new && c.rsc_ipv4 && c.rsc_ipv6);
    if new {
        let rsc = match (o.rsc_offered, o.rsc) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        };
        assert_eq!(&p[22..], &[rsc, rsc, 0, 0, 0, 0]);
    }
}

/// The driver's `L4` agrees with the model's headers.
fn same_headers(l4: &L4, h: &Headers) {
    assert_eq!(l4.ip == IpVersion::V6, h.v6);
    assert_eq!(l4.proto == L4Proto::Tcp, h.tcp);
    assert_eq!((l4.l3_offset, l4.offset, l4.len), (14, h.l4, h.len));
    assert_eq!(l4.ip_options, h.ip_options);
    assert_eq!(l4.tcp_options, h.tcp && h.l4_header > 20);
    assert_eq!(l4.checksum_offset(), h.checksum_at());
}

fn checksum_set(inp: &mut Input<'_>) -> ChecksumSet {
    let b = inp.u8();
    ChecksumSet {
        ip4: b & 1 != 0,
        tcp4: b & 2 != 0,
        udp4: b & 4 != 0,
        tcp6: b & 8 != 0,
        udp6: b & 16 != 0,
    }
}

/// Only the two bytes at `at` may differ.
fn unchanged_but(before: &[u8], after: &[u8], at: usize) {
    assert_eq!(before.len(), after.len());
    for (i, (x, y)) in before.iter().zip(after).enumerate() {
        assert!(x == y || i == at || i == at + 1, "byte {i} changed");
    }
}

fn tx_checksum(inp: &mut Input<'_>) {
    let before = net::frame(inp, 9000);
    let model = net::headers(&before);
    let l4 = l4_of(&before);
    match (&l4, &model) {
        (Ok(l4), Some(h)) => same_headers(l4, h),
        (Err(_), None) => {}
        _ => panic!("l4_of {l4:?}, model {model:?}"),
    }
    let offloads = Offloads {
        tx: checksum_set(inp),
        tx_ip4_options: inp.bool(),
        ..Offloads::NONE
    };
    let mut f = before.clone();
    let r = prepare_tx_checksum(&mut f, &offloads);
    let Some(h) = model else {
        assert_eq!(r, TxChecksum::NotApplicable);
        assert_eq!(f, before, "a frame without a checksum changed");
        return;
    };
    let at = h.checksum_at();
    trace!("tx checksum: {r:?}");
    unchanged_but(&before, &f, at);
    let covered = match (h.v6, h.tcp) {
        (false, true) => offloads.tx.tcp4,
        (false, false) => offloads.tx.udp4,
        (true, true) => offloads.tx.tcp6,
        (true, false) => offloads.tx.udp6,
    };
    let offload = covered && (!h.ip_options || offloads.tx_ip4_options);
    match r {
        TxChecksum::Offload(v) => {
            assert!(offload, "offloaded what the host does not take");
            let bits = if h.v6 { 2 } else { 1 } | if h.tcp { 4 } else { 8 };
            assert_eq!(v, bits | (h.l4 as u32) << 16, "checksum PPI");
            let preload = fold(pseudo(&f, &h, h.len));
            assert_eq!(be16(&f, at), Some(preload), "preloaded sum");
            // A host sums the segment over the preload and stores the complement.
            let mut c = !fold(sum(&f[h.l4..h.l4 + h.len]));
            if c == 0 && !h.tcp {
                c = 0xFFFF;
            }
            f[at..at + 2].copy_from_slice(&c.to_be_bytes());
            assert!(verifies(&f, &h), "host-filled checksum does not verify");
        }
        TxChecksum::Software => {
            assert!(!offload, "computed in software what the host offloads");
            assert!(verifies(&f, &h), "software checksum does not verify");
            assert!(h.tcp || be16(&f, at) != Some(0), "UDP checksum 0 sent");
            assert!(l4_checksum_ok(&f, l4.as_ref().unwrap()));
        }
        TxChecksum::NotApplicable => panic!("a TCP/UDP frame left alone"),
    }
    // The frame helpers agree with the model on the original bytes too.
    let l4 = l4.unwrap();
    let mut g = before.clone();
    write_l4_checksum(&mut g, &l4);
    assert!(verifies(&g, &h));
    assert_eq!(l4_checksum_ok(&before, &l4), {
        let zero_udp4 = !h.tcp && !h.v6 && be16(&before, at) == Some(0);
        zero_udp4 || verifies(&before, &h)
    });
}

fn lso_limits(inp: &mut Input<'_>) -> Option<LsoV2> {
    if inp.u8().is_multiple_of(4) {
        return None;
    }
    Some(LsoV2 {
        max_size: inp.pick(&[62780, 64000, 65535, 1000], |i| i.u32()),
        min_segments: inp.pick(&[0, 1, 2, 2], |i| i.u32() % 64),
    })
}

fn lso(inp: &mut Input<'_>) {
    let f = net::frame(inp, 66000);
    let offloads = Offloads {
        lso_v2_ipv4: lso_limits(inp),
        lso_v2_ipv6: lso_limits(inp),
        ..Offloads::NONE
    };
    let mss = match inp.u8() % 8 {
        0 => inp.u32() as usize,
        1 => 0,
        2 => 0xF_FFFF + inp.below(3),
        3 => 1460,
        _ => 1 + inp.below(2000),
    };
    let max_frame = inp.pick(&[1514, 1514, 9014, 576], |i| 60 + i.below(9000));
    let r = lso_plan(&f, mss, max_frame, &offloads);
    trace!(
        "lso_plan of {} bytes, mss {mss}, max {max_frame}: {r:?}",
        f.len()
    );
    let Some(h) = net::headers(&f) else {
        assert!(matches!(r, Err(LsoError::NotTcp(Some(_)))), "{r:?}");
        return;
    };
    if !h.tcp {
        assert_eq!(r, Err(LsoError::NotTcp(None)));
        return;
    }
    let Some(limits) = (if h.v6 {
        offloads.lso_v2_ipv6
    } else {
        offloads.lso_v2_ipv4
    }) else {
        assert_eq!(r, Err(LsoError::NotNegotiated));
        return;
    };
    let header_len = h.l4 + h.l4_header;
    let payload = h.l4 + h.len - header_len;
    let limit = (limits.max_size as usize).min(LSO_MAX_PAYLOAD);
    let segments = if mss == 0 { 0 } else { payload.div_ceil(mss) };
    let mss_bad = mss == 0 || mss > 0xF_FFFF || header_len + mss > max_frame;
    let too_large = payload > limit || header_len > LSO_MAX_HEADERS;
    let too_few = segments < (limits.min_segments as usize).max(1);
    let plan = match r {
        Ok(plan) => {
            assert!(
                !mss_bad && !too_large && !too_few,
                "{r:?} for {h:?} mss {mss}"
            );
            plan
        }
        Err(LsoError::Mss(m)) => return assert!(mss_bad && m == mss),
        Err(LsoError::TooLarge(n)) => return assert!(too_large && n == payload),
        Err(LsoError::TooFewSegments(n)) => {
            return assert!(!mss_bad && too_few && n == segments);
        }
        Err(e) => panic!("{e:?} for a TCP frame with limits"),
    };
    same_headers(&plan.l4, &h);
    assert_eq!(plan.header_len, header_len);
    // The segments the host cuts cover the payload exactly.
    let mut covered = 0;
    let mut cuts = 0;
    while covered < payload {
        let n = (payload - covered).min(mss);
        assert!(n >= 1 && header_len + n <= max_frame);
        covered += n;
        cuts += 1;
    }
    assert_eq!((covered, cuts), (payload, plan.segments));
    assert!(plan.segments >= 1 && plan.segments >= limits.min_segments as usize);
    let want_ppi = mss as u32 | (h.l4 as u32) << 20 | 1 << 30 | if h.v6 { 1 << 31 } else { 0 };
    assert_eq!(plan.ppi, want_ppi, "LSO PPI");

    let mut g = f.clone();
    prepare_lso_headers(&mut g[..header_len], &plan);
    let l3 = 14;
    let zeroed: &[usize] = if h.v6 {
        &[l3 + 4, l3 + 5]
    } else {
        &[l3 + 2, l3 + 3, l3 + 10, l3 + 11]
    };
    let at = h.checksum_at();
    for (i, (x, y)) in f.iter().zip(&g).enumerate() {
        if zeroed.contains(&i) {
            assert_eq!(*y, 0, "byte {i} not zeroed");
        } else if i != at && i != at + 1 {
            assert_eq!(x, y, "byte {i} changed");
        }
    }
    assert_eq!(be16(&g, at), Some(fold(pseudo(&g, &h, 0))), "LSO preload");
    // Cut as a host does: lengths set, the checksum summed over the preload plus the
    // segment's length (devices §2.14); each segment must verify.
    let mut start = header_len;
    for _ in 0..plan.segments.min(4) {
        let n = (h.l4 + h.len - start).min(mss);
        let mut s = g[..header_len].to_vec();
        s.extend_from_slice(&g[start..start + n]);
        let l4_len = h.l4_header + n;
        if h.v6 {
            s[18..20].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            let total = (h.l4 - l3 + l4_len) as u16;
            s[16..18].copy_from_slice(&total.to_be_bytes());
        }
        let c = !fold(sum(&s[h.l4..]) + l4_len as u64);
        s[at..at + 2].copy_from_slice(&c.to_be_bytes());
        let sh = net::headers(&s).expect("a segment with valid headers");
        assert!(verifies(&s, &sh), "segment checksum");
        start += n;
    }
    // Short header buffers are tolerated.
    let k = inp.below(header_len + 1);
    prepare_lso_headers(&mut g[..k], &plan);
}

fn ppi_area(inp: &mut Input<'_>) -> Vec<u8> {
    if inp.u8().is_multiple_of(4) {
        return inp.bytes(120);
    }
    let mut a = Vec::new();
    for _ in 0..1 + inp.below(4) {
        let payload = if inp.bool() { 4 } else { inp.below(12) };
        let ty = inp.pick(&[0, 0, 1, 2], |i| i.u32());
        let (mut size, mut off) = (12 + payload as u32, 12u32);
        if inp.u8().is_multiple_of(8) {
            size = inp.u32() % 40;
            off = inp.u32() % 40;
        }
        for w in [size, ty, off] {
            a.extend_from_slice(&w.to_le_bytes());
        }
        a.extend(inp.fill(payload));
    }
    a
}

/// The verdict of `bits` with every layer enabled on an IPv4 frame.
fn decode(bits: u32) -> RxChecksum {
    net::rx_verdict(bits, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0], [true; 5])
}

fn rx_checksum(inp: &mut Input<'_>) {
    let area = ppi_area(inp);
    let mut bits = 0;
    for e in net::ppi_walk(&area) {
        let Ok((ty, at, len)) = e else { break };
        if ty == 0 && len >= 4 {
            bits |= le32(&area, at);
        }
    }
    let v = rx_checksum_of(&area);
    trace!("rx_checksum_of {area:02x?}: {v:?}");
    assert_eq!(v, decode(bits), "verdict of {area:02x?}");
    let raw = inp.u32();
    let d = RxChecksum::from_bits(raw);
    assert_eq!(d, decode(raw));
    assert_eq!(d.is_bad(), [d.ip, d.tcp, d.udp].contains(&CsumStatus::Bad));
    let rx = checksum_set(inp);
    let f = net::frame(inp, 100);
    let m = d.masked(&f, &rx);
    let on = [rx.ip4, rx.tcp4, rx.udp4, rx.tcp6, rx.udp6];
    assert_eq!(m, net::rx_verdict(raw, &f, on));
}

fn rss_caps(inp: &mut Input<'_>) {
    let b = if inp.u8().is_multiple_of(4) {
        inp.bytes(40)
    } else {
        let len = inp.pick(&[16, 18, 20], |i| i.below(24));
        let mut b = inp.fill(len);
        if let Some(h) = b.get_mut(..4) {
            let size = inp.pick(&[16u16, 18, len as u16], |i| i.u16());
            h[0] = if inp.u8().is_multiple_of(16) {
                h[0]
            } else {
                0x88
            };
            h[1] = inp.below(4) as u8;
            h[2..4].copy_from_slice(&size.to_le_bytes());
        }
        if b.len() >= 8 && inp.bool() {
            b[4] = inp.below(4) as u8;
        }
        b
    };
    let r = parse_rss_capabilities(&b);
    trace!("parse_rss_capabilities {b:02x?}: {r:?}");
    let size = b
        .get(2..4)
        .map_or(0, |s| usize::from(u16::from_le_bytes([s[0], s[1]])));
    let caps = le32(&b, 4);
    let no_toeplitz = caps & 0xFF != 0 && caps & 1 == 0;
    let fails = [
        b.len() < 16,
        b.len() >= 16 && b[0] != 0x88,
        b.len() >= 16 && b[1] < 1,
        b.len() >= 16 && (size < 16 || size > b.len()),
    ];
    let c = match r {
        Ok(c) => {
            assert!(!fails.contains(&true) && !no_toeplitz, "accepted {b:02x?}");
            c
        }
        Err(e) => {
            let ok = match e {
                RssError::Truncated(n) => n == b.len() && fails[0],
                RssError::WrongType(t) => fails[1] && t == u32::from(b[0]),
                RssError::Revision(_) => fails[2],
                RssError::Size(s) => fails[3] && usize::from(s) == size,
                RssError::NoToeplitz(c) => no_toeplitz && c == caps,
                _ => false,
            };
            assert!(ok, "{e:?} for {b:02x?}");
            return;
        }
    };
    assert_eq!(
        (
            c.revision,
            c.capabilities,
            c.num_interrupt_messages,
            c.num_receive_queues
        ),
        (b[1], caps, le32(&b, 8), le32(&b, 12))
    );
    let entries = (b[1] >= 2 && size >= 18).then(|| u16::from_le_bytes([b[16], b[17]]));
    assert_eq!(c.num_indirection_table_entries, entries);
    let t = c.table_entries();
    assert!(t.is_power_of_two() && t <= 128);
    if let Some(n) = entries
        .map(usize::from)
        .filter(|n| n.is_power_of_two() && *n <= 128)
    {
        assert_eq!(t, n);
    }
    let wanted = [0, 1, 2, 8, 64, 65, 1000][inp.below(7)];
    let ch = c.channels_for(wanted);
    let most = (c.num_receive_queues as usize).min(t).min(64);
    assert!((1..=64).contains(&ch) && ch <= wanted.max(1) && ch <= most.max(1));
    if (1..=most).contains(&wanted) {
        assert_eq!(ch, wanted);
    }

    // The parameters object the guest sends back.
    let entries = [1, 2, 16, 128, 256, 3, 0][inp.below(7)];
    let queues = 1 + inp.below(64);
    let key: [u8; 40] = inp.fill(40).try_into().unwrap();
    let mut out = vec![0u8; inp.pick(&[40 + 4 * entries + 40, 600], |i| i.below(600))];
    let (flags, hash) = (inp.u16(), inp.u32());
    let n = write_rss_parameters(
        &mut out,
        flags,
        hash,
        entries,
        |i| (i % queues) as u32,
        &key,
    );
    let fits = entries.is_power_of_two() && entries <= 128 && out.len() >= 80 + 4 * entries;
    let Some(n) = n else {
        assert!(!fits, "{entries} entries in {} bytes refused", out.len());
        return;
    };
    assert!(fits && n == 80 + 4 * entries);
    assert_eq!(&out[..4], &[0x89, 2, 40, 0]);
    assert_eq!(u16::from_le_bytes([out[4], out[5]]), flags);
    assert_eq!(le32(&out, 8), hash);
    let (table_at, key_at) = (le32(&out, 16) as usize, le32(&out, 24) as usize);
    assert_eq!(u16::from_le_bytes([out[12], out[13]]) as usize, 4 * entries);
    assert_eq!(u16::from_le_bytes([out[20], out[21]]), 40);
    assert!(table_at >= 40 && table_at + 4 * entries <= key_at && key_at + 40 == n);
    for i in 0..entries {
        assert_eq!(le32(&out, table_at + 4 * i) as usize, i % queues);
    }
    assert_eq!(&out[key_at..n], &key);
}

fn send_table(inp: &mut Input<'_>) {
    let version = VERSIONS[inp.below(6)];
    let m = if inp.u8().is_multiple_of(4) {
        inp.bytes(140)
    } else {
        let len = inp.pick(&[104, 76, 40 + 64, 12 + 64], |i| i.below(140));
        let mut m = inp.fill(len);
        let offset = inp.pick(&[12, 40, 16, len.saturating_sub(64) as u32], |i| i.u32());
        let count = if inp.u8().is_multiple_of(8) {
            inp.u32()
        } else {
            16
        };
        let ty = if inp.u8().is_multiple_of(16) {
            inp.u32()
        } else {
            134
        };
        for (at, v) in [(0, ty), (4, count), (8, offset)] {
            set_le32(&mut m, at, v);
        }
        if inp.bool() {
            for i in 0..16 {
                let q = if inp.u8().is_multiple_of(16) {
                    inp.u32()
                } else {
                    inp.below(8) as u32
                };
                set_le32(&mut m, offset as usize + 4 * i, q);
            }
        }
        m
    };
    let r = parse_send_indirection_table(&m, version);
    trace!("parse_send_indirection_table of {} bytes: {r:?}", m.len());
    let header_ok = m.len() >= 12 && le32(&m, 0) == 134 && le32(&m, 4) == 16;
    let offset = if version <= NvspVersion::V6 && m.len() >= 104 {
        40
    } else {
        le32(&m, 8) as usize
    };
    let table_ok = offset >= 12 && offset.checked_add(64).is_some_and(|e| e <= m.len());
    let table = match r {
        Ok(t) => {
            assert!(header_ok && table_ok, "accepted {m:02x?} at {version:?}");
            for (i, q) in t.iter().enumerate() {
                assert_eq!(*q, le32(&m, offset + 4 * i));
            }
            t
        }
        Err(e) => {
            let why = match e {
                RssError::Truncated(n) => n == m.len() && m.len() < 12,
                RssError::WrongType(t) => m.len() >= 12 && t == le32(&m, 0) && t != 134,
                RssError::Count(c) => m.len() >= 12 && c == le32(&m, 4) && c != 16,
                RssError::Offset(o) => header_ok && !table_ok && o == le32(&m, 8),
                _ => false,
            };
            assert!(why, "{e:?} for {m:02x?} at {version:?}");
            std::array::from_fn(|_| inp.below(70) as u32)
        }
    };
    // The shared table: refused whole when an entry names a queue beyond the count.
    let t = SendTable::new();
    let queues = inp.below(70);
    t.set_default(queues);
    let n = queues.clamp(1, 64);
    assert_eq!(t.queues(), n);
    let default: [u8; 16] = std::array::from_fn(|i| (i % n) as u8);
    assert_eq!(t.entries(), default);
    let r = t.apply(&table);
    let bad = table.iter().position(|&q| q as usize >= n);
    match (r, bad) {
        (Ok(()), None) => {
            assert_eq!(t.entries(), table.map(|q| q as u8));
            assert_eq!(t.host_updates(), (1, 0));
        }
        (Err(RssError::Entry { slot, queue }), Some(b)) => {
            assert_eq!((slot, queue), (b, table[b]));
            assert_eq!(t.entries(), default, "a refused table changed entries");
            assert_eq!(t.host_updates(), (0, 1));
        }
        other => panic!("apply {table:?} over {n} queues: {other:?}"),
    }
    for _ in 0..4 {
        let h = inp.u32();
        let q = t.queue_for_hash(h);
        assert!(q < n && q == usize::from(t.entries()[h as usize % 16]));
    }
    // Shrinking leaves no entry beyond the new count.
    let fewer = 1 + inp.below(n);
    t.set_default(fewer);
    assert!(t.entries().iter().all(|&q| usize::from(q) < fewer));
}

fn hashing(inp: &mut Input<'_>) {
    let key: [u8; 40] = inp.fill(40).try_into().unwrap();
    let input = inp.bytes(48);
    assert_eq!(toeplitz(&key, &input), net::toeplitz(&key, &input));
    let info = match inp.u8() % 4 {
        0 => inp.u32(),
        1 => 0x1 | 0x100 | 0x200 | 0x400 | 0x1000,
        _ => u32::from(inp.u16()),
    };
    let f = net::frame(inp, 64);
    let got = hash_input(&f, info);
    let want = net::hash_input(&f, info);
    assert_eq!(
        got.as_ref().map(|i| i.as_bytes()),
        want.as_deref(),
        "hash input"
    );
    if let Some(w) = &want {
        trace!("hash input of {} bytes", w.len());
        assert!([8, 12, 32, 36].contains(&w.len()));
    }
    let h = flow_hash(&key, info, &f);
    assert_eq!(h, want.map(|w| net::toeplitz(&key, &w)));
    let entries = 1 << inp.below(8);
    let hash = h.unwrap_or_else(|| inp.u32());
    let slot = indirection_slot(hash, entries);
    assert!(slot < entries && slot == hash as usize % entries);
}
