#!/usr/bin/env bash
# Makes the Debian trixie base image the container tests build on, without a registry:
# debootstrap (minbase) from Debian's archive, trimmed like the -slim images (no apt lists,
# docs, man pages or locales), imported into Podman as IMAGE. Does nothing when IMAGE exists.
# Needs root, debootstrap and podman.
#
# Usage: tests/deploy/base-image.sh [IMAGE]   (default: localhost/switchyard-test/trixie-slim)
set -euo pipefail

IMAGE="${1:-localhost/switchyard-test/trixie-slim}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$IMAGE"; then
  echo "$IMAGE"
  exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase trixie "$root" "$MIRROR" >&2
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$IMAGE" >&2
echo "$IMAGE"
