//! Task offloads (devices §2.13–2.14, §7.1 step 8): the host's hardware capabilities
//! ([`parse_offload`]), what the guest enables from them ([`negotiate`]), the transmit
//! checksum preparation of a frame ([`prepare_tx_checksum`]) and the receive checksum result
//! ([`RxChecksum`], [`rx_checksum_of`]), the checks and header rewrite of an LSO v2 send
//! ([`lso_plan`], [`prepare_lso_headers`]), and the reassembly of coalesced receive frames
//! ([`rsc`]). Pure and bounds-checked, safe on any host bytes.
//!
//! Transmit convention: for a frame whose TCP/UDP checksum the host computes, the guest
//! preloads the checksum field with the one's complement sum of the pseudo-header
//! **including** the TCP/UDP length, not complemented ([`frame::pseudo_header_sum`]). That is
//! what Windows' TCP/IP transport hands an NDIS miniport for checksum offload ("Offloading
//! checksum tasks", NDIS docs) and what Linux (CHECKSUM_PARTIAL), FreeBSD and DPDK leave
//! there for Hyper-V's netvsc; a host NIC sums the segment on top of it. (LSO differs: the
//! sum is taken without the length.)

pub mod frame;
pub mod rsc;

use zerocopy::FromBytes;

use crate::protocol::{
    ENCAPSULATION_802_3, NdisObjectHeader, NdisOffload, NdisOffloadParameters, NvspVersion,
    OFFLOAD_PARAMETERS_SIZE_REV2, OFFLOAD_PARAMETERS_SIZE_REV3, PPI_CHECKSUM, csum_cap, csum_rx,
    csum_tx, lso_cap, lso_param, lso_tx, ndis_object, offload_param,
};
use crate::rndis::ppis;
pub use frame::{FrameError, IpVersion, L4, L4Proto, l4_of};

/// Why the host's NDIS_OFFLOAD object was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// Fewer bytes than a revision-1 object.
    Truncated(usize),
    /// Not an NDIS_OFFLOAD object (header type).
    ObjectType(u8),
    /// Revision 0.
    Revision(u8),
    /// The header's size is below the revision-1 size or beyond the bytes given.
    Size {
        /// The header's size.
        size: u16,
        /// Bytes given.
        len: usize,
    },
}

impl core::fmt::Display for OffloadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated(n) => write!(f, "NDIS_OFFLOAD of {n} bytes"),
            Self::ObjectType(t) => write!(f, "NDIS object type {t:#x} is not OFFLOAD"),
            Self::Revision(r) => write!(f, "NDIS_OFFLOAD revision {r}"),
            Self::Size { size, len } => write!(f, "NDIS_OFFLOAD size {size} in {len} bytes"),
        }
    }
}

impl core::error::Error for OffloadError {}

/// LSO v2 limits for one IP version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LsoV2 {
    /// Largest payload of one LSO packet.
    pub max_size: u32,
    /// Fewest segments the host wants per LSO packet.
    pub min_segments: u32,
}

/// The host's offload capabilities as parsed from NDIS_OFFLOAD. Fields the object's revision
/// or size does not cover are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OffloadCaps {
    /// The object's revision.
    pub revision: u8,
    /// The object's size.
    pub size: u16,
    /// IPv4 transmit checksum bits ([`csum_cap`]).
    pub ip4_tx: u32,
    /// IPv4 receive checksum bits.
    pub ip4_rx: u32,
    /// IPv6 transmit checksum bits.
    pub ip6_tx: u32,
    /// IPv6 receive checksum bits.
    pub ip6_rx: u32,
    /// LSO v2 over IPv4, when its encapsulation includes 802.3 and its size is non-zero.
    pub lso_v2_ipv4: Option<LsoV2>,
    /// LSO v2 over IPv6, likewise.
    pub lso_v2_ipv6: Option<LsoV2>,
    /// LSO v2 IPv6 option bits ([`lso_cap`]).
    pub lso_v2_ipv6_opts: u32,
    /// RSC over IPv4 (revision 3).
    pub rsc_ipv4: bool,
    /// RSC over IPv6 (revision 3).
    pub rsc_ipv6: bool,
}

