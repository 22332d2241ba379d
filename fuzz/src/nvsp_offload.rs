//! The network host's offload and multi-queue side (devices §2.12–2.15, §7.1 step 8) for the
//! netvsc target: it answers TCP_OFFLOAD_HARDWARE_CAPABILITIES with an NDIS_OFFLOAD it built
//! (or arbitrary bytes), checks the OFFLOAD_PARAMETERS the guest sets (never an offload the
//! host lacks, the object of the NVSP version), fills in offloaded checksums and cuts LSO v2
//! sends as a host NIC does, comparing each frame with what the guest accepted; it answers
//! the RSS capabilities, grants SUBCHANNEL requests and offers the sub-channels, checks the
//! RSS parameters (hash types, a table naming only open queues, the configured key), and
//! writes SEND_INDIRECTION_TABLE messages.

use crate::net::{self, Headers, be16, fold, le32, sum};
use crate::{Input, trace};

/// What the host expects of a frame the guest accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// These bytes, once the host filled in an offloaded checksum.
    Frame(Vec<u8>),
    /// An LSO v2 send of `frame` (up to its IP datagram's end) in segments of `mss`.
    Lso {
        /// The frame as the caller gave it.
        frame: Vec<u8>,
        /// The MSS asked for.
        mss: usize,
    },
}

/// `frame` with its TCP/UDP checksum right (a UDP 0 sent as 0xFFFF), when it has one the
/// model finds; unchanged otherwise: what a checksum-API send must put on the wire.
pub fn with_checksum(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    if let Some(h) = net::headers(&f) {
        let at = h.checksum_at();
        f[at..at + 2].fill(0);
        let mut c = !fold(net::pseudo(&f, &h, h.len) + sum(&f[h.l4..h.l4 + h.len]));
        if c == 0 && !h.tcp {
            c = 0xFFFF;
        }
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    f
}

/// The host's capabilities as it answers them (NDIS_OFFLOAD, devices §2.13.1).
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    /// Object revision (1..=3; the size follows: 112, 144, 156).
    pub revision: u8,
    /// Checksum bits: IPv4 transmit, IPv4 receive, IPv6 transmit, IPv6 receive.
    pub csum: [u32; 4],
    /// LSO v2 (maximum size, minimum segments) per IP version; size 0 = none.
    pub lso: [(u32, u32); 2],
    /// LSO v2 IPv6 option bits.
    pub ip6_opts: u32,
}

impl Caps {
    /// OpenVMM's answer (devices §2.13.1).
    pub const OPENVMM: Self = Self {
        revision: 3,
        csum: [0x155, 0x155, 0x55, 0x55],
        lso: [(62780, 2), (62780, 2)],
        ip6_opts: 5,
    };

    /// From the input: OpenVMM's, or bits and limits of its choosing.
    pub fn from_input(inp: &mut Input<'_>) -> Self {
        if inp.bool() {
            return Self::OPENVMM;
        }
        let mut bits = || u32::from(inp.u16()) & 0x155;
        let csum = [bits(), bits(), bits(), bits()];
        let mut lso = || {
            let max = inp.pick(&[0, 62780, 64000, 3000], |i| i.u32() % 70000);
            (max, inp.below(4) as u32)
        };
        let lso = [lso(), lso()];
        Self {
            revision: 1 + inp.below(3) as u8,
            csum,
            lso,
            ip6_opts: inp.below(8) as u32,
        }
    }

    /// The NDIS_OFFLOAD object.
    pub fn bytes(&self) -> Vec<u8> {
        let size = [112usize, 144, 156][usize::from(self.revision.clamp(1, 3)) - 1];
        let mut b = vec![0u8; size];
        b[..4].copy_from_slice(&[0xA7, self.revision, size as u8, 0]);
        let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        for (i, &c) in self.csum.iter().enumerate() {
            put(4 + 8 * i, 2);
            put(8 + 8 * i, c);
        }
        for (i, &(max, min)) in self.lso.iter().enumerate() {
            put(80 + 12 * i, if max > 0 { 2 } else { 0 });
            put(84 + 12 * i, max);
            put(88 + 12 * i, min);
        }
        put(104, self.ip6_opts);
        b
    }
}

fn has(bits: u32, want: u32) -> bool {
    bits & want == want
}

