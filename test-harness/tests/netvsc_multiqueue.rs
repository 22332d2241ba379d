//! netvsc multi-queue (vRSS, devices §2.15) against the mock network VSP as the oracle:
//! negotiation of 1, 2 and 4 queues and the single-queue fallbacks, received flows spread
//! over the channels the guest's indirection table names (the host hashes on its own) and
//! sent flows on the channels the send table names (the host checks every frame), the host's
//! send table replacing the default and hostile ones refused, per-queue handles driven from
//! separate threads, and a rescinded sub-channel failing its sends in flight.

mod common;

use common::net::*;
use netvsc::nic::{MultiQueueConfig, QueueSetup, SingleQueue, SubQueue};
use netvsc::protocol::{NvspVersion, rss_hash};
use netvsc::rss::{self, MICROSOFT_RSS_KEY};
use netvsc::{NetError, Nic, NicConfig};
use test_harness::hv::{MockHal, MockVp};
use test_harness::network::{NetVspConfig, NetworkVsp, VirtualSwitch};
use test_harness::vmbus::MockVmbusHost;
use vmbus_guest::{BoundedWait, ChannelError, Released, SynicTransport};

type Sub<'b> = SubQueue<'b, SynicTransport<MockVp>, MockHal>;

const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const LOCAL4: [u8; 4] = [10, 0, 0, 2];
const REMOTE4: [u8; 4] = [10, 0, 9, 1];

fn config(queues: u16) -> NicConfig {
    NicConfig {
        multi_queue: MultiQueueConfig {
            max_queues: queues,
            ..MultiQueueConfig::default()
        },
        ..small()
    }
}

fn host(max_subchannels: u32) -> NetVspConfig {
    NetVspConfig {
        max_subchannels,
        ..NetVspConfig::default()
    }
}

fn open_mq<'b>(
    guest: &'b Guest,
    relid: u32,
    host: &mut MockVmbusHost,
    queues: u16,
    subs: &mut [Option<Sub<'b>>],
) -> (GuestNic<'b>, QueueSetup) {
    Nic::open_multi(guest, relid, &config(queues), subs, &mut waiter(host)).unwrap()
}

fn ip_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, ip: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip);
    f.extend_from_slice(l4);
    f.resize(f.len().max(64), 0x5A);
    if ethertype != 0x0806 {
        common::frames::fill_checksums(&mut f);
    }
    f
}

/// A TCP or UDP frame over IPv4 from `src` to `dst`.
fn v4(
    mac: ([u8; 6], [u8; 6]),
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, proto, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut l4 = ports.0.to_be_bytes().to_vec();
    l4.extend_from_slice(&ports.1.to_be_bytes());
    l4.resize(20, 0);
    ip_frame(mac.0, mac.1, 0x0800, &ip, &l4)
}

/// A TCP frame over IPv6.
fn v6(mac: ([u8; 6], [u8; 6]), src: u16, dst: u16, ports: (u16, u16)) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
    for last in [src, dst] {
        let mut a = [0u8; 16];
        a[..2].copy_from_slice(&[0xfd, 0]);
        a[14..].copy_from_slice(&last.to_be_bytes());
        ip.extend_from_slice(&a);
    }
    let mut l4 = ports.0.to_be_bytes().to_vec();
    l4.extend_from_slice(&ports.1.to_be_bytes());
    l4.resize(20, 0);
    ip_frame(mac.0, mac.1, 0x86DD, &ip, &l4)
}

/// Flows of every kind between this host's address and the peer: TCP and UDP over IPv4,
/// TCP over IPv6, and ARP (no hash). `inbound`: peer → guest, otherwise guest → peer.
fn flows(guest_mac: [u8; 6], inbound: bool, count: u16) -> Vec<Vec<u8>> {
    let mac = if inbound {
        (guest_mac, PEER)
    } else {
        (PEER, guest_mac)
    };
    let (a, b) = if inbound {
        (REMOTE4, LOCAL4)
    } else {
        (LOCAL4, REMOTE4)
    };
    let mut out = Vec::new();
    for i in 0..count {
        let ports = if inbound {
            (80, 40000 + i)
        } else {
            (40000 + i, 80)
        };
        out.push(v4(mac, 6, a, b, ports));
        if i % 4 == 0 {
            out.push(v4(mac, 17, a, b, (5000 + i, 53)));
            out.push(v6(mac, 1 + i, 2, (ports.0, ports.1)));
        }
    }
    out.push(ip_frame(mac.0, mac.1, 0x0806, &[0; 28], &[]));
    out
}

