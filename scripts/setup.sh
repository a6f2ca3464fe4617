#!/usr/bin/env bash
# Set up everything the harness needs on a Debian 12 machine, idempotently:
#   - Debian packages: qemu-system-x86 (the system QEMU 7.2 build), binutils
#     (assembles the guest boot code in images/), chromium (the report's browser
#     test) and postgresql (the history tests start a server of their own);
#   - the Python package (pip, editable) with its `dev` extra: the `test` extra
#     (pytest, pytest-xdist, build for testcases/test_install.py, ruff, and the
#     `avocado` extra: Avocado 113 with its HTML and CIT plugins) and tox;
#   - QEMU 10.0 from bookworm-backports unpacked into a private prefix
#     (scripts/setup-qemu-backports.sh; the system QEMU is never touched).
# Safe to run again: each step is skipped when already done.
#
# --huge-shm (opt-in, a host change): remount /dev/shm with huge=advise, so the
# guest RAM files there get transparent huge pages (QEMU madvises its RAM;
# harness.qemu.hugeram). A TCG cell then costs about half the CPU-seconds on a
# host where 4 KiB page handling is expensive (README, "Performance"). Only
# mappings that ask for huge pages with madvise get them, so other /dev/shm
# users keep 4 KiB pages; not persistent across reboots (for that, an fstab
# entry for /dev/shm with huge=advise). The harness works the same without it.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

huge_shm=0
for arg in "$@"; do
  case "$arg" in
    --huge-shm) huge_shm=1 ;;
    *) echo "usage: scripts/setup.sh [--huge-shm]" >&2; exit 2 ;;
  esac
done
if [ "$huge_shm" = 1 ]; then
  if grep -qE '^[^ ]+ /dev/shm tmpfs [^ ]*huge=(always|within_size|advise)' /proc/mounts; then
    echo "setup: /dev/shm already allows huge pages" >&2
  else
    echo "setup: remounting /dev/shm with huge=advise (guest RAM files in huge pages)" >&2
    # Not fatal: where the remount is not allowed (a container without
    # CAP_SYS_ADMIN) the harness runs as it does without it, on 4 KiB pages.
    as_root mount -o remount,huge=advise /dev/shm ||
      echo "setup: could not remount /dev/shm; the RAM files stay on 4 KiB pages" >&2
  fi
fi

# stress-ng: the CPU hog benchmarks/flake_hunt.py runs beside the QEMU tests.
# gcc, libc6-dev: the Linux guest's agent (images/linux/agent, built -static);
# qemu-utils: qemu-img for the Linux cells' per-cell qcow2 disks and their check.
# openssh-server, iproute2: the two SSH test hosts of testcases/netns_hosts.py.
packages=(qemu-system-x86 qemu-system-arm binutils chromium postgresql stress-ng
          gcc libc6-dev qemu-utils openssh-server iproute2)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v -i 'running pip as the .root. user' >&2 || true
python3 -c 'import harness, qemu.qmp, yaml, numpy, build, tox, plotly, rich, playwright, psycopg' || { echo "setup: Python dependencies failed to install" >&2; exit 1; }
python3 -m ruff --version >/dev/null || { echo "setup: ruff failed to install" >&2; exit 1; }
# The harness's Avocado plugins are found through the package's entry points.
python3 -m avocado plugins 2>/dev/null | grep -q mharness-matrix || { echo "setup: the Avocado plugins (harness/avocado) are not registered" >&2; exit 1; }

if [ -x scripts/setup-qemu-backports.sh ] || [ -f scripts/setup-qemu-backports.sh ]; then
  bash scripts/setup-qemu-backports.sh
fi
