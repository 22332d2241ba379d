//! The guest's integration services (`ic-services` on real VMBus channels on the shared bus)
//! against the host IC models: negotiation on every version combination the host offers, each
//! request kind, malformed and stray host packets, a host that keeps refilling the ring, a
//! full outbound ring, and the sizes of what a kernel holds.

use std::sync::{Arc, Mutex};

use ic_services::channel::{
    DEFAULT_POLL_BUDGET, IC_RING_PAGES, IcChannel, IcChannelError, ic_channel_config,
};
use ic_services::heartbeat::Heartbeat;
use ic_services::kvp::Kvp;
use ic_services::shutdown::{Shutdown, ShutdownRequest};
use ic_services::timesync::TimeSync;
use ic_services::{IcError, IcEvent};
use test_harness::guest::boot_vp;
use test_harness::guest_ics::{
    GuestIcs, HARNESS_GUEST_INFO, HeartbeatChannel, KvpChannel, ReferenceNowFn, ShutdownChannel,
    ShutdownPolicyFn, TimeSyncChannel, settle,
};
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::ic::shutdown::{ShutdownKind, ShutdownOutcome};
use test_harness::ic::timesync::DEFAULT_HOST_EPOCH;
use test_harness::ic::wire::{
    ICFLAGS_GUEST_RESPONSE, IcHeader, MSG_HEARTBEAT, MSG_NEGOTIATE, S_OK, build_message,
    negotiate_payload,
};
use test_harness::ic::{
    HEARTBEAT_CLASS, HEARTBEAT_INSTANCE, IcHost, IcHostConfig, IcVersion, KVP_INSTANCE, Negotiation,
};
use test_harness::vmbus::{
    DeviceModel, DeviceOffer, HostChannel, HostPacket, HostRelease, MockVmbusHost,
    PACKET_TYPE_COMPLETION, PACKET_TYPE_XFER_PAGES,
};
use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::{
    BoundedWait, ChannelConfig, ChannelError, ConnectionConfig, Released, SynicTransport, Vmbus,
    VmbusError,
};

type Transport = SynicTransport<MockVp>;
type Guest = Vmbus<Transport, MockHal>;

fn step(host: &mut MockVmbusHost) -> BoundedWait<impl FnMut() + '_> {
    BoundedWait::new(200, move || {
        host.step();
    })
}

/// A hypervisor, a WS2022 host offering the four ICs, and a connected guest bus: what is
/// there before the IC channels open (they borrow the bus, so it lives here).
struct Booted {
    hv: MockHypervisor,
    host: MockVmbusHost,
    ics: IcHost,
    guest: Guest,
    reference_now: Option<ReferenceNowFn>,
}

/// Boots; `offers` may restrict the versions each host model offers before the channels open.
fn boot(offers: impl FnOnce(&IcHost)) -> Booted {
    boot_on(HostRelease::Ws2022, offers)
}

/// Boots on a host imitating `release`.
fn boot_on(release: HostRelease, offers: impl FnOnce(&IcHost)) -> Booted {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022));
    let vp = boot_vp(&hv, 0).expect("boot");
    let mut host = MockVmbusHost::new(hv.clone(), release);
    let ics = IcHost::add_to(&mut host, IcHostConfig::default());
    offers(&ics);
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let guest = Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    guest.connect(&mut step(&mut host)).expect("connect");
    let (clock, cpu) = (vp.clock, vp.cpu.clone());
    Booted {
        hv,
        host,
        ics,
        guest,
        reference_now: Some(Box::new(move || clock.now(&cpu))),
    }
}

/// The four services open on the booted guest.
struct Rig<'b> {
    hv: &'b MockHypervisor,
    host: &'b mut MockVmbusHost,
    ics: &'b IcHost,
    guest: &'b Guest,
    services: GuestIcs<'b, Transport, MockHal>,
    events: Vec<(DeviceClass, IcEvent)>,
    shutdown_answers: Arc<Mutex<Vec<ShutdownRequest>>>,
}

