//! Receive-side scaling and transmit steering (devices §2.13.3, §2.13.4, §2.15): the Toeplitz
//! hash, the flow tuple it runs over, the host's RSS capabilities and SEND_INDIRECTION_TABLE
//! (pure parsers, fuzzable: [`parse_rss_capabilities`], [`parse_send_indirection_table`]), the
//! RSS parameters object, and the send table the queues share ([`SendTable`]).
//!
//! Conventions shared with the host (and with the mock VSP, which implements them on its own):
//! the hash input is source address, destination address, then source and destination port,
//! in network byte order, as NDIS and the Microsoft verification suite define it. TCP uses the
//! 4-tuple when its hash type is enabled, UDP when its (UDP) type is, every other IP packet
//! (fragments, other protocols, IPv6 with extension headers) the 2-tuple of its version's IP
//! type; a frame that is not IP, or whose types are all disabled, has no hash and steers as
//! hash 0. One 802.1Q tag is skipped. The receive indirection table is indexed with the low
//! `log2(entries)` bits of the hash, the send table with the low 4.

use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use zerocopy::{FromBytes, IntoBytes};

use crate::protocol::{
    INDIRECTION_TABLE_ENTRIES, MAX_CHANNELS, NDIS_OBJECT_TYPE_RSS_CAPABILITIES,
    NDIS_OBJECT_TYPE_RSS_PARAMETERS, NDIS_RSS_CAPS_SIZE_REVISION_1, NDIS_RSS_PARAMS_SIZE,
    NDIS_RSS_REVISION_2, NdisObjectHeader, NdisRssCapabilities, NdisRssParameters,
    NvspSendIndirectionTable, NvspVersion, RSS_KEY_SIZE, SEND_TABLE_ENTRIES,
    SEND_TABLE_LEGACY_OFFSET, msg, rss_caps, rss_hash, rss_parameters_len,
};

/// The well-known Microsoft RSS key (devices §2.13.4; the key of the NDIS verification suite
/// and Linux's default).
pub const MICROSOFT_RSS_KEY: [u8; RSS_KEY_SIZE] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Most hash input bytes a 40-byte key covers (an IPv6 4-tuple).
pub const MAX_HASH_INPUT: usize = RSS_KEY_SIZE - 4;

/// What is wrong with a host's RSS object or send table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RssError {
    /// Fewer bytes than the fixed part needs.
    Truncated(usize),
    /// Not the expected NDIS object or NVSP message type.
    WrongType(u32),
    /// An NDIS object revision below 1.
    Revision(u8),
    /// An NDIS object size below its minimum or beyond the bytes present.
    Size(u16),
    /// A send table whose entry count is not 16.
    Count(u32),
    /// A send table offset that does not leave room for the table inside the message.
    Offset(u32),
    /// A send table entry naming a queue the NIC does not have.
    Entry {
        /// Slot of the table.
        slot: usize,
        /// The queue it named.
        queue: u32,
    },
    /// The host offers hash functions, but not Toeplitz.
    NoToeplitz(u32),
}

impl core::fmt::Display for RssError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated(n) => write!(f, "{n} bytes are too short"),
            Self::WrongType(t) => write!(f, "unexpected type {t:#x}"),
            Self::Revision(r) => write!(f, "NDIS object revision {r}"),
            Self::Size(s) => write!(f, "NDIS object size {s}"),
            Self::Count(c) => write!(f, "send table of {c} entries"),
            Self::Offset(o) => write!(f, "send table offset {o}"),
            Self::Entry { slot, queue } => write!(f, "send table slot {slot} names queue {queue}"),
            Self::NoToeplitz(c) => write!(f, "no Toeplitz hash in capabilities {c:#x}"),
        }
    }
}

impl core::error::Error for RssError {}

/// The Toeplitz hash of `input` under `key` (the NDIS RSS hash): for every set bit `i` of the
/// input (most significant bit of byte 0 first) the 32 key bits starting at bit `i` are
/// XORed into the result. Input beyond [`MAX_HASH_INPUT`] bytes is not covered by a 40-byte
/// key and is ignored.
pub fn toeplitz(key: &[u8; RSS_KEY_SIZE], input: &[u8]) -> u32 {
    let key_byte = |i: usize| u64::from(key.get(i).copied().unwrap_or(0));
    // The 64 key bits starting at the current input byte's first bit.
    let mut window = (0..8).fold(0u64, |w, i| (w << 8) | key_byte(i));
    let mut hash = 0u32;
    for (i, &byte) in input.iter().take(MAX_HASH_INPUT).enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= ((window << bit) >> 32) as u32;
            }
        }
        window = (window << 8) | key_byte(i + 8);
    }
    hash
}

