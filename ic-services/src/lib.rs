//! Guest side of the Hyper-V integration components (ICs, "util" services): heartbeat, shutdown,
//! time synchronisation and key-value pair exchange (devices §6, §7.6).
//!
//! The crate is a transport-agnostic protocol layer. A glue layer receives an in-band VMBus
//! packet payload on an IC channel, hands its bytes to [`IcService::handle`], and sends the
//! `Reply::len` response bytes back as an in-band packet (type 6, no completion flag) carrying
//! the host's transaction id. The guest never starts a transaction: it opens the channel and
//! waits for the host's NEGOTIATE.
//!
//! Every service speaks the common framing (a 28-byte pipe + IC header, [`protocol`]) and the
//! common version negotiation ([`negotiate`]); [`IcService`] handles both and routes the
//! service's own message type to an [`IcHandler`]: [`heartbeat::Heartbeat`],
//! [`shutdown::Shutdown`], [`timesync::TimeSync`], [`kvp::Kvp`].
//!
//! ```
//! use ic_services::{heartbeat::Heartbeat, IcEvent, IcService, IcVersion};
//!
//! let mut hb = IcService::new(Heartbeat::new());
//! // The host's NEGOTIATE: pipe header, IC header (type 0), then counts 1/1 and 3.0, 3.0.
//! let mut req = [0u8; 44];
//! req[0] = 1; // pipe: data
//! req[4] = 36; // pipe: bytes after the pipe header
//! req[18] = 16; // icmsgsize
//! req[25] = 0x3; // TRANSACTION | REQUEST
//! req[28] = 1; // one framework version
//! req[30] = 1; // one service version
//! req[36] = 3; // framework 3.0
//! req[40] = 3; // heartbeat 3.0
//! let mut resp = [0u8; 64];
//! let reply = hb.handle(&req, &mut resp).unwrap();
//! // Send resp[..reply.len] as an in-band packet with the host's transaction id.
//! assert_eq!(reply.len, 44);
//! assert_eq!(resp[25], 0x5); // TRANSACTION | RESPONSE
//! assert_eq!(
//!     reply.event,
//!     IcEvent::Negotiated { framework: IcVersion::new(3, 0), service: IcVersion::new(3, 0) }
//! );
//! ```
//!
//! Host input is untrusted: every length, count, pool number and string is validated; nothing
//! panics on any byte input; failures are typed ([`IcError`]).
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod channel;
pub mod error;
pub mod heartbeat;
pub mod kvp;
pub mod negotiate;
pub mod protocol;
pub mod shutdown;
pub mod timesync;
pub mod utf16;

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod tests;

pub use error::IcError;
pub use protocol::{IcFlags, IcMsgType, IcStatus, IcVersion};

use protocol::{ICMSG_HDR_SIZE, IcMessagePrefix};
use vmbus_guest::protocol::DeviceClass;
use zerocopy::{FromBytes, IntoBytes};

/// Framework versions this guest accepts, in preference order (Linux `fw_versions`: 3.0, 1.0).
pub const FRAMEWORK_VERSIONS: &[IcVersion] = &[IcVersion::new(3, 0), IcVersion::new(1, 0)];

/// Bytes of the response to `request`: its own length, and at least 44 for NEGOTIATE.
fn response_size(request: &[u8]) -> Result<usize, IcError> {
    let len = request.len();
    let Ok((prefix, _)) = IcMessagePrefix::read_from_prefix(request) else {
        return Err(IcError::TruncatedHeader { len });
    };
    Ok(
        if IcMsgType(prefix.ic.icmsgtype.get()) == IcMsgType::NEGOTIATE {
            len.max(protocol::NEGOTIATE_RESPONSE_SIZE)
        } else {
            len
        },
    )
}

/// Something the OS should know about after the response has been sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IcEvent {
    /// Nothing for the OS (e.g. a time-sync PROBE).
    None,
    /// NEGOTIATE answered with this framework and service version.
    Negotiated {
        /// Chosen framework version.
        framework: IcVersion,
        /// Chosen service version.
        service: IcVersion,
    },
    /// NEGOTIATE answered with counts 0/0 (no common version or a malformed offer).
    NegotiationFailed(IcError),
    /// Heartbeat answered; the host now sees this sequence number.
    Heartbeat {
        /// Sequence number sent back (host's + 1).
        sequence: u64,
    },
    /// Shutdown accepted and answered S_OK: the OS should act *after* sending the reply.
    ShutdownRequested(shutdown::ShutdownRequest),
    /// Shutdown refused (policy or unsupported kind) and answered E_FAIL.
    ShutdownRefused(shutdown::ShutdownRequest),
    /// A time sample was accepted; [`timesync::TimeSync::utc_now`] now follows it.
    TimeSample(timesync::TimeSample),
    /// The host stored a key/value; read it with [`kvp::Kvp::entry`].
    KvpSetByHost {
        /// Pool written.
        pool: protocol::KvpPool,
        /// Index of the entry in the pool.
        slot: usize,
    },
    /// The host deleted a key from this pool.
    KvpDeletedByHost {
        /// Pool changed.
        pool: protocol::KvpPool,
    },
    /// The request was answered with a failure status for this reason.
    Rejected(IcError),
}

