/*
 * datastream.h: DataStream, a file receiver for many simultaneous uploads, embedded in a C
 * program's own libuv loop.
 *
 * Build:  cc app.c $(pkg-config --cflags --libs datastream libuv)
 * Guide:  docs/EMBEDDING.md
 *
 * Rules
 * - Every ds_server_* call, and every callback, happens on the thread that runs the loop the
 *   server was created on. From another thread, wake the loop with a uv_async_t of your own and
 *   make the call from its callback. ds_config_* calls may come from any thread, one at a time
 *   per config.
 * - The server opens its own handles on your loop (TCP and UDP sockets, timers, an idle handle)
 *   and closes all of them before stop's callback runs. It never touches loop->data or your
 *   handles, and never runs, stops or closes the loop.
 * - Process-wide effects: ds_server_start sets SIGPIPE to be ignored (a client closing first
 *   must not end the process). File operations run on libuv's threadpool, which every loop in
 *   the process shares: its size is read once, from UV_THREADPOOL_SIZE, when the first work is
 *   queued (set it before that; the default of 4 suits most hosts). A threadpool thread that
 *   moves a large upload from its socket to its file keeps a buffer and a pipe for it,
 *   freed when the thread ends.
 * - Nothing aborts the process on a bad call: each function returns DS_OK or an error code,
 *   and ds_last_error() then says what went wrong.
 */
#ifndef DATASTREAM_H
#define DATASTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DS_API_VERSION 1

/* Return codes. */
typedef enum ds_status {
    DS_OK = 0,
    DS_ERR_INVALID = -1,   /* a null handle or argument, an unknown option, a value out of range */
    DS_ERR_STATE = -2,     /* not now: started twice, freed before stop's callback, ... */
    DS_ERR_LISTEN = -3,    /* cannot bind or listen (the port is in use, ...) */
    DS_ERR_DIRECTORY = -4, /* the target directory cannot be created or used */
} ds_status;

/* The message of the last error on this thread ("" if none). Valid until the next ds_ call on
 * the same thread. */
const char *ds_last_error(void);

/* ---- Configuration ------------------------------------------------------------------------ */

typedef struct ds_config ds_config;

/* A configuration with the defaults of `datastream serve`: 127.0.0.1:9000, ./received. */
ds_config *ds_config_new(void);
void ds_config_free(ds_config *config);

/* Sets an option named as `datastream serve`'s flag without its dashes, from text, checked
 * against the same range (docs/CLI.md): ds_config_set(c, "max-file-size", "64MiB"),
 * ds_config_set(c, "port", "0"), ds_config_set(c, "udp", "false"). Options: host, port, dir,
 * token, fsync, max-file-size, min-free-space, max-name-length, max-connections,
 * max-connections-per-address, partial-max-age, max-partials-per-address,
 * max-partial-bytes-per-address, max-partials, max-partial-bytes, header-timeout, idle-timeout,
 * allow-anonymous, allow-seed-protocol, udp, udp-port, udp-receive-buffer, udp-idle-timeout,
 * udp-offload, udp-max-sessions, udp-max-sessions-per-address, udp-max-seed-sessions,
 * udp-max-seed-sessions-per-address, udp-window, udp-memory, proxy-protocol. */
int ds_config_set(ds_config *config, const char *name, const char *value);

/* Typed shortcuts for the common ones. */
int ds_config_set_host(ds_config *config, const char *host);
int ds_config_set_port(ds_config *config, int port); /* 0: the system picks a free port */
int ds_config_set_directory(ds_config *config, const char *path);
int ds_config_set_token(ds_config *config, const char *token); /* NULL: no authentication */

/* ---- Events ------------------------------------------------------------------------------- */

typedef enum ds_transport {
    DS_TRANSPORT_TCP = 1,      /* the native TCP protocol */
    DS_TRANSPORT_SEED_TCP = 2, /* PyDataStream's TCP framing */
    DS_TRANSPORT_UDP = 3,      /* the native reliable-UDP protocol */
    DS_TRANSPORT_SEED_UDP = 4, /* PyDataStream's UDP datagrams */
    DS_TRANSPORT_HTTP = 5,     /* an HTTP request body (PUT /NAME, a form, tus) */
    DS_TRANSPORT_WEBSOCKET = 6, /* the browser page's WebSocket at /ws */
} ds_transport;

typedef enum ds_event_kind {
    DS_EVENT_STARTED = 1, /* an upload began */
    DS_EVENT_STORED = 2,  /* an upload is complete and under its final name */
    DS_EVENT_FAILED = 3,  /* an upload ended without being stored */
} ds_event_kind;

