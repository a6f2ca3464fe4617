/* The disk writer: sequence-numbered 4 KiB blocks on /dev/vda (a per-cell
 * qcow2 overlay on the host), each written with O_DIRECT and made durable
 * with fdatasync before it counts as acknowledged.
 *
 * Write number s (s = 1, 2, ...) goes to block s mod n of the first n
 * blocks, so at any time block b must hold the latest acknowledged s with
 * s mod n = b (or zeros, if there is none yet).  Block words: magic and
 * block number, s, the boot that wrote it, 508 words derived from s, and a
 * checksum: the host checks the image with the same rule
 * (harness/guest/linux_disk.py).  Numbers continue across reboots from the
 * highest found on the disk at start (MH DISKSCAN). */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define DISK_DEV "/dev/vda"
#define BLOCK 4096u
#define WORDS (BLOCK / 8)
#define DISK_MAGIC 0x4d48444bu     /* "MHDK" */
#define DISK_SALT 0x6d686469736b3031ull
#define READ_BLOCKS 16u
#define ERRORS_SHOWN 8

static int fd = -1;
static uint64_t nblocks;
static uint64_t *buf;                 /* one block, aligned for O_DIRECT */
static uint64_t *rbuf;                /* READ_BLOCKS blocks */
static struct gate gate = GATE_INIT;
static _Atomic uint64_t acked, checked, errors;
static int enabled;

static void make_block(uint64_t *w, uint64_t seq)
{
    uint64_t block = seq % nblocks;
    w[0] = DISK_MAGIC | (block << 32);
    w[1] = seq;
    w[2] = boot_id;
    for (unsigned k = 3; k < WORDS - 1; k++)
        w[k] = mix64(seq * 0x100000001b3ull + k);
    w[WORDS - 1] = checksum64(w, WORDS - 1, DISK_SALT);
}

/* The sequence number block b should hold after acknowledged write a
 * (0: none, the block must be zeros). */
static uint64_t expected_seq(uint64_t b, uint64_t a)
{
    if (a == 0)
        return 0;
    uint64_t s = a - ((a - b % nblocks + nblocks) % nblocks);
    return (s >= 1 && s <= a) ? s : 0;
}

/* Classify one block read back: returns its seq, or 0 for zeros; -1 torn
 * (right magic, wrong checksum), -2 anything else. */
static int64_t parse_block(const uint64_t *w, uint64_t b)
{
    int zero = 1;
    for (unsigned k = 0; k < WORDS && zero; k++)
        zero = w[k] == 0;
    if (zero)
        return 0;
    if ((w[0] & 0xffffffffu) != DISK_MAGIC || (w[0] >> 32) != b)
        return -2;
    if (checksum64(w, WORDS - 1, DISK_SALT) != w[WORDS - 1])
        return -1;
    return (int64_t)w[1];
}

static int read_blocks(uint64_t first, unsigned count)
{
    ssize_t want = (ssize_t)count * BLOCK;
    ssize_t n = pread(fd, rbuf, (size_t)want, (off_t)(first * BLOCK));
    return n == want ? 0 : -1;
}

/* Check every block against acknowledged write a; returns the mismatches. */
static uint64_t check_all(uint64_t a, const char *when, uint64_t *max_seq_out)
{
    uint64_t bad = 0, max_seq = 0;
    unsigned shown = 0;
    for (uint64_t first = 0; first < nblocks; first += READ_BLOCKS) {
        unsigned count = (unsigned)(nblocks - first < READ_BLOCKS ? nblocks - first : READ_BLOCKS);
        if (read_blocks(first, count) != 0) {
            say("MH ERR disk when=%s what=read block=%llu errno=%d", when,
                (unsigned long long)first, errno);
            return bad + 1;
        }
        for (unsigned i = 0; i < count; i++) {
            uint64_t b = first + i;
            int64_t got = parse_block(rbuf + (size_t)i * WORDS, b);
            if (got > 0 && (uint64_t)got > max_seq)
                max_seq = (uint64_t)got;
            if (a == UINT64_MAX)
                continue;               /* scanning only */
            uint64_t want = expected_seq(b, a);
            if (got == (int64_t)want)
                continue;
            bad++;
            if (shown++ < ERRORS_SHOWN)
                say("MH ERR disk when=%s block=%llu expected_seq=%llu observed=%s%lld",
                    when, (unsigned long long)b, (unsigned long long)want,
                    got == -1 ? "torn:" : got == -2 ? "garbage:" : "", (long long)got);
        }
    }
    if (max_seq_out)
        *max_seq_out = max_seq;
    return bad;
}

