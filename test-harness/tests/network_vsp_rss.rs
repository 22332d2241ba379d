//! The mock network VSP's vRSS side on its own, driven by hand-built NVSP/RNDIS bytes over a
//! raw channel (no netvsc driver): SUBCHANNEL checked against the queues it advertised, RSS
//! parameters checked as OpenVMM checks them (devices §2.13.4, §2.15), and its own oracle
//! check that an indirection table names only open channels.

mod common;

use common::{Guest, GuestChannel, step};
use test_harness::guest::boot_vp;
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::network::{NETWORK_CLASS, NetVspConfig, NetworkVsp};
use test_harness::vmbus::{DeviceOffer, HostRelease, MockVmbusHost};
use vmbus_guest::protocol::Guid;
use vmbus_guest::ring::PacketKind;
use vmbus_guest::{
    ChannelConfig, ConnectionConfig, HostBuffer, Received, Released, SynicTransport, Vmbus,
};

type Buffer<'b> = HostBuffer<'b, SynicTransport<MockVp>, MockHal>;

fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn nvsp(w: &[u32]) -> Vec<u8> {
    let mut b = words(w);
    b.resize(40, 0);
    b
}

fn rig(config: NetVspConfig) -> (MockHypervisor, MockVmbusHost, Guest, NetworkVsp, u32) {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022));
    let vp = boot_vp(&hv, 0).unwrap();
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let vsp = NetworkVsp::new(config);
    let relid = host.add_device(
        DeviceOffer::new(
            NETWORK_CLASS,
            Guid::from_str_const("33333333-2222-3333-4444-555555555555"),
        ),
        Box::new(vsp.clone()),
    );
    let guest = Vmbus::new(
        SynicTransport::for_current_vp(vp.hypercalls, vp.synic),
        hv.hal(),
        ConnectionConfig::default(),
    );
    guest.connect(&mut step(&mut host)).unwrap();
    (hv, host, guest, vsp, relid)
}

fn call(ch: &mut GuestChannel<'_>, host: &mut MockVmbusHost, msg: &[u8]) -> Vec<u8> {
    let (mut resp, mut rx) = ([0u8; 64], vec![0u8; 8192]);
    let n = ch
        .transact(&[msg], 0, &mut resp, &mut rx, |_| {}, &mut step(host))
        .unwrap();
    resp[..n.min(64)].to_vec()
}

/// Sends the RNDIS control message `m` through send section 1 and returns the replies the
/// host put in the receive buffer (every transfer-page packet completed).
fn control(
    ch: &mut GuestChannel<'_>,
    host: &mut MockVmbusHost,
    bufs: &(Buffer<'_>, Buffer<'_>),
    m: &[u8],
) -> Vec<Vec<u8>> {
    bufs.1.write_at(6144, m).unwrap();
    ch.request(&[&nvsp(&[107, 1, 1, m.len() as u32])], 7)
        .unwrap();
    let mut rx = vec![0u8; 8192];
    let mut replies = Vec::new();
    for _ in 0..10 {
        host.step();
        while let Some(r) = ch.recv(&mut rx).unwrap() {
            if let Received::Packet(p) = r
                && let PacketKind::TransferPages(t) = p.kind
            {
                for range in t.ranges() {
                    let mut b = vec![0u8; range.byte_count as usize];
                    bufs.0.read_at(range.byte_offset as usize, &mut b).unwrap();
                    replies.push(b);
                }
                let tid = p.transaction_id();
                ch.send_completion(tid, &[&words(&[108, 1])]).unwrap();
            }
        }
        ch.end_batch().unwrap();
    }
    replies
}

/// The handshake by hand at NVSP 5 and RNDIS INITIALIZE; returns the receive and send
/// buffers.
fn bring_up<'b>(
    guest: &'b Guest,
    host: &mut MockVmbusHost,
    relid: u32,
) -> (GuestChannel<'b>, (Buffer<'b>, Buffer<'b>)) {
    let mut ch: GuestChannel<'b> =
        vmbus_guest::Channel::open(guest, relid, &ChannelConfig::default(), &mut step(host))
            .unwrap();
    call(&mut ch, host, &nvsp(&[1, 0x5_0000, 0x5_0000]));
    ch.send(&[&nvsp(&[125, 1514, 0, 8, 0])]).unwrap();
    ch.send(&[&nvsp(&[100, 6, 30])]).unwrap();
    let recv = HostBuffer::with_gpadl(guest, relid, 64, &mut step(host)).unwrap();
    call(
        &mut ch,
        host,
        &nvsp(&[101, recv.gpadl_handle().unwrap(), 0xCAFE]),
    );
    let send = HostBuffer::with_gpadl(guest, relid, 4, &mut step(host)).unwrap();
    call(
        &mut ch,
        host,
        &nvsp(&[104, send.gpadl_handle().unwrap(), 0]),
    );
    let bufs = (recv, send);
    let init = control(&mut ch, host, &bufs, &words(&[2, 24, 1, 1, 0, 0x4000]));
    assert_eq!(init.len(), 1);
    (ch, bufs)
}

