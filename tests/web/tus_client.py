"""A tus client (tuspy) the tus test runs as its own process, so that it can be killed:
uploads PATH to URL in chunks, remembering the upload's URL in STORAGE (tuspy's file storage,
keyed by the file's fingerprint), and prints "offset N" after each chunk. With --pause-after K
it stops after K chunks and waits to be killed; run again, it resumes from the server's offset.
The environment's DATASTREAM_TOKEN, when set, goes in an `Authorization: Bearer` header.

Usage: tus_client.py URL PATH STORAGE CHUNK [--pause-after K]
"""
import os
import sys
import time

from tusclient import client
from tusclient.storage import filestorage

url, path, storage, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pause_after = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[5] == "--pause-after" else None

token = os.environ.get("DATASTREAM_TOKEN")
headers = {"Authorization": "Bearer " + token} if token else {}
uploader = client.TusClient(url, headers=headers).uploader(path, chunk_size=chunk, store_url=True,
                                           url_storage=filestorage.FileStorage(storage),
                                           metadata={"filename": path.rsplit("/", 1)[-1]})
print("start", uploader.offset, uploader.url, flush=True)
chunks = 0
while uploader.offset < uploader.get_file_size():
    uploader.upload_chunk()
    chunks += 1
    print("offset", uploader.offset, flush=True)
    if pause_after is not None and chunks == pause_after:
        print("paused", flush=True)
        while True:
            time.sleep(60)  # until killed
print("done", uploader.offset, flush=True)
