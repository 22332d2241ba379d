//! Ethernet frame helpers for checksum offload: where the IP and TCP/UDP headers of a frame
//! are (every length validated against the frame and the IP header), and the Internet
//! checksum (RFC 1071) over them — the pseudo-header sum a guest preloads, a full software
//! checksum, and verification. Pure functions on byte slices, safe on any input.

/// Ethernet header length (no 802.1Q tag: a guest's tag travels in the 802.1Q PPI).
pub const ETHERNET_HEADER: usize = 14;
/// Ethertype IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// IP version of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4 (ethertype 0x0800).
    V4,
    /// IPv6 (ethertype 0x86DD).
    V6,
}

/// Transport protocol whose checksum can be offloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4Proto {
    /// TCP (checksum at offset 16 of its header).
    Tcp,
    /// UDP (checksum at offset 6 of its header).
    Udp,
}

/// Where the headers of a TCP or UDP over IP frame are. Every offset and length was checked
/// against the frame: `offset + len <= frame.len()`, the TCP/UDP header fits in `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct L4 {
    /// IP version.
    pub ip: IpVersion,
    /// TCP or UDP.
    pub proto: L4Proto,
    /// Offset of the IP header in the frame (14).
    pub l3_offset: usize,
    /// Offset of the TCP/UDP header in the frame.
    pub offset: usize,
    /// Bytes of the TCP/UDP segment (header and payload) as the IP header gives them; the
    /// frame may carry Ethernet padding after them.
    pub len: usize,
    /// The IPv4 header carries options (IHL > 5).
    pub ip_options: bool,
    /// The TCP header carries options (data offset > 5); false for UDP.
    pub tcp_options: bool,
}

impl L4 {
    /// Offset of the checksum field in the frame.
    pub fn checksum_offset(&self) -> usize {
        self.offset
            + match self.proto {
                L4Proto::Tcp => 16,
                L4Proto::Udp => 6,
            }
    }
}

/// Why a frame has no offloadable TCP/UDP checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the headers it announces.
    Truncated,
    /// Not IPv4 or IPv6 (the ethertype).
    NotIp(u16),
    /// An IP header whose version, header length or total length is inconsistent.
    BadIpHeader,
    /// An IPv4 fragment: the checksum covers the reassembled datagram.
    Fragment,
    /// Neither TCP nor UDP (IPv4 protocol or IPv6 next header; IPv6 extension headers land
    /// here too).
    NotTcpUdp(u8),
    /// A TCP data offset or UDP length inconsistent with the IP length.
    BadL4Header,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => f.write_str("frame shorter than its headers"),
            Self::NotIp(t) => write!(f, "ethertype {t:#06x} is not IP"),
            Self::BadIpHeader => f.write_str("inconsistent IP header"),
            Self::Fragment => f.write_str("IPv4 fragment"),
            Self::NotTcpUdp(p) => write!(f, "IP protocol {p} is not TCP or UDP"),
            Self::BadL4Header => f.write_str("inconsistent TCP/UDP header"),
        }
    }
}

impl core::error::Error for FrameError {}

fn be16(b: &[u8], at: usize) -> Result<u16, FrameError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(FrameError::Truncated),
    }
}

/// The ethertype of an Ethernet frame, if it has a header.
pub fn ethertype(frame: &[u8]) -> Option<u16> {
    be16(frame, 12).ok()
}

