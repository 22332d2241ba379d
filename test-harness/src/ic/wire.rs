//! IC wire format as the host writes and reads it (devices §6.1–6.2): the 8-byte pipe header,
//! the 20-byte IC message header, the NEGOTIATE payload, and little-endian/UTF-16 helpers.
//! Written from the protocol document; nothing here comes from the guest crate.

use std::fmt;

/// Size of pipe header + IC header in front of every IC payload.
pub const ICMSG_HDR_SIZE: usize = 28;

/// Pipe header flags the host sends (1 = data).
pub const PIPE_FLAG_DATA: u32 = 1;

/// icflags bit: part of a transaction.
pub const ICFLAG_TRANSACTION: u8 = 0x1;
/// icflags bit: a request (host → guest).
pub const ICFLAG_REQUEST: u8 = 0x2;
/// icflags bit: a response (guest → host).
pub const ICFLAG_RESPONSE: u8 = 0x4;
/// icflags of every host request: TRANSACTION | REQUEST.
pub const ICFLAGS_HOST_REQUEST: u8 = ICFLAG_TRANSACTION | ICFLAG_REQUEST;
/// icflags every guest response must carry: TRANSACTION | RESPONSE.
pub const ICFLAGS_GUEST_RESPONSE: u8 = ICFLAG_TRANSACTION | ICFLAG_RESPONSE;

/// icmsgtype NEGOTIATE (any service).
pub const MSG_NEGOTIATE: u16 = 0;
/// icmsgtype HEARTBEAT.
pub const MSG_HEARTBEAT: u16 = 1;
/// icmsgtype KVP exchange.
pub const MSG_KVP: u16 = 2;
/// icmsgtype SHUTDOWN.
pub const MSG_SHUTDOWN: u16 = 3;
/// icmsgtype TIMESYNC.
pub const MSG_TIMESYNC: u16 = 4;

/// HRESULT S_OK.
pub const S_OK: u32 = 0;
/// HRESULT E_FAIL.
pub const E_FAIL: u32 = 0x8000_4005;
/// HRESULT ERROR_NO_MORE_ITEMS / Linux HV_S_CONT: enumeration finished, key missing.
pub const NO_MORE_ITEMS: u32 = 0x8007_0103;

/// icmsgsize of a NEGOTIATE response: counts (8) + two versions (8).
pub const NEGOTIATE_RESPONSE_ICMSGSIZE: u16 = 16;

/// An IC version (framework or service), `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IcVersion {
    /// Major number.
    pub major: u16,
    /// Minor number.
    pub minor: u16,
}

impl IcVersion {
    /// `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }
}

impl fmt::Display for IcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Little-endian u16 at `at`, `None` past the end.
pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Little-endian u32 at `at`, `None` past the end.
pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Little-endian u64 at `at`, `None` past the end.
pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Writes `s` as UTF-16LE plus a NUL into `field` (truncated so the NUL always fits); returns
/// the byte count written including the NUL (the KVP `key_size` / `value_size` convention).
pub fn put_utf16z(field: &mut [u8], s: &str) -> u32 {
    let max_units = (field.len() / 2).saturating_sub(1);
    let mut n = 0;
    for unit in s.encode_utf16().take(max_units) {
        field[n * 2..n * 2 + 2].copy_from_slice(&unit.to_le_bytes());
        n += 1;
    }
    if field.len() >= n * 2 + 2 {
        field[n * 2..n * 2 + 2].fill(0);
        (n as u32 + 1) * 2
    } else {
        0
    }
}