/// The host's offload and multi-queue state.
#[derive(Clone, Debug, Default)]
pub struct OffloadHost {
    /// Capabilities answered (`None`: the OID is not supported).
    pub caps: Option<Caps>,
    /// Arbitrary bytes answered instead of the capabilities.
    pub garbage: Option<Vec<u8>>,
    /// Transmit checksums the guest enabled: TCP/IPv4, UDP/IPv4, TCP/IPv6, UDP/IPv6.
    pub tx: [bool; 4],
    /// LSO v2 the guest enabled: IPv4, IPv6.
    pub lso: [bool; 2],
    /// Receive checksums the guest enabled: IPv4 header, TCP/IPv4, UDP/IPv4, TCP/IPv6,
    /// UDP/IPv6.
    pub rx: [bool; 5],
    /// The capabilities may have reached the guest other than built (a hostile reply).
    pub caps_unsure: bool,
    /// What the guest enabled is not known (a parameters SET answered with hostility, or
    /// not read as the guest wrote it): enablement is not checked.
    pub unsure: bool,
    /// Receive queues answered to the RSS capabilities query (`None`: not supported).
    pub rss_queues: Option<u32>,
    /// Most sub-channels granted.
    pub max_grant: u32,
    /// Sub-channels offered so far (indices 1..=offered, relids 2..=offered + 1).
    pub offered: u32,
    /// The RSS key the guest is configured with.
    pub key: Vec<u8>,
    /// The guest's RSS parameters were taken (and not disabled since).
    pub rss_on: bool,
    /// LSO sends and checksums the host filled in (for the target's coverage notes).
    pub filled: u64,
}

/// The relid of sub-channel `index` (0: the primary).
pub fn relid_of(index: usize) -> u32 {
    1 + index as u32
}

impl OffloadHost {
    /// The information buffer answered to QUERY `oid`, `None` if this module does not know
    /// it, `Some(Err(status))` to refuse.
    pub fn query(&self, oid: u32) -> Option<Result<Vec<u8>, u32>> {
        const NOT_SUPPORTED: u32 = 0xC000_00BB;
        match oid {
            0xFC01_020D => Some(match (&self.garbage, &self.caps) {
                (Some(g), _) => Ok(g.clone()),
                (None, Some(c)) => Ok(c.bytes()),
                (None, None) => Err(NOT_SUPPORTED),
            }),
            0x0001_0203 => Some(match self.rss_queues {
                Some(q) => {
                    let mut b = vec![0x88, 2, 18, 0];
                    for w in [0x1 | 0x100 | 0x200 | 0x800 | 0x1000, q, q] {
                        b.extend_from_slice(&w.to_le_bytes());
                    }
                    b.extend_from_slice(&128u16.to_le_bytes());
                    Ok(b)
                }
                None => Err(NOT_SUPPORTED),
            }),
            _ => None,
        }
    }

    /// Checks and records TCP_OFFLOAD_PARAMETERS from a guest of NVSP `version` (`trusted`:
    /// the bytes are the guest's; `hostile`: the host's reply is not a plain success, so the
    /// guest may or may not have enabled them).
    pub fn set_offload_parameters(&mut self, p: &[u8], version: u32, trusted: bool, hostile: bool) {
        if !trusted || hostile {
            self.unsure = true;
            return;
        }
        let (rev, size) = if version >= 0x5_0000 {
            (3, 28)
        } else {
            (2, 22)
        };
        assert_eq!(
            (
                p.first(),
                p.get(1),
                be16(p, 2).map(u16::swap_bytes),
                p.len()
            ),
            (Some(&0x80), Some(&rev), Some(size as u16), size),
            "OFFLOAD_PARAMETERS header at NVSP {version:#x}"
        );
        let tx = |b: u8| b == 2 || b == 4;
        let rx = |b: u8| b == 3 || b == 4;
        assert!(p[4] == 1 || p[4] == 3, "IPv4 header checksum {}", p[4]);
        self.rx = [rx(p[4]), rx(p[5]), rx(p[6]), rx(p[7]), rx(p[8])];
        self.tx = [tx(p[5]), tx(p[6]), tx(p[7]), tx(p[8])];
        self.lso = [p[11] == 2, p[12] == 2];
        trace!(
            "  host: offloads tx {:?} rx {:?} lso {:?}",
            self.tx, self.rx, self.lso
        );
        let caps = match self.caps {
            Some(c) if self.garbage.is_none() && !self.caps_unsure => c,
            _ => return,
        };
        assert!(
            !self.rx[0] || has(caps.csum[1], 0x100),
            "IPv4 rx without caps"
        );
        let old = version < 0x5_0000;
        assert!(
            !old || (p[6] == 0 && p[8] == 0),
            "UDP offload before NVSP 5"
        );
        // (param byte, IPv4/IPv6 transmit caps, bits it needs)
        let wants = [(5, 0, 0x14), (6, 0, 0x40), (7, 2, 0x15), (8, 2, 0x40)];
        for &(at, cap, need) in &wants {
            assert!(
                !tx(p[at]) || has(caps.csum[cap], need),
                "tx {at} not offered"
            );
            assert!(
                !rx(p[at]) || has(caps.csum[cap + 1], need),
                "rx {at} not offered"
            );
        }
        for (i, at) in [11, 12].into_iter().enumerate() {
            assert!(p[at] == 1 || p[at] == 2, "LSO v2 parameter {}", p[at]);
            let on = self.lso[i];
            assert!(
                !on || (caps.lso[i].0 > 0 && self.tx[2 * i]),
                "LSO v2 over IPv{} without caps or TCP checksum",
                4 + 2 * i
            );
            assert!(
                !on || i == 0 || has(caps.ip6_opts, 5),
                "LSO v2 IPv6 options"
            );
        }
    }

