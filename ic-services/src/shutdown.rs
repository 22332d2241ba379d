//! Shutdown (icmsgtype 3, devices §6.4): the host asks the guest to power off, restart or
//! hibernate. The request is decoded and handed to a [`ShutdownPolicy`]; the answer (S_OK if
//! accepted, E_FAIL if refused or malformed) goes back *before* the OS acts, which it does on
//! [`crate::IcEvent::ShutdownRequested`].

use crate::protocol::{IcVersion, ShutdownFlags, ShutdownMsg};
use crate::{IcError, IcEvent, IcHandler, IcMsgType, IcStatus, Outcome};
use vmbus_guest::protocol::DeviceClass;
use zerocopy::FromBytes;

/// Shutdown service versions in preference order (Linux `sd_versions`: 3.2, 3.1, 3.0, 1.0).
pub const SHUTDOWN_VERSIONS: &[IcVersion] = &[
    IcVersion::new(3, 2),
    IcVersion::new(3, 1),
    IcVersion::new(3, 0),
    IcVersion::new(1, 0),
];

/// Bytes of the shutdown payload the guest requires: the whole `shutdown_msg_data` (reason,
/// timeout, flags and the 2048-byte display message), as Linux checks; shorter packets are
/// dropped without an answer.
pub const SHUTDOWN_MIN_PAYLOAD: usize = core::mem::size_of::<ShutdownMsg>();

/// Largest packet the shutdown channel receives (the 2060-byte request): the buffer size an
/// [`crate::channel::IcChannel`] needs.
pub const MAX_PACKET: usize = crate::channel::max_packet(SHUTDOWN_MIN_PAYLOAD);

/// Reason code bit meaning "planned".
pub const REASON_PLANNED: u32 = 0x8000_0000;

/// What the host asks for, from the flags' restart/hibernate bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShutdownKind {
    /// Flags 0 or 1: power off.
    PowerOff,
    /// Flags 2 or 3: restart (service 3.1+).
    Restart,
    /// Flags 4 or 5: hibernate (service 3.2+).
    Hibernate,
}

/// A decoded shutdown request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownRequest {
    /// Power off, restart or hibernate.
    pub kind: ShutdownKind,
    /// Flag bit 0: force (do not wait for applications).
    pub force: bool,
    /// Reason code as sent (bit 31 = planned).
    pub reason: u32,
    /// Raw flags as sent.
    pub flags: u32,
    /// Seconds the host says it will wait.
    pub timeout_seconds: u32,
    /// Negotiated (or header) service version the request came with.
    pub version: IcVersion,
}

impl ShutdownRequest {
    /// Whether the reason code has the "planned" bit.
    pub fn is_planned(&self) -> bool {
        self.reason & REASON_PLANNED != 0
    }
}

/// The OS's decision on a shutdown request, made before the answer is sent.
pub trait ShutdownPolicy {
    /// Returns `true` to accept (answer S_OK, then the OS acts), `false` to refuse (E_FAIL).
    fn decide(&mut self, request: &ShutdownRequest) -> bool;
}

impl<F: FnMut(&ShutdownRequest) -> bool> ShutdownPolicy for F {
    fn decide(&mut self, request: &ShutdownRequest) -> bool {
        self(request)
    }
}

/// A policy that accepts power off and restart and refuses hibernation (what Linux does when
/// hibernation is not possible).
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptExceptHibernate;

impl ShutdownPolicy for AcceptExceptHibernate {
    fn decide(&mut self, request: &ShutdownRequest) -> bool {
        request.kind != ShutdownKind::Hibernate
    }
}

/// The shutdown service with its policy.
#[derive(Debug)]
pub struct Shutdown<P> {
    policy: P,
}

impl<P: ShutdownPolicy> Shutdown<P> {
    /// A shutdown service asking `policy` about each request.
    pub const fn new(policy: P) -> Self {
        Self { policy }
    }

    /// The policy.
    pub fn policy_mut(&mut self) -> &mut P {
        &mut self.policy
    }
}

/// Decodes the flags into a kind and the force bit; anything but 0..=5 is invalid.
pub fn decode_flags(flags: u32) -> Result<(ShutdownKind, bool), IcError> {
    let force = flags & ShutdownFlags::FORCE != 0;
    match flags & !ShutdownFlags::FORCE {
        0 => Ok((ShutdownKind::PowerOff, force)),
        ShutdownFlags::RESTART => Ok((ShutdownKind::Restart, force)),
        ShutdownFlags::HIBERNATE => Ok((ShutdownKind::Hibernate, force)),
        _ => Err(IcError::InvalidShutdownFlags(flags)),
    }
}

impl<P: ShutdownPolicy> IcHandler for Shutdown<P> {
    const MSG_TYPE: IcMsgType = IcMsgType::SHUTDOWN;
    const DEVICE_CLASS: DeviceClass = DeviceClass::Shutdown;

    fn service_versions(&self) -> &[IcVersion] {
        SHUTDOWN_VERSIONS
    }

    fn handle_message(
        &mut self,
        version: IcVersion,
        payload: &mut [u8],
    ) -> Result<Outcome, IcError> {
        let Ok((msg, _)) = ShutdownMsg::ref_from_prefix(payload) else {
            return Err(IcError::TruncatedPayload {
                msg_type: Self::MSG_TYPE,
                needed: SHUTDOWN_MIN_PAYLOAD,
                got: payload.len(),
            });
        };
        let [reason, timeout, flags] =
            [msg.reason_code, msg.timeout_seconds, msg.flags].map(|f| f.get());
        let (kind, force) = match decode_flags(flags) {
            Ok(k) => k,
            Err(e) => {
                log::warn!("shutdown: {e}");
                return Ok(Outcome::fail(IcStatus::E_FAIL, e));
            }
        };
        let request = ShutdownRequest {
            kind,
            force,
            reason,
            flags,
            timeout_seconds: timeout,
            version,
        };
        if self.policy.decide(&request) {
            log::info!("shutdown: {kind:?} accepted (reason {reason:#x}, timeout {timeout} s)");
            Ok(Outcome::ok(IcEvent::ShutdownRequested(request)))
        } else {
            log::info!("shutdown: {kind:?} refused");
            Ok(Outcome {
                status: IcStatus::E_FAIL,
                event: IcEvent::ShutdownRefused(request),
            })
        }
    }
}
