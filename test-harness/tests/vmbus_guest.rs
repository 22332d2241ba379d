//! The guest VMBus bus and channels against the mock VMBus host (deterministic: the host steps
//! only when the guest waits), plus bounded threaded tests.

mod common;

use common::*;
use std::time::{Duration, Instant};
use test_harness::vmbus::{ChannelState, DeviceOffer, EchoDevice, HostRelease};
use vmbus_guest::protocol::{DeviceClass, FeatureFlags, VmbusVersion};
use vmbus_guest::{
    BoundedWait, Channel, ChannelConfig, ChannelError, ConnectionConfig, ConnectionState, Event,
    HostBuffer, Released, VmbusError,
};

const RX: usize = 64 * 1024;
const IN_BAND: u16 = 6;

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

/// One request/response exchange and one plain packet, checking both echoes.
fn echo_round_trip(host: &mut test_harness::vmbus::MockVmbusHost, ch: &mut GuestChannel<'_>) {
    let msg = b"round trip through the host ring";
    let mut comp = [0u8; 128];
    let mut rx = vec![0u8; RX];
    let len = ch
        .transact(&[msg], 42, &mut comp, &mut rx, |_| {}, &mut step(host))
        .expect("completion");
    assert!(len >= msg.len());
    assert_eq!(&comp[..msg.len()], msg);
    ch.send(&[b"in-band ", b"echo"]).expect("send");
    let mut got = Vec::new();
    for _ in 0..20 {
        host.step();
        let (packets, r) = drain(ch, &mut rx);
        r.expect("receive");
        got.extend(packets);
        if !got.is_empty() {
            break;
        }
    }
    match got.as_slice() {
        [Got::Packet(IN_BAND, p)] => assert_eq!(&p[..12], b"in-band echo"),
        other => panic!("expected the echo, got {other:?}"),
    }
}

#[test]
fn every_release_negotiates_its_version_and_echoes() {
    for &release in HostRelease::all() {
        let (_hv, mut host, guest) = rig(release);
        let relid = add_echo(&mut host, NET, 1);
        let v = guest.connect(&mut step(&mut host)).expect("connect");
        assert_eq!(v, expected_version(release), "{}", release.name());
        assert_eq!(host.negotiated_version(), Some(v));
        let n = guest.negotiated().unwrap();
        assert_eq!(Some(n.message_connection_id), host.message_connection_id());
        // As Linux: no 6.0 feature requested unless configured.
        assert_eq!(n.features, FeatureFlags::empty());
        let offer = guest.offer(relid).expect("offer");
        assert_eq!(offer.class, DeviceClass::Network);
        assert_eq!(offer.interface_instance, instance(1));
        let mut ch = open_echo_channel(&guest, &mut host, relid);
        assert_eq!(host.channel_state(relid), Some(ChannelState::Open));
        echo_round_trip(&mut host, &mut ch);
        assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
        host.step();
        assert_eq!(host.gpadls(), 0);
        // UNLOAD and a clean reconnect (the kexec case) on every release.
        guest.unload(&mut step(&mut host)).expect("unload");
        assert!(host.unloaded());
        assert_eq!(guest.connect(&mut step(&mut host)).expect("reconnect"), v);
        assert!(guest.offer(relid).is_some());
        assert_clean(&host);
    }
}

