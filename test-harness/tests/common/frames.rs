//! Ethernet frames for the offload tests, built byte by byte (independent of the driver's
//! and the mock's helpers), and smoltcp's verdict on them.

use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket, UdpPacket};

pub const MAC_A: [u8; 6] = [0x00, 0x15, 0x5D, 0, 9, 0xA];
pub const MAC_B: [u8; 6] = [0x00, 0x15, 0x5D, 0, 9, 0xB];

pub fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum()
}

pub fn fold(mut s: u32) -> u16 {
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s as u16
}

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// Ethernet + IPv4 (right header checksum; 4 bytes of options when `options`) + `l4`.
pub fn ipv4(proto: u8, options: bool, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(MAC_B, MAC_A, 0x0800);
    let ihl = if options { 24 } else { 20 };
    f.extend_from_slice(&[0x40 | (ihl / 4) as u8, 0]);
    f.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[
        0x12, 0x34, 0x40, 0, 64, proto, 0, 0, 192, 0, 2, 10, 192, 0, 2, 11,
    ]);
    if options {
        f.extend_from_slice(&[1, 1, 1, 0]);
    }
    let c = !fold(sum16(&f[14..14 + ihl]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(l4);
    f
}

pub fn ipv6(next: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(MAC_B, MAC_A, 0x86DD);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xA]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xB]);
    f.extend_from_slice(l4);
    f
}

/// A TCP segment whose checksum field holds garbage (the NIC fills it in).
pub fn tcp(payload: &[u8]) -> Vec<u8> {
    let mut s = vec![
        0xC3, 0x50, 0x00, 0x50, 0, 0, 1, 0, 0, 0, 0, 0, 0x50, 0x18, 0x72, 0x10,
    ];
    s.extend_from_slice(&[0xDE, 0xAD, 0, 0]);
    s.extend_from_slice(payload);
    s
}

pub fn udp(payload: &[u8]) -> Vec<u8> {
    let mut s = vec![0x13, 0x88, 0x13, 0x89];
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0xBE, 0xEF]);
    s.extend_from_slice(payload);
    s
}

pub fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// smoltcp's verdict on an IPv4 TCP/UDP frame (an implementation independent of both the
/// driver and the mock).
pub fn smoltcp_ok(f: &[u8]) -> bool {
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    let (src, dst) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let l4_ok = match ip.next_header() {
        smoltcp::wire::IpProtocol::Tcp => TcpPacket::new_checked(ip.payload())
            .unwrap()
            .verify_checksum(&src, &dst),
        smoltcp::wire::IpProtocol::Udp => UdpPacket::new_checked(ip.payload())
            .unwrap()
            .verify_checksum(&src, &dst),
        p => panic!("{p}"),
    };
    ip.verify_checksum() && l4_ok
}

/// Where a frame's TCP/UDP checksum field is (test frames: IPv4 with `ihl`, or IPv6).
pub fn checksum_field(f: &[u8]) -> std::ops::Range<usize> {
    let (l4, proto) = if f[12] == 0x86 {
        (54, f[20])
    } else {
        (14 + usize::from(f[14] & 15) * 4, f[23])
    };
    let at = l4 + if proto == 6 { 16 } else { 6 };
    at..at + 2
}

/// Fills in the IPv4 header checksum and the TCP/UDP checksum (pseudo-header included) of an
/// IPv4 or IPv6 frame built by a test, as a guest stack without offloads does. The IP
/// length fields say where the packet ends (Ethernet padding after it is not summed).
pub fn fill_checksums(f: &mut [u8]) {
    let (l4, end, proto, mut pseudo) = if f[12] == 0x86 {
        let len = usize::from(u16::from_be_bytes([f[18], f[19]]));
        (54, 54 + len, f[20], sum16(&f[22..54]))
    } else {
        let ihl = usize::from(f[14] & 15) * 4;
        f[24..26].fill(0);
        let c = !fold(sum16(&f[14..14 + ihl]));
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        (14 + ihl, 14 + total, f[23], sum16(&f[26..34]))
    };
    if proto != 6 && proto != 17 {
        return;
    }
    let field = checksum_field(f);
    f[field.clone()].fill(0);
    pseudo += u32::from(proto) + (end - l4) as u32 + sum16(&f[l4..end]);
    let c = match !fold(pseudo) {
        0 if proto == 17 => 0xFFFF,
        c => c,
    };
    f[field].copy_from_slice(&c.to_be_bytes());
}
