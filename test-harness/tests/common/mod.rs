//! Shared set-up for the guest VMBus tests: a booted VP, a guest connection over it and a
//! mock host.

#![allow(dead_code)]

pub mod frames;
pub mod net;
pub mod storage;

use test_harness::guest::boot_vp;
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::vmbus::{DeviceOffer, EchoDevice, HostRelease, MockVmbusHost};
use vmbus_guest::protocol::Guid;
use vmbus_guest::{BoundedWait, ConnectionConfig, SynicTransport, Vmbus};

/// The guest bus type used in the tests.
pub type Guest = Vmbus<SynicTransport<MockVp>, MockHal>;
/// A channel on [`Guest`] with the default request context and capacity.
pub type GuestChannel<'b> = vmbus_guest::Channel<'b, SynicTransport<MockVp>, MockHal>;

pub const NET: Guid = Guid::from_str_const("f8615163-df3e-46c5-913f-f2d2f965ed0e");
pub const SCSI: Guid = Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
pub const HEARTBEAT: Guid = Guid::from_str_const("57164f39-9115-4e78-ab55-382f3bd5422d");

/// Instance GUID number `n`.
pub fn instance(n: u32) -> Guid {
    let mut g = Guid::ZERO;
    g.data1 = n;
    g
}

/// A hypervisor, a host imitating `release`, and a guest connection on VP 0 (not yet
/// connected).
pub fn rig(release: HostRelease) -> (MockHypervisor, MockVmbusHost, Guest) {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022));
    let vp = boot_vp(&hv, 0).expect("boot VP 0");
    let host = MockVmbusHost::new(hv.clone(), release);
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let guest = Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    (hv, host, guest)
}

/// Adds an echo device of class `ty`, instance `n`.
pub fn add_echo(host: &mut MockVmbusHost, ty: Guid, n: u32) -> u32 {
    host.add_device(DeviceOffer::new(ty, instance(n)), Box::new(EchoDevice))
}

/// A waiter that steps the deterministic host, at most 200 times.
pub fn step(host: &mut MockVmbusHost) -> BoundedWait<impl FnMut() + '_> {
    BoundedWait::new(200, move || {
        host.step();
    })
}

/// Fails the test if the host recorded protocol errors.
pub fn assert_clean(host: &MockVmbusHost) {
    let errors = host.protocol_errors();
    assert!(errors.is_empty(), "host protocol errors: {errors:#?}");
}

/// A connected guest with an echo device (class NET, instance 1) on a host imitating
/// `release`: the set-up most channel tests start from. Returns the relid; open it with
/// [`open_echo_channel`] (the channel borrows the bus, so the caller keeps the bus).
pub fn connected_echo(release: HostRelease) -> (MockHypervisor, MockVmbusHost, Guest, u32) {
    let (hv, mut host, guest) = rig(release);
    let relid = add_echo(&mut host, NET, 1);
    guest.connect(&mut step(&mut host)).unwrap();
    (hv, host, guest, relid)
}

/// Opens the channel `relid` with the default configuration, stepping `host`.
pub fn open_echo_channel<'b>(
    guest: &'b Guest,
    host: &mut MockVmbusHost,
    relid: u32,
) -> GuestChannel<'b> {
    vmbus_guest::Channel::open(
        guest,
        relid,
        &vmbus_guest::ChannelConfig::default(),
        &mut step(host),
    )
    .unwrap()
}

/// A received packet, copied out of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// A host packet: its type and payload.
    Packet(u16, Vec<u8>),
    /// The completion of the request with this context.
    Completion(u64, Vec<u8>),
    /// The request with this context failed.
    Failed(u64, vmbus_guest::ChannelError),
}

/// Receives everything in `ch`'s ring, batch after batch, until the ring is empty or the
/// channel reports an error (after handing back every failed request).
pub fn drain(
    ch: &mut GuestChannel<'_>,
    rx: &mut [u8],
) -> (Vec<Got>, Result<(), vmbus_guest::ChannelError>) {
    use vmbus_guest::Received;
    let mut out = Vec::new();
    loop {
        loop {
            match ch.recv(rx) {
                Ok(Some(r)) => out.push(match r {
                    Received::Packet(p) => Got::Packet(p.packet_type().0, p.payload().to_vec()),
                    Received::Completion {
                        context, packet, ..
                    } => Got::Completion(context, packet.payload().to_vec()),
                    Received::Failed { context, error, .. } => Got::Failed(context, error),
                }),
                Ok(None) => break,
                Err(e) => return (out, Err(e)),
            }
        }
        match ch.end_batch() {
            Ok(true) => {}
            Ok(false) => return (out, Ok(())),
            Err(e) => return (out, Err(e)),
        }
    }
}

/// Polls the guest bus and steps the host until `done` holds (at most 200 rounds).
pub fn settle(guest: &Guest, host: &mut MockVmbusHost, mut done: impl FnMut(&Guest) -> bool) {
    for _ in 0..200 {
        guest.poll();
        if done(guest) {
            return;
        }
        host.step();
    }
    panic!("the condition did not hold within 200 host steps");
}
