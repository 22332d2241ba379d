//! Hyper-V detection: the CPUID leaves that say whether we run on Hyper-V, which version, and
//! what this partition is allowed and recommended to do.

use core::fmt;

use bitflags::bitflags;

use crate::cpu::Cpu;

/// CPUID leaf 1, ECX bit 31: a hypervisor is present.
const LEAF1_HYPERVISOR_PRESENT: u32 = 1 << 31;
/// Vendor and maximum leaf.
const LEAF_VENDOR: u32 = 0x4000_0000;
/// Interface signature.
const LEAF_INTERFACE: u32 = 0x4000_0001;
/// Hypervisor version.
const LEAF_VERSION: u32 = 0x4000_0002;
/// Privileges and features.
const LEAF_FEATURES: u32 = 0x4000_0003;
/// Implementation recommendations.
const LEAF_RECOMMENDATIONS: u32 = 0x4000_0004;
/// Implementation limits.
const LEAF_LIMITS: u32 = 0x4000_0005;
/// The "Hv#1" interface signature in CPUID 0x40000001 EAX.
pub const HV_INTERFACE_SIGNATURE: u32 = 0x3123_7648;
/// The lowest maximum leaf Microsoft guarantees.
const MIN_MAX_LEAF: u32 = 0x4000_0005;
/// Linux rejects anything above this as not a Hyper-V leaf range.
const MAX_MAX_LEAF: u32 = 0x4000_FFFF;

bitflags! {
    /// Partition privilege mask (CPUID 0x40000003 EAX = bits 31:0, EBX = bits 63:32).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Privileges: u64 {
        /// VP_RUNTIME register.
        const ACCESS_VP_RUNTIME = 1 << 0;
        /// TIME_REF_COUNT register (partition reference counter).
        const ACCESS_PARTITION_REFERENCE_COUNTER = 1 << 1;
        /// SynIC registers (SCONTROL, SIMP, SIEFP, EOM, SINTx).
        const ACCESS_SYNIC_REGS = 1 << 2;
        /// Synthetic timer registers.
        const ACCESS_SYNTHETIC_TIMER_REGS = 1 << 3;
        /// APIC EOI/ICR/TPR registers.
        const ACCESS_INTR_CTRL_REGS = 1 << 4;
        /// GUEST_OS_ID and HYPERCALL registers.
        const ACCESS_HYPERCALL_MSRS = 1 << 5;
        /// VP_INDEX register.
        const ACCESS_VP_INDEX = 1 << 6;
        /// RESET register.
        const ACCESS_RESET_REG = 1 << 7;
        /// Statistics pages.
        const ACCESS_STATS_REG = 1 << 8;
        /// REFERENCE_TSC register (TSC page).
        const ACCESS_PARTITION_REFERENCE_TSC = 1 << 9;
        /// GUEST_IDLE register.
        const ACCESS_GUEST_IDLE_REG = 1 << 10;
        /// TSC_FREQUENCY and APIC_FREQUENCY registers.
        const ACCESS_FREQUENCY_REGS = 1 << 11;
        /// Synthetic debug registers.
        const ACCESS_DEBUG_REGS = 1 << 12;
        /// Reenlightenment controls.
        const ACCESS_REENLIGHTENMENT_CONTROLS = 1 << 13;
        /// TSC_INVARIANT_CONTROL register.
        const ACCESS_TSC_INVARIANT_CONTROLS = 1 << 15;
        /// HvCallPostMessage.
        const POST_MESSAGES = 1 << 36;
        /// HvCallSignalEvent.
        const SIGNAL_EVENTS = 1 << 37;
        /// Debug hypercalls.
        const DEBUGGING = 1 << 43;
        /// HvCallGet/SetVpRegisters on the calling VP.
        const ACCESS_VP_REGISTERS = 1 << 49;
        /// Fast hypercall output in registers.
        const FAST_HYPERCALL_OUTPUT = 1 << 51;
        /// Extended hypercalls (call codes 0x8000 and above).
        const ENABLE_EXTENDED_HYPERCALLS = 1 << 52;
        /// The partition is isolated (SEV-SNP, TDX or VBS).
        const ISOLATION = 1 << 54;
    }
}

impl Privileges {
    /// What any use of this crate needs: the hypercall page and the VP index.
    pub const REQUIRED_FOR_HYPERCALLS: Self =
        Self::ACCESS_HYPERCALL_MSRS.union(Self::ACCESS_VP_INDEX);
    /// What a VMBus connection needs on top: the SynIC and the two messaging hypercalls.
    pub const REQUIRED_FOR_VMBUS: Self = Self::REQUIRED_FOR_HYPERCALLS
        .union(Self::ACCESS_SYNIC_REGS)
        .union(Self::POST_MESSAGES)
        .union(Self::SIGNAL_EVENTS);
}

