//! Key-value pair exchange (icmsgtype 2, devices §6.6).
//!
//! The host reads and writes string (or integer) values in five pools. Pool AUTO (2) holds the
//! guest's intrinsic data, which this crate answers from the [`GuestInfo`] the OS fills, in the
//! enumeration order Linux uses ([`AUTO_POOL_KEYS`]). Pools EXTERNAL (0), GUEST (1) and
//! AUTO_EXTERNAL (3) are tables the host may SET, DELETE, GET and ENUMERATE, kept packed in
//! one store of a fixed number of bytes (a const generic, [`DEFAULT_STORE_BYTES`] by default);
//! the OS publishes its own values with [`Kvp::set_local`]. AUTO_INTERNAL (4) is local only.
//! GET_IP_INFO is answered from [`GuestInfo::adapters`]; SET_IP_INFO is refused with
//! ERROR_NOT_SUPPORTED (the OS configures its own network).
//!
//! Status codes follow Linux: a missing key (GET, DELETE), an enumeration index past the end,
//! and a failed SET answer `NO_MORE_ITEMS` (Linux `HV_S_CONT`); malformed requests E_FAIL; a full
//! store `DISK_FULL`. Only the string IP-info form (service ≤ 4.0) is offered, so the binary
//! KVP 5.0 form never arrives.

use crate::protocol::{
    IcVersion, KVP_MAX_KEY_SIZE, KVP_MAX_VALUE_SIZE, KvpAddressFamily, KvpDeleteMsg,
    KvpEnumerateMsg, KvpGetSetMsg, KvpIpInfoMsg, KvpOperation, KvpPool, KvpRecord, KvpValueType,
};
use crate::utf16::{self, Utf16Str};
use crate::{IcError, IcEvent, IcHandler, IcMsgType, IcStatus, Outcome};
use vmbus_guest::protocol::DeviceClass;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// KVP service versions in preference order (Linux `kvp_versions`: 4.0, 3.0, 1.0).
pub const KVP_VERSIONS: &[IcVersion] = &[
    IcVersion::new(4, 0),
    IcVersion::new(3, 0),
    IcVersion::new(1, 0),
];

/// Default size in bytes of the store that holds the entries of every table pool: room for
/// the couple of dozen host values Hyper-V pushes (host and VM names, host OS version …) while
/// keeping an [`crate::channel::IcChannel`] of KVP within 16 KiB.
pub const DEFAULT_STORE_BYTES: usize = 6144;

/// Largest packet the KVP channel receives (the 7428-byte IP-info message): the buffer size an
/// [`crate::channel::IcChannel`] needs.
pub const MAX_PACKET: usize = crate::channel::max_packet(core::mem::size_of::<KvpIpInfoMsg>());

/// Keys of the AUTO pool, in the index order Linux's KVP daemon enumerates them.
pub const AUTO_POOL_KEYS: [&str; 10] = [
    "FullyQualifiedDomainName",
    "IntegrationServicesVersion",
    "NetworkAddressIPv4",
    "NetworkAddressIPv6",
    "OSBuildNumber",
    "OSName",
    "OSMajorVersion",
    "OSMinorVersion",
    "OSVersion",
    "ProcessorArchitecture",
];

/// One adapter's IP configuration for GET_IP_INFO. Lists are semicolon separated, as on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdapterIpInfo<'a> {
    /// Adapter id the host asks by (MAC address or interface GUID); compared ignoring ASCII case.
    pub adapter_id: &'a str,
    /// Which families are configured.
    pub family: KvpAddressFamilyField,
    /// Whether DHCP is enabled.
    pub dhcp_enabled: bool,
    /// Addresses.
    pub ip_addresses: &'a str,
    /// Subnet masks / prefixes, one per address.
    pub subnets: &'a str,
    /// Gateways.
    pub gateways: &'a str,
    /// DNS servers.
    pub dns_servers: &'a str,
}

/// [`KvpAddressFamily`] with a `Default` (none), for use in [`AdapterIpInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvpAddressFamilyField(pub KvpAddressFamily);

impl Default for KvpAddressFamilyField {
    fn default() -> Self {
        Self(KvpAddressFamily::NONE)
    }
}

