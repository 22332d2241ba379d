//! KVP / data exchange (icmsgtype 2, devices §6.6): host operations on command, one at a time;
//! the guest's answers are parsed and kept.
//!
//! Payload layouts (offsets in the payload after the 28-byte header): operation u8 @0, pool u8
//! @1, two zero bytes, then the body. Key/value record = value_type u32, key_size u32,
//! value_size u32, key\[512\] UTF-16LE, value\[2048\]. GET/SET = header + record (2576 bytes);
//! ENUMERATE = header + index u32 + record (2580); DELETE = header + key_size u32 + key\[512\]
//! (520); GET_IP_INFO (string form, KVP ≤ 4.0) = op, pool, then the 7426-byte IP record at
//! offset 2 (7428).

use std::collections::VecDeque;

use super::engine::{IcHandle, IcService};
use super::wire::{
    E_FAIL, IcVersion, MSG_KVP, NO_MORE_ITEMS, S_OK, get_utf16z, put_utf16z, u32_at, u64_at,
};

/// Key field size in bytes (UTF-16LE, NUL included).
pub const KVP_MAX_KEY_SIZE: usize = 512;
/// Value field size in bytes.
pub const KVP_MAX_VALUE_SIZE: usize = 2048;
/// Key/value record size: 12 + 512 + 2048.
pub const KVP_RECORD_SIZE: usize = 12 + KVP_MAX_KEY_SIZE + KVP_MAX_VALUE_SIZE;
/// GET / SET payload size.
pub const KVP_GET_SET_SIZE: usize = 4 + KVP_RECORD_SIZE;
/// ENUMERATE payload size.
pub const KVP_ENUMERATE_SIZE: usize = 8 + KVP_RECORD_SIZE;
/// DELETE payload size.
pub const KVP_DELETE_SIZE: usize = 8 + KVP_MAX_KEY_SIZE;
/// GET_IP_INFO payload size (string form).
pub const KVP_IP_INFO_SIZE: usize = 7428;

/// Operation GET.
pub const KVP_OP_GET: u8 = 0;
/// Operation SET.
pub const KVP_OP_SET: u8 = 1;
/// Operation DELETE.
pub const KVP_OP_DELETE: u8 = 2;
/// Operation ENUMERATE.
pub const KVP_OP_ENUMERATE: u8 = 3;
/// Operation GET_IP_INFO.
pub const KVP_OP_GET_IP_INFO: u8 = 4;

/// Pool EXTERNAL: data the host administrator pushes.
pub const POOL_EXTERNAL: u8 = 0;
/// Pool GUEST: data the guest publishes.
pub const POOL_GUEST: u8 = 1;
/// Pool AUTO: guest intrinsic data (OS name, FQDN…), enumerated by the host.
pub const POOL_AUTO: u8 = 2;
/// Pool AUTO_EXTERNAL: host intrinsic data (host name, VM name…).
pub const POOL_AUTO_EXTERNAL: u8 = 3;

/// Value type REG_SZ.
pub const REG_SZ: u32 = 1;
/// Value type REG_EXPAND_SZ.
pub const REG_EXPAND_SZ: u32 = 2;
/// Value type REG_DWORD.
pub const REG_DWORD: u32 = 4;
/// Value type Linux calls "U64".
pub const REG_U64_LINUX: u32 = 8;
/// Value type REG_QWORD.
pub const REG_QWORD: u32 = 11;

// IP-info field offsets in the payload.
const IP_ADAPTER: usize = 2;
const IP_FAMILY: usize = 258;
const IP_DHCP: usize = 259;
const IP_ADDRS: usize = 260;
const IP_SUBNETS: usize = 2308;
const IP_GATEWAYS: usize = 4356;
const IP_DNS: usize = 5380;

/// A KVP value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvpValue {
    /// REG_SZ (or REG_EXPAND_SZ when parsed) string.
    String(String),
    /// REG_DWORD.
    Dword(u32),
    /// REG_QWORD (or Linux's type 8).
    Qword(u64),
    /// Any other type: (value_type, value_size bytes).
    Other(u32, Vec<u8>),
}

