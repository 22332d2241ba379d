//! Synthetic register (MSR) reads and writes with TLFS checks (protocol/vmbus-core.md §2).

use winhv::SyntheticRegister as R;

use super::memory::{GuestMemory, PAGE_SIZE};
use super::presets::{feature, privilege};
use super::state::{Fault, State};
use super::synic::{SINT_MASKED, enabled_page};
use super::timers;
use super::types::CrashReport;

/// CRASH_CTL CrashNotify.
const CRASH_NOTIFY: u64 = 1 << 63;
/// CRASH_CTL CrashMessage.
const CRASH_MESSAGE: u64 = 1 << 62;
/// CRASH_CTL defined bits: 63 notify, 62 message, 61 no crash dump, 60:58 pre-OS id.
const CRASH_DEFINED: u64 = 0b11_1111 << 58;

fn gp(msg: impl Into<String>) -> Fault {
    Fault::Gp(msg.into())
}

impl State {
    /// Checks that `reg` exists on this machine and the partition may access it.
    fn check_access(&self, reg: R) -> Result<(), Fault> {
        let Some(msr) = reg.x86_msr() else {
            return Err(gp(format!("unknown MSR {reg:?}")));
        };
        if !self.preset.is_hyper_v() {
            return Err(gp(format!("unknown MSR {msr:#x} (not Hyper-V)")));
        }
        let (privilege, feature) = match reg {
            R::GuestOsId | R::Hypercall => (privilege::HYPERCALL_MSRS, 0),
            R::VpIndex => (privilege::VP_INDEX, 0),
            R::TimeRefCount => (privilege::PARTITION_REFERENCE_COUNTER, 0),
            R::ReferenceTsc => (privilege::PARTITION_REFERENCE_TSC, 0),
            R::TscFrequency | R::ApicFrequency => {
                (privilege::FREQUENCY_REGS, feature::FREQUENCY_MSRS)
            }
            R::Scontrol | R::Sversion | R::Siefp | R::Simp | R::Eom | R::Sint(_) => {
                (privilege::SYNIC_REGS, 0)
            }
            R::StimerConfig(_) | R::StimerCount(_) => (privilege::SYNTHETIC_TIMER_REGS, 0),
            R::CrashParameter(_) | R::CrashControl => (0, feature::CRASH_MSRS),
        };
        if !self.has_privilege(privilege) {
            return Err(gp(format!(
                "MSR {msr:#x} ({reg:?}) needs privilege mask {privilege:#x}"
            )));
        }
        if !self.has_feature(feature) {
            return Err(gp(format!(
                "MSR {msr:#x} ({reg:?}) needs feature bit mask {feature:#x}"
            )));
        }
        Ok(())
    }

    /// RDMSR on VP `vp`.
    pub(crate) fn read_register(&mut self, vp: usize, reg: R) -> Result<u64, Fault> {
        self.check_access(reg)?;
        let v = &self.vps[vp];
        Ok(match reg {
            R::GuestOsId => self.guest_os_id,
            R::Hypercall => self.hypercall_msr,
            R::VpIndex => vp as u64,
            R::TimeRefCount => {
                self.clock.counter_reads += 1;
                self.clock.now
            }
            R::ReferenceTsc => self.clock.reference_tsc_msr,
            R::TscFrequency => self.tsc_frequency,
            R::ApicFrequency => self.apic_frequency,
            R::Scontrol => v.synic.scontrol,
            R::Sversion => 1,
            R::Siefp => v.synic.siefp,
            R::Simp => v.synic.simp,
            R::Eom => 0,
            R::Sint(n) => v.synic.sints[usize::from(n)],
            R::StimerConfig(n) => v.timers[usize::from(n)].config,
            R::StimerCount(n) => v.timers[usize::from(n)].count,
            R::CrashParameter(n) => self.crash_parameters[usize::from(n)],
            R::CrashControl => CRASH_NOTIFY | CRASH_MESSAGE,
        })
    }

