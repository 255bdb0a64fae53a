#!/usr/bin/env python3
"""Several `datastream serve` processes on one target directory, with kill -9.

Each round: a fresh target directory and fresh source files; NODES servers start on it (each on
its own port), and SENDERS `datastream send` processes upload the files (native protocol),
each sender to one node. Most files are small; a few are large enough (16 MiB) to be cut off
mid-way on loopback, where a small file is in the kernel's buffers the moment it is sent. Mid-round, some senders are killed with SIGKILL (their uploads stop
half sent, and the node keeps the partial) and one node is killed with SIGKILL at a random
moment. Then every file not confirmed is sent again, each to a node other than the one it
began on, while the killed node restarts on the same directory (its start-up sweep must leave
the other nodes' partials alone). Checked:
  1. every file under a final name is byte-identical to its source, after the kill and at the
     end (0 bad files);
  2. every file is stored, exactly once (no NAME-1 copies);
  3. uploads cut off with bytes held resume on another node (RESULT's resumedFrom > 0), and
     files stored but unconfirmed are answered from their receipts there.

Prints one line per round and a summary; exit status 1 on any bad, missing or doubled file, or
a failed resend. Usage:
  scripts/faults/shared-dir.py [--rounds 3] [--uploads 1000] [--nodes 3] [--binary PATH]
"""
import argparse, os, random, shutil, signal, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from fleet_common import check_final_names, free_port, make_sources, outcomes, partial_name, send, start_node


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--uploads", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--senders", type=int, default=30)
    ap.add_argument("--max-size", type=int, default=512 << 10)
    ap.add_argument("--large-share", type=float, default=0.03, help="this share of the files is --large-size: long enough on loopback to be cut mid-way")
    ap.add_argument("--large-size", type=int, default=16 << 20)
    ap.add_argument("--binary", default=".build/release/datastream")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.nodes < 2 or a.rounds < 1 or a.uploads < 1 or a.senders < a.nodes:
        raise SystemExit("shared-dir: --nodes >= 2, --rounds >= 1, --uploads >= 1, --senders >= --nodes")
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="datastream-shared-")
    env = dict(os.environ, DATASTREAM_STATE_DIR=os.path.join(work, "state"))
    totals = dict(rounds=0, uploads=0, bad=0, missing=0, duplicates=0, failed_resends=0, not_resumed=0,
                  confirmed_before=0, held_partials=0, resumed_elsewhere=0, receipts_answered=0)
    try:
        for r in range(1, a.rounds + 1):
            src_dir, target = os.path.join(work, f"src{r}"), os.path.join(work, f"in{r}")
            os.makedirs(src_dir)
            sources = make_sources(rng, src_dir, f"r{r}", a.uploads,
                                   lambda g: a.large_size if g.random() < a.large_share else g.randint(1, a.max_size))
            names = sorted(sources)
            log = open(os.path.join(work, f"nodes{r}.log"), "ab")
            ports = [free_port() for _ in range(a.nodes)]
            nodes = [start_node(a.binary, target, p, log) for p in ports]
            groups = [names[k::a.senders] for k in range(a.senders)]
            began = {n: k % a.nodes for k, g in enumerate(groups) for n in g}
            senders = [send(a.binary, ports[k % a.nodes], [sources[n][0] for n in g], env) for k, g in enumerate(groups)]
            # Cut a third of the senders off mid-upload, and kill one node, at random moments
            # (by how many files are stored so far) while uploads are in flight (partials with
            # bytes in them).
            victim = rng.randrange(a.nodes)
            cut = set(rng.sample(range(a.senders), a.senders // 3))
            goals = sorted(rng.randint(0, int(a.uploads * 0.7)) for _ in range(2))
            partial_dir = os.path.join(target, ".datastream", "partial")

            def in_flight():
                try:
                    return sum(1 for p in os.scandir(partial_dir) if p.name.endswith(".part") and p.stat().st_size > 0)
                except OSError:
                    return 0
            deadline = time.time() + 300
            for step, goal in enumerate(goals):
                while (len(os.listdir(target)) - 1 < goal or in_flight() < 2) and time.time() < deadline and any(s.poll() is None for s in senders):
                    time.sleep(0.002)
                if step == 0:
                    for k in cut:
                        senders[k].send_signal(signal.SIGKILL)
                else:
                    nodes[victim].send_signal(signal.SIGKILL)
                    nodes[victim].wait()
            confirmed = set()
            for s in senders:
                for o in outcomes(s):
                    if o.get("ok"):
                        confirmed.add(os.path.basename(o["path"]))
            bad, stored = check_final_names(target, sources)
            # Partials with bytes in them, by the name their metadata records.
            held = {}
            for p in os.scandir(partial_dir):
                if p.name.endswith(".part") and p.stat().st_size > 0:
                    name = partial_name(os.path.join(partial_dir, p.name[:-5] + ".meta"))
                    if name:
                        held[name] = p.stat().st_size
            unconfirmed_stored = [n for n in stored if n not in confirmed]
            # The killed node comes back on the same directory beside the live ones.
            nodes[victim] = start_node(a.binary, target, ports[victim], log)
            # Everything not confirmed goes again, each file to a node other than the one it
            # began on.
            rest = [n for n in names if n not in confirmed]
            by_node = {k: [] for k in range(a.nodes)}
            for n in rest:
                by_node[(began[n] + 1 + rng.randrange(a.nodes - 1)) % a.nodes].append(n)
            resends = []
            for k, files in by_node.items():
                for part in (files[j::3] for j in range(3)):
                    if part:
                        resends.append(send(a.binary, ports[k], [sources[n][0] for n in part], env))
            failed, resumed, from_receipt, lost = 0, 0, 0, 0
            for s in resends:
                for o in outcomes(s):
                    name = os.path.basename(o.get("path", ""))
                    if not o.get("ok"):
                        failed += 1
                    elif name in held:
                        # Held by one node (killed, or cut off from its sender): the other
                        # node goes on from every byte it holds (a complete one is stored).
                        if o.get("resumedFrom", 0) >= held[name]:
                            resumed += 1
                        else:
                            lost += 1
                    elif o.get("resumedFrom", 0) == o.get("size", -1):
                        from_receipt += 1
            for n in nodes:
                n.send_signal(signal.SIGTERM)
            for n in nodes:
                n.wait(timeout=60)
            bad_after, stored_after = check_final_names(target, sources)
            missing = [n for n in names if n not in stored_after]
            duplicates = sum(len(v) - 1 for v in stored_after.values())
            print(f"round {r}: {a.nodes} nodes, node {victim} killed, {len(cut)} senders killed; "
                  f"{len(confirmed)} confirmed before, {len(bad)} bad files after the kills; "
                  f"resent {len(rest)} to other nodes: {resumed} of the {len(held)} held resumed from all they held ({lost} not), "
                  f"{from_receipt} answered as stored ({len(unconfirmed_stored)} were stored unconfirmed), {failed} failed; "
                  f"end: {len(bad_after)} bad, {len(missing)} missing, {duplicates} stored twice", flush=True)
            totals["rounds"] += 1
            totals["uploads"] += a.uploads
            totals["bad"] += len(bad) + len(bad_after)
            totals["missing"] += len(missing)
            totals["duplicates"] += duplicates
            totals["failed_resends"] += failed
            totals["not_resumed"] += lost
            totals["confirmed_before"] += len(confirmed)
            totals["held_partials"] += len(held)
            totals["resumed_elsewhere"] += resumed
            totals["receipts_answered"] += from_receipt
            shutil.rmtree(src_dir)
            shutil.rmtree(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("summary: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    sys.exit(1 if totals["bad"] or totals["missing"] or totals["duplicates"] or totals["failed_resends"] or totals["not_resumed"] else 0)


if __name__ == "__main__":
    main()
