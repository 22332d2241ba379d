//! Demo part: the synthetic NIC. netvsc opens the adapter on the virtual switch and tells what
//! it negotiated; with root (and `ip`, `dnsmasq`, `ping`) the switch's uplink is a TAP in a
//! network namespace of the demo's own, so the guest leases its address from `dnsmasq` and
//! Linux pings it; without, a second guest stack on the switch pings the first. KVP then
//! reports the guest's address to the host. With `--serve` the VM stays up serving a status
//! page over smoltcp TCP until Ctrl-C, which becomes a host shutdown request.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ic_services::kvp::{AdapterIpInfo, GuestInfo, KvpAddressFamilyField};
use ic_services::protocol::{KvpAddressFamily, KvpPool};
use netvsc::protocol::NvspVersion;
use netvsc::{Nic, NicConfig};
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};
use vmbus_guest::protocol::{DeviceClass, Guid};
use vmbus_guest::{Hal, Transport, Vmbus};

use super::narrator::Narrator;
use crate::guest_ics::{GuestIcs, HARNESS_GUEST_INFO, settle};
use crate::guest_net::GuestStack;
use crate::ic::IcHost;
use crate::network::tap::{
    LINUX_ADDRESS, NetNamespace, TapBridge, real_peer_check, start_dhcp_server,
};
use crate::network::{NETWORK_CLASS, NetVspConfig, NetworkVsp, VirtualSwitch};
use crate::vmbus::{DeviceOffer, MockVmbusHost};

const INSTANCES: [Guid; 2] = [
    Guid::from_str_const("6e6e6e6e-0001-4000-8000-00155d000701"),
    Guid::from_str_const("6e6e6e6e-0002-4000-8000-00155d000702"),
];
const MACS: [[u8; 6]; 2] = [
    [0x00, 0x15, 0x5D, 0x00, 0x07, 0x01],
    [0x00, 0x15, 0x5D, 0x00, 0x07, 0x02],
];
/// The guests' static addresses when no DHCP server can run.
const STATIC: [[u8; 4]; 2] = [[192, 0, 2, 10], [192, 0, 2, 11]];
const TAP: &str = "hvdemo0";
/// The payload of the guest's echo requests.
const PING_DATA: &[u8] = b"hyperv-guest-rs demo ping";
/// Port of the status page in `--serve`.
pub const STATUS_PORT: u16 = 80;

/// The demo's network: the NIC on a virtual switch, and a second NIC (the other guest) when
/// there is no Linux peer.
#[derive(Debug)]
pub struct DemoNetwork {
    switch: VirtualSwitch,
    vsps: Vec<NetworkVsp>,
    /// Why there is no Linux peer (`None`: there is one).
    no_linux: Option<String>,
}

/// Offers the NICs to the host (before the bus connects): one when the Linux kernel will be
/// the peer, two otherwise.
pub fn offer(host: &mut MockVmbusHost, options: NetworkOptions) -> DemoNetwork {
    let no_linux = if options.real_peers {
        real_peer_check(&["dnsmasq", "ping"]).err()
    } else {
        Some("this run keeps to the simulated switch".into())
    };
    let switch = VirtualSwitch::new();
    let count = if no_linux.is_some() { 2 } else { 1 };
    let vsps: Vec<NetworkVsp> = MACS[..count]
        .iter()
        .map(|&mac| {
            NetworkVsp::new(NetVspConfig {
                mac,
                ..Default::default()
            })
            .on_switch(&switch)
        })
        .collect();
    for (vsp, instance) in vsps.iter().zip(INSTANCES) {
        host.add_device(
            DeviceOffer::new(NETWORK_CLASS, instance),
            Box::new(vsp.clone()),
        );
    }
    DemoNetwork {
        switch,
        vsps,
        no_linux,
    }
}

/// How the network part runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetworkOptions {
    /// Use the Linux kernel as the peer when this machine allows it (root, tools).
    pub real_peers: bool,
    /// Keep the VM up serving its status page until Ctrl-C (needs the real peer).
    pub serve: bool,
}

