//! The common host IC engine: negotiation first, then the service's requests one at a time,
//! every answer checked (devices §6.1–6.2, §7.6–7.7).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::vmbus::{DeviceModel, HostChannel, HostPacket, PACKET_TYPE_INBAND};

use super::wire::{
    ICFLAGS_GUEST_RESPONSE, ICMSG_HDR_SIZE, IcHeader, IcVersion, MSG_NEGOTIATE,
    NEGOTIATE_RESPONSE_ICMSGSIZE, S_OK, build_message, negotiate_payload, u16_at,
};

/// Framework versions a WS2016+ host offers by default: 1.0 and 3.0.
pub const DEFAULT_FRAMEWORK_VERSIONS: &[IcVersion] = &[IcVersion::new(1, 0), IcVersion::new(3, 0)];

/// Where the engine sends its packets: [`HostChannel`] in the mock host, [`RecordingChannel`]
/// in unit tests of the state machines.
pub trait IcChannel {
    /// Sends `payload` as an in-band packet (type 6) without the completion flag.
    fn send_ic(&mut self, payload: &[u8], transaction_id: u64) -> Result<(), String>;

    /// Reports a guest protocol violation to the transport's own log (the mock host's
    /// `protocol_errors`). The engine also keeps its own list.
    fn report(&mut self, error: &str) {
        let _ = error;
    }
}

impl IcChannel for HostChannel {
    fn send_ic(&mut self, payload: &[u8], transaction_id: u64) -> Result<(), String> {
        self.send_inband(payload, transaction_id, false)
            .map_err(|e| e.to_string())
    }

    fn report(&mut self, error: &str) {
        self.protocol_error(error);
    }
}

/// An [`IcChannel`] that records what was sent, for driving a model without a guest.
#[derive(Clone, Debug, Default)]
pub struct RecordingChannel {
    /// Every packet sent: (transaction id, payload).
    pub sent: Vec<(u64, Vec<u8>)>,
    /// Every error reported through [`IcChannel::report`].
    pub reported: Vec<String>,
    /// When set, sends fail (as a closed channel would).
    pub fail_sends: bool,
}

impl RecordingChannel {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes and returns the oldest sent packet.
    pub fn take(&mut self) -> Option<(u64, Vec<u8>)> {
        if self.sent.is_empty() {
            None
        } else {
            Some(self.sent.remove(0))
        }
    }
}

impl IcChannel for RecordingChannel {
    fn send_ic(&mut self, payload: &[u8], transaction_id: u64) -> Result<(), String> {
        if self.fail_sends {
            return Err("channel not open".into());
        }
        self.sent.push((transaction_id, payload.to_vec()));
        Ok(())
    }

    fn report(&mut self, error: &str) {
        self.reported.push(error.to_string());
    }
}

/// One service's part of the host IC: what it sends and how it judges the answers.
pub trait IcService: Send + 'static {
    /// The service's icmsgtype.
    const MSG_TYPE: u16;
    /// Short name for error messages ("heartbeat", …).
    const NAME: &'static str;

    /// Service versions the host offers by default, in the order they go on the wire.
    fn default_versions() -> Vec<IcVersion>;

    /// Called once per poll before [`Self::next_request`] (periodic services count here).
    fn tick(&mut self) {}

    /// Negotiation succeeded with service version `version` (e.g. time sync queues SYNC).
    fn on_negotiated(&mut self, version: IcVersion) {
        let _ = version;
    }

    /// The next request payload (after the 28-byte header) to send, if one is due. Called
    /// only while negotiated and nothing is outstanding.
    fn next_request(&mut self, version: IcVersion) -> Option<Vec<u8>>;

    /// Judges the guest's answer to `request`: `status` from the header, `response` = bytes
    /// after the header (possibly padded). Violations go into `errors` (without prefix).
    fn on_response(
        &mut self,
        version: IcVersion,
        request: &[u8],
        status: u32,
        response: &[u8],
        errors: &mut Vec<String>,
    );

    /// The channel closed: drop queued work that made sense only on the open channel.
    fn on_close(&mut self) {}
}