/// What the guest reports about itself in the AUTO pool and for GET_IP_INFO. Empty strings are
/// reported as empty values (Linux always answers all ten keys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestInfo<'a> {
    /// FullyQualifiedDomainName.
    pub fully_qualified_domain_name: &'a str,
    /// IntegrationServicesVersion (Linux reports its daemon's version string).
    pub integration_services_version: &'a str,
    /// NetworkAddressIPv4: semicolon-separated IPv4 addresses.
    pub network_address_ipv4: &'a str,
    /// NetworkAddressIPv6: semicolon-separated IPv6 addresses.
    pub network_address_ipv6: &'a str,
    /// OSBuildNumber (Linux: kernel release).
    pub os_build_number: &'a str,
    /// OSName.
    pub os_name: &'a str,
    /// OSMajorVersion.
    pub os_major_version: &'a str,
    /// OSMinorVersion.
    pub os_minor_version: &'a str,
    /// OSVersion.
    pub os_version: &'a str,
    /// ProcessorArchitecture (e.g. "x86_64").
    pub processor_architecture: &'a str,
    /// Adapters for GET_IP_INFO.
    pub adapters: &'a [AdapterIpInfo<'a>],
}

impl<'a> GuestInfo<'a> {
    /// AUTO-pool entry number `index`: (key, value).
    pub fn auto_entry(&self, index: usize) -> Option<(&'static str, &'a str)> {
        let value = match index {
            0 => self.fully_qualified_domain_name,
            1 => self.integration_services_version,
            2 => self.network_address_ipv4,
            3 => self.network_address_ipv6,
            4 => self.os_build_number,
            5 => self.os_name,
            6 => self.os_major_version,
            7 => self.os_minor_version,
            8 => self.os_version,
            9 => self.processor_architecture,
            _ => return None,
        };
        Some((AUTO_POOL_KEYS[index], value))
    }
}

/// A value as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvpValue<'a> {
    /// REG_SZ / REG_EXPAND_SZ.
    String(Utf16Str<'a>),
    /// REG_DWORD.
    U32(u32),
    /// REG_QWORD (Windows 11, Linux 8).
    U64(u64),
}

/// One stored key/value, borrowed from the service's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvpEntry<'s> {
    value_type: KvpValueType,
    /// Key code units (LE bytes) without the NUL: at most 255 units.
    key: &'s [u8],
    /// String code units without the NUL, or the integer's LE bytes.
    value: &'s [u8],
}

impl<'s> KvpEntry<'s> {
    /// The key.
    pub fn key(&self) -> Utf16Str<'s> {
        Utf16Str::from_units_le(self.key).unwrap_or_default()
    }

    /// The value type as the host sent it.
    pub fn value_type(&self) -> KvpValueType {
        self.value_type
    }

    /// The value.
    pub fn value(&self) -> KvpValue<'s> {
        match *self.value {
            [a, b, c, d] if self.value_type == KvpValueType::REG_DWORD => {
                KvpValue::U32(u32::from_le_bytes([a, b, c, d]))
            }
            [a, b, c, d, e, f, g, h] if !self.value_type.is_string() => {
                KvpValue::U64(u64::from_le_bytes([a, b, c, d, e, f, g, h]))
            }
            _ => KvpValue::String(Utf16Str::from_units_le(self.value).unwrap_or_default()),
        }
    }

    /// Writes type, sizes and value into a record (the key is left as it is).
    fn write_value(&self, rec: &mut KvpRecord) {
        rec.value_type.set(self.value_type.0);
        rec.value.fill(0);
        let n = self.value.len().min(rec.value.len());
        rec.value[..n].copy_from_slice(&self.value[..n]);
        let size = if self.value_type.is_string() {
            n + 2
        } else {
            n
        };
        rec.value_size.set(size as u32);
    }
}

/// How each entry is kept in the store: this header, then the key bytes, then the value bytes.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
struct StoredHeader {
    pool: u8,
    reserved: u8,
    key_len: U16,
    value_len: U16,
    value_type: U32,
}

/// Store bytes each entry takes besides its key and value.
pub const ENTRY_OVERHEAD: usize = core::mem::size_of::<StoredHeader>();

/// Store bytes an entry with this key and value takes (both as UTF-16LE bytes without NUL).
pub const fn entry_size(key_bytes: usize, value_bytes: usize) -> usize {
    ENTRY_OVERHEAD + key_bytes + value_bytes
}

/// Where one entry lies in the store.
#[derive(Clone, Copy, Debug)]
struct Located<'s> {
    pool: u8,
    /// Byte position of its header.
    pos: usize,
    /// Bytes it takes (header included).
    len: usize,
    entry: KvpEntry<'s>,
}