#[test]
fn guest_specified_signal_parameters_when_configured() {
    let (hv, mut host, _) = rig(HostRelease::Copper);
    let relid = add_echo(&mut host, NET, 1);
    let vp = test_harness::guest::boot_vp(&hv, 0).unwrap();
    let guest = vmbus_guest::Vmbus::new(
        vmbus_guest::SynicTransport::for_current_vp(vp.hypercalls, vp.synic),
        hv.hal(),
        ConnectionConfig {
            features: FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS,
            ..ConnectionConfig::default()
        },
    );
    guest.connect(&mut step(&mut host)).unwrap();
    assert_eq!(
        guest.negotiated().unwrap().features,
        FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS
    );
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    echo_round_trip(&mut host, &mut ch);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn offers_rescind_and_hot_add() {
    let (_hv, mut host, guest) = rig(HostRelease::Ws2022);
    let a = add_echo(&mut host, NET, 1);
    let b = add_echo(&mut host, SCSI, 2);
    guest.connect(&mut step(&mut host)).unwrap();
    assert_eq!(guest.with_offers(|t| t.iter().count()), 2);
    assert!(guest.all_offers_delivered());
    while guest.next_event().is_some() {}
    // Rescind of an unopened channel: released at once.
    host.rescind(b);
    settle(&guest, &mut host, |g| g.offer(b).is_none());
    assert_eq!(guest.next_event(), Some(Event::Rescind(b)));
    host.step();
    assert_eq!(host.channel_state(b), Some(ChannelState::Released));
    // Hot add, including a sub-channel of the remaining device.
    let c = add_echo(&mut host, HEARTBEAT, 3);
    let mut sub = DeviceOffer::new(NET, instance(1));
    sub.sub_channel_index = 1;
    let s = host.add_device(sub, Box::new(EchoDevice));
    settle(&guest, &mut host, |g| {
        g.offer(c).is_some() && g.offer(s).is_some()
    });
    assert_eq!(guest.next_event(), Some(Event::Offer(c)));
    assert_eq!(guest.next_event(), Some(Event::Offer(s)));
    assert_eq!(guest.offer(c).unwrap().class, DeviceClass::Heartbeat);
    assert_eq!(guest.offer(s).unwrap().primary_relid, Some(a));
    assert_eq!(guest.with_offers(|t| t.subchannels(a).count()), 1);
    // Open by class is one call; the sub-channel through the primary.
    let primary: GuestChannel<'_> = Channel::open_class(
        &guest,
        DeviceClass::Network,
        None,
        &ChannelConfig::default(),
        &mut step(&mut host),
    )
    .unwrap();
    assert_eq!(primary.relid(), a);
    let mut subs: [Option<GuestChannel<'_>>; 2] = [None, None];
    let opened = primary.open_subchannels(
        1,
        &ChannelConfig::default(),
        &mut step(&mut host),
        &mut subs,
    );
    assert_eq!(opened, 1);
    let mut ch = subs[0].take().unwrap();
    assert_eq!(ch.relid(), s);
    echo_round_trip(&mut host, &mut ch);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_eq!(primary.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn host_buffers_behind_gpadls_of_many_pages() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Copper);
    // 300 pages: 1 header + 10 bodies.
    let buf = HostBuffer::with_gpadl(&guest, relid, 300, &mut step(&mut host)).unwrap();
    let buf2 = HostBuffer::with_gpadl(&guest, relid, 27, &mut step(&mut host)).unwrap();
    assert_ne!(buf.gpadl_handle(), buf2.gpadl_handle());
    assert_eq!(host.gpadls(), 2);
    // Bounds-checked copies at any offset; nothing outside.
    buf.write_at(300 * 4096 - 3, b"end").unwrap();
    let mut end = [0u8; 3];
    buf.read_at(300 * 4096 - 3, &mut end).unwrap();
    assert_eq!(&end, b"end");
    assert!(buf.write_at(300 * 4096 - 2, b"end").is_err());
    assert!(buf.read_at(usize::MAX, &mut end).is_err());
    assert!(buf.dma(0, 0).is_err() && buf.dma(300 * 4096, 1).is_err());
    assert_eq!(buf.release(&mut step(&mut host)), Released::Freed);
    assert_eq!(buf2.release(&mut step(&mut host)), Released::Freed);
    assert_eq!(host.gpadls(), 0);
    assert_eq!(guest.gpadl_count(), 0);
    assert_clean(&host);
}

#[test]
fn open_close_loop() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2019);
    for i in 0..50 {
        let mut ch = Channel::open(
            &guest,
            relid,
            &ChannelConfig::default(),
            &mut step(&mut host),
        )
        .unwrap_or_else(|e| panic!("open {i}: {e}"));
        if i % 10 == 0 {
            echo_round_trip(&mut host, &mut ch);
        }
        assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    }
    host.step();
    assert_eq!(host.gpadls(), 0);
    assert_clean(&host);
}