impl Booted {
    /// Opens the four services (shutdown policy: everything but hibernation) and settles.
    fn open(&mut self) -> Rig<'_> {
        let shutdown_answers = Arc::new(Mutex::new(Vec::new()));
        let seen = shutdown_answers.clone();
        let policy: ShutdownPolicyFn = Box::new(move |r: &ShutdownRequest| {
            seen.lock().unwrap().push(*r);
            r.kind != ic_services::shutdown::ShutdownKind::Hibernate
        });
        let reference_now = self.reference_now.take().expect("opened once");
        let services = GuestIcs::open(
            &self.guest,
            &mut step(&mut self.host),
            policy,
            reference_now,
        )
        .expect("open the IC channels");
        let mut rig = Rig {
            hv: &self.hv,
            host: &mut self.host,
            ics: &self.ics,
            guest: &self.guest,
            services,
            events: Vec::new(),
            shutdown_answers,
        };
        rig.settle();
        rig
    }
}

impl Rig<'_> {
    /// Runs host and guest until neither has anything left to do (bounded).
    fn settle(&mut self) {
        let events = &mut self.events;
        settle(self.host, self.guest, &mut self.services, |class, e| {
            events.push((class, e))
        })
        .expect("settle");
    }

    fn take_events(&mut self) -> Vec<(DeviceClass, IcEvent)> {
        std::mem::take(&mut self.events)
    }

    fn assert_clean(&self) {
        assert!(
            self.ics.errors().is_empty(),
            "host IC errors: {:#?}",
            self.ics.errors()
        );
        assert!(
            self.host.protocol_errors().is_empty(),
            "{:#?}",
            self.host.protocol_errors()
        );
    }

    /// Closes the four channels: the rings come back (GPADL_TORNDOWN) and the host models
    /// see the close.
    fn close(self) {
        let released = self.services.close(&mut step(self.host));
        assert_eq!(released, Released::Freed);
        assert_eq!(self.ics.heartbeat.negotiation(), Negotiation::NotStarted);
        assert!(self.host.freed_while_mapped().is_empty());
    }
}

fn v(major: u16, minor: u16) -> IcVersion {
    IcVersion::new(major, minor)
}

#[test]
fn every_service_negotiates_the_newest_common_version() {
    let mut booted = boot(|_| {});
    let rig = booted.open();
    let done = |n: Negotiation| match n {
        Negotiation::Done { framework, service } => (framework, service),
        other => panic!("not negotiated: {other:?}"),
    };
    assert_eq!(done(rig.ics.heartbeat.negotiation()), (v(3, 0), v(3, 0)));
    assert_eq!(done(rig.ics.shutdown.negotiation()), (v(3, 0), v(3, 2)));
    assert_eq!(done(rig.ics.timesync.negotiation()), (v(3, 0), v(4, 0)));
    assert_eq!(done(rig.ics.kvp.negotiation()), (v(3, 0), v(4, 0)));
    let guest_side = ic_services::IcVersion::new(3, 0);
    assert_eq!(
        rig.services.heartbeat.service().negotiated(),
        Some((guest_side, guest_side)),
        "the guest agrees with the host"
    );
    rig.assert_clean();
    rig.close();
}

/// The services on every VMBus version the mock speaks, from 1.1 (signals through event flag
/// 0 and the legacy interrupt page) to 6.0.
#[test]
fn services_run_on_every_host_release() {
    for &release in HostRelease::all() {
        let mut booted = boot_on(release, |_| {});
        let mut rig = booted.open();
        rig.ics.heartbeat.beat_now();
        rig.ics.kvp.set(3, "HostName", release.name());
        rig.ics.timesync.sample_now();
        rig.settle();
        assert_eq!(rig.ics.heartbeat.beats(), 1, "{release:?}");
        assert!(rig.ics.kvp.last_reply().unwrap().is_ok(), "{release:?}");
        assert!(rig.ics.timesync.acked() >= 2, "{release:?}");
        assert!(
            rig.services
                .kvp
                .service()
                .handler()
                .get(ic_services::protocol::KvpPool::AUTO_EXTERNAL, "HostName")
                .is_some()
        );
        rig.assert_clean();
        rig.close();
    }
}

#[test]
fn negotiation_follows_every_offered_combination() {
    let frameworks: [&[IcVersion]; 3] = [&[v(1, 0)], &[v(3, 0)], &[v(1, 0), v(3, 0)]];
    let cases: [(&[IcVersion], IcVersion); 3] = [
        (&[v(1, 0)], v(1, 0)),
        (&[v(3, 0)], v(3, 0)),
        (&[v(1, 0), v(3, 0), v(4, 0)], v(4, 0)),
    ];
    for framework in frameworks {
        for (services, expected) in cases {
            let mut booted = boot(|ics| ics.timesync.set_offered_versions(framework, services));
            let rig = booted.open();
            let chosen_framework = *framework.iter().max().unwrap();
            assert_eq!(
                rig.ics.timesync.negotiation(),
                Negotiation::Done {
                    framework: chosen_framework,
                    service: expected
                },
                "{framework:?} / {services:?}"
            );
            rig.assert_clean();
        }
    }
    // No service version in common: the guest answers counts 0/0 and the host gives up.
    let mut booted = boot(|ics| ics.kvp.set_offered_versions(&[v(3, 0)], &[v(9, 9)]));
    let rig = booted.open();
    assert_eq!(rig.ics.kvp.negotiation(), Negotiation::Refused);
}