/// Where negotiation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiation {
    /// Channel not open (or closed).
    NotStarted,
    /// NEGOTIATE sent with this VMBus transaction id; waiting for the answer.
    Pending(u64),
    /// The guest picked these versions.
    Done {
        /// Chosen framework version.
        framework: IcVersion,
        /// Chosen service version.
        service: IcVersion,
    },
    /// The guest answered counts 0/0 (no common version); the host sends nothing more.
    Refused,
    /// The guest's answer was malformed (see the protocol errors).
    Failed,
}

/// A request in flight.
#[derive(Clone, Debug)]
struct Outstanding {
    transaction_id: u64,
    message: Vec<u8>,
    /// A raw probe: the status the answer must carry (the service does not see it).
    expect_status: Option<u32>,
}

/// A raw message queued with [`IcModel::probe`].
#[derive(Clone, Debug)]
struct Probe {
    msg_type: u16,
    payload: Vec<u8>,
    expect_status: u32,
}

/// The host side of one IC channel: generic engine plus service `S`.
pub struct IcModel<S: IcService> {
    service: S,
    frameworks: Vec<IcVersion>,
    services: Vec<IcVersion>,
    negotiation: Negotiation,
    outstanding: Option<Outstanding>,
    next_transaction_id: u64,
    errors: Vec<String>,
    answered: u64,
    probes: VecDeque<Probe>,
}

impl<S: IcService> IcModel<S> {
    /// A model offering [`DEFAULT_FRAMEWORK_VERSIONS`] and `S::default_versions()`.
    pub fn new(service: S) -> Self {
        Self {
            service,
            frameworks: DEFAULT_FRAMEWORK_VERSIONS.to_vec(),
            services: S::default_versions(),
            negotiation: Negotiation::NotStarted,
            outstanding: None,
            next_transaction_id: 1,
            errors: Vec::new(),
            answered: 0,
            probes: VecDeque::new(),
        }
    }

    /// Sets the versions offered in the next NEGOTIATE (to test fallback and refusal).
    pub fn set_offered_versions(&mut self, frameworks: &[IcVersion], services: &[IcVersion]) {
        self.frameworks = frameworks.to_vec();
        self.services = services.to_vec();
    }

    /// Framework and service versions offered.
    pub fn offered_versions(&self) -> (&[IcVersion], &[IcVersion]) {
        (&self.frameworks, &self.services)
    }

    /// The service part.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// The service part, mutably (to queue commands).
    pub fn service_mut(&mut self) -> &mut S {
        &mut self.service
    }

    /// Where negotiation stands.
    pub fn negotiation(&self) -> Negotiation {
        self.negotiation
    }

    /// The negotiated (framework, service) versions, once done.
    pub fn negotiated(&self) -> Option<(IcVersion, IcVersion)> {
        match self.negotiation {
            Negotiation::Done { framework, service } => Some((framework, service)),
            _ => None,
        }
    }

