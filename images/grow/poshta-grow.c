/*
 * poshta-grow: grow the image's data partition to the end of the card, and its mounted
 * ext4 with it, online. busybox has no resize2fs; this does the two steps resize2fs and
 * growpart would, with three system calls' worth of code (built static by images/build.sh).
 *
 * usage: poshta-grow DISK PARTNO MOUNTPOINT     e.g. poshta-grow /dev/mmcblk0 3 /data
 *
 * 1. MBR (the image's partition table; GPT is refused): partition PARTNO must be the last
 *    one on the disk. Its sector count is set to reach the end of the disk (rounded down to
 *    a MiB), written back with one 512-byte pwrite + fsync, and the kernel is told with
 *    BLKPG_RESIZE_PARTITION (works while the partition is mounted).
 * 2. The ext4 file system mounted on MOUNTPOINT is grown to the partition with
 *    EXT4_IOC_RESIZE_FS (the kernel's online resize, journaled).
 * Each step is skipped (or a no-op) when already done, so a power cut between them is repaired at the
 * next boot (the partition is then larger than the file system, which is harmless).
 * Exit status 0 (grown, or nothing to do), 1 error (one line on stderr).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/blkpg.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define EXT4_IOC_RESIZE_FS _IOW('f', 16, uint64_t)
#define SECTOR 512u
#define ALIGN_SECTORS 2048u /* 1 MiB */
#define MIN_GROWTH_SECTORS (16u * ALIGN_SECTORS) /* not worth it below 16 MiB */

static int fail(const char *what) {
    fprintf(stderr, "poshta-grow: %s: %s\n", what, strerror(errno));
    return 1;
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le32(unsigned char *p, uint32_t v) {
    p[0] = v & 0xff; p[1] = (v >> 8) & 0xff; p[2] = (v >> 16) & 0xff; p[3] = (v >> 24) & 0xff;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: poshta-grow DISK PARTNO MOUNTPOINT\n");
        return 2;
    }
    int pno = atoi(argv[2]);
    if (pno < 1 || pno > 4) {
        fprintf(stderr, "poshta-grow: partition number %s: MBR primary partitions are 1-4\n", argv[2]);
        return 2;
    }
    int fd = open(argv[1], O_RDWR | O_CLOEXEC);
    if (fd < 0) return fail(argv[1]);
    uint64_t disk_bytes = 0;
    if (ioctl(fd, BLKGETSIZE64, &disk_bytes) < 0) return fail("BLKGETSIZE64");
    unsigned char mbr[SECTOR];
    if (pread(fd, mbr, SECTOR, 0) != SECTOR) return fail("reading the MBR");
    if (mbr[510] != 0x55 || mbr[511] != 0xaa) {
        fprintf(stderr, "poshta-grow: %s: no MBR signature\n", argv[1]);
        return 1;
    }
    unsigned char *e = mbr + 446 + 16 * (pno - 1);
    if (e[4] == 0xee) {
        fprintf(stderr, "poshta-grow: %s: a GPT disk; not handled\n", argv[1]);
        return 1;
    }
    uint64_t start = le32(e + 8), count = le32(e + 12);
    if (count == 0) {
        fprintf(stderr, "poshta-grow: %s: partition %d is empty\n", argv[1], pno);
        return 1;
    }
    for (int i = 0; i < 4; i++) { /* only the last partition can grow */
        const unsigned char *o = mbr + 446 + 16 * i;
        if (i != pno - 1 && le32(o + 12) && le32(o + 8) > start) {
            fprintf(stderr, "poshta-grow: partition %d is not the last one\n", pno);
            return 1;
        }
    }
    uint64_t disk_sectors = disk_bytes / SECTOR;
    uint64_t end = disk_sectors > 0xffffffffu ? 0xffffffffu : disk_sectors; /* MBR limit: 2 TiB */
    uint64_t want = (end - start) / ALIGN_SECTORS * ALIGN_SECTORS;
    if (end > start && want >= count + MIN_GROWTH_SECTORS) {
        put_le32(e + 12, (uint32_t)want);
        if (pwrite(fd, mbr, SECTOR, 0) != SECTOR) return fail("writing the MBR");
        if (fsync(fd) < 0) return fail("fsync");
        struct blkpg_partition part = {
            .start = (long long)(start * SECTOR), .length = (long long)(want * SECTOR), .pno = pno};
        struct blkpg_ioctl_arg arg = {
            .op = BLKPG_RESIZE_PARTITION, .datalen = sizeof part, .data = &part};
        if (ioctl(fd, BLKPG, &arg) < 0) return fail("BLKPG_RESIZE_PARTITION");
        printf("poshta-grow: partition %d: %llu -> %llu MiB\n", pno,
               (unsigned long long)(count * SECTOR >> 20), (unsigned long long)(want * SECTOR >> 20));
        count = want;
    }
    close(fd);

    int dir = open(argv[3], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return fail(argv[3]);
    struct statvfs st;
    if (fstatvfs(dir, &st) < 0) return fail("statvfs");
    uint64_t fs_bytes = (uint64_t)st.f_blocks * st.f_frsize;
    uint64_t part_bytes = count * SECTOR;
    /* f_blocks leaves out ext4's metadata (journal, inode tables), so it is always below the
     * partition: ask for the partition's size every time (the kernel does nothing when the
     * file system already has it) and report only a change. */
    if (st.f_frsize && part_bytes > fs_bytes) {
        uint64_t blocks = part_bytes / st.f_frsize;
        if (ioctl(dir, EXT4_IOC_RESIZE_FS, &blocks) < 0) return fail("EXT4_IOC_RESIZE_FS");
        struct statvfs after;
        if (fstatvfs(dir, &after) == 0 && after.f_blocks > st.f_blocks)
            printf("poshta-grow: %s: ext4 grown from %llu to %llu MiB\n", argv[3],
                   (unsigned long long)(fs_bytes >> 20),
                   (unsigned long long)((uint64_t)after.f_blocks * after.f_frsize >> 20));
    }
    return 0;
}
