/* A second limit for the load generator: client-floor's uploads (the same system calls, options,
 * source addresses and segments) submitted through io_uring instead of made one by one. Each
 * upload is one chain of linked requests on a direct descriptor (no file table):
 *   socket, IP_BIND_ADDRESS_NO_PORT, TCP_QUICKACK off (both as socket commands), bind, connect,
 *   send with MSG_MORE | MSG_WAITALL (size digits and bytes), shutdown, recv (end of stream),
 *   close.
 * Only the recv and the close post completions when they succeed. A failed request cancels the
 * rest of its chain (whose completions the kernel then skips as well, if the failed one had
 * CQE_SKIP_SUCCESS), and the slot is then closed on its own before it takes the next upload. One io_uring_enter submits every
 * chain ready and waits for the next completion, so the kernel's network work is all that is
 * left per upload: what no client, however it calls the kernel, can avoid.
 * Needs Linux 6.11 (bind) and liburing. Prints one JSON line as client-floor does.
 * Usage: client-uring PORT COUNT SIZE CONCURRENCY */
#define _GNU_SOURCE
#include <liburing.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
/* Newer than Debian 12's liburing headers: the opcode and the socket command, and where a
 * socket command's fields sit in the 64-byte entry (include/uapi/linux/io_uring.h, 6.7+). */
#define OP_BIND 56
#define SOCKET_URING_OP_SETSOCKOPT 3

enum { RECV = 1, CLOSE = 2, FAILED = 3 };

static long count, started, done, failed;
static char *bytes, sink[256];
static size_t nbytes;
static struct io_uring ring;
static struct sockaddr_in to, from[16];
static int one = 1, zero = 0;

static struct io_uring_sqe *next_sqe(void) {
    struct io_uring_sqe *s = io_uring_get_sqe(&ring);
    if (!s) { io_uring_submit(&ring); s = io_uring_get_sqe(&ring); }
    return s;
}

static void set_option(struct io_uring_sqe *s, int slot, uint32_t level, uint32_t name, int *value) {
    unsigned char *b = (unsigned char *)s;
    memset(s, 0, 64);
    s->opcode = IORING_OP_URING_CMD;
    s->fd = slot;
    memcpy(b + 8, &(uint32_t){SOCKET_URING_OP_SETSOCKOPT}, 4);   /* cmd_op */
    memcpy(b + 16, &level, 4);                                      /* level */
    memcpy(b + 20, &name, 4);                                       /* optname */
    memcpy(b + 44, &(uint32_t){sizeof(int)}, 4);                    /* optlen */
    memcpy(b + 48, &(uint64_t){(uintptr_t)value}, 8);               /* optval */
}

static void link_step(struct io_uring_sqe *s, int slot, int fixed, int quiet) {
    s->flags |= IOSQE_IO_LINK | (fixed ? IOSQE_FIXED_FILE : 0) | (quiet ? IOSQE_CQE_SKIP_SUCCESS : 0);
    s->user_data = FAILED | (uint64_t)slot << 8;
}

/* Slots whose chain broke: closed on their own, once. */
static char *closing;

static void close_alone(int slot) {
    if (closing[slot]) return;
    closing[slot] = 1;
    struct io_uring_sqe *s = next_sqe();
    io_uring_prep_close_direct(s, slot);
    s->user_data = CLOSE | (uint64_t)slot << 8;
}

