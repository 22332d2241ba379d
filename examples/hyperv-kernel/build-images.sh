#!/usr/bin/env bash
# Builds the example kernel and its boot images, in target/images/:
#   hyperv-kernel.iso   hybrid ISO (BIOS and UEFI GRUB): a CD/DVD for Hyper-V Gen1 or Gen2
#   hyperv-kernel.vhd   fixed-size VHD, 64 MiB (1 MiB aligned): Azure (Gen1 or Gen2 image)
#                       and a Hyper-V Gen1 (BIOS) IDE boot disk
#   hyperv-kernel.vhdx  the same disk as VHDX: a Hyper-V Gen2 (UEFI, Secure Boot off) boot disk
# The disks carry the ISO's bytes: grub-mkrescue's image is a hybrid that also boots as a
# hard disk (MBR boot code for BIOS, an EFI system partition for UEFI).
#
# Needs: cargo, grub-mkrescue with both GRUB platforms (Debian: grub-common grub-pc-bin
# grub-efi-amd64-bin), xorriso, mtools, qemu-img (qemu-utils).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/target/images"
kernel="$here/target/x86_64-unknown-linux-gnu/release/hyperv-kernel"
disk_mib=64

for tool in grub-mkrescue xorriso mformat qemu-img; do
  command -v "$tool" >/dev/null || { echo "build-images: $tool is missing" >&2; exit 2; }
done
for platform in i386-pc x86_64-efi; do
  [ -d "/usr/lib/grub/$platform" ] || { echo "build-images: GRUB $platform is missing" >&2; exit 2; }
done

(cd "$here" && cargo build --release --locked -q)

root="$out/iso-root"
rm -rf "$root"
mkdir -p "$root/boot/grub"
cp "$kernel" "$root/boot/hyperv-kernel"
cp "$here/grub/grub.cfg" "$root/boot/grub/grub.cfg"
grub-mkrescue -o "$out/hyperv-kernel.iso" "$root" 2>"$out/grub-mkrescue.log" \
  || { cat "$out/grub-mkrescue.log" >&2; exit 1; }

raw="$out/hyperv-kernel.raw"
cp "$out/hyperv-kernel.iso" "$raw"
iso_bytes=$(stat -c %s "$raw")
if [ "$iso_bytes" -gt $((disk_mib << 20)) ]; then
  echo "build-images: the ISO ($iso_bytes bytes) is larger than the $disk_mib MiB disk" >&2
  exit 1
fi
truncate -s "${disk_mib}M" "$raw"
# force_size: the virtual size stays exactly 64 MiB instead of being rounded to a CHS
# geometry, which Azure requires (a whole number of MiB).
qemu-img convert -q -f raw -O vpc -o subformat=fixed,force_size "$raw" "$out/hyperv-kernel.vhd"
qemu-img convert -q -f raw -O vhdx "$raw" "$out/hyperv-kernel.vhdx"
rm -f "$raw"

echo "built in $out:"
(cd "$out" && ls -l hyperv-kernel.iso hyperv-kernel.vhd hyperv-kernel.vhdx | awk '{print "  " $5 "  " $9}')