/* An event. Its strings are valid only during the callback: copy what you keep. */
typedef struct ds_event {
    size_t struct_size; /* sizeof(ds_event) as the library knows it */
    ds_event_kind kind;
    ds_transport transport;
    const char *peer;        /* "127.0.0.1:50312", "[::1]:50312" */
    const char *client_name; /* the client's file name (native), or NULL (seed) */
    const char *upload_id;   /* the native upload id in hex, or NULL (seed) */
    uint64_t size;           /* the size the client announced */
    /* DS_EVENT_STORED */
    const char *stored_name;      /* the name in the target directory */
    const char *path;             /* the target directory joined with stored_name */
    const char *digest_hex;       /* the verified digest (native), or NULL (seed) */
    const char *digest_algorithm; /* "xxh3-128" or "sha256", or NULL */
    /* DS_EVENT_FAILED */
    const char *reason; /* why, in words */
    int code;           /* the protocol's error code (docs/PROTOCOL.md) */
    int resumable;      /* 1: the partial stays and the client can resume it */
} ds_event;

typedef void (*ds_event_cb)(const ds_event *event, void *user_data);

/* Called for every upload event. */
int ds_config_set_event_callback(ds_config *config, ds_event_cb callback, void *user_data);

typedef enum ds_log_level {
    DS_LOG_TRACE = 0,
    DS_LOG_DEBUG = 1,
    DS_LOG_INFO = 2,
    DS_LOG_NOTICE = 3,
    DS_LOG_WARNING = 4,
    DS_LOG_ERROR = 5,
    DS_LOG_CRITICAL = 6,
} ds_log_level;

/* `line` is one log line without a newline, valid only during the call. */
typedef void (*ds_log_cb)(ds_log_level level, const char *line, void *user_data);

/* Lines at `min_level` and above go to `callback`. Without one, the server logs nothing. */
int ds_config_set_log_callback(ds_config *config, ds_log_cb callback, ds_log_level min_level, void *user_data);

/* ---- The server --------------------------------------------------------------------------- */

typedef struct ds_server ds_server;

/* Makes a server on `loop` (which the caller owns and runs) with a copy of `config`, and
 * prepares its directory. Nothing listens before ds_server_start. */
int ds_server_new(uv_loop_t *loop, const ds_config *config, ds_server **out);

/* Binds and listens (TCP, and UDP unless off). Once per server. */
int ds_server_start(ds_server *server);

/* The bound ports (useful with port 0), after start; 0 if none. */
int ds_server_tcp_port(const ds_server *server);
int ds_server_udp_port(const ds_server *server);

typedef void (*ds_stopped_cb)(ds_server *server, void *user_data);

/* Closes the listeners and every connection at once (native partials stay resumable, seed
 * uploads in progress are lost), then calls `callback` once every handle it opened is closed.
 * A server never started calls back at once. */
int ds_server_stop(ds_server *server, ds_stopped_cb callback, void *user_data);

typedef struct ds_drain_outcome {
    size_t struct_size;
    uint64_t in_progress_at_start; /* uploads in progress when the drain began */
    uint64_t stored_while_draining;
    uint64_t cut_resumable; /* native uploads cut at the deadline: their clients resume */
    uint64_t cut_lost;      /* seed uploads cut at the deadline */
} ds_drain_outcome;

typedef void (*ds_drained_cb)(ds_server *server, const ds_drain_outcome *outcome, void *user_data);

/* Graceful stop: accepting stops at once, uploads in progress may finish for
 * `deadline_seconds`, then what is left is cut as by ds_server_stop; `callback` runs once every
 * handle is closed. */
int ds_server_drain(ds_server *server, double deadline_seconds, ds_drained_cb callback, void *user_data);

typedef struct ds_statistics {
    uint64_t connections_accepted;
    uint64_t connections_open;
    uint64_t uploads_stored;
    uint64_t uploads_already_stored; /* sent again after being stored: answered, not stored twice */
    uint64_t uploads_failed;
    uint64_t bytes_received;
    uint64_t connections_refused;
    uint64_t connections_timed_out;
    uint64_t authentication_failures;
    uint64_t udp_sessions_open;
    uint64_t udp_datagrams_received;
} ds_statistics;

/* Copies the counters into `out`, of `out_size` bytes (pass sizeof(ds_statistics)): a caller
 * built against an older, shorter struct gets its fields; fields the library does not know are
 * zeroed. */
int ds_server_statistics(const ds_server *server, ds_statistics *out, size_t out_size);

/* Frees the server: before start, or once stop's (or drain's) callback has run. Otherwise
 * DS_ERR_STATE, and nothing is freed. NULL is allowed. */
int ds_server_free(ds_server *server);

#ifdef __cplusplus
}
#endif

#endif /* DATASTREAM_H */