static void start(int slot) {
    long i = started++;
    struct io_uring_sqe *s;
    s = next_sqe(); io_uring_prep_socket_direct(s, AF_INET, SOCK_STREAM, 0, slot, 0); link_step(s, slot, 0, 1);
    s = next_sqe(); set_option(s, slot, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one); link_step(s, slot, 1, 1);
    s = next_sqe(); set_option(s, slot, IPPROTO_TCP, TCP_QUICKACK, &zero); link_step(s, slot, 1, 1);
    s = next_sqe(); io_uring_prep_rw(OP_BIND, s, slot, &from[i % 16], 0, sizeof from[0]); link_step(s, slot, 1, 1);
    s = next_sqe(); io_uring_prep_connect(s, slot, (struct sockaddr *)&to, sizeof to); link_step(s, slot, 1, 1);
    s = next_sqe(); io_uring_prep_send(s, slot, bytes, nbytes, MSG_MORE | MSG_WAITALL | MSG_NOSIGNAL); link_step(s, slot, 1, 1);
    s = next_sqe(); io_uring_prep_shutdown(s, slot, SHUT_WR); link_step(s, slot, 1, 1);
    s = next_sqe(); io_uring_prep_recv(s, slot, sink, sizeof sink, 0); link_step(s, slot, 1, 0);
    s->user_data = RECV | (uint64_t)slot << 8;
    s = next_sqe(); io_uring_prep_close_direct(s, slot);
    s->user_data = CLOSE | (uint64_t)slot << 8;
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: client-uring PORT COUNT SIZE CONCURRENCY\n"); return 2; }
    long port = atol(argv[1]), size = atol(argv[3]), concurrency = atol(argv[4]);
    count = atol(argv[2]);
    if (port <= 0 || port > 65535 || count <= 0 || size < 0 || concurrency <= 0 || concurrency > 32768) {
        fprintf(stderr, "client-uring: PORT 1-65535, COUNT > 0, SIZE >= 0, CONCURRENCY 1-32768\n");
        return 2;
    }
    char digits[32];
    int ndigits = snprintf(digits, sizeof digits, "%ld", size);
    nbytes = ndigits + size;
    bytes = malloc(nbytes);
    closing = calloc(concurrency, 1);
    memcpy(bytes, digits, ndigits);
    memset(bytes + ndigits, 'x', size);
    to = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < 16; i++) from[i] = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK + i)};
    struct io_uring_params p = {.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
    int r = io_uring_queue_init_params(4096, &ring, &p);
    if (r == 0) r = io_uring_register_files_sparse(&ring, concurrency);
    if (r < 0) { fprintf(stderr, "client-uring: io_uring: %s\n", strerror(-r)); return 1; }
    struct rusage before, after;
    struct timespec t0, t1;
    getrusage(RUSAGE_SELF, &before);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < concurrency && started < count; i++) start(i);
    while (done + failed < count) {
        struct __kernel_timespec limit = {.tv_sec = 10};
        struct io_uring_cqe *cqe;
        r = io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &limit, NULL);
        if (r < 0 && r != -EINTR && r != -ETIME) { fprintf(stderr, "client-uring: %s\n", strerror(-r)); return 1; }
        if (r == -ETIME) { fprintf(stderr, "client-uring: no progress for 10 s (%ld done, %ld failed, %ld started)\n", done, failed, started); return 1; }
        unsigned head, n = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            n++;
            int kind = cqe->user_data & 0xff, slot = cqe->user_data >> 8;
            if (cqe->res == -ECANCELED) {
                /* A step after the one that failed: that one's completion did the work. */
                if (kind == CLOSE) close_alone(slot);
            } else if (kind == RECV) {
                /* Bytes from the receiver: not a seed receiver. */
                if (cqe->res == 0) done++; else failed++;
            } else if (kind == CLOSE) {
                closing[slot] = 0;
                if (started < count) start(slot);
            } else {
                failed++;
                if (failed <= 3) fprintf(stderr, "client-uring: %s\n", strerror(-cqe->res));
                close_alone(slot);
            }
        }
        io_uring_cq_advance(&ring, n);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    getrusage(RUSAGE_SELF, &after);
    double wall = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    double cpu = (after.ru_utime.tv_sec - before.ru_utime.tv_sec) + (after.ru_utime.tv_usec - before.ru_utime.tv_usec) / 1e6
               + (after.ru_stime.tv_sec - before.ru_stime.tv_sec) + (after.ru_stime.tv_usec - before.ru_stime.tv_usec) / 1e6;
    printf("{\"uploads\": %ld, \"failed\": %ld, \"wallSeconds\": %.3f, \"cpuSeconds\": %.3f, \"cpuMicrosecondsPerUpload\": %.1f}\n",
           done, failed, wall, cpu, done ? cpu * 1e6 / done : 0.0);
    return failed ? 1 : 0;
}
