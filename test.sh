#!/usr/bin/env bash
# Pacific's test command (run as root: the netns tests create namespaces and TAP devices).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --workspace --bins
mkdir -p target
cargo test --workspace 2>&1 | tee target/test.log
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' \
    target/test.log | tee target/test-summary.txt