/// Finds the IP and TCP/UDP headers of an Ethernet frame (no 802.1Q tag). IPv4: version 4,
/// IHL ≥ 5, total length covering the header and inside the frame, not a fragment. IPv6:
/// version 6, payload inside the frame, TCP or UDP directly after the fixed header (no
/// extension headers). TCP: data offset ≥ 5 and inside the segment. UDP: its length field
/// equal to the IP payload length.
pub fn l4_of(frame: &[u8]) -> Result<L4, FrameError> {
    let l3 = ETHERNET_HEADER;
    let ip = match be16(frame, 12)? {
        ETHERTYPE_IPV4 => IpVersion::V4,
        ETHERTYPE_IPV6 => IpVersion::V6,
        other => return Err(FrameError::NotIp(other)),
    };
    let first = *frame.get(l3).ok_or(FrameError::Truncated)?;
    let (offset, len, proto, ip_options) = match ip {
        IpVersion::V4 => {
            let ihl = usize::from(first & 0xF) * 4;
            if first >> 4 != 4 || ihl < 20 {
                return Err(FrameError::BadIpHeader);
            }
            if frame.len() < l3 + ihl {
                return Err(FrameError::Truncated);
            }
            let total = usize::from(be16(frame, l3 + 2)?);
            if total < ihl {
                return Err(FrameError::BadIpHeader);
            }
            if frame.len() < l3 + total {
                return Err(FrameError::Truncated);
            }
            // More-fragments flag or a fragment offset.
            if be16(frame, l3 + 6)? & 0x3FFF != 0 {
                return Err(FrameError::Fragment);
            }
            (l3 + ihl, total - ihl, frame[l3 + 9], ihl > 20)
        }
        IpVersion::V6 => {
            if first >> 4 != 6 {
                return Err(FrameError::BadIpHeader);
            }
            let payload = usize::from(be16(frame, l3 + 4)?);
            if frame.len() < l3 + 40 + payload {
                return Err(FrameError::Truncated);
            }
            (l3 + 40, payload, frame[l3 + 6], false)
        }
    };
    let (proto, tcp_options) = match proto {
        IPPROTO_TCP => {
            let doff = usize::from(*frame.get(offset + 12).ok_or(FrameError::Truncated)? >> 4) * 4;
            if len < 20 || doff < 20 || doff > len {
                return Err(FrameError::BadL4Header);
            }
            (L4Proto::Tcp, doff > 20)
        }
        IPPROTO_UDP => {
            if len < 8 || usize::from(be16(frame, offset + 4)?) != len {
                return Err(FrameError::BadL4Header);
            }
            (L4Proto::Udp, false)
        }
        other => return Err(FrameError::NotTcpUdp(other)),
    };
    Ok(L4 {
        ip,
        proto,
        l3_offset: l3,
        offset,
        len,
        ip_options,
        tcp_options,
    })
}

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to `acc`, the
/// one's complement sum of RFC 1071 before folding.
pub fn ones_sum(data: &[u8], acc: u64) -> u64 {
    let mut sum = acc;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum to 16 bits with end-around carry.
pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// The one's complement sum (folded, not complemented) of the pseudo-header of `l4`:
/// source and destination address, protocol and TCP/UDP length (RFC 793 / RFC 8200 §8.1).
/// This is what a guest preloads into the checksum field for checksum offload (Windows'
/// TCP/IP transport, Linux, FreeBSD, DPDK: the sum including the length).
pub fn pseudo_header_sum(frame: &[u8], l4: &L4) -> u16 {
    pseudo_header_sum_of_len(frame, l4, l4.len as u64)
}

/// The pseudo-header sum with `len` as the TCP/UDP length (0 for LSO: the host adds each
/// segment's length).
pub fn pseudo_header_sum_of_len(frame: &[u8], l4: &L4, len: u64) -> u16 {
    let proto = match l4.proto {
        L4Proto::Tcp => IPPROTO_TCP,
        L4Proto::Udp => IPPROTO_UDP,
    };
    let addrs = match l4.ip {
        IpVersion::V4 => l4.l3_offset + 12..l4.l3_offset + 20,
        IpVersion::V6 => l4.l3_offset + 8..l4.l3_offset + 40,
    };
    let sum = ones_sum(frame.get(addrs).unwrap_or(&[]), 0);
    fold(sum + u64::from(proto) + (len >> 16) + (len & 0xFFFF))
}

fn segment<'a>(frame: &'a [u8], l4: &L4) -> &'a [u8] {
    frame.get(l4.offset..l4.offset + l4.len).unwrap_or(&[])
}

fn set16(frame: &mut [u8], at: usize, v: u16) {
    if let Some(s) = frame.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Writes the pseudo-header sum into the checksum field (the preload of checksum offload).
pub fn write_pseudo_header_sum(frame: &mut [u8], l4: &L4) {
    let sum = pseudo_header_sum(frame, l4);
    set16(frame, l4.checksum_offset(), sum);
}

/// Computes the TCP/UDP checksum in software and writes it (a UDP checksum of 0 is sent as
/// 0xFFFF, RFC 768).
pub fn write_l4_checksum(frame: &mut [u8], l4: &L4) {
    set16(frame, l4.checksum_offset(), 0);
    let sum = ones_sum(segment(frame, l4), u64::from(pseudo_header_sum(frame, l4)));
    let mut c = !fold(sum);
    if c == 0 && l4.proto == L4Proto::Udp {
        c = 0xFFFF;
    }
    set16(frame, l4.checksum_offset(), c);
}

/// Whether the TCP/UDP checksum of the frame is right (a zero UDP checksum over IPv4 means
/// "none" and is accepted; over IPv6 it is not, RFC 8200 §8.1).
pub fn l4_checksum_ok(frame: &[u8], l4: &L4) -> bool {
    let at = l4.checksum_offset();
    if l4.proto == L4Proto::Udp && l4.ip == IpVersion::V4 && be16(frame, at) == Ok(0) {
        return true;
    }
    let sum = ones_sum(segment(frame, l4), u64::from(pseudo_header_sum(frame, l4)));
    fold(sum) == 0xFFFF
}

/// Whether the frame is IPv4 with a right header checksum (`None`: not an IPv4 frame with a
/// whole header).
pub fn ipv4_header_ok(frame: &[u8]) -> Option<bool> {
    if ethertype(frame) != Some(ETHERTYPE_IPV4) {
        return None;
    }
    let first = *frame.get(ETHERNET_HEADER)?;
    let ihl = usize::from(first & 0xF) * 4;
    if first >> 4 != 4 || ihl < 20 {
        return None;
    }
    let header = frame.get(ETHERNET_HEADER..ETHERNET_HEADER + ihl)?;
    Some(fold(ones_sum(header, 0)) == 0xFFFF)
}
