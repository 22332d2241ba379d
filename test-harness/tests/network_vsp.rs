//! The mock network VSP on its own, driven by hand-built NVSP/RNDIS bytes over a raw channel
//! (no netvsc driver): what it rejects because real hosts reject it (devices §2.6, §2.9,
//! §2.10), one test each, and the accepted form next to each rejected one.

mod common;

use common::{Guest, GuestChannel, step};
use test_harness::guest::boot_vp;
use test_harness::hv::{HostPreset, MockConfig, MockHypervisor};
use test_harness::network::{NETWORK_CLASS, NetVspConfig, NetworkVsp};
use test_harness::vmbus::{DeviceOffer, HostRelease, MockVmbusHost};
use vmbus_guest::protocol::Guid;
use vmbus_guest::{
    BoundedWait, ChannelConfig, ConnectionConfig, HostBuffer, Received, Released, SynicTransport,
    Vmbus,
};

const SECTION: usize = 6144;

fn nvsp(w: &[u32]) -> Vec<u8> {
    let mut b: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    b.resize(40, 0);
    b
}

fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn rig() -> (MockHypervisor, MockVmbusHost, Guest, NetworkVsp, u32) {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022));
    let vp = boot_vp(&hv, 0).unwrap();
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let vsp = NetworkVsp::new(NetVspConfig::default());
    let relid = host.add_device(
        DeviceOffer::new(
            NETWORK_CLASS,
            Guid::from_str_const("22222222-2222-3333-4444-555555555555"),
        ),
        Box::new(vsp.clone()),
    );
    let guest = Vmbus::new(
        SynicTransport::for_current_vp(vp.hypercalls, vp.synic),
        hv.hal(),
        ConnectionConfig::default(),
    );
    guest
        .connect(&mut BoundedWait::new(200, || {
            host.step();
        }))
        .unwrap();
    (hv, host, guest, vsp, relid)
}

/// Sends `msg` with completion requested and returns the completion payload.
fn call(ch: &mut GuestChannel<'_>, host: &mut MockVmbusHost, msg: &[u8]) -> Vec<u8> {
    let mut resp = [0u8; 64];
    let mut rx = vec![0u8; 8192];
    let n = ch
        .transact(&[msg], 0, &mut resp, &mut rx, |_| {}, &mut step(host))
        .unwrap();
    resp[..n.min(64)].to_vec()
}

/// Receives everything, completing every transfer-page packet; returns the completion
/// payloads of guest requests and the number of transfer-page packets.
fn drain(ch: &mut GuestChannel<'_>, host: &mut MockVmbusHost) -> (Vec<Vec<u8>>, usize) {
    let mut rx = vec![0u8; 8192];
    let mut completions = Vec::new();
    let mut xfers = 0;
    for _ in 0..10 {
        host.step();
        while let Some(r) = ch.recv(&mut rx).unwrap() {
            match r {
                Received::Completion { packet, .. } => completions.push(packet.payload().to_vec()),
                // Packets without a completion request (the SEND_INDIRECTION_TABLE the
                // host sends once its sub-channels are open) are not receives.
                Received::Packet(p) if p.completion_requested() => {
                    xfers += 1;
                    let tid = p.transaction_id();
                    ch.send_completion(tid, &[&words(&[108, 1])]).unwrap();
                }
                Received::Packet(_) => {}
                Received::Failed { error, .. } => panic!("request failed: {error}"),
            }
        }
        ch.end_batch().unwrap();
    }
    (completions, xfers)
}

struct Up<'b> {
    ch: GuestChannel<'b>,
    recv: HostBuffer<
        'b,
        vmbus_guest::SynicTransport<test_harness::hv::MockVp>,
        test_harness::hv::MockHal,
    >,
    send: HostBuffer<
        'b,
        vmbus_guest::SynicTransport<test_harness::hv::MockVp>,
        test_harness::hv::MockHal,
    >,
}

/// The handshake by hand at NVSP 5: INIT, NDIS config and version, both buffers, RNDIS
/// INITIALIZE through send section 0.
fn bring_up<'b>(guest: &'b Guest, host: &mut MockVmbusHost, relid: u32) -> Up<'b> {
    let mut ch: GuestChannel<'b> =
        vmbus_guest::Channel::open(guest, relid, &ChannelConfig::default(), &mut step(host))
            .unwrap();
    assert_eq!(
        &call(&mut ch, host, &nvsp(&[1, 0x5_0000, 0x5_0000]))[12..16],
        &words(&[1])[..]
    );
    ch.send(&[&nvsp(&[125, 1514, 0, 8, 0])]).unwrap();
    ch.send(&[&nvsp(&[100, 6, 30])]).unwrap();
    let recv = HostBuffer::with_gpadl(guest, relid, 16, &mut step(host)).unwrap();
    let r = call(
        &mut ch,
        host,
        &nvsp(&[101, recv.gpadl_handle().unwrap(), 0xCAFE]),
    );
    assert_eq!(&r[..8], &words(&[102, 1])[..]);
    let send = HostBuffer::with_gpadl(guest, relid, 4, &mut step(host)).unwrap();
    let r = call(
        &mut ch,
        host,
        &nvsp(&[104, send.gpadl_handle().unwrap(), 0]),
    );
    assert_eq!(&r[..12], &words(&[105, 1, SECTION as u32])[..]);
    let init = words(&[2, 24, 1, 1, 0, 0x4000]);
    send.write_at(0, &init).unwrap();
    ch.request(&[&nvsp(&[107, 1, 0, init.len() as u32])], 0)
        .unwrap();
    let (completions, xfers) = drain(&mut ch, host);
    assert_eq!(completions, vec![nvsp(&[108, 1])[..32].to_vec()]);
    assert_eq!(xfers, 1, "INITIALIZE completion through the receive buffer");
    Up { ch, recv, send }
}