/// Set by the SIGINT handler of `--serve`.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02X}")).join(":")
}

fn nvsp_name(v: NvspVersion) -> &'static str {
    match v {
        NvspVersion::V1 => "1",
        NvspVersion::V2 => "2",
        NvspVersion::V4 => "4",
        NvspVersion::V5 => "5",
        NvspVersion::V6 => "6",
        NvspVersion::V61 => "6.1",
        _ => "?",
    }
}

/// The Linux end of the demo: namespace and bridge (dropped bridge first).
struct LinuxPeer {
    bridge: TapBridge,
    ns: NetNamespace,
}

fn linux_peer(switch: &VirtualSwitch) -> io::Result<LinuxPeer> {
    let ns = NetNamespace::create("demo")?;
    let tap = ns.create_tap(TAP, LINUX_ADDRESS)?;
    let bridge = TapBridge::attach(tap, switch)?;
    start_dhcp_server(&ns, TAP, false)?;
    Ok(LinuxPeer { bridge, ns })
}

/// One round of a guest: its stack, then the host. Sleeps a little when idle (waiting for
/// Linux must not spin a core).
fn turn<T: Transport, H: Hal>(
    stack: &mut GuestStack,
    nic: &mut Nic<'_, T, H>,
    host: &mut MockVmbusHost,
) {
    let busy = stack.poll(nic);
    if host.step() == 0 && !busy {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs the network part on the connected `bus` while the services are open; returns the
/// NVSP version the NIC negotiated (for the status screen).
pub fn run<'b, T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    host: &mut MockVmbusHost,
    ics: &IcHost,
    bus: &'b Vmbus<T, H>,
    services: &mut GuestIcs<'_, T, H>,
    net: &DemoNetwork,
    options: NetworkOptions,
) -> io::Result<Option<String>> {
    n.section("Network: netvsc on a virtual switch")?;
    let Some(offer) = bus.find(DeviceClass::Network, Some(&INSTANCES[0])) else {
        n.record("network adapter", Err("no network adapter offered".into()))?;
        return Ok(None);
    };
    let mut waiter = vmbus_guest::BoundedWait::new(500, || {
        host.step();
    });
    let mut nic: Nic<'b, T, H> =
        match Nic::open(bus, offer.relid, &NicConfig::default(), &mut waiter) {
            Ok(nic) => nic,
            Err(e) => {
                n.record("network adapter", Err(e.to_string()))?;
                return Ok(None);
            }
        };
    let info = *nic.info();
    let vsp = &net.vsps[0];
    let (ndis_major, ndis_minor) = vsp.ndis_version().unwrap_or_default();
    let frame = vsp.ndis_config().map_or(0, |c| c.0);
    n.say(&format!(
        "MAC {}, MTU {} (frames up to {} bytes announced in SEND_NDIS_CONFIG), link {}",
        mac_string(info.mac),
        info.mtu,
        frame,
        if nic.link_up() { "up" } else { "down" }
    ))?;
    n.say(&format!(
        "NVSP {} negotiated (6.1 tried first), NDIS {ndis_major}.{ndis_minor} announced; \
         receive buffer {} slots, send buffer {} sections of {} bytes",
        nvsp_name(info.version),
        info.recv_slots,
        info.sections,
        info.section_size
    ))?;
    n.say(&offload_summary(&info))?;
    n.record(
        "network adapter",
        Ok(format!(
            "{}, MTU {}, NVSP {} / NDIS {ndis_major}.{ndis_minor}, link {}",
            mac_string(info.mac),
            info.mtu,
            nvsp_name(info.version),
            if nic.link_up() { "up" } else { "down" }
        )),
    )?;

    let version = format!("NVSP {}", nvsp_name(info.version));
    let peer = match net.no_linux.clone().map_or(Ok(()), Err) {
        Ok(()) => match linux_peer(&net.switch) {
            Ok(p) => Some(p),
            Err(e) => {
                n.say(&format!("no TAP to Linux: {e}"))?;
                None
            }
        },
        Err(why) => {
            n.say(&format!(
                "no Linux peer ({why}): a second guest on the switch stands in"
            ))?;
            None
        }
    };

    let mut stack;
    let address: Ipv4Cidr;
    let mut dhcp = false;
    match &peer {
        Some(p) => {
            n.say(&format!(
                "switch uplink: TAP {TAP} (192.0.2.1/24) in network namespace {}, dnsmasq \
                 serving DHCP on it",
                p.ns.name()
            ))?;
            stack = GuestStack::new(&mut nic, None);
            for _ in 0..100_000 {
                turn(&mut stack, &mut nic, host);
                if stack.lease().is_some() {
                    break;
                }
            }
            match stack.lease() {
                Some(lease) => {
                    address = lease.address;
                    dhcp = true;
                    let secs = lease.seconds.map_or("?".into(), |s| s.to_string());
                    n.say(&format!(
                        "DHCP: DISCOVER, OFFER, REQUEST, ACK — leased {} from {} for {secs} s",
                        lease.address, lease.server
                    ))?;
                    n.record(
                        "IPv4 address",
                        Ok(format!(
                            "DHCP lease {} from dnsmasq ({secs} s)",
                            lease.address
                        )),
                    )?;
                }
                None => {
                    n.record("IPv4 address", Err("no DHCP lease from dnsmasq".into()))?;
                    close(n, host, nic)?;
                    return Ok(Some(version));
                }
            }
        }
        None => {
            let [a, b, c, d] = STATIC[0];
            address = Ipv4Cidr::new(Ipv4Address::new(a, b, c, d), 24);
            stack = GuestStack::new(&mut nic, Some(address));
            n.record(
                "IPv4 address",
                Ok(format!(
                    "static {address} (no DHCP server without the TAP to Linux)"
                )),
            )?;
        }
    }

    match &peer {
        Some(p) => ping_from_linux(n, host, &mut stack, &mut nic, p, address)?,
        None => ping_between_guests(n, host, bus, &mut stack, &mut nic, address)?,
    };

    kvp_address(n, host, ics, bus, services, info.mac, address, dhcp)?;

    if options.serve {
        match &peer {
            Some(p) => serve(n, host, bus, services, &mut stack, &mut nic, p, address)?,
            None => n.say("--serve needs the Linux peer (root): not serving")?,
        }
    }
    drop(stack);
    close(n, host, nic)?;
    Ok(Some(version))
}

fn close<T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    host: &mut MockVmbusHost,
    nic: Nic<'_, T, H>,
) -> io::Result<()> {
    let s = nic.stats();
    if !nic.offloads().tx.is_empty() || !nic.offloads().rx.is_empty() {
        n.say(&format!(
            "checksums: {} TCP/UDP frames sent with the checksum left to the host, {} \
             computed by the guest; {} received frames validated by the host, {} found bad",
            s.tx_csum_offloaded, s.tx_csum_software, s.rx_csum_good, s.rx_csum_bad
        ))?;
    }
    let mut waiter = vmbus_guest::BoundedWait::new(500, || {
        host.step();
    });
    if !nic.close(&mut waiter).is_freed() {
        n.say("the NIC's buffers could not be freed (leaked)")?;
    }
    Ok(())
}

