#!/usr/bin/env bash
# Build a flashable disk image for a board profile, without privileges (no mount, no loop
# device): an MBR with three partitions, each made as a file and placed with dd:
#   1. FAT "POSHTABOOT": kernel, initramfs, cmdline.txt (+ Raspberry Pi firmware, config.txt
#      and device trees for rpi-arm64). The person flashing the card may put poshta.conf or
#      main.cf here (docs/appliance.md).
#   2. ext4 "poshta-root", mounted read-only: busybox, poshta, the init scripts.
#   3. ext4 "poshta-data", read-write: configuration, queue, mail, logs, the saved clock.
#
# usage: images/build.sh generic-arm64|rpi-arm64|rpi-armv7
#   -> dist/images/PROFILE/{poshta-PROFILE.img, poshta-PROFILE.img.xz, vmlinuz, initrd.img}
#      (+ the Pi 3 B / Pi 2 B device trees for rpi-*, for qemu -M raspi3b / raspi2b)
#
# Environment:
#   POSHTA_BIN [dist/aarch64-unknown-linux-musl/poshta]  (images/build-binaries.sh makes it)
#   IMAGE_USERS: "name:password ..." mailbox users created at build time (for tests; a
#                real image gets its users from poshta.conf on the FAT partition)
#   IMAGE_HOSTNAME [mail.poshta.test]  IMAGE_DOMAIN [poshta.test]: the defaults until
#                poshta.conf sets others
#   IMAGE_CACHE [images/.cache]: downloaded Debian packages (kept between runs)
#   DATA_MIB [256]: size of the data partition in the image (empty space costs nothing
#                compressed); the first boot grows it to the end of the card (poshta-grow)
#
# Inputs come from Debian's arm64 or armhf packages (linux-image-*-arm64|armmp, busybox-static and, for
# rpi-*, raspi-firmware from the non-free-firmware component), fetched with a private
# apt state and sources list into IMAGE_CACHE: the machine's apt configuration is neither
# used nor changed (no `dpkg --add-architecture`). Needs mtools, dosfstools, fdisk (sfdisk),
# e2fsprogs, kmod (depmod/modprobe), cpio, xz-utils, qemu-user-static to run the arm64
# busybox and poshta once (applet list, password hashes), and gcc-aarch64-linux-gnu +
# libc6-dev-arm64-cross for images/grow/poshta-grow.c. Run as root or it uses fakeroot.
#
# /etc/poshta-build-time: seconds since the epoch at build time. Boards have no real-time
# clock; the boot sets the clock forward to this (or to the last saved time) if it is behind,
# else rustls would reject the fresh certificate as not yet valid.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PROFILE=${1:-}
# Per architecture: Debian's name, the kernel flavour, qemu-user, the C cross compiler.
case "$PROFILE" in
generic-arm64 | rpi-arm64)
    DEB_ARCH=arm64 KFLAVOUR=arm64 QEMU_USER=qemu-aarch64-static CROSS=aarch64-linux-gnu
    TRIPLE=aarch64-unknown-linux-musl
    ;;
rpi-armv7)
    DEB_ARCH=armhf KFLAVOUR=armmp QEMU_USER=qemu-arm-static CROSS=arm-linux-gnueabihf
    TRIPLE=armv7-unknown-linux-musleabihf
    ;;
*)
    echo "usage: images/build.sh generic-arm64|rpi-arm64|rpi-armv7" >&2
    exit 2
    ;;
esac
POSHTA_BIN=${POSHTA_BIN:-$ROOT/dist/$TRIPLE/poshta}
IMAGE_HOSTNAME=${IMAGE_HOSTNAME:-mail.poshta.test}
IMAGE_DOMAIN=${IMAGE_DOMAIN:-poshta.test}
CACHE=${IMAGE_CACHE:-$HERE/.cache}
DATA_MIB=${DATA_MIB:-256}
OUT=$ROOT/dist/images/$PROFILE
WORK=$OUT/work

log() { echo "build.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}
[ -x "$POSHTA_BIN" ] || die "no poshta binary at $POSHTA_BIN (run images/build-binaries.sh)"
for tool in mcopy mkfs.vfat sfdisk mke2fs depmod modprobe cpio xz "$QEMU_USER" "$CROSS-gcc"; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install --no-install-recommends mtools dosfstools fdisk e2fsprogs kmod cpio xz-utils qemu-user-static gcc-$CROSS libc6-dev-$DEB_ARCH-cross)"
done
if [ "$(id -u)" != 0 ] && [ -z "${FAKEROOTKEY:-}" ]; then
    command -v fakeroot >/dev/null || die "not root and no fakeroot"
    exec fakeroot -- "$0" "$@"
