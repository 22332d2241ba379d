//! Mock configuration: the preset plus overrides.

use super::presets::{HostPreset, Identity};

/// How the mock hypervisor and its guest memory are set up.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Which host the mock imitates.
    pub preset: HostPreset,
    /// Number of virtual processors (at least 1).
    pub vp_count: u32,
    /// Guest RAM size in bytes (rounded up to whole 4 KiB pages).
    pub memory_bytes: usize,
    /// First GPA of guest RAM (page aligned, non-zero so GPA/offset confusion shows).
    pub memory_base_gpa: u64,
    /// TSC frequency reported by TSC_FREQUENCY and driving the TSC.
    pub tsc_frequency_hz: u64,
    /// APIC timer frequency reported by APIC_FREQUENCY.
    pub apic_frequency_hz: u64,
    /// First GPA of the MMIO window (VRAM) `MockHal::map_mmio` accepts.
    pub mmio_base_gpa: u64,
    /// Size of the MMIO window in bytes.
    pub mmio_bytes: usize,
    /// Overrides the preset's partition privilege mask (CPUID 0x40000003 EBX:EAX).
    pub privileges: Option<u64>,
    /// Overrides the preset's feature flags (CPUID 0x40000003 EDX).
    pub features: Option<u32>,
    /// Overrides the preset's recommendations (CPUID 0x40000004 EAX).
    pub recommendations: Option<u32>,
}

impl MockConfig {
    /// Defaults: 1 VP, 16 MiB RAM at GPA 0x10_0000, 2.5 GHz TSC, 200 MHz APIC timer (what
    /// Hyper-V reports), an 8 MiB VRAM window at 0xF800_0000 (the Gen1 VRAM address).
    pub fn new(preset: HostPreset) -> Self {
        Self {
            preset,
            vp_count: 1,
            memory_bytes: 16 << 20,
            memory_base_gpa: 0x10_0000,
            tsc_frequency_hz: 2_500_000_000,
            apic_frequency_hz: 200_000_000,
            mmio_base_gpa: 0xF800_0000,
            mmio_bytes: 8 << 20,
            privileges: None,
            features: None,
            recommendations: None,
        }
    }

    /// Removes privilege bits `mask` from the effective privilege mask.
    pub fn without_privileges(mut self, mask: u64) -> Self {
        self.privileges = Some(self.identity().privileges & !mask);
        self
    }

    /// Sets the privilege mask.
    pub fn with_privileges(mut self, mask: u64) -> Self {
        self.privileges = Some(mask);
        self
    }

    /// Sets the feature flags (CPUID 0x40000003 EDX).
    pub fn with_features(mut self, features: u32) -> Self {
        self.features = Some(features);
        self
    }

    /// Sets the recommendations (CPUID 0x40000004 EAX).
    pub fn with_recommendations(mut self, r: u32) -> Self {
        self.recommendations = Some(r);
        self
    }

    /// Sets the number of virtual processors.
    pub fn with_vp_count(mut self, n: u32) -> Self {
        self.vp_count = n;
        self
    }

    /// Sets the guest RAM size.
    pub fn with_memory_bytes(mut self, bytes: usize) -> Self {
        self.memory_bytes = bytes;
        self
    }

    /// The preset's identity with the overrides applied.
    pub(crate) fn identity(&self) -> Identity {
        let mut id = self.preset.identity();
        if let Some(p) = self.privileges {
            id.privileges = p;
        }
        if let Some(f) = self.features {
            id.features = f;
        }
        if let Some(r) = self.recommendations {
            id.recommendations = r;
        }
        id
    }
}
