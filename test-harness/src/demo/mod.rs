//! The narrated demo: a simulated Hyper-V VM brought up step by step with the real guest
//! libraries on top of the mock hypervisor and VMBus host, ending with a summary table.
//!
//! The narration goes to any `io::Write`, so the binary prints it and the tests check it.

mod bus;
mod disk;
mod live;
mod narrator;
mod network;
mod platform;
mod screen;
mod services;

use std::io::{self, Write};
use std::path::PathBuf;

use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::{ConnectionConfig, SynicTransport, Vmbus};

pub use narrator::StepResult;
pub use network::{NetworkOptions, STATUS_PORT};
pub use screen::{STATUS_PNG, TYPED_LINE, TYPED_PNG};
pub use services::format_utc;

use crate::hv::{HostPreset, MockConfig, MockHypervisor};
use crate::ic::{IcHost, IcHostConfig};
use crate::vmbus::{HostRelease, MockVmbusHost};

/// An emulated host: the hypervisor preset and the VMBus release it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoHost {
    /// CPUID and synthetic-register behaviour.
    pub preset: HostPreset,
    /// VMBus versions the host speaks.
    pub release: HostRelease,
}

/// Names accepted by `--host`, with what each emulates.
pub const HOST_NAMES: &[(&str, &str)] = &[
    ("ws2008r2", "Windows Server 2008 R2: VMBus 1.1"),
    ("ws2012", "Windows Server 2012: VMBus 2.4"),
    ("ws2012r2", "Windows Server 2012 R2: VMBus 3.0"),
    ("ws2016", "Windows Server 2016: VMBus 4.0"),
    ("ws2019", "Windows Server 2019: VMBus 5.2"),
    ("ws2022", "Windows Server 2022 / Azure: VMBus 5.3 (default)"),
    ("copper", "a VMBus 6.0 host"),
    ("not-hyperv", "another hypervisor (KVM signature)"),
    ("bare-metal", "no hypervisor at all"),
];

/// Parses a `--host` name (see [`HOST_NAMES`]).
pub fn parse_host(name: &str) -> Option<DemoHost> {
    let (preset, release) = match name.to_ascii_lowercase().as_str() {
        "ws2008r2" => (HostPreset::Ws2016, HostRelease::Ws2008R2),
        "ws2012" => (HostPreset::Ws2016, HostRelease::Ws2012),
        "ws2012r2" => (HostPreset::Ws2016, HostRelease::Ws2012R2),
        "ws2016" => (HostPreset::Ws2016, HostRelease::Ws2016),
        "ws2019" => (HostPreset::Ws2016, HostRelease::Ws2019),
        "ws2022" | "azure" => (HostPreset::Ws2022, HostRelease::Ws2022),
        "copper" | "6.0" => (HostPreset::Ws2022, HostRelease::Copper),
        "not-hyperv" | "kvm" => (HostPreset::NotHyperV, HostRelease::Ws2022),
        "bare-metal" | "none" => (HostPreset::BareMetal, HostRelease::Ws2022),
        _ => return None,
    };
    Some(DemoHost { preset, release })
}

/// What the demo runs against.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The emulated host.
    pub host: DemoHost,
    /// Colour the narration (ANSI escapes).
    pub colour: bool,
    /// Where the host saves its screenshots ([`STATUS_PNG`], [`TYPED_PNG`]); created if
    /// missing.
    pub screenshot_dir: PathBuf,
    /// The network part: Linux as the peer when possible, `--serve`.
    pub network: NetworkOptions,
}

/// Runs the demo, narrating to `out`, and returns each step's result.
pub fn run(options: DemoOptions, out: &mut impl Write) -> io::Result<Vec<StepResult>> {
    let mut n = narrator::Narrator::new(out, options.colour);
    n.title("Hyper-V enlightened guest in Rust: a simulated VM on the mock hypervisor")?;
    n.say(&format!(
        "emulated host: {:?} hypervisor, {} VMBus",
        options.host.preset,
        options.host.release.name()
    ))?;
    // 96 MiB of guest RAM: rings, the storvsc bounce buffer, KVP pages and the NICs' receive
    // and send buffers (16 + 1 MiB and 1 + 0.25 MiB) with room to spare.
    let hv = MockHypervisor::new(MockConfig::new(options.host.preset).with_memory_bytes(96 << 20));
    if platform::detect(&mut n, &hv)?.is_some()
        && let Some(vp) = platform::bring_up(&mut n, &hv)?
    {
        platform::time(&mut n, &hv, &vp)?;
        let mut host = MockVmbusHost::new(hv.clone(), options.host.release);
        let ics = IcHost::add_to(&mut host, IcHostConfig::default());
        let demo_disk = disk::offer(&mut host);
        let screen_host = screen::offer(&mut host, &hv, options.screenshot_dir.clone());
        let demo_network = network::offer(&mut host, options.network);
        let (clock, cpu) = (vp.clock, vp.cpu.clone());
        let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
        // One bus for every driver: the services, the disk and the live section all borrow
        // it at once.
        let guest = Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
        if bus::connect(&mut n, &mut host, &guest)? {
            let reference_now = Box::new(move || clock.now(&cpu));
            let mut before_shutdown =
                |n: &mut narrator::Narrator<'_>,
                 host: &mut MockVmbusHost,
                 guest: &Vmbus<_, _>,
                 services: &mut crate::guest_ics::GuestIcs<'_, _, _>| {
                    // What the drivers negotiated, for the status screen.
                    let mut versions = screen::ic_versions(services);
                    match &demo_disk {
                        Ok(d) => {
                            if let Some(v) = disk::run(n, host, guest, d)? {
                                versions.push((DeviceClass::Scsi, format!("VSTOR {v}")));
                            }
                            live::run(n, host, &ics, guest, services, d)?;
                        }
                        Err(e) => {
                            n.record("disk", Err(format!("no disk image: {e}")))?;
                        }
                    }
                    if let Some(v) = network::run(
                        n,
                        host,
                        &ics,
                        guest,
                        services,
                        &demo_network,
                        options.network,
                    )? {
                        versions.push((DeviceClass::Network, v));
                    }
                    screen::run(n, host, guest, &screen_host, &versions)
                };
            services::run(
                &mut n,
                &hv,
                &mut host,
                &ics,
                &guest,
                reference_now,
                &mut before_shutdown,
            )?;
        }
        // The refusals of connection 4 by a pre-5.0 host are the expected fallback path
        // (narrated in the VMBus section); anything else the mocks logged is an error.
        let mut errors: Vec<String> = hv
            .protocol_errors()
            .into_iter()
            .filter(|e| !bus::is_connection_4_refusal(e))
            .collect();
        errors.extend(host.protocol_errors());
        if !errors.is_empty() {
            for e in &errors {
                n.say(&format!("protocol error: {e}"))?;
            }
            n.record(
                "protocol errors",
                Err(format!(
                    "the mock host rejected {} guest actions",
                    errors.len()
                )),
            )?;
        }
    }
    n.summary()?;
    Ok(n.steps)
}