fi
start=$SECONDS

# --- Debian arm64 packages, with a private apt state and sources list --------------------
apt=$CACHE/apt-$DEB_ARCH
mkdir -p "$apt/state/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$apt/parts"
[ -f "$apt/status" ] || : >"$apt/status"
# non-free-firmware holds raspi-firmware; the machine's own sources need not list it.
cat >"$apt/sources.list" <<SOURCES
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main non-free-firmware
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main non-free-firmware
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main non-free-firmware
SOURCES
opts=(-o "Dir::State=$apt/state" -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt/cache"
    -o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/parts"
    -o "APT::Architecture=$DEB_ARCH" -o "APT::Architectures=$DEB_ARCH" -o Debug::NoLocking=1
    -o APT::Sandbox::User=root)
want=(busybox-static)
[ "$PROFILE" != generic-arm64 ] && want+=(raspi-firmware)
have() { ls "$apt"/debs/"$1"_*.deb >/dev/null 2>&1; }
missing=0
have "linux-image-*-$KFLAVOUR" || missing=1
for p in "${want[@]}"; do have "$p" || missing=1; done
if [ "$missing" = 1 ]; then
    for i in 1 2 3; do
        # A failing index (the mirror has answered size mismatches) is fine if the
        # downloads work.
        apt-get "${opts[@]}" update -q >/dev/null 2>&1 || true
        kpkg=$(apt-cache "${opts[@]}" depends "linux-image-$KFLAVOUR" 2>/dev/null | sed -n "s/^ *Depends: \(linux-image-[0-9].*-$KFLAVOUR\)\$/\1/p" | head -1)
        if [ -n "$kpkg" ] && (cd "$apt/debs" && apt-get "${opts[@]}" download "$kpkg" "${want[@]}" >/dev/null 2>&1); then
            break
        fi
        [ "$i" = 3 ] && die "could not download $kpkg ${want[*]}"
        sleep 5
    done
fi
# shellcheck disable=SC2012,SC2086 # $1 is a glob; Debian file names are plain
newest() { ls -v "$apt"/debs/$1_*.deb | tail -1; }

rm -rf "$WORK"
mkdir -p "$WORK/kernel" "$WORK/busybox" "$WORK/initramfs" "$WORK/rootfs" "$WORK/data" "$WORK/boot"
dpkg-deb -x "$(newest "linux-image-*-$KFLAVOUR")" "$WORK/kernel"
dpkg-deb -x "$(newest busybox-static)" "$WORK/busybox"
KV=$(basename "$(dirname "$(find "$WORK/kernel/lib/modules" -mindepth 2 -maxdepth 2 -name modules.order | head -1)")")
log "kernel $KV"
depmod -b "$WORK/kernel" "$KV"
BB=$WORK/busybox/bin/busybox

busybox_tree() { # DIR: busybox and a link per applet
    local d=$1 a
    mkdir -p "$d/bin" "$d/sbin" "$d/usr/bin" "$d/usr/sbin"
    cp "$BB" "$d/bin/busybox"
    for a in $("$QEMU_USER" "$BB" --list-full); do
        [ -e "$d/$a" ] || ln -s /bin/busybox "$d/$a"
    done
}

# --- initramfs: load the drivers, mount the root read-only, switch ------------------------
# Debian's generic kernel builds the disk, network, ext4 and FAT drivers as modules. Modules
# loaded here stay loaded after switch_root (the root has no /lib/modules).
modules=(ext4 vfat nls_cp437 nls_ascii nls_utf8 nls_iso8859_1)
case "$PROFILE" in
generic-arm64) modules+=(virtio_pci virtio_blk virtio_net) ;;
# SD card (sdhci-iproc: Pi 3 sdhci and Pi 4 emmc2; bcm2835: the Pi 3 sdhost), Ethernet
# (Pi 3 B: smsc95xx on USB via dwc2; 3 B+: lan78xx; Pi 4: genet), the VL805 USB reset on
# the Pi 4, the watchdog and hardware RNG, and usb-net for qemu's raspi3b.
rpi-*) modules+=(mmc_block sdhci_iproc bcm2835 dwc2 smsc95xx lan78xx genet broadcom
    mdio_bcm_unimac reset_raspberrypi xhci_pci raspberrypi_cpufreq bcm2835_wdt bcm2835_rng
    cdc_ether rndis_host) ;;