    /// Every guest protocol violation seen so far.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Takes the violations seen so far.
    pub fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }

    /// Whether a request (NEGOTIATE included) is waiting for its answer.
    pub fn busy(&self) -> bool {
        self.outstanding.is_some()
    }

    /// Answers received and checked (NEGOTIATE included), whatever their verdict.
    pub fn answers(&self) -> u64 {
        self.answered
    }

    fn error(&mut self, ch: &mut dyn IcChannel, e: String) {
        let e = format!("IC {}: {e}", S::NAME);
        log::warn!("{e}");
        ch.report(&e);
        self.errors.push(e);
    }

    /// Queues a raw request of `msg_type` with `payload` (sent before the service's next
    /// request, with the negotiated versions); the answer must carry `expect_status`, e.g.
    /// E_FAIL for a message type the service does not know (Linux answers those with E_FAIL
    /// and flags 0x5). The header checks apply as for any request.
    pub fn probe(&mut self, msg_type: u16, payload: Vec<u8>, expect_status: u32) {
        self.probes.push_back(Probe {
            msg_type,
            payload,
            expect_status,
        });
    }

    fn send(
        &mut self,
        ch: &mut dyn IcChannel,
        header: IcHeader,
        payload: &[u8],
        expect_status: Option<u32>,
    ) -> Option<u64> {
        let tid = self.next_transaction_id;
        let mut header = header;
        header.ic_transaction_id = tid as u8;
        let message = build_message(&header, payload);
        match ch.send_ic(&message, tid) {
            Ok(()) => {
                self.next_transaction_id = self.next_transaction_id.wrapping_add(1);
                self.outstanding = Some(Outstanding {
                    transaction_id: tid,
                    message,
                    expect_status,
                });
                Some(tid)
            }
            Err(e) => {
                log::warn!("IC {}: send failed: {e}", S::NAME);
                None
            }
        }
    }

    /// The channel opened: send NEGOTIATE.
    pub fn open(&mut self, ch: &mut dyn IcChannel) {
        self.outstanding = None;
        let framework = self.frameworks.iter().max().copied();
        let service = self.services.iter().max().copied();
        let payload = negotiate_payload(&self.frameworks, &self.services);
        let header = IcHeader::request(
            MSG_NEGOTIATE,
            framework.unwrap_or(IcVersion::new(0, 0)),
            service.unwrap_or(IcVersion::new(0, 0)),
            payload.len(),
            0,
        );
        self.negotiation = match self.send(ch, header, &payload, None) {
            Some(tid) => Negotiation::Pending(tid),
            None => Negotiation::NotStarted,
        };
    }

    /// One poll: let the service count ([`IcService::tick`]), then [`Self::pump`].
    pub fn poll(&mut self, ch: &mut dyn IcChannel) {
        self.service.tick();
        self.pump(ch);
    }

    /// Sends the service's next due request if negotiated and nothing is in flight.
    pub fn pump(&mut self, ch: &mut dyn IcChannel) {
        if self.outstanding.is_some() {
            return;
        }
        let Negotiation::Done { framework, service } = self.negotiation else {
            return;
        };
        if let Some(p) = self.probes.pop_front() {
            let header = IcHeader::request(p.msg_type, framework, service, p.payload.len(), 0);
            self.send(ch, header, &p.payload, Some(p.expect_status));
        } else if let Some(payload) = self.service.next_request(service) {
            let header = IcHeader::request(S::MSG_TYPE, framework, service, payload.len(), 0);
            self.send(ch, header, &payload, None);
        }
    }

    /// The channel closed.
    pub fn close(&mut self) {
        self.negotiation = Negotiation::NotStarted;
        self.outstanding = None;
        self.service.on_close();
    }

    /// A packet from the guest.
    pub fn packet(&mut self, ch: &mut dyn IcChannel, packet: &HostPacket) {
        if packet.packet_type != PACKET_TYPE_INBAND {
            self.error(
                ch,
                format!(
                    "guest sent packet type {:#x}; IC answers are in-band (6)",
                    packet.packet_type
                ),
            );
            return;
        }
        if packet.completion_requested() {
            self.error(
                ch,
                "guest answer requests a completion (flags bit 0)".into(),
            );
        }
        let Some(out) = self.outstanding.take() else {
            self.error(
                ch,
                format!(
                    "unsolicited packet (transaction id {}) with no request outstanding",
                    packet.transaction_id
                ),
            );
            return;
        };
        if packet.transaction_id != out.transaction_id {
            self.error(
                ch,
                format!(
                    "answer has transaction id {}, the outstanding request {}",
                    packet.transaction_id, out.transaction_id
                ),
            );
            self.outstanding = Some(out);
            return;
        }
        self.answered += 1;
        let Some(req) = IcHeader::parse(&out.message) else {
            return;
        };
        let Some(resp) = IcHeader::parse(&packet.payload) else {
            self.error(
                ch,
                format!(
                    "answer of {} bytes is shorter than the 28-byte IC header",
                    packet.payload.len()
                ),
            );
            if req.msg_type == MSG_NEGOTIATE {
                self.negotiation = Negotiation::Failed;
            }
            return;
        };
        let mut errs = self.check_header(&req, &resp, out.message.len(), packet.payload.len());
        let body = &packet.payload[ICMSG_HDR_SIZE..];
        if let Some(want) = out.expect_status {
            if resp.status != want {
                errs.push(format!(
                    "answer to message type {} has status {:#x}, expected {want:#x}",
                    req.msg_type, resp.status
                ));
            }
        } else if req.msg_type == MSG_NEGOTIATE {
            self.negotiation = self.check_negotiate(&resp, body, &mut errs);
            if let Negotiation::Done { service, .. } = self.negotiation {
                self.service.on_negotiated(service);
            }
        } else if let Some((_, service)) = self.negotiated() {
            let mut service_errs = Vec::new();
            self.service.on_response(
                service,
                &out.message[ICMSG_HDR_SIZE..],
                resp.status,
                body,
                &mut service_errs,
            );
            errs.extend(service_errs);
        }
        for e in errs {
            self.error(ch, e);
        }
    }

    /// Checks the answer's header against the request's: everything echoed except status and
    /// icflags (and icmsgsize 16 for NEGOTIATE), icflags exactly 0x5, the whole message back.
    fn check_header(
        &self,
        req: &IcHeader,
        resp: &IcHeader,
        req_len: usize,
        resp_len: usize,
    ) -> Vec<String> {
        let mut errs = Vec::new();
        let negotiate = req.msg_type == MSG_NEGOTIATE;
        if resp.icflags != ICFLAGS_GUEST_RESPONSE {
            errs.push(format!(
                "answer icflags {:#x}, expected TRANSACTION|RESPONSE (0x5)",
                resp.icflags
            ));
        }
        if resp.pipe_flags != req.pipe_flags || resp.pipe_msgsize != req.pipe_msgsize {
            errs.push(format!(
                "pipe header {:#x}/{} not echoed (sent {:#x}/{})",
                resp.pipe_flags, resp.pipe_msgsize, req.pipe_flags, req.pipe_msgsize
            ));
        }
        if resp.framework != req.framework || resp.service != req.service {
            errs.push(format!(
                "header versions {}/{} not echoed (sent {}/{})",
                resp.framework, resp.service, req.framework, req.service
            ));
        }
        if resp.msg_type != req.msg_type {
            errs.push(format!(
                "answer icmsgtype {}, request was {}",
                resp.msg_type, req.msg_type
            ));
        }
        if resp.ic_transaction_id != req.ic_transaction_id {
            errs.push(format!(
                "ictransaction_id {} not echoed (sent {})",
                resp.ic_transaction_id, req.ic_transaction_id
            ));
        }
        if resp.reserved != req.reserved {
            errs.push("reserved header bytes changed".into());
        }
        let want_size = if negotiate {
            NEGOTIATE_RESPONSE_ICMSGSIZE
        } else {
            req.icmsgsize
        };
        if resp.icmsgsize != want_size {
            errs.push(format!(
                "answer icmsgsize {}, expected {want_size}",
                resp.icmsgsize
            ));
        }
        let min_len = if negotiate {
            ICMSG_HDR_SIZE + usize::from(NEGOTIATE_RESPONSE_ICMSGSIZE)
        } else {
            req_len
        };
        if resp_len < min_len {
            errs.push(format!(
                "answer has {resp_len} bytes, the message needs {min_len}"
            ));
        }
        errs
    }

    fn check_negotiate(&self, resp: &IcHeader, body: &[u8], errs: &mut Vec<String>) -> Negotiation {
        let (Some(fw_count), Some(msg_count)) = (u16_at(body, 0), u16_at(body, 2)) else {
            errs.push("NEGOTIATE answer too short for the version counts".into());
            return Negotiation::Failed;
        };
        match (fw_count, msg_count) {
            (0, 0) => Negotiation::Refused,
            (1, 1) => {
                if resp.status != S_OK {
                    errs.push(format!(
                        "NEGOTIATE answer with counts 1/1 has status {:#x}, expected S_OK",
                        resp.status
                    ));
                }
                let (Some(fmaj), Some(fmin), Some(smaj), Some(smin)) = (
                    u16_at(body, 8),
                    u16_at(body, 10),
                    u16_at(body, 12),
                    u16_at(body, 14),
                ) else {
                    errs.push("NEGOTIATE answer too short for the chosen versions".into());
                    return Negotiation::Failed;
                };
                let framework = IcVersion::new(fmaj, fmin);
                let service = IcVersion::new(smaj, smin);
                let mut ok = true;
                if !self.frameworks.contains(&framework) {
                    errs.push(format!("guest chose framework {framework}, never offered"));
                    ok = false;
                }
                if !self.services.contains(&service) {
                    errs.push(format!(
                        "guest chose {} version {service}, never offered",
                        S::NAME
                    ));
                    ok = false;
                }
                if ok {
                    Negotiation::Done { framework, service }
                } else {
                    Negotiation::Failed
                }
            }
            (f, m) => {
                errs.push(format!(
                    "NEGOTIATE answer counts {f}/{m}, expected 1/1 or 0/0"
                ));
                Negotiation::Failed
            }
        }
    }
}