#[test]
fn a_channel_closed_in_place_is_a_dead_handle() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2022);
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    let id = ch.request(&[b"never answered"], 7).expect("request");
    let mut failed = Vec::new();
    let released = ch.close_in_place(&mut step(&mut host), |request, ctx, e| {
        failed.push((request, ctx, e))
    });
    assert_eq!(released, Released::Freed);
    assert_eq!(failed, [(id, 7, ChannelError::Closed)]);
    host.step();
    assert_eq!(host.gpadls(), 0, "the ring GPADL is torn down");
    assert_eq!(host.channel_state(relid), Some(ChannelState::Closed));
    // Its memory is gone: every call fails without touching the ring.
    let mut rx = vec![0u8; RX];
    assert!(matches!(ch.recv(&mut rx), Err(ChannelError::Closed)));
    assert!(matches!(ch.skip(), Err(ChannelError::Closed)));
    assert_eq!(ch.end_batch(), Ok(false));
    assert_eq!(ch.yield_batch(), Ok(()));
    assert_eq!(ch.send(&[b"late"]), Err(ChannelError::Closed));
    assert_eq!(ch.request(&[b"late"], 8).err(), Some(ChannelError::Closed));
    assert!(!ch.is_alive());
    // A second close has nothing left to give back; dropping it does nothing.
    assert_eq!(
        ch.close_in_place(&mut step(&mut host), |_, _, _| panic!("no request left")),
        Released::Leaked
    );
    drop(ch);
    // The offer is reusable by a new open.
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    echo_round_trip(&mut host, &mut ch);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn completions_carry_their_context_and_the_interrupt_reports_work() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2022);
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    for i in 0..20u64 {
        ch.request(&[&i.to_le_bytes()], i).unwrap();
    }
    host.step();
    // The host signalled the channel: the interrupt entry point reports it.
    let work = guest.handle_interrupt();
    assert!(work.channels.contains(relid), "{work:?}");
    let mut rx = vec![0u8; RX];
    let (got, r) = drain(&mut ch, &mut rx);
    r.unwrap();
    let contexts: Vec<u64> = got
        .iter()
        .map(|g| match g {
            Got::Completion(ctx, payload) => {
                assert_eq!(&payload[..8], &ctx.to_le_bytes());
                *ctx
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(contexts, (0..20).collect::<Vec<_>>());
    assert_eq!(ch.requests_in_flight(), 0);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn gpa_direct_from_a_host_buffer_and_monitored_notification() {
    let (hv, mut host, guest) = rig(HostRelease::Ws2022);
    let mut offer = DeviceOffer::new(SCSI, instance(7));
    offer.monitor = true;
    let relid = host.add_device(offer, Box::new(EchoDevice));
    guest.connect(&mut step(&mut host)).unwrap();
    assert!(guest.offer(relid).unwrap().monitor_id.is_some());
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    let data = HostBuffer::new(&guest, 2).unwrap();
    data.write_at(100, &[0x5A; 5000]).unwrap();
    let dma = data.dma(100, 5000).unwrap();
    assert_eq!((dma.page_offset(), dma.page_count()), (100, 2));
    let mut rx = vec![0u8; RX];
    ch.request_dma(&[dma], &[b"gpa-direct request"], 9).unwrap();
    let mut found = None;
    for _ in 0..20 {
        host.step();
        let (got, r) = drain(&mut ch, &mut rx);
        r.unwrap();
        if let Some(Got::Completion(9, p)) = got.into_iter().next() {
            found = Some(p);
            break;
        }
    }
    let p = found.expect("completion");
    assert_eq!(&p[..18], b"gpa-direct request");
    // MNF: the guest set the monitor bit instead of calling HvSignalEvent.
    assert!(host.signal_count(relid) > 0);
    assert!(
        guest
            .transport()
            .synic()
            .take_message(&hv.vp(0), 2)
            .unwrap()
            .is_none()
    );
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_eq!(data.release(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn rescind_fails_every_request_in_flight_once() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2022);
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    for ctx in 100..110 {
        ch.request(&[b"io"], ctx).unwrap();
    }
    host.rescind(relid);
    // The interrupt path alone (no control-path poll) makes the channel see it.
    let work = guest.handle_interrupt();
    assert!(
        work.channels.contains(relid),
        "the rescind is reported as work"
    );
    let mut rx = vec![0u8; RX];
    let (got, r) = drain(&mut ch, &mut rx);
    assert_eq!(r, Err(ChannelError::Rescinded));
    let mut failed: Vec<u64> = got
        .iter()
        .map(|g| match g {
            Got::Failed(ctx, ChannelError::Rescinded) => *ctx,
            other => panic!("{other:?}"),
        })
        .collect();
    failed.sort();
    assert_eq!(failed, (100..110).collect::<Vec<_>>());
    let (again, r) = drain(&mut ch, &mut rx);
    assert!(again.is_empty(), "reported once");
    assert_eq!(r, Err(ChannelError::Rescinded));
    assert_eq!(ch.send(&[b"x"]), Err(ChannelError::Rescinded));
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    host.step();
    assert_eq!(host.channel_state(relid), Some(ChannelState::Released));
    assert!(guest.with_offers(|t| t.is_empty()));
    assert_clean(&host);
}

#[test]
fn a_bounded_receive_says_more_is_waiting() {
    // The host signals only on empty -> non-empty, so packets left behind by a bounded batch
    // are announced by end_batch()/has_more(), not by an interrupt.
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2022);
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    for ctx in 0..3 {
        ch.request(&[b"io"], ctx).unwrap();
    }
    for _ in 0..5 {
        host.step();
    }
    assert!(guest.handle_interrupt().channels.contains(relid));
    let mut rx = vec![0u8; RX];
    assert!(ch.recv(&mut rx).unwrap().is_some());
    ch.yield_batch().unwrap();
    for _ in 0..5 {
        host.step();
    }
    assert!(
        !guest.handle_interrupt().channels.contains(relid),
        "the host does not interrupt a masked reader"
    );
    let mut seen = 1;
    while ch.recv(&mut rx).unwrap().is_some() {
        seen += 1;
    }
    assert!(!ch.end_batch().unwrap());
    assert_eq!(seen, 3);
    assert_eq!(ch.requests_in_flight(), 0);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn withheld_open_times_out_and_the_offer_stays_usable() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2022);
    host.set_withhold_open_result(relid, true);
    let r = Channel::<_, _>::open(
        &guest,
        relid,
        &ChannelConfig::default(),
        &mut BoundedWait::new(10, || {
            host.step();
        }),
    );
    assert_eq!(r.err(), Some(ChannelError::Timeout));
    host.set_withhold_open_result(relid, false);
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    echo_round_trip(&mut host, &mut ch);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    // A rescind while OPENCHANNEL waits cancels the open.
    host.set_withhold_open_result(relid, true);
    let mut rescinded = false;
    let r = Channel::<_, _>::open(
        &guest,
        relid,
        &ChannelConfig::default(),
        &mut BoundedWait::new(50, || {
            if !rescinded && host.channel_state(relid) == Some(ChannelState::Opening) {
                host.rescind(relid);
                rescinded = true;
            }
            host.step();
        }),
    );
    assert!(rescinded);
    assert_eq!(r.err(), Some(ChannelError::Rescinded));
    host.step();
    assert_eq!(host.channel_state(relid), Some(ChannelState::Released));
    assert_clean(&host);
}

#[test]
fn unload_and_reconnect() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2019);
    let ch = open_echo_channel(&guest, &mut host, relid);
    guest.unload(&mut step(&mut host)).unwrap();
    assert!(host.unloaded());
    assert_eq!(guest.state(), ConnectionState::Disconnected);
    // The channel outlived the connection; the host released everything with
    // UNLOAD_RESPONSE, so close frees its memory without messages.
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    let v = guest.connect(&mut step(&mut host)).unwrap();
    assert_eq!(v, VmbusVersion::V5_2);
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    echo_round_trip(&mut host, &mut ch);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn corrupt_ring_fails_requests_not_the_guest() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2022);
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    ch.request(&[b"x"], 5).unwrap();
    assert!(host.corrupt_inbound_write_index(relid, 13));
    let mut rx = vec![0u8; RX];
    let (got, r) = drain(&mut ch, &mut rx);
    assert!(matches!(r, Err(ChannelError::Corrupt(_))), "{r:?}");
    assert!(matches!(
        got.as_slice(),
        [Got::Failed(5, ChannelError::Corrupt(_))]
    ));
    let _ = ch.close(&mut step(&mut host));
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    echo_round_trip(&mut host, &mut ch);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
}