esac
I=$WORK/initramfs
busybox_tree "$I"
mkdir -p "$I/proc" "$I/sys" "$I/dev" "$I/newroot" "$I/modules"
: >"$I/modules/order"
for m in "${modules[@]}"; do
    # A module this kernel lacks or has built in is skipped.
    modprobe -d "$WORK/kernel" -S "$KV" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}' || true
done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$I/modules/"
    basename "$ko" >>"$I/modules/order"
done
cat >"$I/init" <<'INIT'
#!/bin/sh
# initramfs: load the drivers the root file system needs, mount it read-only, hand over.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do insmod "/modules/$m" 2>/dev/null; done
root=$(sed -n 's/.*root=\([^ ]*\).*/\1/p' /proc/cmdline)
dev=
for i in $(seq 150); do
    case "$root" in LABEL=*) dev=$(findfs "$root" 2>/dev/null) ;; *) dev=$root ;; esac
    [ -n "$dev" ] && [ -b "$dev" ] && break
    sleep 0.1
done
if ! mount -t ext4 -o ro,noatime "$dev" /newroot; then
    echo "initramfs: cannot mount root $root ($dev); dropping to a shell"
    exec sh
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
chmod 0755 "$I/init"
(cd "$I" && find . | cpio -o -H newc --quiet | gzip -9) >"$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
cp "$WORK/kernel/boot/vmlinuz-$KV" "$OUT/vmlinuz"

# --- root file system (read-only) --------------------------------------------------------
R=$WORK/rootfs
busybox_tree "$R"
mkdir -p "$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/run" "$R/root" "$R/boot" "$R/data" \
    "$R/etc/poshta" "$R/var/spool/poshta" "$R/var/lib/poshta" "$R/var/log"
chmod 1777 "$R/tmp"
chmod 0700 "$R/root"
cp -a "$HERE/rootfs/." "$R/"
install -m 0755 "$POSHTA_BIN" "$R/usr/sbin/poshta"
# The system MTA's names (`poshta install --links` on a normal system): scripts, cron and
# NAS tools send with /usr/sbin/sendmail. Replaces busybox's sendmail applet if linked above.
ln -sf poshta "$R/usr/sbin/sendmail"
ln -sf ../sbin/poshta "$R/usr/bin/mailq"
ln -sf ../sbin/poshta "$R/usr/bin/newaliases"
# Grows the data partition to the card's size at boot (busybox has no resize2fs).
"$CROSS-gcc" -static -Os -Wall -Wextra -o "$R/usr/sbin/poshta-grow" "$HERE/grow/poshta-grow.c"
"$CROSS-strip" "$R/usr/sbin/poshta-grow"
# The image's default main.cf: the board profile with the image's names. It seeds the data
# partition and is what poshta falls back to when the data partition's copy is damaged.
{
    sed -e "s/^#myhostname = .*/myhostname = $IMAGE_HOSTNAME/" \
        -e "s/^#mydomain = .*/mydomain = $IMAGE_DOMAIN/" "$ROOT/board/$PROFILE/main.cf"
    echo
    echo "# Added by images/build.sh: mail for the domain is local."
    echo "mydestination = \$myhostname, \$mydomain, localhost"
} >"$R/usr/share/poshta/main.cf"
# Accounts: poshta drops root to the system user `poshta` (privilege separation); the root
# is read-only, so it is made here rather than by `poshta init` at boot.
cat >"$R/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
poshta:x:100:101:poshta mail system:/var/spool/poshta:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$R/etc/group" <<'GROUP'
root:x:0:
poshta:x:101:
nogroup:x:65534:
GROUP
printf 'root:*:19000:0:99999:7:::\nposhta:!:19000::::::\nnobody:!:19000::::::\n' >"$R/etc/shadow"
chmod 0640 "$R/etc/shadow"
ln -sf /run/hosts "$R/etc/hosts"
ln -sf /run/resolv.conf "$R/etc/resolv.conf"
echo poshta >"$R/etc/hostname"
date +%s >"$R/etc/poshta-build-time"
echo "$PROFILE $(date -u +%Y-%m-%d) kernel $KV" >"$R/etc/poshta-image"

