/* The memory dirtier: cfg.mem_bytes of 64-byte records, each holding its
 * index, a generation number, five words derived from both, and a checksum.
 *
 * Pass p (p >= 1) walks the records in order; for each it first checks that
 * the record still holds generation p exactly as written, then writes
 * generation p + 1.  So every record is verified once per pass, right before
 * it changes, and at any instant records below the cursor hold p + 1 and the
 * rest p: a lost, stale or corrupted page shows as a record whose content is
 * not what this rule says.  A mismatch is reported with the record's
 * virtual and guest-physical address, the expected and observed values.
 *
 * The buffer is locked (mlock) and kept out of transparent huge pages, and
 * /init forbids compaction of locked pages, so the guest-physical map the
 * agent reports at start (MH MAP lines) stays true: the host uses it to say
 * which differing pages are the agent's. */
#include "agent.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define REC_MAGIC 0x4d485243u        /* "MHRC" */
#define REC_WORDS 8
#define CHUNK_RECORDS 1024u          /* 64 KiB between gate checks */
#define ERRORS_SHOWN_PER_PASS 8

struct record {
    uint32_t magic;
    uint32_t index;
    uint64_t gen;
    uint64_t data[5];
    uint64_t sum;
};
_Static_assert(sizeof(struct record) == 64, "record is 64 bytes");

static struct record *recs;
static uint32_t nrecs;
static uint8_t *bad_map;             /* one bit per record ever found bad */
static struct gate gate = GATE_INIT;
/* Written by the dirtier only; read by others while it is paused (or as
 * plain statistics). */
static _Atomic uint64_t pass = 1, cursor, errors, bad_records, passes_done;

static void make(struct record *r, uint32_t index, uint64_t gen)
{
    r->magic = REC_MAGIC;
    r->index = index;
    r->gen = gen;
    for (int k = 0; k < 5; k++)
        r->data[k] = mix64(boot_id ^ ((uint64_t)index << 20) ^ (gen << 44) ^ (uint64_t)k);
    r->sum = checksum64((const uint64_t *)r, REC_WORDS - 1, boot_id);
}

/* 0 if record i holds generation gen as written; else report it. */
static int check(uint32_t i, uint64_t gen, unsigned *shown, const char *when)
{
    struct record want;
    make(&want, i, gen);
    const uint64_t *w = (const uint64_t *)&want, *o = (const uint64_t *)&recs[i];
    if (memcmp(&want, &recs[i], sizeof want) == 0)
        return 0;
    int word = 0;
    while (word < REC_WORDS && w[word] == o[word])
        word++;
    atomic_fetch_add(&errors, 1);
    if (!(bad_map[i / 8] & (1u << (i % 8)))) {
        bad_map[i / 8] |= (uint8_t)(1u << (i % 8));
        atomic_fetch_add(&bad_records, 1);
    }
    if ((*shown)++ < ERRORS_SHOWN_PER_PASS) {
        const uint64_t *addr = &o[word];
        say("MH ERR mem when=%s index=%u vaddr=%p paddr=0x%llx word=%d expected=0x%016llx "
            "observed=0x%016llx expected_gen=%llu observed_gen=%llu",
            when, i, (const void *)addr, (unsigned long long)virt_to_phys(addr), word,
            (unsigned long long)w[word], (unsigned long long)o[word],
            (unsigned long long)gen, (unsigned long long)recs[i].gen);
    }
    return 1;
}

int memory_init(void)
{
    nrecs = (uint32_t)(cfg.mem_bytes / sizeof(struct record));
    size_t bytes = (size_t)nrecs * sizeof(struct record);
    recs = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (recs == MAP_FAILED) {
        say("MH ERR mem what=mmap bytes=%zu", bytes);
        return -1;
    }
    madvise(recs, bytes, MADV_NOHUGEPAGE);
    if (mlock(recs, bytes) != 0)
        say("MH WARN mem what=mlock");
    bad_map = mmap(NULL, nrecs / 8 + 1, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    for (uint32_t i = 0; i < nrecs; i++)
        make(&recs[i], i, 1);
    return 0;
}

/* The buffer's guest-physical pages as runs: "MH MAP vaddr paddr pages". */
void memory_report_map(void)
{
    size_t pages = ((size_t)nrecs * sizeof(struct record) + MH_PAGE - 1) / MH_PAGE;
    const char *base = (const char *)recs;
    uint64_t run_v = 0, run_p = 0, run_n = 0, runs = 0, unknown = 0;
    for (size_t i = 0; i <= pages; i++) {
        uint64_t p = i < pages ? virt_to_phys(base + i * MH_PAGE) : 0;
        if (i < pages && p == 0)
            unknown++;
        if (run_n && i < pages && p && p == run_p + run_n * MH_PAGE)
            run_n++;
        else {
            if (run_n) {
                say("MH MAP 0x%llx 0x%llx %llu", (unsigned long long)run_v,
                    (unsigned long long)run_p, (unsigned long long)run_n);
                runs++;
            }
            run_v = (uint64_t)(uintptr_t)(base + i * MH_PAGE);
            run_p = p;
            run_n = p ? 1 : 0;
        }
    }
    say("MH MAPEND runs=%llu pages=%zu unknown=%llu record_bytes=%zu",
        (unsigned long long)runs, pages, (unsigned long long)unknown, sizeof(struct record));
}

void *memory_thread(void *arg)
{
    (void)arg;
    uint64_t chunk_bytes = (uint64_t)CHUNK_RECORDS * sizeof(struct record);
    uint64_t chunk_ns = cfg.rate_mib ? chunk_bytes * 1000000000ull / ((uint64_t)cfg.rate_mib << 20) : 0;
    uint64_t next = now_ns(CLOCK_MONOTONIC);
    for (;;) {
        uint64_t p = atomic_load(&pass);
        unsigned shown = 0;
        for (uint32_t start = 0; start < nrecs; start += CHUNK_RECORDS) {
            gate_checkpoint(&gate);
            uint32_t end = start + CHUNK_RECORDS < nrecs ? start + CHUNK_RECORDS : nrecs;
            for (uint32_t i = start; i < end; i++) {
                check(i, p, &shown, "pass");
                make(&recs[i], i, p + 1);
            }
            atomic_store(&cursor, end);
            if (chunk_ns)
                pace(&next, chunk_ns, PACE_RESYNC_NS);
        }
        atomic_store(&cursor, 0);
        atomic_store(&pass, p + 1);
        atomic_fetch_add(&passes_done, 1);
    }
    return NULL;
}

void memory_stats(struct mem_stats *out)
{
    out->records = nrecs;
    out->passes = atomic_load(&passes_done);
    out->errors = atomic_load(&errors);
    out->bad_records = atomic_load(&bad_records);
    out->gen = atomic_load(&pass);
}

void memory_verify(struct mem_stats *out)
{
    gate_pause(&gate);
    uint64_t p = atomic_load(&pass), c = atomic_load(&cursor);
    unsigned shown = 0;
    for (uint32_t i = 0; i < nrecs; i++)
        check(i, i < c ? p + 1 : p, &shown, "verify");
    memory_stats(out);
    gate_resume(&gate);
}

void memory_quiesce(void)
{
    gate_stop(&gate);
}