fn close(up: Up<'_>, host: &mut MockVmbusHost) {
    assert_eq!(up.ch.close(&mut step(host)), Released::Freed);
    assert_eq!(up.recv.release(&mut step(host)), Released::Freed);
    assert_eq!(up.send.release(&mut step(host)), Released::Freed);
}

/// A 60-byte frame in an RNDIS PACKET (44-byte header, data right after it).
fn packet(oob_offset: u32) -> Vec<u8> {
    let mut m = words(&[1, 104, 36, 60, oob_offset, 0, 0, 0, 0, 0, 0]);
    m.extend((0..60u8).map(|i| i ^ 0x5A));
    m
}

#[test]
fn an_rndis_packet_before_send_ndis_version_is_fatal() {
    let (_hv, mut host, guest, vsp, relid) = rig();
    let mut ch: GuestChannel<'_> = vmbus_guest::Channel::open(
        &guest,
        relid,
        &ChannelConfig::default(),
        &mut step(&mut host),
    )
    .unwrap();
    call(&mut ch, &mut host, &nvsp(&[1, 0x5_0000, 0x5_0000]));
    ch.send(&[&nvsp(&[125, 1514, 0, 8, 0])]).unwrap();
    ch.request(&[&nvsp(&[107, 1, 0xFFFF_FFFF, 0])], 1).unwrap();
    let (completions, _) = drain(&mut ch, &mut host);
    assert!(completions.is_empty(), "never answered");
    let fatal = vsp.fatal().unwrap();
    assert!(fatal.starts_with("UnexpectedRndisPacket"), "{fatal}");
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
}

#[test]
fn a_send_without_completion_requested_is_not_processed() {
    let (_hv, mut host, guest, vsp, relid) = rig();
    let mut up = bring_up(&guest, &mut host, relid);
    up.send.write_at(SECTION, &packet(0)).unwrap();
    up.ch.send(&[&nvsp(&[107, 0, 1, 104])]).unwrap();
    drain(&mut up.ch, &mut host);
    assert!(vsp.frames_from_guest().is_empty());
    assert_eq!(vsp.rejections().len(), 1);
    assert!(vsp.rejections()[0].starts_with("MissingTransactionId"));
    // The same packet with completion requested goes through.
    up.ch.request(&[&nvsp(&[107, 0, 1, 104])], 2).unwrap();
    let (completions, _) = drain(&mut up.ch, &mut host);
    assert_eq!(completions, vec![nvsp(&[108, 1])[..32].to_vec()]);
    assert_eq!(vsp.frames_from_guest(), vec![packet(0)[44..].to_vec()]);
    close(up, &mut host);
}

#[test]
fn a_packet_with_out_of_band_fields_is_completed_with_failure() {
    let (_hv, mut host, guest, vsp, relid) = rig();
    let mut up = bring_up(&guest, &mut host, relid);
    up.send.write_at(SECTION, &packet(4)).unwrap();
    up.ch.request(&[&nvsp(&[107, 0, 1, 104])], 2).unwrap();
    let (completions, _) = drain(&mut up.ch, &mut host);
    assert_eq!(completions, vec![nvsp(&[108, 2])[..32].to_vec()]);
    assert!(vsp.frames_from_guest().is_empty());
    assert!(vsp.rejections()[0].starts_with("UnsupportedRndisBehavior"));
    assert_eq!(vsp.fatal(), None, "not fatal: the NIC keeps working");
    close(up, &mut host);
}

