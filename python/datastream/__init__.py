"""DataStream's receiver in a Python program, through libdatastream (ctypes).

    import datastream
    with datastream.Server(dir="received", port=0, on_stored=print) as server:
        print("listening on", server.port)
        ...                      # uploads arrive; on_stored gets a StoredUpload each time

The server runs its own libuv loop in a background thread. Callbacks (on_stored, on_failed,
on_event) are called on that thread, with the GIL held, after each event's strings were copied
into Python objects. A callback that raises is reported on stderr and does not stop the server.
Other keyword arguments are options named as `datastream serve`'s flags with underscores
(max_file_size="64MiB", header_timeout=10, udp=False), range-checked by the library.

The library is found through DATASTREAM_LIBRARY (a path), then the linker's search path
(scripts/install-lib installs it into /usr/local/lib).
"""
import ctypes
import ctypes.util
import dataclasses
import os
import sys
import threading
import traceback
from typing import Callable, Optional

__all__ = ["Server", "StoredUpload", "FailedUpload", "DataStreamError"]

TRANSPORTS = {1: "tcp", 2: "seed-tcp", 3: "udp", 4: "seed-udp", 5: "http", 6: "websocket"}
_STARTED, _STORED, _FAILED = 1, 2, 3


class DataStreamError(Exception):
    """A call into libdatastream failed; the message is the library's."""


@dataclasses.dataclass(frozen=True)
class StoredUpload:
    transport: str
    peer: str
    stored_name: str
    path: str
    size: int
    client_name: Optional[str]
    upload_id: Optional[str]
    digest: Optional[str]
    digest_algorithm: Optional[str]


@dataclasses.dataclass(frozen=True)
class FailedUpload:
    transport: str
    peer: str
    size: int
    reason: str
    code: int
    resumable: bool
    client_name: Optional[str]
    upload_id: Optional[str]


class _Event(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("kind", ctypes.c_int),
        ("transport", ctypes.c_int),
        ("peer", ctypes.c_char_p),
        ("client_name", ctypes.c_char_p),
        ("upload_id", ctypes.c_char_p),
        ("size", ctypes.c_uint64),
        ("stored_name", ctypes.c_char_p),
        ("path", ctypes.c_char_p),
        ("digest_hex", ctypes.c_char_p),
        ("digest_algorithm", ctypes.c_char_p),
        ("reason", ctypes.c_char_p),
        ("code", ctypes.c_int),
        ("resumable", ctypes.c_int),
    ]


class _Statistics(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "connections_accepted", "connections_open", "uploads_stored", "uploads_already_stored",
        "uploads_failed", "bytes_received", "connections_refused", "connections_timed_out",
        "authentication_failures", "udp_sessions_open", "udp_datagrams_received")]


_EVENT_CB = ctypes.CFUNCTYPE(None, ctypes.POINTER(_Event), ctypes.c_void_p)
_LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_STOPPED_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_ASYNC_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_CLOSE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _load():
    path = os.environ.get("DATASTREAM_LIBRARY") or ctypes.util.find_library("datastream") or "libdatastream.so"
    lib = ctypes.CDLL(path)
    # The libuv the library itself links (already loaded with it).
    uv = ctypes.CDLL(ctypes.util.find_library("uv") or "libuv.so.1")
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, res, args in [
        ("ds_last_error", s, []),
        ("ds_config_new", p, []),
        ("ds_config_free", None, [p]),
        ("ds_config_set", i, [p, s, s]),
        ("ds_config_set_event_callback", i, [p, _EVENT_CB, p]),
        ("ds_config_set_log_callback", i, [p, _LOG_CB, i, p]),
        ("ds_server_new", i, [p, p, ctypes.POINTER(p)]),
        ("ds_server_start", i, [p]),
        ("ds_server_tcp_port", i, [p]),
        ("ds_server_udp_port", i, [p]),
        ("ds_server_stop", i, [p, _STOPPED_CB, p]),
        ("ds_server_statistics", i, [p, ctypes.POINTER(_Statistics), ctypes.c_size_t]),
        ("ds_server_free", i, [p]),
    ]:
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    for name, res, args in [
        ("uv_loop_size", ctypes.c_size_t, []),
        ("uv_handle_size", ctypes.c_size_t, [i]),
        ("uv_loop_init", i, [p]),
        ("uv_run", i, [p, i]),
        ("uv_loop_close", i, [p]),
        ("uv_async_init", i, [p, p, _ASYNC_CB]),
        ("uv_async_send", i, [p]),
        ("uv_close", None, [p, _CLOSE_CB]),
    ]:
        f = getattr(uv, name)
        f.restype, f.argtypes = res, args
    return lib, uv


_lib = None
_uv = None
_UV_ASYNC = 1  # uv_handle_type's UV_ASYNC


def _text(b):
    return None if b is None else b.decode("utf-8", "surrogateescape")


