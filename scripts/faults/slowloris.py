#!/usr/bin/env python3
"""Thousands of slow or stalled connections are evicted on time; the server keeps serving.

Against `datastream serve --header-timeout H --idle-timeout I`:
  - N "drip" connections send their header one byte per second and never finish it (seed size
    digits, or a native HELLO frame): each must be closed about H seconds after it connected;
  - N "stall" connections start a seed upload, send a few bytes and then nothing: each must be
    closed about I seconds after its last byte (its partial deleted);
  - meanwhile a normal upload every half second must be stored.
Reports how many were evicted, the eviction delay against the timeout (min, median, max), the
server's descriptors and RSS before, at the peak and after, and the normal uploads stored. It
passes if every slow connection was evicted in time, every normal upload stored, no partial is
left, and the server holds no more sockets or files after than before.
Usage: scripts/faults/slowloris.py [--connections 5000] [--timeout 5] [--binary .build/release/datastream]
"""
import argparse, os, resource, selectors, signal, socket, statistics, subprocess, sys, tempfile, time


def server_stats(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) // 1024
    return fds, rss


def held_descriptors(pid):
    """The server's sockets and files (what a leaked connection or upload would hold). Pipes
    and event descriptors are left out: each file thread makes one pipe for splicing the first
    time it drains an upload, and keeps it."""
    held = 0
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        held += target.startswith("socket:") or target.startswith("/")
    return held


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=5000, help="of each kind")
    ap.add_argument("--timeout", type=float, default=5)
    ap.add_argument("--binary", default=".build/release/datastream")
    a = ap.parse_args()
    need = 4 * a.connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(need, hard)), hard))
    target = tempfile.mkdtemp(prefix="datastream-slowloris-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([a.binary, "serve", "--port", str(port), "--dir", target, "--no-udp",
                               "--header-timeout", str(a.timeout), "--idle-timeout", str(a.timeout),
                               "--max-connections", str(need), "--log-level", "error", "--min-free-space", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert server.stdout.readline().startswith(b"listening tcp")
    fds0, rss0 = server_stats(server.pid)
    held0 = held_descriptors(server.pid)
    sel = selectors.DefaultSelector()
    hello = bytes([0x01, 0, 0, 0, 8]) + b"DSTM" + bytes([1, 0, 0, 0])
    conns = {}  # socket -> dict(kind, started, last, sent)
    start = time.time()
    for i in range(2 * a.connections):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        kind = "drip" if i % 2 == 0 else "stall"
        conns[s] = dict(kind=kind, native=(i % 4 == 0), started=time.time(), last=time.time(), sent=0, closed=None)
        sel.register(s, selectors.EVENT_READ)
    # Stalled ones: a seed header and a few bytes, then nothing.
    time.sleep(0.2)
    for s, c in conns.items():
        if c["kind"] == "stall":
            try:
                s.send(b"1000000x" + b"a" * 100)
                c["last"] = time.time()
            except OSError:
                pass
    peak = (0, 0)
    normal_ok, normal_tried, next_drip, next_normal = 0, 0, time.time() + 1, time.time()
    end = time.time() + 3 * a.timeout + 5
    while time.time() < end and any(c["closed"] is None for c in conns.values()):
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                conns[s]["closed"] = time.time()
                sel.unregister(s)
        now = time.time()
        if now >= next_drip:  # one header byte per second on each drip connection
            next_drip = now + 1
            for s, c in conns.items():
                if c["kind"] == "drip" and c["closed"] is None:
                    byte = hello[c["sent"] % len(hello):][:1] if c["native"] else b"1"
                    try:
                        s.send(byte)
                        c["sent"] += 1
                    except OSError:
                        pass
            peak = max(peak, server_stats(server.pid))
        if now >= next_normal:  # a normal upload goes through meanwhile
            next_normal = now + 0.5
            normal_tried += 1
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as n:
                    n.sendall(b"5000" + b"z" * 5000)
                    n.shutdown(socket.SHUT_WR)
                    while n.recv(4096):
                        pass
                normal_ok += 1
            except OSError:
                pass
    time.sleep(0.5)
    fds1, rss1 = server_stats(server.pid)
    held1 = held_descriptors(server.pid)
    stored = len([n for n in os.listdir(target) if n != ".datastream"])
    partials = len(os.listdir(os.path.join(target, ".datastream", "partial")))
    ok = True
    for kind, base in (("drip", "started"), ("stall", "last")):
        group = [c for c in conns.values() if c["kind"] == kind]
        evicted = [c for c in group if c["closed"] is not None]
        delays = sorted(c["closed"] - c[base] - a.timeout for c in evicted)
        if delays:
            print(f"{kind}: {len(evicted)} of {len(group)} evicted; delay past the {a.timeout} s timeout: "
                  f"min {delays[0]:+.2f} s, median {statistics.median(delays):+.2f} s, max {delays[-1]:+.2f} s")
        else:
            print(f"{kind}: 0 of {len(group)} evicted")
        ok = ok and len(evicted) == len(group) and (not delays or (delays[0] > -0.05 and delays[-1] < 2.5))
    print(f"normal uploads meanwhile: {normal_ok} of {normal_tried} served, {stored} stored; partials left {partials}")
    print(f"server descriptors {fds0} before, {peak[0]} at the peak, {fds1} after ({held0} sockets and files before, {held1} after); RSS {rss0} MiB before, {peak[1]} MiB at the peak, {rss1} MiB after")
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    ok = ok and normal_ok == normal_tried and stored == normal_ok and partials == 0 and held1 == held0
    print("OK" if ok else "FAILED")
    for s in conns:
        s.close()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