/// Parses the NDIS_OFFLOAD the host answered to TCP_OFFLOAD_HARDWARE_CAPABILITIES: type
/// 0xA7, revision ≥ 1, size ≥ 112 and within `bytes` (devices §2.13.1). Groups beyond the
/// object's size or revision read as zero; bytes after the object are ignored.
pub fn parse_offload(bytes: &[u8]) -> Result<OffloadCaps, OffloadError> {
    let min = usize::from(crate::protocol::NDIS_OFFLOAD_SIZE_REV1);
    if bytes.len() < min {
        return Err(OffloadError::Truncated(bytes.len()));
    }
    let (h, _) = NdisObjectHeader::read_from_prefix(bytes)
        .map_err(|_| OffloadError::Truncated(bytes.len()))?;
    if h.object_type != ndis_object::OFFLOAD {
        return Err(OffloadError::ObjectType(h.object_type));
    }
    if h.revision == 0 {
        return Err(OffloadError::Revision(0));
    }
    let size = h.size.get();
    if usize::from(size) < min || usize::from(size) > bytes.len() {
        return Err(OffloadError::Size {
            size,
            len: bytes.len(),
        });
    }
    // The object as far as it goes, zeros after.
    let mut whole = [0u8; size_of::<NdisOffload>()];
    let n = usize::from(size).min(whole.len());
    whole[..n].copy_from_slice(&bytes[..n]);
    let o = NdisOffload::read_from_bytes(&whole).map_err(|_| OffloadError::Truncated(n))?;
    let c = &o.checksum;
    let l = &o.lso_v2;
    let lso = |encap: u32, max: u32, min_seg: u32| {
        (encap & ENCAPSULATION_802_3 != 0 && max != 0).then_some(LsoV2 {
            max_size: max,
            min_segments: min_seg,
        })
    };
    let rev3 = h.revision >= 3;
    Ok(OffloadCaps {
        revision: h.revision,
        size,
        ip4_tx: c.ip4_tx_csum.get(),
        ip4_rx: c.ip4_rx_csum.get(),
        ip6_tx: c.ip6_tx_csum.get(),
        ip6_rx: c.ip6_rx_csum.get(),
        lso_v2_ipv4: lso(
            l.ip4_encap.get(),
            l.ip4_max_size.get(),
            l.ip4_min_seg_count.get(),
        ),
        lso_v2_ipv6: lso(
            l.ip6_encap.get(),
            l.ip6_max_size.get(),
            l.ip6_min_seg_count.get(),
        ),
        lso_v2_ipv6_opts: l.ip6_opts.get(),
        rsc_ipv4: rev3 && o.rsc_ip4 != 0,
        rsc_ipv6: rev3 && o.rsc_ip6 != 0,
    })
}

/// Which checksums one direction offloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ChecksumSet {
    /// IPv4 header checksum (receive only in this driver).
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

impl ChecksumSet {
    /// Whether nothing is offloaded.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the TCP/UDP checksum of `proto` over `ip` is offloaded.
    pub fn covers(&self, ip: IpVersion, proto: L4Proto) -> bool {
        match (ip, proto) {
            (IpVersion::V4, L4Proto::Tcp) => self.tcp4,
            (IpVersion::V4, L4Proto::Udp) => self.udp4,
            (IpVersion::V6, L4Proto::Tcp) => self.tcp6,
            (IpVersion::V6, L4Proto::Udp) => self.udp6,
        }
    }
}

/// The offloads in effect (the host accepted the OFFLOAD_PARAMETERS that asked for them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Offloads {
    /// Checksums the host computes on transmit.
    pub tx: ChecksumSet,
    /// Checksums the host validates on receive (results in the checksum PPI).
    pub rx: ChecksumSet,
    /// The host's transmit checksum handles IPv4 options (otherwise such frames are
    /// checksummed in software).
    pub tx_ip4_options: bool,
    /// LSO v2 over IPv4 enabled, with the host's limits.
    pub lso_v2_ipv4: Option<LsoV2>,
    /// LSO v2 over IPv6 enabled.
    pub lso_v2_ipv6: Option<LsoV2>,
    /// RSC offered by the host (both IP versions, revision-3 capabilities).
    pub rsc_offered: bool,
    /// RSC enabled for both IP versions: the host may deliver a coalesced TCP segment of up
    /// to [`rsc::RSC_MAX_FRAME`] bytes in fragments, which the NIC reassembles.
    pub rsc: bool,
}