int disk_init(void)
{
    if (cfg.disk_bytes == 0)
        return 0;
    for (int waited = 0; waited < 3000 && access(DISK_DEV, F_OK) != 0; waited += 10)
        sleep_ms(10);
    fd = open(DISK_DEV, O_RDWR | O_DIRECT | O_CLOEXEC);
    if (fd < 0) {
        say("MH ERR disk what=open dev=%s errno=%d", DISK_DEV, errno);
        return -1;
    }
    uint64_t size = 0;
    ioctl(fd, BLKGETSIZE64, &size);
    uint64_t use = cfg.disk_bytes < size ? cfg.disk_bytes : size;
    nblocks = use / BLOCK;
    if (nblocks < 2 || posix_memalign((void **)&buf, BLOCK, BLOCK) != 0 ||
        posix_memalign((void **)&rbuf, BLOCK, (size_t)READ_BLOCKS * BLOCK) != 0) {
        say("MH ERR disk what=setup device_bytes=%llu", (unsigned long long)size);
        return -1;
    }
    /* What the last boot left: the highest sequence number, then every block
     * checked against it (a guest that rebooted must find its writes). */
    uint64_t max_seq = 0;
    check_all(UINT64_MAX, "scan", &max_seq);
    uint64_t bad = check_all(max_seq, "scan", NULL);
    atomic_store(&acked, max_seq);
    atomic_fetch_add(&errors, bad);
    say("MH DISKSCAN blocks=%llu device_bytes=%llu max_seq=%llu mismatches=%llu",
        (unsigned long long)nblocks, (unsigned long long)size,
        (unsigned long long)max_seq, (unsigned long long)bad);
    enabled = 1;
    return 0;
}

void *disk_thread(void *arg)
{
    (void)arg;
    uint64_t period = 1000000000ull / (cfg.disk_rate ? cfg.disk_rate : 1);
    uint64_t next = now_ns(CLOCK_MONOTONIC);
    for (;;) {
        gate_checkpoint(&gate);
        uint64_t seq = atomic_load(&acked) + 1;
        make_block(buf, seq);
        off_t off = (off_t)((seq % nblocks) * BLOCK);
        if (pwrite(fd, buf, BLOCK, off) != (ssize_t)BLOCK || fdatasync(fd) != 0) {
            atomic_fetch_add(&errors, 1);
            say("MH ERR disk what=write seq=%llu errno=%d", (unsigned long long)seq, errno);
            sleep_ms(100);
            continue;
        }
        atomic_store(&acked, seq);
        pace(&next, period, PACE_RESYNC_NS);
    }
    return NULL;
}

void disk_stats(struct disk_stats *out)
{
    out->enabled = enabled;
    out->acked = atomic_load(&acked);
    out->checked = atomic_load(&checked);
    out->errors = atomic_load(&errors);
    out->blocks = nblocks;
}

void disk_verify(struct disk_stats *out)
{
    if (enabled) {
        gate_pause(&gate);
        uint64_t bad = check_all(atomic_load(&acked), "verify", NULL);
        atomic_fetch_add(&errors, bad);
        atomic_store(&checked, nblocks);
        gate_resume(&gate);
    }
    disk_stats(out);
}

void disk_quiesce(void)
{
    if (enabled)
        gate_stop(&gate);
}
