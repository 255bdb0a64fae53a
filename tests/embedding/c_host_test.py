#!/usr/bin/env python3
"""Runs examples/c-host (built as docs/EMBEDDING.md says) and checks, on real sockets:
seed, native and UDP uploads arrive and the callback prints the right names and digests; the
host's own timer and echo server keep working during 1,000 uploads; SIGINT stops everything
and uv_loop_close returns 0. Given a C_HOST built with -fsanitize=address, LeakSanitizer's
report at exit makes its status non-zero, so a leak fails the run.

Usage: c_host_test.py C_HOST DATASTREAM_EXECUTABLE [--uploads N]
       c_host_test.py --swift-host SWIFT_HOST     (examples/swift-host: a seed upload and a stop)
"""
import hashlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

DEADLINE = 300  # seconds: the bound on the whole run, never a figure that is checked


class Host:
    """The c-host process; its stdout lines go to a queue as they come."""

    def __init__(self, command, directory, with_echo=True):
        # Its log lines go to a file: a pipe nobody reads could fill and stall the loop.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command + [directory], stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()
        self.tcp = int(self.expect("listening tcp").split()[2])
        if with_echo:
            self.udp = int(self.expect("listening udp").split()[2])
            self.echo = int(self.expect("echo").split()[1])

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix, timeout=60):
        """The next line starting with `prefix` (earlier lines are kept in `seen`)."""
        end = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, end - time.monotonic()))
            if line is None:
                self.log.seek(0)
                raise AssertionError("c-host ended before '%s': %s" % (prefix, self.log.read()[-3000:]))
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def stored(self, count):
        return [self.expect("stored") for _ in range(count)]

    def stop(self):
        self.process.send_signal(signal.SIGINT)
        closed = self.expect("loop closed:")
        status = self.process.wait(timeout=60)
        return closed, status


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def run(command, timeout=120):
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    check(result.returncode == 0, "%s failed: %s%s" % (" ".join(command), result.stdout, result.stderr))
    return result.stdout


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def seed_tcp(port, data):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(str(len(data)).encode() + data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(30)
        while s.recv(65536):
            pass


def seed_udp(port, data):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(str(len(data)).encode(), ("127.0.0.1", port))
        for offset in range(0, len(data), 1024):
            s.sendto(data[offset:offset + 1024], ("127.0.0.1", port))
        s.sendto(b"EOF", ("127.0.0.1", port))


class Echo:
    """Pings the host's echo server until stopped (bounded in count and time), one ping in
    flight, the next as soon as its reply came; checks every reply and keeps each round trip."""

    def __init__(self, port):
        self.port = port
        self.latencies = []
        self.wrong = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.settimeout(30)
            end = time.monotonic() + DEADLINE
            for n in range(1_000_000):
                if self.done.is_set() or time.monotonic() > end:
                    break
                message = b"ping %08d\n" % n
                start = time.monotonic()
                s.sendall(message)
                reply = b""
                while len(reply) < len(message):
                    chunk = s.recv(len(message) - len(reply))
                    if not chunk:
                        self.wrong += 1
                        return
                    reply += chunk
                self.latencies.append(time.monotonic() - start)
                if reply != message:
                    self.wrong += 1

    def stop(self):
        self.done.set()
        self.thread.join(60)

    def percentile(self, p):
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def swift_host(command):
    work = tempfile.mkdtemp(prefix="swift-host-test-")
    try:
        host = Host([command], os.path.join(work, "received"), with_echo=False)
        data = b"7 days of logs" + os.urandom(10_000)
        seed_tcp(host.tcp, data)
        line = host.expect("stored")
        check(line.split()[1] == "seed-tcp" and read_bytes(line.split()[4]) == data, "swift-host stored: " + line)
        closed, status = host.stop()
        check(closed == "loop closed: 0" and status == 0, "swift-host stops cleanly: %s, exit %d" % (closed, status))
        print("swift-host: stored %s; %s" % (line.split()[2], closed))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    if sys.argv[1] == "--swift-host":
        return swift_host(sys.argv[2])
    c_host, datastream = sys.argv[1], sys.argv[2]
    uploads = int(sys.argv[sys.argv.index("--uploads") + 1]) if "--uploads" in sys.argv else 1000
    work = tempfile.mkdtemp(prefix="c-host-test-")
    try:
        full(c_host, datastream, work, uploads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def full(c_host, datastream, work, uploads):
    directory = os.path.join(work, "received")
    host = Host([c_host], directory)
    echo = Echo(host.echo)

    # 1,000 seed uploads at once from the load generator, each stored file checked by it.
    run([datastream, "bench", "--to", "127.0.0.1:%d" % host.tcp, "--protocol", "seed", "--uploads", str(uploads),
         "--concurrency", "100", "--size", "16KiB", "--verify", directory], timeout=DEADLINE)
    bench_lines = host.stored(uploads)
    check(all(l.split()[1] == "seed-tcp" for l in bench_lines), "every bench upload reported as seed-tcp")
    ticks = [int(l.rsplit("ticks=", 1)[1]) for l in bench_lines]
    check(ticks == sorted(ticks) and ticks[-1] > ticks[0], "the host's timer kept ticking during the uploads: %s..%s" % (ticks[0], ticks[-1]))
    pings_during_bench = len(echo.latencies)
    check(pings_during_bench > 0 and echo.wrong == 0, "the echo server answered during the uploads (%d, %d wrong)" % (pings_during_bench, echo.wrong))
    for line in bench_lines:
        fields = line.split()
        check(os.path.getsize(fields[5]) == int(fields[3]) == 16384, "stored size: " + line)

    # Native TCP (SHA-256, so this test can check the digest), native UDP, seed TCP, seed UDP.
    files = {}
    for i, size in enumerate([1, 100_000, 3_000_000]):
        path = os.path.join(work, "native-%d.bin" % i)
        data = os.urandom(size)
        with open(path, "wb") as f:
            f.write(data)
        files[path] = data
    run([datastream, "send", *files, "--to", "127.0.0.1:%d" % host.tcp, "--digest", "sha256", "--state-dir", work])
    for line in host.stored(len(files)):
        _, transport, name, size, digest, path, _ = line.split()
        original = os.path.join(work, name)
        check(transport == "tcp" and original in files, "native upload reported under its name: " + line)
        check(digest == hashlib.sha256(files[original]).hexdigest(), "the reported digest is the file's SHA-256: " + line)
        check(read_bytes(path) == files[original] and int(size) == len(files[original]), "stored bytes: " + line)

    udp_file = os.path.join(work, "over-udp.bin")
    with open(udp_file, "wb") as f:
        f.write(os.urandom(2_000_000))
    run([datastream, "send", udp_file, "--to", "127.0.0.1:%d" % host.tcp, "--udp", "--state-dir", work])
    line = host.expect("stored")
    _, transport, name, size, digest, path, _ = line.split()
    check(transport == "udp" and name == "over-udp.bin" and len(digest) == 32, "native UDP upload: " + line)
    check(read_bytes(path) == read_bytes(udp_file), "native UDP bytes")

    seed_data = b"0123 begins with digits" + os.urandom(50_000)
    seed_tcp(host.tcp, seed_data)
    line = host.expect("stored")
    check(line.split()[1] == "seed-tcp" and line.split()[4] == "-", "seed TCP reported with no digest: " + line)
    check(read_bytes(line.split()[5]) == seed_data, "seed TCP bytes")
    udp_data = os.urandom(30_000)
    seed_udp(host.udp, udp_data)
    line = host.expect("stored")
    check(line.split()[1] == "seed-udp" and read_bytes(line.split()[5]) == udp_data, "seed UDP upload: " + line)

    # A broken upload is reported as failed and leaves no file.
    before = set(os.listdir(directory))
    with socket.create_connection(("127.0.0.1", host.tcp)) as s:
        s.sendall(b"5000" + b"x" * 100)
    line = host.expect("failed")
    check(line.split()[1] == "seed-tcp" and "resumable=0" in line, "broken seed upload: " + line)
    check(set(os.listdir(directory)) == before, "no file for the broken upload")

    echo.stop()
    check(echo.wrong == 0, "every echo reply was right")
    closed, status = host.stop()
    host.log.seek(0)
    check(closed == "loop closed: 0" and status == 0, "SIGINT stops cleanly: %s, exit %d\n%s" % (closed, status, host.log.read()[-3000:]))
    print("c-host: %d uploads stored; echo answered %d pings during them (%d in all), p50 %.2f ms, p99 %.2f ms, max %.2f ms"
          % (uploads + len(files) + 3, pings_during_bench, len(echo.latencies), 1000 * echo.percentile(0.5),
             1000 * echo.percentile(0.99), 1000 * max(echo.latencies)))


if __name__ == "__main__":
    main()