# --- data partition (read-write): configuration, queue, mail, logs ----------------------
D=$WORK/data
mkdir -p "$D/etc/poshta/tls" "$D/spool/poshta" "$D/lib/poshta/mail" "$D/log"
chmod 0700 "$D/etc/poshta/tls" "$D/spool/poshta" "$D/lib/poshta/mail"
cp "$R/usr/share/poshta/main.cf" "$D/etc/poshta/main.cf"
: >"$D/etc/poshta/users"
chmod 0600 "$D/etc/poshta/users"
if [ -n "${IMAGE_USERS:-}" ]; then
    # `user add` writes the files main.cf names (the board's paths): point a throwaway
    # main.cf into the staging tree instead. Hashing runs the arm64 binary under qemu-user.
    sed -e "s|^mailbox_users_file = .*|mailbox_users_file = $D/etc/poshta/users|" \
        -e "s|^virtual_mailbox_base = .*|virtual_mailbox_base = $D/lib/poshta/mail|" \
        "$D/etc/poshta/main.cf" >"$WORK/staging.cf"
    for u in $IMAGE_USERS; do
        printf '%s\n' "${u#*:}" | "$QEMU_USER" "$POSHTA_BIN" user add "${u%%:*}" \
            --password-stdin -c "$WORK/staging.cf" >/dev/null || die "user add ${u%%:*} failed"
    done
fi
# RFC 5321 §4.5.1: mail to postmaster must be accepted, so the image has a postmaster
# mailbox from the start, with a random password nobody knows (poshta.conf's
# `user postmaster = ...` sets one). Hashed here: argon2 under TCG costs a second at boot.
if [ -z "$(awk -F: '$1 == "postmaster"' "$D/etc/poshta/users")" ]; then
    sed -e "s|^mailbox_users_file = .*|mailbox_users_file = $D/etc/poshta/users|" \
        -e "s|^virtual_mailbox_base = .*|virtual_mailbox_base = $D/lib/poshta/mail|" \
        "$D/etc/poshta/main.cf" >"$WORK/staging.cf"
    head -c 24 /dev/urandom | base64 | "$QEMU_USER" "$POSHTA_BIN" user add postmaster \
        --password-stdin -c "$WORK/staging.cf" >/dev/null || die "user add postmaster failed"
fi
rm -f "$D/etc/poshta/users.lock"

# --- boot partition ----------------------------------------------------------------------
B=$WORK/boot
cp "$OUT/vmlinuz" "$OUT/initrd.img" "$B/"
case "$PROFILE" in
generic-arm64)
    BOOT_MIB=64 # the arm64 vmlinuz is uncompressed (~33 MB)
    printf 'console=ttyAMA0 root=LABEL=poshta-root rootwait\n' >"$B/cmdline.txt"
    ;;
rpi-*)
    BOOT_MIB=128
    fw=$WORK/firmware
    dpkg-deb -x "$(newest raspi-firmware)" "$fw"
    fwdir=$fw/usr/lib/raspi-firmware
    [ -f "$fwdir/start4.elf" ] || die "raspi-firmware: no start4.elf in $fwdir"
    cp "$fwdir"/bootcode.bin "$fwdir"/start*.elf "$fwdir"/fixup*.dat "$B/"
    # Upstream (Debian) device trees: the firmware looks for these names with
    # upstream_kernel=1 (Pi 3 B/B+/A+, Zero 2 W, CM3 as bcm2837; Pi 4, 400, CM4 as bcm2711;
    # the Pi 2 as bcm2836). arm64 keeps them in broadcom/, armhf at the top.
    dtbs=$WORK/kernel/usr/lib/linux-image-$KV
    [ -d "$dtbs/broadcom" ] && dtbs=$dtbs/broadcom
    for d in "$dtbs"/bcm2710-*.dtb "$dtbs"/bcm2711-*.dtb "$dtbs"/bcm2836-*.dtb "$dtbs"/bcm2837-*.dtb; do
        [ -f "$d" ] && cp "$d" "$B/"
    done
    for d in bcm2837-rpi-3-b.dtb bcm2836-rpi-2-b.dtb; do
        [ -f "$B/$d" ] && cp "$B/$d" "$OUT/"
    done
    if [ "$DEB_ARCH" = arm64 ]; then
        arch_lines='# 64-bit kernel (Pi 3, 3+, Zero 2 W, 4, 400).
arm_64bit=1'
    else
        arch_lines='# 32-bit kernel (Pi 2, 3, 3+, Zero 2 W, 4, 400: armv7).
