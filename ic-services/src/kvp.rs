//! Key-value pair exchange (icmsgtype 2, devices §6.6).
//!
//! The host reads and writes string (or integer) values in five pools. Pool AUTO (2) holds the
//! guest's intrinsic data, which this crate answers from the [`GuestInfo`] the OS fills, in the
//! enumeration order Linux uses ([`AUTO_POOL_KEYS`]). Pools EXTERNAL (0), GUEST (1) and
//! AUTO_EXTERNAL (3) are fixed-capacity tables the host may SET, DELETE, GET and ENUMERATE;
//! the OS publishes its own values with [`Kvp::set_local`]. AUTO_INTERNAL (4) is local only.
//! GET_IP_INFO is answered from [`GuestInfo::adapters`]; SET_IP_INFO is refused with
//! ERROR_NOT_SUPPORTED (the OS configures its own network).
//!
//! Status codes follow Linux: a missing key (GET, DELETE), an enumeration index past the end,
//! and a failed SET answer `NO_MORE_ITEMS` (Linux `HV_S_CONT`); malformed requests E_FAIL; a full
//! table `DISK_FULL`. Only the string IP-info form (service ≤ 4.0) is offered, so the binary
//! KVP 5.0 form never arrives.

use crate::protocol::{
    IcVersion, KVP_MAX_KEY_SIZE, KVP_MAX_VALUE_SIZE, KvpAddressFamily, KvpDeleteMsg,
    KvpEnumerateMsg, KvpGetSetMsg, KvpIpInfoMsg, KvpOperation, KvpPool, KvpRecord, KvpValueType,
};
use crate::utf16::{self, Utf16Str};
use crate::{IcError, IcEvent, IcHandler, IcMsgType, IcStatus, Outcome};
use vmbus_guest::protocol::DeviceClass;
use zerocopy::FromBytes;

/// KVP service versions in preference order (Linux `kvp_versions`: 4.0, 3.0, 1.0).
pub const KVP_VERSIONS: &[IcVersion] = &[
    IcVersion::new(4, 0),
    IcVersion::new(3, 0),
    IcVersion::new(1, 0),
];

/// Default entries per table pool.
pub const DEFAULT_POOL_CAPACITY: usize = 16;

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

/// One stored key/value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvpEntry {
    value_type: KvpValueType,
    /// Key code units (LE bytes) without the NUL: at most 255 units.
    key: heapless::Vec<u8, { KVP_MAX_KEY_SIZE - 2 }>,
    /// String code units without the NUL, or the integer's LE bytes.
    value: heapless::Vec<u8, KVP_MAX_VALUE_SIZE>,
}

impl KvpEntry {
    fn new(key: Utf16Str<'_>, value_type: KvpValueType, value: &[u8]) -> Result<Self, IcError> {
        let mut e = Self {
            value_type,
            key: heapless::Vec::new(),
            value: heapless::Vec::new(),
        };
        e.key
            .extend_from_slice(key.as_bytes())
            .map_err(|_| IcError::StringTooLong)?;
        e.value
            .extend_from_slice(value)
            .map_err(|_| IcError::StringTooLong)?;
        Ok(e)
    }

    /// The key.
    pub fn key(&self) -> Utf16Str<'_> {
        Utf16Str::from_units_le(&self.key).unwrap_or_default()
    }

    /// The value type as the host sent it.
    pub fn value_type(&self) -> KvpValueType {
        self.value_type
    }

    /// The value.
    pub fn value(&self) -> KvpValue<'_> {
        match self.value.len() {
            4 if self.value_type == KvpValueType::REG_DWORD => KvpValue::U32(u32::from_le_bytes([
                self.value[0],
                self.value[1],
                self.value[2],
                self.value[3],
            ])),
            8 if !self.value_type.is_string() => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.value);
                KvpValue::U64(u64::from_le_bytes(b))
            }
            _ => KvpValue::String(Utf16Str::from_units_le(&self.value).unwrap_or_default()),
        }
    }

    /// Writes type, sizes and value into a record (the key is left as it is).
    fn write_value(&self, rec: &mut KvpRecord) {
        rec.value_type.set(self.value_type.0);
        rec.value.fill(0);
        rec.value[..self.value.len()].copy_from_slice(&self.value);
        let size = if self.value_type.is_string() {
            self.value.len() + 2
        } else {
            self.value.len()
        };
        rec.value_size.set(size as u32);
    }
}