/// A host KVP operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvpRequest {
    /// GET `key` from `pool`.
    Get {
        /// Pool.
        pool: u8,
        /// Key.
        key: String,
    },
    /// SET `key` = `value` in `pool`.
    Set {
        /// Pool.
        pool: u8,
        /// Key.
        key: String,
        /// Value.
        value: KvpValue,
    },
    /// DELETE `key` from `pool`.
    Delete {
        /// Pool.
        pool: u8,
        /// Key.
        key: String,
    },
    /// ENUMERATE entry `index` of `pool`.
    Enumerate {
        /// Pool.
        pool: u8,
        /// Index.
        index: u32,
    },
    /// GET_IP_INFO for `adapter` (string form).
    GetIpInfo {
        /// Adapter id (the NIC's GUID / MAC identifier).
        adapter: String,
    },
}

/// An adapter's IP configuration as the guest reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpInfo {
    /// Adapter id.
    pub adapter_id: String,
    /// 0 none, 1 IPv4, 2 IPv6, 3 both.
    pub address_family: u8,
    /// DHCP enabled.
    pub dhcp_enabled: bool,
    /// Semicolon-separated addresses.
    pub addresses: String,
    /// Semicolon-separated subnets.
    pub subnets: String,
    /// Semicolon-separated gateways.
    pub gateways: String,
    /// Semicolon-separated DNS servers.
    pub dns_servers: String,
}

/// The guest's answer to one [`KvpRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvpReply {
    /// The request.
    pub request: KvpRequest,
    /// HRESULT.
    pub status: u32,
    /// Key (ENUMERATE, GET) when the status is S_OK.
    pub key: Option<String>,
    /// Value (ENUMERATE, GET) when the status is S_OK.
    pub value: Option<KvpValue>,
    /// IP configuration (GET_IP_INFO) when the status is S_OK.
    pub ip_info: Option<IpInfo>,
}

impl KvpReply {
    /// Status S_OK.
    pub fn is_ok(&self) -> bool {
        self.status == S_OK
    }

    /// Status "no more items" (0x80070103): enumeration finished / key missing.
    pub fn is_no_more_items(&self) -> bool {
        self.status == NO_MORE_ITEMS
    }

    /// The value as a string, if it is one.
    pub fn value_str(&self) -> Option<&str> {
        match &self.value {
            Some(KvpValue::String(s)) => Some(s),
            _ => None,
        }
    }
}

/// Host KVP service.
#[derive(Clone, Debug, Default)]
pub struct Kvp {
    queue: VecDeque<KvpRequest>,
    in_flight: Option<KvpRequest>,
    replies: Vec<KvpReply>,
}

fn put_record(p: &mut [u8], at: usize, key: &str, value: Option<&KvpValue>) {
    let key_size = put_utf16z(&mut p[at + 12..at + 12 + KVP_MAX_KEY_SIZE], key);
    let value_field = &mut p[at + 524..at + 524 + KVP_MAX_VALUE_SIZE];
    let (value_type, value_size) = match value {
        None => (0, 0),
        Some(KvpValue::String(s)) => (REG_SZ, put_utf16z(value_field, s)),
        Some(KvpValue::Dword(v)) => {
            value_field[..4].copy_from_slice(&v.to_le_bytes());
            (REG_DWORD, 4)
        }
        Some(KvpValue::Qword(v)) => {
            value_field[..8].copy_from_slice(&v.to_le_bytes());
            (REG_QWORD, 8)
        }
        Some(KvpValue::Other(t, bytes)) => {
            let n = bytes.len().min(KVP_MAX_VALUE_SIZE);
            value_field[..n].copy_from_slice(&bytes[..n]);
            (*t, n as u32)
        }
    };
    p[at..at + 4].copy_from_slice(&value_type.to_le_bytes());
    p[at + 4..at + 8].copy_from_slice(&key_size.to_le_bytes());
    p[at + 8..at + 12].copy_from_slice(&value_size.to_le_bytes());
}

