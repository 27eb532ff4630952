#!/usr/bin/env bash
# Builds the offline stand-in for alpine:3.20: a static busybox imported as an image, as the production VMs load
# their images (no registry, no pull). Usage: busybox.sh [IMAGE]  (default sdp-demo/busybox:latest)
set -euo pipefail
image="${1:-sdp-demo/busybox:latest}"
busybox="$(command -v busybox || true)"
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  for candidate in /bin/busybox /usr/bin/busybox; do
    if [ -x "$candidate" ]; then busybox="$candidate"; fi
  done
fi
if [ -z "$busybox" ]; then
  echo "busybox is not installed: apt-get install busybox-static" >&2
  exit 1
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc"
cp "$busybox" "$root/bin/busybox"
for tool in sh ls cat echo wget nc sleep env ps; do ln -s busybox "$root/bin/$tool"; done
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
tar -C "$root" -c . | docker import --change 'CMD ["/bin/sh"]' - "$image" >/dev/null
echo "$image"
