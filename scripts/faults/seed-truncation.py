#!/usr/bin/env python3
"""How often a seed client killed mid-upload gets its cut-short file stored.

The seed TCP client sends its size in a write of its own, then the file in 1,024-byte writes,
then closes. Killed after k blocks, its socket ends the stream with a FIN, as a close does.
The split rule (docs/PROTOCOL.md §1.1) can read some such streams as a whole, shorter file.
This runs that client for every size in a range and every k short of the whole file, against
a `datastream serve`, and counts the uploads stored although cut short.

Two contents: binary files (first byte not a digit) and log files (first bytes are digits,
"2026-12-02 ..."), which lengthen the digit run the server sees.

Usage: scripts/faults/seed-truncation.py [--binary .build/release/datastream] [--sizes 10000-10999]
Prints one line per content and a JSON summary; exit status 0 (it measures, it does not judge).
"""
import argparse, json, os, random, shutil, socket, subprocess, sys, tempfile


def start_server(binary, directory):
    p = subprocess.Popen([binary, "serve", "--port", "0", "--dir", directory, "--no-udp",
                          "--log-level", "error", "--min-free-space", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline().decode()
    if not line.startswith("listening tcp"):
        raise SystemExit(f"serve did not start: {line!r}")
    return p, int(line.rsplit(":", 1)[1])


def content(kind, size, rng):
    if kind == "binary":
        data = bytearray(rng.randbytes(size))
        if data:
            data[0] = 0x80  # not a digit
        return bytes(data)
    line = b"2026-12-02 12:00:00 INFO upload accepted from 127.0.0.1\n"
    return (line * (size // len(line) + 1))[:size]


def cut_short(port, data, blocks):
    """The seed client, killed after `blocks` 1,024-byte writes."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(str(len(data)).encode())
    for i in range(blocks):
        s.sendall(data[i * 1024:(i + 1) * 1024])
    s.shutdown(socket.SHUT_WR)
    s.settimeout(30)
    while s.recv(4096):  # the server closes once it has decided
        pass
    s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=".build/release/datastream")
    ap.add_argument("--sizes", default="10000-10999")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    low, high = (int(x) for x in a.sizes.split("-"))
    if not 1 <= low <= high <= 1 << 30 or high - low > 100_000:
        raise SystemExit("--sizes must be LOW-HIGH within 1..2^30, at most 100,000 sizes")
    rng = random.Random(a.seed)
    summary = {}
    for kind in ("binary", "log"):
        directory = tempfile.mkdtemp(prefix="seed-truncation-")
        server, port = start_server(a.binary, directory)
        trials = 0
        try:
            for size in range(low, high + 1):
                data = content(kind, size, rng)
                for blocks in range((size + 1023) // 1024):
                    cut_short(port, data, blocks)
                    trials += 1
        finally:
            server.terminate()
            server.wait()
        stored = [n for n in os.listdir(directory) if not n.startswith(".")]
        shutil.rmtree(directory)
        summary[kind] = {"trials": trials, "stored": len(stored)}
        print(f"{kind:6s}: {trials} cut-short uploads, {len(stored)} stored", file=sys.stderr)
    print(json.dumps({"server": a.binary, "sizes": a.sizes, **summary}))


if __name__ == "__main__":
    main()