#[test]
fn threaded_host_round_trip() {
    let (_hv, mut host, guest) = rig(HostRelease::Copper);
    let relid = add_echo(&mut host, NET, 1);
    let host = host.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut wait = BoundedWait::new(200_000, || {
        assert!(Instant::now() < deadline, "threaded test took too long");
        std::thread::sleep(Duration::from_micros(100));
    });
    assert_eq!(guest.connect(&mut wait).unwrap(), VmbusVersion::V6_0);
    let mut ch: GuestChannel<'_> =
        Channel::open(&guest, relid, &ChannelConfig::default(), &mut wait).unwrap();
    let mut comp = [0u8; 128];
    let mut rx = vec![0u8; RX];
    for i in 0..100u64 {
        vmbus_guest::Wait::restart(&mut wait);
        ch.transact(
            &[&i.to_le_bytes()],
            i,
            &mut comp,
            &mut rx,
            |_| {},
            &mut wait,
        )
        .unwrap();
        assert_eq!(&comp[..8], &i.to_le_bytes());
    }
    assert_eq!(ch.close(&mut wait), Released::Freed);
    let host = host.stop();
    assert_clean(&host);
}

#[test]
fn connect_times_out_without_a_host() {
    let (_hv, _host, guest) = rig(HostRelease::Ws2022);
    assert_eq!(
        guest.connect(&mut BoundedWait::new(5, || {})),
        Err(VmbusError::Timeout)
    );
}

