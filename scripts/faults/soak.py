#!/usr/bin/env python3
"""Soak: many uploads at once for a long time; descriptors and memory must not creep.

Runs `datastream bench` (seed protocol, N uploads at once, sizes in a range) against a release
`datastream serve` for the given duration, deletes stored files as it goes (so the disk does
not fill), samples the server's descriptors and RSS every 30 s, and checks at the end that
  - no upload failed and the server is still serving;
  - descriptors at the end (load over) are back to where they started;
  - RSS at the end of the load is within 16 MiB of what it was after the first minute.
Usage: scripts/faults/soak.py [--minutes 10] [--concurrency 1000] [--binary .build/release/datastream]
"""
import argparse, json, os, resource, signal, socket, subprocess, sys, tempfile, threading, time


def stats(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
    return fds, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--size", default="16KiB-256KiB")
    ap.add_argument("--binary", default=".build/release/datastream")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 65536), hard), hard))
    target = tempfile.mkdtemp(prefix="datastream-soak-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([a.binary, "serve", "--port", str(port), "--dir", target, "--no-udp", "--log-level", "error"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert server.stdout.readline().startswith(b"listening tcp")
    start_fds, start_rss = stats(server.pid)
    stop = threading.Event()

    def sweep():  # delete what is stored, so ten minutes of uploads fit on the disk
        while not stop.wait(2):
            for name in os.listdir(target):
                if name != ".datastream":
                    try:
                        os.unlink(os.path.join(target, name))
                    except OSError:
                        pass
    threading.Thread(target=sweep, daemon=True).start()
    seconds = a.minutes * 60
    bench = subprocess.Popen([a.binary, "bench", "--to", f"127.0.0.1:{port}", "--protocol", "seed",
                              "--concurrency", str(a.concurrency), "--duration", str(seconds), "--size", a.size, "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    samples, t0 = [], time.time()
    while bench.poll() is None:
        time.sleep(min(30, max(1, seconds / 20)))
        if bench.poll() is None:
            fds, rss = stats(server.pid)
            samples.append((time.time() - t0, fds, rss))
            print(f"  {samples[-1][0]:6.0f} s: {fds} descriptors, RSS {rss:.1f} MiB", flush=True)
    report = json.loads(bench.communicate()[0].decode())
    time.sleep(1)
    end_fds, end_rss = stats(server.pid)
    stop.set()
    server.send_signal(signal.SIGTERM)
    status = server.wait(timeout=60)
    first = next((s for s in samples if s[0] >= 60), samples[0] if samples else (0, 0, start_rss))
    last = samples[-1] if samples else first
    print(f"soak {a.minutes:g} min at {a.concurrency} uploads at once: {report['uploadsCompleted']} uploads, "
          f"{report['megabytesPerSecond']:.0f} MB/s, {report['uploadsFailed']} failed; descriptors {start_fds} at start, "
          f"{last[1]} under load at the end, {end_fds} after; RSS {start_rss:.1f} MiB at start, {first[2]:.1f} MiB after the "
          f"first minute, {last[2]:.1f} MiB at the end of the load, {end_rss:.1f} MiB after; server exit {status}")
    ok = report["uploadsFailed"] == 0 and end_fds <= start_fds + 2 and last[2] <= first[2] + 16 and status == 0
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
