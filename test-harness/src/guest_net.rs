//! A guest network stack for the real-peer tests and the demo: smoltcp over a netvsc
//! [`Nic`] (through `netvsc::phy::NetvscDevice`), with an address from DHCP (smoltcp's
//! DHCPv4 client) or a fixed one. smoltcp answers ICMP echo requests by itself; sockets are
//! added by the caller.

use netvsc::Nic;
use netvsc::phy::NetvscDevice;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{dhcpv4, icmp, tcp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    DhcpRepr, EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr,
    Ipv4Address, Ipv4Cidr,
};
use vmbus_guest::{Hal, Transport};

/// The address configuration a DHCP server handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The guest's address and prefix.
    pub address: Ipv4Cidr,
    /// The default gateway, if the server named one.
    pub router: Option<Ipv4Address>,
    /// The server that leased it.
    pub server: Ipv4Address,
    /// Lease time in seconds, if the server's ACK carried one.
    pub seconds: Option<u32>,
}

/// smoltcp's interface and sockets for one NIC, and a clock.
pub struct GuestStack {
    iface: Interface,
    /// The sockets (add TCP/ICMP sockets here).
    pub sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    lease: Option<Lease>,
    started: std::time::Instant,
}

impl std::fmt::Debug for GuestStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestStack")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl GuestStack {
    /// A stack on `nic` that asks DHCP for its address (`dhcp`), or uses `fixed`.
    pub fn new<T: Transport, H: Hal, const N: usize>(
        nic: &mut Nic<'_, T, H, N>,
        fixed: Option<Ipv4Cidr>,
    ) -> Self {
        let mac = nic.mac();
        let started = std::time::Instant::now();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed =
            u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 7, 1]);
        let iface = Interface::new(config, &mut NetvscDevice::new(nic), Instant::ZERO);
        let mut stack = Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dhcp: None,
            lease: None,
            started,
        };
        match fixed {
            Some(cidr) => stack.set_address(cidr),
            None => {
                let mut socket = dhcpv4::Socket::new();
                // The ACK is kept so the lease time can be reported.
                socket.set_receive_packet_buffer(Box::leak(vec![0u8; 1500].into_boxed_slice()));
                stack.dhcp = Some(stack.sockets.add(socket));
            }
        }
        stack
    }

    fn set_address(&mut self, cidr: Ipv4Cidr) {
        self.iface.update_ip_addrs(|a| {
            a.clear();
            let _ = a.push(IpCidr::Ipv4(cidr));
        });
    }

    /// smoltcp time: milliseconds since the stack was made.
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.started.elapsed().as_micros() as i64)
    }

    /// Runs the interface once: frames in and out of `nic`, timers, DHCP. Returns whether
    /// anything happened (a socket changed or a frame moved) or host packets still wait
    /// (no interrupt announces those: poll again).
    pub fn poll<T: Transport, H: Hal, const N: usize>(
        &mut self,
        nic: &mut Nic<'_, T, H, N>,
    ) -> bool {
        let now = self.now();
        let before = nic.stats();
        let changed = self
            .iface
            .poll(now, &mut NetvscDevice::new(nic), &mut self.sockets);
        let after = nic.stats();
        let moved = before.rx_frames != after.rx_frames || before.tx_frames != after.tx_frames;
        if let Some(h) = self.dhcp {
            let event = match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
                Some(dhcpv4::Event::Configured(c)) => {
                    let seconds = c
                        .packet
                        .and_then(|p| DhcpRepr::parse(&p).ok().and_then(|r| r.lease_duration));
                    Some(Some(Lease {
                        address: c.address,
                        router: c.router,
                        server: c.server.address,
                        seconds,
                    }))
                }
                Some(dhcpv4::Event::Deconfigured) => Some(None),
                None => None,
            };
            match event {
                Some(Some(lease)) => {
                    self.set_address(lease.address);
                    self.iface.routes_mut().remove_default_ipv4_route();
                    if let Some(r) = lease.router {
                        let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                    }
                    self.lease = Some(lease);
                }
                Some(None) => {
                    self.lease = None;
                    self.iface.update_ip_addrs(|a| a.clear());
                }
                None => {}
            }
        }
        changed != smoltcp::iface::PollResult::None || moved || nic.receive_pending()
    }

    /// How long smoltcp can wait before it must be polled again (`None`: no timer).
    pub fn poll_delay(&mut self) -> Option<Duration> {
        let now = self.now();
        self.iface.poll_delay(now, &self.sockets)
    }

    /// The DHCP lease, once configured.
    pub fn lease(&self) -> Option<Lease> {
        self.lease
    }

    /// The interface's IPv4 address, fixed or leased.
    pub fn ipv4(&self) -> Option<Ipv4Cidr> {
        self.iface.ip_addrs().iter().find_map(|a| match a {
            IpCidr::Ipv4(c) => Some(*c),
            #[allow(unreachable_patterns)]
            _ => None,
        })
    }

    /// Asks DHCP again (after the link went down and up, or NETWORK_CHANGE).
    pub fn renew(&mut self) {
        if let Some(h) = self.dhcp {
            self.sockets.get_mut::<dhcpv4::Socket>(h).reset();
        }
    }

    /// Adds a TCP socket with `rx` and `tx` bytes of buffer.
    pub fn add_tcp(&mut self, rx: usize, tx: usize) -> SocketHandle {
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; tx]),
        );
        self.sockets.add(socket)
    }

    /// The TCP socket `h`.
    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Adds an ICMP socket bound to echo identifier `ident`.
    pub fn add_icmp(&mut self, ident: u16) -> SocketHandle {
        let mut socket = icmp::Socket::new(
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        );
        let _ = socket.bind(icmp::Endpoint::Ident(ident));
        self.sockets.add(socket)
    }

    /// Queues an ICMP echo request (`ident`, `seq_no`, `data`) to `to` on socket `h`.
    pub fn send_echo(
        &mut self,
        h: SocketHandle,
        ident: u16,
        seq_no: u16,
        data: &[u8],
        to: Ipv4Address,
    ) {
        let repr = Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(&mut bytes),
            &smoltcp::phy::ChecksumCapabilities::default(),
        );
        let _ = self
            .sockets
            .get_mut::<icmp::Socket>(h)
            .send_slice(&bytes, IpAddress::Ipv4(to));
    }

    /// The sender of an echo reply carrying `data` that socket `h` received, if any (other
    /// packets are consumed).
    pub fn echo_reply(&mut self, h: SocketHandle, data: &[u8]) -> Option<IpAddress> {
        let s = self.sockets.get_mut::<icmp::Socket>(h);
        while let Ok((bytes, from)) = s.recv() {
            if let Ok(p) = Icmpv4Packet::new_checked(bytes)
                && let Ok(Icmpv4Repr::EchoReply { data: d, .. }) =
                    Icmpv4Repr::parse(&p, &smoltcp::phy::ChecksumCapabilities::default())
                && d == data
            {
                return Some(from);
            }
        }
        None
    }
}
