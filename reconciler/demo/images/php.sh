#!/usr/bin/env bash
# Builds the offline stand-in for php:8.3-apache: a Debian rootfs with php-cli made by mmdebstrap and imported as
# an image (about a minute; needs Debian's package mirror, never a registry). Usage: php.sh [IMAGE]
set -euo pipefail
image="${1:-sdp-demo/php:latest}"
if ! command -v mmdebstrap >/dev/null; then
  echo "mmdebstrap is not installed: apt-get install mmdebstrap" >&2
  exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
mmdebstrap --quiet --variant=essential --include=php-cli "$suite" "$work/rootfs.tar"
docker import --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$image" >/dev/null
echo "$image"
