/* Heartbeats and the guest's clocks.
 *
 * Every cfg.hb_ms (10 ms by default) on CLOCK_MONOTONIC, at SCHED_FIFO
 * priority so the busy dirtier cannot delay it, the agent sends
 *   MH HB <seq> <mono_ns> <real_ns> <mem_pass> <mem_errors> <disk_acked> <net_sent>
 * The host times their arrival: the gap around switchover is the downtime
 * the guest saw, and gaps or repeats in <seq> are lost or duplicated
 * heartbeats.  The thread also watches its own clocks between two beats:
 * CLOCK_MONOTONIC or CLOCK_REALTIME going backwards, the largest step of
 * each, and how far wall time drifted from monotonic time (a wall-clock
 * jump); the verdict reports them. */
#include "agent.h"

#include <time.h>

static _Atomic uint64_t seq, mono_back, real_back, max_mono_step, max_real_step;
static _Atomic int64_t max_drift;

void *heartbeat_thread(void *arg)
{
    (void)arg;
    set_fifo(50);
    uint64_t period = (uint64_t)cfg.hb_ms * 1000000ull;
    uint64_t next = now_ns(CLOCK_MONOTONIC);
    uint64_t prev_mono = 0, prev_real = 0;
    int64_t offset0 = 0;
    for (;;) {
        uint64_t mono = now_ns(CLOCK_MONOTONIC), real = now_ns(CLOCK_REALTIME);
        int64_t offset = (int64_t)(real - mono);
        if (prev_mono) {
            if (mono < prev_mono)
                atomic_fetch_add(&mono_back, 1);
            else if (mono - prev_mono > atomic_load(&max_mono_step))
                atomic_store(&max_mono_step, mono - prev_mono);
            if (real < prev_real)
                atomic_fetch_add(&real_back, 1);
            else if (real - prev_real > atomic_load(&max_real_step))
                atomic_store(&max_real_step, real - prev_real);
            int64_t drift = offset - offset0;
            if (drift < 0)
                drift = -drift;
            if (drift > atomic_load(&max_drift))
                atomic_store(&max_drift, drift);
        } else {
            offset0 = offset;
        }
        prev_mono = mono;
        prev_real = real;
        struct mem_stats m;
        struct disk_stats d;
        struct net_stats n;
        memory_stats(&m);
        disk_stats(&d);
        net_stats(&n);
        uint64_t s = atomic_fetch_add(&seq, 1) + 1;
        say("MH HB %llu %llu %llu %llu %llu %llu %llu", (unsigned long long)s,
            (unsigned long long)mono, (unsigned long long)real,
            (unsigned long long)m.passes, (unsigned long long)m.errors,
            (unsigned long long)d.acked, (unsigned long long)n.sent);
        pace(&next, period, 0);   /* late (the VM was stopped): no burst of catch-up beats */
    }
    return NULL;
}

void clock_stats(struct clock_stats *out)
{
    out->hb_seq = atomic_load(&seq);
    out->mono_back = atomic_load(&mono_back);
    out->real_back = atomic_load(&real_back);
    out->max_mono_step_ns = atomic_load(&max_mono_step);
    out->max_real_step_ns = atomic_load(&max_real_step);
    out->max_offset_drift_ns = atomic_load(&max_drift);
}
