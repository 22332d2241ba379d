//! Shutdown (icmsgtype 3, devices §6.4): on command the host asks the guest to power off,
//! restart or hibernate; the guest answers S_OK (accepted, before acting) or E_FAIL.

use std::collections::VecDeque;

use super::engine::{IcHandle, IcService};
use super::wire::{E_FAIL, IcVersion, MSG_SHUTDOWN, S_OK, put_utf16z, u32_at};

/// Shutdown payload: reason (4), timeout (4), flags (4), display message (2048).
pub const SHUTDOWN_PAYLOAD_SIZE: usize = 2060;
/// Flags bit 0: force.
pub const SHUTDOWN_FLAG_FORCE: u32 = 0x1;
/// Flags bit 1: restart (service 3.1+).
pub const SHUTDOWN_FLAG_RESTART: u32 = 0x2;
/// Flags bit 2: hibernate (service 3.2+).
pub const SHUTDOWN_FLAG_HIBERNATE: u32 = 0x4;
/// Reason code "planned" (0x80000000).
pub const SHUTDOWN_REASON_PLANNED: u32 = 0x8000_0000;

/// What the host asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownKind {
    /// Power off (flags 0, or 1 with force).
    Shutdown,
    /// Restart (flag 2).
    Restart,
    /// Hibernate (flag 4).
    Hibernate,
}

impl ShutdownKind {
    /// The flags word for this kind.
    pub fn flags(self, force: bool) -> u32 {
        let kind = match self {
            Self::Shutdown => 0,
            Self::Restart => SHUTDOWN_FLAG_RESTART,
            Self::Hibernate => SHUTDOWN_FLAG_HIBERNATE,
        };
        kind | if force { SHUTDOWN_FLAG_FORCE } else { 0 }
    }
}

/// One shutdown request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownRequest {
    /// What to do.
    pub kind: ShutdownKind,
    /// Force (flag bit 0).
    pub force: bool,
    /// Reason code (e.g. [`SHUTDOWN_REASON_PLANNED`]).
    pub reason: u32,
    /// Timeout in seconds.
    pub timeout_seconds: u32,
    /// Display message (UTF-16LE in the 2048-byte field, truncated).
    pub message: String,
}

/// What the guest answered to the last request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Nothing asked yet.
    None,
    /// Asked, no answer yet.
    Pending,
    /// S_OK: the guest will do it.
    Accepted,
    /// E_FAIL: the guest refused (e.g. hibernation impossible, unknown flags).
    Refused,
    /// Any other status (also recorded as a protocol error).
    Other(u32),
}

/// Host shutdown service.
#[derive(Clone, Debug)]
pub struct Shutdown {
    queue: VecDeque<ShutdownRequest>,
    outcome: ShutdownOutcome,
    history: Vec<(ShutdownRequest, ShutdownOutcome)>,
    in_flight: Option<ShutdownRequest>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown service with nothing queued.
    pub fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            outcome: ShutdownOutcome::None,
            history: Vec::new(),
            in_flight: None,
        }
    }

    /// Queues a request with an empty display message.
    pub fn request_shutdown(
        &mut self,
        kind: ShutdownKind,
        force: bool,
        reason: u32,
        timeout_seconds: u32,
    ) {
        self.request(ShutdownRequest {
            kind,
            force,
            reason,
            timeout_seconds,
            message: String::new(),
        });
    }

    /// Queues a request.
    pub fn request(&mut self, request: ShutdownRequest) {
        self.outcome = ShutdownOutcome::Pending;
        self.queue.push_back(request);
    }

    /// The guest's verdict on the most recent request.
    pub fn outcome(&self) -> ShutdownOutcome {
        self.outcome
    }

    /// Every answered request with its verdict.
    pub fn history(&self) -> &[(ShutdownRequest, ShutdownOutcome)] {
        &self.history
    }
}

impl IcService for Shutdown {
    const MSG_TYPE: u16 = MSG_SHUTDOWN;
    const NAME: &'static str = "shutdown";

    /// WS2016+/WS2022 (and OpenVMM): 1.0, 3.0, 3.1, 3.2.
    fn default_versions() -> Vec<IcVersion> {
        vec![
            IcVersion::new(1, 0),
            IcVersion::new(3, 0),
            IcVersion::new(3, 1),
            IcVersion::new(3, 2),
        ]
    }

    fn next_request(&mut self, _version: IcVersion) -> Option<Vec<u8>> {
        let r = self.queue.pop_front()?;
        let mut p = vec![0u8; SHUTDOWN_PAYLOAD_SIZE];
        p[0..4].copy_from_slice(&r.reason.to_le_bytes());
        p[4..8].copy_from_slice(&r.timeout_seconds.to_le_bytes());
        p[8..12].copy_from_slice(&r.kind.flags(r.force).to_le_bytes());
        if !r.message.is_empty() {
            put_utf16z(&mut p[12..], &r.message);
        }
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
        let outcome = match status {
            S_OK => ShutdownOutcome::Accepted,
            E_FAIL => ShutdownOutcome::Refused,
            other => {
                errors.push(format!(
                    "shutdown answer status {other:#x}, expected S_OK or E_FAIL"
                ));
                ShutdownOutcome::Other(other)
            }
        };
        if response.get(..12) != request.get(..12) {
            errors.push(format!(
                "shutdown answer changed reason/timeout/flags: {:?}",
                (
                    u32_at(response, 0),
                    u32_at(response, 4),
                    u32_at(response, 8)
                )
            ));
        }
        if self.queue.is_empty() {
            self.outcome = outcome;
        }
        if let Some(r) = self.in_flight.take() {
            self.history.push((r, outcome));
        }
    }

    fn on_close(&mut self) {
        if let Some(r) = self.in_flight.take() {
            self.queue.push_front(r);
        }
    }
}

impl IcHandle<Shutdown> {
    /// Queues a shutdown request (sent once negotiated and idle).
    pub fn request_shutdown(
        &self,
        kind: ShutdownKind,
        force: bool,
        reason: u32,
        timeout_seconds: u32,
    ) {
        self.lock()
            .service_mut()
            .request_shutdown(kind, force, reason, timeout_seconds);
    }

    /// The guest's verdict on the most recent request.
    pub fn outcome(&self) -> ShutdownOutcome {
        self.lock().service().outcome()
    }
}