impl Offloads {
    /// No offloads: every checksum computed and checked by the guest.
    pub const NONE: Self = Self {
        tx: ChecksumSet {
            ip4: false,
            tcp4: false,
            udp4: false,
            tcp6: false,
            udp6: false,
        },
        rx: ChecksumSet {
            ip4: false,
            tcp4: false,
            udp4: false,
            tcp6: false,
            udp6: false,
        },
        tx_ip4_options: false,
        lso_v2_ipv4: None,
        lso_v2_ipv6: None,
        rsc_offered: false,
        rsc: false,
    };
}

/// The OFFLOAD_PARAMETERS to set and the offloads they turn on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiation {
    /// The object (its header gives revision and size).
    pub params: NdisOffloadParameters,
    /// What is in effect once the host accepted `params`.
    pub offloads: Offloads,
}

impl Negotiation {
    /// The bytes to send: the object cut to its header's size.
    pub fn bytes(&self) -> &[u8] {
        use zerocopy::IntoBytes;
        let b = self.params.as_bytes();
        &b[..usize::from(self.params.header.size.get()).min(b.len())]
    }
}

fn has(bits: u32, want: u32) -> bool {
    bits & want == want
}

fn param(tx: bool, rx: bool) -> u8 {
    match (tx, rx) {
        (true, true) => offload_param::TX_RX,
        (true, false) => offload_param::TX,
        (false, true) => offload_param::RX,
        (false, false) => offload_param::DISABLED,
    }
}

/// Chooses the offloads to enable from the host's capabilities (Linux's policy,
/// `rndis_netdev_set_hwcaps`, where it is stricter than FreeBSD's):
///
/// - TCP over IPv4 when the host has TCP and TCP options (0x10 | 0x4); over IPv6 when it has
///   TCP, TCP options and extension headers (0x10 | 0x4 | 0x1) — per direction.
/// - UDP over IPv4 / IPv6 when the host has UDP (0x40), only from NVSP 5 (NDIS 6.30): Linux
///   and FreeBSD keep UDP off on older hosts, whose UDP checksum offload is unreliable.
/// - IPv4 header checksum: receive validation only (0x100 in the receive bits); the guest
///   computes the 20-byte header on transmit (Linux leaves it off in both directions).
/// - LSO v2 over IPv4 when TCPv4 transmit is on and the LSO v2 IPv4 encapsulation has 802.3;
///   over IPv6 likewise, with extension headers and TCP options in `ip6_opts` (used by
///   `Nic::send_lso`, see [`lso_plan`]).
/// - RSC left disabled, explicitly when the host offers it (revision-3 parameters only);
///   [`negotiate_rsc`] enables it.
///
/// Header revision: 2 with 22 bytes up to NVSP 4 (NDIS 6.1 announced), 3 with 28 bytes from
/// NVSP 5 (NDIS 6.30) — the pair FreeBSD, OpenBSD and DPDK send. Linux sends revision 3
/// throughout and only cuts the size to 22 for NVSP ≤ 4; a revision-2 object of 22 bytes is
/// the one consistent with NDIS 6.1, and OpenVMM accepts any revision ≥ 1 with size ≥ 20.
pub fn negotiate(caps: &OffloadCaps, version: NvspVersion) -> Negotiation {
    negotiate_rsc(caps, version, false)
}