bitflags! {
    /// x64 feature flags (CPUID 0x40000003 EDX).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Features: u32 {
        /// Guest debugging support.
        const GUEST_DEBUGGING = 1 << 1;
        /// Performance monitor support.
        const PERFORMANCE_MONITOR = 1 << 2;
        /// Physical CPU dynamic partitioning events.
        const CPU_DYNAMIC_PARTITIONING = 1 << 3;
        /// Hypercall input through XMM registers.
        const XMM_HYPERCALL_INPUT = 1 << 4;
        /// Virtual guest idle state.
        const GUEST_IDLE_STATE = 1 << 5;
        /// Hypervisor sleep state.
        const HYPERVISOR_SLEEP_STATE = 1 << 6;
        /// NUMA distance query.
        const NUMA_DISTANCE_QUERY = 1 << 7;
        /// TSC_FREQUENCY and APIC_FREQUENCY registers are available.
        const FREQUENCY_REGS = 1 << 8;
        /// Synthetic machine-check injection.
        const SYNTHETIC_MACHINE_CHECK = 1 << 9;
        /// Guest crash registers (CRASH_P0..P4, CRASH_CTL).
        const GUEST_CRASH_REGS = 1 << 10;
        /// Debug registers.
        const DEBUG_REGS = 1 << 11;
        /// NPIEP.
        const NPIEP = 1 << 12;
        /// Disable-hypervisor support.
        const DISABLE_HYPERVISOR = 1 << 13;
        /// Extended GVA ranges for HvCallFlushVirtualAddressList.
        const EXTENDED_GVA_RANGES_FOR_FLUSH = 1 << 14;
        /// Hypercall output through XMM registers.
        const XMM_HYPERCALL_OUTPUT = 1 << 15;
        /// SINT polling mode.
        const SINT_POLLING_MODE = 1 << 17;
        /// Hypercall MSR lock.
        const HYPERCALL_MSR_LOCK = 1 << 18;
        /// Direct-mode synthetic timers (interrupt instead of message).
        const DIRECT_SYNTHETIC_TIMERS = 1 << 19;
    }
}

bitflags! {
    /// Implementation recommendations (CPUID 0x40000004 EAX, x64).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Recommendations: u32 {
        /// Use a hypercall for address-space switches.
        const ADDRESS_SPACE_SWITCH_HYPERCALL = 1 << 0;
        /// Use a hypercall for local TLB flushes.
        const LOCAL_FLUSH_HYPERCALL = 1 << 1;
        /// Use a hypercall for remote TLB flushes.
        const REMOTE_FLUSH_HYPERCALL = 1 << 2;
        /// Use the APIC EOI/ICR/TPR MSRs.
        const APIC_MSRS = 1 << 3;
        /// Use the hypervisor RESET register.
        const RESET_MSR = 1 << 4;
        /// Relaxed timing: do not rely on timely interrupts (disable watchdogs).
        const RELAXED_TIMING = 1 << 5;
        /// Use x2APIC MSRs.
        const X2APIC_MSRS = 1 << 8;
        /// Do not set AutoEOI in SINT registers.
        const DEPRECATE_AUTO_EOI = 1 << 9;
        /// Use HvCallSendSyntheticClusterIpi.
        const SYNTHETIC_CLUSTER_IPI = 1 << 10;
        /// Use the "Ex" processor-set hypercalls.
        const EX_PROCESSOR_MASKS = 1 << 11;
        /// Running nested inside a Hyper-V partition.
        const NESTED = 1 << 12;
        /// Use the synced timeline.
        const SYNCED_TIMELINE = 1 << 15;
    }
}

/// Hypervisor version (CPUID 0x40000002).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HvVersion {
    /// Build number.
    pub build: u32,
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Service pack.
    pub service_pack: u32,
    /// Service branch (EDX bits 31:24).
    pub service_branch: u8,
    /// Service number (EDX bits 23:0).
    pub service_number: u32,
}

impl fmt::Display for HvVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{} (SP {}, branch {}, service {})",
            self.major,
            self.minor,
            self.build,
            self.service_pack,
            self.service_branch,
            self.service_number
        )
    }
}

/// Everything CPUID says about the Hyper-V partition this guest runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypervInfo {
    /// Vendor string of leaf 0x40000000 (informational; "Microsoft Hv" on Hyper-V).
    pub vendor: [u8; 12],
    /// Highest hypervisor CPUID leaf.
    pub max_leaf: u32,
    /// Hypervisor version.
    pub version: HvVersion,
    /// Partition privileges; unknown bits are kept.
    pub privileges: Privileges,
    /// Feature flags; unknown bits are kept.
    pub features: Features,
    /// Implementation recommendations; unknown bits are kept.
    pub recommendations: Recommendations,
    /// Spin-lock retries before HvCallNotifyLongSpinWait (`u32::MAX` = never notify).
    pub spin_wait_retries: u32,
    /// Maximum virtual processors the hypervisor supports (0 = not reported).
    pub max_virtual_processors: u32,
    /// Maximum logical processors (0 = not reported).
    pub max_logical_processors: u32,
}

