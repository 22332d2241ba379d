//! The guest's integration services as a kernel would run them: the `ic-services` handlers on
//! their VMBus channels, each opened by class on the shared bus and polled together.

use ic_services::IcEvent;
use ic_services::channel::{IcChannel, IcChannelError, Polled};
use ic_services::heartbeat::{self, Heartbeat};
use ic_services::kvp::{GuestInfo, Kvp};
use ic_services::shutdown::{self, Shutdown, ShutdownRequest};
use ic_services::timesync::{self, TimeSync};
use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::{ChannelError, Hal, Released, Transport, Vmbus, VmbusError, Wait};

use crate::vmbus::MockVmbusHost;

/// The shutdown policy: the OS decides whether to accept each request.
pub type ShutdownPolicyFn = Box<dyn FnMut(&ShutdownRequest) -> bool + Send>;
/// The time-sync reference: partition reference time now (100 ns units).
pub type ReferenceNowFn = Box<dyn FnMut() -> u64 + Send>;

/// What the harness guest reports about itself through KVP.
pub const HARNESS_GUEST_INFO: GuestInfo<'static> = GuestInfo {
    fully_qualified_domain_name: "demo-guest.example.internal",
    integration_services_version: "hyperv-guest-rs 0.1.0",
    network_address_ipv4: "192.0.2.10",
    network_address_ipv6: "2001:db8::10",
    os_build_number: "0.1.0",
    os_name: "RustOS (hyperv-guest-rs demo)",
    os_major_version: "0",
    os_minor_version: "1",
    os_version: "0.1.0",
    processor_architecture: "x86_64",
    adapters: &[],
};

/// The heartbeat on its channel, with a buffer sized for the heartbeat's messages.
pub type HeartbeatChannel<'b, T, H> = IcChannel<'b, T, H, Heartbeat, { heartbeat::MAX_PACKET }>;
/// The shutdown service on its channel, with the OS's policy.
pub type ShutdownChannel<'b, T, H> =
    IcChannel<'b, T, H, Shutdown<ShutdownPolicyFn>, { shutdown::MAX_PACKET }>;
/// Time sync on its channel, reading the guest's reference clock.
pub type TimeSyncChannel<'b, T, H> =
    IcChannel<'b, T, H, TimeSync<ReferenceNowFn>, { timesync::MAX_PACKET }>;
/// KVP on its channel, with the default store and the full-size buffer.
pub type KvpChannel<'b, T, H> = IcChannel<'b, T, H, Kvp<'static>>;

/// The four integration services, each on its open channel on the bus `'b`.
pub struct GuestIcs<'b, T: Transport, H: Hal> {
    /// Heartbeat.
    pub heartbeat: HeartbeatChannel<'b, T, H>,
    /// Shutdown, with the OS's policy.
    pub shutdown: ShutdownChannel<'b, T, H>,
    /// Time sync, reading the guest's reference clock.
    pub timesync: TimeSyncChannel<'b, T, H>,
    /// KVP, with what the guest reports about itself. Boxed: with its 8 KiB buffer and 6 KiB
    /// store it is most of the four services' size.
    pub kvp: Box<KvpChannel<'b, T, H>>,
}

/// Why the services could not be brought up.
#[derive(Debug)]
pub enum GuestIcsError {
    /// The host offered no (free) channel of this class.
    NotOffered(DeviceClass),
    /// Opening a channel failed.
    Open(DeviceClass, IcChannelError),
}

impl std::fmt::Display for GuestIcsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotOffered(c) => write!(f, "no {c:?} offer"),
            Self::Open(c, e) => write!(f, "opening {c:?}: {e}"),
        }
    }
}

impl std::error::Error for GuestIcsError {}

fn open_error(class: DeviceClass) -> impl Fn(IcChannelError) -> GuestIcsError {
    move |e| match e {
        IcChannelError::Channel(ChannelError::Vmbus(VmbusError::NoSuchDevice)) => {
            GuestIcsError::NotOffered(class)
        }
        e => GuestIcsError::Open(class, e),
    }
}

