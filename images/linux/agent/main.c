/* mhagent's main thread: settings from the kernel command line, start-up
 * reports, the worker threads, then the host's commands.
 *
 * Kernel parameters (all optional): mh.mem=32M mh.rate=64 (MiB/s, 0 =
 * unthrottled) mh.hb=10 (ms) mh.disk=8M (0 = no disk) mh.diskrate=50
 * mh.net=10.0.2.100:5000 mh.netrate=200 mh.port=console.
 *
 * Commands (one per line, from the host):
 *   verify   check every memory record and disk block now; answer MH VERDICT
 *   quiesce  stop the disk and network writers for good; answer MH QUIESCED
 *            with the last acknowledged write (the host then checks the image)
 *   reboot   quiesce, sync, say MH BYE, reboot(2): the guest must come back
 *   panic    crash the kernel (sysrq c): a fault for the harness's own tests
 *   ping N   answer MH PONG N */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>

struct config cfg = {
    .mem_bytes = 32u << 20,
    .rate_mib = 64,
    .hb_ms = 10,
    .disk_bytes = 8u << 20,
    .disk_rate = 50,
    .net_host = "",
    .net_port = 5000,
    .net_rate = 200,
};
uint64_t boot_id;

static void parse_cmdline(void)
{
    char line[4096];
    if (read_file("/proc/cmdline", line, sizeof line) < 0)
        return;
    for (char *tok = strtok(line, " \n"); tok; tok = strtok(NULL, " \n")) {
        if (strncmp(tok, "mh.", 3) != 0)
            continue;
        char *eq = strchr(tok, '=');
        if (!eq)
            continue;
        *eq = 0;
        const char *key = tok + 3, *val = eq + 1;
        if (!strcmp(key, "mem"))
            cfg.mem_bytes = parse_size(val);
        else if (!strcmp(key, "rate"))
            cfg.rate_mib = (unsigned)atoi(val);
        else if (!strcmp(key, "hb"))
            cfg.hb_ms = (unsigned)atoi(val) ? (unsigned)atoi(val) : 10;
        else if (!strcmp(key, "disk"))
            cfg.disk_bytes = parse_size(val);
        else if (!strcmp(key, "diskrate"))
            cfg.disk_rate = (unsigned)atoi(val);
        else if (!strcmp(key, "netrate"))
            cfg.net_rate = (unsigned)atoi(val);
        else if (!strcmp(key, "port"))
            cfg.force_console = !strcmp(val, "console");
        else if (!strcmp(key, "net")) {
            const char *colon = strrchr(val, ':');
            size_t n = colon ? (size_t)(colon - val) : strlen(val);
            if (n >= sizeof cfg.net_host)
                n = sizeof cfg.net_host - 1;
            memcpy(cfg.net_host, val, n);
            cfg.net_host[n] = 0;
            if (colon)
                cfg.net_port = (unsigned)atoi(colon + 1);
        }
    }
}

/* The kernel's own image in guest-physical memory, for the host to name
 * differing pages ("Kernel code" etc. in /proc/iomem). */
static void report_iomem(void)
{
    static char text[65536];
    if (read_file("/proc/iomem", text, sizeof text) < 0)
        return;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        unsigned long long start, end;
        char name[128];
        while (*line == ' ')
            line++;
        if (sscanf(line, "%llx-%llx : %127[^\n]", &start, &end, name) == 3 &&
            (strncmp(name, "Kernel ", 7) == 0 || strcmp(name, "System RAM") == 0))
            say("MH IOMEM 0x%llx 0x%llx %s", start, end, name);
    }
}

