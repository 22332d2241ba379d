//! The narrated demo: a simulated Hyper-V VM brought up step by step with the real guest
//! libraries on top of the mock hypervisor, ending with a summary table.
//!
//! The narration goes to any `io::Write`, so the binary prints it and the tests check it.

use std::fmt::Write as _;
use std::io::{self, Write};

use winhv::synic::VMBUS_MESSAGE_SINT;
use winhv::timer::TimerExpiredPayload;
use winhv::{Cpu, SyntheticRegister, SyntheticTimer, TimerDelivery};

use crate::guest::{VMBUS_VECTOR, boot_vp};
use crate::hv::{HostPreset, MockConfig, MockHypervisor};

/// What the demo runs against.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// The emulated host release.
    pub host: HostPreset,
    /// Colour the narration (ANSI escapes).
    pub colour: bool,
}

/// One line of the closing summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    /// The step's name.
    pub step: &'static str,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it found, in a few words.
    pub detail: String,
}

/// Parses a host release name as accepted by `--host`.
pub fn parse_host(name: &str) -> Option<HostPreset> {
    match name.to_ascii_lowercase().as_str() {
        "ws2016" | "2016" => Some(HostPreset::Ws2016),
        "ws2022" | "2022" | "azure" => Some(HostPreset::Ws2022),
        "not-hyperv" | "kvm" => Some(HostPreset::NotHyperV),
        "bare-metal" | "none" => Some(HostPreset::BareMetal),
        _ => None,
    }
}

struct Narrator<'w, W: Write> {
    out: &'w mut W,
    colour: bool,
    steps: Vec<StepResult>,
}

impl<W: Write> Narrator<'_, W> {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn section(&mut self, title: &str) -> io::Result<()> {
        let line = self.paint("1;36", &format!("== {title}"));
        writeln!(self.out, "\n{line}")
    }

    fn say(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.out, "   {text}")
    }

    fn record(&mut self, step: &'static str, result: Result<String, String>) -> io::Result<bool> {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        let mark = if ok {
            self.paint("32", "ok ")
        } else {
            self.paint("31", "FAIL")
        };
        writeln!(self.out, "   [{mark}] {step}: {detail}")?;
        self.steps.push(StepResult { step, ok, detail });
        Ok(ok)
    }
}

/// Runs the demo, narrating to `out`, and returns each step's result.
pub fn run(options: DemoOptions, out: &mut impl Write) -> io::Result<Vec<StepResult>> {
    let mut n = Narrator {
        out,
        colour: options.colour,
        steps: Vec::new(),
    };
    let mock = MockHypervisor::new(MockConfig::new(options.host));
    writeln!(
        n.out,
        "{}",
        n.paint(
            "1",
            "Hyper-V enlightened guest in Rust: a simulated VM on the mock hypervisor"
        )
    )?;
    n.say(&format!("emulated host: {:?}", options.host))?;

    n.section("Detection (CPUID 0x40000000..0x40000005)")?;
    let info = match winhv::detect(&mock.vp(0)) {
        Ok(info) => info,
        Err(e) => {
            n.record("detect Hyper-V", Err(e.to_string()))?;
            summary(&mut n)?;
            return Ok(n.steps);
        }
    };
    n.say(&format!(
        "vendor        {:?}",
        info.vendor_str().unwrap_or("?")
    ))?;
    n.say(&format!("version       {}", info.version))?;
    let mut privileges = String::new();
    for (name, _) in info.privileges.iter_names() {
        let _ = write!(privileges, "{name} ");
    }
    n.say(&format!("privileges    {privileges}"))?;
    let mut features = String::new();
    for (name, _) in info.features.iter_names() {
        let _ = write!(features, "{name} ");
    }
    n.say(&format!("features      {features}"))?;
    let mut recommendations = String::new();
    for (name, _) in info.recommendations.iter_names() {
        let _ = write!(recommendations, "{name} ");
    }
    n.say(&format!("recommended   {recommendations}"))?;
    n.record(
        "detect Hyper-V",
        Ok(format!(
            "{} {}",
            info.vendor_str().unwrap_or("?"),
            info.version
        )),
    )?;

    n.section("Bring-up: guest OS id, hypercall page, SynIC, reference TSC page")?;
    let vp = match boot_vp(&mock, 0) {
        Ok(vp) => vp,
        Err(e) => {
            n.record("bring-up", Err(e.to_string()))?;
            summary(&mut n)?;
            return Ok(n.steps);
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

    n.section("Time: reference counter, TSC page, synthetic timer")?;
    mock.advance_time(12_345_678);
    let counter = winhv::time::read_reference_counter(&vp.cpu);
    let via_page = vp.clock.now(&vp.cpu);
    match winhv::time::tsc_frequency(&vp.cpu, &vp.info) {
        Ok(hz) => n.say(&format!("TSC frequency {:.3} GHz", hz as f64 / 1e9))?,
        Err(e) => n.say(&format!("TSC frequency unavailable: {e}"))?,
    }
    n.say(&format!(
        "reference time {counter} x 100 ns via TIME_REF_COUNT, {via_page} via the TSC page"
    ))?;
    let clock_ok = counter.abs_diff(via_page) <= 1;
    n.record(
        "reference clock",
        if clock_ok {
            Ok(format!(
                "{:.4} s since boot; TSC page agrees",
                counter as f64 / 1e7
            ))
        } else {
            Err(format!("TSC page says {via_page}, counter says {counter}"))
        },
    )?;
    let timer_result = (|| -> Result<String, String> {
        let timer = SyntheticTimer::new(
            &vp.info,
            0,
            TimerDelivery::Message {
                sint: VMBUS_MESSAGE_SINT,
            },
        )
        .map_err(|e| e.to_string())?;
        let deadline = mock.reference_time() + 10_000;
        timer.arm_one_shot(&vp.cpu, deadline);
        mock.advance_time(10_000);
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

    if !mock.protocol_errors().is_empty() {
        for e in mock.protocol_errors() {
            n.say(&format!("protocol error: {e}"))?;
        }
        n.record(
            "protocol errors",
            Err("the mock rejected guest actions".into()),
        )?;
    }
    summary(&mut n)?;
    Ok(n.steps)
}

fn summary<W: Write>(n: &mut Narrator<'_, W>) -> io::Result<()> {
    n.section("Summary")?;
    let width = n.steps.iter().map(|s| s.step.len()).max().unwrap_or(0);
    let rows: Vec<String> = n
        .steps
        .iter()
        .map(|s| {
            let mark = if s.ok {
                n.paint("32", "ok  ")
            } else {
                n.paint("31", "FAIL")
            };
            format!("{mark}  {:width$}  {}", s.step, s.detail)
        })
        .collect();
    for row in rows {
        n.say(&row)?;
    }
    Ok(())
}