/// [`negotiate`], with RSC enabled for both IP versions when `rsc` is asked for and the host
/// offers it for both (Linux's rule, `rndis_netdev_set_hwcaps`: `rsc.ip4 && rsc.ip6`; the
/// parameters' RSC fields exist only in revision 3, i.e. from NVSP 5). Asked for and not
/// offered, or offered and not asked for: RSC stays off, explicitly so when offered.
pub fn negotiate_rsc(caps: &OffloadCaps, version: NvspVersion, rsc: bool) -> Negotiation {
    use csum_cap::{IP_HEADER, IP_OPTIONS, TCP, TCP_OPTIONS, UDP};
    let udp_ok = version >= NvspVersion::V5;
    let tx = ChecksumSet {
        ip4: false,
        tcp4: has(caps.ip4_tx, TCP | TCP_OPTIONS),
        udp4: udp_ok && has(caps.ip4_tx, UDP),
        tcp6: has(caps.ip6_tx, TCP | TCP_OPTIONS | IP_OPTIONS),
        udp6: udp_ok && has(caps.ip6_tx, UDP),
    };
    let rx = ChecksumSet {
        ip4: has(caps.ip4_rx, IP_HEADER),
        tcp4: has(caps.ip4_rx, TCP | TCP_OPTIONS),
        udp4: udp_ok && has(caps.ip4_rx, UDP),
        tcp6: has(caps.ip6_rx, TCP | TCP_OPTIONS | IP_OPTIONS),
        udp6: udp_ok && has(caps.ip6_rx, UDP),
    };
    let lso_v2_ipv4 = caps.lso_v2_ipv4.filter(|_| tx.tcp4);
    let lso_v2_ipv6 = caps.lso_v2_ipv6.filter(|_| {
        tx.tcp6
            && has(
                caps.lso_v2_ipv6_opts,
                lso_cap::IP6_EXTENSION_HEADERS | lso_cap::TCP_OPTIONS,
            )
    });
    let rev3 = version >= NvspVersion::V5;
    let rsc_offered = caps.rsc_ipv4 && caps.rsc_ipv6;
    let lso = |on: bool| {
        if on {
            lso_param::ENABLED
        } else {
            lso_param::DISABLED
        }
    };
    let mut params = NdisOffloadParameters {
        header: NdisObjectHeader {
            object_type: ndis_object::DEFAULT,
            revision: if rev3 { 3 } else { 2 },
            size: if rev3 {
                OFFLOAD_PARAMETERS_SIZE_REV3
            } else {
                OFFLOAD_PARAMETERS_SIZE_REV2
            }
            .into(),
        },
        ipv4_checksum: param(false, rx.ip4),
        tcp_ipv4_checksum: param(tx.tcp4, rx.tcp4),
        tcp_ipv6_checksum: param(tx.tcp6, rx.tcp6),
        lso_v2_ipv4: lso(lso_v2_ipv4.is_some()),
        lso_v2_ipv6: lso(lso_v2_ipv6.is_some()),
        ..Default::default()
    };
    if udp_ok {
        // Left "no change" on older hosts, as Linux and FreeBSD do.
        params.udp_ipv4_checksum = param(tx.udp4, rx.udp4);
        params.udp_ipv6_checksum = param(tx.udp6, rx.udp6);
    }
    let rsc = rsc && rev3 && rsc_offered;
    if rev3 && rsc_offered {
        params.rsc_ipv4 = lso(rsc);
        params.rsc_ipv6 = lso(rsc);
    }
    Negotiation {
        params,
        offloads: Offloads {
            tx,
            rx,
            tx_ip4_options: has(caps.ip4_tx, IP_OPTIONS),
            lso_v2_ipv4,
            lso_v2_ipv6,
            rsc_offered,
            rsc,
        },
    }
}

/// What [`prepare_tx_checksum`] did to a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxChecksum {
    /// The host computes the checksum: the pseudo-header sum is preloaded, send this
    /// checksum PPI value with the frame.
    Offload(u32),
    /// Computed in software (the host does not offload this IP version / protocol / option).
    Software,
    /// No TCP/UDP checksum to compute (not TCP/UDP over IP, a fragment, IPv6 extension
    /// headers, inconsistent lengths): the frame is left as it is.
    NotApplicable,
}

/// Prepares the TCP/UDP checksum of a frame about to be sent: preloads the pseudo-header sum
/// and returns the checksum PPI value when `tx` offloads it, or computes it in software
/// otherwise. The IPv4 header checksum is the caller's.
pub fn prepare_tx_checksum(frame: &mut [u8], tx: &Offloads) -> TxChecksum {
    let Ok(l4) = l4_of(frame) else {
        return TxChecksum::NotApplicable;
    };
    let options_ok = !l4.ip_options || tx.tx_ip4_options;
    if !tx.tx.covers(l4.ip, l4.proto) || !options_ok {
        frame::write_l4_checksum(frame, &l4);
        return TxChecksum::Software;
    }
    frame::write_pseudo_header_sum(frame, &l4);
    let ip = match l4.ip {
        IpVersion::V4 => csum_tx::IS_IPV4,
        IpVersion::V6 => csum_tx::IS_IPV6,
    };
    let proto = match l4.proto {
        L4Proto::Tcp => csum_tx::TCP_CHECKSUM,
        L4Proto::Udp => csum_tx::UDP_CHECKSUM,
    };
    // l4.offset ≤ 14 + 60: fits the 10-bit field.
    let offset = (l4.offset as u32 & csum_tx::HEADER_OFFSET_MASK) << csum_tx::HEADER_OFFSET_SHIFT;
    TxChecksum::Offload(ip | proto | offset)
}

