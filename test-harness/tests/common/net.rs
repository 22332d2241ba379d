//! Shared set-up for the netvsc tests: a guest bus with one mock network VSP, NIC
//! configurations, and the host-side checks.

use netvsc::{Nic, NicConfig};
use test_harness::guest::boot_vp;
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::network::{NETWORK_CLASS, NetVspConfig, NetworkVsp, VirtualSwitch};
use test_harness::vmbus::{DeviceOffer, HostRelease, MockVmbusHost};
use vmbus_guest::protocol::Guid;
use vmbus_guest::{BoundedWait, ConnectionConfig, SynicTransport, Vmbus};

pub use super::Guest;

pub type GuestNic<'b> = Nic<'b, SynicTransport<MockVp>, MockHal>;

pub struct Rig {
    pub _hv: MockHypervisor,
    pub host: MockVmbusHost,
    pub guest: Guest,
    pub vsp: NetworkVsp,
    pub relid: u32,
}

pub fn rig_with(vsp: NetworkVsp, memory: usize) -> Rig {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(memory));
    let vp = boot_vp(&hv, 0).unwrap();
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let relid = host.add_device(
        DeviceOffer::new(
            NETWORK_CLASS,
            Guid::from_str_const("11111111-2222-3333-4444-555555555555"),
        ),
        Box::new(vsp.clone()),
    );
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let guest = Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    guest
        .connect(&mut BoundedWait::new(200, || {
            host.step();
        }))
        .unwrap();
    Rig {
        _hv: hv,
        host,
        guest,
        vsp,
        relid,
    }
}

/// A host configuration that differs from the default only in its MAC address.
pub fn with_mac(mac: [u8; 6]) -> NetVspConfig {
    NetVspConfig {
        mac,
        ..NetVspConfig::default()
    }
}

/// Two guests (each its own partition, host and 16 MiB) whose NICs are on one virtual
/// switch, with hosts configured `a` and `b`: (rig A, rig B, VSP A, VSP B).
pub fn switched_pair(a: NetVspConfig, b: NetVspConfig) -> (Rig, Rig, NetworkVsp, NetworkVsp) {
    let switch = VirtualSwitch::new();
    let vsp_a = NetworkVsp::new(a).on_switch(&switch);
    let vsp_b = NetworkVsp::new(b).on_switch(&switch);
    (
        rig_with(vsp_a.clone(), 16 << 20),
        rig_with(vsp_b.clone(), 16 << 20),
        vsp_a,
        vsp_b,
    )
}

pub fn rig(config: NetVspConfig) -> Rig {
    rig_with(NetworkVsp::new(config), 16 << 20)
}

/// Small buffers for tests: 256 KiB receive (145 slots), 64 KiB send (10 sections).
pub fn small() -> NicConfig {
    NicConfig {
        recv_buffer_bytes: 256 << 10,
        send_buffer_bytes: 64 << 10,
        channel: vmbus_guest::ChannelConfig::default(),
        ..NicConfig::default()
    }
}

pub fn waiter(host: &mut MockVmbusHost) -> BoundedWait<impl FnMut() + '_> {
    BoundedWait::new(500, move || {
        host.step();
    })
}

pub fn open<'b>(rig: &'b mut Rig, config: &NicConfig) -> (GuestNic<'b>, &'b mut MockVmbusHost) {
    let nic = Nic::open(&rig.guest, rig.relid, config, &mut waiter(&mut rig.host)).unwrap();
    (nic, &mut rig.host)
}

pub fn assert_clean(host: &MockVmbusHost, vsp: &NetworkVsp) {
    assert!(
        host.protocol_errors().is_empty(),
        "{:#?}",
        host.protocol_errors()
    );
    assert!(vsp.rejections().is_empty(), "{:#?}", vsp.rejections());
    assert_eq!(vsp.fatal(), None);
    let o = vsp.offload_stats();
    assert_eq!(o.tx_bad_checksums, 0, "{o:#?}");
    assert_eq!(o.tx_bad_preloads, 0, "{o:#?}");
    assert_eq!(
        vsp.steering_mismatches(),
        0,
        "frames sent off the send table"
    );
}
