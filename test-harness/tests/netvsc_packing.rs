//! netvsc transmit bursts (devices §2.9): frames packed into one send section up to the
//! host's max packets per message at its packet alignment and the section size, one
//! SEND_RNDIS_PKT and one completion per section, order kept, back-pressure reported as a
//! shorter burst, the smoltcp device packing the frames of one poll, and a poll's receive
//! completions published together.

mod common;

use common::net::*;
use test_harness::network::NetVspConfig;
use test_harness::vmbus::MockVmbusHost;
use vmbus_guest::Released;

fn frame(seq: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0xFF; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 9]);
    f.extend_from_slice(&0x88B5u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push((f.len() as u8).wrapping_mul(7).wrapping_add(seq as u8));
    }
    f
}

fn settle(nic: &mut GuestNic<'_>, host: &mut MockVmbusHost) {
    for _ in 0..4 {
        host.step();
        while nic.poll(64, |_| {}).unwrap() {}
    }
}

#[test]
fn a_burst_of_small_frames_goes_as_one_packet_per_eight_frames() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    assert_eq!(
        (
            nic.info().max_packets_per_message,
            nic.info().packet_alignment
        ),
        (8, 8)
    );
    let frames: Vec<Vec<u8>> = (0..20).map(|i| frame(i, 60 + usize::from(i))).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let signals = host.signal_count(nic.relid());
    assert_eq!(nic.send_batch(&refs).unwrap(), 20);
    assert_eq!(nic.queued_frames(), 0, "the burst was submitted");
    assert_eq!(nic.sends_in_flight(), 3, "8 + 8 + 4 frames");
    settle(&mut nic, host);
    assert_eq!(vsp.frames_from_guest(), frames, "every frame, in order");
    assert_eq!(vsp.data_packets_from_guest(), 3);
    assert!(host.signal_count(nic.relid()) - signals <= 3);
    let s = nic.stats();
    assert_eq!((s.tx_frames, s.tx_completed, s.tx_failed), (20, 20, 0));
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn full_size_frames_share_sections_as_they_fit_and_the_order_is_kept() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    assert_eq!(nic.info().section_size, 6144);
    let frames = [
        frame(0, 64),
        frame(1, 100),
        frame(2, 1514),
        frame(3, 1514),
        frame(4, 1514),
        frame(5, 1514),
        frame(6, 64),
    ];
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(nic.send_batch(&refs).unwrap(), 7);
    assert_eq!(nic.sends_in_flight(), 2);
    settle(&mut nic, host);
    assert_eq!(vsp.frames_from_guest(), frames);
    // Messages padded to 8: 112 + 144 + 3 x 1560 = 4936 bytes; a fourth 1560-byte message
    // would pass 6144, so [0..=4], [5, 6].
    assert_eq!(vsp.data_packets_from_guest(), 2);
    assert_eq!(nic.stats().tx_completed, 7);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn packing_follows_the_host_limits() {
    // One packet per message: no packing at all.
    let mut rig1 = rig(NetVspConfig {
        max_packets_per_message: 1,
        ..NetVspConfig::default()
    });
    let vsp = rig1.vsp.clone();
    let (mut nic, host) = open(&mut rig1, &small());
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(i, 70)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(nic.send_batch(&refs).unwrap(), 5);
    settle(&mut nic, host);
    assert_eq!(vsp.frames_from_guest(), frames);
    assert_eq!(vsp.data_packets_from_guest(), 5);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);

    // 64-byte alignment (factor 6) and 3 per message: the mock checks every offset.
    let mut rig2 = rig(NetVspConfig {
        max_packets_per_message: 3,
        packet_alignment_factor: 6,
        ..NetVspConfig::default()
    });
    let vsp = rig2.vsp.clone();
    let (mut nic, host) = open(&mut rig2, &small());
    assert_eq!(nic.info().packet_alignment, 64);
    let frames: Vec<Vec<u8>> = (0..7).map(|i| frame(i, 61 + usize::from(i))).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(nic.send_batch(&refs).unwrap(), 7);
    settle(&mut nic, host);
    assert_eq!(vsp.frames_from_guest(), frames);
    assert_eq!(vsp.data_packets_from_guest(), 3);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn an_alignment_factor_beyond_the_limit_is_refused() {
    let mut rig = rig(NetVspConfig {
        packet_alignment_factor: 13,
        ..NetVspConfig::default()
    });
    let r = netvsc::Nic::<_, _>::open(&rig.guest, rig.relid, &small(), &mut waiter(&mut rig.host));
    assert_eq!(
        r.err(),
        Some(netvsc::NetError::HostValue("RNDIS packet alignment factor"))
    );
}

#[test]
fn back_pressure_shortens_the_burst_and_queued_frames_wait_for_a_flush() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    vsp.withhold_completions(true);
    // 64 KiB of sections = 10; 8 frames each.
    let frames: Vec<Vec<u8>> = (0..100).map(|i| frame(i, 64)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let taken = nic.send_batch(&refs).unwrap();
    assert_eq!(taken, 80, "ten sections of eight");
    assert!(!nic.can_send());
    assert_eq!(nic.stats().tx_busy_section, 1);
    // Queued without a flush: nothing reaches the host until the flush (or a poll).
    vsp.withhold_completions(false);
    settle(&mut nic, host);
    assert_eq!(nic.stats().tx_completed, 80);
    nic.queue_frame(&frames[80]).unwrap();
    nic.queue_frame(&frames[81]).unwrap();
    assert_eq!(nic.queued_frames(), 2);
    host.step();
    assert_eq!(vsp.frames_from_guest().len(), 80);
    nic.flush().unwrap();
    settle(&mut nic, host);
    assert_eq!(vsp.frames_from_guest(), frames[..82].to_vec());
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn a_poll_publishes_its_receive_completions_together() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    let f = frame(1, 64);
    vsp.generate(Some((&f, 8)));
    host.step();
    vsp.generate(None);
    let packets = vsp.receives_outstanding();
    assert!(packets >= 4, "{packets} transfer-page packets waiting");
    let (signals, completions) = (host.signal_count(nic.relid()), vsp.receive_completions());
    // A host that drains the ring after every frame (one on another core) sees none of the
    // poll's completions before the poll ends: no wake-up per transfer-page packet.
    let mut seen_mid_poll = 0;
    let mut frames = 0;
    let more = nic
        .poll(64, |_| {
            frames += 1;
            host.step();
            seen_mid_poll += vsp.receive_completions() - completions;
        })
        .unwrap();
    assert!(!more);
    assert_eq!(frames, vsp.frames_to_guest());
    assert_eq!(seen_mid_poll, 0);
    host.step();
    assert_eq!(vsp.receive_completions() - completions, packets as u64);
    assert_eq!(vsp.receives_outstanding(), 0);
    assert!(
        host.signal_count(nic.relid()) - signals <= 1,
        "one publish, one signal"
    );
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}