/// Largest TCP payload this driver hands to the host in one LSO v2 send, whatever larger
/// size the host advertises (its buffer slots are sized for it; Linux caps at 64 KiB too).
pub const LSO_MAX_PAYLOAD: usize = 64000;
/// Largest headers of an LSO frame: Ethernet, IPv4 with options, TCP with options.
pub const LSO_MAX_HEADERS: usize = ETHERNET_HEADER_LEN + 60 + 60;
const ETHERNET_HEADER_LEN: usize = frame::ETHERNET_HEADER;

/// Why a frame cannot go as one LSO v2 send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LsoError {
    /// Not TCP over IP (or a fragment, IPv6 extension headers, inconsistent lengths).
    NotTcp(Option<FrameError>),
    /// The host did not enable LSO v2 for this IP version.
    NotNegotiated,
    /// An MSS of 0, or one whose segments would not fit the MTU.
    Mss(usize),
    /// More payload than the host (or [`LSO_MAX_PAYLOAD`]) takes.
    TooLarge(usize),
    /// Fewer segments than the host's minimum segment count.
    TooFewSegments(usize),
}

impl core::fmt::Display for LsoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotTcp(Some(e)) => write!(f, "LSO needs TCP over IP: {e}"),
            Self::NotTcp(None) => f.write_str("LSO needs TCP over IP"),
            Self::NotNegotiated => f.write_str("LSO v2 not enabled for this IP version"),
            Self::Mss(m) => write!(f, "MSS {m} does not fit the MTU"),
            Self::TooLarge(n) => write!(f, "{n} bytes of payload exceed the LSO size"),
            Self::TooFewSegments(n) => write!(f, "{n} segments are below the host's minimum"),
        }
    }
}

impl core::error::Error for LsoError {}

/// How one frame goes as an LSO v2 send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LsoPlan {
    /// Where its headers are.
    pub l4: L4,
    /// Bytes of Ethernet, IP and TCP headers (the prefix every segment repeats).
    pub header_len: usize,
    /// Segments the host makes.
    pub segments: usize,
    /// The LSO v2 PPI value (devices §2.14).
    pub ppi: u32,
}

/// Checks a frame holding one large TCP segment for LSO v2 with `mss` bytes per segment
/// (every segment, headers included, within `max_frame`) under `offloads`.
pub fn lso_plan(
    frame: &[u8],
    mss: usize,
    max_frame: usize,
    offloads: &Offloads,
) -> Result<LsoPlan, LsoError> {
    let l4 = l4_of(frame).map_err(|e| LsoError::NotTcp(Some(e)))?;
    if l4.proto != L4Proto::Tcp {
        return Err(LsoError::NotTcp(None));
    }
    let limits = match l4.ip {
        IpVersion::V4 => offloads.lso_v2_ipv4,
        IpVersion::V6 => offloads.lso_v2_ipv6,
    }
    .ok_or(LsoError::NotNegotiated)?;
    // l4_of checked that the data offset lies inside the segment.
    let header_len = l4.offset + usize::from(frame[l4.offset + 12] >> 4) * 4;
    let payload = l4.offset + l4.len - header_len;
    if mss == 0 || mss > lso_tx::MSS_MASK as usize || header_len + mss > max_frame {
        return Err(LsoError::Mss(mss));
    }
    if payload > (limits.max_size as usize).min(LSO_MAX_PAYLOAD) || header_len > LSO_MAX_HEADERS {
        return Err(LsoError::TooLarge(payload));
    }
    let segments = payload.div_ceil(mss);
    if segments < (limits.min_segments as usize).max(1) {
        return Err(LsoError::TooFewSegments(segments));
    }
    let mut ppi = mss as u32
        | (l4.offset as u32 & lso_tx::HEADER_OFFSET_MASK) << lso_tx::HEADER_OFFSET_SHIFT
        | lso_tx::TYPE_V2;
    if l4.ip == IpVersion::V6 {
        ppi |= lso_tx::IPV6;
    }
    Ok(LsoPlan {
        l4,
        header_len,
        segments,
        ppi,
    })
}