    /// Checks OID_GEN_RECEIVE_SCALE_PARAMETERS against `queues` open channels.
    pub fn set_rss_parameters(&mut self, p: &[u8], queues: usize, exact: bool) {
        if !exact {
            return;
        }
        assert!(
            p.len() >= 40 && p[..4] == [0x89, 2, 40, 0],
            "RSS parameters header"
        );
        let flags = u16::from_le_bytes([p[4], p[5]]);
        if flags & 0x10 != 0 {
            self.rss_on = false;
            return;
        }
        assert_eq!(
            le32(p, 8),
            0x1 | 0x100 | 0x200 | 0x400 | 0x1000,
            "hash types"
        );
        let (tsize, toff) = (usize::from(u16::from_le_bytes([p[12], p[13]])), le32(p, 16));
        let (ksize, koff) = (u16::from_le_bytes([p[20], p[21]]), le32(p, 24) as usize);
        let entries = tsize / 4;
        assert!(entries.is_power_of_two() && entries <= 128 && tsize % 4 == 0);
        assert!(toff >= 40 && koff == toff as usize + tsize && ksize == 40);
        assert_eq!(p.len(), koff + 40, "RSS parameters length");
        for i in 0..entries {
            let q = le32(p, toff as usize + 4 * i) as usize;
            assert!(q < queues, "RSS table slot {i} names queue {q} of {queues}");
        }
        assert_eq!(&p[koff..], &self.key, "RSS key");
        self.rss_on = true;
    }

    /// Checks a frame the guest sent (`frame`, its PPI area `ppi`) against `want`; an
    /// offloaded checksum is filled in first, an LSO send cut into segments.
    pub fn check_sent(&mut self, want: &Expected, frame: &[u8], ppi: &[u8], seen: u64) {
        let mut csum = None;
        let mut lso = None;
        for e in net::ppi_walk(ppi) {
            let (ty, at, len) = e.expect("a PPI the host cannot walk");
            assert!(len >= 4, "PPI of {len} bytes");
            match ty {
                0 => csum = Some(le32(ppi, at)),
                2 => lso = Some(le32(ppi, at)),
                other => panic!("guest sent PPI type {other}"),
            }
        }
        match want {
            Expected::Frame(want) => {
                assert!(lso.is_none(), "LSO PPI on frame {seen}");
                let mut f = frame.to_vec();
                if let Some(v) = csum.filter(|v| v & 0xC != 0) {
                    self.fill(&mut f, v);
                }
                assert!(f == *want, "frame {seen} changed on its way");
            }
            Expected::Lso { frame: orig, mss } => {
                let v = lso.expect("an LSO send without the LSO PPI");
                assert!(csum.is_none(), "checksum PPI on an LSO send");
                self.cut(frame, orig, *mss, v, seen);
            }
        }
    }

    /// A host NIC's checksum offload: sums the segment over the preload, stores the
    /// complement (devices §2.14).
    fn fill(&mut self, f: &mut [u8], v: u32) {
        let h = net::headers(f).expect("checksum offload of a frame without TCP/UDP");
        let (v6, tcp) = (v & 2 != 0, v & 4 != 0);
        assert_eq!(
            (v6, tcp, v & 1 != 0),
            (h.v6, h.tcp, !h.v6),
            "checksum PPI {v:#x}"
        );
        assert!(v & 8 == 0 || !tcp, "TCP and UDP checksum both asked");
        assert_eq!(
            ((v >> 16) & 0x3FF) as usize,
            h.l4,
            "checksum PPI header offset"
        );
        let i = usize::from(v6) * 2 + usize::from(!tcp);
        if !self.unsure {
            assert!(self.tx[i], "checksum offload {v:#x} not enabled");
            if let (Some(c), false) = (self.caps, self.caps_unsure) {
                assert!(!h.ip_options || has(c.csum[0], 1), "IPv4 options offloaded");
            }
        }
        let at = h.checksum_at();
        let mut c = !fold(sum(&f[h.l4..h.l4 + h.len]));
        if c == 0 && !tcp {
            c = 0xFFFF;
        }
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        self.filled += 1;
    }

