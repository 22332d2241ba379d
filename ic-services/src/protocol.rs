//! Wire formats of the integration-component (IC, "util") messages (devices §6).
//!
//! Every IC message is one VMBus in-band packet payload: an 8-byte pipe header, the 20-byte IC
//! message header, then the service payload. All structures are little-endian and packed
//! (alignment 1), so they can be read from and written into any byte offset with `zerocopy`.

use core::fmt;
use static_assertions::const_assert_eq;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the pipe header plus IC message header (Linux `ICMSG_HDR`): the payload offset.
pub const ICMSG_HDR_SIZE: usize = 28;

/// Windows FILETIME of 1970-01-01T00:00:00Z: 100 ns intervals between 1601 and the Unix epoch.
pub const FILETIME_UNIX_EPOCH: u64 = 116_444_736_000_000_000;

/// The 8-byte pipe header in front of every IC message (devices §0.7). Guests echo it.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct PipeHeader {
    /// @0: 1 = data, 2 = partial message.
    pub flags: U32,
    /// @4: number of bytes following this header.
    pub msgsize: U32,
}

/// An IC version pair as it appears on the wire (`struct ic_version`).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct WireVersion {
    /// @0: major.
    pub major: U16,
    /// @2: minor.
    pub minor: U16,
}

/// A framework or service version, `major.minor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IcVersion {
    /// Major number.
    pub major: u16,
    /// Minor number.
    pub minor: u16,
}

impl IcVersion {
    /// Builds `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }
    /// This version in wire form.
    pub fn to_wire(self) -> WireVersion {
        WireVersion {
            major: U16::new(self.major),
            minor: U16::new(self.minor),
        }
    }
    /// The version a wire pair encodes.
    pub fn from_wire(w: WireVersion) -> Self {
        Self {
            major: w.major.get(),
            minor: w.minor.get(),
        }
    }
}

impl fmt::Display for IcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// IC message type (`icmsgtype`, devices §6.1). Open: unknown values are representable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcMsgType(pub u16);

impl IcMsgType {
    /// Version negotiation, common to every service.
    pub const NEGOTIATE: Self = Self(0);
    /// Heartbeat.
    pub const HEARTBEAT: Self = Self(1);
    /// Key-value pair exchange.
    pub const KVP_EXCHANGE: Self = Self(2);
    /// Shutdown.
    pub const SHUTDOWN: Self = Self(3);
    /// Time synchronisation.
    pub const TIMESYNC: Self = Self(4);
    /// Volume shadow copy.
    pub const VSS: Self = Self(5);
    /// Remote desktop virtualisation.
    pub const RDV: Self = Self(6);
    /// Guest interface / file copy.
    pub const FCOPY: Self = Self(7);
    /// VM session.
    pub const VM_SESSION: Self = Self(8);
}

/// HRESULT status in the IC header (`status`), filled by the guest in its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcStatus(pub u32);

impl IcStatus {
    /// Success.
    pub const S_OK: Self = Self(0);
    /// Unspecified failure (Linux `HV_E_FAIL`).
    pub const E_FAIL: Self = Self(0x8000_4005);
    /// `HRESULT_FROM_WIN32(ERROR_NO_MORE_ITEMS)`, Linux `HV_S_CONT`: KVP enumeration finished,
    /// and what Linux's KVP daemon reports for any failed GET/SET/DELETE.
    pub const NO_MORE_ITEMS: Self = Self(0x8007_0103);
    /// `ERROR_NOT_SUPPORTED`.
    pub const NOT_SUPPORTED: Self = Self(0x8007_0032);
    /// `E_INVALIDARG`.
    pub const INVALID_ARG: Self = Self(0x8007_0057);
    /// `ERROR_ALREADY_EXISTS`.
    pub const ALREADY_EXISTS: Self = Self(0x8007_0050);
    /// `ERROR_DISK_FULL`: used here when a fixed-capacity KVP pool is full.
    pub const DISK_FULL: Self = Self(0x8007_0070);
    /// `ERROR_DEVICE_NOT_CONNECTED`.
    pub const DEVICE_NOT_CONNECTED: Self = Self(0x8007_048F);
    /// `ERROR_MACHINE_LOCKED`.
    pub const MACHINE_LOCKED: Self = Self(0x8007_04F7);
    /// `WBEM_E_GUID_NOT_FOUND` (Linux `HV_GUID_NOTFOUND`: no adapter with that id).
    pub const GUID_NOT_FOUND: Self = Self(0x8004_1002);

