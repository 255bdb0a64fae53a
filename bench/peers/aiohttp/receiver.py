"""aiohttp as a Python peer for HTTP uploads (bench/http): PUT /NAME streams the body into a
temporary file in the target directory, then renames it into place; 201 on success. GET /ws
speaks DataStream's upload WebSocket (docs/PROTOCOL.md §8) for fresh uploads without a token:
hello, begin, ready at 0, binary frames into a temporary file, stored once the size is in.
Writes are plain file writes on the event loop, as aiohttp's own upload examples do.

Usage: receiver.py PORT DIRECTORY
"""
import json
import os
import sys
import tempfile

from aiohttp import WSMsgType, web

directory = sys.argv[2]


async def put(request):
    name = os.path.basename(request.match_info["name"])
    if not name or name.startswith("."):
        return web.json_response({"error": "bad name"}, status=400)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upload-")
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.content.iter_chunked(256 * 1024):
                f.write(chunk)
                size += len(chunk)
        os.rename(tmp, os.path.join(directory, name))
    except BaseException:
        os.unlink(tmp)
        raise
    return web.json_response({"name": name, "size": size}, status=201)


async def upload_socket(request):
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    await ws.send_str(json.dumps({"type": "hello", "version": 1, "auth": "none"}, separators=(",", ":")))
    f = tmp = name = None
    size = received = 0
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            m = json.loads(msg.data)
            if m.get("type") != "begin" or f is not None:
                await ws.close(code=1008)
                break
            name, size, received = os.path.basename(m["name"]), m["size"], 0
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upload-")
            f = os.fdopen(fd, "wb")
            await ws.send_str(json.dumps({"type": "ready", "id": os.path.basename(tmp), "offset": 0}, separators=(",", ":")))
        elif msg.type == WSMsgType.BINARY and f is not None:
            f.write(msg.data)
            received += len(msg.data)
        else:
            break
        if f is not None and received == size:
            f.close()
            os.rename(tmp, os.path.join(directory, name))
            f = None
            await ws.send_str(json.dumps({"type": "stored", "id": os.path.basename(tmp), "name": name, "size": size}, separators=(",", ":")))
    if f is not None:
        f.close()
        os.unlink(tmp)
    return ws


app = web.Application(client_max_size=0)
app.router.add_get("/ws", upload_socket)
app.router.add_put("/{name}", put)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, backlog=4096)
