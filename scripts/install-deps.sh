#!/usr/bin/env bash
# Installs what building and testing buildkit-rs needs on a Debian machine,
# as root. Safe to run again: it only installs what is missing.
#
# Each package is listed with the tests that need it; new components
# (docker-registry, containerd, skopeo, umoci) join this list with the issue
# that first tests against them.
set -euo pipefail

packages=(
  git    # build.rs records the revision reported by Info
  curl   # the demo and debug-endpoint checks
  runc            # the OCI worker's runtime (compat-tests/tests/exec.rs)
  busybox-static  # the root filesystem exec tests run in
  docker-registry # the real registry image/tests/registry.rs pushes to and pulls from
  skopeo          # independent check of what image/tests/registry.rs pushed (inspect, copy)
  umoci           # unpacks that image's OCI copy to check the layer (image/tests/registry.rs)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "install-deps: cargo (Rust stable) is required" >&2; exit 1; }
