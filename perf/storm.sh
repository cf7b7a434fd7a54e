#!/usr/bin/env bash
# The headline boot storm alone: $TARGETS targets (default 500) booting at once, each a 1 MiB
# TFTP bootstrap at blksize 1432 (iPXE-like, lockstep) then the scaled Windows-like profile
# (x $SCALE, default 0.005: ~350 I/Os, 65% reads) over NBD, every byte checked; bootfarm
# against tftpd-hpa + qemu-nbd and dnsmasq + qemu-nbd, alternating, medians of $ROUNDS.
# It is the `headline` scenario of perf/suite.sh, which prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIOS=headline HEADLINE_TARGETS=${TARGETS:-500} exec bash perf/suite.sh
