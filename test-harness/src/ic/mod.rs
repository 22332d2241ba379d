//! Mock host integration components (devices §6, §7.6–7.7): heartbeat, shutdown, time sync
//! and KVP as Hyper-V drives them, written from `protocol/devices.md` independently of the
//! guest crate `ic-services`, whose test oracle they are.
//!
//! Every service runs on one engine ([`IcModel`]): when the guest opens the channel the host
//! sends NEGOTIATE (in-band, no completion flag, icflags TRANSACTION|REQUEST, the framework
//! and service versions it offers), waits for the answer on the same transaction id and
//! records the chosen pair; then it sends the service's requests one at a time, each with a
//! fresh transaction id, and checks every answer. Where Linux and the document differ, Linux
//! wins: the answer must echo the request's header and change only `status` and `icflags`
//! (exactly 0x5), except `icmsgsize` = 16 for NEGOTIATE; a refused negotiation is counts 0/0.
//!
//! Every deviation is recorded as a protocol error — in the model ([`IcModel::errors`]) and,
//! through [`HostChannel::protocol_error`](crate::vmbus::HostChannel::protocol_error), in
//! [`MockVmbusHost::protocol_errors`] — never a panic.
//!
//! Models are shared: [`IcHandle`] holds an `Arc<Mutex<IcModel<S>>>`; the mock host owns an
//! [`IcDevice`] over the same model. Tests queue commands on the handle (sent on the next
//! [`MockVmbusHost::step`]) and read results from it. [`IcHost::add_to`] registers all four.
//! For unit tests without a guest, drive an [`IcModel`] directly with a [`RecordingChannel`].

mod engine;
pub mod heartbeat;
pub mod kvp;
pub mod shutdown;
pub mod timesync;
pub mod wire;

use std::sync::Arc;

use vmbus_guest::protocol::Guid;

pub use engine::{
    DEFAULT_FRAMEWORK_VERSIONS, IcChannel, IcDevice, IcHandle, IcModel, IcService, Negotiation,
    RecordingChannel,
};
pub use heartbeat::Heartbeat;
pub use kvp::{Kvp, KvpReply, KvpRequest, KvpValue};
pub use shutdown::{Shutdown, ShutdownKind, ShutdownOutcome};
pub use timesync::{TimeSync, TimeSyncKind};
pub use wire::IcVersion;

use crate::vmbus::{DeviceOffer, MockVmbusHost};

// Integration-component instance GUIDs are fixed: Hyper-V offers the same ones in every VM
// and OpenVMM reuses them (devices §1.2), so guests may look the services up by instance.

/// Instance GUID of the heartbeat IC: Hyper-V's `fd149e91-82e0-4a7d-afa6-2a4166cbd7c0`
/// (devices §1.2; OpenVMM has no host heartbeat).
pub const HEARTBEAT_INSTANCE: Guid = Guid::from_str_const("fd149e91-82e0-4a7d-afa6-2a4166cbd7c0");
/// Instance GUID of the shutdown IC (devices §1.2; the same in Hyper-V and OpenVMM).
pub const SHUTDOWN_INSTANCE: Guid = Guid::from_str_const("b6650ff7-33bc-4840-8048-e0676786f393");
/// Instance GUID of the time-sync IC (devices §1.2; the same in Hyper-V and OpenVMM).
pub const TIMESYNC_INSTANCE: Guid = Guid::from_str_const("2dd1ce17-079e-403c-b352-a1921ee207ee");
/// Instance GUID of the KVP IC (devices §1.2; the same in Hyper-V and OpenVMM).
pub const KVP_INSTANCE: Guid = Guid::from_str_const("242ff919-07db-4180-9c2e-b86cb68c8c55");

