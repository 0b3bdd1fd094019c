#!/usr/bin/env bash
# Build a flashable disk image for a board profile, without privileges (no mount, no loop
# device): an MBR with a FAT boot partition (kernel, initramfs) and an ext4 root made with
# `mke2fs -d` holding busybox, poshta and its configuration.
#
# usage: images/build.sh generic-arm64
#   -> dist/images/generic-arm64/{poshta-generic-arm64.img, vmlinuz, initrd.img}
#
# Only generic-arm64 is implemented so far (it is what the qemu boot test runs:
# images/boot-test.sh). rpi-arm64 needs the Raspberry Pi firmware (raspi-firmware, in
# Debian's non-free-firmware component) on the FAT partition; not done yet.
#
# Environment:
#   POSHTA_BIN [dist/aarch64-unknown-linux-musl/poshta]  (images/build-binaries.sh makes it)
#   IMAGE_USERS: "name:password ..." mailbox users created at build time (tests use this;
#                a real image gets its users from the FAT partition later: not done yet)
#   IMAGE_HOSTNAME [mail.poshta.test]  IMAGE_DOMAIN [poshta.test]
#
# Inputs come from Debian's arm64 packages (linux-image-*-arm64, busybox-static), fetched
# with a private apt state into dist/.cache (no `dpkg --add-architecture`). Needs mtools,
# dosfstools, fdisk (sfdisk), e2fsprogs, kmod (depmod/modprobe), cpio, and qemu-user-static
# to run the arm64 busybox once (its applet list). Run as root or it uses fakeroot.
#
# Layout of the root file system (read-only friendly: everything poshta writes is under /var
# and /etc/poshta, which a later step can move to a data partition):
#   /bin/busybox + applet links, /sbin/init -> busybox init, /etc/inittab, /etc/init.d/rcS
#   /usr/sbin/poshta, /etc/poshta/{main.cf,users}, /var/spool/poshta, /var/lib/poshta/mail
#   /etc/poshta-build-time: seconds since the epoch when the image was built. Boards have no
#   real-time clock; rcS sets the clock forward to this if it is behind (else rustls would
#   reject the fresh certificate as not yet valid).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PROFILE=${1:-}
[ "$PROFILE" = generic-arm64 ] || {
    echo "usage: images/build.sh generic-arm64   (rpi-arm64, rpi-armv7: not yet)" >&2
    exit 2
}
POSHTA_BIN=${POSHTA_BIN:-$ROOT/dist/aarch64-unknown-linux-musl/poshta}
IMAGE_HOSTNAME=${IMAGE_HOSTNAME:-mail.poshta.test}
IMAGE_DOMAIN=${IMAGE_DOMAIN:-poshta.test}
CACHE=$ROOT/dist/.cache
OUT=$ROOT/dist/images/$PROFILE
WORK=$OUT/work

log() { echo "build.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}
[ -x "$POSHTA_BIN" ] || die "no poshta binary at $POSHTA_BIN (run images/build-binaries.sh)"
for tool in mcopy mkfs.vfat sfdisk mke2fs depmod modprobe cpio qemu-aarch64-static; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install --no-install-recommends mtools dosfstools fdisk e2fsprogs kmod cpio qemu-user-static)"
done
if [ "$(id -u)" != 0 ] && [ -z "${FAKEROOTKEY:-}" ]; then
    command -v fakeroot >/dev/null || die "not root and no fakeroot"
    exec fakeroot -- "$0" "$@"
fi

# --- Debian arm64 packages ---------------------------------------------------------------
apt=$CACHE/apt-arm64
mkdir -p "$apt/state/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
[ -f "$apt/status" ] || : >"$apt/status"
opts=(-o "Dir::State=$apt/state" -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt/cache"
    -o APT::Architecture=arm64 -o APT::Architectures=arm64 -o Debug::NoLocking=1
    -o APT::Sandbox::User=root)
if ! ls "$apt"/debs/linux-image-*-arm64_*.deb >/dev/null 2>&1 || ! ls "$apt"/debs/busybox-static_*.deb >/dev/null 2>&1; then
    for i in 1 2 3; do
        # A failing index (the mirror has answered size mismatches) is fine if the
        # downloads work.
        apt-get "${opts[@]}" update -q >/dev/null 2>&1 || true
        kpkg=$(apt-cache "${opts[@]}" depends linux-image-arm64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-arm64\)$/\1/p' | head -1)
        if [ -n "$kpkg" ] && (cd "$apt/debs" && apt-get "${opts[@]}" download "$kpkg" busybox-static >/dev/null 2>&1); then
            break
        fi
        [ "$i" = 3 ] && die "could not download the kernel and busybox packages"
        sleep 5
    done