    /// An LSO v2 send: the headers rewritten as the host expects, the payload the datagram's,
    /// the first and last segments (cut as a host does) with checksums that verify.
    fn cut(&mut self, got: &[u8], orig: &[u8], mss: usize, v: u32, seen: u64) {
        let h = net::headers(orig).expect("an LSO send of a frame without TCP");
        assert!(h.tcp, "LSO of UDP");
        let hl = h.l4 + h.l4_header;
        let end = h.l4 + h.len;
        assert_eq!(v & 0xF_FFFF, mss as u32, "LSO MSS");
        assert_eq!((v >> 20 & 0x3FF) as usize, h.l4, "LSO header offset");
        assert_eq!(
            (v >> 30 & 1, v >> 31 == 1),
            (1, h.v6),
            "LSO type and IP version"
        );
        assert!(
            self.unsure || self.lso[usize::from(h.v6)],
            "LSO v2 not enabled"
        );
        assert_eq!(got.len(), end, "LSO send {seen} of {} bytes", got.len());
        assert!(got[hl..] == orig[hl..end], "LSO payload changed");
        let zeroed: &[usize] = if h.v6 { &[18, 19] } else { &[16, 17, 24, 25] };
        let at = h.checksum_at();
        for i in 0..hl {
            if zeroed.contains(&i) {
                assert_eq!(got[i], 0, "LSO header byte {i} not zeroed");
            } else if i != at && i != at + 1 {
                assert_eq!(got[i], orig[i], "LSO header byte {i} changed");
            }
        }
        let preload = fold(net::pseudo(got, &h, 0));
        assert_eq!(be16(got, at), Some(preload), "LSO preload");
        let payload = end - hl;
        let last = (payload - 1) / mss * mss;
        for start in [0, last] {
            let n = (payload - start).min(mss);
            let mut s = got[..hl].to_vec();
            s.extend_from_slice(&got[hl + start..hl + start + n]);
            let l4_len = h.l4_header + n;
            if h.v6 {
                s[18..20].copy_from_slice(&(l4_len as u16).to_be_bytes());
            } else {
                s[16..18].copy_from_slice(&((h.l4 - 14 + l4_len) as u16).to_be_bytes());
            }
            let c = !fold(sum(&s[h.l4..]) + l4_len as u64);
            s[at..at + 2].copy_from_slice(&c.to_be_bytes());
            let sh: Headers = net::headers(&s).expect("an LSO segment");
            assert!(
                net::verifies(&s, &sh),
                "LSO segment at {start} does not verify"
            );
        }
        self.filled += 1;
    }
}

/// A SEND_INDIRECTION_TABLE message (devices §2.6) for `queues` open queues: the table at
/// offset 12, or hostile (another count or offset, entries beyond the queues, arbitrary
/// bytes). Also the table the guest must take from it: `Some(Some(t))` this one,
/// `Some(None)` none (it must refuse it), `None` unknown (arbitrary bytes).
pub fn send_table(inp: &mut Input<'_>, queues: usize) -> (Vec<u8>, Option<Option<[u32; 16]>>) {
    let mut table: [u32; 16] = std::array::from_fn(|_| inp.below(queues.max(1)) as u32);
    let hostile = inp.u8() % 8;
    let (count, offset) = match hostile {
        0 => (inp.u32() % 20, 12),
        1 => (16, inp.u32() % 80),
        _ => (16, 12),
    };
    if hostile == 2 {
        table[inp.below(16)] = queues as u32 + inp.below(100) as u32;
    }
    let mut m = Vec::new();
    for w in [134, count, offset].into_iter().chain(table) {
        m.extend_from_slice(&w.to_le_bytes());
    }
    if hostile == 3 {
        return (inp.bytes(120), None);
    }
    // The guest sees the in-band payload padded to 8 bytes (a ring packet's length is in
    // 8-byte units): a table may run into the padding's zeros.
    let mut padded = m.clone();
    padded.resize(m.len().next_multiple_of(8), 0);
    let at = offset as usize;
    let taken = (count == 16 && at >= 12 && at + 64 <= padded.len())
        .then(|| std::array::from_fn(|i| le32(&padded, at + 4 * i)));
    let valid = taken.filter(|t: &[u32; 16]| t.iter().all(|&q| (q as usize) < queues));
    (m, Some(valid))
}
