/* tuoba-grow-root: grow the partition holding / to the end of its disk, then the mounted ext4
 * filesystem on it. The stage-2 counterpart of growpart + resize2fs, for images written to SD
 * cards larger than themselves.
 *
 * The root partition must be a primary MBR partition and the last one on the disk. Its entry's
 * sector count is rewritten, the kernel is told with BLKPG_RESIZE_PARTITION (no re-read of the
 * whole table, so nothing mounted is disturbed), and ext4 grows online (EXT4_IOC_RESIZE_FS, what
 * resize2fs does for a mounted filesystem). Prints one line saying what it did; exit 0 also when
 * there is nothing to grow, 1 with the reason otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <linux/blkpg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define EXT4_IOC_RESIZE_FS _IOW('f', 16, uint64_t) /* fs/ext4/ext4.h, not in the UAPI */
#define SECTOR 512ULL
#define SLACK (2048ULL) /* sectors: less free space than 1 MiB is not worth growing into */

static const char *me = "tuoba-grow-root";

static int fail(const char *what, const char *detail)
{
	fprintf(stderr, "%s: %s: %s\n", me, what, detail ? detail : strerror(errno));
	return 1;
}

static int read_number(const char *path, unsigned long long *out)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	int ok = fscanf(f, "%llu", out) == 1;
	fclose(f);
	return ok ? 0 : -1;
}

static uint32_t le32(const unsigned char *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

int main(void)
{
	struct stat st;
	if (stat("/", &st) != 0)
		return fail("stat /", NULL);
	char sys[PATH_MAX], path[PATH_MAX], real[PATH_MAX];
	snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u", major(st.st_dev), minor(st.st_dev));

	unsigned long long partno, start, size, disk_size;
	snprintf(path, sizeof(path), "%s/partition", sys);
	if (read_number(path, &partno) != 0)
		return fail(sys, "the root filesystem is not on a partition");
	snprintf(path, sizeof(path), "%s/start", sys);
	if (read_number(path, &start) != 0)
		return fail(path, NULL);
	snprintf(path, sizeof(path), "%s/size", sys);
	if (read_number(path, &size) != 0)
		return fail(path, NULL);
	if (!realpath(sys, real))
		return fail(sys, NULL);
	char part_name[NAME_MAX + 1], disk_name[NAME_MAX + 1];
	snprintf(part_name, sizeof(part_name), "%s", basename(real));
	snprintf(disk_name, sizeof(disk_name), "%s", basename(dirname(real)));
	snprintf(path, sizeof(path), "/sys/block/%s/size", disk_name);
	if (read_number(path, &disk_size) != 0)
		return fail(path, NULL);
	if (partno < 1 || partno > 4)
		return fail(part_name, "not a primary MBR partition");

	/* The table: the root's entry must match what the kernel has, and nothing may follow it. */
	char disk[PATH_MAX];
	snprintf(disk, sizeof(disk), "/dev/%s", disk_name);
	int fd = open(disk, O_RDWR | O_SYNC);
	if (fd < 0)
		return fail(disk, NULL);
	unsigned char mbr[SECTOR];
	if (pread(fd, mbr, sizeof(mbr), 0) != (ssize_t)sizeof(mbr))
		return fail(disk, "cannot read the partition table");
	if (mbr[510] != 0x55 || mbr[511] != 0xaa)
		return fail(disk, "no MBR partition table");
	unsigned char *entry = mbr + 446 + 16 * (partno - 1);
	if (entry[4] == 0xee)
		return fail(disk, "a GPT disk (protective MBR); only MBR is handled");
	if (le32(entry + 8) != start || le32(entry + 12) != size)
		return fail(disk, "the table's entry differs from the kernel's view of the partition");
	for (int i = 0; i < 4; i++) {
		const unsigned char *e = mbr + 446 + 16 * i;
		if (i != (int)partno - 1 && e[4] != 0 && le32(e + 8) > start)
			return fail(part_name, "not the last partition on the disk");
	}
	unsigned long long new_size = disk_size - start;
	if (new_size > UINT32_MAX)
		new_size = UINT32_MAX; /* the most an MBR entry can hold */
	new_size -= new_size % 8; /* whole 4 KiB blocks */
	if (new_size < size + SLACK) {
		printf("%s: nothing to grow: /dev/%s already fills %s (%llu MiB)\n", me, part_name,
		       disk, size * SECTOR >> 20);
		return 0;
	}

	entry[12] = new_size & 0xff;
	entry[13] = new_size >> 8 & 0xff;
	entry[14] = new_size >> 16 & 0xff;
	entry[15] = new_size >> 24 & 0xff;
	if (pwrite(fd, mbr, sizeof(mbr), 0) != (ssize_t)sizeof(mbr) || fsync(fd) != 0)
		return fail(disk, "cannot write the partition table");

	struct blkpg_partition part = {
		.start = (long long)(start * SECTOR),
		.length = (long long)(new_size * SECTOR),
		.pno = (int)partno,
	};
	struct blkpg_ioctl_arg arg = {
		.op = BLKPG_RESIZE_PARTITION,
		.datalen = sizeof(part),
		.data = &part,
	};
	if (ioctl(fd, BLKPG, &arg) != 0)
		return fail("BLKPG_RESIZE_PARTITION", NULL);
	close(fd);

	struct statvfs vfs;
	if (statvfs("/", &vfs) != 0)
		return fail("statvfs /", NULL);
	uint64_t blocks = new_size * SECTOR / vfs.f_frsize;
	int root = open("/", O_RDONLY | O_DIRECTORY);
	if (root < 0 || ioctl(root, EXT4_IOC_RESIZE_FS, &blocks) != 0)
		return fail("EXT4_IOC_RESIZE_FS", NULL);
	close(root);
	printf("%s: grew /dev/%s from %llu to %llu MiB\n", me, part_name, size * SECTOR >> 20,
	       new_size * SECTOR >> 20);
	return 0;
}
