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

use vmbus_guest::protocol::{DeviceClass, Guid};

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

/// Instance GUID of the mock heartbeat IC (made up; OpenVMM has none).
pub const HEARTBEAT_INSTANCE: Guid = Guid::from_str_const("f2c4b1d0-6a3e-4c8b-9f1d-2e5a7b3c9d01");
/// Instance GUID of the shutdown IC (OpenVMM's).
pub const SHUTDOWN_INSTANCE: Guid = Guid::from_str_const("b6650ff7-33bc-4840-8048-e0676786f393");
/// Instance GUID of the time-sync IC (OpenVMM's).
pub const TIMESYNC_INSTANCE: Guid = Guid::from_str_const("2dd1ce17-079e-403c-b352-a1921ee207ee");
/// Instance GUID of the KVP IC (OpenVMM's).
pub const KVP_INSTANCE: Guid = Guid::from_str_const("242ff919-07db-4180-9c2e-b86cb68c8c55");

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

/// Class GUID of `class` from `DEVICE_CLASSES`, else `fallback` (devices §1.2).
fn class_guid(class: DeviceClass, fallback: &str) -> Guid {
    class
        .interface_type()
        .unwrap_or_else(|| Guid::from_str_const(fallback))
}

impl IcHost {
    /// Offers heartbeat, shutdown, time sync and KVP (class GUIDs from
    /// [`vmbus_guest::protocol::DEVICE_CLASSES`], instance GUIDs above) on `host`.
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
            DeviceOffer::new(
                class_guid(
                    DeviceClass::Heartbeat,
                    "57164f39-9115-4e78-ab55-382f3bd5422d",
                ),
                HEARTBEAT_INSTANCE,
            ),
            Box::new(heartbeat.device()),
        );
        let shutdown_relid = host.add_device(
            DeviceOffer::new(
                class_guid(
                    DeviceClass::Shutdown,
                    "0e0b6031-5213-4934-818b-38d90ced39db",
                ),
                SHUTDOWN_INSTANCE,
            ),
            Box::new(shutdown.device()),
        );
        let timesync_relid = host.add_device(
            DeviceOffer::new(
                class_guid(
                    DeviceClass::TimeSync,
                    "9527e630-d0ae-497b-adce-e80ab0175caf",
                ),
                TIMESYNC_INSTANCE,
            ),
            Box::new(timesync.device()),
        );
        let kvp_relid = host.add_device(
            DeviceOffer::new(
                class_guid(DeviceClass::Kvp, "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6"),
                KVP_INSTANCE,
            ),
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
