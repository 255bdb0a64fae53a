#!/usr/bin/env python3
"""SIGTERM with uploads in flight: every one finishes or is reported resumable.

Starts `datastream serve --drain-timeout D`, runs `datastream bench --protocol native` with N
uploads at once, sends SIGTERM once a share of them is stored, and checks that
  - the server exits 0 within the drain window (plus a margin) and prints its drain summary;
  - uploads in progress at SIGTERM = stored while draining + cut and resumable (none lost);
  - every upload the generator saw confirmed is stored intact (bench --verify);
  - each cut upload left a native partial (resumable), nothing incomplete under a final name.
Usage: scripts/faults/drain.py [--uploads 500] [--drain-timeout 10] [--binary .build/release/datastream]
"""
import argparse, json, os, re, signal, socket, subprocess, sys, tempfile, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uploads", type=int, default=500)
    ap.add_argument("--size", default="4MiB")
    ap.add_argument("--drain-timeout", type=float, default=10)
    ap.add_argument("--binary", default=".build/release/datastream")
    a = ap.parse_args()
    target = tempfile.mkdtemp(prefix="datastream-drain-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(target, "..", os.path.basename(target) + ".log"), "w+")
    server = subprocess.Popen([a.binary, "serve", "--port", str(port), "--dir", target, "--no-udp",
                               "--drain-timeout", str(a.drain_timeout), "--log-level", "notice", "--min-free-space", "0"],
                              stdout=subprocess.PIPE, stderr=log)
    assert server.stdout.readline().startswith(b"listening tcp")
    bench = subprocess.Popen([a.binary, "bench", "--to", f"127.0.0.1:{port}", "--protocol", "native",
                              "--concurrency", str(a.uploads), "--uploads", str(a.uploads), "--size", a.size,
                              "--verify", target, "--json", "--timeout", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    # SIGTERM once about a tenth is stored: the rest are in flight.
    deadline = time.time() + 120
    while len([n for n in os.listdir(target) if n != ".datastream"]) < a.uploads // 10 and time.time() < deadline:
        time.sleep(0.005)
    stored_before = len([n for n in os.listdir(target) if n != ".datastream"])
    signalled = time.time()
    server.send_signal(signal.SIGTERM)
    status = server.wait(timeout=a.drain_timeout + 30)
    took = time.time() - signalled
    report = json.loads(bench.communicate()[0].decode())
    log.seek(0)
    text = log.read()
    m = re.search(r"drained; (\d+) uploads were in progress, (\d+) stored while draining, (\d+) cut at the deadline and resumable, (\d+) seed uploads cut and lost", text)
    if not m:
        print("no drain summary in the server's log:\n" + text[-2000:])
        sys.exit(1)
    in_progress, stored_draining, cut_resumable, cut_lost = map(int, m.groups())
    partials = [p for p in os.listdir(os.path.join(target, ".datastream", "partial")) if p.endswith(".part")]
    verification = report.get("verification") or {}
    final = len([n for n in os.listdir(target) if n != ".datastream"])
    print(f"SIGTERM with {in_progress} uploads in flight ({stored_before} stored before): exit {status} after {took:.2f} s "
          f"(drain timeout {a.drain_timeout} s); {stored_draining} finished while draining, {cut_resumable} cut and resumable "
          f"({len(partials)} partials kept), {cut_lost} lost; generator: {report['uploadsCompleted']} confirmed, "
          f"{report['uploadsFailed']} failed ({report.get('errors')}); {final} files under final names")
    ok = (status == 0 and cut_lost == 0 and in_progress == stored_draining + cut_resumable
          and len(partials) >= cut_resumable and report["uploadsCompleted"] == final
          and verification.get("ok") is True and took <= a.drain_timeout + 5)
    print(f"verify: {verification.get('verified')} intact, {len(verification.get('mismatches', []))} mismatched, "
          f"{len(verification.get('missing', []))} missing, {verification.get('unconfirmed')} stored but unconfirmed")
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
