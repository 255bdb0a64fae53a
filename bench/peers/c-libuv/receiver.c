/* A peer for comparisons: a plain C receiver on libuv, the ceiling of DataStream's design.
 * Seed framing (ASCII size digits, then the bytes), one file per upload, closing the connection
 * once the declared size is written. 64 KiB reads into a per-connection buffer; each read is
 * written with uv_fs_write on libuv's threadpool while reading is stopped (backpressure).
 * With --sync every uv_fs call runs synchronously on the loop thread (no callback: open, write
 * each read as it arrives, close), the other design the issue compares against.
 * With --discard nothing is written: it shows what the load generator itself can push.
 * Usage: receiver PORT DIR [--sync | --discard] */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <uv.h>

#define READ_SIZE (64 * 1024)

static uv_loop_t *loop;
static const char *dir;
static int discard;
static int sync_fs;
static unsigned long long counter;

typedef struct {
    uv_tcp_t tcp;
    uv_fs_t fs;
    char *buf;
    size_t pending;          /* bytes of buf waiting to be written */
    long long size;          /* -1 until the first non-digit */
    long long received;
    int digits_seen;
    uv_file file;
    int closing;
    char path[512];
} conn_t;

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void on_closed(uv_handle_t *h) {
    conn_t *c = h->data;
    free(c->buf);
    free(c);
}

static void finish(conn_t *c, int ok) {
    if (c->closing) return;
    c->closing = 1;
    if (c->file >= 0) {
        uv_fs_t req;
        uv_fs_close(NULL, &req, c->file, NULL);  /* synchronous close: rare, and tiny */
        uv_fs_req_cleanup(&req);
        c->file = -1;
        if (!ok) unlink(c->path);
    }
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
    conn_t *c = h->data;
    (void)suggested;
    *b = uv_buf_init(c->buf, READ_SIZE);
}

static void after_write(uv_fs_t *req) {
    conn_t *c = req->data;
    ssize_t r = req->result;
    uv_fs_req_cleanup(req);
    if (r < 0 || (size_t)r != c->pending) { finish(c, 0); return; }
    c->pending = 0;
    if (c->received >= c->size) { finish(c, 1); return; }
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
}

static void write_body(conn_t *c, const char *p, size_t n) {
    c->received += n;
    if (discard) {
        if (c->received >= c->size) finish(c, 1);
        return;
    }
    if (sync_fs) {
        uv_fs_t req;
        uv_buf_t b = uv_buf_init((char *)p, n);
        ssize_t r = uv_fs_write(NULL, &req, c->file, &b, 1, -1, NULL);
        uv_fs_req_cleanup(&req);
        if (r < 0 || (size_t)r != n) { finish(c, 0); return; }
        if (c->received >= c->size) finish(c, 1);
        return;
    }
    if (p != c->buf) memmove(c->buf, p, n);
    c->pending = n;
    uv_buf_t b = uv_buf_init(c->buf, n);
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->fs.data = c;
    if (uv_fs_write(loop, &c->fs, c->file, &b, 1, -1, after_write) < 0) finish(c, 0);
}

static void after_open(uv_fs_t *req) {
    conn_t *c = req->data;
    c->file = (uv_file)req->result;
    uv_fs_req_cleanup(req);
    if (c->file < 0) { finish(c, 0); return; }
    if (c->pending > 0) { size_t n = c->pending; c->pending = 0; write_body(c, c->buf, n); }
    else if (c->received >= c->size) finish(c, 1);
    else uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    conn_t *c = s->data;
    if (n == 0) return;
    if (n < 0) {
        if (c->size < 0 && c->digits_seen && c->received == 0 && !discard) {
            /* "0" and the end: an empty upload. */
            snprintf(c->path, sizeof c->path, "%s/upload-%llu.bin", dir, ++counter);
            int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd >= 0) close(fd);
            finish(c, fd >= 0);
            return;
        }
        finish(c, c->size >= 0 && c->received >= c->size);
        return;
    }
    const char *p = b->base;
    size_t len = (size_t)n;
    if (c->size < 0) {
        while (len > 0 && *p >= '0' && *p <= '9') {
            c->received = c->received * 10 + (*p - '0');  /* accumulate the size in `received` */
            c->digits_seen = 1;
            p++; len--;
        }
        if (len == 0) return;
        c->size = c->received;
        c->received = 0;
        if (discard) { write_body(c, p, len); return; }
        snprintf(c->path, sizeof c->path, "%s/upload-%llu.bin", dir, ++counter);
        if (sync_fs) {
            uv_fs_t req;
            c->file = uv_fs_open(NULL, &req, c->path, O_WRONLY | O_CREAT | O_TRUNC, 0644, NULL);
            uv_fs_req_cleanup(&req);
            if (c->file < 0) { finish(c, 0); return; }
            if (len > 0) write_body(c, p, len); else if (c->size == 0) finish(c, 1);
            return;
        }
        memmove(c->buf, p, len);
        c->pending = len;
        uv_read_stop(s);
        c->fs.data = c;
        if (uv_fs_open(loop, &c->fs, c->path, O_WRONLY | O_CREAT | O_TRUNC, 0644, after_open) < 0) finish(c, 0);
        return;
    }
    write_body(c, p, len);
}

static void on_connection(uv_stream_t *server, int status) {
    if (status < 0) return;
    conn_t *c = calloc(1, sizeof *c);
    c->buf = malloc(READ_SIZE);
    c->size = -1;
    c->file = -1;
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) == 0) uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
    else uv_close((uv_handle_t *)&c->tcp, on_closed);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: receiver PORT DIR [--sync | --discard]\n"); return 2; }
    dir = argv[2];
    discard = argc > 3 && strcmp(argv[3], "--discard") == 0;
    sync_fs = argc > 3 && strcmp(argv[3], "--sync") == 0;
    loop = uv_default_loop();
    uv_tcp_t server;
    struct sockaddr_in addr;
    uv_tcp_init(loop, &server);
    uv_ip4_addr("127.0.0.1", atoi(argv[1]), &addr);
    int r = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (r == 0) r = uv_listen((uv_stream_t *)&server, 4096, on_connection);
    if (r != 0) { fprintf(stderr, "listen: %s\n", uv_strerror(r)); return 1; }
    printf("listening tcp 127.0.0.1:%s\n", argv[1]);
    fflush(stdout);
    return uv_run(loop, UV_RUN_DEFAULT);
}