fn ping_from_linux<T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    host: &mut MockVmbusHost,
    stack: &mut GuestStack,
    nic: &mut Nic<'_, T, H>,
    peer: &LinuxPeer,
    address: Ipv4Cidr,
) -> io::Result<bool> {
    // The guest pings Linux first. smoltcp drops the packet that made it ask ARP for a
    // neighbour, so an echo is repeated every 100 ms until a reply comes; this also teaches
    // the guest Linux's MAC, which dnsmasq's unicast ACK did not.
    let [a, b, c, d] = LINUX_ADDRESS;
    let linux = Ipv4Address::new(a, b, c, d);
    let h = stack.add_icmp(0x4857);
    let mut last = None::<std::time::Instant>;
    let mut seq = 0u16;
    let mut answered = None;
    for _ in 0..50_000 {
        if last.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) && seq < 20 {
            seq += 1;
            stack.send_echo(h, 0x4857, seq, PING_DATA, linux);
            last = Some(std::time::Instant::now());
        }
        turn(stack, nic, host);
        if stack.echo_reply(h, PING_DATA).is_some() {
            answered = Some(seq);
            break;
        }
    }
    match answered {
        Some(1) => n.say(&format!("guest: echo request to {linux} answered by Linux"))?,
        Some(seq) => n.say(&format!(
            "guest: echo request {seq} to {linux} answered by Linux (smoltcp drops the \
             packet that makes it resolve a neighbour)"
        ))?,
        None => n.say(&format!("guest: no echo reply from {linux}"))?,
    }
    let child = peer.ns.command("ping").and_then(|mut c| {
        c.args(["-c", "3", "-i", "0.2", "-W", "5"])
            .arg(address.address().to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
    });
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return n.record("ping", Err(format!("ping did not start: {e}"))),
    };
    let mut status = None;
    for _ in 0..100_000 {
        turn(stack, nic, host);
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let _ = child.wait();
    let rtt = out
        .lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .map(|avg| format!("{avg} ms"));
    let received = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("")
        .to_string();
    n.say(&format!("Linux: ping {} → {received}", address.address()))?;
    n.record(
        "ping",
        match (
            status.is_some_and(|s| s.success()) && received.contains(" 3 received"),
            rtt,
            answered,
        ) {
            (true, Some(rtt), Some(_)) => Ok(format!(
                "guest pinged Linux; Linux pinged the guest through the TAP: 3 of 3 replies, \
                 avg round trip {rtt}"
            )),
            _ => Err(format!("ping from Linux failed: {received}")),
        },
    )
}

