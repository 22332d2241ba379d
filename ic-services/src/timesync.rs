//! Time synchronisation (icmsgtype 4, devices §6.5).
//!
//! The host sends its UTC time as a Windows FILETIME (100 ns units since 1601-01-01). With
//! service version 4 the sample also carries the partition reference counter value at which the
//! host took it, so the guest can add the delay between sampling and now; with older versions
//! the guest can only take the time of receipt. The service keeps the last accepted sample as a
//! pair (host time, reference time at which that host time was true) and turns it into the
//! current UTC time on demand: `host_time + (reference_now − reference_time)`.
//!
//! SYNC asks the OS to step its clock now; SAMPLE is a periodic hint; PROBE (0) is just
//! answered. The reply is the request unchanged apart from the header status and flags.

use crate::protocol::{
    FILETIME_UNIX_EPOCH, IcVersion, TimeSyncFlags, TimeSyncMsgV3, TimeSyncMsgV4,
};
use crate::{IcError, IcEvent, IcHandler, IcMsgType, Outcome};
use vmbus_guest::protocol::DeviceClass;
use zerocopy::FromBytes;

/// Time-sync service versions in preference order (Linux `ts_versions`: 4.0, 3.0, 1.0).
pub const TIMESYNC_VERSIONS: &[IcVersion] = &[
    IcVersion::new(4, 0),
    IcVersion::new(3, 0),
    IcVersion::new(1, 0),
];

/// Samples (and the kept sample, when read) older than this, in 100 ns units, are stale:
/// 600 s, Linux's `HOST_TIMESYNC_DELAY_THRESH`.
pub const STALE_AFTER: u64 = 600 * 10_000_000;

/// Largest packet the time-sync channel receives (NEGOTIATE with 200 versions; samples are at
/// most 28 payload bytes, OpenVMM's padded form): the buffer size an
/// [`crate::channel::IcChannel`] needs.
pub const MAX_PACKET: usize = crate::channel::max_packet(28);

/// A source of partition reference time (100 ns units since partition start), e.g.
/// [`winhv::time::ReferenceClock::now`]. Implemented for closures.
pub trait ReferenceTime {
    /// The partition reference counter now.
    fn reference_now(&mut self) -> u64;
}

impl<F: FnMut() -> u64> ReferenceTime for F {
    fn reference_now(&mut self) -> u64 {
        self()
    }
}

/// [`ReferenceTime`] from winhv's reference clock (TSC page or TIME_REF_COUNT) on a CPU.
pub struct WinhvReferenceTime<'a, C: winhv::Cpu> {
    /// The clock.
    pub clock: &'a winhv::ReferenceClock,
    /// The CPU to read it on.
    pub cpu: &'a C,
}

impl<C: winhv::Cpu> ReferenceTime for WinhvReferenceTime<'_, C> {
    fn reference_now(&mut self) -> u64 {
        self.clock.now(self.cpu)
    }
}

/// Wall-clock time: seconds and nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime {
    /// Whole seconds since the Unix epoch.
    pub secs: u64,
    /// Nanoseconds within the second (< 1 000 000 000).
    pub nanos: u32,
}

impl UnixTime {
    /// Converts a FILETIME (100 ns since 1601); `None` before 1970.
    pub fn from_filetime(filetime: u64) -> Option<Self> {
        let since_1970 = filetime.checked_sub(FILETIME_UNIX_EPOCH)?;
        Some(Self {
            secs: since_1970 / 10_000_000,
            // < 10^7 * 100 < 2^32.
            nanos: (since_1970 % 10_000_000) as u32 * 100,
        })
    }
}

/// An accepted time sample, as reported to the OS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeSample {
    /// Host UTC (FILETIME) valid at `reference_time`.
    pub host_time: u64,
    /// Partition reference time at which `host_time` was true (v4: the host's sampling time;
    /// older versions: the time of receipt).
    pub reference_time: u64,
    /// Host UTC corrected to the time of receipt.
    pub utc_at_receipt: UnixTime,
    /// SYNC / SAMPLE / PROBE.
    pub flags: TimeSyncFlags,
    /// v4 leap-second flags (0 for older versions).
    pub leap_flags: u8,
    /// v4 stratum (0 for older versions).
    pub stratum: u8,
}

impl TimeSample {
    /// Whether the host asks the OS to step its clock now.
    pub fn is_sync(&self) -> bool {
        self.flags.is_sync()
    }
}

/// The time-sync service.
#[derive(Debug)]
pub struct TimeSync<R> {
    reference: R,
    last: Option<TimeSample>,
}