#[test]
fn heartbeats_are_answered_with_the_next_sequence() {
    let mut booted = boot(|_| {});
    let mut rig = booted.open();
    for _ in 0..5 {
        rig.ics.heartbeat.beat_now();
        rig.settle();
    }
    assert_eq!(rig.ics.heartbeat.beats(), 5);
    let beats = rig
        .take_events()
        .into_iter()
        .filter(|(c, e)| *c == DeviceClass::Heartbeat && matches!(e, IcEvent::Heartbeat { .. }))
        .count();
    assert_eq!(beats, 5);
    rig.assert_clean();
    rig.close();
}

#[test]
fn kvp_host_reads_the_guest_and_pushes_values() {
    let mut booted = boot(|_| {});
    let mut rig = booted.open();
    // The host enumerates the AUTO pool (2) until "no more items".
    let mut found = Vec::new();
    for index in 0..32 {
        rig.ics.kvp.enumerate(2, index);
        rig.settle();
        let reply = rig.ics.kvp.last_reply().expect("a reply");
        if reply.is_no_more_items() {
            break;
        }
        assert!(reply.is_ok(), "{reply:?}");
        found.push((
            reply.key.clone().unwrap(),
            reply.value_str().unwrap().to_string(),
        ));
    }
    assert_eq!(found.len(), 10, "{found:?}");
    assert!(found.contains(&("OSName".into(), HARNESS_GUEST_INFO.os_name.into())));
    assert!(found.contains(&("ProcessorArchitecture".into(), "x86_64".into())));

    // The host pushes a value into the external pool (0); the guest stores and reports it.
    rig.ics.kvp.set(0, "VirtualMachineName", "demo-vm-01");
    rig.settle();
    assert!(rig.ics.kvp.last_reply().unwrap().is_ok());
    assert!(
        rig.take_events()
            .iter()
            .any(|(c, e)| *c == DeviceClass::Kvp && matches!(e, IcEvent::KvpSetByHost { .. }))
    );
    rig.ics.kvp.get(0, "VirtualMachineName");
    rig.settle();
    assert_eq!(
        rig.ics.kvp.last_reply().unwrap().value_str(),
        Some("demo-vm-01")
    );
    rig.ics.kvp.delete(0, "VirtualMachineName");
    rig.settle();
    rig.ics.kvp.get(0, "VirtualMachineName");
    rig.settle();
    assert!(rig.ics.kvp.last_reply().unwrap().is_no_more_items());
    // The largest IC message, GET_IP_INFO (7428 payload bytes), fits the KVP buffer; the
    // harness guest has no adapters, so the host is told E_FAIL.
    rig.ics.kvp.get_ip_info("00:15:5D:00:01:02");
    rig.settle();
    let reply = rig.ics.kvp.last_reply().unwrap();
    assert_eq!(reply.status, test_harness::ic::wire::E_FAIL, "{reply:?}");
    assert_eq!(rig.services.kvp.dropped(), 0);
    rig.assert_clean();
    rig.close();
}

#[test]
fn time_sync_gives_the_guest_host_utc() {
    let mut booted = boot(|_| {});
    let mut rig = booted.open();
    rig.hv.advance_time(90 * 10_000_000);
    rig.ics.timesync.sample_now();
    rig.settle();
    rig.hv.advance_time(5_000_000); // half a second after the sample
    let utc = rig
        .services
        .timesync
        .service_mut()
        .handler_mut()
        .utc_now()
        .unwrap();
    let expected_100ns = (DEFAULT_HOST_EPOCH - 116_444_736_000_000_000) + rig.hv.reference_time();
    let got_100ns = utc.secs * 10_000_000 + u64::from(utc.nanos) / 100;
    assert!(
        got_100ns.abs_diff(expected_100ns) <= 1,
        "guest UTC {got_100ns} vs host {expected_100ns}"
    );
    assert!(
        rig.ics.timesync.acked() >= 2,
        "SYNC and SAMPLE acknowledged"
    );
    rig.assert_clean();
    rig.close();
}

