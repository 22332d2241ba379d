//! Host presets and the CPUID leaves they answer (protocol/vmbus-core.md §1.1–1.4).

use winhv::CpuidResult;

/// Which machine the mock pretends to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPreset {
    /// Windows Server 2016 Hyper-V (hypervisor 10.0 build 14393): no direct-mode timers,
    /// AutoEOI not deprecated.
    Ws2016,
    /// Windows Server 2022 / Azure (hypervisor 10.0 build 20348): direct-mode timers,
    /// AutoEOI deprecated, cluster IPI and x2APIC recommended.
    Ws2022,
    /// Another hypervisor (KVM): CPUID.1:ECX bit 31 set, vendor "KVMKVMKVM\0\0\0", no "Hv#1".
    NotHyperV,
    /// No hypervisor at all: CPUID.1:ECX bit 31 clear.
    BareMetal,
}

/// "Hv#1", the Hyper-V interface signature (CPUID 0x40000001 EAX).
pub const HV_INTERFACE_SIGNATURE: u32 = 0x3123_7648;

/// Privilege bits of the partition privilege mask (CPUID 0x40000003 EAX/EBX).
pub mod privilege {
    /// VP_RUNTIME MSR.
    pub const VP_RUNTIME: u64 = 1 << 0;
    /// TIME_REF_COUNT MSR.
    pub const PARTITION_REFERENCE_COUNTER: u64 = 1 << 1;
    /// SynIC MSRs.
    pub const SYNIC_REGS: u64 = 1 << 2;
    /// Synthetic timer MSRs.
    pub const SYNTHETIC_TIMER_REGS: u64 = 1 << 3;
    /// APIC EOI/ICR/TPR MSRs.
    pub const INTR_CTRL_REGS: u64 = 1 << 4;
    /// GUEST_OS_ID and HYPERCALL MSRs.
    pub const HYPERCALL_MSRS: u64 = 1 << 5;
    /// VP_INDEX MSR.
    pub const VP_INDEX: u64 = 1 << 6;
    /// RESET MSR.
    pub const RESET_REG: u64 = 1 << 7;
    /// REFERENCE_TSC MSR.
    pub const PARTITION_REFERENCE_TSC: u64 = 1 << 9;
    /// GUEST_IDLE MSR.
    pub const GUEST_IDLE_REG: u64 = 1 << 10;
    /// TSC_FREQUENCY / APIC_FREQUENCY MSRs.
    pub const FREQUENCY_REGS: u64 = 1 << 11;
    /// Reenlightenment MSRs.
    pub const REENLIGHTENMENT: u64 = 1 << 13;
    /// HvCallPostMessage.
    pub const POST_MESSAGES: u64 = 1 << 36;
    /// HvCallSignalEvent.
    pub const SIGNAL_EVENTS: u64 = 1 << 37;
    /// Extended GVA ranges for HvCallFlushVirtualAddressList.
    pub const EXTENDED_GVA_RANGES_FOR_FLUSH: u64 = 1 << 47;
    /// Fast hypercall output.
    pub const FAST_HYPERCALL_OUTPUT: u64 = 1 << 51;
    /// Extended hypercalls (codes ≥ 0x8000).
    pub const EXTENDED_HYPERCALLS: u64 = 1 << 52;
    /// HvCallStartVirtualProcessor.
    pub const START_VIRTUAL_PROCESSOR: u64 = 1 << 53;
}

/// Feature bits (CPUID 0x40000003 EDX).
pub mod feature {
    /// Guest debugging available.
    pub const GUEST_DEBUGGING: u32 = 1 << 1;
    /// XMM fast hypercall input.
    pub const XMM_HYPERCALL_INPUT: u32 = 1 << 4;
    /// Virtual guest idle state.
    pub const GUEST_IDLE: u32 = 1 << 5;
    /// NUMA distance query.
    pub const NUMA_DISTANCE: u32 = 1 << 7;
    /// TSC_FREQUENCY / APIC_FREQUENCY MSRs available.
    pub const FREQUENCY_MSRS: u32 = 1 << 8;
    /// Synthetic machine check injection.
    pub const MCE_INJECTION: u32 = 1 << 9;
    /// Guest crash MSRs available.
    pub const CRASH_MSRS: u32 = 1 << 10;
    /// NPIEP.
    pub const NPIEP: u32 = 1 << 12;
    /// Extended GVA ranges for FlushVirtualAddressList.
    pub const EXTENDED_GVA_RANGES_FOR_FLUSH: u32 = 1 << 14;
    /// XMM fast hypercall output.
    pub const XMM_HYPERCALL_OUTPUT: u32 = 1 << 15;
    /// SINT polling mode.
    pub const SINT_POLLING: u32 = 1 << 17;
    /// HYPERCALL MSR lock bit.
    pub const HYPERCALL_MSR_LOCK: u32 = 1 << 18;
    /// Direct-mode synthetic timers.
    pub const DIRECT_SYNTHETIC_TIMERS: u32 = 1 << 19;
    /// PAT register for VSM.
    pub const VSM_PAT: u32 = 1 << 20;
    /// BNDCFGS register for VSM.
    pub const VSM_BNDCFGS: u32 = 1 << 21;
    /// Synthetic time-unhalted timer.
    pub const TIME_UNHALTED_TIMER: u32 = 1 << 23;
}