arm_64bit=0'
    fi
    cat >"$B/config.txt" <<CONFIG
# Raspberry Pi firmware configuration for the poshta image ($PROFILE).
$arch_lines
# Debian's upstream kernel and device trees.
upstream_kernel=1
kernel=vmlinuz
initramfs initrd.img followkernel
# The serial console on GPIO 14/15 (a root shell after Enter; docs/appliance.md).
enable_uart=1
# A mail server needs no graphics: the least memory for the GPU.
gpu_mem=16
disable_splash=1
CONFIG
    # The last console is /dev/console (boot messages, the shell): the serial port on GPIO
    # 14/15, since the board is headless; the kernel also writes to the screen. That port
    # is the mini UART (ttyS1) on the Pi 3/4/Zero 2 W, the PL011 (ttyAMA0) on the Pi 2.
    serial=ttyS1,115200
    [ "$DEB_ARCH" = armhf ] && serial="ttyAMA0,115200 console=ttyS1,115200"
    printf 'console=tty1 console=%s root=LABEL=poshta-root rootwait\n' "$serial" >"$B/cmdline.txt"
    ;;
esac
cat >"$B/poshta.conf.example" <<'EXAMPLE'
# Copy to poshta.conf on this partition and edit: applied at the next boot (docs/appliance.md).
# Any main.cf key works here too; these are the usual ones.
#domain = example.org
#hostname = mail.example.org
#mynetworks = 127.0.0.0/8, 192.168.1.0/24
#relayhost = [smtp.example.net]:587
#ntp = pool.ntp.org
# Mailbox users: a password (replaced by its hash at the first boot) or an argon2id hash.
#user alice = correct horse battery staple
#user postmaster = another secret
EXAMPLE

# --- the disk image: MBR, FAT boot at 1 MiB, ext4 root, ext4 data ------------------------
ROOT_MIB=64
IMG=$OUT/poshta-$PROFILE.img
rm -f "$WORK/boot.vfat" "$WORK/root.ext4" "$WORK/data.ext4"
mkfs.vfat -C -n POSHTABOOT "$WORK/boot.vfat" $((BOOT_MIB * 1024)) >/dev/null
mcopy -s -i "$WORK/boot.vfat" "$B"/* ::/
# No reserved blocks on the root (read-only); the data partition keeps ext4's default 5%
# for root, whose poshta still writes when the disk fills (the queue answers 452 first).
mke2fs -q -t ext4 -L poshta-root -m 0 -E root_owner=0:0 -d "$R" "$WORK/root.ext4" "${ROOT_MIB}M"
mke2fs -q -t ext4 -L poshta-data -E root_owner=0:0 -d "$D" "$WORK/data.ext4" "${DATA_MIB}M"
truncate -s $(((1 + BOOT_MIB + ROOT_MIB + DATA_MIB) * 1024 * 1024)) "$IMG.tmp"
sfdisk -q "$IMG.tmp" <<PARTS
label: dos
start=1MiB, size=${BOOT_MIB}MiB, type=c, bootable
start=$((1 + BOOT_MIB))MiB, size=${ROOT_MIB}MiB, type=83
start=$((1 + BOOT_MIB + ROOT_MIB))MiB, size=${DATA_MIB}MiB, type=83
PARTS
dd if="$WORK/boot.vfat" of="$IMG.tmp" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$WORK/root.ext4" of="$IMG.tmp" bs=1M seek=$((1 + BOOT_MIB)) conv=notrunc,sparse status=none
dd if="$WORK/data.ext4" of="$IMG.tmp" bs=1M seek=$((1 + BOOT_MIB + ROOT_MIB)) conv=notrunc,sparse status=none
mv "$IMG.tmp" "$IMG"
# The partition offsets, for tests and for people who want to look inside with mtools or
# debugfs without a loop device.
printf 'boot_offset=%d\nroot_offset=%d\ndata_offset=%d\ndata_bytes=%d\n' $((1024 * 1024)) \
    $(((1 + BOOT_MIB) * 1024 * 1024)) $(((1 + BOOT_MIB + ROOT_MIB) * 1024 * 1024)) \
    $((DATA_MIB * 1024 * 1024)) >"$OUT/layout"
rm -f "$IMG.xz"
xz -T0 -k -6 "$IMG"
log "$IMG: $(stat -c %s "$IMG") bytes, compressed $(stat -c %s "$IMG.xz") bytes ($((SECONDS - start)) s)"
