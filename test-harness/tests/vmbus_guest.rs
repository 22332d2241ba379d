//! The guest VMBus connection and channels against the mock VMBus host (deterministic: the
//! host steps only when the guest waits), plus one bounded threaded test.

mod common;

use common::*;
use std::time::{Duration, Instant};
use test_harness::vmbus::{ChannelState, DeviceOffer, EchoDevice, HostRelease};
use vmbus_guest::protocol::{DeviceClass, FeatureFlags, VmbusVersion};
use vmbus_guest::{
    BoundedWait, Channel, ChannelConfig, ChannelError, ConnectionState, Event, GpadlBuffer,
    Received, RequestMode, VmbusError,
};

const RX: usize = 64 * 1024;

fn expected_version(r: HostRelease) -> VmbusVersion {
    match r {
        HostRelease::Copper => VmbusVersion::V6_0,
        HostRelease::Ws2022 => VmbusVersion::V5_3,
        HostRelease::Ws2019 => VmbusVersion::V5_2,
        HostRelease::Ws2016 => VmbusVersion::V4_0,
        HostRelease::Ws2012R2 => VmbusVersion::V3_0,
        HostRelease::Ws2012 => VmbusVersion::V2_4,
        HostRelease::Ws2008R2 => VmbusVersion::V1_1,
    }
}

/// Sends one awaited request and one plain packet and checks both echoes.
fn echo_round_trip(
    guest: &mut Guest,
    host: &mut test_harness::vmbus::MockVmbusHost,
    ch: &mut Channel,
) {
    let msg = b"round trip through the host ring";
    let id = ch
        .send_request(guest, &[msg], 42, RequestMode::Await)
        .expect("send request");
    let mut comp = [0u8; 128];
    let mut rx = vec![0u8; RX];
    let len = ch
        .wait_completion(guest, id, &mut comp, &mut rx, |_| {}, &mut step(host))
        .expect("completion");
    assert!(len >= msg.len());
    assert_eq!(&comp[..msg.len()], msg);
    ch.send(guest, &[b"in-band ", b"echo"]).expect("send");
    let mut got = Vec::new();
    let mut w = step(host);
    while got.is_empty() {
        guest.poll();
        ch.poll(guest, &mut rx, |r| {
            if let Received::Packet(p) = r {
                got.extend_from_slice(&p.payload()[..12]);
            }
        })
        .expect("poll");
        if got.is_empty() {
            vmbus_guest::Wait::wait(&mut w).expect("echo in time");
        }
    }
    assert_eq!(&got, b"in-band echo");
}

#[test]
fn every_release_negotiates_its_version_and_echoes() {
    for &release in HostRelease::all() {
        let (_hv, mut host, mut guest) = rig(release);
        let relid = add_echo(&mut host, NET, 1);
        let v = guest.connect(&mut step(&mut host)).expect("connect");
        assert_eq!(v, expected_version(release), "{}", release.name());
        assert_eq!(host.negotiated_version(), Some(v));
        let n = guest.negotiated().unwrap();
        assert_eq!(Some(n.message_connection_id), host.message_connection_id());
        if v >= VmbusVersion::V6_0 {
            assert_eq!(n.features, FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS);
        }
        let offer = *guest.offers().offer(relid).expect("offer");
        assert_eq!(offer.class, DeviceClass::Network);
        assert_eq!(offer.interface_instance, instance(1));
        let mut ch = Channel::open(
            &mut guest,
            relid,
            &ChannelConfig::default(),
            &mut step(&mut host),
        )
        .expect("open");
        assert_eq!(host.channel_state(relid), Some(ChannelState::Open));
        echo_round_trip(&mut guest, &mut host, &mut ch);
        ch.close(&mut guest, &mut step(&mut host)).expect("close");
        host.step();
        assert_eq!(host.gpadls(), 0);
        // UNLOAD and a clean reconnect (the kexec case) on every release.
        guest.unload(&mut step(&mut host)).expect("unload");
        assert!(host.unloaded());
        assert_eq!(guest.connect(&mut step(&mut host)).expect("reconnect"), v);
        assert!(guest.offers().offer(relid).is_some());
        assert_clean(&host);
    }
}