/// The channel the host must deliver `frame` on, computed on the guest's side: Toeplitz with
/// the key and hash types the guest set, the 128-entry table `i mod queues`; a frame without
/// a hash goes to the primary.
fn expected_rx(frame: &[u8], queues: usize) -> usize {
    rss::flow_hash(&MICROSOFT_RSS_KEY, rss_hash::LINUX_DEFAULT, frame)
        .map_or(0, |h| rss::indirection_slot(h, 128) % queues)
}

/// Steps the host and polls every queue until `want` frames arrived (at most 60 rounds).
fn receive_all<'b>(
    nic: &mut GuestNic<'b>,
    subs: &mut [Option<Sub<'b>>],
    host: &mut MockVmbusHost,
    want: usize,
) -> Vec<(usize, Vec<u8>)> {
    let mut got = Vec::new();
    for _ in 0..60 {
        host.step();
        while nic
            .poll_queues(subs, 64, |q, f| got.push((q, f.to_vec())))
            .unwrap()
        {}
        if got.len() >= want {
            break;
        }
    }
    got
}

/// Sends each frame on the queue the send table names (retrying after a poll on
/// back-pressure); returns the frames per queue.
fn send_steered_all<'b>(
    nic: &mut GuestNic<'b>,
    subs: &mut [Option<Sub<'b>>],
    host: &mut MockVmbusHost,
    frames: &[Vec<u8>],
) -> [u64; 4] {
    let mut sent = [0u64; 4];
    for f in frames {
        let mut tries = 0;
        let q = loop {
            match nic.send_steered(subs, f) {
                Ok(q) => break q,
                Err(NetError::Busy(_)) if tries < 20 => {
                    tries += 1;
                    settle(nic, subs, host);
                }
                Err(e) => panic!("steered send: {e}"),
            }
        };
        assert_eq!(q, nic.shared().queue_for_frame(f));
        sent[q] += 1;
    }
    sent
}

fn settle<'b, const M: usize>(
    nic: &mut Nic<'b, SynicTransport<MockVp>, MockHal, 64, M>,
    subs: &mut [Option<SubQueue<'b, SynicTransport<MockVp>, MockHal, 64, M>>],
    host: &mut MockVmbusHost,
) {
    for _ in 0..6 {
        host.step();
        while nic.poll_queues(subs, 64, |_, _| {}).unwrap() {}
    }
}

fn assert_all_clean(host: &MockVmbusHost, vsp: &NetworkVsp) {
    assert_clean(host, vsp);
    assert!(
        host.freed_while_mapped().is_empty(),
        "{:?}",
        host.freed_while_mapped()
    );
}

