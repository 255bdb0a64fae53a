#!/usr/bin/env python3
"""kill -9 of the receiver at random points while uploads are in flight, over many rounds.

Each round: a fresh target directory and a fresh set of source files; `datastream serve`
starts, several `datastream send` processes upload the files (native protocol, so they can
resume), and the server is killed with SIGKILL at a random moment. Then:
  1. every file under a final name in the target directory must be byte-identical to its
     source (0 files with a wrong size or digest is the promise);
  2. the server restarts on the same directory, the senders run again for the files they did
     not see confirmed, and every one must be stored; files interrupted mid-upload must resume
     (RESULT's resumedFrom > 0 for at least those with bytes held) and end byte-identical.

Prints one line per round and a summary; exit status 1 on any bad file or failed upload.
Usage: scripts/faults/kill9.py [--rounds 20] [--uploads 1000] [--binary .build/release/datastream]
"""
import argparse, os, random, shutil, signal, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from fleet_common import check_final_names, free_port, make_sources, outcomes, send, start_node  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--uploads", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--max-size", type=int, default=512 << 10)
    ap.add_argument("--binary", default=".build/release/datastream")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="datastream-kill9-")
    totals = dict(rounds=0, uploads=0, bad=0, confirmed_before_kill=0, interrupted=0, resumed=0, stored_unconfirmed=0, duplicates=0, failed_after_restart=0)
    try:
        for r in range(1, a.rounds + 1):
            src_dir, target = os.path.join(work, f"src{r}"), os.path.join(work, f"in{r}")
            os.makedirs(src_dir)
            sources = make_sources(rng, src_dir, f"r{r}", a.uploads, lambda g: g.randint(1, a.max_size))
            names = sorted(sources)
            groups = [names[k::a.senders] for k in range(a.senders)]
            port = free_port()
            log = open(os.path.join(work, f"server{r}.log"), "ab")
            server = start_node(a.binary, target, port, log)
            senders = [send(a.binary, port, [sources[n][0] for n in g], None) for g in groups]
            # Kill once a random share of the uploads is stored (so always mid-flight).
            goal = rng.randint(0, int(a.uploads * 0.9))
            deadline = time.time() + 120
            while len(os.listdir(target)) - 1 < goal and time.time() < deadline:
                time.sleep(0.002)
            server.send_signal(signal.SIGKILL)
            server.wait()
            confirmed = set()
            for s in senders:
                for o in outcomes(s):
                    if o.get("ok"):
                        confirmed.add(os.path.basename(o["path"]))
            bad, stored = check_final_names(target, sources)
            # Stored before the kill, but the client never got its RESULT: resent below, these
            # must be answered from their receipts, not stored again.
            unconfirmed_stored = [n for n in stored if n not in confirmed]
            partials = [p for p in os.listdir(os.path.join(target, ".datastream", "partial")) if p.endswith(".part")]
            # Restart and resume what was not confirmed.
            server = start_node(a.binary, target, port, log)
            rest = [n for n in names if n not in confirmed]
            groups = [rest[k::a.senders] for k in range(a.senders)]
            resumed, failed = 0, 0
            for s in [send(a.binary, port, [sources[n][0] for n in g], None) for g in groups if g]:
                for o in outcomes(s):
                    if not o.get("ok"):
                        failed += 1
                    elif o.get("resumedFrom", 0) > 0:
                        resumed += 1
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
            bad_after, stored_after = check_final_names(target, sources)
            missing = [n for n in names if n not in stored_after]
            duplicates = sum(len(v) - 1 for v in stored_after.values())
            line = (f"round {r}: killed after {len(confirmed)} confirmed, {len(partials)} partials held; "
                    f"{len(bad)} bad files under final names after the kill; restart: {len(rest)} resent, "
                    f"{resumed} resumed from a partial, {len(unconfirmed_stored)} stored before the kill but unconfirmed, "
                    f"{failed} failed; end: {len(bad_after)} bad, "
                    f"{len(missing)} missing, {duplicates} duplicates (stored twice: must be 0)")
            print(line, flush=True)
            totals["rounds"] += 1
            totals["uploads"] += a.uploads
            totals["bad"] += len(bad) + len(bad_after) + len(missing)
            totals["confirmed_before_kill"] += len(confirmed)
            totals["interrupted"] += len(partials)
            totals["resumed"] += resumed
            totals["duplicates"] += duplicates
            totals["stored_unconfirmed"] += len(unconfirmed_stored)
            totals["failed_after_restart"] += failed
            shutil.rmtree(src_dir)
            shutil.rmtree(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("summary: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    # A resent upload that was stored before the kill is answered from its receipt (or, killed
    # between linking and the receipt, found by its inode): never stored twice.
    sys.exit(1 if totals["bad"] or totals["failed_after_restart"] or totals["duplicates"] else 0)


if __name__ == "__main__":
    main()
