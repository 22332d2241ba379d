//! Demo part three: the integration services — negotiation, heartbeats, a KVP exchange, time
//! sync and a host shutdown request honoured by the guest.

use std::io;
use std::sync::{Arc, Mutex};

use ic_services::IcEvent;
use ic_services::protocol::KvpPool;
use ic_services::shutdown::ShutdownRequest;
use ic_services::timesync::UnixTime;
use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::{Hal, Transport, Vmbus};

use super::narrator::Narrator;
use crate::guest_ics::{GuestIcs, ReferenceNowFn, settle};
use crate::hv::MockHypervisor;
use crate::ic::shutdown::{ShutdownKind, ShutdownOutcome};
use crate::ic::{IcHost, Negotiation};
use crate::vmbus::MockVmbusHost;

/// The guest side of the demo's services, and what the OS saw.
struct Guest<'a, T: Transport, H: Hal> {
    bus: &'a Vmbus<T, H>,
    services: GuestIcs<'a, T, H>,
    events: Vec<(DeviceClass, IcEvent)>,
}

impl<T: Transport, H: Hal> Guest<'_, T, H> {
    fn settle(&mut self, host: &mut MockVmbusHost) -> Result<(), String> {
        let events = &mut self.events;
        settle(host, self.bus, &mut self.services, |c, e| {
            events.push((c, e))
        })
    }
}

/// `2024-01-01 00:00:00.123 UTC` from Unix time (proleptic Gregorian calendar).
pub fn format_utc(t: UnixTime) -> String {
    let days = (t.secs / 86_400) as i64;
    let rem = t.secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        t.nanos / 1_000_000
    )
}

/// What runs between time sync and the closing shutdown request (the disk part and the
/// "everything at once" part), with the shared bus and the open services, which it keeps
/// serving.
pub type BeforeShutdown<'a, 'b, T, H> = &'a mut dyn FnMut(
    &mut Narrator<'_>,
    &mut MockVmbusHost,
    &'b Vmbus<T, H>,
    &mut GuestIcs<'b, T, H>,
) -> io::Result<()>;