/// The KVP service: guest-provided data plus fixed-capacity tables of `N` entries per pool.
#[derive(Debug)]
pub struct Kvp<'a, const N: usize = DEFAULT_POOL_CAPACITY> {
    guest: GuestInfo<'a>,
    pools: [heapless::Vec<KvpEntry, N>; KvpPool::COUNT],
}

fn check_pool(pool: KvpPool) -> Result<usize, IcError> {
    let i = usize::from(pool.0);
    if i < KvpPool::COUNT {
        Ok(i)
    } else {
        Err(IcError::InvalidPool(pool))
    }
}

impl<'a, const N: usize> Kvp<'a, N> {
    /// A KVP service answering from `guest`, with empty tables.
    pub const fn new(guest: GuestInfo<'a>) -> Self {
        Self {
            guest,
            pools: [const { heapless::Vec::new() }; KvpPool::COUNT],
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

    /// Entries of a table pool in enumeration order (empty for AUTO and invalid pools).
    pub fn entries(&self, pool: KvpPool) -> &[KvpEntry] {
        match check_pool(pool) {
            Ok(i) => &self.pools[i],
            Err(_) => &[],
        }
    }

    /// Entry number `slot` of a table pool.
    pub fn entry(&self, pool: KvpPool, slot: usize) -> Option<&KvpEntry> {
        self.entries(pool).get(slot)
    }

    /// Looks a key up in a table pool.
    pub fn get(&self, pool: KvpPool, key: &str) -> Option<&KvpEntry> {
        self.entries(pool).iter().find(|e| e.key().eq_str(key))
    }

    fn find(&self, pool: usize, key: Utf16Str<'_>) -> Option<usize> {
        self.pools[pool].iter().position(|e| e.key() == key)
    }

    fn upsert(&mut self, pool: KvpPool, entry: KvpEntry) -> Result<usize, IcError> {
        let p = check_pool(pool)?;
        if let Some(i) = self.find(p, entry.key()) {
            self.pools[p][i] = entry;
            return Ok(i);
        }
        self.pools[p]
            .push(entry)
            .map_err(|_| IcError::PoolFull(pool))?;
        Ok(self.pools[p].len() - 1)
    }

    /// Publishes a string value from the OS (typically into GUEST or AUTO_INTERNAL). Keys must be
    /// non-empty and ≤ 255 UTF-16 units, values ≤ 1023 units. AUTO is answered from
    /// [`GuestInfo`] and cannot be written.
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
        let entry = KvpEntry::new(k, KvpValueType::REG_SZ, &vbuf[..vsize - 2])?;
        self.upsert(pool, entry)
    }

    /// Removes a key from a table pool; whether it was there.
    pub fn remove_local(&mut self, pool: KvpPool, key: &str) -> bool {
        let Ok(p) = check_pool(pool) else {
            return false;
        };
        match self.pools[p].iter().position(|e| e.key().eq_str(key)) {
            Some(i) => {
                self.pools[p].remove(i);
                true
            }
            None => false,
        }
    }

    fn wire_pool(pool: u8) -> Result<(KvpPool, usize), IcError> {
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
        let Some(i) = self.find(p, key) else {
            return Ok(Outcome::fail(IcStatus::NO_MORE_ITEMS, IcError::KeyNotFound));
        };
        self.pools[p][i].write_value(&mut m.record);
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
        let entry = KvpEntry::new(key, value_type, value)?;
        match self.upsert(pool, entry) {
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
        match self.find(p, key) {
            Some(i) => {
                self.pools[p].remove(i);
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
            let Some(e) = self.pools[p].get(index) else {
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