class Server:
    """A DataStream receiver on its own loop thread. `start()` (or `with`) binds and returns
    once it listens; `stop()` closes everything and waits for the loop to end."""

    def __init__(self, dir: str = "./received", host: str = "127.0.0.1", port: int = 9000,
                 on_stored: Optional[Callable[[StoredUpload], None]] = None,
                 on_failed: Optional[Callable[[FailedUpload], None]] = None,
                 on_log: Optional[Callable[[int, str], None]] = None, **options):
        global _lib, _uv
        if _lib is None:
            _lib, _uv = _load()
        self.on_stored, self.on_failed, self.on_log = on_stored, on_failed, on_log
        self._settings = [("dir", str(dir)), ("host", host), ("port", str(port))]
        for name, value in options.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            self._settings.append((name.replace("_", "-"), str(value)))
        self._thread = None
        self._ready = threading.Event()
        self._error = None
        self.port = 0
        self.udp_port = 0
        self.loop_close_status = None
        # The C callbacks must outlive every call that can use them.
        self._event_cb = _EVENT_CB(self._event)
        self._log_cb = _LOG_CB(self._log)
        self._async_cb = _ASYNC_CB(self._wakeup)
        self._stopped_cb = _STOPPED_CB(self._stopped)
        self._close_cb = _CLOSE_CB(lambda handle: None)

    # ---- on the loop thread ----

    def _event(self, event_pointer, _user_data):
        e = event_pointer.contents
        try:
            if e.kind == _STORED and self.on_stored:
                self.on_stored(StoredUpload(TRANSPORTS.get(e.transport, "?"), _text(e.peer), _text(e.stored_name),
                                            _text(e.path), e.size, _text(e.client_name), _text(e.upload_id),
                                            _text(e.digest_hex), _text(e.digest_algorithm)))
            elif e.kind == _FAILED and self.on_failed:
                self.on_failed(FailedUpload(TRANSPORTS.get(e.transport, "?"), _text(e.peer), e.size, _text(e.reason),
                                            e.code, bool(e.resumable), _text(e.client_name), _text(e.upload_id)))
        except Exception:
            traceback.print_exc(file=sys.stderr)

    def _log(self, level, line, _user_data):
        if self.on_log:
            try:
                self.on_log(level, _text(line))
            except Exception:
                traceback.print_exc(file=sys.stderr)

    def _wakeup(self, _handle):
        if _lib.ds_server_stop(self._server, self._stopped_cb, None) != 0:
            sys.stderr.write("datastream: stop: %s\n" % _text(_lib.ds_last_error()))

    def _stopped(self, _server, _user_data):
        _uv.uv_close(self._async, self._close_cb)

    def _run(self):
        loop = ctypes.create_string_buffer(_uv.uv_loop_size())
        self._async = ctypes.create_string_buffer(_uv.uv_handle_size(_UV_ASYNC))
        _uv.uv_loop_init(loop)
        config = _lib.ds_config_new()
        server = ctypes.c_void_p()
        try:
            for name, value in self._settings:
                if _lib.ds_config_set(config, name.encode(), value.encode()) != 0:
                    raise DataStreamError(_text(_lib.ds_last_error()))
            _lib.ds_config_set_event_callback(config, self._event_cb, None)
            if self.on_log:
                _lib.ds_config_set_log_callback(config, self._log_cb, 2, None)
            if _lib.ds_server_new(loop, config, ctypes.byref(server)) != 0:
                raise DataStreamError(_text(_lib.ds_last_error()))
            self._server = server
            if _lib.ds_server_start(server) != 0:
                raise DataStreamError(_text(_lib.ds_last_error()))
        except DataStreamError as error:
            self._error = error
            if server:
                _lib.ds_server_free(server)
            _lib.ds_config_free(config)
            self.loop_close_status = _uv.uv_loop_close(loop)
            self._ready.set()
            return
        _lib.ds_config_free(config)
        _uv.uv_async_init(loop, self._async, self._async_cb)
        self.port = _lib.ds_server_tcp_port(server)
        self.udp_port = _lib.ds_server_udp_port(server)
        self._ready.set()
        _uv.uv_run(loop, 0)
        stats = _Statistics()
        _lib.ds_server_statistics(server, ctypes.byref(stats), ctypes.sizeof(stats))
        self.statistics = {name: getattr(stats, name) for name, _ in _Statistics._fields_}
        _lib.ds_server_free(server)
        self.loop_close_status = _uv.uv_loop_close(loop)

    # ---- on the caller's thread ----

    def start(self):
        if self._thread is not None:
            raise DataStreamError("the server was already started")
        self._thread = threading.Thread(target=self._run, name="datastream-loop", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error:
            self._thread.join()
            raise self._error
        return self

    def stop(self, timeout: Optional[float] = None):
        """Stops the server (native partials stay resumable) and waits for its loop to end."""
        if self._thread is None or self._error:
            return
        if self._thread.is_alive():
            _uv.uv_async_send(self._async)
        self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
