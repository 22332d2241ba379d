//! netvsc with the Linux kernel as the peer: the guest (smoltcp over netvsc over the mock
//! network VSP) sits on a virtual switch whose uplink is a TAP device in a network namespace
//! the test creates (and deletes again, also on a panic). Linux pings the guest, a Linux TCP
//! socket and the guest exchange 8 MiB each way with the content checked, and the guest
//! gets its address by DHCP from `dnsmasq` on the TAP side. The guest negotiates checksum
//! offload with the mock host, so Linux also checks the checksums the host filled in.
//!
//! Needs root, `/dev/net/tun`, `ip`, `ping` and `dnsmasq` (Debian: iproute2, iputils-ping,
//! dnsmasq); without them each test says loudly that it skipped, or fails under
//! `HV_REQUIRE_REAL_PEERS=1` (CI).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::time::Duration;

use common::net::*;
use netvsc::NicConfig;
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};
use test_harness::guest_net::GuestStack;
use test_harness::network::tap::{
    DHCP_RANGE, LINUX_ADDRESS, NetNamespace, TapBridge, real_peer_check, start_dhcp_server,
};
use test_harness::network::{NetVspConfig, NetworkVsp, VirtualSwitch};
use test_harness::real_peers;
use test_harness::vmbus::MockVmbusHost;
use vmbus_guest::Released;

const TAP: &str = "hvtap0";
/// The guest's fixed address in the ping and TCP tests.
const GUEST: [u8; 4] = [192, 0, 2, 10];

fn available(test: &str, tools: &[&str]) -> bool {
    real_peers::available(
        test,
        real_peer_check(tools),
        "run as root with `apt-get install iproute2 iputils-ping dnsmasq`",
    )
}

/// The Linux end: the namespace, and the switch uplink bridged to its TAP. Field order is
/// drop order: the bridge stops before the namespace (and the TAP in it) is deleted.
struct LinuxPeer {
    bridge: TapBridge,
    ns: NetNamespace,
}

fn linux_peer(tag: &str, switch: &VirtualSwitch) -> LinuxPeer {
    let ns = NetNamespace::create(tag).expect("network namespace");
    let tap = ns.create_tap(TAP, LINUX_ADDRESS).expect("TAP device");
    let bridge = TapBridge::attach(tap, switch).expect("bridge");
    LinuxPeer { bridge, ns }
}

/// A guest NIC on `switch` (full-size buffers, the defaults a user gets).
fn guest_on(switch: &VirtualSwitch, mac_tail: u8) -> (Rig, NetworkVsp) {
    let vsp = NetworkVsp::new(NetVspConfig {
        mac: [0x00, 0x15, 0x5D, 0x00, 0x02, mac_tail],
        ..Default::default()
    })
    .on_switch(switch);
    (rig_with(vsp.clone(), 48 << 20), vsp)
}

fn full() -> NicConfig {
    NicConfig {
        channel: vmbus_guest::ChannelConfig::default(),
        ..NicConfig::default()
    }
}

fn cidr(a: [u8; 4]) -> Ipv4Cidr {
    Ipv4Cidr::new(Ipv4Address::new(a[0], a[1], a[2], a[3]), 24)
}

/// One round of the guest: smoltcp in and out of the NIC, then the host. Sleeps a little
/// when nothing moved, so waiting for Linux does not spin a core.
fn turn(stack: &mut GuestStack, nic: &mut GuestNic<'_>, host: &mut MockVmbusHost) -> bool {
    let busy = stack.poll(nic);
    let host_work = host.step() > 0;
    if !busy && !host_work {
        std::thread::sleep(Duration::from_micros(200));
    }
    busy || host_work
}

