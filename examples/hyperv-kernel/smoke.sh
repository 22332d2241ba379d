#!/usr/bin/env bash
# Smoke test of the example kernel: builds the images (build-images.sh), boots them under QEMU
# and reads COM1. QEMU is not Hyper-V, so each boot must reach Rust, run CPUID detection,
# report "not Hyper-V" with the reason and stop cleanly:
#   iso-bios   the ISO as a CD-ROM, SeaBIOS          exit through isa-debug-exit (status 33)
#   iso-uefi   the ISO as a CD-ROM, OVMF (UEFI)      exit through isa-debug-exit
#   vhd-bios   the fixed VHD as an IDE disk, SeaBIOS (Hyper-V Gen1, Azure)
#   vhdx-uefi  the VHDX as a virtio disk, OVMF       (Hyper-V Gen2)
#   acpi-off   the ISO, SeaBIOS, no isa-debug-exit:  the kernel powers off through ACPI S5
#              (what it does when the Hyper-V host asks it to shut down); QEMU status 0
# Usage: smoke.sh [BOOT...]   (default: all of them). Every QEMU run has a timeout.
#
# QEMU runs with TCG by default (SMOKE_ACCEL=kvm to change): the KVM of the machines CI runs
# on is PVM, which emulates a non-PVM guest instruction by instruction (GRUB takes a minute)
# and cannot emulate SSE at all, while TCG boots the ISO in about 2 s (OVMF: about 12 s).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
images="$here/target/images"
logs="$here/target/smoke"
accel="${SMOKE_ACCEL:-tcg}"
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
boots=("$@")
[ ${#boots[@]} -gt 0 ] || boots=(iso-bios iso-uefi vhd-bios vhdx-uefi acpi-off)

command -v qemu-system-x86_64 >/dev/null || { echo "smoke: qemu-system-x86_64 is missing" >&2; exit 2; }
[ -r "$ovmf_code" ] || { echo "smoke: OVMF ($ovmf_code) is missing" >&2; exit 2; }

"$here/build-images.sh"
mkdir -p "$logs"

# Boots one image; $1 name, $2 expected QEMU status, then QEMU arguments.
boot() {
  local name=$1 expected=$2 timeout_s=90
  shift 2
  local log="$logs/$name.log" start status
  case "$*" in *pflash*) timeout_s=240 ;; esac
  start=${EPOCHREALTIME/./}
  set +e
  timeout --kill-after=5 "$timeout_s" qemu-system-x86_64 -accel "$accel" -m 256M \
    -display none -no-reboot -serial "file:$log" "$@"
  status=$?
  set -e
  local tenths=$(( (${EPOCHREALTIME/./} - start) / 100000 ))
  tr -d '\r' < "$log" > "$log.txt"
  local failed=""
  [ "$status" = 124 ] && failed="timed out after ${timeout_s}s"
  [ -z "$failed" ] && [ "$status" != "$expected" ] && failed="QEMU status $status, expected $expected"
  for line in "hyperv-kernel .*: reached Rust in long mode" "detect: CPUID leaf 1 " \
    "not Hyper-V: ." "platform: self-check passed" "stopping: "; do
    [ -z "$failed" ] && ! grep -q "^$line" "$log.txt" && failed="no line \"$line\" on COM1"
  done
  [ -z "$failed" ] && grep -q "kernel panic" "$log.txt" && failed="the kernel panicked"
  if [ -n "$failed" ]; then
    printf '%-10s FAILED: %s (log: %s)\n' "$name" "$failed" "$log.txt"
    sed -n '/reached Rust/,$p' "$log.txt" | tail -20
    return 1
  fi
  printf '%-10s ok in %3d.%d s: %s\n' "$name" $((tenths / 10)) $((tenths % 10)) \
    "$(grep '^not Hyper-V: ' "$log.txt")"
}

uefi() {
  local vars="$logs/OVMF_VARS.fd"
  cp "$ovmf_vars" "$vars"
  echo -drive "if=pflash,format=raw,readonly=on,file=$ovmf_code" -drive "if=pflash,format=raw,file=$vars"
}
exit_device=(-device isa-debug-exit,iobase=0xf4,iosize=0x04)
failures=0
for b in "${boots[@]}"; do
  case $b in
    iso-bios) boot "$b" 33 "${exit_device[@]}" -cdrom "$images/hyperv-kernel.iso" ;;
    iso-uefi) boot "$b" 33 "${exit_device[@]}" $(uefi) -cdrom "$images/hyperv-kernel.iso" ;;
    vhd-bios) boot "$b" 33 "${exit_device[@]}" \
      -drive "file=$images/hyperv-kernel.vhd,format=vpc,if=ide,snapshot=on" ;;
    vhdx-uefi) boot "$b" 33 "${exit_device[@]}" $(uefi) \
      -drive "file=$images/hyperv-kernel.vhdx,format=vhdx,if=none,id=disk,snapshot=on" \
      -device virtio-blk-pci,drive=disk ;;
    acpi-off) boot "$b" 0 -cdrom "$images/hyperv-kernel.iso" \
      && { grep -q "^powering off: ACPI S5" "$logs/$b.log.txt" \
           || { echo "acpi-off   FAILED: no \"powering off: ACPI S5\" line"; false; }; } ;;
    *) echo "smoke: unknown boot $b" >&2; exit 2 ;;
  esac || failures=$((failures + 1))
done
[ "$failures" = 0 ] || { echo "smoke: $failures of ${#boots[@]} boots failed" >&2; exit 1; }
echo "smoke: all ${#boots[@]} boots stopped cleanly"