#[test]
fn shutdown_requests_go_through_the_policy_before_the_answer() {
    let mut booted = boot(|_| {});
    let mut rig = booted.open();
    rig.ics
        .shutdown
        .request_shutdown(ShutdownKind::Shutdown, false, 0x8000_0000, 30);
    rig.settle();
    assert_eq!(rig.ics.shutdown.outcome(), ShutdownOutcome::Accepted);
    assert!(
        rig.take_events()
            .iter()
            .any(|(c, e)| *c == DeviceClass::Shutdown
                && matches!(e, IcEvent::ShutdownRequested(r) if r.timeout_seconds == 30))
    );

    rig.ics
        .shutdown
        .request_shutdown(ShutdownKind::Hibernate, false, 0, 0);
    rig.settle();
    assert_eq!(rig.ics.shutdown.outcome(), ShutdownOutcome::Refused);
    assert_eq!(
        rig.shutdown_answers.lock().unwrap().len(),
        2,
        "the policy saw both"
    );
    rig.assert_clean();
    rig.close();
}

#[test]
fn malformed_host_requests_are_dropped_not_fatal() {
    let mut booted = boot(|_| {});
    let mut rig = booted.open();
    let relid = rig.ics.heartbeat_relid;
    let junk: [&[u8]; 4] = [&[], &[0xFF; 7], &[0; 27], &[0xAB; 300]];
    for (i, bytes) in junk.iter().enumerate() {
        rig.host.with_channel(relid, |ch, _| {
            ch.send_inband(bytes, 0x7000 + i as u64, false).unwrap();
        });
        rig.settle();
    }
    assert!(
        rig.services.heartbeat.dropped() >= 2,
        "truncated requests dropped"
    );
    // Two are too short for the header; the 27 zero bytes arrive padded to 32 (a NEGOTIATE
    // offering nothing, answered with counts 0/0) and the 300 bytes of 0xAB are an unknown
    // message type (answered E_FAIL).
    assert_eq!(rig.services.heartbeat.stats().malformed, 2);
    let rejected = rig
        .take_events()
        .into_iter()
        .filter(|(c, e)| {
            *c == DeviceClass::Heartbeat
                && matches!(e, IcEvent::Rejected(IcError::TruncatedHeader { .. }))
        })
        .count();
    assert_eq!(rejected, 2, "each drop is reported to the OS");
    // The service still works afterwards.
    rig.ics.heartbeat.beat_now();
    rig.settle();
    assert_eq!(rig.ics.heartbeat.beats(), 1);
    rig.close();
}