#[test]
fn offers_rescind_and_hot_add() {
    let (_hv, mut host, mut guest) = rig(HostRelease::Ws2022);
    let a = add_echo(&mut host, NET, 1);
    let b = add_echo(&mut host, SCSI, 2);
    guest.connect(&mut step(&mut host)).unwrap();
    assert_eq!(guest.offers().iter().count(), 2);
    assert!(guest.all_offers_delivered());
    while guest.next_event().is_some() {}
    // Rescind of an unopened channel: released at once.
    host.rescind(b);
    let mut w = step(&mut host);
    guest
        .wait_until(&mut w, |g| g.offers().offer(b).is_none().then_some(Ok(())))
        .unwrap();
    drop(w);
    assert_eq!(guest.next_event(), Some(Event::Rescind(b)));
    host.step();
    assert_eq!(host.channel_state(b), Some(ChannelState::Released));
    // Hot add, including a sub-channel of the remaining device.
    let c = add_echo(&mut host, HEARTBEAT, 3);
    let mut sub = DeviceOffer::new(NET, instance(1));
    sub.sub_channel_index = 1;
    let s = host.add_device(sub, Box::new(EchoDevice));
    let mut w = step(&mut host);
    guest
        .wait_until(&mut w, |g| {
            (g.offers().offer(c).is_some() && g.offers().offer(s).is_some()).then_some(Ok(()))
        })
        .unwrap();
    drop(w);
    assert_eq!(
        guest.offers().offer(c).unwrap().class,
        DeviceClass::Heartbeat
    );
    assert_eq!(guest.offers().offer(s).unwrap().primary_relid, Some(a));
    assert_eq!(guest.offers().subchannels(a).count(), 1);
    let mut ch = Channel::open(
        &mut guest,
        s,
        &ChannelConfig::default(),
        &mut step(&mut host),
    )
    .unwrap();
    echo_round_trip(&mut guest, &mut host, &mut ch);
    ch.close(&mut guest, &mut step(&mut host)).unwrap();
    assert_clean(&host);
}

#[test]
fn gpadl_of_many_pages() {
    let (_hv, mut host, mut guest) = rig(HostRelease::Copper);
    let relid = add_echo(&mut host, NET, 1);
    guest.connect(&mut step(&mut host)).unwrap();
    // 300 pages: 1 header + 10 bodies.
    let buf = GpadlBuffer::create(&mut guest, relid, 300, &mut step(&mut host)).unwrap();
    let buf2 = GpadlBuffer::create(&mut guest, relid, 27, &mut step(&mut host)).unwrap();
    assert_ne!(buf.handle(), buf2.handle());
    assert_eq!(host.gpadls(), 2);
    buf.teardown(&mut guest, &mut step(&mut host)).unwrap();
    buf2.teardown(&mut guest, &mut step(&mut host)).unwrap();
    assert_eq!(host.gpadls(), 0);
    assert!(guest.gpadls().is_empty());
    assert_clean(&host);
}

#[test]
fn open_close_loop() {
    let (_hv, mut host, mut guest) = rig(HostRelease::Ws2019);
    let relid = add_echo(&mut host, NET, 1);
    guest.connect(&mut step(&mut host)).unwrap();
    for i in 0..50 {
        let mut ch = Channel::open(
            &mut guest,
            relid,
            &ChannelConfig::default(),
            &mut step(&mut host),
        )
        .unwrap_or_else(|e| panic!("open {i}: {e}"));
        if i % 10 == 0 {
            echo_round_trip(&mut guest, &mut host, &mut ch);
        }
        ch.close(&mut guest, &mut step(&mut host)).unwrap();
    }
    host.step();
    assert_eq!(host.gpadls(), 0);
    assert_clean(&host);
}

