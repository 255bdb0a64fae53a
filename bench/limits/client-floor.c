/* A limit for the load generator: the least CPU the connecting side of a seed upload can cost
 * on this kernel. One thread keeps CONCURRENCY uploads of SIZE bytes in flight against
 * 127.0.0.1:PORT until COUNT are done, with the fewest system calls an upload allows and the
 * same segments `datastream bench` sends:
 *   socket (non-blocking), IP_BIND_ADDRESS_NO_PORT and bind (16 source addresses in turn),
 *   TCP_QUICKACK off (the handshake's ACK rides on the data), connect, sendmsg with MSG_MORE
 *   (size digits and bytes; the FIN joins them), shutdown, epoll_ctl, read (end of stream),
 *   close (which also takes the socket out of epoll).
 * On loopback the connecting process pays for most of both ends' handshake and for delivering
 * its bytes to the receiver, so this is what any client, however lean, costs per upload; the
 * generator's CPU is judged against it as well as against the discarding receiver's.
 * Prints one JSON line: uploads, wall seconds, CPU seconds (user + system), CPU microseconds
 * per upload.
 * Usage: client-floor PORT COUNT SIZE CONCURRENCY */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

struct upload { int fd; long sent, total; };

static long port, count, size, started, done, failed;
static char *bytes, digits[32];
static int ndigits, ep;
static struct upload *slots;

static double seconds(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

/* Sends what the kernel takes; the last call ends the sending with shutdown. */
static int pump(struct upload *u) {
    while (u->sent < u->total) {
        struct iovec iov[2];
        int n = 0;
        if (u->sent < ndigits) iov[n++] = (struct iovec){digits + u->sent, ndigits - u->sent};
        long at = u->sent < ndigits ? 0 : u->sent - ndigits;
        iov[n++] = (struct iovec){bytes + at, size - at};
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = n};
        ssize_t w = sendmsg(u->fd, &m, MSG_MORE | MSG_NOSIGNAL);
        if (w < 0) return errno == EAGAIN ? 0 : -1;
        u->sent += w;
    }
    return shutdown(u->fd, SHUT_WR) == 0 ? 1 : -1;
}

static void finish(struct upload *u, int ok) {
    close(u->fd);
    u->fd = -1;
    if (ok) done++; else failed++;
}

static void start(struct upload *u) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in from = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK + (started % 16))};
    int one = 1, zero = 0;
    started++;
    u->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    u->sent = 0;
    u->total = ndigits + size;
    if (u->fd < 0) { failed++; return; }
    setsockopt(u->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(u->fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero);
    if (bind(u->fd, (struct sockaddr *)&from, sizeof from) < 0 ||
        (connect(u->fd, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS)) { finish(u, 0); return; }
    int sent = pump(u);
    struct epoll_event e = {.events = sent == 0 ? EPOLLOUT : EPOLLIN, .data.ptr = u};
    if (sent < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, u->fd, &e) < 0) finish(u, 0);
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: client-floor PORT COUNT SIZE CONCURRENCY\n"); return 2; }
    port = atol(argv[1]); count = atol(argv[2]); size = atol(argv[3]);
    long concurrency = atol(argv[4]);
    if (port <= 0 || port > 65535 || count <= 0 || size < 0 || concurrency <= 0 || concurrency > 100000) {
        fprintf(stderr, "client-floor: PORT 1-65535, COUNT > 0, SIZE >= 0, CONCURRENCY 1-100000\n");
        return 2;
    }
    bytes = malloc(size ? size : 1);
    memset(bytes, 'x', size);
    ndigits = snprintf(digits, sizeof digits, "%ld", size);
    slots = calloc(concurrency, sizeof *slots);
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct rusage before, after;
    struct timespec t0, t1;
    getrusage(RUSAGE_SELF, &before);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < concurrency && started < count; i++) start(&slots[i]);
    struct epoll_event events[256];
    while (done + failed < count) {
        int n = epoll_wait(ep, events, 256, 10000);
        if (n <= 0) { fprintf(stderr, "client-floor: no progress for 10 s\n"); return 1; }
        for (int i = 0; i < n; i++) {
            struct upload *u = events[i].data.ptr;
            if (events[i].events & EPOLLOUT) {
                int sent = pump(u);
                struct epoll_event e = {.events = EPOLLIN, .data.ptr = u};
                if (sent < 0) finish(u, 0);
                else if (sent > 0 && epoll_ctl(ep, EPOLL_CTL_MOD, u->fd, &e) < 0) finish(u, 0);
                if (u->fd >= 0 || started >= count) continue;
            } else {
                char b[256];
                ssize_t r = read(u->fd, b, sizeof b);
                if (r > 0) continue;  /* a receiver that talks: not this one's business */
                if (r < 0 && errno == EAGAIN) continue;
                finish(u, r == 0);
            }
            if (started < count) start(u);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    getrusage(RUSAGE_SELF, &after);
    double wall = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    double cpu = seconds(after.ru_utime) - seconds(before.ru_utime) + seconds(after.ru_stime) - seconds(before.ru_stime);
    printf("{\"uploads\": %ld, \"failed\": %ld, \"wallSeconds\": %.3f, \"cpuSeconds\": %.3f, \"cpuMicrosecondsPerUpload\": %.1f}\n",
           done, failed, wall, cpu, done ? cpu * 1e6 / done : 0.0);
    return failed ? 1 : 0;
}