#[test]
fn an_rndis_header_split_across_page_buffers_is_completed_with_failure() {
    let (_hv, mut host, guest, vsp, relid) = rig();
    let mut up = bring_up(&guest, &mut host, relid);
    let pages = HostBuffer::new(&guest, 1).unwrap();
    let p = packet(0);
    // Header in the first range: accepted.
    pages.write_at(0, &p[..44]).unwrap();
    pages.write_at(2048, &p[44..]).unwrap();
    let dma = [pages.dma(0, 44).unwrap(), pages.dma(2048, 60).unwrap()];
    up.ch
        .request_dma(&dma, &[&nvsp(&[107, 0, 0xFFFF_FFFF, 0])], 3)
        .unwrap();
    let (completions, _) = drain(&mut up.ch, &mut host);
    assert_eq!(completions, vec![nvsp(&[108, 1])[..32].to_vec()]);
    assert_eq!(vsp.frames_from_guest(), vec![p[44..].to_vec()]);
    // Header split over two ranges: rejected.
    pages.write_at(0, &p[..20]).unwrap();
    pages.write_at(2048, &p[20..]).unwrap();
    let dma = [pages.dma(0, 20).unwrap(), pages.dma(2048, 84).unwrap()];
    up.ch
        .request_dma(&dma, &[&nvsp(&[107, 0, 0xFFFF_FFFF, 0])], 4)
        .unwrap();
    let (completions, _) = drain(&mut up.ch, &mut host);
    assert_eq!(completions, vec![nvsp(&[108, 2])[..32].to_vec()]);
    assert_eq!(vsp.frames_from_guest().len(), 1);
    assert!(
        vsp.rejections()[0].starts_with("HeaderSplit"),
        "{:?}",
        vsp.rejections()
    );
    assert_eq!(pages.release(&mut step(&mut host)), Released::Freed);
    close(up, &mut host);
}

#[test]
fn a_page_buffer_crossing_a_page_boundary_is_completed_with_failure() {
    let (_hv, mut host, guest, vsp, relid) = rig();
    let mut up = bring_up(&guest, &mut host, relid);
    let pages = HostBuffer::new(&guest, 2).unwrap();
    let p = packet(0);
    // The frame range runs from the end of page 0 into page 1: two pages in one range.
    pages.write_at(0, &p[..44]).unwrap();
    pages.write_at(4096 - 30, &p[44..]).unwrap();
    let dma = [pages.dma(0, 44).unwrap(), pages.dma(4096 - 30, 60).unwrap()];
    up.ch
        .request_dma(&dma, &[&nvsp(&[107, 0, 0xFFFF_FFFF, 0])], 3)
        .unwrap();
    let (completions, _) = drain(&mut up.ch, &mut host);
    assert_eq!(completions, vec![nvsp(&[108, 2])[..32].to_vec()]);
    assert!(vsp.frames_from_guest().is_empty());
    assert!(
        vsp.rejections()[0].starts_with("PageBuffer"),
        "{:?}",
        vsp.rejections()
    );
    // Split at the boundary instead: accepted.
    let dma = [
        pages.dma(0, 44).unwrap(),
        pages.dma(4096 - 30, 30).unwrap(),
        pages.dma(4096, 30).unwrap(),
    ];
    up.ch
        .request_dma(&dma, &[&nvsp(&[107, 0, 0xFFFF_FFFF, 0])], 4)
        .unwrap();
    let (completions, _) = drain(&mut up.ch, &mut host);
    assert_eq!(completions, vec![nvsp(&[108, 1])[..32].to_vec()]);
    assert_eq!(vsp.frames_from_guest(), vec![p[44..].to_vec()]);
    assert_eq!(pages.release(&mut step(&mut host)), Released::Freed);
    close(up, &mut host);
}

#[test]
fn rndis_control_on_a_sub_channel_is_refused() {
    let (_hv, mut host, guest, vsp, relid) = rig();
    let mut up = bring_up(&guest, &mut host, relid);
    let r = call(&mut up.ch, &mut host, &nvsp(&[133, 1, 1]));
    assert_eq!(&r[..12], &words(&[133, 1, 1])[..]);
    let mut subs: [Option<GuestChannel<'_>>; 1] = [None];
    let opened = up.ch.open_subchannels::<64>(
        1,
        &ChannelConfig::default(),
        &mut step(&mut host),
        &mut subs,
    );
    assert_eq!(opened, 1);
    let mut sub = subs[0].take().unwrap();
    let query = words(&[4, 28, 2, 0x0101_0101, 0, 0, 0]);
    up.send.write_at(SECTION, &query).unwrap();
    sub.request(&[&nvsp(&[107, 1, 1, 28])], 5).unwrap();
    let (completions, xfers) = drain(&mut sub, &mut host);
    assert_eq!(completions, vec![nvsp(&[108, 2])[..32].to_vec()]);
    assert_eq!(xfers, 0);
    assert!(
        vsp.rejections()[0].starts_with("NotSupportedOnSubChannel"),
        "{:?}",
        vsp.rejections()
    );
    // The same query on the primary is answered through the receive buffer.
    up.ch.request(&[&nvsp(&[107, 1, 1, 28])], 6).unwrap();
    let (completions, xfers) = drain(&mut up.ch, &mut host);
    assert_eq!(completions, vec![nvsp(&[108, 1])[..32].to_vec()]);
    assert_eq!(xfers, 1);
    assert_eq!(sub.close(&mut step(&mut host)), Released::Freed);
    close(up, &mut host);
    assert!(
        host.protocol_errors().is_empty(),
        "{:?}",
        host.protocol_errors()
    );
}