/// Completions (an IC channel never sends a request) and packets that are not in-band are
/// dropped and counted — in debug builds too, where a stray completion used to trip a
/// `debug_assert!` — and the service keeps working.
#[test]
fn stray_completions_and_other_packet_types_are_counted_not_fatal() {
    let mut booted = boot(|_| {});
    let mut rig = booted.open();
    let relid = rig.ics.heartbeat_relid;
    rig.host.with_channel(relid, |ch, _| {
        ch.send_completion(0x1234, &[1, 2, 3, 4]).unwrap();
        ch.send_completion(0, &[]).unwrap();
        // A transfer-page packet: set 0, one range of 8 bytes at 0.
        let mut header = vec![0u8; 8];
        header[4] = 1;
        header.extend_from_slice(&8u32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        ch.send_packet(PACKET_TYPE_XFER_PAGES, 0, 7, &header, &[0; 8])
            .unwrap();
        // A packet type the guest does not know.
        ch.send_packet(0x5, 0, 8, &[], &[0; 16]).unwrap();
        // A completion that asks for a completion.
        ch.send_packet(PACKET_TYPE_COMPLETION, 1, 9, &[], &[])
            .unwrap();
    });
    rig.settle();
    let stats = rig.services.heartbeat.stats();
    assert_eq!(stats.stray_completions, 3, "{stats:?}");
    assert_eq!(stats.not_requests, 2, "{stats:?}");
    assert_eq!(stats.read, 5 + 1, "the junk and the NEGOTIATE: {stats:?}");
    assert_eq!(rig.services.heartbeat.dropped(), 5);
    assert!(rig.services.heartbeat.is_alive());
    // A flood of them is bounded per poll like anything else.
    rig.host.with_channel(relid, |ch, _| {
        for tid in 0..300 {
            ch.send_completion(tid, &[0; 8]).unwrap();
        }
    });
    let mut calls = 0;
    loop {
        calls += 1;
        let polled = rig.services.heartbeat.poll(|_| {}).unwrap();
        assert!(polled.read <= 64, "{polled:?}");
        rig.host.step();
        if !polled.more {
            break;
        }
    }
    assert!(calls >= 300 / 64, "{calls}");
    assert_eq!(rig.services.heartbeat.stats().stray_completions, 303);
    rig.ics.heartbeat.beat_now();
    rig.settle();
    assert_eq!(rig.ics.heartbeat.beats(), 1);
    rig.assert_clean();
    rig.close();
}

/// A packet larger than a channel's buffer would stay at the head of the ring for good; it is
/// dropped unread and counted, and the requests behind it are answered.
#[test]
fn packets_larger_than_the_buffer_are_dropped_unread() {
    let mut booted = boot(|_| {});
    let mut rig = booted.open();
    let (hb, kvp) = (rig.ics.heartbeat_relid, rig.ics.kvp_relid);
    let big = heartbeat_request(0x77, 1)
        .into_iter()
        .chain([0; 2000])
        .collect::<Vec<_>>();
    assert!(big.len() > ic_services::heartbeat::MAX_PACKET);
    send(rig.host, hb, 0x77, &big);
    // KVP's buffer is the full 8 KiB; its ring holds 12 KiB.
    send(rig.host, kvp, 0x78, &[0; 9000]);
    rig.ics.heartbeat.beat_now();
    rig.ics.kvp.set(0, "After", "the big one");
    rig.settle();
    assert_eq!(rig.services.heartbeat.stats().oversized, 1);
    assert_eq!(rig.services.kvp.stats().oversized, 1);
    assert_eq!(
        rig.ics.heartbeat.beats(),
        1,
        "the beat behind it is answered"
    );
    assert!(rig.ics.kvp.last_reply().unwrap().is_ok());
    assert!(rig.services.heartbeat.is_alive() && rig.services.kvp.is_alive());
    rig.assert_clean();
    rig.close();
}

/// A rescinded IC reaches its owner as a channel error on the next poll (through the
/// interrupt path alone); the other services keep working, and the rescinded channel still
/// closes cleanly (RELID_RELEASED).
#[test]
fn a_rescinded_service_fails_its_poll_and_closes() {
    let mut booted = boot(|_| {});
    let mut rig = booted.open();
    let relid = rig.ics.heartbeat_relid;
    rig.ics.heartbeat.beat_now();
    rig.host.rescind(relid);
    assert!(rig.guest.handle_interrupt().channels.contains(relid));
    let rescinded = Err(IcChannelError::Channel(ChannelError::Rescinded));
    assert_eq!(rig.services.heartbeat.poll(|_| {}), rescinded);
    assert_eq!(rig.services.heartbeat.poll(|_| {}), rescinded, "every time");
    assert!(!rig.services.heartbeat.is_alive());
    // KVP is untouched.
    rig.ics.kvp.set(0, "Still", "here");
    for _ in 0..5 {
        rig.host.step();
        rig.guest.poll();
        rig.services.kvp.poll(|_| {}).unwrap();
    }
    assert!(rig.ics.kvp.last_reply().unwrap().is_ok());
    assert_eq!(rig.ics.heartbeat.beats(), 0);
    rig.assert_clean();
    rig.close();
    assert_eq!(
        booted.host.channel_state(relid),
        Some(test_harness::vmbus::ChannelState::Released)
    );
}

/// The IC offers carry Hyper-V's fixed instance GUIDs: a guest may open a service by class
/// (first free offer) or by instance; a claimed or unknown instance is not offered.
#[test]
fn services_open_by_class_or_by_hyper_v_instance() {
    let mut booted = boot(|_| {});
    let Booted {
        host, ics, guest, ..
    } = &mut booted;
    let hb: HeartbeatChannel<'_, Transport, MockHal> = IcChannel::open_with(
        guest,
        Some(&HEARTBEAT_INSTANCE),
        &ic_channel_config(),
        Heartbeat::new(),
        &mut step(host),
    )
    .expect("the heartbeat by its instance GUID");
    assert_eq!(hb.relid(), ics.heartbeat_relid);
    // Claimed: neither by class nor by instance again.
    let again = IcChannel::<'_, _, _, Heartbeat>::open(guest, Heartbeat::new(), &mut step(host));
    assert_eq!(
        again.err(),
        Some(IcChannelError::Channel(ChannelError::Vmbus(
            VmbusError::NoSuchDevice
        )))
    );
    // The KVP instance is not a heartbeat.
    let wrong = IcChannel::<'_, _, _, Heartbeat>::open_with(
        guest,
        Some(&KVP_INSTANCE),
        &ic_channel_config(),
        Heartbeat::new(),
        &mut step(host),
    );
    assert!(wrong.is_err());
    // By class, for the others.
    let kvp: KvpChannel<'_, Transport, MockHal> =
        IcChannel::open(guest, Kvp::new(HARNESS_GUEST_INFO), &mut step(host)).unwrap();
    assert_eq!(kvp.relid(), ics.kvp_relid);
    let mut hb = hb;
    let mut kvp = kvp;
    for _ in 0..10 {
        host.step();
        hb.poll(|_| {}).unwrap();
        kvp.poll(|_| {}).unwrap();
    }
    assert!(matches!(
        ics.heartbeat.negotiation(),
        Negotiation::Done { .. }
    ));
    assert!(matches!(ics.kvp.negotiation(), Negotiation::Done { .. }));
    let (_, a) = hb.close(&mut step(host));
    // Closed where it lies, as a kernel keeping the service in a static would.
    let mut slot = Some(kvp);
    let b = IcChannel::close_in(&mut slot, &mut step(host));
    assert!(slot.is_none());
    assert_eq!(IcChannel::close_in(&mut slot, &mut step(host)), None);
    assert_eq!(a.and(b.expect("it was open")), Released::Freed);
    assert_eq!(host.gpadls(), 0);
    assert!(ics.errors().is_empty(), "{:#?}", ics.errors());
    assert!(host.protocol_errors().is_empty());
}

