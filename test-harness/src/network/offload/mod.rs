//! Task offloads of the mock NIC (devices §2.12–2.14), written from the protocol document
//! independently of the guest's `netvsc::offload` (its own frame parser and checksum code):
//!
//! - TCP_OFFLOAD_HARDWARE_CAPABILITIES: an NDIS_OFFLOAD of the revision the host generation
//!   answers ([`CapsReply`]), with the capabilities of [`HostOffloadCaps`];
//! - TCP_OFFLOAD_PARAMETERS: accepted as OpenVMM does (type 0x80, revision ≥ 1, size ≥ 20
//!   within the information buffer, known values), refused when it asks for something the
//!   host did not advertise, or for UDP checksums at NVSP ≤ 4 (hosts whose UDP offload Linux
//!   and FreeBSD keep off); each success is followed by a TASK_OFFLOAD_CURRENT_CONFIG
//!   indication, as OpenVMM sends;
//! - transmit: a checksum PPI is checked against the frame (OpenVMM's header-offset rule,
//!   the IP version and protocol, the offload being enabled), the guest's preload must be
//!   the pseudo-header sum with the length, and the host computes the checksum the way a NIC
//!   does (sum over the segment including the preload). Every TCP/UDP/IPv4 frame leaving the
//!   host is then verified from scratch: [`OffloadStats::tx_bad_checksums`] counts frames
//!   that would reach the wire with a wrong checksum;
//! - receive: every frame gets a checksum PPI whose bits report what the host really found
//!   for the checksums the guest enabled on receive (0 otherwise); faults corrupt a frame's
//!   checksum before the host looks ([`super::NetworkVsp::corrupt_rx_checksums`]) or replace
//!   the verdict bits outright ([`super::NetworkVsp::force_rx_checksum_bits`]).
//!
//! - RSC: offered (revision-3 object, [`HostOffloadCaps::rsc`]) and enabled per IP version
//!   by the parameters' revision-3 fields, which a lower-revision object may not carry; the
//!   coalescing itself is in `rsc.rs`.
//!
//! - LSO v2: an LSO PPI is checked (v2, OpenVMM's offset rule, enabled, MSS within the
//!   frame size, payload within the advertised size, the guest's zeroed IP length and its
//!   preload without the length) and the frame is cut into segments as a NIC does
//!   ([`OffloadStats::tx_lso_segments`]); each segment is verified like any other frame.

mod frame;
pub(super) mod rsc;
mod tx;

use frame::{checksum_at, parse, verdict};

/// Checksum capability bits (devices §2.13.1).
mod bits {
    pub const IP_OPTIONS: u32 = 0x1;
    pub const TCP_OPTIONS: u32 = 0x4;
    pub const TCP: u32 = 0x10;
    pub const UDP: u32 = 0x40;
    pub const IP_HEADER: u32 = 0x100;
}

/// The offload capabilities a mock host advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostOffloadCaps {
    /// IPv4 transmit checksum bits.
    pub ip4_tx: u32,
    /// IPv4 receive checksum bits.
    pub ip4_rx: u32,
    /// IPv6 transmit checksum bits.
    pub ip6_tx: u32,
    /// IPv6 receive checksum bits.
    pub ip6_rx: u32,
    /// LSO v2 largest size (0: no LSO v2), both IP versions.
    pub lso_v2_max_size: u32,
    /// LSO v2 fewest segments.
    pub lso_v2_min_segments: u32,
    /// LSO v2 IPv6 option bits (extension headers 0x1, TCP options 0x4).
    pub lso_v2_ip6_opts: u32,
    /// RSC over IPv4 and IPv6 (revision-3 object only).
    pub rsc: bool,
}

impl HostOffloadCaps {
    /// What a Hyper-V host of NVSP version `nvsp` advertises (OpenVMM's values where the
    /// facts give them): TCP and UDP checksums with IP and TCP options both ways, the IPv4
    /// header checksum, LSO v2 of 62780 bytes and 2 segments, and RSC from NVSP 6.1.
    pub fn hyper_v(nvsp: u32) -> Self {
        use bits::*;
        let v4 = IP_OPTIONS | TCP_OPTIONS | TCP | UDP | IP_HEADER;
        let v6 = IP_OPTIONS | TCP_OPTIONS | TCP | UDP;
        Self {
            ip4_tx: v4,
            ip4_rx: v4,
            ip6_tx: v6,
            ip6_rx: v6,
            lso_v2_max_size: 0xF53C,
            lso_v2_min_segments: 2,
            lso_v2_ip6_opts: 0x5,
            rsc: nvsp >= 0x6_0001,
        }
    }