/// Rewrites the headers of an LSO frame (`headers` = its first `plan.header_len` bytes) as
/// the host expects them (devices §2.14, Linux's duties): IPv4 total length and header
/// checksum 0, IPv6 payload length 0, the TCP checksum preloaded with the pseudo-header sum
/// without the length (the host adds each segment's).
pub fn prepare_lso_headers(headers: &mut [u8], plan: &LsoPlan) {
    let l3 = plan.l4.l3_offset;
    let zero = match plan.l4.ip {
        IpVersion::V4 => [l3 + 2..l3 + 4, l3 + 10..l3 + 12],
        IpVersion::V6 => [l3 + 4..l3 + 6, l3 + 4..l3 + 6],
    };
    for r in zero {
        if let Some(b) = headers.get_mut(r) {
            b.fill(0);
        }
    }
    let sum = frame::pseudo_header_sum_of_len(headers, &plan.l4, 0);
    let at = plan.l4.checksum_offset();
    if let Some(b) = headers.get_mut(at..at + 2) {
        b.copy_from_slice(&sum.to_be_bytes());
    }
}

/// One checksum's result on receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CsumStatus {
    /// The host did not check it (not offloaded, not this protocol, or no PPI).
    #[default]
    NotChecked,
    /// The host validated it.
    Good,
    /// The host found it wrong.
    Bad,
}

/// The host's checksum verdict on a received frame (checksum PPI, devices §2.14), per
/// layer. Reported by the NIC only for what the guest enabled on receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RxChecksum {
    /// IPv4 header checksum.
    pub ip: CsumStatus,
    /// TCP checksum.
    pub tcp: CsumStatus,
    /// UDP checksum.
    pub udp: CsumStatus,
}

impl RxChecksum {
    /// Nothing checked.
    pub const NOT_CHECKED: Self = Self {
        ip: CsumStatus::NotChecked,
        tcp: CsumStatus::NotChecked,
        udp: CsumStatus::NotChecked,
    };

    /// Decodes the receive bits of a checksum PPI. A layer reported both failed and
    /// succeeded counts as failed.
    pub fn from_bits(bits: u32) -> Self {
        let status = |failed: u32, ok: u32| {
            if bits & failed != 0 {
                CsumStatus::Bad
            } else if bits & ok != 0 {
                CsumStatus::Good
            } else {
                CsumStatus::NotChecked
            }
        };
        Self {
            ip: status(csum_rx::IP_FAILED, csum_rx::IP_SUCCEEDED),
            tcp: status(csum_rx::TCP_FAILED, csum_rx::TCP_SUCCEEDED),
            udp: status(csum_rx::UDP_FAILED, csum_rx::UDP_SUCCEEDED),
        }
    }

    /// Whether any layer was found wrong.
    pub fn is_bad(&self) -> bool {
        self.ip == CsumStatus::Bad || self.tcp == CsumStatus::Bad || self.udp == CsumStatus::Bad
    }

    /// Keeps only the verdicts the guest enabled on receive for the frame's IP version
    /// (a host's verdict on something not enabled is not trusted).
    pub fn masked(self, frame: &[u8], rx: &ChecksumSet) -> Self {
        let keep = |on: bool, s: CsumStatus| if on { s } else { CsumStatus::NotChecked };
        match frame::ethertype(frame) {
            Some(frame::ETHERTYPE_IPV4) => Self {
                ip: keep(rx.ip4, self.ip),
                tcp: keep(rx.tcp4, self.tcp),
                udp: keep(rx.udp4, self.udp),
            },
            Some(frame::ETHERTYPE_IPV6) => Self {
                ip: CsumStatus::NotChecked,
                tcp: keep(rx.tcp6, self.tcp),
                udp: keep(rx.udp6, self.udp),
            },
            _ => Self::NOT_CHECKED,
        }
    }
}

/// Decodes the checksum verdict from a received PACKET's PPI area: the receive bits of every
/// checksum PPI (type 0, a payload of at least 4 bytes) are combined; other PPIs are skipped
/// and a malformed element ends the walk. No checksum PPI: [`RxChecksum::NOT_CHECKED`].
pub fn rx_checksum_of(ppi_area: &[u8]) -> RxChecksum {
    let mut bits = 0u32;
    for p in ppis(ppi_area) {
        let Ok(p) = p else { break };
        if p.ppi_type == PPI_CHECKSUM
            && let Some(v) = p.payload.get(..4)
        {
            bits |= u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        }
    }
    RxChecksum::from_bits(bits)
}

#[cfg(test)]
mod tests;