/// The bytes a frame's hash runs over (see the module documentation), at most 36.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashInput {
    bytes: [u8; MAX_HASH_INPUT],
    len: usize,
}

impl HashInput {
    /// The input bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, b: &[u8]) {
        let end = self.len + b.len();
        self.bytes[self.len..end].copy_from_slice(b);
        self.len = end;
    }
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: u16 = 0x8100;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// The hash input of an Ethernet frame under the enabled `hash_info` types
/// ([`rss_hash`]); `None` when the frame has no hash (not IP, truncated, or its types are off).
pub fn hash_input(frame: &[u8], hash_info: u32) -> Option<HashInput> {
    let be16 = |b: &[u8], at: usize| Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]));
    let mut ethertype = be16(frame, 12)?;
    let mut l3 = 14;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16)?;
        l3 = 18;
    }
    let ip = frame.get(l3..)?;
    let mut input = HashInput {
        bytes: [0; MAX_HASH_INPUT],
        len: 0,
    };
    let (addresses, proto, l4, two, tcp, udp) = match ethertype {
        ETHERTYPE_IPV4 => {
            let ihl = usize::from(*ip.first()? & 0x0F) * 4;
            if *ip.first()? >> 4 != 4 || ihl < 20 || ip.len() < ihl {
                return None;
            }
            // A fragment (more fragments, or an offset) carries no reliable ports.
            let fragment = be16(ip, 6)? & 0x3FFF != 0;
            let proto = if fragment { 0 } else { ip[9] };
            (
                ip.get(12..20)?,
                proto,
                ihl,
                rss_hash::IPV4,
                rss_hash::TCP_IPV4,
                rss_hash::UDP_IPV4,
            )
        }
        ETHERTYPE_IPV6 => {
            if *ip.first()? >> 4 != 6 {
                return None;
            }
            (
                ip.get(8..40)?,
                *ip.get(6)?,
                40,
                rss_hash::IPV6,
                rss_hash::TCP_IPV6,
                rss_hash::UDP_IPV6,
            )
        }
        _ => return None,
    };
    let ports = ip.get(l4..l4 + 4);
    let four = match proto {
        PROTO_TCP => hash_info & tcp != 0,
        PROTO_UDP => hash_info & udp != 0,
        _ => false,
    };
    match (four, ports) {
        (true, Some(p)) => {
            input.push(addresses);
            input.push(p);
        }
        _ if hash_info & two != 0 => input.push(addresses),
        _ => return None,
    }
    Some(input)
}

/// The RSS hash of an Ethernet frame: Toeplitz under `key` over its [`hash_input`]; `None`
/// when it has none.
pub fn flow_hash(key: &[u8; RSS_KEY_SIZE], hash_info: u32, frame: &[u8]) -> Option<u32> {
    hash_input(frame, hash_info).map(|i| toeplitz(key, i.as_bytes()))
}

/// The receive indirection table slot of `hash` for a table of `entries` entries (a power of
/// two): its low `log2(entries)` bits.
pub fn indirection_slot(hash: u32, entries: usize) -> usize {
    hash as usize & entries.saturating_sub(1)
}

/// The host's RSS capabilities (OID_GEN_RECEIVE_SCALE_CAPABILITIES, devices §2.13.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RssCapabilities {
    /// Object revision.
    pub revision: u8,
    /// [`rss_caps`] bits.
    pub capabilities: u32,
    /// Interrupt messages.
    pub num_interrupt_messages: u32,
    /// Receive queues the host can steer to: the channel count is capped by it.
    pub num_receive_queues: u32,
    /// Receive indirection table entries (revision 2 and later).
    pub num_indirection_table_entries: Option<u16>,
}

impl RssCapabilities {
    /// Entries of the receive indirection table to set: the host's count when it is a power
    /// of two up to 128, otherwise 128 (Linux always uses 128).
    pub fn table_entries(&self) -> usize {
        match self.num_indirection_table_entries.map(usize::from) {
            Some(n) if n.is_power_of_two() && n <= INDIRECTION_TABLE_ENTRIES => n,
            _ => INDIRECTION_TABLE_ENTRIES,
        }
    }

    /// Channels to ask for (primary included): `wanted`, capped by the host's receive queues,
    /// the indirection table and [`MAX_CHANNELS`]; at least 1.
    pub fn channels_for(&self, wanted: usize) -> usize {
        let queues = usize::try_from(self.num_receive_queues).unwrap_or(usize::MAX);
        let most = queues.min(self.table_entries()).clamp(1, MAX_CHANNELS);
        wanted.clamp(1, most)
    }
}