    /// Nothing offloadable.
    pub fn none() -> Self {
        Self {
            ip4_tx: 0,
            ip4_rx: 0,
            ip6_tx: 0,
            ip6_rx: 0,
            lso_v2_max_size: 0,
            lso_v2_min_segments: 0,
            lso_v2_ip6_opts: 0,
            rsc: false,
        }
    }
}

/// How the host answers TCP_OFFLOAD_HARDWARE_CAPABILITIES.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CapsReply {
    /// RNDIS NOT_SUPPORTED (a host without task offloads).
    NotSupported,
    /// The revision of the NDIS the guest announced: 1 / 112 bytes for NDIS 6.0 (NVSP 1, 2),
    /// 2 / 144 for NDIS 6.1 (NVSP 4), 3 / 156 for NDIS 6.30 (NVSP 5+).
    ByVersion,
    /// Always revision 3 / 156 bytes, whatever the query (OpenVMM, devices §2.13.1 rule).
    Revision3,
    /// These bytes as the information buffer, whatever they hold (hostile host).
    Raw(Vec<u8>),
}

/// Offload behaviour of the mock NIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffloadHostConfig {
    /// The capability reply.
    pub reply: CapsReply,
    /// The capabilities (`None`: [`HostOffloadCaps::hyper_v`] of the negotiated version).
    pub caps: Option<HostOffloadCaps>,
    /// Answer every TCP_OFFLOAD_PARAMETERS with RNDIS FAILURE.
    pub refuse_parameters: bool,
}

impl Default for OffloadHostConfig {
    fn default() -> Self {
        Self {
            reply: CapsReply::ByVersion,
            caps: None,
            refuse_parameters: false,
        }
    }
}

/// One direction's enabled checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnabledChecksums {
    /// IPv4 header.
    pub ip4: bool,
    /// TCP over IPv4.
    pub tcp4: bool,
    /// UDP over IPv4.
    pub udp4: bool,
    /// TCP over IPv6.
    pub tcp6: bool,
    /// UDP over IPv6.
    pub udp6: bool,
}

/// What the guest enabled through TCP_OFFLOAD_PARAMETERS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnabledOffloads {
    /// Transmit checksums the host computes.
    pub tx: EnabledChecksums,
    /// Receive checksums the host reports.
    pub rx: EnabledChecksums,
    /// LSO v2 over IPv4.
    pub lso_v2_ipv4: bool,
    /// LSO v2 over IPv6.
    pub lso_v2_ipv6: bool,
    /// RSC (either IP version).
    pub rsc: bool,
    /// RSC over IPv4.
    pub rsc_ipv4: bool,
    /// RSC over IPv6.
    pub rsc_ipv6: bool,
}

/// Counters of the offload model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadStats {
    /// TCP_OFFLOAD_HARDWARE_CAPABILITIES queries.
    pub capability_queries: u32,
    /// The NDIS object header (type, revision, size) of the last capability query's input.
    pub query_header: Option<(u8, u8, u16)>,
    /// TCP_OFFLOAD_PARAMETERS accepted.
    pub parameters_set: u32,
    /// Revision and size of the last accepted TCP_OFFLOAD_PARAMETERS.
    pub parameters_header: Option<(u8, u16)>,
    /// Transmitted frames whose TCP/UDP checksum the host computed (checksum PPI).
    pub tx_checksummed: u64,
    /// Of those, frames whose checksum field did not hold the pseudo-header sum.
    pub tx_bad_preloads: u64,
    /// Frames leaving the host with a wrong IPv4, TCP or UDP checksum. Must stay 0.
    pub tx_bad_checksums: u64,
    /// Frames whose checksums were verified on the way out.
    pub tx_verified: u64,
    /// LSO v2 sends segmented.
    pub tx_lso_sends: u64,
    /// Segments made from them.
    pub tx_lso_segments: u64,
    /// Received frames reported with a good checksum.
    pub rx_reported_good: u64,
    /// Received frames reported with a bad checksum.
    pub rx_reported_bad: u64,
}