/// Adds `b` to `a`.
fn add(a: &mut Polled, b: Polled) {
    a.answered += b.answered;
    a.read += b.read;
    a.more |= b.more;
    a.reply_pending |= b.reply_pending;
}

impl<'b, T: Transport, H: Hal> GuestIcs<'b, T, H> {
    /// Opens the four IC channels, each the first free offer of its class on `bus`.
    pub fn open(
        bus: &'b Vmbus<T, H>,
        waiter: &mut impl Wait,
        shutdown_policy: ShutdownPolicyFn,
        reference_now: ReferenceNowFn,
    ) -> Result<Self, GuestIcsError> {
        let heartbeat = IcChannel::open(bus, Heartbeat::new(), waiter)
            .map_err(open_error(DeviceClass::Heartbeat))?;
        waiter.restart();
        let shutdown = IcChannel::open(bus, Shutdown::new(shutdown_policy), waiter)
            .map_err(open_error(DeviceClass::Shutdown))?;
        waiter.restart();
        let timesync = IcChannel::open(bus, TimeSync::new(reference_now), waiter)
            .map_err(open_error(DeviceClass::TimeSync))?;
        waiter.restart();
        let kvp = IcChannel::open(bus, Kvp::new(HARNESS_GUEST_INFO), waiter)
            .map_err(open_error(DeviceClass::Kvp))?;
        Ok(Self {
            heartbeat,
            shutdown,
            timesync,
            kvp: Box::new(kvp),
        })
    }

    /// Answers the waiting host requests on all four channels (each within its poll budget);
    /// `on_event` sees each event with the class of the service it came from.
    pub fn poll(
        &mut self,
        mut on_event: impl FnMut(DeviceClass, IcEvent),
    ) -> Result<Polled, IcChannelError> {
        let mut total = self
            .heartbeat
            .poll(|e| on_event(DeviceClass::Heartbeat, e))?;
        add(
            &mut total,
            self.shutdown.poll(|e| on_event(DeviceClass::Shutdown, e))?,
        );
        add(
            &mut total,
            self.timesync.poll(|e| on_event(DeviceClass::TimeSync, e))?,
        );
        add(
            &mut total,
            self.kvp.poll(|e| on_event(DeviceClass::Kvp, e))?,
        );
        Ok(total)
    }

    /// Closes the four channels; `Freed` only if every ring was freed.
    pub fn close(self, waiter: &mut impl Wait) -> Released {
        let (_, a) = self.heartbeat.close(waiter);
        waiter.restart();
        let (_, b) = self.shutdown.close(waiter);
        waiter.restart();
        let (_, c) = self.timesync.close(waiter);
        waiter.restart();
        let (_, d) = self.kvp.close(waiter);
        a.and(b).and(c).and(d)
    }
}

/// Runs the deterministic host and the guest (the bus's interrupt and control paths, then the
/// services) until neither has anything left to do; events go to `on_event`. Gives up after
/// 100 rounds, which only a host and guest that keep each other busy forever would reach.
pub fn settle<T: Transport, H: Hal>(
    host: &mut MockVmbusHost,
    bus: &Vmbus<T, H>,
    services: &mut GuestIcs<'_, T, H>,
    mut on_event: impl FnMut(DeviceClass, IcEvent),
) -> Result<(), String> {
    for _ in 0..100 {
        let host_work = host.step();
        let interrupt = bus.handle_interrupt();
        let control = bus.poll();
        let polled = services.poll(&mut on_event).map_err(|e| e.to_string())?;
        let busy = host_work != 0
            || interrupt.control
            || control.control
            || polled.read != 0
            || polled.answered != 0
            || polled.more;
        if !busy {
            return Ok(());
        }
    }
    Err("host and guest did not settle in 100 rounds".into())
}