/// Class (interface type) GUID of the heartbeat IC, devices §1.2.
pub const HEARTBEAT_CLASS: Guid = Guid::from_str_const("57164f39-9115-4e78-ab55-382f3bd5422d");
/// Class GUID of the shutdown IC, devices §1.2.
pub const SHUTDOWN_CLASS: Guid = Guid::from_str_const("0e0b6031-5213-4934-818b-38d90ced39db");
/// Class GUID of the time-sync IC, devices §1.2.
pub const TIMESYNC_CLASS: Guid = Guid::from_str_const("9527e630-d0ae-497b-adce-e80ab0175caf");
/// Class GUID of the KVP (data exchange) IC, devices §1.2.
pub const KVP_CLASS: Guid = Guid::from_str_const("a9a0f4e7-5a45-4d96-b827-8a841e8c03e6");

/// Settings for [`IcHost::add_to`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcHostConfig {
    /// Heartbeat every this many host steps (`None`: only on command).
    pub heartbeat_period: Option<u32>,
    /// Time-sync SAMPLE every this many host steps (`None`: only on command).
    pub timesync_period: Option<u32>,
    /// Host UTC (FILETIME, 100 ns since 1601) at partition reference time 0.
    pub host_epoch: u64,
}

impl Default for IcHostConfig {
    /// Everything on command; host epoch [`timesync::DEFAULT_HOST_EPOCH`].
    fn default() -> Self {
        Self {
            heartbeat_period: None,
            timesync_period: None,
            host_epoch: timesync::DEFAULT_HOST_EPOCH,
        }
    }
}

/// The four host ICs registered with a [`MockVmbusHost`]: relids and model handles.
pub struct IcHost {
    /// Heartbeat relid.
    pub heartbeat_relid: u32,
    /// Shutdown relid.
    pub shutdown_relid: u32,
    /// Time-sync relid.
    pub timesync_relid: u32,
    /// KVP relid.
    pub kvp_relid: u32,
    /// Heartbeat model.
    pub heartbeat: IcHandle<Heartbeat>,
    /// Shutdown model.
    pub shutdown: IcHandle<Shutdown>,
    /// Time-sync model (reference time from the host's [`MockHypervisor`](crate::hv::MockHypervisor)).
    pub timesync: IcHandle<TimeSync>,
    /// KVP model.
    pub kvp: IcHandle<Kvp>,
}

impl IcHost {
    /// Offers heartbeat, shutdown, time sync and KVP (the class and instance GUIDs above, the
    /// host's own copy of devices §1.2 rather than the guest's class table) on `host`.
    pub fn add_to(host: &mut MockVmbusHost, config: IcHostConfig) -> Self {
        let hv = host.hypervisor().clone();
        let clock: timesync::ReferenceTimeSource = Arc::new(move || hv.reference_time());
        let heartbeat = IcHandle::new(Heartbeat::new(config.heartbeat_period));
        let shutdown = IcHandle::new(Shutdown::new());
        let timesync = IcHandle::new(TimeSync::new(
            clock,
            config.host_epoch,
            config.timesync_period,
        ));
        let kvp = IcHandle::new(Kvp::new());
        let heartbeat_relid = host.add_device(
            DeviceOffer::new(HEARTBEAT_CLASS, HEARTBEAT_INSTANCE),
            Box::new(heartbeat.device()),
        );
        let shutdown_relid = host.add_device(
            DeviceOffer::new(SHUTDOWN_CLASS, SHUTDOWN_INSTANCE),
            Box::new(shutdown.device()),
        );
        let timesync_relid = host.add_device(
            DeviceOffer::new(TIMESYNC_CLASS, TIMESYNC_INSTANCE),
            Box::new(timesync.device()),
        );
        let kvp_relid = host.add_device(
            DeviceOffer::new(KVP_CLASS, KVP_INSTANCE),
            Box::new(kvp.device()),
        );
        Self {
            heartbeat_relid,
            shutdown_relid,
            timesync_relid,
            kvp_relid,
            heartbeat,
            shutdown,
            timesync,
            kvp,
        }
    }