    /// WRMSR on VP `vp`.
    pub(crate) fn write_register(
        &mut self,
        mem: &GuestMemory,
        vp: usize,
        reg: R,
        value: u64,
    ) -> Result<(), Fault> {
        self.check_access(reg)?;
        match reg {
            R::VpIndex | R::TimeRefCount | R::TscFrequency | R::ApicFrequency | R::Sversion => {
                return Err(gp(format!("write of {value:#x} to read-only {reg:?}")));
            }
            R::GuestOsId => {
                self.guest_os_id = value;
                if value == 0 {
                    // Clearing the guest OS id disables the hypercall page.
                    self.hypercall_msr &= !1;
                    self.set_hypercall_page(mem, None);
                }
            }
            R::Hypercall => self.write_hypercall_msr(mem, value)?,
            R::ReferenceTsc => {
                self.check_overlay_gpn(mem, reg, value)?;
                self.clock.reference_tsc_msr = value;
                self.tsc_page.set(mem, enabled_page(value));
                self.clock.publish(mem);
            }
            R::Scontrol => {
                self.vps[vp].synic.scontrol = value;
                self.scan_all(mem, vp);
            }
            R::Simp => {
                self.check_overlay_gpn(mem, reg, value)?;
                self.vps[vp].synic.simp = value;
                self.vps[vp].simp_page.set(mem, enabled_page(value));
                self.scan_all(mem, vp);
            }
            R::Siefp => {
                self.check_overlay_gpn(mem, reg, value)?;
                self.vps[vp].synic.siefp = value;
                self.vps[vp].siefp_page.set(mem, enabled_page(value));
            }
            R::Eom => {
                self.vps[vp].eom_count += 1;
                self.scan_all(mem, vp);
            }
            R::Sint(n) => {
                if value & SINT_MASKED == 0 && (value & 0xFF) < 16 {
                    return Err(gp(format!(
                        "SINT{n} unmasked with vector {:#x} < 16",
                        value & 0xFF
                    )));
                }
                self.vps[vp].synic.sints[usize::from(n)] = value;
                self.scan(mem, vp, usize::from(n));
            }
            R::StimerConfig(n) => {
                if value & timers::RESERVED != 0 {
                    return Err(gp(format!(
                        "STIMER{n}_CONFIG reserved bits set in {value:#x}"
                    )));
                }
                if value & timers::DIRECT != 0
                    && !self.has_feature(feature::DIRECT_SYNTHETIC_TIMERS)
                {
                    return Err(gp(format!(
                        "STIMER{n}_CONFIG direct mode without CPUID 0x40000003 EDX bit 19"
                    )));
                }
                let now = self.clock.now;
                if let Some(note) = self.vps[vp].timers[usize::from(n)].write_config(value, now) {
                    self.error(note);
                }
                self.run_timers(mem, now);
            }
            R::StimerCount(n) => {
                let now = self.clock.now;
                self.vps[vp].timers[usize::from(n)].write_count(value, now);
                self.run_timers(mem, now);
            }
            R::CrashParameter(n) => self.crash_parameters[usize::from(n)] = value,
            R::CrashControl => self.write_crash_control(mem, value)?,
        }
        *self.register_writes.entry((vp, reg)).or_default() += 1;
        Ok(())
    }

    /// An overlay register (bit 0 enable, 63:12 GPN) being enabled must name a RAM page.
    fn check_overlay_gpn(&self, mem: &GuestMemory, reg: R, value: u64) -> Result<(), Fault> {
        match enabled_page(value) {
            Some(gpa) if !mem.in_ram(gpa, PAGE_SIZE) => Err(gp(format!(
                "{reg:?} enabled with GPA {gpa:#x} outside guest RAM"
            ))),
            _ => Ok(()),
        }
    }

    fn write_hypercall_msr(&mut self, mem: &GuestMemory, value: u64) -> Result<(), Fault> {
        const LOCKED: u64 = 1 << 1;
        if self.hypercall_msr & LOCKED != 0 {
            self.error(format!("write {value:#x} to locked HYPERCALL MSR ignored"));
            return Ok(());
        }
        if value & LOCKED != 0 && !self.has_feature(feature::HYPERCALL_MSR_LOCK) {
            return Err(gp(
                "HYPERCALL lock bit set without CPUID 0x40000003 EDX bit 18",
            ));
        }
        self.check_overlay_gpn(mem, R::Hypercall, value)?;
        let mut value = value;
        if self.guest_os_id == 0 && value & 1 != 0 {
            // TLFS: the enable bit stays clear until a guest OS id is set.
            self.error("HYPERCALL enabled while GUEST_OS_ID is 0: enable bit stays clear");
            value &= !1;
        }
        self.hypercall_msr = value;
        self.set_hypercall_page(mem, enabled_page(value));
        Ok(())
    }

    fn write_crash_control(&mut self, mem: &GuestMemory, value: u64) -> Result<(), Fault> {
        if value & !CRASH_DEFINED != 0 {
            return Err(gp(format!("CRASH_CTL reserved bits set in {value:#x}")));
        }
        if value & CRASH_NOTIFY == 0 {
            return Ok(());
        }
        let mut message = None;
        if value & CRASH_MESSAGE != 0 {
            let [_, _, _, gpa, len] = self.crash_parameters;
            if len > 4096 {
                self.error(format!("crash message length {len} exceeds 4096"));
            } else if let Some(bytes) = mem.read(gpa, len as usize) {
                message = Some(bytes);
            } else {
                self.error(format!(
                    "crash message at GPA {gpa:#x} length {len} outside guest RAM"
                ));
            }
        }
        self.crash_report = Some(CrashReport {
            parameters: self.crash_parameters,
            control: value,
            message,
        });
        Ok(())
    }
}
