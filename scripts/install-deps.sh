#!/bin/sh
# Install the Debian packages the harness needs (idempotent; apt only when something is missing).
# Usage: scripts/install-deps.sh [--build]   (--build adds the kernel-build toolchain, linux-source-6.12 and
# lava-common, whose job schema tests/unit/test_lava.py validates against)
set -e
pkgs="qemu-system-x86 qemu-utils seabios busybox-static dropbear-bin kmod cpio xz-utils gcc libc6-dev python3-venv"
[ "$1" = "--build" ] && pkgs="$pkgs make flex bison bc libelf-dev libssl-dev ccache rsync dwarves git linux-source-6.12 lava-common openssh-client openssh-server"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