/// Parses the record at `at`: (key, value), recording size violations.
fn parse_record(b: &[u8], at: usize, errors: &mut Vec<String>) -> Option<(String, KvpValue)> {
    let (Some(value_type), Some(key_size), Some(value_size)) =
        (u32_at(b, at), u32_at(b, at + 4), u32_at(b, at + 8))
    else {
        errors.push("KVP answer too short for the key/value record".into());
        return None;
    };
    let (key_size, value_size) = (key_size as usize, value_size as usize);
    if key_size > KVP_MAX_KEY_SIZE || value_size > KVP_MAX_VALUE_SIZE {
        errors.push(format!(
            "KVP answer key_size {key_size} / value_size {value_size} exceed 512 / 2048"
        ));
        return None;
    }
    let key_bytes = b.get(at + 12..at + 12 + key_size)?;
    let value_bytes = b.get(at + 524..at + 524 + value_size)?;
    if !key_size.is_multiple_of(2) {
        errors.push(format!("KVP answer key_size {key_size} is odd (UTF-16)"));
    }
    let value = match value_type {
        REG_SZ | REG_EXPAND_SZ => {
            if !value_size.is_multiple_of(2) {
                errors.push(format!("KVP answer string value_size {value_size} is odd"));
            }
            KvpValue::String(get_utf16z(value_bytes))
        }
        REG_DWORD => KvpValue::Dword(u32_at(value_bytes, 0).unwrap_or_else(|| {
            errors.push(format!("KVP REG_DWORD with value_size {value_size}"));
            0
        })),
        REG_QWORD | REG_U64_LINUX => KvpValue::Qword(u64_at(value_bytes, 0).unwrap_or_else(|| {
            errors.push(format!("KVP 64-bit value with value_size {value_size}"));
            0
        })),
        t => KvpValue::Other(t, value_bytes.to_vec()),
    };
    Some((get_utf16z(key_bytes), value))
}

fn field_str(b: &[u8], at: usize, len: usize) -> String {
    b.get(at..at + len).map(get_utf16z).unwrap_or_default()
}

impl Kvp {
    /// A KVP service with nothing queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a request (sent once negotiated and idle).
    pub fn request(&mut self, request: KvpRequest) {
        self.queue.push_back(request);
    }

    /// Requests queued or in flight.
    pub fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.in_flight.is_some())
    }

    /// The most recent answer.
    pub fn last_reply(&self) -> Option<&KvpReply> {
        self.replies.last()
    }

    /// Every answer, in order.
    pub fn replies(&self) -> &[KvpReply] {
        &self.replies
    }

    /// Encodes `request` as a KVP payload.
    pub fn encode(request: &KvpRequest) -> Vec<u8> {
        match request {
            KvpRequest::Get { pool, key } => {
                let mut p = vec![0u8; KVP_GET_SET_SIZE];
                p[0] = KVP_OP_GET;
                p[1] = *pool;
                put_record(&mut p, 4, key, None);
                p
            }
            KvpRequest::Set { pool, key, value } => {
                let mut p = vec![0u8; KVP_GET_SET_SIZE];
                p[0] = KVP_OP_SET;
                p[1] = *pool;
                put_record(&mut p, 4, key, Some(value));
                p
            }
            KvpRequest::Delete { pool, key } => {
                let mut p = vec![0u8; KVP_DELETE_SIZE];
                p[0] = KVP_OP_DELETE;
                p[1] = *pool;
                let n = put_utf16z(&mut p[8..], key);
                p[4..8].copy_from_slice(&n.to_le_bytes());
                p
            }
            KvpRequest::Enumerate { pool, index } => {
                let mut p = vec![0u8; KVP_ENUMERATE_SIZE];
                p[0] = KVP_OP_ENUMERATE;
                p[1] = *pool;
                p[4..8].copy_from_slice(&index.to_le_bytes());
                p
            }
            KvpRequest::GetIpInfo { adapter } => {
                let mut p = vec![0u8; KVP_IP_INFO_SIZE];
                p[0] = KVP_OP_GET_IP_INFO;
                put_utf16z(&mut p[IP_ADAPTER..IP_FAMILY], adapter);
                p
            }
        }
    }
}

impl IcService for Kvp {
    const MSG_TYPE: u16 = MSG_KVP;
    const NAME: &'static str = "kvp";

    /// WS2016+: 3.0 and 4.0 (5.0, OpenVMM's binary IP info, is not modelled).
    fn default_versions() -> Vec<IcVersion> {
        vec![IcVersion::new(3, 0), IcVersion::new(4, 0)]
    }

    fn next_request(&mut self, _version: IcVersion) -> Option<Vec<u8>> {
        let r = self.queue.pop_front()?;
        let p = Self::encode(&r);
        self.in_flight = Some(r);
        Some(p)
    }