#[test]
fn callback_completions_and_interrupt_bitmap() {
    let (_hv, mut host, mut guest, mut ch, relid) = open_echo(HostRelease::Ws2022);
    for i in 0..20u64 {
        ch.send_request(&guest, &[&i.to_le_bytes()], i, RequestMode::Callback)
            .unwrap();
    }
    host.step();
    // The host signalled the channel: the interrupt entry point reports it.
    let work = guest.handle_interrupt();
    assert!(work.contains(relid), "{work:?}");
    let mut rx = vec![0u8; RX];
    let mut seen = Vec::new();
    ch.poll(&guest, &mut rx, |r| {
        if let Received::Completion { cookie, packet, .. } = r {
            assert_eq!(&packet.payload()[..8], &cookie.to_le_bytes());
            seen.push(cookie);
        }
    })
    .unwrap();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    assert_eq!(ch.requests_in_flight(), 0);
    ch.close(&mut guest, &mut step(&mut host)).unwrap();
    assert_clean(&host);
}

#[test]
fn gpa_direct_and_monitored_notification() {
    let (_hv, mut host, mut guest) = rig(HostRelease::Ws2022);
    let mut offer = DeviceOffer::new(SCSI, instance(7));
    offer.monitor = true;
    let relid = host.add_device(offer, Box::new(EchoDevice));
    guest.connect(&mut step(&mut host)).unwrap();
    assert!(guest.offers().offer(relid).unwrap().monitor_id.is_some());
    let mut ch = Channel::open(
        &mut guest,
        relid,
        &ChannelConfig::default(),
        &mut step(&mut host),
    )
    .unwrap();
    let data = GpadlBuffer::create(&mut guest, relid, 2, &mut step(&mut host)).unwrap();
    // SAFETY: the buffer's two pages are ours until teardown.
    let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr().as_ptr().add(100), 5000) };
    // SAFETY: the GPADL buffer stays allocated until teardown at the end of the test, and the
    // completion is awaited below before the bytes are looked at again.
    let id = unsafe {
        ch.send_gpa_direct(
            &guest,
            &[bytes],
            &[b"gpa-direct request"],
            9,
            RequestMode::Await,
        )
    }
    .unwrap();
    let mut comp = [0u8; 128];
    let mut rx = vec![0u8; RX];
    let len = ch
        .wait_completion(
            &mut guest,
            id,
            &mut comp,
            &mut rx,
            |_| {},
            &mut step(&mut host),
        )
        .unwrap();
    assert!(len >= 18);
    assert_eq!(&comp[..18], b"gpa-direct request");
    // MNF: the guest set the monitor bit instead of calling HvSignalEvent.
    assert!(host.signal_count(relid) > 0);
    assert!(
        guest
            .transport()
            .synic()
            .take_message(&_hv.vp(0), 2)
            .unwrap()
            .is_none()
    );
    ch.close(&mut guest, &mut step(&mut host)).unwrap();
    data.teardown(&mut guest, &mut step(&mut host)).unwrap();
    assert_clean(&host);
}

#[test]
fn rescind_with_io_in_flight() {
    let (_hv, mut host, mut guest, mut ch, relid) = open_echo(HostRelease::Ws2022);
    let ids: Vec<_> = (0..10)
        .map(|i| {
            ch.send_request(&guest, &[b"io"], i, RequestMode::Await)
                .unwrap()
        })
        .collect();
    host.rescind(relid);
    guest.poll();
    let mut rx = vec![0u8; RX];
    assert_eq!(
        ch.poll(&guest, &mut rx, |_| {}),
        Err(ChannelError::Rescinded)
    );
    for id in ids {
        assert_eq!(
            ch.take_completion(id, &mut []),
            Err(ChannelError::Rescinded)
        );
    }
    assert_eq!(ch.send(&guest, &[b"x"]), Err(ChannelError::Rescinded));
    ch.close(&mut guest, &mut step(&mut host)).unwrap();
    host.step();
    assert_eq!(host.channel_state(relid), Some(ChannelState::Released));
    assert!(guest.offers().is_empty());
    assert_clean(&host);
}