#[test]
fn one_two_and_four_queues_are_negotiated() {
    for (max_queues, queues) in [(1u16, 1usize), (2, 2), (4, 4), (8, 4)] {
        let mut rig = rig(host(3));
        let vsp = rig.vsp.clone();
        let mut subs: [Option<Sub<'_>>; 7] = Default::default();
        let (nic, setup) = open_mq(&rig.guest, rig.relid, &mut rig.host, max_queues, &mut subs);
        assert_eq!(setup.queues, queues, "max_queues {max_queues}");
        assert_eq!(nic.queue_count(), queues);
        assert_eq!(setup.rss, Ok(()));
        if queues == 1 {
            assert_eq!(setup.single, Some(SingleQueue::NotRequested));
            assert_eq!(vsp.rss_parameters(), None, "no RSS for one queue");
        } else {
            assert_eq!(setup.single, None);
            assert_eq!(setup.granted as usize, queues - 1);
            assert_eq!(vsp.open_subchannels() as usize, queues - 1);
            let p = vsp.rss_parameters().expect("RSS set");
            assert_eq!(p.hash_information, rss_hash::LINUX_DEFAULT);
            assert_eq!(p.key, MICROSOFT_RSS_KEY);
            assert_eq!(
                p.table,
                (0..128).map(|i| i % queues as u32).collect::<Vec<_>>()
            );
            for (i, s) in subs.iter().enumerate() {
                assert_eq!(
                    s.as_ref().map(|s| s.index()),
                    (i < queues - 1).then_some(i + 1)
                );
            }
        }
        let table: Vec<u8> = (0..16).map(|i| (i % queues) as u8).collect();
        assert_eq!(nic.shared().send_table().entries().to_vec(), table);
        assert_eq!(
            nic.close_all(&mut subs, &mut waiter(&mut rig.host)),
            Released::Freed
        );
        assert!(subs.iter().all(Option::is_none));
        assert_eq!(vsp.open_subchannels(), 0);
        assert_all_clean(&rig.host, &vsp);
    }
}

#[test]
fn hosts_that_cannot_give_the_queues_leave_one_and_say_why() {
    // All-or-nothing (OpenVMM): its capabilities promise 4 queues, it can give 1 sub-channel.
    let mut rig4 = rig(NetVspConfig {
        rss_receive_queues: 4,
        ..host(1)
    });
    let vsp = rig4.vsp.clone();
    let mut subs: [Option<Sub<'_>>; 3] = Default::default();
    let (mut nic, setup) = open_mq(&rig4.guest, rig4.relid, &mut rig4.host, 4, &mut subs);
    assert_eq!(setup.queues, 1);
    assert_eq!(
        setup.single,
        Some(SingleQueue::Refused {
            asked: 3,
            status: 2
        })
    );
    assert_eq!(vsp.subchannels(), 0);
    // Still a working single-queue NIC.
    nic.send_frame(&flows(nic.mac(), false, 1)[0]).unwrap();
    settle(&mut nic, &mut subs, &mut rig4.host);
    assert_eq!(vsp.frames_from_guest().len(), 1);
    assert_eq!(
        nic.close_all(&mut subs, &mut waiter(&mut rig4.host)),
        Released::Freed
    );
    assert_all_clean(&rig4.host, &vsp);

    // The same host granting what it can: 2 queues.
    let mut rig2 = rig(NetVspConfig {
        rss_receive_queues: 4,
        all_or_nothing: false,
        ..host(1)
    });
    let vsp = rig2.vsp.clone();
    let mut subs: [Option<Sub<'_>>; 3] = Default::default();
    let (nic, setup) = open_mq(&rig2.guest, rig2.relid, &mut rig2.host, 4, &mut subs);
    assert_eq!((setup.queues, setup.granted, setup.single), (2, 1, None));
    assert_eq!(vsp.rss_parameters().unwrap().table[..4], [0, 1, 0, 1]);
    assert_eq!(
        nic.close_all(&mut subs, &mut waiter(&mut rig2.host)),
        Released::Freed
    );
    assert_all_clean(&rig2.host, &vsp);

    // NVSP 4: no sub-channels; a host without RSS; no storage for sub-queues.
    for (cfg, storage, reason) in [
        (
            NetVspConfig {
                max_version: NvspVersion::V4.0,
                ..host(3)
            },
            3,
            SingleQueue::NvspTooOld,
        ),
        (
            NetVspConfig {
                rss: false,
                ..host(3)
            },
            3,
            SingleQueue::NoRssCapabilities(NetError::HostStatus {
                what: "RSS capabilities",
                status: 0xC000_00BB,
            }),
        ),
        (host(3), 0, SingleQueue::NoStorage),
    ] {
        let mut r = rig(cfg);
        let vsp = r.vsp.clone();
        let mut subs: Vec<Option<Sub<'_>>> = (0..storage).map(|_| None).collect();
        let (nic, setup) = open_mq(&r.guest, r.relid, &mut r.host, 4, &mut subs);
        assert_eq!(setup.single, Some(reason));
        assert_eq!(vsp.subchannels(), 0);
        assert_eq!(
            nic.close_all(&mut subs, &mut waiter(&mut r.host)),
            Released::Freed
        );
        assert_all_clean(&r.host, &vsp);
    }
}

#[test]
fn received_flows_arrive_on_the_queue_the_indirection_table_names() {
    let switch = VirtualSwitch::new();
    let vsp = NetworkVsp::new(host(3)).on_switch(&switch);
    let mut rig = rig_with(vsp.clone(), 16 << 20);
    let mut subs: [Option<Sub<'_>>; 3] = Default::default();
    let (mut nic, setup) = open_mq(&rig.guest, rig.relid, &mut rig.host, 4, &mut subs);
    assert_eq!(setup.queues, 4);
    let frames = flows(nic.mac(), true, 96);
    for f in &frames {
        switch.inject(0, f);
    }
    let got = receive_all(&mut nic, &mut subs, &mut rig.host, frames.len());
    assert_eq!(got.len(), frames.len());
    let mut per_queue = [0usize; 4];
    for (q, f) in &got {
        assert_eq!(*q, expected_rx(f, 4), "guest's view of the table");
        assert_eq!(*q, usize::from(vsp.receive_channel_for(f)), "host's view");
        per_queue[*q] += 1;
    }
    assert!(
        per_queue.iter().all(|n| *n > 10),
        "flows spread: {per_queue:?}"
    );
    settle(&mut nic, &mut subs, &mut rig.host);
    let host_view = vsp.frames_to_guest_per_channel();
    for (q, n) in per_queue.iter().enumerate() {
        assert_eq!(host_view.get(&(q as u16)).copied().unwrap_or(0), *n as u64);
        let s = nic.queue(&mut subs, q).unwrap().stats();
        assert_eq!(s.rx_frames, *n as u64, "queue {q}");
    }
    // Every transfer-page packet was completed on its own channel (the host checks).
    assert_eq!(vsp.receives_outstanding(), 0);
    assert_eq!(
        nic.close_all(&mut subs, &mut waiter(&mut rig.host)),
        Released::Freed
    );
    assert_all_clean(&rig.host, &vsp);
}

#[test]
fn sent_flows_follow_the_send_table_the_default_and_the_hosts() {
    let mut rig = rig(host(3));
    let vsp = rig.vsp.clone();
    let mut subs: [Option<Sub<'_>>; 3] = Default::default();
    let (mut nic, _) = open_mq(&rig.guest, rig.relid, &mut rig.host, 4, &mut subs);
    settle(&mut nic, &mut subs, &mut rig.host);
    // OpenVMM's table (i mod 4) arrived and was applied.
    assert_eq!(nic.shared().send_table().host_updates(), (1, 0));
    let frames = flows(nic.mac(), false, 64);
    let sent = send_steered_all(&mut nic, &mut subs, &mut rig.host, &frames);
    settle(&mut nic, &mut subs, &mut rig.host);
    assert!(sent.iter().all(|n| *n > 5), "{sent:?}");
    let got = vsp.frames_from_guest_per_channel();
    assert_eq!(
        (0..4u16)
            .map(|q| got.get(&q).copied().unwrap_or(0))
            .collect::<Vec<_>>(),
        sent.to_vec()
    );
    assert_eq!(vsp.steering_mismatches(), 0);

    // The host moves slots: everything to 3 but the even slots to 1.
    let table: [u32; 16] = std::array::from_fn(|i| if i % 2 == 0 { 1 } else { 3 });
    vsp.send_indirection_table(table);
    settle(&mut nic, &mut subs, &mut rig.host);
    assert_eq!(nic.shared().send_table().host_updates(), (2, 0));
    let sent = send_steered_all(&mut nic, &mut subs, &mut rig.host, &frames);
    assert_eq!(sent[0] + sent[2], 0, "{sent:?}");
    // Explicit per-queue sends of frames the table puts there.
    let on3: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| nic.shared().queue_for_frame(f) == 3)
        .take(5)
        .collect();
    for f in on3 {
        nic.queue(&mut subs, 3).unwrap().send_frame(f).unwrap();
        settle(&mut nic, &mut subs, &mut rig.host);
    }
    settle(&mut nic, &mut subs, &mut rig.host);
    let got = vsp.frames_from_guest_per_channel();
    assert_eq!(got.values().sum::<u64>(), 2 * frames.len() as u64 + 5);
    assert_eq!(vsp.steering_mismatches(), 0);
    let completed: u64 = (0..4)
        .map(|q| nic.queue(&mut subs, q).unwrap().stats().tx_completed)
        .sum();
    assert_eq!(completed, 2 * frames.len() as u64 + 5);
    assert_eq!(
        nic.close_all(&mut subs, &mut waiter(&mut rig.host)),
        Released::Freed
    );
    assert_all_clean(&rig.host, &vsp);
}

/// SEND_INDIRECTION_TABLE bytes: header (type 134, `count`, `offset`), padded to `len`, the
/// entries at `at`.
fn table_message(count: u32, offset: u32, entries: &[u32], at: usize, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len.max(12)];
    for (i, w) in [134, count, offset].iter().enumerate() {
        m[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    for (i, e) in entries.iter().enumerate() {
        if let Some(b) = m.get_mut(at + i * 4..at + i * 4 + 4) {
            b.copy_from_slice(&e.to_le_bytes());
        }
    }
    m.truncate(len);
    m
}

#[test]
fn hostile_send_tables_are_refused_and_the_table_in_use_stays() {
    let mut rig = rig(host(3));
    let vsp = rig.vsp.clone();
    let mut subs: [Option<Sub<'_>>; 3] = Default::default();
    let (mut nic, _) = open_mq(&rig.guest, rig.relid, &mut rig.host, 4, &mut subs);
    settle(&mut nic, &mut subs, &mut rig.host);
    let good = nic.shared().send_table().entries();
    let unexpected = nic.stats().unexpected;
    let rotated: Vec<u32> = (0..16).map(|i| (i + 1) % 4).collect();
    let malformed = [
        table_message(15, 12, &rotated, 12, 80),       // wrong count
        table_message(16, 200, &rotated, 12, 80),      // offset beyond the message
        table_message(16, u32::MAX, &rotated, 12, 80), // offset overflowing
        table_message(16, 4, &rotated, 12, 80),        // offset inside the header
        table_message(16, 12, &rotated, 12, 8),        // truncated header
        table_message(16, 12, &rotated, 12, 60),       // table cut off
    ];
    for m in &malformed {
        vsp.inject_nvsp(m);
        settle(&mut nic, &mut subs, &mut rig.host);
        assert_eq!(nic.shared().send_table().entries(), good, "{m:?}");
    }
    assert_eq!(nic.stats().unexpected, unexpected + malformed.len() as u64);
    // Well-formed, but naming queues 4 and 7 of a 4-queue NIC: refused whole.
    let mut beyond = rotated.clone();
    beyond[3] = 4;
    beyond[9] = 7;
    vsp.inject_nvsp(&table_message(16, 12, &beyond, 12, 80));
    settle(&mut nic, &mut subs, &mut rig.host);
    assert_eq!(nic.shared().send_table().entries(), good);
    assert_eq!(nic.shared().send_table().host_updates(), (1, 1));
    // The sends still follow the table the host gave.
    let more = flows(nic.mac(), false, 16);
    send_steered_all(&mut nic, &mut subs, &mut rig.host, &more);
    settle(&mut nic, &mut subs, &mut rig.host);
    assert_eq!(vsp.steering_mismatches(), 0);
    // A good one still applies.
    vsp.send_indirection_table(std::array::from_fn(|i| rotated[i]));
    settle(&mut nic, &mut subs, &mut rig.host);
    assert_eq!(
        nic.shared().send_table().entries().to_vec(),
        rotated.iter().map(|q| *q as u8).collect::<Vec<_>>()
    );
    assert_eq!(
        nic.close_all(&mut subs, &mut waiter(&mut rig.host)),
        Released::Freed
    );
    assert_all_clean(&rig.host, &vsp);
}

#[test]
fn each_queue_is_driven_from_its_own_thread() {
    let switch = VirtualSwitch::new();
    let vsp = NetworkVsp::new(host(3)).on_switch(&switch);
    let mut rig = rig_with(vsp.clone(), 16 << 20);
    let mut subs: [Option<Sub<'_>>; 3] = Default::default();
    let mut nic = {
        let (nic, setup) = open_mq(&rig.guest, rig.relid, &mut rig.host, 4, &mut subs);
        assert_eq!(setup.queues, 4);
        nic
    };
    let mac = nic.mac();
    // Each thread sends the flows the send table puts on its queue and receives those the
    // indirection table puts there.
    let out = flows(mac, false, 64);
    let inbound = flows(mac, true, 64);
    for f in &inbound {
        switch.inject(0, f);
    }
    let threaded = rig.host.spawn();
    let results: Vec<(usize, u64, u64, Vec<Vec<u8>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = nic
            .split(&mut subs)
            .map(|mut q| {
                let mine: Vec<&Vec<u8>> = out
                    .iter()
                    .filter(|f| q.queue_for_frame(f) == q.index())
                    .collect();
                let want_rx = inbound
                    .iter()
                    .filter(|f| expected_rx(f, 4) == q.index())
                    .count();
                s.spawn(move || {
                    let mut next = 0;
                    let mut got = Vec::new();
                    // Bounded by turns, not time; a turn without progress sleeps briefly so
                    // the host thread runs on a loaded machine.
                    for _ in 0..100_000 {
                        let before = (next, got.len(), q.stats().tx_completed);
                        while next < mine.len() {
                            match q.send_frame(mine[next]) {
                                Ok(()) => next += 1,
                                Err(NetError::Busy(_)) => break,
                                Err(e) => panic!("queue {}: {e}", q.index()),
                            }
                        }
                        q.poll(64, |f| got.push(f.to_vec())).unwrap();
                        let s = q.stats();
                        if next == mine.len()
                            && s.tx_completed == mine.len() as u64
                            && got.len() == want_rx
                        {
                            break;
                        }
                        if before == (next, got.len(), s.tx_completed) {
                            std::thread::sleep(std::time::Duration::from_micros(20));
                        }
                    }
                    let s = q.stats();
                    (q.index(), s.tx_completed, mine.len() as u64, got)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut host = threaded.stop();
    for (q, completed, sent, got) in &results {
        assert_eq!(completed, sent, "queue {q} sends");
        assert!(*sent > 0, "queue {q} had flows to send");
        assert!(!got.is_empty(), "queue {q} received");
        assert!(
            got.iter().all(|f| expected_rx(f, 4) == *q),
            "queue {q} got another's frame"
        );
    }
    let received: usize = results.iter().map(|r| r.3.len()).sum();
    assert_eq!(received, inbound.len());
    assert_eq!(vsp.steering_mismatches(), 0);
    assert_eq!(vsp.frames_from_guest().len(), out.len());
    assert_eq!(
        nic.close_all(&mut subs, &mut waiter(&mut host)),
        Released::Freed
    );
    assert_all_clean(&host, &vsp);
}

#[test]
fn a_rescinded_sub_channel_fails_its_sends_in_flight() {
    let mut rig = rig(host(3));
    let vsp = rig.vsp.clone();
    let mut subs: [Option<Sub<'_>>; 3] = Default::default();
    let mut nic = {
        let (mut nic, setup) = open_mq(&rig.guest, rig.relid, &mut rig.host, 2, &mut subs);
        assert_eq!(setup.queues, 2);
        settle(&mut nic, &mut subs, &mut rig.host);
        nic
    };
    let frames: Vec<Vec<u8>> = flows(nic.mac(), false, 64)
        .into_iter()
        .filter(|f| nic.shared().queue_for_frame(f) == 1)
        .take(12)
        .collect();
    vsp.withhold_completions(true);
    let sub_relid = {
        let mut q1 = nic.queue(&mut subs, 1).unwrap();
        // 8 packed in one section, then 4 more in a second: two sends in flight.
        assert_eq!(
            q1.send_batch(&frames.iter().map(Vec::as_slice).collect::<Vec<_>>())
                .unwrap(),
            12
        );
        assert_eq!(q1.sends_in_flight(), 2);
        q1.relid()
    };
    rig.host.step();
    assert_eq!(vsp.withheld(), 2);
    rig.host.rescind(sub_relid);
    rig.guest.poll();
    {
        let mut q1 = nic.queue(&mut subs, 1).unwrap();
        assert_eq!(
            q1.poll(64, |_| {}),
            Err(NetError::Channel(ChannelError::Rescinded))
        );
        let s = q1.stats();
        assert_eq!((s.tx_frames, s.tx_completed, s.tx_failed), (12, 0, 12));
        assert_eq!(q1.sends_in_flight(), 0);
        assert_eq!(
            q1.send_frame(&frames[0]),
            Err(NetError::Channel(ChannelError::Rescinded))
        );
    }
    // The primary keeps working.
    vsp.withhold_completions(false);
    let q0 = flows(nic.mac(), false, 64)
        .into_iter()
        .find(|f| nic.shared().queue_for_frame(f) == 0)
        .unwrap();
    // One send per section of the primary's half of the send buffer.
    let mut sent = 0;
    while nic.send_frame(&q0).is_ok() {
        sent += 1;
    }
    assert!(sent >= 4, "{sent}");
    rig.host.step();
    // The dead queue's error does not hide that the primary's budget ran out: the
    // completions wait, two are taken per poll, and no interrupt comes for the rest.
    assert_eq!(
        nic.poll_queues(&mut subs, 2, |_, _| {}),
        Err(NetError::Channel(ChannelError::Rescinded))
    );
    assert!(nic.queues_pending(&subs));
    let mut polls = 0;
    while nic.queues_pending(&subs) {
        assert!(nic.poll_queues(&mut subs, 2, |_, _| {}).is_err());
        polls += 1;
        assert!(polls < sent, "queues_pending never cleared");
    }
    assert_eq!(nic.stats().tx_completed, sent as u64);
    let released = nic.close_all(&mut subs, &mut waiter(&mut rig.host));
    assert_eq!(released, Released::Freed);
    assert_all_clean(&rig.host, &vsp);
}

#[test]
fn queue_handles_are_send_and_small() {
    fn send<T: Send>() {}
    send::<netvsc::nic::Queue<'static, 'static, SynicTransport<MockVp>, MockHal, 64, 4096>>();
    assert!(
        size_of::<Sub<'static>>() <= 16 * 1024,
        "{}",
        size_of::<Sub<'static>>()
    );
    let _ = BoundedWait::new(1, || {});
}

/// A jumbo-MTU NIC sends frames larger than a section as page buffers from eight slots
/// shared out among the queues: it asks for no more than eight queues, so every queue has a
/// slot of its own and can send a full-size frame (a ninth queue would have none and refuse
/// every large frame for good).
#[test]
fn a_jumbo_nic_opens_no_more_queues_than_it_has_large_frame_slots() {
    const JUMBO_M: usize = netvsc::nic::receive_message_for(9000);
    type JumboSub<'b> = SubQueue<'b, SynicTransport<MockVp>, MockHal, 64, JUMBO_M>;
    let mut rig = rig(host(15));
    let vsp = rig.vsp.clone();
    let config = NicConfig {
        mtu: 9000,
        recv_buffer_bytes: 1 << 20,
        send_buffer_bytes: 128 << 10,
        ..config(16)
    };
    let mut subs: [Option<JumboSub<'_>>; 15] = Default::default();
    let (mut nic, setup) = Nic::<_, _, 64, JUMBO_M>::open_multi(
        &rig.guest,
        rig.relid,
        &config,
        &mut subs,
        &mut waiter(&mut rig.host),
    )
    .unwrap();
    assert_eq!(setup.queues, netvsc::nic::LARGE_SLOTS);
    let mac = nic.mac();
    let frame = ip_frame(PEER, mac, 0x88B5, &[], &[0x5A; 9000]);
    assert_eq!(frame.len(), 9014);
    for q in 0..setup.queues {
        let mut queue = nic.queue(&mut subs, q).expect("an open queue");
        assert_eq!(queue.send_frame(&frame), Ok(()), "queue {q}");
    }
    settle(&mut nic, &mut subs, &mut rig.host);
    assert_eq!(vsp.frames_from_guest_count(), setup.queues as u64);
    assert_eq!(
        nic.close_all(&mut subs, &mut waiter(&mut rig.host)),
        Released::Freed
    );
    assert_all_clean(&rig.host, &vsp);
}
