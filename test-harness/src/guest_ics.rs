//! The guest's integration services as a kernel would run them: the `ic-services` handlers on
//! their VMBus channels, opened from the offer table and polled together.

use ic_services::IcEvent;
use ic_services::channel::{IcChannel, IcChannelError};
use ic_services::heartbeat::Heartbeat;
use ic_services::kvp::{GuestInfo, Kvp};
use ic_services::shutdown::{Shutdown, ShutdownRequest};
use ic_services::timesync::TimeSync;
use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::{Connection, Hal, Transport, Wait};

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

/// Host-pushed KVP values kept per pool (each entry holds a 512-byte key and a 2048-byte
/// value; a small table keeps the service off the stack limits of test threads).
pub const KVP_ENTRIES_PER_POOL: usize = 4;

/// The four integration services, each on its open channel.
pub struct GuestIcs {
    /// Heartbeat.
    pub heartbeat: Box<IcChannel<Heartbeat>>,
    /// Shutdown, with the OS's policy.
    pub shutdown: Box<IcChannel<Shutdown<ShutdownPolicyFn>>>,
    /// Time sync, reading the guest's reference clock.
    pub timesync: Box<IcChannel<TimeSync<ReferenceNowFn>>>,
    /// KVP, with what the guest reports about itself; [`KVP_ENTRIES_PER_POOL`] host values
    /// per pool.
    pub kvp: Box<IcChannel<Kvp<'static, KVP_ENTRIES_PER_POOL>>>,
}

/// Why the services could not be brought up.
#[derive(Debug)]
pub enum GuestIcsError {
    /// The host offered no channel of this class.
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

fn relid_of<T: Transport, H: Hal>(
    conn: &Connection<T, H>,
    class: DeviceClass,
) -> Result<u32, GuestIcsError> {
    conn.offers()
        .by_class(class)
        .find(|o| o.subchannel_index == 0)
        .map(|o| o.relid)
        .ok_or(GuestIcsError::NotOffered(class))
}

impl GuestIcs {
    /// Opens the four IC channels found in the offer table.
    pub fn open<T: Transport, H: Hal>(
        conn: &mut Connection<T, H>,
        waiter: &mut impl Wait,
        shutdown_policy: ShutdownPolicyFn,
        reference_now: ReferenceNowFn,
    ) -> Result<Self, GuestIcsError> {
        let open_err = |class| move |e| GuestIcsError::Open(class, e);
        let relid = relid_of(conn, DeviceClass::Heartbeat)?;
        let heartbeat = IcChannel::open(conn, relid, Heartbeat::new(), waiter)
            .map_err(open_err(DeviceClass::Heartbeat))?;
        let relid = relid_of(conn, DeviceClass::Shutdown)?;
        let shutdown = IcChannel::open(conn, relid, Shutdown::new(shutdown_policy), waiter)
            .map_err(open_err(DeviceClass::Shutdown))?;
        let relid = relid_of(conn, DeviceClass::TimeSync)?;
        let timesync = IcChannel::open(conn, relid, TimeSync::new(reference_now), waiter)
            .map_err(open_err(DeviceClass::TimeSync))?;
        let relid = relid_of(conn, DeviceClass::Kvp)?;
        let kvp = IcChannel::open(conn, relid, Kvp::new(HARNESS_GUEST_INFO), waiter)
            .map_err(open_err(DeviceClass::Kvp))?;
        Ok(Self {
            heartbeat: Box::new(heartbeat),
            shutdown: Box::new(shutdown),
            timesync: Box::new(timesync),
            kvp: Box::new(kvp),
        })
    }

    /// Answers every waiting host request on all four channels; `on_event` sees each event
    /// with the class of the service it came from. Returns the number of requests answered.
    pub fn poll<T: Transport, H: Hal>(
        &mut self,
        conn: &Connection<T, H>,
        mut on_event: impl FnMut(DeviceClass, IcEvent),
    ) -> Result<usize, IcChannelError> {
        let mut n = self
            .heartbeat
            .poll(conn, |e| on_event(DeviceClass::Heartbeat, e))?;
        n += self
            .shutdown
            .poll(conn, |e| on_event(DeviceClass::Shutdown, e))?;
        n += self
            .timesync
            .poll(conn, |e| on_event(DeviceClass::TimeSync, e))?;
        n += self.kvp.poll(conn, |e| on_event(DeviceClass::Kvp, e))?;
        Ok(n)
    }
}

/// Runs the deterministic host and the guest (connection messages, then the services) until
/// neither has anything left to do; events go to `on_event`. Gives up after 100 rounds, which
/// only a host and guest that keep each other busy forever would reach.
pub fn settle<T: Transport, H: Hal>(
    host: &mut MockVmbusHost,
    guest: &mut Connection<T, H>,
    services: &mut GuestIcs,
    mut on_event: impl FnMut(DeviceClass, IcEvent),
) -> Result<(), String> {
    for _ in 0..100 {
        let host_work = host.step();
        let messages = guest.poll();
        let answered = services
            .poll(guest, &mut on_event)
            .map_err(|e| e.to_string())?;
        if host_work == 0 && messages == 0 && answered == 0 {
            return Ok(());
        }
    }
    Err("host and guest did not settle in 100 rounds".into())
}
