//! Heartbeat (icmsgtype 1, devices §6.3): the host sends a sequence number, the guest answers
//! it plus one with S_OK.

use super::engine::{IcHandle, IcService};
use super::wire::{IcVersion, MSG_HEARTBEAT, S_OK, u64_at};

/// Heartbeat payload the host sends: sequence number (8) + 32 reserved bytes.
pub const HEARTBEAT_PAYLOAD_SIZE: usize = 40;

/// Host heartbeat service: a beat every `period` polls (if set) or on [`Self::beat_now`].
#[derive(Clone, Debug)]
pub struct Heartbeat {
    period: Option<u32>,
    polls: u32,
    pending: u32,
    next_seq: u64,
    beats: u64,
    last_answer: Option<u64>,
}

impl Heartbeat {
    /// A heartbeat that beats every `period` polls (`None`: only on command). The first
    /// sequence number is 0; each next request carries the last answer.
    pub fn new(period: Option<u32>) -> Self {
        Self {
            period,
            polls: 0,
            pending: 0,
            next_seq: 0,
            beats: 0,
            last_answer: None,
        }
    }

    /// Queues one heartbeat request (sent once negotiated and idle).
    pub fn beat_now(&mut self) {
        self.pending += 1;
    }

    /// Sets the sequence number of the next request.
    pub fn set_next_sequence(&mut self, seq: u64) {
        self.next_seq = seq;
    }

    /// Healthy beats: answers with S_OK carrying sequence + 1.
    pub fn beats(&self) -> u64 {
        self.beats
    }

    /// The sequence number in the last answer.
    pub fn last_answer(&self) -> Option<u64> {
        self.last_answer
    }
}

impl IcService for Heartbeat {
    const MSG_TYPE: u16 = MSG_HEARTBEAT;
    const NAME: &'static str = "heartbeat";

    /// WS2016+: 1.0 and 3.0.
    fn default_versions() -> Vec<IcVersion> {
        vec![IcVersion::new(1, 0), IcVersion::new(3, 0)]
    }

    fn tick(&mut self) {
        if let Some(p) = self.period.filter(|&p| p > 0) {
            self.polls += 1;
            if self.polls.is_multiple_of(p) {
                // A beat not yet sent is not queued twice: a late guest just misses beats.
                self.pending = self.pending.max(1);
            }
        }
    }

    fn next_request(&mut self, _version: IcVersion) -> Option<Vec<u8>> {
        if self.pending == 0 {
            return None;
        }
        self.pending -= 1;
        let mut p = vec![0u8; HEARTBEAT_PAYLOAD_SIZE];
        p[..8].copy_from_slice(&self.next_seq.to_le_bytes());
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
        let sent = u64_at(request, 0).unwrap_or(0);
        let Some(got) = u64_at(response, 0) else {
            errors.push("heartbeat answer shorter than the 8-byte sequence".into());
            return;
        };
        self.last_answer = Some(got);
        self.next_seq = got;
        let mut ok = true;
        if status != S_OK {
            errors.push(format!(
                "heartbeat answer status {status:#x}, expected S_OK"
            ));
            ok = false;
        }
        if got != sent.wrapping_add(1) {
            errors.push(format!(
                "heartbeat answer sequence {got}, expected {} (sent {sent})",
                sent.wrapping_add(1)
            ));
            ok = false;
            self.next_seq = sent.wrapping_add(1);
        }
        if ok {
            self.beats += 1;
        }
    }
}

impl IcHandle<Heartbeat> {
    /// Queues one heartbeat request.
    pub fn beat_now(&self) {
        self.lock().service_mut().beat_now();
    }

    /// Healthy beats so far.
    pub fn beats(&self) -> u64 {
        self.lock().service().beats()
    }
}