    /// Whether this is a success code (severity bit clear).
    pub const fn is_success(self) -> bool {
        self.0 & 0x8000_0000 == 0
    }
}

/// Flags of the IC header (`icflags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcFlags(pub u8);

impl IcFlags {
    /// Part of a transaction.
    pub const TRANSACTION: Self = Self(0x1);
    /// A request (host → guest).
    pub const REQUEST: Self = Self(0x2);
    /// A response (guest → host).
    pub const RESPONSE: Self = Self(0x4);
    /// What every guest response carries: TRANSACTION | RESPONSE.
    pub const GUEST_RESPONSE: Self = Self(0x5);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The IC message header after the pipe header (`struct icmsg_hdr`, 20 bytes).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct IcMsgHeader {
    /// @0 (@8 in the packet): framework version.
    pub icverframe: WireVersion,
    /// @4 (@12): message type, [`IcMsgType`].
    pub icmsgtype: U16,
    /// @6 (@14): message (service) version.
    pub icvermsg: WireVersion,
    /// @10 (@18): payload size after the header.
    pub icmsgsize: U16,
    /// @12 (@20): HRESULT, [`IcStatus`].
    pub status: U32,
    /// @16 (@24): IC transaction id.
    pub ictransaction_id: u8,
    /// @17 (@25): [`IcFlags`].
    pub icflags: u8,
    /// @18 (@26): reserved.
    pub reserved: [u8; 2],
}

/// Pipe header plus IC header: the 28 bytes in front of every IC payload.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct IcMessagePrefix {
    /// @0: pipe header.
    pub pipe: PipeHeader,
    /// @8: IC header.
    pub ic: IcMsgHeader,
}

const_assert_eq!(core::mem::size_of::<PipeHeader>(), 8);
const_assert_eq!(core::mem::size_of::<WireVersion>(), 4);
const_assert_eq!(core::mem::size_of::<IcMsgHeader>(), 20);
const_assert_eq!(core::mem::size_of::<IcMessagePrefix>(), ICMSG_HDR_SIZE);
const_assert_eq!(core::mem::offset_of!(IcMessagePrefix, ic), 8);
const_assert_eq!(core::mem::offset_of!(IcMsgHeader, icmsgtype), 4);
const_assert_eq!(core::mem::offset_of!(IcMsgHeader, icvermsg), 6);
const_assert_eq!(core::mem::offset_of!(IcMsgHeader, icmsgsize), 10);
const_assert_eq!(core::mem::offset_of!(IcMsgHeader, status), 12);
const_assert_eq!(core::mem::offset_of!(IcMsgHeader, ictransaction_id), 16);
const_assert_eq!(core::mem::offset_of!(IcMsgHeader, icflags), 17);

/// NEGOTIATE payload head (`struct icmsg_negotiate` without the version array).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct NegotiateHeader {
    /// @0: number of framework versions that follow.
    pub icframe_vercnt: U16,
    /// @2: number of service versions after the framework versions.
    pub icmsg_vercnt: U16,
    /// @4: reserved.
    pub reserved: U32,
}
const_assert_eq!(core::mem::size_of::<NegotiateHeader>(), 8);

/// Hosts may offer at most this many framework (and, separately, service) versions
/// (Linux `IC_VERSION_NEGOTIATION_MAX_VER_COUNT`).
pub const NEGOTIATE_MAX_VERSION_COUNT: usize = 100;