/// Runs the services part of the demo on the connected `bus`; `before_shutdown` runs while the
/// services are up, just before the host asks the guest to shut down. The services' channels
/// are closed at the end.
pub fn run<'b, T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    hv: &MockHypervisor,
    host: &mut MockVmbusHost,
    ics: &IcHost,
    bus: &'b Vmbus<T, H>,
    reference_now: ReferenceNowFn,
    before_shutdown: BeforeShutdown<'_, 'b, T, H>,
) -> io::Result<()> {
    n.section("Integration services: open, negotiate")?;
    let decisions: Arc<Mutex<Vec<ShutdownRequest>>> = Arc::default();
    let seen = decisions.clone();
    let policy = Box::new(move |request: &ShutdownRequest| {
        seen.lock().map(|mut s| s.push(*request)).is_ok()
    });
    let mut waiter = vmbus_guest::BoundedWait::new(500, || {
        host.step();
    });
    let services = match GuestIcs::open(bus, &mut waiter, policy, reference_now) {
        Ok(s) => s,
        Err(e) => {
            n.record("integration services", Err(e.to_string()))?;
            return Ok(());
        }
    };
    let mut guest = Guest {
        bus,
        services,
        events: Vec::new(),
    };
    if let Err(e) = guest.settle(host) {
        n.record("integration services", Err(e))?;
        return Ok(());
    }
    let negotiations = [
        ("heartbeat", ics.heartbeat.negotiation()),
        ("shutdown", ics.shutdown.negotiation()),
        ("time sync", ics.timesync.negotiation()),
        ("KVP", ics.kvp.negotiation()),
    ];
    let mut all = true;
    for (name, negotiation) in negotiations {
        match negotiation {
            Negotiation::Done { framework, service } => n.say(&format!(
                "{name:<10} framework {}.{}, service {}.{}",
                framework.major, framework.minor, service.major, service.minor
            ))?,
            other => {
                all = false;
                n.say(&format!("{name:<10} {other:?}"))?;
            }
        }
    }
    n.record(
        "IC negotiation",
        if all {
            Ok("heartbeat, shutdown, time sync and KVP negotiated".into())
        } else {
            Err("a service did not negotiate".into())
        },
    )?;

    n.section("Heartbeat")?;
    for _ in 0..3 {
        ics.heartbeat.beat_now();
        let _ = guest.settle(host);
    }
    let beats = ics.heartbeat.beats();
    n.say(&format!(
        "host sent 3 heartbeats, {beats} answered with sequence + 1"
    ))?;
    n.record(
        "heartbeat",
        if beats == 3 {
            Ok(format!("{beats} healthy beats"))
        } else {
            Err(format!("{beats} of 3 answered"))
        },
    )?;

    n.section("KVP: the host reads the guest, the guest receives a host value")?;
    let mut os_name = None;
    for index in 0..16 {
        ics.kvp.enumerate(KvpPool::AUTO.0, index);
        let _ = guest.settle(host);
        let Some(reply) = ics.kvp.last_reply() else {
            break;
        };
        if !reply.is_ok() {
            break;
        }
        let key = reply.key.clone().unwrap_or_default();
        let value = reply.value_str().unwrap_or_default().to_string();
        n.say(&format!("host reads {key:<28} = {value}"))?;
        if key == "OSName" {
            os_name = Some(value);
        }
    }
    ics.kvp
        .set(KvpPool::EXTERNAL.0, "VirtualMachineName", "demo-vm-01");
    let _ = guest.settle(host);
    let pushed = guest
        .services
        .kvp
        .service()
        .handler()
        .get(KvpPool::EXTERNAL, "VirtualMachineName");
    let pushed_value = pushed.and_then(|e| match e.value() {
        ic_services::kvp::KvpValue::String(s) => Some(s.chars().collect::<String>()),
        _ => None,
    });
    if let Some(v) = &pushed_value {
        n.say(&format!(
            "guest received VirtualMachineName = {v} from the host"
        ))?;
    }
    n.record(
        "KVP exchange",
        match (&os_name, &pushed_value) {
            (Some(os), Some(v)) => Ok(format!("host read OSName \"{os}\"; guest got \"{v}\"")),
            _ => Err("KVP exchange incomplete".into()),
        },
    )?;

    n.section("Time sync")?;
    hv.advance_time(3 * 10_000_000);
    ics.timesync.sample_now();
    let _ = guest.settle(host);
    hv.advance_time(2_500_000);
    let utc = guest
        .services
        .timesync
        .service_mut()
        .handler_mut()
        .utc_now();
    let result = match utc {
        Ok(t) => {
            n.say(&format!(
                "host sample received; 0.25 s later the guest computes {}",
                format_utc(t)
            ))?;
            Ok(format!("guest UTC {}", format_utc(t)))
        }
        Err(e) => Err(e.to_string()),
    };
    n.record("time sync", result)?;

    before_shutdown(n, host, guest.bus, &mut guest.services)?;

    n.section("Shutdown requested by the host")?;
    ics.shutdown
        .request_shutdown(ShutdownKind::Shutdown, false, 0x8000_0000, 30);
    let _ = guest.settle(host);
    let asked = guest.events.iter().find_map(|(c, e)| match e {
        IcEvent::ShutdownRequested(r) if *c == DeviceClass::Shutdown => Some(*r),
        _ => None,
    });
    if let Some(r) = asked {
        n.say(&format!(
            "guest policy saw {:?} (force: {}, timeout {} s), accepted, answered S_OK",
            r.kind, r.force, r.timeout_seconds
        ))?;
        n.say("the OS would now stop its services and power off")?;
    }
    n.record(
        "shutdown honoured",
        match (ics.shutdown.outcome(), asked) {
            (ShutdownOutcome::Accepted, Some(_)) => Ok("host saw S_OK before the power-off".into()),
            (outcome, _) => Err(format!("host outcome {outcome:?}")),
        },
    )?;
    // The OS stops its services: close the channels (rings freed after GPADL_TORNDOWN).
    let mut waiter = vmbus_guest::BoundedWait::new(500, || {
        host.step();
    });
    if !guest.services.close(&mut waiter).is_freed() {
        n.say("an IC channel's ring memory could not be freed (leaked)")?;
    }
    Ok(())
}