fn ping_between_guests<'b, T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    host: &mut MockVmbusHost,
    bus: &'b Vmbus<T, H>,
    stack: &mut GuestStack,
    nic: &mut Nic<'b, T, H>,
    address: Ipv4Cidr,
) -> io::Result<bool> {
    let Some(offer) = bus.find(DeviceClass::Network, Some(&INSTANCES[1])) else {
        return n.record("ping", Err("no second network adapter".into()));
    };
    let config = NicConfig {
        recv_buffer_bytes: 1 << 20,
        send_buffer_bytes: 256 << 10,
        ..NicConfig::default()
    };
    let mut waiter = vmbus_guest::BoundedWait::new(500, || {
        host.step();
    });
    let mut other: Nic<'b, T, H> = match Nic::open(bus, offer.relid, &config, &mut waiter) {
        Ok(nic) => nic,
        Err(e) => return n.record("ping", Err(format!("second guest NIC: {e}"))),
    };
    let [a, b, c, d] = STATIC[1];
    let mut other_stack = GuestStack::new(
        &mut other,
        Some(Ipv4Cidr::new(Ipv4Address::new(a, b, c, d), 24)),
    );
    let h = other_stack.add_icmp(0x4856);
    other_stack.send_echo(h, 0x4856, 1, PING_DATA, address.address());
    let mut reply = None;
    for round in 0..2_000u32 {
        stack.poll(nic);
        other_stack.poll(&mut other);
        host.step();
        if let Some(from) = other_stack.echo_reply(h, PING_DATA) {
            reply = Some((from, round));
            break;
        }
    }
    drop(other_stack);
    let mut waiter = vmbus_guest::BoundedWait::new(500, || {
        host.step();
    });
    let _ = other.close(&mut waiter);
    match reply {
        Some((from, rounds)) => {
            n.say(&format!(
                "guest B (192.0.2.11, its own NIC and smoltcp stack) pinged guest A: echo \
                 reply from {from} after {rounds} polling rounds (ARP first)"
            ))?;
            n.record(
                "ping",
                Ok("between two guests on the switch (no root: no TAP to Linux)".into()),
            )
        }
        None => n.record("ping", Err("no echo reply between the guests".into())),
    }
}