/// The offload state of one mock NIC.
#[derive(Debug, Default)]
pub(super) struct OffloadState {
    pub(super) config: OffloadHostConfig,
    pub(super) enabled: EnabledOffloads,
    pub(super) stats: OffloadStats,
    /// Verify every transmitted IP frame (off for benchmarks).
    pub(super) verify: bool,
    /// Received TCP/UDP frames whose checksum is corrupted before the host checks it.
    pub(super) corrupt_rx: u32,
    /// Verdict bits sent instead of the real ones.
    pub(super) forced_rx_bits: Option<u32>,
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

fn get32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// RNDIS status for an information buffer the host does not like (NDIS INVALID_DATA).
pub(super) const STATUS_INVALID_DATA: u32 = 0xC001_0015;
const STATUS_FAILURE: u32 = 0xC000_0001;

impl OffloadState {
    pub(super) fn new(config: OffloadHostConfig) -> Self {
        Self {
            config,
            verify: true,
            ..Self::default()
        }
    }

    fn caps(&self, nvsp: u32) -> HostOffloadCaps {
        self.config
            .caps
            .unwrap_or_else(|| HostOffloadCaps::hyper_v(nvsp))
    }

    /// The NDIS_OFFLOAD object of `revision` for `caps` (checksum groups masked by `mask`
    /// when reporting the current configuration).
    fn object(caps: &HostOffloadCaps, revision: u8, current: Option<&EnabledOffloads>) -> Vec<u8> {
        let size: u16 = match revision {
            1 => 112,
            2 => 144,
            _ => 156,
        };
        let mut b = vec![0u8; usize::from(size)];
        b[0] = 0xA7;
        b[1] = revision;
        b[2..4].copy_from_slice(&size.to_le_bytes());
        let (mut i4t, mut i4r, mut i6t, mut i6r) =
            (caps.ip4_tx, caps.ip4_rx, caps.ip6_tx, caps.ip6_rx);
        let mut lso = (caps.lso_v2_max_size != 0, caps.lso_v2_max_size != 0);
        let mut rsc = (caps.rsc, caps.rsc);
        if let Some(e) = current {
            let keep = |bits: u32, d: &EnabledChecksums, v6: bool| {
                let (tcp, udp) = if v6 {
                    (d.tcp6, d.udp6)
                } else {
                    (d.tcp4, d.udp4)
                };
                let mut out = bits & (bits::IP_OPTIONS | bits::TCP_OPTIONS);
                if tcp {
                    out |= bits & bits::TCP;
                }
                if udp {
                    out |= bits & bits::UDP;
                }
                if !v6 && d.ip4 {
                    out |= bits & bits::IP_HEADER;
                }
                out
            };
            i4t = keep(i4t, &e.tx, false);
            i4r = keep(i4r, &e.rx, false);
            i6t = keep(i6t, &e.tx, true);
            i6r = keep(i6r, &e.rx, true);
            lso = (lso.0 && e.lso_v2_ipv4, lso.1 && e.lso_v2_ipv6);
            rsc = (rsc.0 && e.rsc_ipv4, rsc.1 && e.rsc_ipv6);
        }
        let encap = |on: bool| if on { 2 } else { 0 };
        for (i, v) in [
            encap(true),
            i4t,
            encap(true),
            i4r,
            encap(true),
            i6t,
            encap(true),
            i6r,
        ]
        .into_iter()
        .enumerate()
        {
            b[4 + 4 * i..8 + 4 * i].copy_from_slice(&le32(v));
        }
        let (max, segs) = (caps.lso_v2_max_size, caps.lso_v2_min_segments);
        let lso_words = [
            encap(lso.0),
            if lso.0 { max } else { 0 },
            if lso.0 { segs } else { 0 },
            encap(lso.1),
            if lso.1 { max } else { 0 },
            if lso.1 { segs } else { 0 },
            if lso.1 { caps.lso_v2_ip6_opts } else { 0 },
        ];
        for (i, v) in lso_words.into_iter().enumerate() {
            b[80 + 4 * i..84 + 4 * i].copy_from_slice(&le32(v));
        }
        if revision >= 3 {
            b[144] = u8::from(rsc.0);
            b[145] = u8::from(rsc.1);
        }
        b
    }