/// What the caller must send back and tell the OS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Number of bytes at the start of the response buffer to send as the in-band packet.
    pub len: usize,
    /// Status written into the response header.
    pub status: IcStatus,
    /// Event for the OS.
    pub event: IcEvent,
}

/// Result of a service handling its own message type: the status to put in the header and the
/// event for the OS. The payload has been modified in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// HRESULT for the response header.
    pub status: IcStatus,
    /// Event for the OS.
    pub event: IcEvent,
}

impl Outcome {
    /// S_OK with an event.
    pub const fn ok(event: IcEvent) -> Self {
        Self {
            status: IcStatus::S_OK,
            event,
        }
    }
    /// A failure status, reporting `error` to the OS.
    pub const fn fail(status: IcStatus, error: IcError) -> Self {
        Self {
            status,
            event: IcEvent::Rejected(error),
        }
    }
}

/// One integration service: its message type, device class, the service versions it offers in
/// NEGOTIATE, and how it answers its own requests.
pub trait IcHandler {
    /// The `icmsgtype` of this service's requests.
    const MSG_TYPE: IcMsgType;
    /// The VMBus device class (offer interface type) of this service's channel.
    const DEVICE_CLASS: DeviceClass;
    /// Service versions accepted, in preference order (as current Linux offers them).
    fn service_versions(&self) -> &[IcVersion];
    /// Handles a request of type [`Self::MSG_TYPE`]. `payload` is the request payload (every
    /// byte after the 28-byte header, as received) and is turned into the response in place;
    /// `version` is the negotiated service version (or the header's, before negotiation).
    /// An `Err` means the packet is dropped without a reply.
    fn handle_message(
        &mut self,
        version: IcVersion,
        payload: &mut [u8],
    ) -> Result<Outcome, IcError>;
}

/// A service kept elsewhere (e.g. a large [`kvp::Kvp`] in a `static`) can be driven by reference.
impl<T: IcHandler> IcHandler for &mut T {
    const MSG_TYPE: IcMsgType = T::MSG_TYPE;
    const DEVICE_CLASS: DeviceClass = T::DEVICE_CLASS;

    fn service_versions(&self) -> &[IcVersion] {
        (**self).service_versions()
    }

    fn handle_message(
        &mut self,
        version: IcVersion,
        payload: &mut [u8],
    ) -> Result<Outcome, IcError> {
        (**self).handle_message(version, payload)
    }
}

/// A service endpoint: common header handling, NEGOTIATE, and routing to the service.
#[derive(Debug)]
pub struct IcService<H> {
    handler: H,
    negotiated: Option<(IcVersion, IcVersion)>,
}

impl<H: IcHandler> IcService<H> {
    /// Wraps a service; nothing is negotiated yet.
    pub const fn new(handler: H) -> Self {
        Self {
            handler,
            negotiated: None,
        }
    }

    /// Gives the handler back (after the channel closed).
    pub fn into_handler(self) -> H {
        self.handler
    }

    /// The service.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The service, mutably (e.g. to update guest-provided KVP values).
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Framework and service version from the last successful NEGOTIATE.
    pub fn negotiated(&self) -> Option<(IcVersion, IcVersion)> {
        self.negotiated
    }

    /// Forgets the negotiated versions (channel closed and reopened: the host negotiates again).
    pub fn reset(&mut self) {
        self.negotiated = None;
    }

    /// Handles one host packet payload `request` and writes the response into `response`.
    ///
    /// On `Ok`, send `response[..reply.len]` as an in-band packet with the host's transaction
    /// id. The response is the request modified in place, as Linux does: pipe header, versions
    /// and transaction id echoed, `status` set, `icflags` = TRANSACTION | RESPONSE. Message
    /// types other than NEGOTIATE and the service's own are answered with E_FAIL.
    ///
    /// On `Err` send nothing: the packet was too short to answer, or `response` too small
    /// (it needs `request.len()` bytes, and at least 44 for NEGOTIATE).
    pub fn handle(&mut self, request: &[u8], response: &mut [u8]) -> Result<Reply, IcError> {
        let len = request.len();
        let needed = response_size(request)?;
        let Some(out) = response.get_mut(..needed) else {
            return Err(IcError::ResponseBufferTooSmall {
                needed,
                got: response.len(),
            });
        };
        out[..len].copy_from_slice(request);
        self.handle_in_place(out, len)
    }