/// Decodes UTF-16LE from `b`, stopping at the first NUL (lossy).
pub fn get_utf16z(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// The 28-byte prefix of an IC message, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcHeader {
    /// Pipe header flags (@0).
    pub pipe_flags: u32,
    /// Pipe header msgsize: bytes after the pipe header (@4).
    pub pipe_msgsize: u32,
    /// Framework version (@8).
    pub framework: IcVersion,
    /// icmsgtype (@12).
    pub msg_type: u16,
    /// Message (service) version (@14).
    pub service: IcVersion,
    /// icmsgsize: payload bytes after the header (@18).
    pub icmsgsize: u16,
    /// HRESULT (@20).
    pub status: u32,
    /// ictransaction_id (@24).
    pub ic_transaction_id: u8,
    /// icflags (@25).
    pub icflags: u8,
    /// Reserved (@26).
    pub reserved: [u8; 2],
}

impl IcHeader {
    /// A host request header for a payload of `payload_len` bytes: pipe flags data, status 0,
    /// icflags TRANSACTION | REQUEST.
    pub fn request(
        msg_type: u16,
        framework: IcVersion,
        service: IcVersion,
        payload_len: usize,
        ic_transaction_id: u8,
    ) -> Self {
        Self {
            pipe_flags: PIPE_FLAG_DATA,
            pipe_msgsize: (ICMSG_HDR_SIZE - 8 + payload_len) as u32,
            framework,
            msg_type,
            service,
            icmsgsize: payload_len as u16,
            status: S_OK,
            ic_transaction_id,
            icflags: ICFLAGS_HOST_REQUEST,
            reserved: [0; 2],
        }
    }

    /// Decodes the first 28 bytes; `None` if `b` is shorter.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < ICMSG_HDR_SIZE {
            return None;
        }
        Some(Self {
            pipe_flags: u32_at(b, 0)?,
            pipe_msgsize: u32_at(b, 4)?,
            framework: IcVersion::new(u16_at(b, 8)?, u16_at(b, 10)?),
            msg_type: u16_at(b, 12)?,
            service: IcVersion::new(u16_at(b, 14)?, u16_at(b, 16)?),
            icmsgsize: u16_at(b, 18)?,
            status: u32_at(b, 20)?,
            ic_transaction_id: b[24],
            icflags: b[25],
            reserved: [b[26], b[27]],
        })
    }

    /// Encodes the 28 bytes.
    pub fn to_bytes(&self) -> [u8; ICMSG_HDR_SIZE] {
        let mut b = [0u8; ICMSG_HDR_SIZE];
        b[0..4].copy_from_slice(&self.pipe_flags.to_le_bytes());
        b[4..8].copy_from_slice(&self.pipe_msgsize.to_le_bytes());
        b[8..10].copy_from_slice(&self.framework.major.to_le_bytes());
        b[10..12].copy_from_slice(&self.framework.minor.to_le_bytes());
        b[12..14].copy_from_slice(&self.msg_type.to_le_bytes());
        b[14..16].copy_from_slice(&self.service.major.to_le_bytes());
        b[16..18].copy_from_slice(&self.service.minor.to_le_bytes());
        b[18..20].copy_from_slice(&self.icmsgsize.to_le_bytes());
        b[20..24].copy_from_slice(&self.status.to_le_bytes());
        b[24] = self.ic_transaction_id;
        b[25] = self.icflags;
        b[26..28].copy_from_slice(&self.reserved);
        b
    }
}

/// Builds a whole request message: header then `payload`.
pub fn build_message(header: &IcHeader, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ICMSG_HDR_SIZE + payload.len());
    m.extend_from_slice(&header.to_bytes());
    m.extend_from_slice(payload);
    m
}

/// NEGOTIATE payload (devices §6.2): counts, reserved, framework versions then service
/// versions.
pub fn negotiate_payload(frameworks: &[IcVersion], services: &[IcVersion]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + 4 * (frameworks.len() + services.len()));
    p.extend_from_slice(&(frameworks.len() as u16).to_le_bytes());
    p.extend_from_slice(&(services.len() as u16).to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    for v in frameworks.iter().chain(services) {
        p.extend_from_slice(&v.major.to_le_bytes());
        p.extend_from_slice(&v.minor.to_le_bytes());
    }
    p
}