    /// The answer to a QUERY of an offload OID (`input`: the query's information buffer):
    /// `Err(status)` or the information buffer.
    pub(super) fn query(&mut self, oid: u32, input: &[u8], nvsp: u32) -> Result<Vec<u8>, u32> {
        if oid == 0xFC01_020D {
            self.stats.capability_queries += 1;
            self.stats.query_header = (input.len() >= 4)
                .then(|| (input[0], input[1], u16::from_le_bytes([input[2], input[3]])));
        }
        let caps = self.caps(nvsp);
        let by_version = if nvsp >= 0x5_0000 {
            3
        } else if nvsp >= 0x4_0000 {
            2
        } else {
            1
        };
        let revision = match &self.config.reply {
            CapsReply::NotSupported => return Err(0xC000_00BB),
            CapsReply::Raw(b) if oid == 0xFC01_020D => return Ok(b.clone()),
            CapsReply::Raw(_) | CapsReply::ByVersion => by_version,
            CapsReply::Revision3 => 3,
        };
        match oid {
            0xFC01_020D => Ok(Self::object(&caps, revision, None)),
            0xFC01_020B => Ok(Self::object(&caps, revision, Some(&self.enabled))),
            _ => Err(0xC000_00BB),
        }
    }

    /// A SET of TCP_OFFLOAD_PARAMETERS: `Ok(current config)` to indicate, or the status and
    /// why (a reason is a guest mistake the tests see as a rejection).
    pub(super) fn set_parameters(
        &mut self,
        info: &[u8],
        nvsp: u32,
    ) -> Result<Vec<u8>, (u32, Option<String>)> {
        if self.config.refuse_parameters {
            return Err((STATUS_FAILURE, None));
        }
        let invalid = |why: String| Err((STATUS_INVALID_DATA, Some(why)));
        if info.len() < 4 || info[0] != 0x80 || info[1] == 0 {
            return invalid(format!(
                "OFFLOAD_PARAMETERS header {:02x?}",
                &info[..info.len().min(4)]
            ));
        }
        let size = usize::from(u16::from_le_bytes([info[2], info[3]]));
        if size < 20 || size > info.len() {
            return invalid(format!(
                "OFFLOAD_PARAMETERS size {size} in {} bytes",
                info.len()
            ));
        }
        let o = &info[..size];
        let field = |at: usize| o.get(at).copied().unwrap_or(0);
        for at in 4..=8 {
            if field(at) > 4 {
                return invalid(format!("checksum value {} at offset {at}", field(at)));
            }
        }
        for at in [9, 11, 12, 22, 23] {
            if field(at) > 2 {
                return invalid(format!("LSO/RSC value {} at offset {at}", field(at)));
            }
        }
        let caps = self.caps(nvsp);
        let mut e = self.enabled;
        let dir = |v: u8, tx: &mut bool, rx: &mut bool| match v {
            1 => (*tx, *rx) = (false, false),
            2 => (*tx, *rx) = (true, false),
            3 => (*tx, *rx) = (false, true),
            4 => (*tx, *rx) = (true, true),
            _ => {}
        };
        dir(field(4), &mut e.tx.ip4, &mut e.rx.ip4);
        dir(field(5), &mut e.tx.tcp4, &mut e.rx.tcp4);
        dir(field(6), &mut e.tx.udp4, &mut e.rx.udp4);
        dir(field(7), &mut e.tx.tcp6, &mut e.rx.tcp6);
        dir(field(8), &mut e.tx.udp6, &mut e.rx.udp6);
        let lso = |v: u8, cur: &mut bool| match v {
            1 => *cur = false,
            2 => *cur = true,
            _ => {}
        };
        lso(field(11), &mut e.lso_v2_ipv4);
        lso(field(12), &mut e.lso_v2_ipv6);
        if info[1] < 3 && (field(22) != 0 || field(23) != 0) {
            return invalid(format!(
                "RSC fields in a revision-{} OFFLOAD_PARAMETERS (revision 3 has them)",
                info[1]
            ));
        }
        lso(field(22), &mut e.rsc_ipv4);
        lso(field(23), &mut e.rsc_ipv6);
        e.rsc = e.rsc_ipv4 || e.rsc_ipv6;
        // Everything enabled must have been advertised.
        let has = |b: u32, want: u32| b & want == want;
        let checks = [
            (
                e.tx.ip4,
                has(caps.ip4_tx, bits::IP_HEADER),
                "IPv4 header tx",
            ),
            (
                e.rx.ip4,
                has(caps.ip4_rx, bits::IP_HEADER),
                "IPv4 header rx",
            ),
            (e.tx.tcp4, has(caps.ip4_tx, bits::TCP), "TCPv4 tx"),
            (e.rx.tcp4, has(caps.ip4_rx, bits::TCP), "TCPv4 rx"),
            (e.tx.udp4, has(caps.ip4_tx, bits::UDP), "UDPv4 tx"),
            (e.rx.udp4, has(caps.ip4_rx, bits::UDP), "UDPv4 rx"),
            (e.tx.tcp6, has(caps.ip6_tx, bits::TCP), "TCPv6 tx"),
            (e.rx.tcp6, has(caps.ip6_rx, bits::TCP), "TCPv6 rx"),
            (e.tx.udp6, has(caps.ip6_tx, bits::UDP), "UDPv6 tx"),
            (e.rx.udp6, has(caps.ip6_rx, bits::UDP), "UDPv6 rx"),
            (
                e.lso_v2_ipv4 || e.lso_v2_ipv6,
                caps.lso_v2_max_size != 0,
                "LSO v2",
            ),
            (e.rsc, caps.rsc, "RSC"),
        ];
        if let Some((_, _, what)) = checks.iter().find(|(on, can, _)| *on && !*can) {
            return Err((
                STATUS_FAILURE,
                Some(format!(
                    "OFFLOAD_PARAMETERS enable {what}, which the host did not advertise"
                )),
            ));
        }
        let udp = e.tx.udp4 || e.rx.udp4 || e.tx.udp6 || e.rx.udp6;
        if udp && nvsp <= 0x4_0000 {
            return Err((
                STATUS_FAILURE,
                Some("UDP checksum offload at NVSP <= 4 (unreliable on those hosts)".into()),
            ));
        }
        self.enabled = e;
        self.stats.parameters_set += 1;
        self.stats.parameters_header = Some((info[1], size as u16));
        Ok(Self::object(&caps, 3, Some(&self.enabled)))
    }
}

impl OffloadState {
    /// The checksum PPI value for a frame about to be delivered: applies a pending corruption
    /// fault to the frame first, then reports what the host finds for the checksums the
    /// guest enabled on receive.
    pub(super) fn receive_bits(&mut self, frame: &mut [u8]) -> u32 {
        self.maybe_corrupt(frame);
        self.verdict_bits(frame)
    }