#[test]
fn callback_requests_in_flight_are_reported_failed_when_the_channel_dies() {
    let (_hv, mut host, mut guest, mut ch, relid) = open_echo(HostRelease::Ws2022);
    for cookie in 100..105 {
        ch.send_request(&guest, &[b"io"], cookie, RequestMode::Callback)
            .unwrap();
    }
    host.rescind(relid);
    guest.poll();
    let mut rx = vec![0u8; RX];
    let mut failed = Vec::new();
    let r = ch.poll(&guest, &mut rx, |p| {
        if let Received::Failed { cookie, error, .. } = p {
            failed.push((cookie, error));
        }
    });
    assert_eq!(r, Err(ChannelError::Rescinded));
    failed.sort_by_key(|(cookie, _)| *cookie);
    let expected: Vec<_> = (100..105).map(|c| (c, ChannelError::Rescinded)).collect();
    assert_eq!(
        failed, expected,
        "every callback request learns it failed, once"
    );
    let mut again = 0;
    let _ = ch.poll(&guest, &mut rx, |_| again += 1);
    assert_eq!(again, 0);
    ch.close(&mut guest, &mut step(&mut host)).unwrap();
}

#[test]
fn a_poll_that_stops_early_says_more_is_waiting() {
    // The host signals only on empty -> non-empty, so packets left behind by a bounded poll
    // are announced by has_more(), not by an interrupt.
    let (_hv, mut host, mut guest, mut ch, relid) = open_echo(HostRelease::Ws2022);
    for cookie in 0..3 {
        ch.send_request(&guest, &[b"io"], cookie, RequestMode::Callback)
            .unwrap();
    }
    for _ in 0..5 {
        host.step();
    }
    assert!(
        guest.handle_interrupt().contains(relid),
        "the first packet interrupts"
    );
    let mut rx = vec![0u8; RX];
    let mut seen = 0;
    assert_eq!(ch.poll_at_most(&guest, &mut rx, 1, |_| seen += 1), Ok(1));
    assert!(ch.has_more());
    for _ in 0..5 {
        host.step();
    }
    assert!(
        !guest.handle_interrupt().contains(relid),
        "no interrupt announces what was left"
    );
    while ch.has_more() {
        ch.poll_at_most(&guest, &mut rx, 1, |_| seen += 1).unwrap();
    }
    assert_eq!(seen, 3);
    assert_eq!(ch.requests_in_flight(), 0);
    assert_clean(&host);
}

#[test]
fn rescind_cancels_a_pending_open_and_withheld_open_times_out() {
    let (_hv, mut host, mut guest) = rig(HostRelease::Ws2022);
    let relid = add_echo(&mut host, NET, 1);
    guest.connect(&mut step(&mut host)).unwrap();
    host.set_withhold_open_result(relid, true);
    let r = Channel::open(
        &mut guest,
        relid,
        &ChannelConfig::default(),
        &mut BoundedWait::new(10, || {
            host.step();
        }),
    );
    assert_eq!(r.err(), Some(ChannelError::Timeout));
    let mut p =
        vmbus_guest::PendingOpen::start(&mut guest, relid, &ChannelConfig::default()).unwrap();
    for _ in 0..5 {
        host.step();
        guest.poll();
        assert!(p.poll(&mut guest).unwrap().is_none());
    }
    host.rescind(relid);
    guest.poll();
    assert_eq!(p.poll(&mut guest).err(), Some(ChannelError::Rescinded));
    p.abort(&mut guest, &mut step(&mut host));
    host.step();
    assert_eq!(host.channel_state(relid), Some(ChannelState::Released));
    assert_clean(&host);
}

#[test]
fn unload_and_reconnect() {
    let (_hv, mut host, mut guest) = rig(HostRelease::Ws2019);
    let relid = add_echo(&mut host, NET, 1);
    guest.connect(&mut step(&mut host)).unwrap();
    let ch = Channel::open(
        &mut guest,
        relid,
        &ChannelConfig::default(),
        &mut step(&mut host),
    )
    .unwrap();
    guest.unload(&mut step(&mut host)).unwrap();
    assert!(host.unloaded());
    assert_eq!(guest.state(), ConnectionState::Disconnected);
    // The channel outlived the connection: close frees its memory without messages.
    ch.close(&mut guest, &mut step(&mut host)).unwrap();
    let v = guest.connect(&mut step(&mut host)).unwrap();
    assert_eq!(v, VmbusVersion::V5_2);
    let mut ch = Channel::open(
        &mut guest,
        relid,
        &ChannelConfig::default(),
        &mut step(&mut host),
    )
    .unwrap();
    echo_round_trip(&mut guest, &mut host, &mut ch);
    ch.close(&mut guest, &mut step(&mut host)).unwrap();
    assert_clean(&host);
}