    fn on_response(
        &mut self,
        _version: IcVersion,
        request: &[u8],
        status: u32,
        response: &[u8],
        errors: &mut Vec<String>,
    ) {
        let Some(req) = self.in_flight.take() else {
            return;
        };
        let mut reply = KvpReply {
            request: req.clone(),
            status,
            key: None,
            value: None,
            ip_info: None,
        };
        if !matches!(status, S_OK | E_FAIL | NO_MORE_ITEMS) {
            errors.push(format!(
                "KVP answer status {status:#x}, expected S_OK, E_FAIL or 0x80070103"
            ));
        }
        if response.get(..2) != request.get(..2) {
            errors.push(format!(
                "KVP answer operation/pool {:?} not echoed (sent {:?})",
                response.get(..2),
                request.get(..2)
            ));
        }
        match &req {
            KvpRequest::Set { .. } | KvpRequest::Delete { .. }
                if response.get(..request.len()) != Some(request) =>
            {
                errors.push("KVP SET/DELETE answer changed the request body".into());
            }
            KvpRequest::Get { .. } if status == S_OK => {
                // The key stays as sent; value_type/value_size/value are the guest's.
                if response.get(16..16 + KVP_MAX_KEY_SIZE) != request.get(16..16 + KVP_MAX_KEY_SIZE)
                {
                    errors.push("KVP GET answer changed the key".into());
                }
                if let Some((key, value)) = parse_record(response, 4, errors) {
                    reply.key = Some(key);
                    reply.value = Some(value);
                }
            }
            KvpRequest::Enumerate { index, .. } => {
                if u32_at(response, 4) != Some(*index) {
                    errors.push(format!(
                        "KVP ENUMERATE answer index {:?}, sent {index}",
                        u32_at(response, 4)
                    ));
                }
                if status == S_OK
                    && let Some((key, value)) = parse_record(response, 8, errors)
                {
                    if key.is_empty() {
                        errors.push(format!("KVP ENUMERATE index {index}: S_OK with empty key"));
                    }
                    reply.key = Some(key);
                    reply.value = Some(value);
                }
            }
            KvpRequest::GetIpInfo { .. } if status == S_OK => {
                if response.len() < KVP_IP_INFO_SIZE {
                    errors.push(format!(
                        "KVP GET_IP_INFO answer of {} bytes, needs {KVP_IP_INFO_SIZE}",
                        response.len()
                    ));
                } else {
                    reply.ip_info = Some(IpInfo {
                        adapter_id: field_str(response, IP_ADAPTER, 256),
                        address_family: response[IP_FAMILY],
                        dhcp_enabled: response[IP_DHCP] != 0,
                        addresses: field_str(response, IP_ADDRS, 2048),
                        subnets: field_str(response, IP_SUBNETS, 2048),
                        gateways: field_str(response, IP_GATEWAYS, 1024),
                        dns_servers: field_str(response, IP_DNS, 2048),
                    });
                }
            }
            _ => {}
        }
        self.replies.push(reply);
    }

    fn on_close(&mut self) {
        if let Some(r) = self.in_flight.take() {
            self.queue.push_front(r);
        }
    }
}

impl IcHandle<Kvp> {
    /// Queues SET `key` = `value` (REG_SZ) in `pool`.
    pub fn set(&self, pool: u8, key: &str, value: &str) {
        self.lock().service_mut().request(KvpRequest::Set {
            pool,
            key: key.into(),
            value: KvpValue::String(value.into()),
        });
    }

    /// Queues GET `key` from `pool`.
    pub fn get(&self, pool: u8, key: &str) {
        self.lock().service_mut().request(KvpRequest::Get {
            pool,
            key: key.into(),
        });
    }

    /// Queues DELETE `key` from `pool`.
    pub fn delete(&self, pool: u8, key: &str) {
        self.lock().service_mut().request(KvpRequest::Delete {
            pool,
            key: key.into(),
        });
    }

    /// Queues ENUMERATE `index` of `pool`.
    pub fn enumerate(&self, pool: u8, index: u32) {
        self.lock()
            .service_mut()
            .request(KvpRequest::Enumerate { pool, index });
    }

    /// Queues GET_IP_INFO for `adapter`.
    pub fn get_ip_info(&self, adapter: &str) {
        self.lock().service_mut().request(KvpRequest::GetIpInfo {
            adapter: adapter.into(),
        });
    }

    /// The most recent answer.
    pub fn last_reply(&self) -> Option<KvpReply> {
        self.lock().service().last_reply().cloned()
    }

    /// Answers received from the guest so far.
    pub fn reply_count(&self) -> usize {
        self.lock().service().replies().len()
    }
}