static void verdict(void)
{
    struct mem_stats m;
    struct disk_stats d;
    struct net_stats n;
    struct clock_stats c;
    memory_verify(&m);
    disk_verify(&d);
    net_stats(&n);
    clock_stats(&c);
    int clock_ok = c.mono_back == 0 && c.real_back == 0;
    say("MH VERDICT boot=%016llx mem=%s mem_records=%llu mem_passes=%llu mem_errors=%llu "
        "mem_bad_records=%llu disk=%s disk_blocks=%llu disk_acked=%llu disk_errors=%llu "
        "net=%s net_sent=%llu net_bytes=%llu net_errors=%llu net_connected=%d "
        "clock=%s mono_back=%llu real_back=%llu max_mono_step_ns=%llu max_real_step_ns=%llu "
        "max_wall_drift_ns=%lld hb_seq=%llu",
        (unsigned long long)boot_id, m.errors ? "fail" : "ok",
        (unsigned long long)m.records, (unsigned long long)m.passes,
        (unsigned long long)m.errors, (unsigned long long)m.bad_records,
        !d.enabled ? "off" : d.errors ? "fail" : "ok", (unsigned long long)d.blocks,
        (unsigned long long)d.acked, (unsigned long long)d.errors,
        !n.enabled ? "off" : (n.errors || !n.connected) ? "fail" : "ok",
        (unsigned long long)n.sent, (unsigned long long)n.bytes,
        (unsigned long long)n.errors, n.connected,
        clock_ok ? "ok" : "fail", (unsigned long long)c.mono_back,
        (unsigned long long)c.real_back, (unsigned long long)c.max_mono_step_ns,
        (unsigned long long)c.max_real_step_ns, (long long)c.max_offset_drift_ns,
        (unsigned long long)c.hb_seq);
}

static void quiesce(void)
{
    disk_quiesce();
    net_quiesce();
    struct disk_stats d;
    struct net_stats n;
    disk_stats(&d);
    net_stats(&n);
    say("MH QUIESCED disk_acked=%llu net_sent=%llu", (unsigned long long)d.acked,
        (unsigned long long)n.sent);
}

static void start(void *(*fn)(void *), const char *name)
{
    pthread_t t;
    if (pthread_create(&t, NULL, fn, NULL) != 0)
        say("MH ERR agent what=thread name=%s errno=%d", name, errno);
    else
        pthread_setname_np(t, name);
}

int main(void)
{
    parse_cmdline();
    if (getrandom(&boot_id, sizeof boot_id, GRND_INSECURE) != sizeof boot_id)
        boot_id = now_ns(CLOCK_REALTIME) ^ ((uint64_t)getpid() << 48);
    channel_open();
    char cs[64] = "unknown";
    read_file("/sys/devices/system/clocksource/clocksource0/current_clocksource", cs, sizeof cs);
    cs[strcspn(cs, "\n")] = 0;
    say("MH HELLO v=%d boot=%016llx port=%s mem=%zu rate=%u hb_ms=%u disk=%zu diskrate=%u "
        "net=%s:%u netrate=%u clocksource=%s uptime_ms=%llu",
        MH_PROTO_VERSION, (unsigned long long)boot_id, channel_kind(), cfg.mem_bytes,
        cfg.rate_mib, cfg.hb_ms, cfg.disk_bytes, cfg.disk_rate,
        cfg.net_host[0] ? cfg.net_host : "off", cfg.net_port, cfg.net_rate, cs,
        (unsigned long long)(now_ns(CLOCK_BOOTTIME) / 1000000ull));
    report_iomem();
    if (memory_init() != 0)
        for (;;)
            pause();
    memory_report_map();
    disk_init();
    start(heartbeat_thread, "mh-heartbeat");
    start(memory_thread, "mh-memory");
    struct disk_stats d;
    disk_stats(&d);
    if (d.enabled)
        start(disk_thread, "mh-disk");
    if (cfg.net_host[0])
        start(net_thread, "mh-net");
    say("MH READY uptime_ms=%llu", (unsigned long long)(now_ns(CLOCK_BOOTTIME) / 1000000ull));

    char cmd[256];
    for (;;) {
        if (channel_read_line(cmd, sizeof cmd) < 0)
            continue;
        if (!strcmp(cmd, "verify"))
            verdict();
        else if (!strcmp(cmd, "quiesce"))
            quiesce();
        else if (!strcmp(cmd, "reboot")) {
            quiesce();
            sync();
            say("MH BYE reboot");
            reboot(RB_AUTOBOOT);
            say("MH ERR agent what=reboot errno=%d", errno);
        } else if (!strcmp(cmd, "panic")) {
            say("MH BYE panic");
            int fd = open("/proc/sysrq-trigger", O_WRONLY);
            if (fd >= 0 && write(fd, "c", 1) < 0)
                say("MH ERR agent what=sysrq errno=%d", errno);
        } else if (!strncmp(cmd, "ping ", 5))
            say("MH PONG %s", cmd + 5);
        else
            say("MH ERR agent what=command text=%.64s", cmd);
    }
}