    /// Like [`IcService::handle`], but the request is `buf[..len]` and the response replaces it
    /// in `buf[..reply.len]` (no second buffer: how [`channel::IcChannel`] answers in the buffer
    /// it received into). `buf` needs room for the response: `len` bytes, and at least 44 for
    /// NEGOTIATE; otherwise nothing is changed and the error says how much.
    pub fn handle_in_place(&mut self, buf: &mut [u8], len: usize) -> Result<Reply, IcError> {
        answer_in_place(
            &mut self.negotiated,
            &mut self.handler,
            H::DEVICE_CLASS,
            H::MSG_TYPE,
            buf,
            len,
        )
    }
}

/// The object-safe part of an [`IcHandler`] (the trait's constants go as arguments): the
/// header and NEGOTIATE handling exists once, not once per service.
trait DynHandler {
    fn service_versions(&self) -> &[IcVersion];
    fn handle_message(
        &mut self,
        version: IcVersion,
        payload: &mut [u8],
    ) -> Result<Outcome, IcError>;
}

impl<H: IcHandler> DynHandler for H {
    fn service_versions(&self) -> &[IcVersion] {
        IcHandler::service_versions(self)
    }

    fn handle_message(
        &mut self,
        version: IcVersion,
        payload: &mut [u8],
    ) -> Result<Outcome, IcError> {
        IcHandler::handle_message(self, version, payload)
    }
}

/// An [`IcService`] as [`channel::IcChannel`]'s poll loop sees it: one copy of the loop for
/// every service.
pub(crate) trait AnswerInPlace {
    /// [`IcService::handle_in_place`].
    fn answer_in_place(&mut self, buf: &mut [u8], len: usize) -> Result<Reply, IcError>;
}

impl<H: IcHandler> AnswerInPlace for IcService<H> {
    fn answer_in_place(&mut self, buf: &mut [u8], len: usize) -> Result<Reply, IcError> {
        self.handle_in_place(buf, len)
    }
}

/// [`IcService::handle_in_place`] for any service: `class` and `service_type` are the
/// handler's [`IcHandler::DEVICE_CLASS`] and [`IcHandler::MSG_TYPE`].
fn answer_in_place(
    negotiated: &mut Option<(IcVersion, IcVersion)>,
    handler: &mut dyn DynHandler,
    class: DeviceClass,
    service_type: IcMsgType,
    buf: &mut [u8],
    len: usize,
) -> Result<Reply, IcError> {
    let Some(request) = buf.get(..len) else {
        return Err(IcError::ResponseBufferTooSmall {
            needed: len,
            got: buf.len(),
        });
    };
    let needed = response_size(request)?;
    let Ok((prefix, _)) = IcMessagePrefix::read_from_prefix(request) else {
        return Err(IcError::TruncatedHeader { len });
    };
    let got = buf.len();
    let Some(response) = buf.get_mut(..needed) else {
        return Err(IcError::ResponseBufferTooSmall { needed, got });
    };
    response[len..].fill(0);
    let msg_type = IcMsgType(prefix.ic.icmsgtype.get());

    let (status, event) = if msg_type == IcMsgType::NEGOTIATE {
        let service_versions = handler.service_versions();
        match negotiate::respond(
            &mut response[ICMSG_HDR_SIZE..],
            len - ICMSG_HDR_SIZE,
            FRAMEWORK_VERSIONS,
            service_versions,
        ) {
            Ok((framework, service)) => {
                log::info!("IC {class:?}: negotiated framework {framework}, service {service}");
                *negotiated = Some((framework, service));
                (IcStatus::S_OK, IcEvent::Negotiated { framework, service })
            }
            Err(e) => {
                log::warn!("IC {class:?}: negotiation failed: {e}");
                // Linux leaves the status as the host sent it and answers counts 0/0.
                (
                    IcStatus(prefix.ic.status.get()),
                    IcEvent::NegotiationFailed(e),
                )
            }
        }
    } else if msg_type == service_type {
        let version = match *negotiated {
            Some((_, service)) => service,
            None => IcVersion::from_wire(prefix.ic.icvermsg),
        };
        let outcome = handler.handle_message(version, &mut response[ICMSG_HDR_SIZE..])?;
        (outcome.status, outcome.event)
    } else {
        log::warn!("IC {class:?}: unsupported message type {}", msg_type.0);
        (
            IcStatus::E_FAIL,
            IcEvent::Rejected(IcError::UnsupportedMessageType(msg_type)),
        )
    };

    let mut out = prefix;
    if msg_type == IcMsgType::NEGOTIATE {
        out.ic.icmsgsize.set(16);
        if needed > len {
            // The offer was shorter than our answer: say how long the answer is.
            out.pipe.msgsize.set((needed - 8) as u32);
        }
    }
    out.ic.status.set(status.0);
    out.ic.icflags = IcFlags::GUEST_RESPONSE.0;
    response[..ICMSG_HDR_SIZE].copy_from_slice(out.as_bytes());
    Ok(Reply {
        len: needed,
        status,
        event,
    })
}