/// The entries of every table pool packed into `B` bytes, in insertion order (which is the
/// enumeration order within each pool). Only this module writes it, but it is still parsed
/// without trusting it: a record that does not parse ends the walk.
#[derive(Debug)]
struct Store<const B: usize> {
    bytes: [u8; B],
    used: usize,
}

impl<const B: usize> Store<B> {
    const fn new() -> Self {
        Self {
            bytes: [0; B],
            used: 0,
        }
    }

    fn iter(&self) -> impl Iterator<Item = Located<'_>> + '_ {
        let data = self.bytes.get(..self.used).unwrap_or(&[]);
        let mut pos = 0usize;
        core::iter::from_fn(move || {
            let rest = data.get(pos..)?;
            let (h, rest) = StoredHeader::ref_from_prefix(rest).ok()?;
            let (klen, vlen) = (usize::from(h.key_len.get()), usize::from(h.value_len.get()));
            let (key, rest) = rest.split_at_checked(klen)?;
            let value = rest.get(..vlen)?;
            let located = Located {
                pool: h.pool,
                pos,
                len: entry_size(klen, vlen),
                entry: KvpEntry {
                    value_type: KvpValueType(h.value_type.get()),
                    key,
                    value,
                },
            };
            pos += located.len;
            Some(located)
        })
    }

    fn in_pool(&self, pool: u8) -> impl Iterator<Item = Located<'_>> + '_ {
        self.iter().filter(move |l| l.pool == pool)
    }

    /// Slot (index in the pool), position and length of `key` in `pool`.
    fn find(&self, pool: u8, key: Utf16Str<'_>) -> Option<(usize, usize, usize)> {
        self.in_pool(pool)
            .enumerate()
            .find(|(_, l)| l.entry.key() == key)
            .map(|(slot, l)| (slot, l.pos, l.len))
    }

    /// Writes one entry at `pos` (room already made).
    fn write(&mut self, pos: usize, pool: u8, key: &[u8], value_type: KvpValueType, value: &[u8]) {
        let header = StoredHeader {
            pool,
            reserved: 0,
            key_len: U16::new(key.len() as u16),
            value_len: U16::new(value.len() as u16),
            value_type: U32::new(value_type.0),
        };
        let parts: [&[u8]; 3] = [header.as_bytes(), key, value];
        let mut at = pos;
        for part in parts {
            if let Some(dst) = self.bytes.get_mut(at..at + part.len()) {
                dst.copy_from_slice(part);
            }
            at += part.len();
        }
    }

    /// Replaces or appends `key` in `pool` and returns its slot; an existing key keeps its
    /// place. `Err(())` when the store has no room (the old entry is then unchanged).
    fn upsert(
        &mut self,
        pool: u8,
        key: Utf16Str<'_>,
        value_type: KvpValueType,
        value: &[u8],
    ) -> Result<usize, ()> {
        let key = key.as_bytes();
        if key.len() > KVP_MAX_KEY_SIZE - 2 || value.len() > KVP_MAX_VALUE_SIZE {
            return Err(());
        }
        let new_len = entry_size(key.len(), value.len());
        let k = Utf16Str::from_units_le(key).ok_or(())?;
        match self.find(pool, k) {
            Some((slot, pos, old_len)) => {
                let used = self.used - old_len + new_len;
                if used > B {
                    return Err(());
                }
                self.bytes
                    .copy_within(pos + old_len..self.used, pos + new_len);
                self.used = used;
                self.write(pos, pool, key, value_type, value);
                Ok(slot)
            }
            None => {
                let pos = self.used;
                if pos + new_len > B {
                    return Err(());
                }
                let slot = self.in_pool(pool).count();
                self.used += new_len;
                self.write(pos, pool, key, value_type, value);
                Ok(slot)
            }
        }
    }

    fn remove_at(&mut self, pos: usize, len: usize) {
        self.bytes.copy_within(pos + len..self.used, pos);
        self.used -= len;
    }
}

/// The KVP service: guest-provided data plus the table pools' entries, kept in a store of
/// `B` bytes shared by every pool (each entry takes [`entry_size`] bytes: typical keys and
/// values of a few dozen characters cost ~100 bytes, a maximal one 2566).
#[derive(Debug)]
pub struct Kvp<'a, const B: usize = DEFAULT_STORE_BYTES> {
    guest: GuestInfo<'a>,
    store: Store<B>,
}