#[test]
fn the_bus_is_shared_and_channels_move_between_threads() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<GuestChannel<'static>>();
    sync::<Guest>();
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
    let guest = vmbus_guest::Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    guest.connect(&mut step(&mut host)).unwrap();
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    echo_round_trip(&mut host, &mut ch);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn the_guest_signals_only_when_the_ring_goes_from_empty_to_non_empty() {
    // Hyper-V throttles guests that signal needlessly (§7.8): a burst of packets the host has
    // not drained yet costs one signal, not one per packet.
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2022);
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    let mut rx = vec![0u8; RX];
    for round in 1..=3u64 {
        for i in 0..10u64 {
            ch.request(&[b"burst"], i).unwrap();
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
            let (got, r) = drain(&mut ch, &mut rx);
            r.unwrap();
            completions += got.len();
            if completions == 10 {
                break;
            }
        }
        assert_eq!(completions, 10);
    }
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn channel_interrupts_on_another_vp_are_found_without_the_bus() {
    // The bus lives on VP 0; the channel's interrupts are targeted at VP 1 (≥ 2.4).
    use test_harness::hv::{HostPreset, MockConfig, MockHypervisor};
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_vp_count(2));
    let vp0 = test_harness::guest::boot_vp(&hv, 0).unwrap();
    let vp1 = test_harness::guest::boot_vp(&hv, 1).unwrap();
    let mut host = test_harness::vmbus::MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let relid = add_echo(&mut host, NET, 1);
    let transport = vmbus_guest::SynicTransport::for_current_vp(vp0.hypercalls, vp0.synic);
    let guest = vmbus_guest::Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    guest.connect(&mut step(&mut host)).unwrap();
    let config = ChannelConfig {
        target_vp: Some(1),
        ..ChannelConfig::default()
    };
    let mut ch: GuestChannel<'_> =
        Channel::open(&guest, relid, &config, &mut step(&mut host)).unwrap();
    ch.request(&[b"ping"], 1).unwrap();
    for _ in 0..3 {
        host.step();
    }
    assert!(
        !guest.handle_interrupt().channels.contains(relid),
        "VP 0's SynIC has no flag for a channel targeted at VP 1"
    );
    let limit = guest.with_offers(|t| t.relid_limit());
    let work = vmbus_guest::take_channel_events(&vp1.synic, limit);
    assert!(work.contains(relid), "VP 1's SynIC has the channel's flag");
    assert!(
        !vmbus_guest::take_channel_events(&vp1.synic, limit).contains(relid),
        "taken once"
    );
    let mut rx = vec![0u8; RX];
    let (got, r) = drain(&mut ch, &mut rx);
    r.unwrap();
    assert!(matches!(got.as_slice(), [Got::Completion(1, _)]));
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn a_lost_unload_response_is_abandoned_and_the_guest_reconnects() {
    let (_hv, mut host, guest, _relid) = connected_echo(HostRelease::Ws2022);
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
    assert_eq!(guest.with_offers(|t| t.iter().count()), 1);
    assert_clean(&host);
}