#[allow(clippy::too_many_arguments)]
fn kvp_address<T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    host: &mut MockVmbusHost,
    ics: &IcHost,
    bus: &Vmbus<T, H>,
    services: &mut GuestIcs<'_, T, H>,
    mac: [u8; 6],
    address: Ipv4Cidr,
    dhcp: bool,
) -> io::Result<bool> {
    // The KVP store keeps 'static strings: the address changes once per run.
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let ip = leak(address.address().to_string());
    let adapters: &'static [AdapterIpInfo<'static>] = Box::leak(Box::new([AdapterIpInfo {
        adapter_id: leak(mac_string(mac)),
        family: KvpAddressFamilyField(KvpAddressFamily::IPV4),
        dhcp_enabled: dhcp,
        ip_addresses: ip,
        subnets: leak(format!("{}", address.netmask())),
        gateways: "",
        dns_servers: "",
    }]));
    services
        .kvp
        .service_mut()
        .handler_mut()
        .set_guest_info(GuestInfo {
            network_address_ipv4: ip,
            network_address_ipv6: "",
            adapters,
            ..HARNESS_GUEST_INFO
        });
    let mut events = |_: DeviceClass, _: ic_services::IcEvent| {};
    ics.kvp.enumerate(KvpPool::AUTO.0, 2);
    let _ = settle(host, bus, services, &mut events);
    let reported = ics
        .kvp
        .last_reply()
        .filter(|r| r.is_ok() && r.key.as_deref() == Some("NetworkAddressIPv4"))
        .and_then(|r| r.value_str().map(str::to_string));
    ics.kvp.get_ip_info(&mac_string(mac));
    let _ = settle(host, bus, services, &mut events);
    let ip_info = ics.kvp.last_reply().and_then(|r| r.ip_info);
    if let Some(v) = &reported {
        n.say(&format!("host reads NetworkAddressIPv4 = {v}"))?;
    }
    if let Some(i) = &ip_info {
        n.say(&format!(
            "host GET_IP_INFO {}: {} / {} (DHCP {})",
            i.adapter_id,
            i.addresses,
            i.subnets,
            if i.dhcp_enabled { "on" } else { "off" }
        ))?;
    }
    let want = ip.to_string();
    n.record(
        "KVP IPv4 address",
        match (reported, ip_info) {
            (Some(v), Some(i)) if v == want && i.addresses == want => Ok(format!(
                "host sees {want} ({})",
                if dhcp { "the DHCP lease" } else { "static" }
            )),
            (v, i) => Err(format!("host read {v:?} / {i:?}, guest has {want}")),
        },
    )
}

