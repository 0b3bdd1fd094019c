#!/usr/bin/env bash
# CI's image test (tests/run.sh): build the generic-arm64 image with a test user and boot it
# under qemu-system-aarch64 (TCG) with images/boot-test.py: SMTP in, POP3 out, the
# configuration from the FAT partition (good and damaged), and a power cut under load.
#
# usage: images/test-image.sh [PROFILE]   (default generic-arm64; rpi-arm64 boots once)
#
# As root it installs what is missing (Debian: qemu-system-arm, mtools, dosfstools, fdisk,
# e2fsprogs, kmod, cpio, xz-utils, qemu-user-static). Needs dist/aarch64-unknown-linux-musl/
# poshta (images/build-binaries.sh). Downloaded Debian packages stay in images/.cache.
# Prints the build and test times.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROFILE=${1:-generic-arm64}

need=()
for pair in qemu-system-aarch64:qemu-system-arm mcopy:mtools mkfs.vfat:dosfstools sfdisk:fdisk \
    mke2fs:e2fsprogs debugfs:e2fsprogs depmod:kmod cpio:cpio xz:xz-utils qemu-aarch64-static:qemu-user-static; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "test-image: missing: ${need[*]} (apt-get install --no-install-recommends ${need[*]})" >&2
        exit 1
    fi
    for i in 1 2 3; do
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null && break
        [ "$i" = 3 ] && { echo "test-image: apt-get install ${need[*]} failed" >&2; exit 1; }
        sleep 5
    done
fi
start=$SECONDS
IMAGE_USERS="alice:secret" "$HERE/build.sh" "$PROFILE"
built=$SECONDS
python3 "$HERE/boot-test.py" --profile "$PROFILE"
echo "test-image: $PROFILE: build $((built - start)) s, boot test $((SECONDS - built)) s" >&2