#[test]
fn corrupt_ring_fails_requests_not_the_guest() {
    let (_hv, mut host, mut guest, mut ch, relid) = open_echo(HostRelease::Ws2022);
    let id = ch
        .send_request(&guest, &[b"x"], 0, RequestMode::Await)
        .unwrap();
    assert!(host.corrupt_inbound_write_index(relid, 13));
    let mut rx = vec![0u8; RX];
    assert!(matches!(
        ch.poll(&guest, &mut rx, |_| {}),
        Err(ChannelError::Corrupt(_))
    ));
    assert!(matches!(
        ch.take_completion(id, &mut []),
        Err(ChannelError::Corrupt(_))
    ));
    ch.close(&mut guest, &mut step(&mut host)).unwrap();
    let mut ch = Channel::open(
        &mut guest,
        relid,
        &ChannelConfig::default(),
        &mut step(&mut host),
    )
    .unwrap();
    echo_round_trip(&mut guest, &mut host, &mut ch);
    ch.close(&mut guest, &mut step(&mut host)).unwrap();
}

#[test]
fn threaded_host_round_trip() {
    let (_hv, mut host, mut guest) = rig(HostRelease::Copper);
    let relid = add_echo(&mut host, NET, 1);
    let host = host.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut wait = BoundedWait::new(200_000, || {
        assert!(Instant::now() < deadline, "threaded test took too long");
        std::thread::sleep(Duration::from_micros(100));
    });
    assert_eq!(guest.connect(&mut wait).unwrap(), VmbusVersion::V6_0);
    let mut ch = Channel::open(&mut guest, relid, &ChannelConfig::default(), &mut wait).unwrap();
    let mut comp = [0u8; 128];
    let mut rx = vec![0u8; RX];
    for i in 0..100u64 {
        let id = ch
            .send_request(&guest, &[&i.to_le_bytes()], i, RequestMode::Await)
            .unwrap();
        ch.wait_completion(&mut guest, id, &mut comp, &mut rx, |_| {}, &mut wait)
            .unwrap();
        assert_eq!(&comp[..8], &i.to_le_bytes());
    }
    ch.close(&mut guest, &mut wait).unwrap();
    let host = host.stop();
    assert_clean(&host);
}

#[test]
fn connect_times_out_without_a_host() {
    let (_hv, _host, mut guest) = rig(HostRelease::Ws2022);
    assert_eq!(
        guest.connect(&mut BoundedWait::new(5, || {})),
        Err(VmbusError::Timeout)
    );
}

#[test]
fn guest_objects_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<Channel>();
    send::<GpadlBuffer>();
    send::<vmbus_guest::PendingOpen>();
    send::<Guest>();
}

#[test]
fn control_messages_follow_the_target_vp() {
    use test_harness::hv::{HostPreset, MockConfig, MockHypervisor};
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_vp_count(2));
    let _vp0 = test_harness::guest::boot_vp(&hv, 0).unwrap();
    let vp1 = test_harness::guest::boot_vp(&hv, 1).unwrap();
    let mut host = test_harness::vmbus::MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let relid = add_echo(&mut host, NET, 1);
    let transport = vmbus_guest::SynicTransport::for_current_vp(vp1.hypercalls, vp1.synic);
    assert_eq!(vmbus_guest::Transport::vp_index(&transport), 1);
    let mut guest = vmbus_guest::Connection::new(
        transport,
        hv.hal(),
        vmbus_guest::ConnectionConfig::default(),
    );
    guest.connect(&mut step(&mut host)).unwrap();
    let mut ch = Channel::open(
        &mut guest,
        relid,
        &ChannelConfig::default(),
        &mut step(&mut host),
    )
    .unwrap();
    echo_round_trip(&mut guest, &mut host, &mut ch);
    ch.close(&mut guest, &mut step(&mut host)).unwrap();
    assert_clean(&host);
}

