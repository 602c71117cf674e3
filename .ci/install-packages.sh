#!/usr/bin/env bash
# Debian packages the tests and the lab need: kernel tools for the dataplane, traffic tools for
# the end-to-end tests, openssl for the test control plane's certificates, gcc for the sidecar's
# strict-mode stamping library.
set -euo pipefail
packages=(nftables iproute2 conntrack iperf3 iputils-ping curl vsftpd python3 openssl procps psmisc kmod gcc libc6-dev)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