/// Recommendation bits (CPUID 0x40000004 EAX).
pub mod recommendation {
    /// Use hypercall for remote TLB flush.
    pub const REMOTE_TLB_FLUSH: u32 = 1 << 2;
    /// Use MSRs for APIC EOI/ICR/TPR.
    pub const APIC_MSRS: u32 = 1 << 3;
    /// Relaxed timing.
    pub const RELAXED_TIMING: u32 = 1 << 5;
    /// Use x2APIC MSRs.
    pub const X2APIC_MSRS: u32 = 1 << 8;
    /// Deprecate AutoEOI.
    pub const DEPRECATE_AUTO_EOI: u32 = 1 << 9;
    /// Use HvCallSendSyntheticClusterIpi.
    pub const CLUSTER_IPI: u32 = 1 << 10;
    /// Use the "Ex" processor-set hypercalls.
    pub const EX_PROCESSOR_MASKS: u32 = 1 << 11;
    /// Enlightened VMCS recommended.
    pub const ENLIGHTENED_VMCS: u32 = 1 << 14;
    /// Direct local flush-entire.
    pub const DIRECT_LOCAL_FLUSH_ENTIRE: u32 = 1 << 17;
    /// No non-architectural core sharing.
    pub const NO_NONARCH_CORE_SHARING: u32 = 1 << 18;
}

/// The identity values a preset reports; overridable through `MockConfig`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity {
    pub max_leaf: u32,
    pub build: u32,
    pub version: u32,
    pub service_pack: u32,
    pub service_number: u32,
    pub privileges: u64,
    pub features: u32,
    pub recommendations: u32,
    pub max_vps: u32,
    pub max_lps: u32,
}

impl HostPreset {
    /// Whether this preset is Hyper-V (answers "Hv#1" and has synthetic MSRs).
    pub fn is_hyper_v(self) -> bool {
        matches!(self, Self::Ws2016 | Self::Ws2022)
    }

    /// The preset's default identity (all zero for non-Hyper-V machines).
    pub(crate) fn identity(self) -> Identity {
        use feature as f;
        use privilege as p;
        use recommendation as r;
        // Privileges every Hyper-V guest partition gets: VP runtime, reference counter, SynIC,
        // timers, APIC MSRs, hypercall MSRs, VP index (bits 0..=6), reference TSC (9), guest
        // idle (10), frequency MSRs (11), reenlightenment (13): low word 0x2E7F, as real
        // Hyper-V/Azure guests report it. Stats (8) and debug (12) are not granted.
        let base_privileges = p::VP_RUNTIME
            | p::PARTITION_REFERENCE_COUNTER
            | p::SYNIC_REGS
            | p::SYNTHETIC_TIMER_REGS
            | p::INTR_CTRL_REGS
            | p::HYPERCALL_MSRS
            | p::VP_INDEX
            | p::PARTITION_REFERENCE_TSC
            | p::GUEST_IDLE_REG
            | p::FREQUENCY_REGS
            | p::REENLIGHTENMENT
            // PostMessages and SignalEvents: what VMBus needs.
            | p::POST_MESSAGES
            | p::SIGNAL_EVENTS;
        match self {
            Self::Ws2016 => Identity {
                // WS2016 hypervisors report up to 0x4000000A (nested features).
                max_leaf: 0x4000_000A,
                build: 14393,
                version: 0x000A_0000, // 10.0
                service_pack: 0,
                service_number: 2312,
                privileges: base_privileges,
                // No direct-mode timers (19), no SINT polling (17), no hypercall MSR lock (18).
                features: f::GUEST_DEBUGGING
                    | f::XMM_HYPERCALL_INPUT
                    | f::GUEST_IDLE
                    | f::NUMA_DISTANCE
                    | f::FREQUENCY_MSRS
                    | f::MCE_INJECTION
                    | f::CRASH_MSRS,
                // Remote flush by hypercall, APIC MSRs, relaxed timing; AutoEOI still fine.
                recommendations: r::REMOTE_TLB_FLUSH | r::APIC_MSRS | r::RELAXED_TIMING,
                max_vps: 240,
                max_lps: 512,
            },
            Self::Ws2022 => Identity {
                // Isolation configuration leaf present.
                max_leaf: 0x4000_000C,
                build: 20348,
                version: 0x000A_0000, // 10.0
                service_pack: 0,
                service_number: 1633,
                // High word 0x3B8030 as Azure reports: + extended GVA flush ranges (47), fast
                // output (51), extended hypercalls (52), start VP (53).
                privileges: base_privileges
                    | p::EXTENDED_GVA_RANGES_FOR_FLUSH
                    | p::FAST_HYPERCALL_OUTPUT
                    | p::EXTENDED_HYPERCALLS
                    | p::START_VIRTUAL_PROCESSOR,
                // 0x00BED7B2, the value Azure guests log as "misc".
                features: f::GUEST_DEBUGGING
                    | f::XMM_HYPERCALL_INPUT
                    | f::GUEST_IDLE
                    | f::NUMA_DISTANCE
                    | f::FREQUENCY_MSRS
                    | f::MCE_INJECTION
                    | f::CRASH_MSRS
                    | f::NPIEP
                    | f::EXTENDED_GVA_RANGES_FOR_FLUSH
                    | f::XMM_HYPERCALL_OUTPUT
                    | f::SINT_POLLING
                    | f::HYPERCALL_MSR_LOCK
                    | f::DIRECT_SYNTHETIC_TIMERS
                    | f::VSM_PAT
                    | f::VSM_BNDCFGS
                    | f::TIME_UNHALTED_TIMER,
                // Azure's 0x64E24 plus x2APIC MSRs (8): remote flush, relaxed timing,
                // deprecate AutoEOI, cluster IPI, Ex masks, eVMCS, direct flush, no core sharing.
                recommendations: r::REMOTE_TLB_FLUSH
                    | r::RELAXED_TIMING
                    | r::X2APIC_MSRS
                    | r::DEPRECATE_AUTO_EOI
                    | r::CLUSTER_IPI
                    | r::EX_PROCESSOR_MASKS
                    | r::ENLIGHTENED_VMCS
                    | r::DIRECT_LOCAL_FLUSH_ENTIRE
                    | r::NO_NONARCH_CORE_SHARING,
                max_vps: 2048,
                max_lps: 2048,
            },
            Self::NotHyperV | Self::BareMetal => Identity {
                max_leaf: 0,
                build: 0,
                version: 0,
                service_pack: 0,
                service_number: 0,
                privileges: 0,
                features: 0,
                recommendations: 0,
                max_vps: 0,
                max_lps: 0,
            },
        }
    }
}

