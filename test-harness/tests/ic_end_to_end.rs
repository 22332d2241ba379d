//! The guest's integration services (`ic-services` on real VMBus channels) against the host
//! IC models: negotiation on every version combination the host offers, each request kind,
//! and malformed host payloads.

use std::sync::{Arc, Mutex};

use ic_services::IcEvent;
use test_harness::guest::boot_vp;
use test_harness::guest_ics::{GuestIcs, HARNESS_GUEST_INFO, settle};
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::ic::IcVersion;
use test_harness::ic::shutdown::{ShutdownKind, ShutdownOutcome};
use test_harness::ic::timesync::DEFAULT_HOST_EPOCH;
use test_harness::ic::{IcHost, IcHostConfig, Negotiation};
use test_harness::vmbus::{HostRelease, MockVmbusHost};
use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::{BoundedWait, Connection, ConnectionConfig, SynicTransport};

type Guest = Connection<SynicTransport<MockVp>, MockHal>;

struct Rig {
    hv: MockHypervisor,
    host: MockVmbusHost,
    ics: IcHost,
    guest: Guest,
    services: GuestIcs,
    events: Arc<Mutex<Vec<(DeviceClass, IcEvent)>>>,
    shutdown_answers: Arc<Mutex<Vec<ic_services::shutdown::ShutdownRequest>>>,
}

fn step(host: &mut MockVmbusHost) -> BoundedWait<impl FnMut() + '_> {
    BoundedWait::new(200, move || {
        host.step();
    })
}

/// A guest connected to a WS2022 host offering the four ICs, with the services open.
/// `offers` may restrict the versions each host model offers before the channels open.
fn rig(offers: impl FnOnce(&IcHost)) -> Rig {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022));
    let vp = boot_vp(&hv, 0).expect("boot");
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let ics = IcHost::add_to(&mut host, IcHostConfig::default());
    offers(&ics);
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let mut guest = Connection::new(transport, hv.hal(), ConnectionConfig::default());
    guest.connect(&mut step(&mut host)).expect("connect");
    let shutdown_answers = Arc::new(Mutex::new(Vec::new()));
    let seen = shutdown_answers.clone();
    let policy = Box::new(move |r: &ic_services::shutdown::ShutdownRequest| {
        seen.lock().unwrap().push(*r);
        r.kind != ic_services::shutdown::ShutdownKind::Hibernate
    });
    let (clock, cpu) = (vp.clock, vp.cpu.clone());
    let reference_now = Box::new(move || clock.now(&cpu));
    let services = GuestIcs::open(&mut guest, &mut step(&mut host), policy, reference_now)
        .expect("open the IC channels");
    let mut rig = Rig {
        hv,
        host,
        ics,
        guest,
        services,
        events: Arc::new(Mutex::new(Vec::new())),
        shutdown_answers,
    };
    rig.settle();
    rig
}

impl Rig {
    /// Runs host and guest until neither has anything left to do (bounded).
    fn settle(&mut self) {
        let events = self.events.clone();
        settle(
            &mut self.host,
            &mut self.guest,
            &mut self.services,
            |class, e| events.lock().unwrap().push((class, e)),
        )
        .expect("settle");
    }

    fn take_events(&self) -> Vec<(DeviceClass, IcEvent)> {
        std::mem::take(&mut *self.events.lock().unwrap())
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
}

fn v(major: u16, minor: u16) -> IcVersion {
    IcVersion::new(major, minor)
}

#[test]
fn every_service_negotiates_the_newest_common_version() {
    let rig = rig(|_| {});
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
            let rig = rig(|ics| ics.timesync.set_offered_versions(framework, services));
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
    let rig = rig(|ics| ics.kvp.set_offered_versions(&[v(3, 0)], &[v(9, 9)]));
    assert_eq!(rig.ics.kvp.negotiation(), Negotiation::Refused);
}

#[test]
fn heartbeats_are_answered_with_the_next_sequence() {
    let mut rig = rig(|_| {});
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
}

#[test]
fn kvp_host_reads_the_guest_and_pushes_values() {
    let mut rig = rig(|_| {});
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
    rig.assert_clean();
}

#[test]
fn time_sync_gives_the_guest_host_utc() {
    let mut rig = rig(|_| {});
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
}

#[test]
fn shutdown_requests_go_through_the_policy_before_the_answer() {
    let mut rig = rig(|_| {});
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
}

#[test]
fn malformed_host_requests_are_dropped_not_fatal() {
    let mut rig = rig(|_| {});
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
    // The service still works afterwards.
    rig.ics.heartbeat.beat_now();
    rig.settle();
    assert_eq!(rig.ics.heartbeat.beats(), 1);
}