/// What a kernel holds on its stack stays within 16 KiB with default capacities.
#[test]
fn ic_channels_fit_a_kernel_stack() {
    use std::mem::size_of;
    type Ic<'b, H, const B: usize = { ic_services::channel::MAX_IC_PACKET }> =
        IcChannel<'b, Transport, MockHal, H, B>;
    let sizes = [
        ("IcChannel<Heartbeat>", size_of::<Ic<'_, Heartbeat>>()),
        (
            "IcChannel<Shutdown<ShutdownPolicyFn>>",
            size_of::<Ic<'_, Shutdown<ShutdownPolicyFn>>>(),
        ),
        (
            "IcChannel<TimeSync<ReferenceNowFn>>",
            size_of::<Ic<'_, TimeSync<ReferenceNowFn>>>(),
        ),
        ("IcChannel<Kvp>", size_of::<Ic<'_, Kvp<'static>>>()),
        (
            "IcChannel<&mut Kvp>",
            size_of::<Ic<'_, &mut Kvp<'static>>>(),
        ),
        (
            "HeartbeatChannel (heartbeat::MAX_PACKET)",
            size_of::<HeartbeatChannel<'_, Transport, MockHal>>(),
        ),
        (
            "ShutdownChannel (shutdown::MAX_PACKET)",
            size_of::<ShutdownChannel<'_, Transport, MockHal>>(),
        ),
        (
            "TimeSyncChannel (timesync::MAX_PACKET)",
            size_of::<TimeSyncChannel<'_, Transport, MockHal>>(),
        ),
        (
            "KvpChannel",
            size_of::<KvpChannel<'_, Transport, MockHal>>(),
        ),
        (
            "GuestIcs (KVP boxed)",
            size_of::<GuestIcs<'_, Transport, MockHal>>(),
        ),
    ];
    for (name, size) in sizes {
        println!("{name:<42} {size:>6} bytes");
    }
    println!(
        "{:<42} {:>6} bytes",
        "  of which Kvp (default store)",
        size_of::<Kvp<'static>>()
    );
    println!(
        "{:<42} {:>6} bytes",
        "  of which the VMBus channel",
        size_of::<vmbus_guest::Channel<'_, Transport, MockHal, (), 1>>()
    );
    for (name, size) in sizes {
        assert!(size <= 16 * 1024, "{name} is {size} bytes");
    }
}

// ---------------------------------------------------------------- a host driven by the test

/// A heartbeat device that sends only what the test writes into the ring and records every
/// packet the guest sends.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<HostPacket>>>);

impl DeviceModel for Recorder {
    fn on_packet(&mut self, _: &mut HostChannel, packet: &HostPacket) {
        self.0.lock().unwrap().push(packet.clone());
    }
}

impl Recorder {
    fn take(&self) -> Vec<HostPacket> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A connected guest and a host offering one heartbeat IC run by a [`Recorder`].
fn recorded_heartbeat() -> (MockHypervisor, MockVmbusHost, Guest, u32, Recorder) {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022));
    let vp = boot_vp(&hv, 0).expect("boot");
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let recorder = Recorder::default();
    let relid = host.add_device(
        DeviceOffer::new(HEARTBEAT_CLASS, HEARTBEAT_INSTANCE),
        Box::new(recorder.clone()),
    );
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let guest = Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    guest.connect(&mut step(&mut host)).expect("connect");
    (hv, host, guest, relid, recorder)
}