/// Parses the information buffer of an OID_GEN_RECEIVE_SCALE_CAPABILITIES reply: an NDIS
/// object of type 0x88, revision ≥ 1, whose size is at least the 16-byte revision-1 object
/// and within `info`. A host that names hash functions without Toeplitz is refused; one that
/// names none is taken to mean Toeplitz (Linux ignores the bits). Pure; never panics.
pub fn parse_rss_capabilities(info: &[u8]) -> Result<RssCapabilities, RssError> {
    let min = usize::from(NDIS_RSS_CAPS_SIZE_REVISION_1);
    let header = NdisObjectHeader::read_from_prefix(info)
        .map_err(|_| RssError::Truncated(info.len()))?
        .0;
    if info.len() < min {
        return Err(RssError::Truncated(info.len()));
    }
    if header.object_type != NDIS_OBJECT_TYPE_RSS_CAPABILITIES {
        return Err(RssError::WrongType(u32::from(header.object_type)));
    }
    if header.revision < 1 {
        return Err(RssError::Revision(header.revision));
    }
    let size = header.size.get();
    if usize::from(size) < min || usize::from(size) > info.len() {
        return Err(RssError::Size(size));
    }
    let mut full = [0u8; size_of::<NdisRssCapabilities>()];
    let n = usize::from(size).min(full.len());
    full[..n].copy_from_slice(&info[..n]);
    let c = NdisRssCapabilities::read_from_bytes(&full[..])
        .map_err(|_| RssError::Truncated(info.len()))?;
    let capabilities = c.capabilities.get();
    let functions = capabilities & rss_caps::HASH_FUNCTION_MASK;
    if functions != 0 && functions & rss_caps::HASH_FUNCTION_TOEPLITZ == 0 {
        return Err(RssError::NoToeplitz(capabilities));
    }
    Ok(RssCapabilities {
        revision: header.revision,
        capabilities,
        num_interrupt_messages: c.num_interrupt_messages.get(),
        num_receive_queues: c.num_receive_queues.get(),
        num_indirection_table_entries: (header.revision >= NDIS_RSS_REVISION_2
            && n >= size_of::<NdisRssCapabilities>())
        .then(|| c.num_indirection_table_entries.get()),
    })
}

/// Writes the OID_GEN_RECEIVE_SCALE_PARAMETERS object (devices §2.13.4): the 40-byte fixed
/// part, an `entries`-entry indirection table whose slot `i` is `queue_of(i)`, then `key`.
/// Returns its length, `None` if `out` is too small or `entries` is not a power of two up to
/// 128.
pub fn write_rss_parameters(
    out: &mut [u8],
    flags: u16,
    hash_information: u32,
    entries: usize,
    queue_of: impl Fn(usize) -> u32,
    key: &[u8; RSS_KEY_SIZE],
) -> Option<usize> {
    if !entries.is_power_of_two() || entries > INDIRECTION_TABLE_ENTRIES {
        return None;
    }
    let len = rss_parameters_len(entries);
    let out = out.get_mut(..len)?;
    let table_at = usize::from(NDIS_RSS_PARAMS_SIZE);
    let key_at = table_at + entries * 4;
    let p = NdisRssParameters {
        header: NdisObjectHeader {
            object_type: NDIS_OBJECT_TYPE_RSS_PARAMETERS,
            revision: NDIS_RSS_REVISION_2,
            size: NDIS_RSS_PARAMS_SIZE.into(),
        },
        flags: flags.into(),
        base_cpu_number: 0.into(),
        hash_information: hash_information.into(),
        indirection_table_size: u16::try_from(entries * 4).ok()?.into(),
        indirection_table_offset: (table_at as u32).into(),
        hash_secret_key_size: (RSS_KEY_SIZE as u16).into(),
        hash_secret_key_offset: (key_at as u32).into(),
        ..Default::default()
    };
    out[..table_at].copy_from_slice(p.as_bytes());
    for (i, slot) in out[table_at..key_at].chunks_exact_mut(4).enumerate() {
        slot.copy_from_slice(&queue_of(i).to_le_bytes());
    }
    out[key_at..].copy_from_slice(key);
    Some(len)
}

