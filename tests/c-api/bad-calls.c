/*
 * Bad calls into libdatastream return errors with a message and never crash: a NULL handle,
 * start twice, free before stop's callback, a port in use, values out of range, unknown
 * options, a directory that cannot be used. Exit status 0 when every check holds; each failed
 * check prints a line.
 */
#include <datastream.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

static int failures;

#define CHECK(condition, what)                                                     \
    do {                                                                           \
        if (!(condition)) {                                                        \
            printf("FAIL %s (line %d): last error: %s\n", what, __LINE__, ds_last_error()); \
            failures++;                                                            \
        }                                                                          \
    } while (0)

/* The call returned `code` and left a message that contains `words`. */
static int refused(int status, int code, const char *words) {
    return status == code && strstr(ds_last_error(), words) != NULL;
}

static int stopped_calls;
static void on_stopped(ds_server *server, void *user_data) {
    (void)server;
    stopped_calls += user_data == &stopped_calls;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp/datastream-bad-calls";
    uv_loop_t loop;
    uv_loop_init(&loop);
    int sentinel;
    loop.data = &sentinel; /* the host's: the server must leave it alone */

    /* NULL handles and arguments. */
    CHECK(refused(ds_config_set(NULL, "port", "0"), DS_ERR_INVALID, "NULL"), "set on a NULL config");
    CHECK(refused(ds_server_start(NULL), DS_ERR_INVALID, "NULL"), "start a NULL server");
    CHECK(refused(ds_server_stop(NULL, NULL, NULL), DS_ERR_INVALID, "NULL"), "stop a NULL server");
    CHECK(refused(ds_server_drain(NULL, 1, NULL, NULL), DS_ERR_INVALID, "NULL"), "drain a NULL server");
    CHECK(refused(ds_server_statistics(NULL, NULL, 0), DS_ERR_INVALID, "NULL"), "statistics of a NULL server");
    CHECK(ds_server_free(NULL) == DS_OK, "free NULL");
    ds_config_free(NULL);

    ds_config *config = ds_config_new();
    ds_server *server = NULL;
    CHECK(refused(ds_server_new(NULL, config, &server), DS_ERR_INVALID, "loop"), "new on a NULL loop");
    CHECK(refused(ds_server_new(&loop, NULL, &server), DS_ERR_INVALID, "config"), "new with a NULL config");
    CHECK(refused(ds_server_new(&loop, config, NULL), DS_ERR_INVALID, "out"), "new with a NULL out");

    /* Values out of range and unknown options, with the range in the message. */
    CHECK(refused(ds_config_set_port(config, 70000), DS_ERR_INVALID, "0 to 65535"), "port 70000");
    CHECK(refused(ds_config_set(config, "port", "-1"), DS_ERR_INVALID, "0 to 65535"), "port -1");
    CHECK(refused(ds_config_set(config, "header-timeout", "nan"), DS_ERR_INVALID, "seconds"), "timeout nan");
    CHECK(refused(ds_config_set(config, "max-file-size", "0"), DS_ERR_INVALID, "byte count"), "max-file-size 0");
    CHECK(refused(ds_config_set(config, "fsync", "maybe"), DS_ERR_INVALID, "true or false"), "fsync maybe");
    CHECK(refused(ds_config_set(config, "no-such-option", "1"), DS_ERR_INVALID, "no option named"), "unknown option");
    CHECK(refused(ds_config_set(config, "port", NULL), DS_ERR_INVALID, "NULL"), "NULL value");
    CHECK(refused(ds_config_set_log_callback(config, NULL, (ds_log_level)42, NULL), DS_ERR_INVALID, "level"), "log level 42");
    CHECK(ds_config_set(config, "port", "0") == DS_OK && strcmp(ds_last_error(), "") == 0, "a good value clears the error");

    /* A directory that cannot be used. */
    CHECK(ds_config_set_directory(config, "/proc/version/x") == DS_OK, "set directory");
    CHECK(refused(ds_server_new(&loop, config, &server), DS_ERR_DIRECTORY, "/proc/version"), "unusable directory");
    CHECK(server == NULL, "no server after a failed new");
    ds_config_set_directory(config, dir);

    /* Start twice, free before stop, stop twice. */
    CHECK(ds_server_new(&loop, config, &server) == DS_OK, "new");
    CHECK(ds_server_start(server) == DS_OK, "start");
    CHECK(refused(ds_server_start(server), DS_ERR_STATE, "already started"), "start twice");
    CHECK(refused(ds_server_free(server), DS_ERR_STATE, "running"), "free a running server");
    int port = ds_server_tcp_port(server);
    CHECK(port > 0, "a bound port");

    /* A second server on the same port: the port is in use. */
    ds_config *same = ds_config_new();
    char text[16];
    snprintf(text, sizeof text, "%d", port);
    ds_config_set_directory(same, dir);
    ds_config_set(same, "port", text);
    ds_server *second = NULL;
    CHECK(ds_server_new(&loop, same, &second) == DS_OK, "new second");
    CHECK(refused(ds_server_start(second), DS_ERR_LISTEN, "in use"), "a port in use");
    CHECK(ds_server_free(second) == DS_OK, "free a server whose start failed");
    ds_config_free(same);

    CHECK(ds_server_stop(server, on_stopped, &stopped_calls) == DS_OK, "stop");
    CHECK(refused(ds_server_stop(server, on_stopped, &stopped_calls), DS_ERR_STATE, "already stopping"), "stop twice");
    CHECK(refused(ds_server_free(server), DS_ERR_STATE, "running"), "free before stop's callback");
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(stopped_calls == 1, "stop's callback ran once, with its user data");
    CHECK(refused(ds_server_start(server), DS_ERR_STATE, "stopping or stopped"), "start after stop");
    ds_statistics statistics;
    CHECK(ds_server_statistics(server, &statistics, sizeof statistics) == DS_OK, "statistics after stop");
    CHECK(ds_server_free(server) == DS_OK, "free after stop's callback");

    /* A server never started stops at once. */
    CHECK(ds_server_new(&loop, config, &server) == DS_OK, "new third");
    CHECK(ds_server_stop(server, on_stopped, &stopped_calls) == DS_OK && stopped_calls == 2, "stop before start calls back at once");
    CHECK(ds_server_free(server) == DS_OK, "free third");
    ds_config_free(config);

    CHECK(loop.data == &sentinel, "loop->data untouched");
    int closed = uv_loop_close(&loop);
    CHECK(closed == 0, "uv_loop_close");
    printf("%s: %d failed checks\n", failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
