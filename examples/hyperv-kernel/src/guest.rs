//! The guest on Hyper-V, in the order the demo in `test-harness` runs it on the mock:
//! memory and interrupts, hypervisor bring-up, the VMBus connection, the integration services,
//! the disks, the network, the status screen — then the idle loop, answering the host until it
//! asks for a shutdown.

use smoltcp::iface::SocketStorage;
use vmbus_guest::protocol::DeviceClass;
use winhv::HypervInfo;

use crate::hyperv::{self, Bus, SECOND};
use crate::interrupts::{self, TIMER_TICKS, VMBUS_INTERRUPTS};
use crate::keyboard::Keyboard;
use crate::multiboot2::BootInfo;
use crate::net::Net;
use crate::power::{self, ExitCode};
use crate::screen::Screen;
use crate::services::{Services, Utc};
use crate::status::{Line, Status, line};
use crate::{apic, disk, memory, println};
use core::sync::atomic::Ordering;
use ic_services::shutdown::{ShutdownKind, ShutdownRequest};

/// Brings the whole stack up and serves the host until it asks the guest to shut down.
pub fn run(info: &HypervInfo, boot: &BootInfo) -> ! {
    let (free, total) = memory::init(boot);
    println!(
        "memory: {} MiB free for the drivers of {} MiB in the memory map (identity mapped, below 4 GiB)",
        free >> 8,
        total >> 8
    );
    apic::mask_legacy_pic();
    interrupts::init();
    println!(
        "interrupts: GDT, TSS (IST stacks), IDT loaded; local {} enabled",
        apic::init()
    );

    let bus = match hyperv::bring_up(info) {
        Ok(bus) => bus,
        Err(e) => {
            println!("hyperv: bring-up failed: {e}");
            power::exit(ExitCode::Failure);
        }
    };
    let mut status = Status::default();
    if !connect(bus, info, &mut status) {
        power::exit(ExitCode::Failure);
    }

    let mut services = Services::new();
    services.open(bus);
    disk::survey(bus, &mut status);
    let mut sockets = [SocketStorage::EMPTY; 1];
    let mut net = Net::open(bus, &mut sockets, &mut status);
    let mut screen = Screen::open(bus, boot.framebuffer, &mut status);
    let mut keyboard = Keyboard::open(bus);
    if let Some(s) = screen.as_mut() {
        s.draw(&status, &live_line(&mut services));
    }
    println!(
        "idle: answering the host; {} MiB free; shut the VM down from the host to power it off",
        memory::free_pages() >> 8
    );

    let mut devices = Devices {
        services: &mut services,
        net: &mut net,
        screen: &mut screen,
        keyboard: &mut keyboard,
    };
    let request = idle(bus, &mut devices, &mut status);
    shut_down(bus, request, screen)
}

/// VMBus version negotiation and the offer table.
fn connect(bus: &'static Bus, info: &HypervInfo, status: &mut Status) -> bool {
    let mut waiter = hyperv::waiter(10 * SECOND);
    let version = match bus.connect(&mut waiter) {
        Ok(version) => version,
        Err(e) => {
            println!("vmbus: connect failed: {e}");
            return false;
        }
    };
    println!("vmbus: connected, version {version}");
    status.host = line(format_args!("Hyper-V {}, VMBus {version}", info.version));
    let mut offered = heapless::Vec::<DeviceClass, 16>::new();
    bus.with_offers(|table| {
        for offer in table.iter() {
            println!(
                "vmbus: offer relid {:>2}  {:<12} {}",
                offer.relid,
                offer.class.short_name(),
                offer.interface_instance
            );
            if !offered.contains(&offer.class) {
                let _ = offered.push(offer.class);
            }
        }
    });
    let mut names = Line::new();
    for (i, class) in offered.iter().enumerate() {
        let _ = names.push_str(if i > 0 { ", " } else { "" });
        let _ = names.push_str(class.short_name());
    }
    status.offers = names;
    true
}

/// The bottom line of the status screen.
fn live_line(services: &mut Services) -> Line {
    let up = hyperv::now() / SECOND;
    let mut l = line(format_args!(
        "up {:02}:{:02}:{:02}   heartbeats {}   interrupts {} VMBus, {} timer",
        up / 3600,
        up / 60 % 60,
        up % 60,
        services.beats,
        VMBUS_INTERRUPTS.load(Ordering::Relaxed),
        TIMER_TICKS.load(Ordering::Relaxed)
    ));
    if let Some(t) = services.utc_now() {
        let _ = core::fmt::write(&mut l, format_args!("   {}", Utc(t)));
    }
    l
}

/// What the idle loop serves (a device that failed is dropped from its slot).
struct Devices<'a, 's> {
    services: &'a mut Services,
    net: &'a mut Option<Net<'s>>,
    screen: &'a mut Option<Screen>,
    keyboard: &'a mut Option<Keyboard>,
}

/// Serves the host until it asks for a shutdown: bus control messages, the services, the
/// network, the keyboard, the screen; halts between rounds when nothing is left to do.
fn idle(bus: &'static Bus, devices: &mut Devices<'_, '_>, status: &mut Status) -> ShutdownRequest {
    let Devices {
        services,
        net,
        screen,
        keyboard,
    } = devices;
    let mut next_redraw = 0;
    let mut drawn_network = status.network.clone();
    loop {
        // The interrupt handler already did this on each VMBus interrupt; doing it here too
        // keeps the loop correct when waits spin (no idle tick).
        let control = bus.handle_interrupt().control | hyperv::take_control_pending();
        if control {
            while bus.poll().control {}
        }
        let (request, mut busy) = services.poll();
        if let Some(request) = request {
            // The S_OK reply may still wait for room in the ring: give it a few rounds.
            for _ in 0..16 {
                if !services.poll().1 {
                    break;
                }
                hyperv::relax();
            }
            return request;
        }
        if let Some(n) = net.as_mut() {
            busy |= n.poll(services, status);
        }
        let mut typed = false;
        if let Some(k) = keyboard.as_mut() {
            match k.poll(status) {
                Ok(changed) => typed = changed,
                Err(e) => {
                    println!("keyboard: stopped: {e}");
                    **keyboard = None;
                }
            }
        }
        if let Some(s) = screen.as_mut() {
            if !s.poll() {
                **screen = None;
            } else if status.network != drawn_network || typed {
                drawn_network = status.network.clone();
                s.draw(status, &live_line(services));
            } else if hyperv::now() >= next_redraw {
                next_redraw = hyperv::now() + SECOND;
                s.draw_live(&live_line(services));
            }
        }
        if !busy {
            hyperv::relax();
        }
    }
}

/// Honours the host's request: closes the screen, unloads VMBus (the host releases every
/// channel and GPADL), then powers off or restarts.
fn shut_down(bus: &'static Bus, request: ShutdownRequest, screen: Option<Screen>) -> ! {
    println!(
        "shutdown: the host asked for {:?}{}; accepted",
        request.kind,
        if request.force { " (forced)" } else { "" }
    );
    if let Some(s) = screen {
        s.close();
    }
    let mut waiter = hyperv::waiter(5 * SECOND);
    match bus.unload(&mut waiter) {
        Ok(()) => println!("shutdown: VMBus unloaded"),
        Err(e) => println!("shutdown: VMBus unload: {e}"),
    }
    if request.kind == ShutdownKind::Restart {
        power::restart();
    }
    power::exit(ExitCode::Clean)
}
