//! The integration services on their VMBus channels: heartbeat (the host shows the VM as
//! healthy), shutdown ("Shut Down" from the host powers the VM off), time sync (UTC from the
//! host) and KVP (the host reads the OS name and the IP address).

use heapless::String;
use ic_services::IcEvent;
use ic_services::channel::{IcChannel, IcChannelError, ic_channel_config};
use ic_services::heartbeat::{self, Heartbeat};
use ic_services::kvp::{AdapterIpInfo, GuestInfo, Kvp, KvpAddressFamilyField};
use ic_services::protocol::KvpAddressFamily;
use ic_services::shutdown::{self, AcceptExceptHibernate, Shutdown, ShutdownRequest};
use ic_services::timesync::{self, TimeSync, UnixTime};
use spin::Once;

use crate::hyperv::{self, Bus, SECOND, Transport};
use crate::memory::KernelHal;
use crate::println;

type HeartbeatChannel =
    IcChannel<'static, Transport, KernelHal, Heartbeat, { heartbeat::MAX_PACKET }>;
type ShutdownChannel = IcChannel<
    'static,
    Transport,
    KernelHal,
    Shutdown<AcceptExceptHibernate>,
    { shutdown::MAX_PACKET },
>;
type TimeSyncChannel =
    IcChannel<'static, Transport, KernelHal, TimeSync<fn() -> u64>, { timesync::MAX_PACKET }>;
type KvpChannel = IcChannel<'static, Transport, KernelHal, Kvp<'static>>;

/// What this guest tells the host about itself (the AUTO pool the host reads).
const GUEST_INFO: GuestInfo<'static> = GuestInfo {
    fully_qualified_domain_name: "hyperv-kernel",
    integration_services_version: concat!("hyperv-guest-rs ", env!("CARGO_PKG_VERSION")),
    network_address_ipv4: "",
    network_address_ipv6: "",
    os_build_number: env!("CARGO_PKG_VERSION"),
    os_name: "hyperv-kernel (no_std Rust, hyperv-guest-rs example)",
    os_major_version: "0",
    os_minor_version: "1",
    os_version: env!("CARGO_PKG_VERSION"),
    processor_architecture: "x86_64",
    adapters: &[],
};

/// The network configuration as KVP strings, set once DHCP has an address.
struct NetStrings {
    mac: String<17>,
    ip: String<15>,
    subnet: String<15>,
    gateway: String<15>,
    dns: String<47>,
}