fn check_pool(pool: KvpPool) -> Result<u8, IcError> {
    if usize::from(pool.0) < KvpPool::COUNT {
        Ok(pool.0)
    } else {
        Err(IcError::InvalidPool(pool))
    }
}

impl<'a, const B: usize> Kvp<'a, B> {
    /// A KVP service answering from `guest`, with empty tables.
    pub const fn new(guest: GuestInfo<'a>) -> Self {
        Self {
            guest,
            store: Store::new(),
        }
    }

    /// What the guest reports about itself.
    pub fn guest_info(&self) -> &GuestInfo<'a> {
        &self.guest
    }

    /// Replaces what the guest reports (e.g. after an address change).
    pub fn set_guest_info(&mut self, guest: GuestInfo<'a>) {
        self.guest = guest;
    }

    /// Entries of a table pool in enumeration order (none for AUTO and invalid pools).
    pub fn entries(&self, pool: KvpPool) -> impl Iterator<Item = KvpEntry<'_>> + '_ {
        let p = check_pool(pool).unwrap_or(u8::MAX);
        self.store.in_pool(p).map(|l| l.entry)
    }

    /// Entry number `slot` of a table pool.
    pub fn entry(&self, pool: KvpPool, slot: usize) -> Option<KvpEntry<'_>> {
        self.entries(pool).nth(slot)
    }

    /// Looks a key up in a table pool.
    pub fn get(&self, pool: KvpPool, key: &str) -> Option<KvpEntry<'_>> {
        self.entries(pool).find(|e| e.key().eq_str(key))
    }

    /// Store bytes in use and the capacity `B`.
    pub fn store_usage(&self) -> (usize, usize) {
        (self.store.used, B)
    }

    fn upsert(
        &mut self,
        pool: KvpPool,
        key: Utf16Str<'_>,
        value_type: KvpValueType,
        value: &[u8],
    ) -> Result<usize, IcError> {
        let p = check_pool(pool)?;
        self.store
            .upsert(p, key, value_type, value)
            .map_err(|()| IcError::PoolFull(pool))
    }

    /// Publishes a string value from the OS (typically into GUEST or AUTO_INTERNAL). Keys must be
    /// non-empty and ≤ 255 UTF-16 units, values ≤ 1023 units. AUTO is answered from
    /// [`GuestInfo`] and cannot be written. Returns the entry's slot in its pool.
    pub fn set_local(&mut self, pool: KvpPool, key: &str, value: &str) -> Result<usize, IcError> {
        check_pool(pool)?;
        if pool == KvpPool::AUTO {
            return Err(IcError::PoolNotWritable(pool));
        }
        let mut kbuf = [0u8; KVP_MAX_KEY_SIZE];
        let ksize = utf16::encode_str(key, &mut kbuf)?;
        let mut vbuf = [0u8; KVP_MAX_VALUE_SIZE];
        let vsize = utf16::encode_str(value, &mut vbuf)?;
        let k = Utf16Str::from_units_le(&kbuf[..ksize - 2]).ok_or(IcError::UnterminatedString)?;
        if k.is_empty() {
            return Err(IcError::BadStringSize {
                size: 0,
                max: KVP_MAX_KEY_SIZE,
            });
        }
        self.upsert(pool, k, KvpValueType::REG_SZ, &vbuf[..vsize - 2])
    }

    /// Removes a key from a table pool; whether it was there.
    pub fn remove_local(&mut self, pool: KvpPool, key: &str) -> bool {
        let Ok(p) = check_pool(pool) else {
            return false;
        };
        let found = self
            .store
            .in_pool(p)
            .find(|l| l.entry.key().eq_str(key))
            .map(|l| (l.pos, l.len));
        match found {
            Some((pos, len)) => {
                self.store.remove_at(pos, len);
                true
            }
            None => false,
        }
    }

    fn wire_pool(pool: u8) -> Result<(KvpPool, u8), IcError> {
        let p = KvpPool(pool);
        if p == KvpPool::AUTO_INTERNAL {
            return Err(IcError::InvalidPool(p));
        }
        Ok((p, check_pool(p)?))
    }

    fn host_writable(pool: KvpPool) -> Result<(), IcError> {
        if pool == KvpPool::AUTO {
            Err(IcError::PoolNotWritable(pool))
        } else {
            Ok(())
        }
    }

    fn decode_key(field: &[u8], size: u32) -> Result<Utf16Str<'_>, IcError> {
        let k = utf16::decode(field, size)?;
        if k.is_empty() {
            return Err(IcError::BadStringSize {
                size,
                max: field.len(),
            });
        }
        Ok(k)
    }

    fn op_get(&mut self, payload: &mut [u8]) -> Result<Outcome, IcError> {
        let m = KvpGetSetMsg::mut_from_prefix(payload)
            .map_err(|_| truncated::<KvpGetSetMsg>())?
            .0;
        let (pool, p) = Self::wire_pool(m.header.pool)?;
        let key = Self::decode_key(&m.record.key, m.record.key_size.get())?;
        if pool == KvpPool::AUTO {
            let found = (0..AUTO_POOL_KEYS.len())
                .filter_map(|i| self.guest.auto_entry(i))
                .find(|(k, _)| key.eq_str(k));
            let Some((_, value)) = found else {
                return Ok(Outcome::fail(IcStatus::NO_MORE_ITEMS, IcError::KeyNotFound));
            };
            let size = utf16::encode_str(value, &mut m.record.value)?;
            m.record.value_type.set(KvpValueType::REG_SZ.0);
            m.record.value_size.set(size as u32);
            return Ok(Outcome::ok(IcEvent::None));
        }
        let Some(found) = self.store.in_pool(p).find(|l| l.entry.key() == key) else {
            return Ok(Outcome::fail(IcStatus::NO_MORE_ITEMS, IcError::KeyNotFound));
        };
        found.entry.write_value(&mut m.record);
        Ok(Outcome::ok(IcEvent::None))
    }

    fn op_set(&mut self, payload: &mut [u8]) -> Result<Outcome, IcError> {
        let m = KvpGetSetMsg::ref_from_prefix(payload)
            .map_err(|_| truncated::<KvpGetSetMsg>())?
            .0;
        let (pool, _) = Self::wire_pool(m.header.pool)?;
        Self::host_writable(pool)?;
        let key = Self::decode_key(&m.record.key, m.record.key_size.get())?;
        let value_type = KvpValueType(m.record.value_type.get());
        let size = m.record.value_size.get();
        let bad = IcError::BadValue {
            value_type: value_type.0,
            size,
        };
        let value: &[u8] = if value_type.is_string() {
            utf16::decode(&m.record.value, size)?.as_bytes()
        } else if value_type == KvpValueType::REG_DWORD && size == 4 {
            &m.record.value[..4]
        } else if (value_type == KvpValueType::REG_QWORD
            || value_type == KvpValueType::REG_U64_LINUX)
            && size == 8
        {
            &m.record.value[..8]
        } else {
            return Err(bad);
        };
        match self.upsert(pool, key, value_type, value) {
            Ok(slot) => Ok(Outcome::ok(IcEvent::KvpSetByHost { pool, slot })),
            Err(e @ IcError::PoolFull(_)) => Ok(Outcome::fail(IcStatus::DISK_FULL, e)),
            Err(e) => Err(e),
        }
    }

    fn op_delete(&mut self, payload: &mut [u8]) -> Result<Outcome, IcError> {
        let m = KvpDeleteMsg::ref_from_prefix(payload)
            .map_err(|_| truncated::<KvpDeleteMsg>())?
            .0;
        let (pool, p) = Self::wire_pool(m.header.pool)?;
        Self::host_writable(pool)?;
        let key = Self::decode_key(&m.key, m.key_size.get())?;
        match self.store.find(p, key) {
            Some((_, pos, len)) => {
                self.store.remove_at(pos, len);
                Ok(Outcome::ok(IcEvent::KvpDeletedByHost { pool }))
            }
            None => Ok(Outcome::fail(IcStatus::NO_MORE_ITEMS, IcError::KeyNotFound)),
        }
    }

    fn op_enumerate(&mut self, payload: &mut [u8]) -> Result<Outcome, IcError> {
        let m = KvpEnumerateMsg::mut_from_prefix(payload)
            .map_err(|_| truncated::<KvpEnumerateMsg>())?
            .0;
        let (pool, p) = Self::wire_pool(m.header.pool)?;
        let index = usize::try_from(m.index.get()).unwrap_or(usize::MAX);
        let no_more = Outcome::fail(IcStatus::NO_MORE_ITEMS, IcError::NoMoreItems);
        let rec = &mut m.record;
        if pool == KvpPool::AUTO {
            let Some((key, value)) = self.guest.auto_entry(index) else {
                return Ok(no_more);
            };
            let ksize = utf16::encode_str(key, &mut rec.key)?;
            let vsize = utf16::encode_str(value, &mut rec.value)?;
            rec.key_size.set(ksize as u32);
            rec.value_size.set(vsize as u32);
            rec.value_type.set(KvpValueType::REG_SZ.0);
        } else {
            let Some(e) = self.store.in_pool(p).nth(index).map(|l| l.entry) else {
                return Ok(no_more);
            };
            let ksize = utf16::encode_utf16(e.key(), &mut rec.key)?;
            rec.key_size.set(ksize as u32);
            e.write_value(rec);
        }
        Ok(Outcome::ok(IcEvent::None))
    }

    fn op_ip_info(&mut self, op: KvpOperation, payload: &mut [u8]) -> Result<Outcome, IcError> {
        let m = KvpIpInfoMsg::mut_from_prefix(payload)
            .map_err(|_| truncated::<KvpIpInfoMsg>())?
            .0;
        let id = utf16::decode_field(&m.adapter_id)?;
        let adapter = self
            .guest
            .adapters
            .iter()
            .find(|a| id.eq_ignore_ascii_case(a.adapter_id));
        if op == KvpOperation::SET_IP_INFO {
            return Ok(match adapter {
                Some(_) => Outcome::fail(IcStatus::NOT_SUPPORTED, IcError::Refused),
                None => Outcome::fail(IcStatus::GUID_NOT_FOUND, IcError::AdapterNotFound),
            });
        }
        let Some(a) = adapter else {
            return Ok(Outcome::fail(IcStatus::E_FAIL, IcError::AdapterNotFound));
        };
        m.addr_family = a.family.0.0;
        m.dhcp_enabled = u8::from(a.dhcp_enabled);
        utf16::encode_str(a.ip_addresses, &mut m.ip_addr)?;
        utf16::encode_str(a.subnets, &mut m.sub_net)?;
        utf16::encode_str(a.gateways, &mut m.gate_way)?;
        utf16::encode_str(a.dns_servers, &mut m.dns_addr)?;
        Ok(Outcome::ok(IcEvent::None))
    }
}

