//! Time synchronisation (icmsgtype 4, devices §6.5): after negotiation the host sends a SYNC
//! sample, then SAMPLE messages (periodically or on command) carrying host UTC and, for
//! service version 4, the partition reference time at which it was sampled.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use super::engine::{IcHandle, IcService};
use super::wire::{IcVersion, MSG_TIMESYNC, S_OK};

/// Payload size for service versions below 4 (parent, child, round trip, flags; packed).
pub const TIMESYNC_V3_PAYLOAD_SIZE: usize = 25;
/// Payload size for service version 4 (parent, reference time, flags, leap, stratum, 3
/// reserved; packed, Linux `ictimesync_ref_data`).
pub const TIMESYNC_V4_PAYLOAD_SIZE: usize = 22;
/// FILETIME of the Unix epoch (100 ns units since 1601-01-01).
pub const FILETIME_UNIX_EPOCH: u64 = 116_444_736_000_000_000;
/// Default host UTC at reference time 0: 2024-01-01T00:00:00Z as FILETIME.
pub const DEFAULT_HOST_EPOCH: u64 = FILETIME_UNIX_EPOCH + 1_704_067_200 * 10_000_000;

/// Time-sync message kind (flags byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSyncKind {
    /// 0: just answer.
    Probe,
    /// 1: set the clock now.
    Sync,
    /// 2: periodic sample.
    Sample,
}

impl TimeSyncKind {
    /// The flags byte.
    pub fn flags(self) -> u8 {
        match self {
            Self::Probe => 0,
            Self::Sync => 1,
            Self::Sample => 2,
        }
    }
}

/// One message sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeSample {
    /// Kind.
    pub kind: TimeSyncKind,
    /// Host UTC (FILETIME) in the message.
    pub parent_time: u64,
    /// Reference time at sampling (sent only with v4).
    pub reference_time: u64,
    /// Whether the v4 layout was used.
    pub v4: bool,
}

/// Source of the partition reference time (100 ns since partition start).
pub type ReferenceTimeSource = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Host time-sync service.
pub struct TimeSync {
    clock: ReferenceTimeSource,
    epoch: u64,
    period: Option<u32>,
    polls: u32,
    queue: VecDeque<TimeSyncKind>,
    sent: Vec<TimeSample>,
    acked: u64,
}

impl fmt::Debug for TimeSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeSync")
            .field("epoch", &self.epoch)
            .field("period", &self.period)
            .field("queue", &self.queue)
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

impl TimeSync {
    /// A time-sync service: host UTC = `epoch` (FILETIME at reference time 0) + `clock()`;
    /// a SAMPLE every `period` polls if set.
    pub fn new(clock: ReferenceTimeSource, epoch: u64, period: Option<u32>) -> Self {
        Self {
            clock,
            epoch,
            period,
            polls: 0,
            queue: VecDeque::new(),
            sent: Vec::new(),
            acked: 0,
        }
    }

    /// Host UTC now (FILETIME).
    pub fn host_time(&self) -> u64 {
        self.epoch.wrapping_add((self.clock)())
    }

    /// Queues a message of `kind`.
    pub fn send(&mut self, kind: TimeSyncKind) {
        self.queue.push_back(kind);
    }

    /// Every message sent, in order.
    pub fn sent(&self) -> &[TimeSample] {
        &self.sent
    }

    /// Messages the guest answered correctly (S_OK, payload echoed).
    pub fn acked(&self) -> u64 {
        self.acked
    }
}

impl IcService for TimeSync {
    const MSG_TYPE: u16 = MSG_TIMESYNC;
    const NAME: &'static str = "timesync";

    /// WS2016+: 1.0, 3.0, 4.0.
    fn default_versions() -> Vec<IcVersion> {
        vec![
            IcVersion::new(1, 0),
            IcVersion::new(3, 0),
            IcVersion::new(4, 0),
        ]
    }

    fn tick(&mut self) {
        if let Some(p) = self.period.filter(|&p| p > 0) {
            self.polls += 1;
            if self.polls.is_multiple_of(p) && !self.queue.contains(&TimeSyncKind::Sample) {
                self.queue.push_back(TimeSyncKind::Sample);
            }
        }
    }

    fn on_negotiated(&mut self, _version: IcVersion) {
        self.queue.push_front(TimeSyncKind::Sync);
    }

    fn next_request(&mut self, version: IcVersion) -> Option<Vec<u8>> {
        let kind = self.queue.pop_front()?;
        let reference_time = (self.clock)();
        let parent_time = self.epoch.wrapping_add(reference_time);
        let v4 = version.major >= 4;
        let p = if v4 {
            let mut p = vec![0u8; TIMESYNC_V4_PAYLOAD_SIZE];
            p[0..8].copy_from_slice(&parent_time.to_le_bytes());
            p[8..16].copy_from_slice(&reference_time.to_le_bytes());
            p[16] = kind.flags();
            p
        } else {
            let mut p = vec![0u8; TIMESYNC_V3_PAYLOAD_SIZE];
            p[0..8].copy_from_slice(&parent_time.to_le_bytes());
            p[24] = kind.flags();
            p
        };
        self.sent.push(TimeSample {
            kind,
            parent_time,
            reference_time,
            v4,
        });
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
        let mut ok = true;
        if status != S_OK {
            errors.push(format!("timesync answer status {status:#x}, expected S_OK"));
            ok = false;
        }
        if response.get(..request.len()) != Some(request) {
            errors.push("timesync answer does not echo the sample unchanged".into());
            ok = false;
        }
        if ok {
            self.acked += 1;
        }
    }

    fn on_close(&mut self) {
        self.queue.clear();
    }
}

impl IcHandle<TimeSync> {
    /// Queues a SYNC message.
    pub fn sync_now(&self) {
        self.lock().service_mut().send(TimeSyncKind::Sync);
    }

    /// Queues a SAMPLE message.
    pub fn sample_now(&self) {
        self.lock().service_mut().send(TimeSyncKind::Sample);
    }

    /// Messages the guest answered correctly.
    pub fn acked(&self) -> u64 {
        self.lock().service().acked()
    }
}
