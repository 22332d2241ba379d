//! The network: the synthetic NIC (netvsc) as a smoltcp device, and a DHCPv4 client on it.
//! Once configured, smoltcp also answers ARP and ping for the leased address.

use netvsc::phy::NetvscDevice;
use netvsc::{Nic, NicConfig};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::hyperv::{self, Bus, SECOND, Transport};
use crate::memory::KernelHal;
use crate::println;
use crate::services::{Ipv4, Services};
use crate::status::{Status, line};

/// The lease smoltcp's DHCP client got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Address.
    pub address: [u8; 4],
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub router: Option<[u8; 4]>,
}

/// The NIC with its IP stack.
pub struct Net<'s> {
    nic: Nic<'static, Transport, KernelHal>,
    iface: Interface,
    sockets: SocketSet<'s>,
    dhcp: SocketHandle,
    /// The current lease.
    pub lease: Option<Lease>,
}

/// smoltcp's clock: partition reference time.
fn timestamp() -> Instant {
    Instant::from_micros((hyperv::now() / 10) as i64)
}

impl<'s> Net<'s> {
    /// Opens the first network adapter and starts DHCP; `storage` holds smoltcp's sockets.
    pub fn open(
        bus: &'static Bus,
        storage: &'s mut [SocketStorage<'s>],
        status: &mut Status,
    ) -> Option<Self> {
        let mut waiter = hyperv::waiter(10 * SECOND);
        let mut nic = match Nic::open_first(bus, &NicConfig::default(), &mut waiter) {
            Ok(nic) => nic,
            Err(e) => {
                println!("net: netvsc: {e}");
                status.network = line(format_args!("no network: {e}"));
                return None;
            }
        };
        let info = *nic.info();
        let [a, b, c, d, e, f] = nic.mac();
        println!(
            "net: netvsc up: NVSP {:?}, MAC {a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}, MTU {}, link {}",
            info.version,
            nic.max_frame_len() - netvsc::nic::ETHERNET_HEADER,
            if nic.link_up() { "up" } else { "down" }
        );
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(nic.mac())));
        config.random_seed = hyperv::now() ^ u64::from_le_bytes([a, b, c, d, e, f, 0, 0]);
        let mut device = NetvscDevice::new(&mut nic);
        let iface = Interface::new(config, &mut device, timestamp());
        let mut sockets = SocketSet::new(storage);
        let dhcp = sockets.add(dhcpv4::Socket::new());
        println!("net: DHCP discover sent; the idle loop finishes the exchange");
        status.network = line(format_args!(
            "MAC {a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}, waiting for DHCP"
        ));
        Some(Self {
            nic,
            iface,
            sockets,
            dhcp,
            lease: None,
        })
    }

    /// Moves frames between the NIC and smoltcp and runs DHCP; reports a new lease through
    /// KVP and the status screen. Returns whether anything happened or host packets still
    /// wait (poll again soon).
    pub fn poll(&mut self, services: &mut Services, status: &mut Status) -> bool {
        let mut device = NetvscDevice::new(&mut self.nic);
        let changed = self.iface.poll(timestamp(), &mut device, &mut self.sockets);
        let event = self.sockets.get_mut::<dhcpv4::Socket>(self.dhcp).poll();
        match event {
            Some(dhcpv4::Event::Configured(config)) => {
                let address = config.address;
                self.iface.update_ip_addrs(|addrs| {
                    addrs.clear();
                    let _ = addrs.push(IpCidr::Ipv4(address));
                });
                match config.router {
                    Some(router) => {
                        let _ = self.iface.routes_mut().add_default_ipv4_route(router);
                    }
                    None => {
                        let _ = self.iface.routes_mut().remove_default_ipv4_route();
                    }
                }
                let lease = Lease {
                    address: address.address().octets(),
                    prefix: address.prefix_len(),
                    router: config.router.map(|r| r.octets()),
                };
                let dns: heapless::Vec<[u8; 4], 3> =
                    config.dns_servers.iter().map(|s| s.octets()).collect();
                println!(
                    "net: DHCP lease {}/{} from {}{}; answering ping",
                    Ipv4(lease.address),
                    lease.prefix,
                    Ipv4(config.server.address.octets()),
                    lease.router.map_or(heapless::String::<32>::new(), |r| {
                        let mut s = heapless::String::new();
                        let _ = core::fmt::write(&mut s, format_args!(", gateway {}", Ipv4(r)));
                        s
                    })
                );
                services.set_network(
                    self.nic.mac(),
                    lease.address,
                    lease.prefix,
                    lease.router,
                    &dns,
                );
                status.network = line(format_args!(
                    "{}/{} by DHCP{}",
                    Ipv4(lease.address),
                    lease.prefix,
                    if lease.router.is_some() {
                        ", with a gateway"
                    } else {
                        ""
                    }
                ));
                self.lease = Some(lease);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                println!("net: DHCP lease lost");
                self.iface.update_ip_addrs(|addrs| addrs.clear());
                let _ = self.iface.routes_mut().remove_default_ipv4_route();
                self.lease = None;
            }
            None => {}
        }
        if self.nic.take_link_change() {
            println!(
                "net: link {}",
                if self.nic.link_up() { "up" } else { "down" }
            );
        }
        // Host packets the device's budget left in the ring raise no interrupt: poll again.
        changed == smoltcp::iface::PollResult::SocketStateChanged || self.nic.receive_pending()
    }
}
