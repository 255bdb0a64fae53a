"""aiohttp as a Python peer for HTTP uploads (bench/http): PUT /NAME streams the body into a
temporary file in the target directory, then renames it into place; 201 on success.
Writes are plain file writes on the event loop, as aiohttp's own upload examples do.

Usage: receiver.py PORT DIRECTORY
"""
import os
import sys
import tempfile

from aiohttp import web

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


app = web.Application(client_max_size=0)
app.router.add_put("/{name}", put)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, backlog=4096)