const V3: IcVersion = IcVersion::new(3, 0);

fn heartbeat_request(tid: u64, sequence: u64) -> Vec<u8> {
    let mut payload = vec![0u8; 40];
    payload[..8].copy_from_slice(&sequence.to_le_bytes());
    build_message(
        &IcHeader::request(MSG_HEARTBEAT, V3, V3, payload.len(), tid as u8),
        &payload,
    )
}

fn negotiate_request() -> Vec<u8> {
    let payload = negotiate_payload(&[V3], &[V3]);
    build_message(
        &IcHeader::request(MSG_NEGOTIATE, V3, V3, payload.len(), 0),
        &payload,
    )
}

fn send(host: &mut MockVmbusHost, relid: u32, tid: u64, message: &[u8]) {
    host.with_channel(relid, |ch, _| ch.send_inband(message, tid, false))
        .expect("channel")
        .expect("send");
}

/// A host that refills the ring from inside the guest's event callback cannot keep one poll
/// call running: every call reads exactly its budget — dropped packets count as much as
/// answered ones — says "more", and keeps the host's interrupts masked meanwhile.
#[test]
fn a_host_refilling_the_ring_cannot_hold_one_poll() {
    let (_hv, mut host, guest, relid, recorder) = recorded_heartbeat();
    let mut ch: IcChannel<'_, Transport, MockHal, Heartbeat> =
        IcChannel::open(&guest, Heartbeat::new(), &mut step(&mut host)).expect("open");

    // Malformed requests: each is dropped and reported; the callback sends the next one.
    send(&mut host, relid, 1, &[0xFF; 7]);
    let interrupts = host.guest_signal_count(relid);
    let mut sent = 1u64;
    for _ in 0..3 {
        let polled = ch
            .poll(|e| {
                assert!(matches!(
                    e,
                    IcEvent::Rejected(IcError::TruncatedHeader { len: 8 })
                ));
                sent += 1;
                send(&mut host, relid, sent, &[0xFF; 7]);
            })
            .unwrap();
        assert_eq!(polled.read, DEFAULT_POLL_BUDGET, "{polled:?}");
        assert_eq!(polled.answered, 0);
        assert!(polled.more && ch.has_more());
        assert!(!polled.reply_pending);
    }
    assert_eq!(sent, 3 * DEFAULT_POLL_BUDGET as u64 + 1);
    assert_eq!(ch.stats().malformed, 3 * DEFAULT_POLL_BUDGET as u64);
    assert_eq!(
        host.guest_signal_count(relid),
        interrupts,
        "the host stays masked while the guest is behind"
    );

    // Valid requests refilled the same way: answered, and still one budget per call.
    ch.set_poll_budget(5);
    sent += 1;
    send(&mut host, relid, sent, &heartbeat_request(sent, 100));
    let mut seq = 100;
    let mut answered = 0;
    let mut calls = 0;
    loop {
        calls += 1;
        let polled = ch
            .poll(|e| {
                if let IcEvent::Heartbeat { .. } = e
                    && seq < 150
                {
                    sent += 1;
                    seq += 1;
                    send(&mut host, relid, sent, &heartbeat_request(sent, seq));
                }
            })
            .unwrap();
        if calls == 1 {
            // The last malformed packet (dropped) counts as much as the four answered.
            assert_eq!(
                (polled.read, polled.answered, polled.more),
                (5, 4, true),
                "{polled:?}"
            );
        }
        assert!(polled.read <= 5, "{polled:?}");
        answered += polled.answered;
        host.step(); // the host takes the answers
        if !polled.more {
            break;
        }
    }
    assert_eq!(answered, 1 + 50);
    assert!(calls > 51 / 5, "{calls} calls");
    let replies = recorder.take();
    assert_eq!(replies.len(), 51);
    assert!(
        replies
            .iter()
            .all(|p| p.payload[25] == ICFLAGS_GUEST_RESPONSE)
    );
    // Drained: the interrupt mask is clear again, so a new request interrupts the guest.
    let before = host.guest_signal_count(relid);
    send(&mut host, relid, 5000, &heartbeat_request(5000, 7));
    assert_eq!(host.guest_signal_count(relid), before + 1);
    assert!(
        host.protocol_errors().is_empty(),
        "{:#?}",
        host.protocol_errors()
    );
    let (_, released) = ch.close(&mut step(&mut host));
    assert_eq!(released, Released::Freed);
}

