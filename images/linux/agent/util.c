/* Small helpers: the record hash, clocks, sizes, /proc/self/pagemap, the
 * writer gate. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* splitmix64's finaliser: every input bit reaches every output bit, so a
 * record's content depends on its index and generation throughout. */
uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t checksum64(const uint64_t *words, size_t n, uint64_t salt)
{
    uint64_t h = mix64(salt ^ n);
    for (size_t i = 0; i < n; i++)
        h = mix64(h ^ words[i]);
    return h;
}

uint64_t now_ns(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void sleep_until(uint64_t mono_ns)
{
    struct timespec ts = { (time_t)(mono_ns / 1000000000ull), (long)(mono_ns % 1000000000ull) };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

void sleep_ms(unsigned ms)
{
    sleep_until(now_ns(CLOCK_MONOTONIC) + (uint64_t)ms * 1000000ull);
}

void pace(uint64_t *next, uint64_t period_ns, uint64_t max_behind_ns)
{
    *next += period_ns;
    uint64_t now = now_ns(CLOCK_MONOTONIC);
    if (*next > now)
        sleep_until(*next);
    else if (now - *next > max_behind_ns)
        *next = now;
}

size_t parse_size(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    switch (*end) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    default: break;
    }
    return (size_t)v;
}

int read_file(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = 0;
    return (int)n;
}

/* Guest-physical address of a virtual address of this process: bits 0-54
 * of its /proc/self/pagemap entry are the page frame number (bit 63: the
 * page is present).  Root reads real frame numbers. */
uint64_t virt_to_phys(const void *addr)
{
    static int fd = -1;
    if (fd < 0)
        fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    uint64_t entry;
    off_t off = (off_t)((uintptr_t)addr / MH_PAGE) * 8;
    if (pread(fd, &entry, sizeof entry, off) != (ssize_t)sizeof entry)
        return 0;
    if (!(entry >> 63))
        return 0;
    return (entry & ((1ull << 55) - 1)) * MH_PAGE + (uintptr_t)addr % MH_PAGE;
}

void set_fifo(int prio)
{
    struct sched_param sp = { .sched_priority = prio };
    pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
}

void gate_checkpoint(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    while (g->want_pause || g->stopped) {
        if (!g->paused) {
            g->paused = 1;
            pthread_cond_broadcast(&g->cond);
        }
        pthread_cond_wait(&g->cond, &g->lock);
    }
    g->paused = 0;
    pthread_mutex_unlock(&g->lock);
}

static void gate_wait_paused(struct gate *g)
{
    /* A writer blocked in a system call reaches its checkpoint late; give up
     * after 5 s rather than hang the command loop (the caller reports it). */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    while (!g->paused)
        if (pthread_cond_timedwait(&g->cond, &g->lock, &until) == ETIMEDOUT)
            break;
}

void gate_pause(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->want_pause = 1;
    gate_wait_paused(g);
    pthread_mutex_unlock(&g->lock);
}

void gate_resume(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->want_pause = 0;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

void gate_stop(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->stopped = 1;
    gate_wait_paused(g);
    pthread_mutex_unlock(&g->lock);
}
