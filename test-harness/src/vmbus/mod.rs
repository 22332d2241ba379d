//! Mock VMBus host: the std, host-side channel manager and the host end of every ring, written
//! from `protocol/vmbus-core.md` (§5–10) independently of the guest library, whose test oracle
//! it is. Only the wire structs of `vmbus_guest::protocol` are shared.
//!
//! The host sits on a [`MockHypervisor`](crate::hv::MockHypervisor): it takes the messages the
//! guest posted (HvCallPostMessage) and the events it signalled (HvCallSignalEvent, monitored
//! notification bits), answers like the chosen [`HostRelease`], and delivers its own messages
//! into the guest's SynIC. Device models plug in through [`DeviceModel`]; [`EchoDevice`] is the
//! round-trip test device.
//!
//! Everything the guest does that a real host rejects is recorded in
//! [`MockVmbusHost::protocol_errors`] so tests can fail on it.
//!
//! Two modes: deterministic ([`MockVmbusHost::step`] processes all pending work and returns)
//! and threaded ([`MockVmbusHost::spawn`]).

mod channel;
mod control;
mod device;
mod echo;
mod gpadl;
mod host;
mod mem;
mod packet;
mod release;
mod ring;
mod threaded;

use std::sync::{Arc, Mutex, PoisonError};

pub use channel::{ChannelState, HostChannel, HostRingError};
pub use device::{DeviceModel, DeviceOffer};
pub use echo::EchoDevice;
pub use gpadl::GpadlRange;
pub use host::{
    CHANNEL_CONNECTION_ID_BASE, DEFAULT_HOST_FEATURES, DEFAULT_MESSAGE_CONNECTION_ID,
    MockVmbusHost, STATUS_UNSUCCESSFUL,
};
pub use packet::{
    FLAG_COMPLETION_REQUESTED, HostPacket, PACKET_TYPE_COMPLETION, PACKET_TYPE_GPA_DIRECT,
    PACKET_TYPE_INBAND, PACKET_TYPE_XFER_PAGES,
};
pub use release::HostRelease;
pub use threaded::ThreadedHost;

/// Shared list of protocol errors (host and channels append to it).
#[derive(Clone, Default)]
pub(crate) struct ErrorLog(Arc<Mutex<Vec<String>>>);

impl ErrorLog {
    /// Records one violation and logs it.
    pub(crate) fn push(&self, e: String) {
        log::warn!("mock VMBus host: protocol error: {e}");
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(e);
    }

    /// Takes every violation so far.
    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every violation so far.
    pub(crate) fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
