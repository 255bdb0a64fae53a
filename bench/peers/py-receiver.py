#!/usr/bin/env python3
"""Two peers for comparisons, both receiving the seed framing (ASCII size digits, then the
bytes), one file per upload, closing the connection once the declared size is stored.

  py-receiver.py uvloop PORT DIR   asyncio on uvloop (Debian's python3-uvloop), many at once
  py-receiver.py seed PORT DIR     the seed's own behaviour: blocking, one connection at a
                                   time, 1024-byte reads (a recreation of PyDataStream's server)
"""
import asyncio, os, socket, sys

def name(directory, n):
    return os.path.join(directory, f"upload-{n}.bin")

async def serve_uvloop(port, directory):
    import uvloop
    counter = 0

    async def handle(reader, writer):
        nonlocal counter
        counter += 1
        number = counter
        digits, first = b"", b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                writer.close()
                return
            i = 0
            while i < len(chunk) and 48 <= chunk[i] <= 57:
                i += 1
            digits += chunk[:i]
            if i < len(chunk):
                first = chunk[i:]
                break
        size = int(digits)
        path = name(directory, number)
        received = 0
        with open(path, "wb") as f:
            if first:
                f.write(first)
                received += len(first)
            while received < size:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
        if received < size:
            os.unlink(path)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, limit=1 << 20)
    print(f"listening tcp 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()

def serve_seed(port, directory):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(5)
    print(f"listening tcp 127.0.0.1:{port}", flush=True)
    counter = 0
    while True:
        conn, _ = s.accept()
        counter += 1
        data = conn.recv(1024)
        i = 0
        while i < len(data) and 48 <= data[i] <= 57:
            i += 1
        try:
            size = int(data[:i])
        except ValueError:
            conn.close()
            continue
        received = len(data) - i
        with open(name(directory, counter), "wb") as f:
            f.write(data[i:])
            while received < size:
                data = conn.recv(1024)
                if not data:
                    break
                f.write(data)
                received += len(data)
        conn.close()

if __name__ == "__main__":
    mode, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.makedirs(directory, exist_ok=True)
    if mode == "uvloop":
        import uvloop
        uvloop.run(serve_uvloop(port, directory)) if hasattr(uvloop, "run") else (uvloop.install(), asyncio.run(serve_uvloop(port, directory)))
    else:
        serve_seed(port, directory)
