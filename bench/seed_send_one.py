#!/usr/bin/env python3
"""Sends one file with the seed framing using sendfile (a fast, seed-compatible client),
half-closes, waits for the server's close, prints MB/s."""
import os, socket, sys, time
port, path = int(sys.argv[1]), sys.argv[2]
size = os.path.getsize(path)
t0 = time.perf_counter()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(str(size).encode())
with open(path, "rb") as f:
    s.sendfile(f)
s.shutdown(socket.SHUT_WR)
s.settimeout(120)
s.recv(1)
dt = time.perf_counter() - t0
print(f"1 upload of {size} B in {dt:.2f} s: {size/dt/1e6:.1f} MB/s")
