//! The example kernel (`examples/hyperv-kernel`) boots from its hybrid ISO under QEMU with
//! SeaBIOS and with OVMF, through GRUB and multiboot2: its smoke script checks on COM1 that
//! it reached Rust, ran CPUID detection, reported "not Hyper-V" with the reason, passed its
//! platform self-check and stopped through isa-debug-exit. Every QEMU run has a timeout.
//!
//! Its real peers are QEMU, OVMF, GRUB for both platforms, xorriso, mtools and qemu-img; CI
//! (`.ci/run`) installs them and also boots the VHD and VHDX and the ACPI power-off path.

use std::path::{Path, PathBuf};
use std::process::Command;

fn kernel_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hyperv-kernel")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// The tools the image build and the boots need, or what is missing.
fn peers() -> Result<(), String> {
    let mut missing: Vec<String> = [
        "qemu-system-x86_64",
        "qemu-img",
        "grub-mkrescue",
        "xorriso",
        "mformat",
    ]
    .into_iter()
    .filter(|tool| !on_path(tool))
    .map(String::from)
    .collect();
    for path in [
        "/usr/lib/grub/i386-pc",
        "/usr/lib/grub/x86_64-efi",
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
    ] {
        if !Path::new(path).exists() {
            missing.push(path.to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing {}", missing.join(", ")))
    }
}

#[test]
fn the_iso_boots_under_seabios_and_ovmf_and_reports_not_hyper_v() {
    if !test_harness::real_peers::available(
        "the example kernel's smoke test",
        peers(),
        "install them with `apt-get install -y qemu-system-x86 qemu-utils ovmf grub-common \
         grub-pc-bin grub-efi-amd64-bin xorriso mtools`",
    ) {
        return;
    }
    let output = Command::new("bash")
        .arg(kernel_dir().join("smoke.sh"))
        .args(["iso-bios", "iso-uefi"])
        .output()
        .expect("run smoke.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "smoke.sh failed:\n{stdout}\n{stderr}"
    );
    for boot in ["iso-bios", "iso-uefi"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(boot))
            .unwrap_or_else(|| panic!("no result line for {boot}:\n{stdout}"));
        assert!(
            line.contains(" ok in ") && line.contains("not Hyper-V: "),
            "{boot}: {line}"
        );
    }
}
