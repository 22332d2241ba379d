//! Demo part one: detection, bring-up of one virtual processor, and time.

use std::fmt::Write as _;
use std::io;

use winhv::synic::VMBUS_MESSAGE_SINT;
use winhv::timer::TimerExpiredPayload;
use winhv::{Cpu, HypervInfo, SyntheticRegister, SyntheticTimer, TimerDelivery};

use super::narrator::Narrator;
use crate::guest::{BootedVp, VMBUS_VECTOR, boot_vp};
use crate::hv::MockHypervisor;

fn names<I: Iterator<Item = (&'static str, T)>, T>(flags: I) -> String {
    let mut text = String::new();
    for (name, _) in flags {
        let _ = write!(text, "{name} ");
    }
    text
}

/// Detects Hyper-V and narrates what CPUID says; `None` when it is not Hyper-V.
pub fn detect(n: &mut Narrator<'_>, hv: &MockHypervisor) -> io::Result<Option<HypervInfo>> {
    n.section("Detection (CPUID 0x40000000..0x40000005)")?;
    let info = match winhv::detect(&hv.vp(0)) {
        Ok(info) => info,
        Err(e) => {
            n.record("detect Hyper-V", Err(e.to_string()))?;
            return Ok(None);
        }
    };
    n.say(&format!(
        "vendor        {:?}",
        info.vendor_str().unwrap_or("?")
    ))?;
    n.say(&format!("version       {}", info.version))?;
    n.say(&format!(
        "privileges    {}",
        names(info.privileges.iter_names())
    ))?;
    n.say(&format!(
        "features      {}",
        names(info.features.iter_names())
    ))?;
    n.say(&format!(
        "recommended   {}",
        names(info.recommendations.iter_names())
    ))?;
    n.record(
        "detect Hyper-V",
        Ok(format!(
            "{} {}",
            info.vendor_str().unwrap_or("?"),
            info.version
        )),
    )?;
    Ok(Some(info))
}

/// Brings up VP 0 (guest OS id, hypercall page, SynIC, TSC page) and narrates the registers.
pub fn bring_up(n: &mut Narrator<'_>, hv: &MockHypervisor) -> io::Result<Option<BootedVp>> {
    n.section("Bring-up: guest OS id, hypercall page, SynIC, reference TSC page")?;
    let vp = match boot_vp(hv, 0) {
        Ok(vp) => vp,
        Err(e) => {
            n.record("bring-up", Err(e.to_string()))?;
            return Ok(None);
        }
    };
    let guest_id = vp.cpu.read_register(SyntheticRegister::GuestOsId);
    let hypercall = vp.cpu.read_register(SyntheticRegister::Hypercall);
    n.say(&format!(
        "GUEST_OS_ID   {guest_id:#018x} (open-source encoding)"
    ))?;
    n.say(&format!(
        "HYPERCALL     {hypercall:#x} (page at GPA {:#x}, enabled)",
        hypercall & !0xFFF
    ))?;
    let sint = vp
        .cpu
        .read_register(SyntheticRegister::Sint(VMBUS_MESSAGE_SINT));
    n.say(&format!(
        "SINT{VMBUS_MESSAGE_SINT}         vector {:#x}, {}",
        sint & 0xFF,
        if sint & (1 << 17) != 0 {
            "AutoEOI"
        } else {
            "explicit EOI (AutoEOI deprecated by the host)"
        }
    ))?;
    n.record(
        "bring-up",
        Ok(format!(
            "SynIC up, VMBus SINT {VMBUS_MESSAGE_SINT} -> vector {VMBUS_VECTOR:#x}"
        )),
    )?;
    Ok(Some(vp))
}

/// Reads reference time both ways and fires a synthetic timer.
pub fn time(n: &mut Narrator<'_>, hv: &MockHypervisor, vp: &BootedVp) -> io::Result<()> {
    n.section("Time: reference counter, TSC page, synthetic timer")?;
    hv.advance_time(12_345_678);
    let counter = winhv::time::read_reference_counter(&vp.cpu);
    let via_page = vp.clock.now(&vp.cpu);
    match winhv::time::tsc_frequency(&vp.cpu, &vp.info) {
        Ok(hz) => n.say(&format!("TSC frequency {:.3} GHz", hz as f64 / 1e9))?,
        Err(e) => n.say(&format!("TSC frequency unavailable: {e}"))?,
    }
    n.say(&format!(
        "reference time {counter} x 100 ns via TIME_REF_COUNT, {via_page} via the TSC page"
    ))?;
    n.record(
        "reference clock",
        if counter.abs_diff(via_page) <= 1 {
            Ok(format!(
                "{:.4} s since boot; TSC page agrees",
                counter as f64 / 1e7
            ))
        } else {
            Err(format!("TSC page says {via_page}, counter says {counter}"))
        },
    )?;
    let timer_result = (|| -> Result<String, String> {
        let delivery = TimerDelivery::Message {
            sint: VMBUS_MESSAGE_SINT,
        };
        let timer = SyntheticTimer::new(&vp.info, 0, delivery).map_err(|e| e.to_string())?;
        let deadline = hv.reference_time() + 10_000;
        timer.arm_one_shot(&vp.cpu, deadline);
        hv.advance_time(10_000);
        let message = vp
            .synic
            .take_message(&vp.cpu, VMBUS_MESSAGE_SINT)
            .map_err(|e| e.to_string())?
            .ok_or("no timer message arrived")?;
        let expired = TimerExpiredPayload::parse(&message).ok_or("not a timer message")?;
        Ok(format!(
            "stimer{} one-shot expired at {} (due {})",
            expired.timer_index, expired.delivery_time, expired.expiration_time
        ))
    })();
    n.record("synthetic timer", timer_result)?;
    Ok(())
}