/// Size of the NEGOTIATE response the guest sends: header, counts, two versions.
pub const NEGOTIATE_RESPONSE_SIZE: usize = ICMSG_HDR_SIZE + 8 + 2 * 4;

/// HEARTBEAT payload (`struct heartbeat_msg_data`).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct HeartbeatMsg {
    /// @0: sequence number; the guest answers with it plus one.
    pub seq_num: U64,
    /// @8: reserved (OpenVMM: application state u32 first).
    pub reserved: [U32; 8],
}
const_assert_eq!(core::mem::size_of::<HeartbeatMsg>(), 40);

/// Bytes of a heartbeat payload the guest needs: the sequence number only (the host may not
/// send the reserved area; Linux checks only this much).
pub const HEARTBEAT_MIN_PAYLOAD: usize = 8;

/// SHUTDOWN payload (`struct shutdown_msg_data`).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct ShutdownMsg {
    /// @0: reason code (0x80000000 = planned).
    pub reason_code: U32,
    /// @4: seconds the host waits.
    pub timeout_seconds: U32,
    /// @8: [`ShutdownFlags`] bits.
    pub flags: U32,
    /// @12: display message (not interpreted).
    pub display_message: [u8; 2048],
}
const_assert_eq!(core::mem::size_of::<ShutdownMsg>(), 2060);
const_assert_eq!(core::mem::offset_of!(ShutdownMsg, flags), 8);

/// Shutdown request flags (`flags` @8 of the shutdown payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShutdownFlags(pub u32);

impl ShutdownFlags {
    /// Force: do not wait for applications.
    pub const FORCE: u32 = 0x1;
    /// Restart instead of power off (service 3.1+).
    pub const RESTART: u32 = 0x2;
    /// Hibernate instead of power off (service 3.2+).
    pub const HIBERNATE: u32 = 0x4;
}

/// Time-sync flags (`flags` byte). Open: unknown values are representable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeSyncFlags(pub u8);

impl TimeSyncFlags {
    /// Probe: just answer.
    pub const PROBE: Self = Self(0);
    /// Set the clock now (after boot, resume, restore).
    pub const SYNC: Self = Self(1);
    /// Periodic sample, a hint for gradual adjustment.
    pub const SAMPLE: Self = Self(2);
    /// Whether the SYNC bit is set.
    pub const fn is_sync(self) -> bool {
        self.0 & Self::SYNC.0 != 0
    }
    /// Whether the SAMPLE bit is set.
    pub const fn is_sample(self) -> bool {
        self.0 & Self::SAMPLE.0 != 0
    }
}

/// TIMESYNC payload for service versions below 4 (`struct ictimesync_data`, 25 bytes packed).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct TimeSyncMsgV3 {
    /// @0: host UTC, 100 ns since 1601.
    pub parent_time: U64,
    /// @8: child time (unused).
    pub child_time: U64,
    /// @16: round trip time (unused).
    pub round_trip_time: U64,
    /// @24: [`TimeSyncFlags`].
    pub flags: u8,
}
const_assert_eq!(core::mem::size_of::<TimeSyncMsgV3>(), 25);

/// TIMESYNC payload for service version 4 (`struct ictimesync_ref_data`, 22 bytes packed).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct TimeSyncMsgV4 {
    /// @0: host UTC, 100 ns since 1601, sampled at `vm_reference_time`.
    pub parent_time: U64,
    /// @8: partition reference counter (100 ns) when `parent_time` was sampled.
    pub vm_reference_time: U64,
    /// @16: [`TimeSyncFlags`].
    pub flags: u8,
    /// @17: leap-second flags.
    pub leap_flags: u8,
    /// @18: NTP stratum of the host clock.
    pub stratum: u8,
    /// @19: reserved.
    pub reserved: [u8; 3],
}
const_assert_eq!(core::mem::size_of::<TimeSyncMsgV4>(), 22);
const_assert_eq!(core::mem::offset_of!(TimeSyncMsgV4, flags), 16);

