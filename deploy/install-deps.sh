#!/usr/bin/env bash
# Installs the Debian packages SDP needs on a development machine, for the demo or for the tests: one list, used
# by the README's run command (`demo`) and by .ci/run (`tests`), so neither can miss a step the other has.
# As root it runs apt-get; otherwise it prints the one `apt-get install` line to run and exits 1.
# Usage: deploy/install-deps.sh demo|tests
set -euo pipefail
what="${1:-demo}"
case "$what" in demo | tests) ;; *) echo "usage: $0 demo|tests" >&2; exit 2 ;; esac

need=()
# git for config and service repos; Go builds the demo's services; a static busybox and mmdebstrap make the
# offline images (alpine:3.20 and php:8.3-apache stand-ins: nothing is pulled from a registry).
command -v git >/dev/null || need+=(git)
command -v go >/dev/null || need+=(golang-go)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v file >/dev/null || need+=(file)
# make: cargo builds jemalloc, the reconciler's allocator, from source (with cc, which cargo needs anyway).
command -v make >/dev/null || need+=(make)
command -v ip >/dev/null || need+=(iproute2)
command -v docker >/dev/null || need+=(docker.io)
if [ "$what" = tests ]; then
  command -v python3 >/dev/null || need+=(python3 python3-pip)
  # nginx checks the deploy/ location blocks (nginx -t) and runs the TLS server block in e2e/tests/tls.rs.
  command -v nginx >/dev/null || need+=(nginx-light)
  # The TLS test: nginx terminates TLS for the agents with a throwaway CA that openssl makes.
  command -v openssl >/dev/null || need+=(openssl)
  # The dashboard's browser test: headless Chromium driven over WebDriver.
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
  # docker-compose for the side-by-side benchmark.
  command -v docker-compose >/dev/null || need+=(docker-compose)
fi

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "SDP's $what needs these Debian packages; install them with:" >&2
    echo "  sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ "$what" = tests ]; then
  # The schema test checks the examples with an independent validator: Python's jsonschema.
  python3 -c 'import jsonschema' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check jsonschema
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