#[test]
fn the_guest_signals_only_when_the_ring_goes_from_empty_to_non_empty() {
    // Hyper-V throttles guests that signal needlessly (§7.8): a burst of packets the host has
    // not drained yet costs one signal, not one per packet.
    let (_hv, mut host, guest, mut ch, relid) = open_echo(HostRelease::Ws2022);
    let mut rx = vec![0u8; RX];
    for round in 1..=3u64 {
        for i in 0..10u64 {
            ch.send_request(&guest, &[b"burst"], i, RequestMode::Callback)
                .unwrap();
        }
        host.step();
        assert_eq!(
            host.signal_count(relid),
            round,
            "one signal per burst of 10"
        );
        let mut completions = 0;
        for _ in 0..10 {
            host.step();
            ch.poll(&guest, &mut rx, |_| completions += 1).unwrap();
            if completions == 10 {
                break;
            }
        }
        assert_eq!(completions, 10);
    }
    assert_clean(&host);
}

#[test]
fn channel_interrupts_on_another_vp_are_found_without_the_connection() {
    // The connection lives on VP 0; the channel's interrupts are targeted at VP 1 (≥ 2.4).
    use test_harness::hv::{HostPreset, MockConfig, MockHypervisor};
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_vp_count(2));
    let vp0 = test_harness::guest::boot_vp(&hv, 0).unwrap();
    let vp1 = test_harness::guest::boot_vp(&hv, 1).unwrap();
    let mut host = test_harness::vmbus::MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let relid = add_echo(&mut host, NET, 1);
    let transport = vmbus_guest::SynicTransport::for_current_vp(vp0.hypercalls, vp0.synic);
    let mut guest = vmbus_guest::Connection::new(
        transport,
        hv.hal(),
        vmbus_guest::ConnectionConfig::default(),
    );
    guest.connect(&mut step(&mut host)).unwrap();
    let config = ChannelConfig {
        target_vp: Some(1),
        ..ChannelConfig::default()
    };
    let mut ch = Channel::open(&mut guest, relid, &config, &mut step(&mut host)).unwrap();
    ch.send_request(&guest, &[b"ping"], 1, RequestMode::Callback)
        .unwrap();
    for _ in 0..3 {
        host.step();
    }
    assert!(
        !guest.handle_interrupt().contains(relid),
        "VP 0's SynIC has no flag for a channel targeted at VP 1"
    );
    let limit = guest.offers().relid_limit();
    let work = vmbus_guest::take_channel_events(&vp1.synic, limit);
    assert!(work.contains(relid), "VP 1's SynIC has the channel's flag");
    assert!(
        !vmbus_guest::take_channel_events(&vp1.synic, limit).contains(relid),
        "taken once"
    );
    let mut rx = vec![0u8; RX];
    let mut completions = 0;
    ch.poll(&guest, &mut rx, |p| {
        if matches!(p, Received::Completion { .. }) {
            completions += 1;
        }
    })
    .unwrap();
    assert_eq!(completions, 1);
    ch.close(&mut guest, &mut step(&mut host)).unwrap();
    assert_clean(&host);
}

#[test]
fn a_lost_unload_response_is_abandoned_and_the_guest_reconnects() {
    let (_hv, mut host, mut guest) = rig(HostRelease::Ws2022);
    add_echo(&mut host, NET, 1);
    guest.connect(&mut step(&mut host)).unwrap();
    // The host never gets to answer: the wait runs out while unloading.
    let mut silent = BoundedWait::new(5, || {});
    assert!(guest.unload(&mut silent).is_err());
    assert_eq!(guest.state(), ConnectionState::Unloading);
    assert!(
        guest.connect(&mut step(&mut host)).is_err(),
        "not from Unloading"
    );
    guest.abandon();
    assert_eq!(guest.state(), ConnectionState::Disconnected);
    // The late UNLOAD_RESPONSE is discarded as stale; the new connection works.
    guest.connect(&mut step(&mut host)).unwrap();
    assert_eq!(guest.offers().iter().count(), 1);
    assert_clean(&host);
}