static NET_STRINGS: Once<NetStrings> = Once::new();
static ADAPTERS: Once<[AdapterIpInfo<'static>; 1]> = Once::new();

/// The four services, each open on its channel (or `None` if the host did not offer it or it
/// failed).
pub struct Services {
    heartbeat: Option<HeartbeatChannel>,
    shutdown: Option<ShutdownChannel>,
    timesync: Option<TimeSyncChannel>,
    kvp: Option<KvpChannel>,
    /// Heartbeats answered.
    pub beats: u64,
    /// Whether a time sample from the host arrived.
    pub synced: bool,
}

fn report(name: &str, result: Result<(), IcChannelError>) {
    match result {
        Ok(()) => println!("ics: {name} channel open; waiting for the host's NEGOTIATE"),
        Err(e) => println!("ics: {name}: {e}"),
    }
}

impl Services {
    /// Opens heartbeat, shutdown, time sync and KVP, each on its first free offer. Each
    /// channel is built in place in `self` (the KVP channel alone is 15 KiB).
    pub fn open(&mut self, bus: &'static Bus) {
        let config = ic_channel_config();
        let mut w = hyperv::waiter(5 * SECOND);
        let r = IcChannel::open_in(
            &mut self.heartbeat,
            bus,
            None,
            &config,
            Heartbeat::new(),
            &mut w,
        );
        report("heartbeat", r.map(|_| ()));
        let mut w = hyperv::waiter(5 * SECOND);
        let policy = Shutdown::new(AcceptExceptHibernate);
        let r = IcChannel::open_in(&mut self.shutdown, bus, None, &config, policy, &mut w);
        report("shutdown", r.map(|_| ()));
        let mut w = hyperv::waiter(5 * SECOND);
        let sync = TimeSync::new(hyperv::now as fn() -> u64);
        let r = IcChannel::open_in(&mut self.timesync, bus, None, &config, sync, &mut w);
        report("time sync", r.map(|_| ()));
        let mut w = hyperv::waiter(5 * SECOND);
        let r = IcChannel::open_in(
            &mut self.kvp,
            bus,
            None,
            &config,
            Kvp::new(GUEST_INFO),
            &mut w,
        );
        report("KVP", r.map(|_| ()));
    }

    /// Empty slots.
    pub const fn new() -> Self {
        Self {
            heartbeat: None,
            shutdown: None,
            timesync: None,
            kvp: None,
            beats: 0,
            synced: false,
        }
    }

    /// Answers what the host sent. Returns a shutdown request the guest accepted (and
    /// answered S_OK), and whether a service may have more waiting.
    pub fn poll(&mut self) -> (Option<ShutdownRequest>, bool) {
        let mut shutdown = None;
        let mut more = false;
        let mut beats = 0;
        let mut sampled = false;
        let mut on_event = |name: &str, event: IcEvent| match event {
            IcEvent::Negotiated { framework, service } => println!(
                "ics: {name} negotiated (framework {}.{}, service {}.{})",
                framework.major, framework.minor, service.major, service.minor
            ),
            IcEvent::NegotiationFailed(e) => println!("ics: {name}: no common version ({e})"),
            IcEvent::Heartbeat { .. } => beats += 1,
            IcEvent::ShutdownRequested(request) => shutdown = Some(request),
            IcEvent::ShutdownRefused(request) => {
                println!("ics: refused a {:?} request from the host", request.kind)
            }
            IcEvent::TimeSample(_) => sampled = true,
            IcEvent::Rejected(e) => println!("ics: {name}: answered a request with failure: {e}"),
            _ => {}
        };
        poll_one(&mut self.heartbeat, "heartbeat", &mut more, &mut on_event);
        poll_one(&mut self.shutdown, "shutdown", &mut more, &mut on_event);
        poll_one(&mut self.timesync, "time sync", &mut more, &mut on_event);
        poll_one(&mut self.kvp, "KVP", &mut more, &mut on_event);
        self.beats += beats;
        if sampled && !self.synced {
            self.synced = true;
            if let Some(t) = self.utc_now() {
                println!("ics: time sync: the host says it is {}", Utc(t));
            }
        }
        (shutdown, more)
    }

    /// UTC now, from the host's last time sample and the reference clock.
    pub fn utc_now(&mut self) -> Option<UnixTime> {
        self.timesync
            .as_mut()?
            .service_mut()
            .handler_mut()
            .utc_now()
            .ok()
    }

    /// Reports the DHCP address through KVP (the AUTO pool's NetworkAddressIPv4 and
    /// GET_IP_INFO for this adapter).
    pub fn set_network(
        &mut self,
        mac: [u8; 6],
        ip: [u8; 4],
        prefix: u8,
        gateway: Option<[u8; 4]>,
        dns: &[[u8; 4]],
    ) {
        use core::fmt::Write;
        let strings = NET_STRINGS.call_once(|| {
            let mut s = NetStrings {
                mac: String::new(),
                ip: String::new(),
                subnet: String::new(),
                gateway: String::new(),
                dns: String::new(),
            };
            let [a, b, c, d, e, f] = mac;
            let _ = write!(s.mac, "{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{f:02X}");
            let _ = write!(s.ip, "{}", Ipv4(ip));
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            let _ = write!(s.subnet, "{}", Ipv4(mask.to_be_bytes()));
            if let Some(g) = gateway {
                let _ = write!(s.gateway, "{}", Ipv4(g));
            }
            for (i, server) in dns.iter().take(3).enumerate() {
                let _ = write!(s.dns, "{}{}", if i > 0 { ";" } else { "" }, Ipv4(*server));
            }
            s
        });
        let adapters = ADAPTERS.call_once(|| {
            [AdapterIpInfo {
                adapter_id: &strings.mac,
                family: KvpAddressFamilyField(KvpAddressFamily::IPV4),
                dhcp_enabled: true,
                ip_addresses: &strings.ip,
                subnets: &strings.subnet,
                gateways: &strings.gateway,
                dns_servers: &strings.dns,
            }]
        });
        if let Some(kvp) = self.kvp.as_mut() {
            kvp.service_mut().handler_mut().set_guest_info(GuestInfo {
                network_address_ipv4: &strings.ip,
                adapters,
                ..GUEST_INFO
            });
            println!(
                "ics: KVP now reports {} for adapter {}",
                strings.ip.as_str(),
                strings.mac.as_str()
            );
        }
    }
}

/// Polls one service; a channel that fails (rescinded, host misbehaving) is dropped.
fn poll_one<H: ic_services::IcHandler, const B: usize>(
    slot: &mut Option<IcChannel<'static, Transport, KernelHal, H, B>>,
    name: &str,
    more: &mut bool,
    on_event: &mut impl FnMut(&str, IcEvent),
) {
    let Some(channel) = slot.as_mut() else {
        return;
    };
    match channel.poll(|event| on_event(name, event)) {
        Ok(polled) => *more |= polled.more || polled.reply_pending,
        Err(e) => {
            println!("ics: {name} stopped: {e}");
            *slot = None;
        }
    }
}

/// An IPv4 address in dotted form.
pub struct Ipv4(pub [u8; 4]);

impl core::fmt::Display for Ipv4 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

/// UTC as `2024-01-01 00:00:00 UTC` (proleptic Gregorian calendar).
pub struct Utc(pub UnixTime);

impl core::fmt::Display for Utc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let days = (self.0.secs / 86_400) as i64;
        let rem = self.0.secs % 86_400;
        // Civil from days (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }
}