/// An RNDIS SET of OID_GEN_RECEIVE_SCALE_PARAMETERS: `table` and a `key_len`-byte key.
fn rss_set(id: u32, table: &[u32], key_len: usize) -> Vec<u8> {
    let info_len = 40 + table.len() * 4 + key_len;
    let mut m = words(&[
        5,
        28 + info_len as u32,
        id,
        0x0001_0204,
        info_len as u32,
        20,
        0,
    ]);
    m.extend_from_slice(&[0x89, 2, 40, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&words(&[0x1701]));
    m.extend_from_slice(&((table.len() * 4) as u16).to_le_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&words(&[40]));
    m.extend_from_slice(&(key_len as u16).to_le_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&words(&[40 + table.len() as u32 * 4, 0, 0, 0]));
    m.extend_from_slice(&words(table));
    m.extend((0..key_len).map(|i| i as u8));
    m
}

fn set_status(reply: &[Vec<u8>]) -> u32 {
    assert_eq!(reply.len(), 1);
    assert_eq!(&reply[0][..4], &words(&[0x8000_0005])[..]);
    u32::from_le_bytes(reply[0][12..16].try_into().unwrap())
}

#[test]
fn subchannel_requests_and_rss_parameters_are_checked_like_openvmm() {
    // Two sub-channels: three queues advertised.
    let (_hv, mut host, guest, vsp, relid) = rig(NetVspConfig {
        max_subchannels: 2,
        ..NetVspConfig::default()
    });
    let (mut ch, bufs) = bring_up(&guest, &mut host, relid);
    let caps = control(
        &mut ch,
        &mut host,
        &bufs,
        &words(&[4, 28, 2, 0x0001_0203, 0, 0, 0]),
    );
    assert_eq!(
        &caps[0][24..28],
        &[0x88, 2, 18, 0],
        "revision-2 capabilities"
    );
    assert_eq!(&caps[0][36..40], &words(&[3])[..], "three receive queues");

    // Beyond what it advertised: refused, and a guest bug the oracle records.
    assert_eq!(
        &call(&mut ch, &mut host, &nvsp(&[133, 1, 3]))[..12],
        &words(&[133, 2, 0])[..]
    );
    assert_eq!(vsp.rejections().len(), 1, "{:?}", vsp.rejections());
    assert!(vsp.rejections()[0].contains("beyond the 3 queues"));

    // One sub-channel, opened.
    assert_eq!(
        &call(&mut ch, &mut host, &nvsp(&[133, 1, 1]))[..12],
        &words(&[133, 1, 1])[..]
    );
    let mut subs: [Option<GuestChannel<'_>>; 1] = [None];
    let opened = ch.open_subchannels::<64>(
        1,
        &ChannelConfig::default(),
        &mut step(&mut host),
        &mut subs,
    );
    assert_eq!(opened, 1);
    assert_eq!(vsp.open_subchannels(), 1);

    let table = |f: fn(u32) -> u32| (0..128).map(f).collect::<Vec<u32>>();
    // OpenVMM refuses a key that is not 40 bytes, and an entry beyond its queues.
    let r = control(
        &mut ch,
        &mut host,
        &bufs,
        &rss_set(10, &table(|i| i % 2), 39),
    );
    assert_eq!(set_status(&r), 0xC001_0015);
    let r = control(
        &mut ch,
        &mut host,
        &bufs,
        &rss_set(11, &table(|i| i % 4), 40),
    );
    assert_eq!(set_status(&r), 0xC001_0015);
    assert_eq!(vsp.rss_parameters(), None);
    // An entry within its queues but naming channel 2, not open: OpenVMM takes it; the
    // oracle records it.
    let r = control(
        &mut ch,
        &mut host,
        &bufs,
        &rss_set(12, &table(|i| i % 3), 40),
    );
    assert_eq!(set_status(&r), 0);
    assert!(vsp.rejections()[1].contains("channel 2, which is not open"));
    // The good one.
    let r = control(
        &mut ch,
        &mut host,
        &bufs,
        &rss_set(13, &table(|i| i % 2), 40),
    );
    assert_eq!(set_status(&r), 0);
    let p = vsp.rss_parameters().unwrap();
    assert_eq!(
        (p.hash_information, p.table.len(), p.key[39]),
        (0x1701, 128, 39)
    );
    assert_eq!(vsp.rejections().len(), 2);

    let sub = subs[0].take().unwrap();
    assert_eq!(sub.close(&mut step(&mut host)), Released::Freed);
    assert_eq!(vsp.open_subchannels(), 0);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    let (recv, send) = bufs;
    assert_eq!(recv.release(&mut step(&mut host)), Released::Freed);
    assert_eq!(send.release(&mut step(&mut host)), Released::Freed);
    assert!(
        host.protocol_errors().is_empty(),
        "{:?}",
        host.protocol_errors()
    );
}
