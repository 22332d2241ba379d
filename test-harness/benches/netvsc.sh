#!/usr/bin/env bash
# Runs the netvsc frame-rate benchmark with its instruction counts: installs valgrind
# (callgrind; `perf stat` counters are not available in this VM kind) when missing, then
# `cargo bench -p test-harness --bench netvsc`. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v valgrind >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends valgrind
fi
exec cargo bench -p test-harness --bench netvsc "$@"