/// Shared handle on an [`IcModel`]: the mock host owns an [`IcDevice`] wrapping the same
/// model, tests and the demo keep the handle to queue commands and read results.
pub struct IcHandle<S: IcService>(Arc<Mutex<IcModel<S>>>);

impl<S: IcService> Clone for IcHandle<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<S: IcService> IcHandle<S> {
    /// A handle on a new model for `service`.
    pub fn new(service: S) -> Self {
        Self(Arc::new(Mutex::new(IcModel::new(service))))
    }

    /// Locks the model (poisoning is ignored: the model stays usable).
    pub fn lock(&self) -> MutexGuard<'_, IcModel<S>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The [`DeviceModel`] to register with the mock host.
    pub fn device(&self) -> IcDevice<S> {
        IcDevice(self.clone())
    }

    /// Where negotiation stands.
    pub fn negotiation(&self) -> Negotiation {
        self.lock().negotiation()
    }

    /// Negotiated (framework, service) versions.
    pub fn negotiated(&self) -> Option<(IcVersion, IcVersion)> {
        self.lock().negotiated()
    }

    /// Every guest protocol violation seen so far.
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors().to_vec()
    }

    /// Sets the versions offered in the next NEGOTIATE.
    pub fn set_offered_versions(&self, frameworks: &[IcVersion], services: &[IcVersion]) {
        self.lock().set_offered_versions(frameworks, services);
    }
}

/// The [`DeviceModel`] face of an [`IcHandle`]: `on_open` negotiates, `poll` sends due requests,
/// `on_packet` checks answers.
pub struct IcDevice<S: IcService>(IcHandle<S>);

impl<S: IcService> DeviceModel for IcDevice<S> {
    fn on_open(&mut self, ch: &mut HostChannel) {
        self.0.lock().open(ch);
    }

    fn on_packet(&mut self, ch: &mut HostChannel, packet: &HostPacket) {
        let mut m = self.0.lock();
        m.packet(ch, packet);
        // Keep the pipeline moving without waiting for the next step.
        m.pump(ch);
    }

    fn poll(&mut self, ch: &mut HostChannel) {
        self.0.lock().poll(ch);
    }

    fn on_close(&mut self) {
        self.0.lock().close();
    }
}