fi

rm -rf "$WORK"
mkdir -p "$WORK/kernel" "$WORK/busybox" "$WORK/initramfs" "$WORK/rootfs"
for deb in "$apt"/debs/linux-image-*-arm64_*.deb; do :; done # the last (newest) one
dpkg-deb -x "$deb" "$WORK/kernel"
for deb in "$apt"/debs/busybox-static_*.deb; do :; done
dpkg-deb -x "$deb" "$WORK/busybox"
KV=$(basename "$(dirname "$(find "$WORK/kernel/lib/modules" -mindepth 2 -maxdepth 2 -name modules.order | head -1)")")
log "kernel $KV"
depmod -b "$WORK/kernel" "$KV"
BB=$WORK/busybox/bin/busybox

busybox_tree() { # DIR: busybox and a link per applet
    local d=$1 a
    mkdir -p "$d/bin" "$d/sbin" "$d/usr/bin" "$d/usr/sbin"
    cp "$BB" "$d/bin/busybox"
    for a in $(qemu-aarch64-static "$BB" --list-full); do
        [ -e "$d/$a" ] || ln -s /bin/busybox "$d/$a"
    done
}

# --- initramfs: load the modules for virtio disk/net and ext4, mount the root, switch -----
# Debian's generic kernel builds these as modules (virtio_pci, virtio_blk, ext4, ...).
I=$WORK/initramfs
busybox_tree "$I"
mkdir -p "$I/proc" "$I/sys" "$I/dev" "$I/newroot" "$I/modules"
: >"$I/modules/order"
for m in virtio_pci virtio_blk virtio_net ext4; do
    modprobe -d "$WORK/kernel" -S "$KV" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$I/modules/"
    basename "$ko" >>"$I/modules/order"
done
cat >"$I/init" <<'EOF'
#!/bin/sh
# initramfs: load the drivers the root file system needs, mount it, hand over.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do insmod "/modules/$m" 2>/dev/null; done
root=$(sed -n 's/.*root=\([^ ]*\).*/\1/p' /proc/cmdline)
case "$root" in LABEL=*) root=$(findfs "$root") ;; esac
for i in $(seq 100); do [ -b "$root" ] && break; sleep 0.1; done
if ! mount -t ext4 -o rw,noatime "$root" /newroot; then
    echo "initramfs: cannot mount root $root; dropping to a shell"
    exec sh
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
EOF
chmod 0755 "$I/init"
(cd "$I" && find . | cpio -o -H newc --quiet | gzip -9) >"$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
cp "$WORK/kernel/boot/vmlinuz-$KV" "$OUT/vmlinuz"

# --- root file system -------------------------------------------------------------------
R=$WORK/rootfs
busybox_tree "$R"
mkdir -p "$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/run" "$R/etc/init.d" "$R/var/log" \
    "$R/etc/poshta/tls" "$R/var/spool/poshta" "$R/var/lib/poshta/mail" "$R/root"
chmod 1777 "$R/tmp"
chmod 0700 "$R/var/spool/poshta" "$R/var/lib/poshta/mail" "$R/etc/poshta/tls"
install -m 0755 "$POSHTA_BIN" "$R/usr/sbin/poshta"
{
    sed -e "s/^#myhostname = .*/myhostname = $IMAGE_HOSTNAME/" \
        -e "s/^#mydomain = .*/mydomain = $IMAGE_DOMAIN/" "$ROOT/board/$PROFILE/main.cf"
    echo
    echo "# Added by images/build.sh: mail for the domain is local."
    echo "mydestination = \$myhostname, \$mydomain, localhost"
} >"$R/etc/poshta/main.cf"
echo "$IMAGE_HOSTNAME" >"$R/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
printf '127.0.0.1 localhost\n10.0.2.15 %s\n' "$IMAGE_HOSTNAME" >"$R/etc/hosts"
date +%s >"$R/etc/poshta-build-time"
# Users given at build time (hashing runs the arm64 binary under qemu-user: same format).
: >"$R/etc/poshta/users"
chmod 0600 "$R/etc/poshta/users"
if [ -n "${IMAGE_USERS:-}" ]; then
    # `user add` writes mailbox_users_file as named in main.cf (/etc/poshta/users, i.e. the
    # build host's path): build a throwaway main.cf pointing into the staging tree instead.
    sed "s|^mailbox_users_file = .*|mailbox_users_file = $R/etc/poshta/users|" \
        "$R/etc/poshta/main.cf" >"$WORK/staging.cf"
    for u in $IMAGE_USERS; do
        printf '%s\n' "${u#*:}" | qemu-aarch64-static "$POSHTA_BIN" user add "${u%%:*}" \
            --password-stdin -c "$WORK/staging.cf" >/dev/null || die "user add ${u%%:*} failed"
    done
    rm -f "$R/etc/poshta/users.lock"