    /// Applies a pending corruption fault to a TCP/UDP frame about to be delivered.
    pub(super) fn maybe_corrupt(&mut self, frame: &mut [u8]) {
        if self.corrupt_rx > 0
            && let Some(p) = parse(frame)
            && let Some(at) = checksum_at(&p).filter(|_| !p.fragment)
        {
            self.corrupt_rx -= 1;
            frame[at] ^= 0x5A;
            frame[at + 1] ^= 0xA5;
        }
    }

    /// The checksum PPI value for a frame as it is: what the host finds for the checksums
    /// the guest enabled on receive (or the forced bits).
    pub(super) fn verdict_bits(&mut self, frame: &[u8]) -> u32 {
        if let Some(bits) = self.forced_rx_bits {
            return bits;
        }
        let e = self.enabled.rx;
        let (ip, l4) = verdict(frame);
        let v6 = frame.get(12..14) == Some(&[0x86, 0xDD][..]);
        let mut bits = 0;
        if let (Some(ok), true) = (ip, e.ip4) {
            bits |= if ok { 1 << 5 } else { 1 << 2 };
        }
        let (tcp_on, udp_on) = if v6 {
            (e.tcp6, e.udp6)
        } else {
            (e.tcp4, e.udp4)
        };
        match l4 {
            Some((6, ok)) if tcp_on => bits |= if ok { 1 << 3 } else { 1 << 0 },
            Some((17, ok)) if udp_on => bits |= if ok { 1 << 4 } else { 1 << 1 },
            _ => {}
        }
        if bits & 0b111 != 0 {
            self.stats.rx_reported_bad += 1;
        } else if bits != 0 {
            self.stats.rx_reported_good += 1;
        }
        bits
    }
}

/// The PPI elements of a PACKET's PPI area: (type, payload); `None` if an element is
/// malformed.
pub(super) fn ppi_elements(area: &[u8]) -> Option<Vec<(u32, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < area.len() {
        let size = get32(area, at) as usize;
        let kind = get32(area, at + 4);
        let off = get32(area, at + 8) as usize;
        if at + 12 > area.len() || size < 12 || size > area.len() - at || off < 12 || off > size {
            return None;
        }
        out.push((kind, &area[at + off..at + size]));
        at += size;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
