#!/usr/bin/env bash
# Pacific's test command (run as root: the netns tests create namespaces and TAP devices).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --workspace --bins
cargo test --workspace