/// A reply that finds the outbound ring full is kept, not dropped after its request was
/// consumed: the next poll sends it before reading anything new, and the host gets every
/// answer, in order, each event reported once its answer is in the ring.
#[test]
fn a_reply_that_finds_the_ring_full_goes_out_at_the_next_poll() {
    let (_hv, mut host, guest, relid, recorder) = recorded_heartbeat();
    // One data page outbound (about 40 heartbeat answers), the usual inbound ring.
    let config = ChannelConfig {
        outbound_pages: 2,
        inbound_pages: IC_RING_PAGES,
        ..ChannelConfig::default()
    };
    let mut ch: IcChannel<'_, Transport, MockHal, Heartbeat> = IcChannel::open_with(
        &guest,
        None,
        &config,
        Heartbeat::new(),
        &mut step(&mut host),
    )
    .expect("open");
    const REQUESTS: u64 = 80;
    send(&mut host, relid, 1, &negotiate_request());
    for tid in 2..=REQUESTS {
        send(&mut host, relid, tid, &heartbeat_request(tid, tid * 10));
    }
    // The host does not read (no step) while the guest answers.
    let mut events = Vec::new();
    let mut answered = 0;
    let mut blocked = None;
    for _ in 0..20 {
        let polled = ch.poll(|e| events.push(e)).unwrap();
        answered += polled.answered;
        if polled.reply_pending {
            blocked = Some(polled);
            break;
        }
        assert!(polled.more, "{polled:?}");
    }
    let blocked = blocked.expect("the outbound ring filled up");
    assert!(!blocked.more, "nothing to do until the host has read");
    assert!(ch.reply_pending());
    assert_eq!(ch.stats().replies_deferred, 1);
    assert_eq!(
        ch.stats().read,
        answered as u64 + 1,
        "the request whose answer waits was consumed"
    );
    assert_eq!(events.len(), answered, "its event waits with it");
    assert!(answered > 20 && (answered as u64) < REQUESTS, "{answered}");

    // Still full: the reply is retried, nothing new is read.
    let polled = ch.poll(|e| events.push(e)).unwrap();
    assert_eq!((polled.read, polled.answered), (0, 0));
    assert!(polled.reply_pending);

    // The host reads (and signals the space): everything goes out.
    for _ in 0..50 {
        host.step();
        let polled = ch.poll(|e| events.push(e)).unwrap();
        answered += polled.answered;
        if answered as u64 == REQUESTS && !polled.more {
            break;
        }
    }
    host.step();
    assert_eq!(answered as u64, REQUESTS);
    assert!(!ch.reply_pending());
    let replies = recorder.take();
    let tids: Vec<u64> = replies.iter().map(|p| p.transaction_id).collect();
    assert_eq!(
        tids,
        (1..=REQUESTS).collect::<Vec<_>>(),
        "every answer, in order"
    );
    for p in &replies[1..] {
        let header = IcHeader::parse(&p.payload).unwrap();
        assert_eq!(
            (header.status, header.icflags),
            (S_OK, ICFLAGS_GUEST_RESPONSE)
        );
        let seq = u64::from_le_bytes(p.payload[28..36].try_into().unwrap());
        assert_eq!(seq, p.transaction_id * 10 + 1);
    }
    assert!(matches!(events[0], IcEvent::Negotiated { .. }));
    let sequences: Vec<u64> = events[1..]
        .iter()
        .map(|e| match e {
            IcEvent::Heartbeat { sequence } => *sequence,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sequences,
        (2..=REQUESTS).map(|t| t * 10 + 1).collect::<Vec<_>>()
    );
    assert_eq!(ch.dropped(), 0);
    assert!(
        host.protocol_errors().is_empty(),
        "{:#?}",
        host.protocol_errors()
    );
    let (_, released) = ch.close(&mut step(&mut host));
    assert_eq!(released, Released::Freed);
}