fi
cat >"$R/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
::respawn:/usr/sbin/poshta serve -c /etc/poshta/main.cf
::ctrlaltdel:/bin/umount -a -r
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
EOF
cat >"$R/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# First thing after the kernel: file systems, clock, network, poshta's files.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
hostname -F /etc/hostname
# No real-time clock: never run behind the image's build time (fake-hwclock's idea), so
# certificates made at first boot are valid (rustls rejects "not yet valid").
built=$(cat /etc/poshta-build-time 2>/dev/null || echo 0)
[ "$(date +%s)" -lt "$built" ] && date -s "@$built" >/dev/null
ifconfig lo 127.0.0.1 up
# qemu's user network (and most LANs) answer DHCP; fall back to qemu's fixed address.
ifconfig eth0 up 2>/dev/null
if ! udhcpc -i eth0 -q -n -t 5 -s /etc/udhcpc.script >/dev/null 2>&1; then
    ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up
    route add default gw 10.0.2.2
fi
# First boot: a certificate (and any missing directories); nothing existing is touched.
/usr/sbin/poshta init --domain "$(sed -n 's/^mydomain = //p' /etc/poshta/main.cf)" \
    -c /etc/poshta/main.cf >/dev/null 2>&1
echo "rcS: up, poshta starting"
EOF
cat >"$R/etc/udhcpc.script" <<'EOF'
#!/bin/sh
# udhcpc hook: configure the lease on the interface.
case "$1" in
bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    [ -n "$router" ] && route add default gw "${router%% *}" 2>/dev/null
    for d in $dns; do echo "nameserver $d"; done >/run/resolv.conf
    ;;
esac
exit 0
EOF
chmod 0755 "$R/etc/init.d/rcS" "$R/etc/udhcpc.script"
ln -sf /run/resolv.conf "$R/etc/resolv.conf"

# --- the disk image: MBR, FAT boot partition at 1 MiB, ext4 root after it ----------------
BOOT_MIB=64  # the arm64 vmlinuz is uncompressed (~33 MB)
ROOT_MIB=96
IMG=$OUT/poshta-$PROFILE.img
rm -f "$WORK/boot.vfat" "$WORK/root.ext4"
mkfs.vfat -C -n POSHTABOOT "$WORK/boot.vfat" $((BOOT_MIB * 1024)) >/dev/null
mcopy -i "$WORK/boot.vfat" "$OUT/vmlinuz" "$OUT/initrd.img" ::/
printf 'console=ttyAMA0 root=LABEL=poshta-root rootwait\n' >"$WORK/cmdline.txt"
mcopy -i "$WORK/boot.vfat" "$WORK/cmdline.txt" ::/
mke2fs -q -t ext4 -L poshta-root -E root_owner=0:0 -d "$R" "$WORK/root.ext4" "${ROOT_MIB}M"
truncate -s $(((1 + BOOT_MIB + ROOT_MIB) * 1024 * 1024)) "$IMG.tmp"
sfdisk -q "$IMG.tmp" <<EOF
label: dos
start=1MiB, size=${BOOT_MIB}MiB, type=c, bootable
start=$((1 + BOOT_MIB))MiB, size=${ROOT_MIB}MiB, type=83
EOF
dd if="$WORK/boot.vfat" of="$IMG.tmp" bs=1M seek=1 conv=notrunc status=none
dd if="$WORK/root.ext4" of="$IMG.tmp" bs=1M seek=$((1 + BOOT_MIB)) conv=notrunc status=none
mv "$IMG.tmp" "$IMG"
rm -f "$IMG.xz"
xz -T0 -k -6 "$IMG"
log "$IMG ($(stat -c %s "$IMG") bytes; compressed $(stat -c %s "$IMG.xz") bytes)"
