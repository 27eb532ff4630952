#!/usr/bin/env bash
# Builds the release binaries for the offline VMs: statically linked x86-64 Linux `sdp` and `sdp-agent`, with
# the version and commit in --version. Nothing is fetched at run time. Usage: deploy/build-release.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
  --target x86_64-unknown-linux-gnu -p sdp-reconciler -p sdp-agent
mkdir -p "$out"
built="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release"
cp "$built/sdp" "$built/sdp-agent" "$out/"
cp -r deploy/systemd deploy/nginx deploy/RUNBOOK.md "$out/"
"$out/sdp" --version
"$out/sdp-agent" --version
echo "release files in $out/: copy them to the VMs as deploy/RUNBOOK.md says"