// ---- Teardown never frees what the host still holds (the three routes) ----

#[test]
fn close_after_abandon_leaks_the_ring_and_frees_nothing_the_host_maps() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2022);
    let ch = open_echo_channel(&guest, &mut host, relid);
    let buf = HostBuffer::with_gpadl(&guest, relid, 4, &mut step(&mut host)).unwrap();
    let epoch = guest.epoch();
    guest.abandon();
    assert_ne!(guest.epoch(), epoch);
    // The host still maps the ring and the buffer: both must leak, without messages.
    assert_eq!(ch.close(&mut step(&mut host)), Released::Leaked);
    assert_eq!(buf.release(&mut step(&mut host)), Released::Leaked);
    assert!(
        host.freed_while_mapped().is_empty(),
        "{:?}",
        host.freed_while_mapped()
    );
    assert!(
        guest.stats().pages_leaked > 0,
        "the monitor pages were left to the host"
    );
}

#[test]
fn a_close_whose_torndown_never_arrives_leaks() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2022);
    let ch = open_echo_channel(&guest, &mut host, relid);
    let buf = HostBuffer::with_gpadl(&guest, relid, 4, &mut step(&mut host)).unwrap();
    // The host never runs while the guest waits: no GPADL_TORNDOWN.
    assert_eq!(
        buf.release(&mut BoundedWait::new(5, || {})),
        Released::Leaked
    );
    assert_eq!(ch.close(&mut BoundedWait::new(5, || {})), Released::Leaked);
    host.step();
    host.step();
    assert!(
        host.freed_while_mapped().is_empty(),
        "{:?}",
        host.freed_while_mapped()
    );
}

#[test]
fn a_host_buffer_named_by_a_request_in_flight_is_not_freed() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2022);
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    let data = HostBuffer::new(&guest, 1).unwrap();
    ch.request_dma(&[data.dma(0, 512).unwrap()], &[b"dma"], 1)
        .unwrap();
    host.step();
    // The host took the request; the channel dies before it answers.
    host.rescind(relid);
    guest.handle_interrupt();
    let mut rx = vec![0u8; RX];
    let (_, r) = drain(&mut ch, &mut rx);
    assert_eq!(r, Err(ChannelError::Rescinded));
    // The completion may never come: the buffer stays the host's until the close is
    // confirmed; after it, it is free.
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_eq!(data.release(&mut step(&mut host)), Released::Freed);
    assert!(host.freed_while_mapped().is_empty());
}

#[test]
fn a_buffer_released_while_its_channel_has_dma_out_leaks() {
    let (_hv, mut host, guest, relid) = connected_echo(HostRelease::Ws2022);
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    let data = HostBuffer::new(&guest, 1).unwrap();
    ch.request_dma(&[data.dma(0, 512).unwrap()], &[b"dma"], 1)
        .unwrap();
    assert_eq!(data.release(&mut step(&mut host)), Released::Leaked);
    let mut rx = vec![0u8; RX];
    for _ in 0..5 {
        host.step();
        let _ = drain(&mut ch, &mut rx);
    }
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert!(host.freed_while_mapped().is_empty());
}

#[test]
fn sizes_fit_a_kernel_stack() {
    let sizes = [
        ("Vmbus", std::mem::size_of::<Guest>()),
        (
            "Channel (64 requests, u64 context)",
            std::mem::size_of::<GuestChannel<'static>>(),
        ),
        (
            "HostBuffer",
            std::mem::size_of::<
                HostBuffer<
                    'static,
                    vmbus_guest::SynicTransport<test_harness::hv::MockVp>,
                    test_harness::hv::MockHal,
                >,
            >(),
        ),
        ("OfferTable", std::mem::size_of::<vmbus_guest::OfferTable>()),
    ];
    for (name, size) in sizes {
        println!("{name}: {size} bytes");
        assert!(size <= 16 * 1024, "{name} is {size} bytes");
    }
}