/// KVP operation (`operation` @0 of every KVP payload). Open newtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvpOperation(pub u8);

impl KvpOperation {
    /// Host reads a value by key.
    pub const GET: Self = Self(0);
    /// Host stores a key/value.
    pub const SET: Self = Self(1);
    /// Host deletes a key.
    pub const DELETE: Self = Self(2);
    /// Host reads entry number `index` of a pool.
    pub const ENUMERATE: Self = Self(3);
    /// Host asks for an adapter's IP configuration.
    pub const GET_IP_INFO: Self = Self(4);
    /// Host injects an adapter's IP configuration.
    pub const SET_IP_INFO: Self = Self(5);
}

/// KVP pool number (`pool` @1 of every KVP payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KvpPool(pub u8);

impl KvpPool {
    /// Data the host administrator pushes into the guest.
    pub const EXTERNAL: Self = Self(0);
    /// Data the guest publishes for the host.
    pub const GUEST: Self = Self(1);
    /// Guest intrinsic data (OS name, FQDN, addresses …) the host enumerates.
    pub const AUTO: Self = Self(2);
    /// Host intrinsic data the host pushes (host name, VM name …).
    pub const AUTO_EXTERNAL: Self = Self(3);
    /// Local only; never valid on the wire.
    pub const AUTO_INTERNAL: Self = Self(4);
    /// Number of pools.
    pub const COUNT: usize = 5;
}

/// KVP value type (`value_type` of a record). Open newtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvpValueType(pub u32);

impl KvpValueType {
    /// NUL-terminated UTF-16LE string.
    pub const REG_SZ: Self = Self(1);
    /// NUL-terminated UTF-16LE string with environment references.
    pub const REG_EXPAND_SZ: Self = Self(2);
    /// 32-bit little-endian integer.
    pub const REG_DWORD: Self = Self(4);
    /// 64-bit integer as Linux's `REG_U64` numbers it.
    pub const REG_U64_LINUX: Self = Self(8);
    /// 64-bit integer as Windows' `REG_QWORD` numbers it.
    pub const REG_QWORD: Self = Self(11);
    /// Whether values of this type are UTF-16 strings.
    pub const fn is_string(self) -> bool {
        self.0 == Self::REG_SZ.0 || self.0 == Self::REG_EXPAND_SZ.0
    }
}

/// Byte size of the key field (`HV_KVP_EXCHANGE_MAX_KEY_SIZE`), i.e. 256 UTF-16 units.
pub const KVP_MAX_KEY_SIZE: usize = 512;
/// Byte size of the value field (`HV_KVP_EXCHANGE_MAX_VALUE_SIZE`), i.e. 1024 UTF-16 units.
pub const KVP_MAX_VALUE_SIZE: usize = 2048;

/// KVP header (`struct hv_kvp_hdr`): operation, pool, 2 bytes padding.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct KvpHeader {
    /// @0: [`KvpOperation`].
    pub operation: u8,
    /// @1: [`KvpPool`].
    pub pool: u8,
    /// @2: padding (absent in the IP-info message, whose body starts at @2).
    pub pad: [u8; 2],
}
const_assert_eq!(core::mem::size_of::<KvpHeader>(), 4);

/// A key/value record (`struct hv_kvp_exchg_msg_value`, 2572 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct KvpRecord {
    /// @0: [`KvpValueType`].
    pub value_type: U32,
    /// @4: key size in bytes including the UTF-16 NUL.
    pub key_size: U32,
    /// @8: value size in bytes (strings: including the NUL).
    pub value_size: U32,
    /// @12: key, UTF-16LE.
    pub key: [u8; KVP_MAX_KEY_SIZE],
    /// @524: value, UTF-16LE string or a little-endian integer.
    pub value: [u8; KVP_MAX_VALUE_SIZE],
}
const_assert_eq!(core::mem::size_of::<KvpRecord>(), 2572);
const_assert_eq!(core::mem::offset_of!(KvpRecord, key), 12);
const_assert_eq!(core::mem::offset_of!(KvpRecord, value), 524);

