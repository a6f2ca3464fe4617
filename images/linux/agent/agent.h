/*
 * mhagent: the harness's agent inside the Linux guest (PID 1, after /init).
 *
 * It keeps the guest busy in ways a migration can break, checks the results
 * itself, and reports everything as text lines starting with "MH " on a
 * virtio-serial port named "mh.agent" (the serial console when the port is
 * missing).  harness/guest/linux_proto.py parses these lines; the protocol is
 * described there and in images/linux/README.md.
 *
 * Threads: heartbeats (SCHED_FIFO, so a busy dirtier cannot delay them), the
 * memory dirtier/verifier, the disk writer, the network sender, and the main
 * thread reading commands from the host.
 */
#ifndef MHAGENT_H
#define MHAGENT_H

#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define MH_PROTO_VERSION 1
#define MH_PAGE 4096u

struct config {
    size_t mem_bytes;        /* mh.mem=: memory the dirtier owns (default 32M) */
    unsigned rate_mib;       /* mh.rate=: MiB/s dirtied, 0 = as fast as it can */
    unsigned hb_ms;          /* mh.hb=: heartbeat period, ms (default 10) */
    size_t disk_bytes;       /* mh.disk=: bytes of /dev/vda used, 0 = no disk */
    unsigned disk_rate;      /* mh.diskrate=: writes per second (default 50) */
    char net_host[64];       /* mh.net=HOST:PORT of the harness's peer, "" = none */
    unsigned net_port;
    unsigned net_rate;       /* mh.netrate=: records per second (default 200) */
    int force_console;       /* mh.port=console: report on ttyS0 even with a port */
};

extern struct config cfg;
extern uint64_t boot_id;

/* --- util.c ------------------------------------------------------------- */
uint64_t mix64(uint64_t x);
uint64_t checksum64(const uint64_t *words, size_t n, uint64_t salt);
uint64_t now_ns(int clock);
void sleep_until(uint64_t mono_ns);
void sleep_ms(unsigned ms);
/* A paced loop's wait for its next period: a loop more than max_behind_ns
 * late (the VM was stopped) starts again from now instead of catching up
 * with a burst. */
void pace(uint64_t *next, uint64_t period_ns, uint64_t max_behind_ns);
#define PACE_RESYNC_NS 100000000ull      /* 100 ms: the workers' max_behind_ns */
size_t parse_size(const char *s);
int read_file(const char *path, char *buf, size_t size);
uint64_t virt_to_phys(const void *addr);   /* via /proc/self/pagemap; 0 = unknown */
void set_fifo(int prio);

/* --- channel.c: the line protocol -------------------------------------- */
int channel_open(void);              /* 1 = virtio port, 0 = console fallback */
const char *channel_kind(void);
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int channel_read_line(char *buf, size_t size);   /* -1 on EOF/error */

/* --- memory.c ----------------------------------------------------------- */
struct mem_stats {
    uint64_t records, passes, errors, bad_records, gen;
};
int memory_init(void);
void memory_report_map(void);
void *memory_thread(void *arg);
/* Ask the dirtier to verify every record now; blocks until it has. */
void memory_verify(struct mem_stats *out);
void memory_stats(struct mem_stats *out);
void memory_quiesce(void);

/* --- disk.c ------------------------------------------------------------- */
struct disk_stats {
    int enabled;
    uint64_t acked, checked, errors, blocks;
};
int disk_init(void);
void *disk_thread(void *arg);
void disk_verify(struct disk_stats *out);
void disk_stats(struct disk_stats *out);
void disk_quiesce(void);

/* --- net.c -------------------------------------------------------------- */
struct net_stats {
    int enabled, connected;
    uint64_t sent, bytes, errors;
};
void *net_thread(void *arg);
void net_stats(struct net_stats *out);
void net_quiesce(void);

/* --- heartbeat.c -------------------------------------------------------- */
struct clock_stats {
    uint64_t hb_seq, mono_back, real_back, max_mono_step_ns, max_real_step_ns;
    int64_t max_offset_drift_ns;     /* largest |(real - mono) - at start| */
};
void *heartbeat_thread(void *arg);
void clock_stats(struct clock_stats *out);

/* A writer thread's pause point: each writer stops at a safe place when
 * asked, so verification and quiescing see no write in flight. */
struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int want_pause;      /* host asked: stop at the next safe point */
    int paused;          /* writer is stopped */
    int stopped;         /* quiesced for good */
};
#define GATE_INIT { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0 }
void gate_checkpoint(struct gate *g);      /* writer: wait here while paused */
void gate_pause(struct gate *g);           /* other: pause the writer, wait until it is */
void gate_resume(struct gate *g);
void gate_stop(struct gate *g);            /* pause for good */

#endif