fn truncated<T>() -> IcError {
    IcError::TruncatedPayload {
        msg_type: IcMsgType::KVP_EXCHANGE,
        needed: core::mem::size_of::<T>(),
        got: 0,
    }
}

impl<const N: usize> IcHandler for Kvp<'_, N> {
    const MSG_TYPE: IcMsgType = IcMsgType::KVP_EXCHANGE;
    const DEVICE_CLASS: DeviceClass = DeviceClass::Kvp;

    fn service_versions(&self) -> &[IcVersion] {
        KVP_VERSIONS
    }

    /// Every KVP request is answered (the host serialises KVP transactions and would otherwise
    /// wait for its timeout): malformed requests get E_FAIL and a `Rejected` event.
    fn handle_message(&mut self, _: IcVersion, payload: &mut [u8]) -> Result<Outcome, IcError> {
        let got = payload.len();
        let result = match payload.first().copied().map(KvpOperation) {
            None => Err(IcError::TruncatedPayload {
                msg_type: Self::MSG_TYPE,
                needed: 2,
                got,
            }),
            Some(KvpOperation::GET) => self.op_get(payload),
            Some(KvpOperation::SET) => self.op_set(payload),
            Some(KvpOperation::DELETE) => self.op_delete(payload),
            Some(KvpOperation::ENUMERATE) => self.op_enumerate(payload),
            Some(op @ (KvpOperation::GET_IP_INFO | KvpOperation::SET_IP_INFO)) => {
                self.op_ip_info(op, payload)
            }
            Some(op) => Err(IcError::UnknownKvpOperation(op)),
        };
        Ok(match result {
            Ok(o) => o,
            Err(IcError::TruncatedPayload {
                msg_type, needed, ..
            }) => {
                let e = IcError::TruncatedPayload {
                    msg_type,
                    needed,
                    got,
                };
                log::warn!("kvp: {e}");
                Outcome::fail(IcStatus::E_FAIL, e)
            }
            Err(e) => {
                log::warn!("kvp: {e}");
                Outcome::fail(IcStatus::E_FAIL, e)
            }
        })
    }
}