/// GET and SET payload: header then record.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct KvpGetSetMsg {
    /// @0: header.
    pub header: KvpHeader,
    /// @4: record.
    pub record: KvpRecord,
}
const_assert_eq!(core::mem::size_of::<KvpGetSetMsg>(), 2576);

/// ENUMERATE payload: header, index, record.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct KvpEnumerateMsg {
    /// @0: header.
    pub header: KvpHeader,
    /// @4: index of the entry the host wants.
    pub index: U32,
    /// @8: record the guest fills.
    pub record: KvpRecord,
}
const_assert_eq!(core::mem::size_of::<KvpEnumerateMsg>(), 2580);
const_assert_eq!(core::mem::offset_of!(KvpEnumerateMsg, record), 8);

/// DELETE payload: header, key size, key.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct KvpDeleteMsg {
    /// @0: header.
    pub header: KvpHeader,
    /// @4: key size in bytes including the NUL.
    pub key_size: U32,
    /// @8: key, UTF-16LE.
    pub key: [u8; KVP_MAX_KEY_SIZE],
}
const_assert_eq!(core::mem::size_of::<KvpDeleteMsg>(), 520);

/// Byte size of `adapter_id` (128 UTF-16 units).
pub const KVP_ADAPTER_ID_SIZE: usize = 256;
/// Byte size of the address, subnet and DNS lists (1024 UTF-16 units).
pub const KVP_IP_ADDR_SIZE: usize = 2048;
/// Byte size of the gateway list (512 UTF-16 units).
pub const KVP_GATEWAY_SIZE: usize = 1024;

/// GET_IP_INFO / SET_IP_INFO payload in string form (`struct hv_kvp_ip_msg`, KVP ≤ 4.0): no
/// padding after operation and pool; lists are UTF-16LE, semicolon separated.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct KvpIpInfoMsg {
    /// @0: [`KvpOperation`].
    pub operation: u8,
    /// @1: [`KvpPool`].
    pub pool: u8,
    /// @2: adapter id (MAC or interface GUID), UTF-16LE.
    pub adapter_id: [u8; KVP_ADAPTER_ID_SIZE],
    /// @258: 0 none, 1 IPv4, 2 IPv6, 3 both.
    pub addr_family: u8,
    /// @259: DHCP enabled.
    pub dhcp_enabled: u8,
    /// @260: addresses.
    pub ip_addr: [u8; KVP_IP_ADDR_SIZE],
    /// @2308: subnets.
    pub sub_net: [u8; KVP_IP_ADDR_SIZE],
    /// @4356: gateways.
    pub gate_way: [u8; KVP_GATEWAY_SIZE],
    /// @5380: DNS servers.
    pub dns_addr: [u8; KVP_IP_ADDR_SIZE],
}
const_assert_eq!(core::mem::size_of::<KvpIpInfoMsg>(), 7428);
const_assert_eq!(core::mem::offset_of!(KvpIpInfoMsg, addr_family), 258);
const_assert_eq!(core::mem::offset_of!(KvpIpInfoMsg, ip_addr), 260);
const_assert_eq!(core::mem::offset_of!(KvpIpInfoMsg, sub_net), 2308);
const_assert_eq!(core::mem::offset_of!(KvpIpInfoMsg, gate_way), 4356);
const_assert_eq!(core::mem::offset_of!(KvpIpInfoMsg, dns_addr), 5380);

/// Address family values of [`KvpIpInfoMsg::addr_family`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvpAddressFamily(pub u8);

impl KvpAddressFamily {
    /// No address.
    pub const NONE: Self = Self(0);
    /// IPv4 only.
    pub const IPV4: Self = Self(1);
    /// IPv6 only.
    pub const IPV6: Self = Self(2);
    /// Both.
    pub const BOTH: Self = Self(3);
}