/// Parses a SEND_INDIRECTION_TABLE (134) message (devices §2.6) of a host that negotiated
/// `version`: 16 entries, at `offset` from the start of the message (not inside the 12-byte
/// header, all within `message`). On NVSP ≤ 6 a message long enough to hold the header, the
/// 36-byte union and the table is read at offset 40 whatever it says (Linux's work-around
/// for hosts that sent a wrong offset). The entries are not checked against the queue count
/// here ([`SendTable::apply`] does). Pure; never panics.
pub fn parse_send_indirection_table(
    message: &[u8],
    version: NvspVersion,
) -> Result<[u32; SEND_TABLE_ENTRIES], RssError> {
    let (h, _) = NvspSendIndirectionTable::read_from_prefix(message)
        .map_err(|_| RssError::Truncated(message.len()))?;
    if h.msg_type.get() != msg::SEND_INDIRECTION_TABLE {
        return Err(RssError::WrongType(h.msg_type.get()));
    }
    if h.count.get() as usize != SEND_TABLE_ENTRIES {
        return Err(RssError::Count(h.count.get()));
    }
    let table_bytes = SEND_TABLE_ENTRIES * 4;
    let mut offset = h.offset.get() as usize;
    if version <= NvspVersion::V6 && message.len() >= SEND_TABLE_LEGACY_OFFSET + table_bytes {
        offset = SEND_TABLE_LEGACY_OFFSET;
    }
    let table = offset
        .checked_add(table_bytes)
        .filter(|_| offset >= size_of::<NvspSendIndirectionTable>())
        .and_then(|end| message.get(offset..end))
        .ok_or(RssError::Offset(h.offset.get()))?;
    let mut out = [0u32; SEND_TABLE_ENTRIES];
    for (o, b) in out.iter_mut().zip(table.chunks_exact(4)) {
        *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    Ok(out)
}

/// The send indirection table the queues of a NIC share (devices §2.15 step 5): the queue of
/// a frame is `table[hash & 15]`. Lock-free: every entry is an atomic byte, updated entry by
/// entry, so a reader on another VP sees for each slot either the old or the new queue —
/// both valid, because a table is checked whole before any entry is stored.
#[derive(Debug)]
pub struct SendTable {
    entries: [AtomicU8; SEND_TABLE_ENTRIES],
    queues: AtomicU8,
    /// Tables applied from the host.
    from_host: AtomicU32,
    /// Tables from the host refused (entries beyond the queue count).
    refused: AtomicU32,
}

impl Default for SendTable {
    fn default() -> Self {
        Self::new()
    }
}

impl SendTable {
    /// A single-queue table (every slot 0).
    pub const fn new() -> Self {
        Self {
            entries: [const { AtomicU8::new(0) }; SEND_TABLE_ENTRIES],
            queues: AtomicU8::new(1),
            from_host: AtomicU32::new(0),
            refused: AtomicU32::new(0),
        }
    }

    /// Queues the table steers over.
    pub fn queues(&self) -> usize {
        usize::from(self.queues.load(Ordering::Acquire)).max(1)
    }

    /// Resets to `queues` queues with slot `i` = `i mod queues` (Linux's default until the
    /// host sends its own). `queues` is clamped to 1..=64.
    pub fn set_default(&self, queues: usize) {
        let n = queues.clamp(1, MAX_CHANNELS);
        // Shrinking: entries first, so no reader sees an entry beyond the new count.
        for (i, e) in self.entries.iter().enumerate() {
            e.store((i % n) as u8, Ordering::Release);
        }
        self.queues.store(n as u8, Ordering::Release);
    }

    /// Applies a table from the host: refused whole (and counted) if an entry names a queue
    /// beyond the count; the previous table then stays.
    pub fn apply(&self, table: &[u32; SEND_TABLE_ENTRIES]) -> Result<(), RssError> {
        let n = self.queues();
        if let Some((slot, &queue)) = table.iter().enumerate().find(|(_, q)| **q as usize >= n) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(RssError::Entry { slot, queue });
        }
        for (e, &q) in self.entries.iter().zip(table) {
            e.store(q as u8, Ordering::Release);
        }
        self.from_host.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The queue of a frame with `hash`: `table[hash & 15]` (guarded against the count).
    pub fn queue_for_hash(&self, hash: u32) -> usize {
        let q =
            usize::from(self.entries[hash as usize % SEND_TABLE_ENTRIES].load(Ordering::Acquire));
        if q < self.queues() { q } else { 0 }
    }

    /// The current entries.
    pub fn entries(&self) -> [u8; SEND_TABLE_ENTRIES] {
        core::array::from_fn(|i| self.entries[i].load(Ordering::Acquire))
    }

    /// (tables applied from the host, tables refused).
    pub fn host_updates(&self) -> (u32, u32) {
        (
            self.from_host.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests;
