/*
 * c-host: a C program with its own libuv loop (a timer and a TCP echo server) that embeds
 * DataStream on the same loop and prints a line per upload event. SIGINT or SIGTERM drains the
 * receiver and closes everything, so uv_loop_close returns 0.
 *
 * Build (docs/EMBEDDING.md):  cc examples/c-host/host.c -o c-host $(pkg-config --cflags --libs datastream libuv)
 * Run:                        ./c-host DIR [PORT [ECHO_PORT]]      (port 0: any free one)
 *
 * Lines on stdout:
 *   listening tcp PORT / listening udp PORT / echo PORT      once started
 *   stored TRANSPORT NAME SIZE DIGEST PATH ticks=N            a file is under its final name
 *   failed TRANSPORT SIZE resumable=0|1 REASON                an upload ended without a file
 *   drained stored=N cut=N / loop closed: STATUS              at the end
 */
#include <datastream.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static uv_loop_t loop;
static uv_timer_t timer;
static uv_tcp_t echo_server;
static uv_signal_t sigint_watcher, sigterm_watcher;
static ds_server *receiver;
static unsigned long ticks;
static int stopping;

/* ---- The host's own work: a timer and an echo server ---- */

static void on_tick(uv_timer_t *t) {
    (void)t;
    ticks++;
}

typedef struct {
    uv_write_t req;
    uv_buf_t buf;
} echo_write;

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

/* The echo connections open now, so the host can close them at the end. */
typedef struct echo_client {
    uv_tcp_t tcp;
    struct echo_client *prev, *next;
} echo_client;
static echo_client *echo_clients;

static void on_client_closed(uv_handle_t *h) {
    echo_client *c = (echo_client *)h;
    if (c->prev) c->prev->next = c->next; else echo_clients = c->next;
    if (c->next) c->next->prev = c->prev;
    free(c);
}

static void on_echoed(uv_write_t *req, int status) {
    (void)status;
    echo_write *w = (echo_write *)req;
    free(w->buf.base);
    free(w);
}

static void on_echo_read(uv_stream_t *client, ssize_t n, const uv_buf_t *buf) {
    if (n > 0) {
        echo_write *w = malloc(sizeof *w);
        w->buf = uv_buf_init(buf->base, (unsigned)n);
        if (uv_write(&w->req, client, &w->buf, 1, on_echoed) == 0) return;
        free(w);
    }
    free(buf->base);
    if (n < 0 && !uv_is_closing((uv_handle_t *)client)) uv_close((uv_handle_t *)client, on_client_closed);
}

static void on_echo_connection(uv_stream_t *server, int status) {
    if (status < 0) return;
    echo_client *client = calloc(1, sizeof *client);
    uv_tcp_init(&loop, &client->tcp);
    client->next = echo_clients;
    if (echo_clients) echo_clients->prev = client;
    echo_clients = client;
    if (uv_accept(server, (uv_stream_t *)client) == 0) {
        uv_read_start((uv_stream_t *)client, on_alloc, on_echo_read);
    } else {
        uv_close((uv_handle_t *)client, on_client_closed);
    }
}

static void close_echo_clients(void) {
    for (echo_client *c = echo_clients; c; c = c->next) {
        if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, on_client_closed);
    }
}

/* ---- DataStream ---- */

static const char *transport_name(ds_transport t) {
    switch (t) {
    case DS_TRANSPORT_TCP: return "tcp";
    case DS_TRANSPORT_SEED_TCP: return "seed-tcp";
    case DS_TRANSPORT_UDP: return "udp";
    case DS_TRANSPORT_SEED_UDP: return "seed-udp";
    }
    return "?";
}

static void on_event(const ds_event *e, void *user_data) {
    (void)user_data;
    if (e->kind == DS_EVENT_STORED) {
        printf("stored %s %s %llu %s %s ticks=%lu\n", transport_name(e->transport), e->stored_name,
               (unsigned long long)e->size, e->digest_hex ? e->digest_hex : "-", e->path, ticks);
    } else if (e->kind == DS_EVENT_FAILED) {
        printf("failed %s %llu resumable=%d %s\n", transport_name(e->transport), (unsigned long long)e->size,
               e->resumable, e->reason);
    }
    fflush(stdout);
}