/// A device that, told a GPADL handle in an in-band packet, writes records into that buffer
/// and announces them in one transfer-page packet (type 7) with completion requested — the
/// shape of netvsc's receive path — then records the guest's completion.
struct TransferPageDevice {
    records: Vec<Vec<u8>>,
    /// Extra (hostile) ranges appended after the real ones.
    hostile: Vec<(u32, u32)>,
    completions: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

const XFER_TID: u64 = 0x7777;

impl test_harness::vmbus::DeviceModel for TransferPageDevice {
    fn on_packet(
        &mut self,
        ch: &mut test_harness::vmbus::HostChannel,
        packet: &test_harness::vmbus::HostPacket,
    ) {
        if packet.packet_type == 11 {
            self.completions.lock().unwrap().push(packet.transaction_id);
            return;
        }
        let handle = u32::from_le_bytes(packet.payload[..4].try_into().unwrap());
        let mut ranges = Vec::new();
        let mut offset = 0u32;
        for r in &self.records {
            ch.write_gpadl(handle, u64::from(offset), r).unwrap();
            ranges.push((r.len() as u32, offset));
            offset += 2048;
        }
        ranges.extend(&self.hostile);
        let mut header = Vec::new();
        header.extend_from_slice(&0xCAFEu16.to_le_bytes()); // transfer page set id
        header.push(0);
        header.push(0);
        header.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
        for (count, off) in ranges {
            header.extend_from_slice(&count.to_le_bytes());
            header.extend_from_slice(&off.to_le_bytes());
        }
        ch.send_packet(7, 1, XFER_TID, &header, &[]).unwrap();
    }
}

#[test]
fn transfer_page_packets_through_a_channel_with_completions_between_receives() {
    let (_hv, mut host, guest) = rig(HostRelease::Ws2022);
    let completions = std::sync::Arc::default();
    let records: Vec<Vec<u8>> = (0..3u8)
        .map(|i| vec![0xA0 + i; 100 + usize::from(i)])
        .collect();
    let relid = host.add_device(
        DeviceOffer::new(NET, instance(1)),
        Box::new(TransferPageDevice {
            records: records.clone(),
            // Past the end, and overflowing offset + count: rejected by the guest's bounds
            // checks, never read.
            hostile: vec![(16, 4 * 4096 - 8), (u32::MAX, 8)],
            completions: std::sync::Arc::clone(&completions),
        }),
    );
    guest.connect(&mut step(&mut host)).unwrap();
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    let recv_buffer = HostBuffer::with_gpadl(&guest, relid, 4, &mut step(&mut host)).unwrap();
    let handle = recv_buffer.gpadl_handle().unwrap();
    ch.send(&[&handle.to_le_bytes()]).unwrap();
    let mut rx = vec![0u8; RX];
    let mut got = Vec::new();
    let mut rejected = 0;
    for _ in 0..20 {
        host.step();
        while let Some(r) = ch.recv(&mut rx).unwrap() {
            let vmbus_guest::Received::Packet(p) = r else {
                panic!("unexpected {r:?}")
            };
            let vmbus_guest::ring::PacketKind::TransferPages(t) = p.kind else {
                panic!("not a transfer-page packet: {p:?}")
            };
            assert_eq!(t.transfer_page_set_id, 0xCAFE);
            let tid = p.transaction_id();
            for range in t.ranges() {
                let mut record = vec![0u8; range.byte_count.min(4096) as usize];
                match recv_buffer.read_at(range.byte_offset as usize, &mut record) {
                    Ok(()) if range.byte_count <= 4096 => got.push(record),
                    _ => rejected += 1,
                }
            }
            // The completion goes out before the next receive, within the same batch.
            ch.send_completion(tid, &[]).unwrap();
        }
        if !ch.end_batch().unwrap() && !got.is_empty() {
            break;
        }
    }
    assert_eq!(got, records);
    assert_eq!(rejected, 2);
    host.step();
    assert_eq!(*completions.lock().unwrap(), [XFER_TID]);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_eq!(recv_buffer.release(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}