impl HypervInfo {
    /// The vendor string as text, if it is ASCII.
    pub fn vendor_str(&self) -> Option<&str> {
        let end = self
            .vendor
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.vendor.len());
        core::str::from_utf8(&self.vendor[..end]).ok()
    }

    /// Checks that the partition holds every privilege in `needed`.
    pub fn require(&self, needed: Privileges) -> Result<(), DetectError> {
        let missing = needed.difference(self.privileges);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(DetectError::MissingPrivileges(missing))
        }
    }

    /// Whether AutoEOI may be set in SINT registers (x86: unless deprecated by the hypervisor).
    pub fn auto_eoi_allowed(&self) -> bool {
        !self
            .recommendations
            .contains(Recommendations::DEPRECATE_AUTO_EOI)
    }

    /// Whether the TSC and APIC frequency registers may be read (privilege and feature).
    pub fn has_frequency_registers(&self) -> bool {
        self.privileges.contains(Privileges::ACCESS_FREQUENCY_REGS)
            && self.features.contains(Features::FREQUENCY_REGS)
    }
}

/// Why detection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectError {
    /// CPUID leaf 1 says no hypervisor is present.
    NoHypervisor,
    /// A hypervisor is present but does not implement the Hyper-V interface ("Hv#1").
    NotHyperV {
        /// Vendor string of leaf 0x40000000.
        vendor: [u8; 12],
        /// Interface signature found in leaf 0x40000001 EAX.
        interface: u32,
    },
    /// The maximum hypervisor leaf is outside 0x40000005..=0x4000FFFF.
    MaxLeafOutOfRange(u32),
    /// The partition lacks privileges this stack needs.
    MissingPrivileges(Privileges),
}

impl fmt::Display for DetectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHypervisor => f.write_str("not running under a hypervisor"),
            Self::NotHyperV { vendor, interface } => write!(
                f,
                "hypervisor {:?} does not implement the Hyper-V interface (signature {interface:#010x})",
                core::str::from_utf8(vendor).unwrap_or("<non-ascii>")
            ),
            Self::MaxLeafOutOfRange(leaf) => {
                write!(f, "maximum hypervisor CPUID leaf {leaf:#x} is out of range")
            }
            Self::MissingPrivileges(p) => {
                write!(f, "partition lacks required privileges {:#x}", p.bits())
            }
        }
    }
}

impl core::error::Error for DetectError {}

/// Detects Hyper-V and reads its identity, privileges, features and recommendations.
///
/// Applies the acceptance test Linux uses: the hypervisor-present bit, the "Hv#1" interface
/// signature, a maximum leaf in `0x40000005..=0x4000FFFF`, and the privileges in
/// [`Privileges::REQUIRED_FOR_HYPERCALLS`]. Use [`HypervInfo::require`] for more.
pub fn detect(cpu: &impl Cpu) -> Result<HypervInfo, DetectError> {
    if cpu.cpuid(1, 0).ecx & LEAF1_HYPERVISOR_PRESENT == 0 {
        return Err(DetectError::NoHypervisor);
    }
    let leaf0 = cpu.cpuid(LEAF_VENDOR, 0);
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&leaf0.ecx.to_le_bytes());
    vendor[8..12].copy_from_slice(&leaf0.edx.to_le_bytes());
    let interface = cpu.cpuid(LEAF_INTERFACE, 0).eax;
    if interface != HV_INTERFACE_SIGNATURE {
        return Err(DetectError::NotHyperV { vendor, interface });
    }
    let max_leaf = leaf0.eax;
    if !(MIN_MAX_LEAF..=MAX_MAX_LEAF).contains(&max_leaf) {
        return Err(DetectError::MaxLeafOutOfRange(max_leaf));
    }
    let v = cpu.cpuid(LEAF_VERSION, 0);
    let version = HvVersion {
        build: v.eax,
        major: (v.ebx >> 16) as u16,
        minor: v.ebx as u16,
        service_pack: v.ecx,
        service_branch: (v.edx >> 24) as u8,
        service_number: v.edx & 0x00FF_FFFF,
    };
    let f = cpu.cpuid(LEAF_FEATURES, 0);
    let r = cpu.cpuid(LEAF_RECOMMENDATIONS, 0);
    let limits = cpu.cpuid(LEAF_LIMITS, 0);
    let info = HypervInfo {
        vendor,
        max_leaf,
        version,
        privileges: Privileges::from_bits_retain(u64::from(f.eax) | (u64::from(f.ebx) << 32)),
        features: Features::from_bits_retain(f.edx),
        recommendations: Recommendations::from_bits_retain(r.eax),
        spin_wait_retries: r.ebx,
        max_virtual_processors: limits.eax,
        max_logical_processors: limits.ebx,
    };
    info.require(Privileges::REQUIRED_FOR_HYPERCALLS)?;
    Ok(info)
}
