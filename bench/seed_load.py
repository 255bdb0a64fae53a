#!/usr/bin/env python3
"""A small seed-protocol load generator (asyncio): N uploads of SIZE bytes with CONCURRENCY
connections at once; each waits for the server to close the connection (the seed server's
"stored" signal). Prints throughput. Bounded in count and time. Used until `datastream bench`
exists (see the benchmark issue)."""
import asyncio, os, sys, time

async def upload(port, payload, sem, results):
    async with sem:
        t0 = time.perf_counter()
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            w.write(str(len(payload)).encode())
            w.write(payload)
            await w.drain()
            await asyncio.wait_for(r.read(), 60)   # the server closes once stored
            w.close()
            results.append(time.perf_counter() - t0)
        except Exception as e:
            results.append(None)

async def main():
    port, n, size, conc = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    payload = os.urandom(size)
    sem = asyncio.Semaphore(conc)
    results = []
    t0 = time.perf_counter()
    await asyncio.gather(*(upload(port, payload, sem, results) for _ in range(n)))
    dt = time.perf_counter() - t0
    ok = [x for x in results if x is not None]
    print(f"{len(ok)}/{n} uploads of {size} B in {dt:.2f} s: {len(ok)*size/dt/1e6:.1f} MB/s, {len(ok)/dt:.0f} uploads/s")

asyncio.run(main())
