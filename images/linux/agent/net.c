/* The network stream: 64-byte sequence-numbered records sent over TCP
 * (virtio-net, QEMU's user netdev) to the harness's peer, reached through a
 * guestfwd address that QEMU forwards to a socket on the host's loopback.
 * The connection must stay open across the migration: the peer checks that
 * every record arrives once, in order, intact (harness/guest/linux_net.py),
 * and measures the stall at switchover.  A send error (a reset) is reported
 * and ends the stream: it is never hidden by reconnecting. */
#include "agent.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NET_MAGIC 0x4d484e54u       /* "MHNT" */
#define NET_SALT 0x6d686e6574303031ull
#define CONNECT_TRIES 200           /* 10 ms apart */

static struct gate gate = GATE_INIT;
static _Atomic uint64_t sent, bytes, errors;
static _Atomic int connected, enabled;

static void make(uint64_t *w, uint64_t seq)
{
    w[0] = NET_MAGIC | ((boot_id & 0xffffffffull) << 32);
    w[1] = seq;
    w[2] = now_ns(CLOCK_MONOTONIC);
    for (unsigned k = 3; k < 7; k++)
        w[k] = mix64(w[0] ^ (seq << 3) ^ k);
    w[7] = checksum64(w, 7, NET_SALT);
}

static int connect_peer(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)cfg.net_port) };
    if (inet_pton(AF_INET, cfg.net_host, &sa.sin_addr) != 1) {
        say("MH ERR net what=address host=%s", cfg.net_host);
        return -1;
    }
    for (int i = 0; i < CONNECT_TRIES; i++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0)
            break;
        if (connect(s, (struct sockaddr *)&sa, sizeof sa) == 0) {
            int one = 1;
            setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            return s;
        }
        int e = errno;
        close(s);
        if (i == CONNECT_TRIES - 1)
            say("MH ERR net what=connect host=%s port=%u errno=%d (%s)", cfg.net_host,
                cfg.net_port, e, strerror(e));
        sleep_ms(10);
    }
    return -1;
}

void *net_thread(void *arg)
{
    (void)arg;
    atomic_store(&enabled, 1);
    int s = connect_peer();
    if (s < 0) {
        atomic_fetch_add(&errors, 1);
        return NULL;
    }
    atomic_store(&connected, 1);
    say("MH NET connected host=%s port=%u", cfg.net_host, cfg.net_port);
    uint64_t period = 1000000000ull / (cfg.net_rate ? cfg.net_rate : 1);
    uint64_t next = now_ns(CLOCK_MONOTONIC);
    for (uint64_t seq = 1;; seq++) {
        gate_checkpoint(&gate);
        uint64_t w[8];
        make(w, seq);
        const char *p = (const char *)w;
        size_t left = sizeof w;
        while (left > 0) {
            ssize_t n = send(s, p, left, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                int e = errno;
                atomic_fetch_add(&errors, 1);
                atomic_store(&connected, 0);
                say("MH ERR net what=send seq=%llu errno=%d (%s) sent=%llu",
                    (unsigned long long)seq, e, strerror(e),
                    (unsigned long long)atomic_load(&sent));
                close(s);
                return NULL;
            }
            p += n;
            left -= (size_t)n;
            atomic_fetch_add(&bytes, (uint64_t)n);
        }
        atomic_store(&sent, seq);
        pace(&next, period, PACE_RESYNC_NS);
    }
    return NULL;
}

void net_stats(struct net_stats *out)
{
    out->enabled = atomic_load(&enabled);
    out->connected = atomic_load(&connected);
    out->sent = atomic_load(&sent);
    out->bytes = atomic_load(&bytes);
    out->errors = atomic_load(&errors);
}

void net_quiesce(void)
{
    if (atomic_load(&connected))
        gate_stop(&gate);
}