static void on_log(ds_log_level level, const char *line, void *user_data) {
    (void)user_data;
    fprintf(stderr, "datastream[%d]: %s\n", (int)level, line);
}

static void on_drained(ds_server *server, const ds_drain_outcome *outcome, void *user_data) {
    (void)server;
    (void)user_data;
    printf("drained stored=%llu cut=%llu\n", (unsigned long long)outcome->stored_while_draining,
           (unsigned long long)(outcome->cut_resumable + outcome->cut_lost));
    fflush(stdout);
    /* The receiver's handles are closed: close ours, and the loop runs out. */
    uv_close((uv_handle_t *)&timer, NULL);
    uv_close((uv_handle_t *)&echo_server, NULL);
    uv_close((uv_handle_t *)&sigint_watcher, NULL);
    uv_close((uv_handle_t *)&sigterm_watcher, NULL);
    close_echo_clients();
}

static void on_signal(uv_signal_t *s, int signum) {
    (void)s;
    (void)signum;
    if (stopping) return;
    stopping = 1;
    if (ds_server_drain(receiver, 5.0, on_drained, NULL) != DS_OK) {
        fprintf(stderr, "c-host: drain: %s\n", ds_last_error());
    }
}

static int fail(const char *what) {
    fprintf(stderr, "c-host: %s: %s\n", what, ds_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [PORT [ECHO_PORT]]\n", argv[0]);
        return 2;
    }
    const char *port = argc > 2 ? argv[2] : "0";
    int echo_port = argc > 3 ? atoi(argv[3]) : 0;
    uv_loop_init(&loop);

    /* The host's own handles. */
    uv_timer_init(&loop, &timer);
    uv_timer_start(&timer, on_tick, 10, 10);
    uv_tcp_init(&loop, &echo_server);
    struct sockaddr_in address;
    uv_ip4_addr("127.0.0.1", echo_port, &address);
    if (uv_tcp_bind(&echo_server, (const struct sockaddr *)&address, 0) != 0 ||
        uv_listen((uv_stream_t *)&echo_server, 128, on_echo_connection) != 0) {
        fprintf(stderr, "c-host: cannot listen for echo\n");
        return 1;
    }
    struct sockaddr_storage bound;
    int length = sizeof bound;
    uv_tcp_getsockname(&echo_server, (struct sockaddr *)&bound, &length);
    uv_signal_init(&loop, &sigint_watcher);
    uv_signal_start(&sigint_watcher, on_signal, SIGINT);
    uv_signal_init(&loop, &sigterm_watcher);
    uv_signal_start(&sigterm_watcher, on_signal, SIGTERM);

    /* DataStream on the same loop. */
    ds_config *config = ds_config_new();
    if (ds_config_set_directory(config, argv[1]) != DS_OK) return fail("directory");
    if (ds_config_set(config, "port", port) != DS_OK) return fail("port");
    ds_config_set_event_callback(config, on_event, NULL);
    ds_config_set_log_callback(config, on_log, DS_LOG_WARNING, NULL);
    int status = ds_server_new(&loop, config, &receiver);
    ds_config_free(config);
    if (status != DS_OK) return fail("ds_server_new");
    if (ds_server_start(receiver) != DS_OK) return fail("ds_server_start");

    printf("listening tcp %d\n", ds_server_tcp_port(receiver));
    printf("listening udp %d\n", ds_server_udp_port(receiver));
    printf("echo %d\n", ntohs(((struct sockaddr_in *)&bound)->sin_port));
    fflush(stdout);

    uv_run(&loop, UV_RUN_DEFAULT);

    ds_statistics statistics;
    ds_server_statistics(receiver, &statistics, sizeof statistics);
    if (ds_server_free(receiver) != DS_OK) return fail("ds_server_free");
    int closed = uv_loop_close(&loop);
    printf("stopped stored=%llu failed=%llu\n", (unsigned long long)statistics.uploads_stored,
           (unsigned long long)statistics.uploads_failed);
    printf("loop closed: %d\n", closed);
    return closed == 0 ? 0 : 1;
}