impl<R: ReferenceTime> TimeSync<R> {
    /// A service reading reference time from `reference`.
    pub const fn new(reference: R) -> Self {
        Self {
            reference,
            last: None,
        }
    }

    /// The last accepted sample.
    pub fn last_sample(&self) -> Option<TimeSample> {
        self.last
    }

    /// The reference time source.
    pub fn reference_mut(&mut self) -> &mut R {
        &mut self.reference
    }

    /// Current UTC from the last sample, reading the reference time source.
    pub fn utc_now(&mut self) -> Result<UnixTime, IcError> {
        let now = self.reference.reference_now();
        self.utc_at(now)
    }

    /// UTC at partition reference time `reference_now`, extrapolated from the last sample.
    /// Fails if there is no sample, if `reference_now` is before the sample, or if the sample is
    /// older than [`STALE_AFTER`] (Linux reports that as `ESTALE`).
    pub fn utc_at(&self, reference_now: u64) -> Result<UnixTime, IcError> {
        let s = self.last.ok_or(IcError::NoTimeSample)?;
        let age =
            reference_now
                .checked_sub(s.reference_time)
                .ok_or(IcError::TimeSampleFromFuture {
                    sample: s.reference_time,
                    now: reference_now,
                })?;
        if age > STALE_AFTER {
            return Err(IcError::StaleTimeSample { age });
        }
        let t = s
            .host_time
            .checked_add(age)
            .ok_or(IcError::TimeOutOfRange)?;
        UnixTime::from_filetime(t).ok_or(IcError::TimeOutOfRange)
    }

    fn accept(
        &mut self,
        host_time: u64,
        reference_time: u64,
        now: u64,
        flags: TimeSyncFlags,
        leap_flags: u8,
        stratum: u8,
    ) -> Result<TimeSample, IcError> {
        let age = now
            .checked_sub(reference_time)
            .ok_or(IcError::TimeSampleFromFuture {
                sample: reference_time,
                now,
            })?;
        if age > STALE_AFTER {
            return Err(IcError::StaleTimeSample { age });
        }
        let at_receipt = host_time.checked_add(age).ok_or(IcError::TimeOutOfRange)?;
        let utc_at_receipt = UnixTime::from_filetime(at_receipt).ok_or(IcError::TimeOutOfRange)?;
        let sample = TimeSample {
            host_time,
            reference_time,
            utc_at_receipt,
            flags,
            leap_flags,
            stratum,
        };
        self.last = Some(sample);
        Ok(sample)
    }
}

impl<R: ReferenceTime> IcHandler for TimeSync<R> {
    const MSG_TYPE: IcMsgType = IcMsgType::TIMESYNC;
    const DEVICE_CLASS: DeviceClass = DeviceClass::TimeSync;

    fn service_versions(&self) -> &[IcVersion] {
        TIMESYNC_VERSIONS
    }

    /// Version 4 and later use the 22-byte reference-time layout; older versions the 25-byte
    /// one (Linux picks by the negotiated version the same way). A sample that cannot be used
    /// (reference time in the future, older than 600 s, before 1970) is still answered S_OK —
    /// the host only wants the acknowledgement — and reported as `Rejected`.
    fn handle_message(
        &mut self,
        version: IcVersion,
        payload: &mut [u8],
    ) -> Result<Outcome, IcError> {
        let now = self.reference.reference_now();
        let result = if version.major >= 4 {
            let Ok((m, _)) = TimeSyncMsgV4::read_from_prefix(payload) else {
                return Err(IcError::TruncatedPayload {
                    msg_type: Self::MSG_TYPE,
                    needed: core::mem::size_of::<TimeSyncMsgV4>(),
                    got: payload.len(),
                });
            };
            self.accept(
                m.parent_time.get(),
                m.vm_reference_time.get(),
                now,
                TimeSyncFlags(m.flags),
                m.leap_flags,
                m.stratum,
            )
        } else {
            let Ok((m, _)) = TimeSyncMsgV3::read_from_prefix(payload) else {
                return Err(IcError::TruncatedPayload {
                    msg_type: Self::MSG_TYPE,
                    needed: core::mem::size_of::<TimeSyncMsgV3>(),
                    got: payload.len(),
                });
            };
            self.accept(m.parent_time.get(), now, now, TimeSyncFlags(m.flags), 0, 0)
        };
        Ok(match result {
            Ok(sample) => Outcome::ok(IcEvent::TimeSample(sample)),
            Err(e) => {
                log::warn!("timesync: sample rejected: {e}");
                Outcome {
                    status: crate::IcStatus::S_OK,
                    event: IcEvent::Rejected(e),
                }
            }
        })
    }
}
