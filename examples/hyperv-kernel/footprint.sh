#!/usr/bin/env bash
# Prints the size of the example kernel per crate: .text, .rodata, .data and .bss of the
# release build (opt-level = "s", the ELF GRUB boots), in KiB.
#
# .text is attributed through the DWARF line tables, so code inlined across crates counts for
# the crate it came from: every 4-byte slot of .text is looked up with `addr2line -i`, and the
# innermost frame outside Rust's own library (core) names the crate (a core helper such as
# `Result::map_err` inlined into a driver counts for that driver; core's out-of-line code,
# such as formatting, counts for core). Data sections are attributed by symbol (`nm`);
# anonymous constants (string literals, panic locations) have no symbol and are listed as such.
# Needs binutils (nm, addr2line, readelf) and a built kernel (build-images.sh builds it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
elf="${1:-$here/target/x86_64-unknown-linux-gnu/release/hyperv-kernel}"
[ -r "$elf" ] || (cd "$here" && cargo build --release --locked -q)

# Section sizes (bytes) and the start of .text.
read -r text_addr text_size < <(readelf -SW "$elf" \
  | awk '{for (i = 1; i <= NF; i++) if ($i == ".text") print $(i + 2), $(i + 4)}')
declare -A section_size
while read -r name size; do section_size[$name]=$size; done < <(readelf -SW "$elf" \
  | awk 'function hex(s,   v, i) { v = 0; s = tolower(s); for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1; return v }
         {for (i = 1; i <= NF; i++) if ($i ~ /^\.(rodata|data|bss)$/) print $i, hex($(i + 4))}')

# A source path or a symbol name to a crate name.
crate_of_path='
  function crate(path,   m) {
    if (path ~ /^\?\?/ || path == "") return "(no-line-information)"
    if (path ~ /\/rustc\/[0-9a-f]+\/library\//) { sub(/.*\/library\//, "", path); sub(/\/.*/, "", path); return path }
    if (path ~ /\/examples\/hyperv-kernel\//) return "hyperv-kernel"
    # Compiler-generated code (shims, drop glue) names its codegen unit: crate.hash-cgu.N
    if (path ~ /^[a-z_0-9]+\.[0-9a-f]+-cgu\.[0-9]+$/) { sub(/\..*/, "", path); gsub(/_/, "-", path); return path }
    if (match(path, /\/(winhv|vmbus-guest|ic-services|storvsc|netvsc|synthvid|synthhid)\/src\//)) {
      m = substr(path, RSTART + 1); sub(/\/.*/, "", m); return m
    }
    if (match(path, /\/registry\/src\/[^\/]+\/[^\/]+\//)) {
      m = substr(path, RSTART, RLENGTH); sub(/\/$/, "", m); sub(/.*\//, "", m)
      sub(/-[0-9]+\.[0-9]+\.[0-9]+.*$/, "", m); return m
    }
    return "(other-source)"
  }'

text=$(awk -v s=$((16#$text_addr)) -v n=$((16#$text_size)) \
    'BEGIN { for (a = s; a < s + n; a += 4) printf "0x%x\n", a }' \
  | addr2line -a -i -e "$elf" \
  | awk "$crate_of_path"'
      /^0x/ { if (have) count[pick]++; have = 1; pick = ""; next }
      { path = $0; sub(/:[0-9?]+( .*)?$/, "", path)
        if (pick == "" || pick == "core") { c = crate(path); if (pick == "" || c != "core") pick = c } }
      END { if (have) count[pick]++; for (c in count) print c, count[c] * 4 }')

data=$(nm -S -C "$elf" | awk 'function hex(s,   v, i) { v = 0; s = tolower(s); for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1; return v }
  NF >= 4 && $3 ~ /^[rRdDbB]$/ {
    name = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ /, "", name)
    while (name ~ /^[<&]/ || name ~ /^(mut |dyn )/) sub(/^([<&]|mut |dyn )/, "", name)
    if (name ~ /^core::ptr::drop_in_place</) sub(/^core::ptr::drop_in_place</, "", name)
    crate = name; if (crate ~ /::/) sub(/::.*/, "", crate); else crate = "hyperv_kernel"
    gsub(/_/, "-", crate)
    section = ($3 ~ /[rR]/) ? ".rodata" : ($3 ~ /[dD]/) ? ".data" : ".bss"
    print crate, section, hex($2)
  }')

{
  echo "$text" | awk '{ print $1, ".text", $2 }'
  echo "$data"
} | awk -v rodata="${section_size[.rodata]:-0}" -v data="${section_size[.data]:-0}" \
        -v bss="${section_size[.bss]:-0}" -v text="$((16#$text_size))" '
  { size[$1, $2] += $3; crates[$1] = 1; total[$2] += $3 }
  function kib(b) { return b == 0 ? "-" : sprintf("%.1f", b / 1024) }
  END {
    drivers["winhv"]; drivers["vmbus-guest"]; drivers["ic-services"]; drivers["storvsc"]
    drivers["netvsc"]; drivers["synthvid"]; drivers["synthhid"]
    printf "%-48s %9s %9s %9s %9s\n", "crate (KiB, opt-level = \"s\")", ".text", ".rodata", ".data", ".bss"
    n = 0
    for (c in crates) order[++n] = c
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
      if (size[order[j], ".text"] > size[order[i], ".text"]) { t = order[i]; order[i] = order[j]; order[j] = t }
    for (i = 1; i <= n; i++) {
      c = order[i]
      label = c
      if (c == "(no-line-information)") label = "(assembly, padding: no line info)"
      if (c == "(other-source)") label = "(other source files)"
      printf "%-48s %9s %9s %9s %9s\n", (c in drivers ? "* " : "  ") label, kib(size[c, ".text"]),
        kib(size[c, ".rodata"]), kib(size[c, ".data"]), kib(size[c, ".bss"])
      if (c in drivers) for (s in total) dsum[s] += size[c, s]
    }
    printf "%-48s %9s %9s %9s %9s\n", "  (no symbol: literals, boot stack, page tables)", "-",
      kib(rodata - total[".rodata"]), kib(data - total[".data"]), kib(bss - total[".bss"])
    printf "%-48s %9s %9s %9s %9s\n", "whole kernel", kib(text), kib(rodata), kib(data), kib(bss)
    printf "%-48s %9s %9s %9s %9s\n", "* the driver set", kib(dsum[".text"]), kib(dsum[".rodata"]),
      kib(dsum[".data"]), kib(dsum[".bss"])
    printf "driver set .text: %.1f KiB of the 150 KiB aim; heap: none\n", dsum[".text"] / 1024
  }'