#[test]
fn the_guest_gets_its_address_by_dhcp_from_dnsmasq() {
    if !available("netvsc DHCP from dnsmasq", &["dnsmasq"]) {
        return;
    }
    let switch = VirtualSwitch::new();
    let peer = linux_peer("dhcp", &switch);
    start_dhcp_server(&peer.ns, TAP, false).expect("dnsmasq");
    let (mut rig, vsp) = guest_on(&switch, 0x31);
    let (mut nic, host) = open(&mut rig, &full());
    let mut stack = GuestStack::new(&mut nic, None);
    // DISCOVER / OFFER / REQUEST / ACK; smoltcp retries DISCOVER if dnsmasq was not up yet.
    for _ in 0..200_000 {
        turn(&mut stack, &mut nic, host);
        if stack.lease().is_some() {
            break;
        }
    }
    let lease = stack.lease().expect("no DHCP lease");
    let [a, b, c, _] = LINUX_ADDRESS;
    let got = lease.address.address().octets();
    assert_eq!(&got[..3], &[a, b, c], "{lease:?}");
    assert!(
        (DHCP_RANGE.0[3]..=DHCP_RANGE.1[3]).contains(&got[3]),
        "{lease:?}"
    );
    assert_eq!(lease.address.prefix_len(), 24);
    assert_eq!(lease.server.octets(), LINUX_ADDRESS);
    assert_eq!(lease.seconds, Some(3600));
    assert_eq!(stack.ipv4(), Some(lease.address));
    let s = nic.stats();
    assert!(s.tx_frames >= 2 && s.rx_frames >= 2, "{s:#?}");
    assert_eq!(s.tx_failed, 0);
    assert!(peer.bridge.stats().from_linux >= 2);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

#[test]
fn linux_pings_the_guest_through_the_tap() {
    if !available("netvsc ping from Linux", &["ping"]) {
        return;
    }
    let switch = VirtualSwitch::new();
    let peer = linux_peer("ping", &switch);
    let (mut rig, vsp) = guest_on(&switch, 0x32);
    let (mut nic, host) = open(&mut rig, &full());
    let mut stack = GuestStack::new(&mut nic, Some(cidr(GUEST)));
    let [a, b, c, d] = GUEST;
    let mut ping = peer
        .ns
        .command("ping")
        .unwrap()
        .args(["-c", "3", "-i", "0.2", "-W", "5", "-s", "1000"])
        .arg(format!("{a}.{b}.{c}.{d}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    let mut status = None;
    for _ in 0..200_000 {
        turn(&mut stack, &mut nic, host);
        if let Some(s) = ping.try_wait().unwrap() {
            status = Some(s);
            break;
        }
    }
    if status.is_none() {
        let _ = ping.kill();
    }
    let mut out = String::new();
    ping.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = ping.wait();
    println!("{out}");
    assert!(status.is_some_and(|s| s.success()), "ping failed:\n{out}");
    assert!(out.contains("3 packets transmitted, 3 received"), "{out}");
    // ARP request in, 3 echo requests in; ARP reply and 3 echo replies out.
    let s = nic.stats();
    assert!(s.rx_frames >= 4 && s.tx_frames >= 4, "{s:#?}");
    assert_eq!(
        s.tx_failed + s.rx_too_large + s.rx_bad_messages,
        0,
        "{s:#?}"
    );
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

/// A deterministic byte stream (xorshift64*), so both ends can check every byte.
struct Pattern(u64);

impl Pattern {
    fn next_byte(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_byte();
        }
    }
    /// Index of the first byte of `buf` that differs from the stream.
    fn check(&mut self, buf: &[u8]) -> Option<usize> {
        buf.iter().position(|&b| b != self.next_byte())
    }
}

const TRANSFER: usize = 8 << 20;
const PORT: u16 = 5001;
const TO_GUEST_SEED: u64 = 0x0123_4567_89AB_CDEF;
const TO_LINUX_SEED: u64 = 0xFEDC_BA98_7654_3210;

#[test]
fn tcp_moves_8_mib_each_way_between_a_linux_socket_and_the_guest() {
    if !available("netvsc TCP with Linux", &[]) {
        return;
    }
    let switch = VirtualSwitch::new();
    let peer = linux_peer("tcp", &switch);
    let (mut rig, vsp) = guest_on(&switch, 0x33);
    let (mut nic, host) = open(&mut rig, &full());
    let mut stack = GuestStack::new(&mut nic, Some(cidr(GUEST)));
    let h = stack.add_tcp(256 << 10, 256 << 10);
    stack.tcp(h).listen(PORT).unwrap();

    // Linux: connect from inside the namespace, send 8 MiB on one thread while the other
    // reads and checks the guest's 8 MiB until the guest closes.
    let [a, b, c, d] = GUEST;
    let linux = peer.ns.run(move || -> Result<usize, String> {
        let addr = SocketAddrV4::new(std::net::Ipv4Addr::new(a, b, c, d), PORT);
        let stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(30))
            .map_err(|e| format!("connect: {e}"))?;
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let sender = std::thread::spawn(move || -> std::io::Result<()> {
            let mut p = Pattern(TO_GUEST_SEED);
            let mut chunk = vec![0u8; 64 << 10];
            let mut left = TRANSFER;
            while left > 0 {
                let n = left.min(chunk.len());
                p.fill(&mut chunk[..n]);
                writer.write_all(&chunk[..n])?;
                left -= n;
            }
            writer.shutdown(Shutdown::Write)
        });
        let mut reader = stream;
        let mut p = Pattern(TO_LINUX_SEED);
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0usize;
        loop {
            let n = reader.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            if let Some(i) = p.check(&buf[..n]) {
                return Err(format!("byte {} from the guest differs", got + i));
            }
            got += n;
        }
        sender
            .join()
            .map_err(|_| "sender panicked".to_string())?
            .map_err(|e| format!("send: {e}"))?;
        Ok(got)
    });

    let started = std::time::Instant::now();
    let mut from_linux = Pattern(TO_GUEST_SEED);
    let mut to_linux = Pattern(TO_LINUX_SEED);
    let (mut received, mut sent) = (0usize, 0usize);
    let mut closed = false;
    let mut chunk = vec![0u8; 16 << 10];
    let mut pending = 0usize; // bytes of `chunk` generated but not yet queued
    let mut pending_at = 0usize;
    for _ in 0..5_000_000 {
        turn(&mut stack, &mut nic, host);
        let s = stack.tcp(h);
        while s.can_recv() {
            let r = s.recv(|data| {
                let bad = from_linux.check(data);
                (data.len(), (data.len(), bad))
            });
            let (n, bad) = r.unwrap();
            assert_eq!(bad, None, "byte {} from Linux differs", received);
            received += n;
        }
        while sent < TRANSFER && s.can_send() {
            if pending == 0 {
                pending = (TRANSFER - sent).min(chunk.len());
                pending_at = 0;
                to_linux.fill(&mut chunk[..pending]);
            }
            let n = s
                .send_slice(&chunk[pending_at..pending_at + pending])
                .unwrap();
            if n == 0 {
                break;
            }
            pending -= n;
            pending_at += n;
            sent += n;
        }
        if sent == TRANSFER && received == TRANSFER && !closed && !s.may_recv() {
            s.close();
            closed = true;
        }
        if closed && !s.is_open() {
            break;
        }
        if linux.is_finished() && closed && s.send_queue() == 0 {
            break;
        }
    }
    let elapsed = started.elapsed();
    let linux_got = linux.join().expect("Linux thread").expect("entered");
    assert_eq!(received, TRANSFER, "bytes from Linux");
    assert_eq!(sent, TRANSFER, "bytes queued to Linux");
    assert_eq!(linux_got, Ok(TRANSFER), "bytes Linux received and checked");
    let st = nic.stats();
    let frames = st.rx_frames + st.tx_frames;
    let secs = elapsed.as_secs_f64();
    println!(
        "TCP 2 x {} MiB through netvsc <-> TAP: {:.2} s, {} frames ({:.0} frames/s), \
         {:.1} MB/s each way (informative; debug build unless --release)",
        TRANSFER >> 20,
        secs,
        frames,
        frames as f64 / secs,
        TRANSFER as f64 / 1e6 / secs,
    );
    assert_eq!(
        st.tx_failed + st.rx_too_large + st.rx_bad_messages,
        0,
        "{st:#?}"
    );
    println!("{st:#?}\n{:?}", peer.bridge.stats());
    // Checksum offload end to end: the guest's TCP segments left their checksums to the
    // host (pseudo-header preloaded; the mock host computed them and Linux accepted every
    // byte), and the host's receive verdicts replaced smoltcp's own checks.
    let o = vsp.offload_stats();
    assert!(st.tx_csum_offloaded > 1000, "{st:#?}");
    assert_eq!(st.tx_csum_software, 0, "{st:#?}");
    assert_eq!(o.tx_checksummed, st.tx_csum_offloaded, "{o:#?}");
    assert!(st.rx_csum_good > 1000 && st.rx_csum_bad == 0, "{st:#?}");
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}
