/* The line protocol's transport: a virtio-serial port named "mh.agent"
 * (QEMU: -device virtserialport,name=mh.agent), else the serial console.
 *
 * Every line is written with one write() under a lock, so lines from
 * different threads never interleave.  In port mode the lines a person
 * reading the console log wants (HELLO, ERR, VERDICT, BYE) are copied to
 * the console too; heartbeats are not. */
#include "agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#define PORT_NAME "mh.agent"
#define PORT_WAIT_MS 3000

static int out_fd = -1, in_fd = -1, console_fd = -1;
static int is_port;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static int find_port(char *dev, size_t size)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d)
        return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d))) {
        char path[300], name[64];
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        if (read_file(path, name, sizeof name) > 0) {
            name[strcspn(name, "\n")] = 0;
            if (strcmp(name, PORT_NAME) == 0) {
                snprintf(dev, size, "/dev/%s", e->d_name);
                found = 1;
            }
        }
    }
    closedir(d);
    return found;
}

static void raw_mode(int fd)
{
    struct termios t;
    if (tcgetattr(fd, &t) == 0) {
        cfmakeraw(&t);
        t.c_oflag |= OPOST | ONLCR;      /* keep "\r\n" on the console */
        tcsetattr(fd, TCSANOW, &t);
    }
}

int channel_open(void)
{
    console_fd = open("/dev/console", O_RDWR | O_NOCTTY | O_CLOEXEC);
    char dev[300];
    /* virtio_console probes the port after insmod returns: wait a little. */
    for (int waited = 0; !cfg.force_console && waited < PORT_WAIT_MS; waited += 10) {
        if (find_port(dev, sizeof dev)) {
            /* Non-blocking: a blocking write makes virtio_console spin in
             * the kernel until the host has taken the buffer
             * (__send_to_port), which at the heartbeat thread's real-time
             * priority would starve the guest whenever the host reads
             * late.  write_all() waits in poll() instead. */
            int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC);
            if (fd >= 0) {
                out_fd = in_fd = fd;
                is_port = 1;
                return 1;
            }
        }
        sleep_ms(10);
    }
    int fd = open("/dev/ttyS0", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        fd = console_fd;
    raw_mode(fd);
    out_fd = in_fd = fd;
    is_port = 0;
    return 0;
}

const char *channel_kind(void)
{
    return is_port ? "virtio" : "console";
}

/* Wait until fd is ready for `events`, at most `ms` (EINTR retried). */
static void wait_fd(int fd, short events, int ms)
{
    struct pollfd p = { .fd = fd, .events = events };
    while (poll(&p, 1, ms) < 0 && errno == EINTR)
        ;
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EAGAIN)
                wait_fd(fd, POLLOUT, 100);
            else if (errno != EINTR)
                return;
            continue;
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void vsay(int console_too, const char *fmt, va_list ap)
{
    char line[1024];
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    pthread_mutex_lock(&out_lock);
    write_all(out_fd, line, (size_t)n);
    if (console_too && is_port && console_fd >= 0)
        write_all(console_fd, line, (size_t)n);
    pthread_mutex_unlock(&out_lock);
}

/* Lines worth having in the console log too (not the frequent or bulky
 * ones: heartbeats, the memory map, /proc/iomem). */
static int for_console(const char *fmt)
{
    static const char *const kinds[] = { "MH HELLO", "MH READY", "MH ERR", "MH WARN",
        "MH VERDICT", "MH BYE", "MH QUIESCED", "MH DISKSCAN", "MH NET", "MH MAPEND" };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strncmp(fmt, kinds[i], strlen(kinds[i])) == 0)
            return 1;
    return 0;
}

void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(for_console(fmt), fmt, ap);
    va_end(ap);
}

/* One command line from the host, without its newline. */
int channel_read_line(char *buf, size_t size)
{
    size_t len = 0;
    for (;;) {
        char c;
        ssize_t n = read(in_fd, &c, 1);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            if (errno == EAGAIN)
                wait_fd(in_fd, POLLIN, 1000);
            continue;
        }
        if (n <= 0) {
            /* A port whose host side is not connected reads EOF: wait and
             * try again rather than spin. */
            sleep_ms(50);
            if (len == 0)
                return -1;
            continue;
        }
        if (c == '\n' || c == '\r') {
            if (len == 0)
                continue;
            buf[len] = 0;
            return (int)len;
        }
        if (len < size - 1)
            buf[len++] = c;
    }
}