    /// Every protocol error the four models recorded, prefixed by service.
    pub fn errors(&self) -> Vec<String> {
        let mut e = self.heartbeat.errors();
        e.extend(self.shutdown.errors());
        e.extend(self.timesync.errors());
        e.extend(self.kvp.errors());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    /// The offers carry the GUIDs in the Windows wire layout (vmbus-core preamble: u32, u16,
    /// u16 little-endian, then 8 bytes as written), checked byte for byte so the shared
    /// `Guid` constructor is not simply trusted.
    #[test]
    fn ic_guids_are_hyper_v_s_on_the_wire() {
        let cases: [(Guid, [u8; 16]); 8] = [
            // heartbeat instance fd149e91-82e0-4a7d-afa6-2a4166cbd7c0
            (
                HEARTBEAT_INSTANCE,
                [
                    0x91, 0x9e, 0x14, 0xfd, 0xe0, 0x82, 0x7d, 0x4a, 0xaf, 0xa6, 0x2a, 0x41, 0x66,
                    0xcb, 0xd7, 0xc0,
                ],
            ),
            // shutdown instance b6650ff7-33bc-4840-8048-e0676786f393
            (
                SHUTDOWN_INSTANCE,
                [
                    0xf7, 0x0f, 0x65, 0xb6, 0xbc, 0x33, 0x40, 0x48, 0x80, 0x48, 0xe0, 0x67, 0x67,
                    0x86, 0xf3, 0x93,
                ],
            ),
            // time-sync instance 2dd1ce17-079e-403c-b352-a1921ee207ee
            (
                TIMESYNC_INSTANCE,
                [
                    0x17, 0xce, 0xd1, 0x2d, 0x9e, 0x07, 0x3c, 0x40, 0xb3, 0x52, 0xa1, 0x92, 0x1e,
                    0xe2, 0x07, 0xee,
                ],
            ),
            // KVP instance 242ff919-07db-4180-9c2e-b86cb68c8c55
            (
                KVP_INSTANCE,
                [
                    0x19, 0xf9, 0x2f, 0x24, 0xdb, 0x07, 0x80, 0x41, 0x9c, 0x2e, 0xb8, 0x6c, 0xb6,
                    0x8c, 0x8c, 0x55,
                ],
            ),
            // heartbeat class 57164f39-9115-4e78-ab55-382f3bd5422d
            (
                HEARTBEAT_CLASS,
                [
                    0x39, 0x4f, 0x16, 0x57, 0x15, 0x91, 0x78, 0x4e, 0xab, 0x55, 0x38, 0x2f, 0x3b,
                    0xd5, 0x42, 0x2d,
                ],
            ),
            // shutdown class 0e0b6031-5213-4934-818b-38d90ced39db
            (
                SHUTDOWN_CLASS,
                [
                    0x31, 0x60, 0x0b, 0x0e, 0x13, 0x52, 0x34, 0x49, 0x81, 0x8b, 0x38, 0xd9, 0x0c,
                    0xed, 0x39, 0xdb,
                ],
            ),
            // time-sync class 9527e630-d0ae-497b-adce-e80ab0175caf
            (
                TIMESYNC_CLASS,
                [
                    0x30, 0xe6, 0x27, 0x95, 0xae, 0xd0, 0x7b, 0x49, 0xad, 0xce, 0xe8, 0x0a, 0xb0,
                    0x17, 0x5c, 0xaf,
                ],
            ),
            // KVP class a9a0f4e7-5a45-4d96-b827-8a841e8c03e6
            (
                KVP_CLASS,
                [
                    0xe7, 0xf4, 0xa0, 0xa9, 0x45, 0x5a, 0x96, 0x4d, 0xb8, 0x27, 0x8a, 0x84, 0x1e,
                    0x8c, 0x03, 0xe6,
                ],
            ),
        ];
        for (guid, bytes) in cases {
            assert_eq!(guid.as_bytes(), &bytes, "{guid}");
        }
    }
}
