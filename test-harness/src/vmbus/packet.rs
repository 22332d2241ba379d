//! Ring packets as the host sees them (vmbus-core §7.3–7.5): decoding what the guest wrote and
//! encoding what the host sends.

/// DATA_INBAND: payload inside the ring.
pub const PACKET_TYPE_INBAND: u16 = 0x6;
/// DATA_USING_XFER_PAGES: payload in a transfer-page set established by the device protocol.
pub const PACKET_TYPE_XFER_PAGES: u16 = 0x7;
/// DATA_USING_GPA_DIRECT: payload references guest pages.
pub const PACKET_TYPE_GPA_DIRECT: u16 = 0x9;
/// COMP: completion of a request, same transaction id.
pub const PACKET_TYPE_COMPLETION: u16 = 0xB;
/// Descriptor flag bit 0: the sender wants a completion.
pub const FLAG_COMPLETION_REQUESTED: u16 = 0x1;

/// A packet the guest wrote into its outbound ring, decoded and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPacket {
    /// Descriptor type: 6 in-band, 7 transfer pages, 9 GPA direct, 11 completion.
    pub packet_type: u16,
    /// Descriptor flags (bit 0 = completion requested).
    pub flags: u16,
    /// Transaction id (echo it in the completion).
    pub transaction_id: u64,
    /// Bytes after the type-specific header up to `length8 · 8`, padding included (the device
    /// protocol knows the real length).
    pub payload: Vec<u8>,
    /// GPA-direct ranges (type 9): (byte count, byte offset, PFNs).
    pub gpa_ranges: Vec<(u32, u32, Vec<u64>)>,
    /// Transfer-page packets (type 7): (transfer page set id, [(byte count, byte offset)]).
    pub xfer_pages: Option<(u16, Vec<(u32, u32)>)>,
}

impl HostPacket {
    /// Whether the guest asked for a completion (flag bit 0).
    pub fn completion_requested(&self) -> bool {
        self.flags & FLAG_COMPLETION_REQUESTED != 0
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

impl HostPacket {
    /// An empty packet to decode into ([`parse_packet`]).
    pub(crate) fn empty() -> Self {
        Self {
            packet_type: 0,
            flags: 0,
            transaction_id: 0,
            payload: Vec::new(),
            gpa_ranges: Vec::new(),
            xfer_pages: None,
        }
    }
}

/// Decodes `bytes` = descriptor through padding (`length8 · 8` bytes, trailer removed) into
/// `packet`, reusing its allocations (the host decodes every packet the guest sends). The
/// caller has checked offset8 ≥ 2 and length8 ≥ offset8. On error `packet` holds garbage.
pub(crate) fn parse_packet(bytes: &[u8], packet: &mut HostPacket) -> Result<(), String> {
    let packet_type = u16_at(bytes, 0);
    let offset = usize::from(u16_at(bytes, 2)) * 8;
    let flags = u16_at(bytes, 6);
    let transaction_id = u64_at(bytes, 8);
    if !matches!(
        packet_type,
        PACKET_TYPE_INBAND
            | PACKET_TYPE_XFER_PAGES
            | PACKET_TYPE_GPA_DIRECT
            | PACKET_TYPE_COMPLETION
    ) {
        return Err(format!(
            "packet type {packet_type:#x} (only 6, 7, 9 and 11 are valid)"
        ));
    }
    if flags & !FLAG_COMPLETION_REQUESTED != 0 {
        return Err(format!("packet flags {flags:#x} (only bit 0 is defined)"));
    }
    let header = &bytes[..offset];
    packet.packet_type = packet_type;
    packet.flags = flags;
    packet.transaction_id = transaction_id;
    packet.payload.clear();
    packet.payload.extend_from_slice(&bytes[offset..]);
    packet.xfer_pages = None;
    // Ranges are decoded into the entries already there (their PFN vectors reused).
    let mut ranges = 0;
    match packet_type {
        PACKET_TYPE_GPA_DIRECT => {
            if header.len() < 24 {
                return Err(format!("GPA-direct packet with data offset {offset} < 24"));
            }
            let count = u32_at(header, 20);
            if count == 0 {
                return Err("GPA-direct packet with range count 0".into());
            }
            let mut at = 24;
            for n in 0..count {
                if at + 8 > header.len() {
                    return Err(format!("GPA-direct range {n} beyond the data offset"));
                }
                let byte_count = u32_at(header, at);
                let byte_offset = u32_at(header, at + 4);
                at += 8;
                if byte_offset >= 4096 || byte_count == 0 {
                    return Err(format!(
                        "GPA-direct range {n}: byte count {byte_count}, offset {byte_offset}"
                    ));
                }
                let pages =
                    (u64::from(byte_offset) + u64::from(byte_count)).div_ceil(4096) as usize;
                if at + pages * 8 > header.len() {
                    return Err(format!("GPA-direct range {n} PFNs beyond the data offset"));
                }
                let pfns = (0..pages).map(|i| u64_at(header, at + i * 8));
                match packet.gpa_ranges.get_mut(ranges) {
                    Some(r) => {
                        r.0 = byte_count;
                        r.1 = byte_offset;
                        r.2.clear();
                        r.2.extend(pfns);
                    }
                    None => packet
                        .gpa_ranges
                        .push((byte_count, byte_offset, pfns.collect())),
                }
                ranges += 1;
                at += pages * 8;
            }
        }
        PACKET_TYPE_XFER_PAGES => {
            if header.len() < 24 {
                return Err(format!(
                    "transfer-page packet with data offset {offset} < 24"
                ));
            }
            let set = u16_at(header, 16);
            let count = u32_at(header, 20) as usize;
            if 24 + count * 8 > header.len() {
                return Err(format!(
                    "transfer-page packet: {count} ranges beyond the data offset"
                ));
            }
            let ranges = (0..count)
                .map(|i| (u32_at(header, 24 + i * 8), u32_at(header, 28 + i * 8)))
                .collect();
            packet.xfer_pages = Some((set, ranges));
        }
        _ => {}
    }
    packet.gpa_ranges.truncate(ranges);
    Ok(())
}

/// Encodes a packet (descriptor, `header` after it, payload, zero padding), without trailer,
/// into `out` (cleared first, its allocation reused); `false` if it cannot be encoded.
/// `header` is the type-specific part after the 16-byte descriptor (empty for in-band and
/// completion packets) and must be a multiple of 8 bytes.
pub(crate) fn encode_packet(
    out: &mut Vec<u8>,
    packet_type: u16,
    flags: u16,
    transaction_id: u64,
    header: &[u8],
    payload: &[u8],
) -> bool {
    if !header.len().is_multiple_of(8) {
        return false;
    }
    let offset = 16 + header.len();
    let len = (offset + payload.len()).next_multiple_of(8);
    let (Ok(offset8), Ok(len8)) = (u16::try_from(offset / 8), u16::try_from(len / 8)) else {
        return false;
    };
    out.clear();
    out.reserve(len);
    out.extend_from_slice(&packet_type.to_le_bytes());
    out.extend_from_slice(&offset8.to_le_bytes());
    out.extend_from_slice(&len8.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&transaction_id.to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(payload);
    out.resize(len, 0);
    true
}
