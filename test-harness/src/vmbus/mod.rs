//! Mock VMBus host: the std, host-side channel manager and the host end of every ring, written
//! from `protocol/vmbus-core.md` (§5–10) independently of the guest library, whose test oracle
//! it is. Only the wire structs of `vmbus_guest::protocol` are shared.
//!
//! The host sits on a [`MockHypervisor`](crate::hv::MockHypervisor): it takes the messages the
//! guest posted (HvCallPostMessage) and the events it signalled (HvCallSignalEvent, monitored
//! notification bits), answers like the chosen [`HostRelease`], and delivers its own messages
//! into the guest's SynIC. Device models plug in through [`DeviceModel`]; [`EchoDevice`] is the
//! round-trip test device and [`DataEchoDevice`] the storage benchmark's data-moving baseline.
//!
//! # Version policy
//!
//! Each [`HostRelease`] accepts every version from 1.1 up to its maximum (0.13 is not
//! modelled and always answered "not supported"). INITIATE_CONTACT must come on connection 1
//! below 5.0 and on connection 4 from 5.0; releases below 5.0 do not connect port 4 at all, so
//! the hypervisor fails such a post with INVALID_CONNECTION_ID. An accepted ≥ 5.0 contact gets
//! [`DEFAULT_MESSAGE_CONNECTION_ID`] in VERSION_RESPONSE @12 and every later message must use
//! it; below 5.0 @12 carries the version and connection 1 stays in use. 6.0 answers with the
//! 20-byte form and grants `requested ∩` [`DEFAULT_HOST_FEATURES`]. Control messages go to the
//! INITIATE_CONTACT target VP from 3.0 (VP 0 before) and its target SINT from 5.0 (2 before).
//!
//! # What the host rejects (each one is a protocol error)
//!
//! * messages before a successful INITIATE_CONTACT, on the wrong connection id, of an unknown
//!   or host→guest type, needing a higher version, or of the wrong size;
//! * INITIATE_CONTACT with mixed or out-of-RAM monitor pages, a non-zero VTL, a missing legacy
//!   interrupt page below 2.4, a size that does not match the CLIENT_ID feature, or while
//!   already connected (the host then resets, as for UNLOAD);
//! * a second REQUESTOFFERS on one connection;
//! * GPADL headers with handle 0, a handle in use, a relid never offered, inconsistent
//!   range_buflen / range count / byte counts, PFNs outside guest RAM; bodies for a handle not
//!   in progress; teardown of an unknown or incomplete handle;
//! * OPENCHANNEL for an unknown, unoffered or already-open relid, an unknown or busy GPADL, a
//!   downstream offset outside 2..=pages−2, rings whose indices the guest did not zero;
//!   (OPENCHANNEL of a rescinded channel is silently ignored, as on Hyper-V);
//! * CLOSECHANNEL of a channel that is not open; RELID_RELEASED before a rescind;
//! * ring packets with an index out of range or unaligned, offset8 < 2, length8 < offset8,
//!   more bytes than published, a wrong trailer, a type other than 6/7/9/11 or flags other
//!   than bit 0 (the channel then stops being serviced).
//! * freeing (through [`MockHal`](crate::hv::MockHal)) a page the host still maps: a page of
//!   a GPADL not yet answered with GPADL_TORNDOWN (§6.3, §6.4; including every GPADL of a
//!   connection abandoned without UNLOAD), of a GPA-direct request not yet completed (e.g. a
//!   withheld completion), or the connection's monitor / legacy interrupt pages before
//!   UNLOAD_RESPONSE (§10.3). The free still happens (the pages are poisoned with
//!   [`POISON_BYTE`](crate::hv::POISON_BYTE)); the record is in
//!   [`MockVmbusHost::freed_while_mapped`] as well. A rescind ends the host's use of the
//!   channel's GPADLs and requests (§6.4 step 4), UNLOAD_RESPONSE that of everything.
//!
//! Failures the host reports to the guest (GPADL_CREATED / OPENCHANNEL_RESULT status
//! [`STATUS_UNSUCCESSFUL`]) are answered so a guest does not hang, in addition to the error.
//! Errors of the hypervisor itself (e.g. a post to an unconnected port) are in
//! [`MockHypervisor::protocol_errors`](crate::hv::MockHypervisor::protocol_errors), not here.
//!
//! # Rings and signals
//!
//! The host reads a channel's outbound ring only after the guest signalled it (SignalEvent on
//! the offer's connection id, or the channel's bit in the child→parent monitor page), unless
//! [`MockVmbusHost::set_poll_rings`] is on, so a guest that forgets to signal is caught (with
//! it on, a host thread that spins on the rings masks the guest's signals meanwhile,
//! [`MockVmbusHost::set_polling`]). What the host sends on a channel during one step is
//! published as one batch: it interrupts the guest at most once per step, only when the batch
//! went into an empty, unmasked inbound ring, or when a guest blocked on pending-send-size now
//! fits; a full inbound ring queues host packets behind pending-send-size until the guest
//! frees space and signals.
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
mod service;
mod threaded;

use std::sync::{Arc, Mutex, PoisonError};

pub use channel::{ChannelState, HostChannel, HostRingError};
pub use device::{DeviceModel, DeviceOffer};
pub use echo::{DATA_ECHO_READ, DATA_ECHO_WRITE, DataEchoDevice, EchoDevice};
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
pub use threaded::{SPIN_WINDOW, ThreadedHost, YIELD_AFTER};

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