/// One line on the offloads the NIC negotiated (devices §2.13).
fn offload_summary(info: &netvsc::NicInfo) -> String {
    let o = &info.offloads;
    let Some(caps) = info.offload_caps else {
        return "offloads: none (the host answered no TCP_OFFLOAD_HARDWARE_CAPABILITIES); \
                smoltcp computes every checksum"
            .into();
    };
    if *o == netvsc::offload::Offloads::NONE {
        return format!(
            "offloads: none in effect (capabilities revision {}, parameters refused or \
             nothing usable); smoltcp computes every checksum",
            caps.revision
        );
    }
    let set = |c: &netvsc::offload::ChecksumSet| {
        let names = [
            (c.ip4, "IPv4 header"),
            (c.tcp4, "TCPv4"),
            (c.udp4, "UDPv4"),
            (c.tcp6, "TCPv6"),
            (c.udp6, "UDPv6"),
        ];
        let on: Vec<_> = names.iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect();
        if on.is_empty() {
            "none".to_string()
        } else {
            on.join(" ")
        }
    };
    let lso = match (o.lso_v2_ipv4, o.lso_v2_ipv6) {
        (Some(l), _) | (None, Some(l)) => format!(
            "LSOv2 {}{} up to {} bytes (Nic::send_lso; smoltcp sends MTU-sized segments)",
            if o.lso_v2_ipv4.is_some() { "IPv4" } else { "" },
            if o.lso_v2_ipv6.is_some() { " IPv6" } else { "" },
            l.max_size
        ),
        (None, None) => "no LSOv2".into(),
    };
    format!(
        "offloads (NDIS_OFFLOAD revision {}): checksum on transmit {}, on receive {}; {lso}; \
         RSC {}; {}",
        caps.revision,
        set(&o.tx),
        set(&o.rx),
        match (o.rsc_offered, o.rsc) {
            (_, true) => "on (coalesced frames reassembled)",
            (true, false) => "offered, left off (the NIC has no reassembly storage)",
            (false, false) => "not offered",
        },
        if o.tx.is_empty() {
            "smoltcp computes transmit checksums"
        } else {
            "smoltcp leaves TCP/UDP checksums to the NIC"
        }
    )
}

/// The status page the guest serves in `--serve`.
fn status_page<T: Transport, H: Hal>(nic: &Nic<'_, T, H>, address: Ipv4Cidr) -> String {
    let info = nic.info();
    let s = nic.stats();
    let body = format!(
        "hyperv-guest-rs demo guest\n\
         address  {address}\n\
         MAC      {}\n\
         MTU      {}\n\
         NVSP     {}\n\
         link     {}\n\
         frames   {} received, {} sent\n",
        mac_string(info.mac),
        info.mtu,
        nvsp_name(info.version),
        if nic.link_up() { "up" } else { "down" },
        s.rx_frames,
        s.tx_frames,
    );
    format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: \
         close\r\n\r\n{body}",
        body.len()
    )
}

#[allow(clippy::too_many_arguments)]
fn serve<T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    host: &mut MockVmbusHost,
    bus: &Vmbus<T, H>,
    services: &mut GuestIcs<'_, T, H>,
    stack: &mut GuestStack,
    nic: &mut Nic<'_, T, H>,
    peer: &LinuxPeer,
    address: Ipv4Cidr,
) -> io::Result<()> {
    n.section("Serving (--serve): the VM stays up until Ctrl-C")?;
    let ip = address.address();
    let ns = peer.ns.name().to_string();
    n.say(&format!("sudo ip netns exec {ns} ping {ip}"))?;
    n.say(&format!("sudo ip netns exec {ns} curl http://{ip}/"))?;
    n.say("Ctrl-C: the host asks the guest to shut down")?;
    INTERRUPTED.store(false, Ordering::SeqCst);
    // SAFETY: installs an async-signal-safe handler (one atomic store) for SIGINT.
    let previous =
        unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let h = stack.add_tcp(4096, 4096);
    let mut served = 0u64;
    let mut answered = false;
    while !INTERRUPTED.load(Ordering::SeqCst) {
        turn(stack, nic, host);
        // Heartbeats and KVP requests keep being answered while the VM runs.
        let _ = services.poll(|_, _| {});
        bus.poll();
        let page = status_page(nic, address);
        let s = stack.tcp(h);
        if !s.is_open() {
            let _ = s.listen(STATUS_PORT);
            answered = false;
        }
        if s.can_recv() {
            let _ = s.recv(|d| (d.len(), ()));
            if !answered && s.can_send() {
                let _ = s.send_slice(page.as_bytes());
                s.close();
                answered = true;
                served += 1;
            }
        }
    }
    // SAFETY: restores the handler that was installed before.
    unsafe { libc::signal(libc::SIGINT, previous) };
    n.say(&format!(
        "Ctrl-C after serving {served} page(s); bridge counters {:?}",
        peer.bridge.stats()
    ))
}
