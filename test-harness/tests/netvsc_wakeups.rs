//! netvsc never returns "nothing to do" while work waits that no interrupt will announce,
//! and never says "more" when polling again cannot make progress: a pull-style receive or a
//! smoltcp device whose budget ran out, a host that stops reading the guest's ring, and a
//! burst refused for want of a request slot that a completion of the same poll frees.

mod common;

use common::net::*;
use netvsc::phy::NetvscDevice;
use netvsc::{Nic, NicConfig};
use smoltcp::phy::Device;
use smoltcp::time::Instant;
use test_harness::hv::{MockHal, MockVp};
use test_harness::network::NetVspConfig;
use test_harness::vmbus::MockVmbusHost;
use vmbus_guest::SynicTransport;

fn broadcast(src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0xFF; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x88B5u16.to_be_bytes()); // local experimental ethertype
    f.resize(len, 0x5A);
    f
}

/// Whether the host interrupted the guest for `relid` since the last look.
fn interrupted(host: &MockVmbusHost, relid: u32, before: &mut u64) -> bool {
    let now = host.guest_signal_count(relid);
    let hit = now > *before;
    *before = now;
    hit
}

/// Ten send completions and a budget of eight: the first pull-style receive finds no frame
/// and must say that packets still wait (the ring stays masked, so no interrupt comes for
/// them); once they are taken the ring is unmasked and the next host packet interrupts.
#[test]
fn a_receive_that_runs_out_of_budget_says_packets_still_wait() {
    let mut rig = rig(NetVspConfig::default());
    let relid = rig.relid;
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    let frame = broadcast(nic.mac(), 100);
    for _ in 0..10 {
        nic.send_frame(&frame).unwrap();
    }
    host.step();
    assert_eq!(nic.receive_with(8, |f| f.len()).unwrap(), None);
    assert!(nic.receive_pending(), "8 of 10 completions taken, 2 wait");
    assert_eq!(nic.stats().tx_completed, 8);
    let mut calls = 0;
    while nic.receive_pending() {
        assert_eq!(nic.receive_with(8, |f| f.len()).unwrap(), None);
        calls += 1;
        assert!(calls < 4, "receive_pending never cleared");
    }
    assert_eq!(nic.stats().tx_completed, 10);
    // Drained and unmasked: the host's next packet interrupts the guest.
    let mut signals = host.guest_signal_count(relid);
    vsp.set_link(false);
    host.step();
    assert!(interrupted(host, relid, &mut signals));
    assert!(!nic.poll(64, |_| {}).unwrap());
    assert!(!nic.link_up());
}

/// The smoltcp device keeps receiving while the NIC's budget runs out on packets that are
/// no frames (completions), within its own bound, and reports what is left.
#[test]
fn the_smoltcp_device_looks_past_a_budget_of_completions() {
    let mut rig = rig(NetVspConfig::default());
    // 42 send sections: 40 sends in flight at once, 40 completions for one receive.
    let config = NicConfig {
        send_buffer_bytes: 256 << 10,
        ..small()
    };
    let (mut nic, host) = open(&mut rig, &config);
    let frame = broadcast(nic.mac(), 100);
    for _ in 0..40 {
        nic.send_frame(&frame).unwrap();
    }
    host.step();
    let mut dev = NetvscDevice::new(&mut nic);
    assert!(dev.receive(Instant::ZERO).is_none());
    assert!(!dev.needs_poll(), "the device gave up with packets waiting");
    assert_eq!(nic.stats().tx_completed, 40);
}

/// The host stops reading the guest's ring while it keeps sending frames: the completions
/// the guest owes fill the ring, then its queue of deferred completions. From then on a
/// poll can do nothing until the host reads, so it must not say "more" (a caller looping on
/// it would spin for as long as the host likes); the host's space signal wakes it instead.
#[test]
fn a_host_that_stops_reading_does_not_make_poll_spin() {
    let mut rig = rig(NetVspConfig::default());
    let relid = rig.relid;
    let vsp = rig.vsp.clone();
    // A one-page outbound ring (about 120 completions) and 580 receive slots: the host can
    // have far more frames outstanding than the ring and the deferred queue hold.
    let config = NicConfig {
        recv_buffer_bytes: 1 << 20,
        channel: vmbus_guest::ChannelConfig {
            outbound_pages: 2,
            ..vmbus_guest::ChannelConfig::default()
        },
        ..small()
    };
    let (mut nic, host) = open(&mut rig, &config);
    let frame = broadcast([2, 0, 0, 0, 0, 9], 64);
    host.stall_reading(relid, true);
    vsp.generate(Some((&frame, 1)));
    let mut received = 0u64;
    for _ in 0..200 {
        host.step();
        let _ = nic.poll(64, |_| received += 1).unwrap();
    }
    assert!(
        nic.stats().rx_completions_deferred > 0,
        "the ring never filled"
    );
    assert!(received > 0);
    let stuck = received;
    for _ in 0..3 {
        assert!(
            !nic.poll(64, |_| received += 1).unwrap(),
            "poll says more while it cannot progress"
        );
    }
    assert_eq!(received, stuck);
    // The host reads again: its space signal wakes the guest, which goes on receiving.
    let mut signals = host.guest_signal_count(relid);
    host.stall_reading(relid, false);
    host.step();
    assert!(interrupted(host, relid, &mut signals), "no space signal");
    for _ in 0..20 {
        while nic.poll(64, |_| received += 1).unwrap() {}
        host.step();
    }
    assert!(received > stuck + 64, "receiving did not resume");
    vsp.generate(None);
}

/// A burst is open when a control request takes the last request slot: the next poll (here
/// the control request's own wait) finds no slot for the burst at its start, and reaps the
/// completions that free slots later in the same poll. Nothing else would retry the burst (a
/// full request table, unlike a full ring, arms no host signal), so the poll submits it
/// before it ends.
#[test]
fn a_burst_refused_for_want_of_a_request_slot_goes_out_in_the_same_poll() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    // Eight request slots, so the keepalive's reply and the completions that free them
    // arrive within one poll's budget.
    let mut nic: Nic<'_, SynicTransport<MockVp>, MockHal, 8> =
        Nic::open(&rig.guest, rig.relid, &small(), &mut waiter(&mut rig.host)).unwrap();
    let host = &mut rig.host;
    let frame = broadcast(nic.mac(), 100);
    for _ in 0..7 {
        nic.send_frame(&frame).unwrap();
    }
    nic.queue_frame(&frame).unwrap();
    // The keepalive takes slot 8; its wait polls until the reply, which the host sends
    // with the completions of the 7 sends.
    nic.keepalive(&mut waiter(host)).unwrap();
    host.step();
    assert_eq!(
        vsp.data_packets_from_guest(),
        8,
        "the queued frame is still waiting"
    );
    assert_eq!(vsp.frames_from_guest_count(), 8);
}
