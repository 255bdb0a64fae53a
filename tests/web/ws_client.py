"""A non-browser client of the upload WebSocket at /ws (docs/PROTOCOL.md §8), on Python's
`websockets` package: it uploads files one after another on one connection, answering the
token challenge when asked, and resumes an upload from the server's offset when given its id.

Usage: python ws_client.py URL [--token T] [--resume ID] [--stop-after BYTES] FILE...
Prints one line per file: `stored NAME SIZE ID`, or `error CODE MESSAGE`; with --stop-after,
the client closes the connection after sending that many bytes of the first file and prints
`stopped ID`.
"""
import argparse
import asyncio
import hashlib
import hmac
import json
import os

import websockets


async def upload(url, files, token=None, resume=None, stop_after=None, chunk=256 * 1024):
    async with websockets.connect(url, max_size=1 << 20) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello", hello
        if hello["auth"] == "hmac-sha256":
            mac = hmac.new((token or "").encode(), b"datastream-v1-auth" + bytes.fromhex(hello["nonce"]), hashlib.sha256)
            await ws.send(json.dumps({"type": "auth", "mac": mac.hexdigest()}))
            answer = json.loads(await ws.recv())
            if answer["type"] != "welcome":
                print("error", answer["code"], answer["message"], flush=True)
                return
        for path in files:
            size = os.path.getsize(path)
            begin = {"type": "begin", "name": os.path.basename(path), "size": size}
            if resume:
                begin["resume"] = resume
            await ws.send(json.dumps(begin))
            ready = json.loads(await ws.recv())
            if ready["type"] != "ready":
                print("error", ready["code"], ready["message"], flush=True)
                continue
            offset = ready["offset"]
            print("ready", ready["id"], offset, flush=True)
            with open(path, "rb") as f:
                f.seek(offset)
                while offset < size:
                    n = min(chunk, size - offset)
                    if stop_after is not None and offset + n > stop_after:
                        n = stop_after - offset
                        if n > 0:
                            await ws.send(f.read(n))
                        print("stopped", ready["id"], flush=True)
                        return
                    await ws.send(f.read(n))
                    offset += n
            stored = json.loads(await ws.recv())
            if stored["type"] == "stored":
                print("stored", stored["name"], stored["size"], stored["id"], flush=True)
            else:
                print("error", stored["code"], stored["message"], flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("files", nargs="+")
    p.add_argument("--token")
    p.add_argument("--resume")
    p.add_argument("--stop-after", type=int)
    a = p.parse_args()
    asyncio.run(upload(a.url, a.files, a.token, a.resume, a.stop_after))


if __name__ == "__main__":
    main()