fn regs(eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidResult {
    CpuidResult { eax, ebx, ecx, edx }
}

fn ascii12(s: &[u8; 12]) -> (u32, u32, u32) {
    let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    (w(0), w(4), w(8))
}

/// Answers `CPUID(leaf, subleaf)` for `preset` with the effective `id`.
pub(crate) fn cpuid(preset: HostPreset, id: &Identity, leaf: u32, _subleaf: u32) -> CpuidResult {
    const MAX_BASIC: u32 = 0xD;
    match leaf {
        0 => {
            let (b, d, c) = ascii12(b"GenuineIntel");
            regs(MAX_BASIC, b, c, d)
        }
        // Family 6 model 0x55 stepping 7; ECX: SSE3, SSSE3, SSE4.1/4.2, x2APIC (21), POPCNT,
        // AES, XSAVE, AVX, RDRAND, and bit 31 "hypervisor present" unless bare metal.
        1 => {
            let hv = if preset == HostPreset::BareMetal {
                0
            } else {
                1 << 31
            };
            regs(0x0005_0657, 0x0000_0800, 0x7EDA_3203 | hv, 0x1F8B_FBFF)
        }
        2..=MAX_BASIC => CpuidResult::default(),
        0x4000_0000..=0x4FFF_FFFF => hypervisor_leaf(preset, id, leaf),
        _ => CpuidResult::default(),
    }
}

fn hypervisor_leaf(preset: HostPreset, id: &Identity, leaf: u32) -> CpuidResult {
    match preset {
        HostPreset::BareMetal => CpuidResult::default(),
        HostPreset::NotHyperV => match leaf {
            0x4000_0000 => {
                let (b, c, d) = ascii12(b"KVMKVMKVM\0\0\0");
                regs(0x4000_0001, b, c, d)
            }
            // KVM's feature leaf: EAX = 0 here (no "Hv#1" signature anyway).
            _ => CpuidResult::default(),
        },
        HostPreset::Ws2016 | HostPreset::Ws2022 => {
            if leaf > id.max_leaf {
                return CpuidResult::default();
            }
            match leaf {
                0x4000_0000 => {
                    let (b, c, d) = ascii12(b"Microsoft Hv");
                    regs(id.max_leaf, b, c, d)
                }
                0x4000_0001 => regs(HV_INTERFACE_SIGNATURE, 0, 0, 0),
                0x4000_0002 => regs(id.build, id.version, id.service_pack, id.service_number),
                0x4000_0003 => regs(
                    id.privileges as u32,
                    (id.privileges >> 32) as u32,
                    0, // no misc bits (no C-states reported)
                    id.features,
                ),
                // Spin-lock retry count 0xFFF (Hyper-V's default); no physical address bits.
                0x4000_0004 => regs(id.recommendations, 0xFFF, 0, 0),
                0x4000_0005 => regs(id.max_vps, id.max_lps, 0, 0),
                // Hardware features in use: MSR bitmaps (1), SLAT (3).
                0x4000_0006 => regs(0b1010, 0, 0, 0),
                // 0x40000007..=0x4000000C: root-only, nested and isolation leaves — a plain
                // non-nested, non-isolated guest sees zeros.
                _ => CpuidResult::default(),
            }
        }
    }
}
