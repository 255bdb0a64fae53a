"""The Python binding on real sockets: python -m unittest discover -s python/tests.

DATASTREAM_EXECUTABLE names the `datastream` program used as the native client."""
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import unittest

import datastream


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def seed_upload(port, data):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(str(len(data)).encode() + data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(30)
        while s.recv(65536):
            pass


class Collector:
    """Events as they come from the loop thread, and a way to wait for them."""

    def __init__(self):
        self.items = []
        self.changed = threading.Condition()

    def __call__(self, item):
        with self.changed:
            self.items.append(item)
            self.changed.notify_all()

    def wait_for(self, count, timeout=60):
        with self.changed:
            self.changed.wait_for(lambda: len(self.items) >= count, timeout)
            return list(self.items)


class ServerTests(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="datastream-python-")
        self.dir = os.path.join(self.work, "received")

    def tearDown(self):
        shutil.rmtree(self.work, ignore_errors=True)

    def test_seed_and_native_uploads_reach_on_stored(self):
        stored, failed = Collector(), Collector()
        with datastream.Server(dir=self.dir, port=0, on_stored=stored, on_failed=failed) as server:
            self.assertGreater(server.port, 0)
            seed = b"42 is a file beginning with digits" + os.urandom(100_000)
            seed_upload(server.port, seed)
            path = os.path.join(self.work, "report.bin")
            native = os.urandom(1_500_000)
            with open(path, "wb") as f:
                f.write(native)
            subprocess.run([os.environ.get("DATASTREAM_EXECUTABLE", "datastream"), "send", path, "--to",
                            "127.0.0.1:%d" % server.port, "--digest", "sha256", "--state-dir", self.work],
                           check=True, capture_output=True, timeout=120)
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                s.sendall(b"100abc")  # 100 bytes announced, 3 sent
            events = stored.wait_for(2)
            broken = failed.wait_for(1)
        self.assertEqual(server.loop_close_status, 0)
        by_transport = {e.transport: e for e in events}
        self.assertEqual(set(by_transport), {"seed-tcp", "tcp"})
        self.assertEqual(read_bytes(by_transport["seed-tcp"].path), seed)
        self.assertIsNone(by_transport["seed-tcp"].digest)
        upload = by_transport["tcp"]
        self.assertEqual((upload.client_name, upload.stored_name, upload.size), ("report.bin", "report.bin", len(native)))
        self.assertEqual(upload.digest, hashlib.sha256(native).hexdigest())
        self.assertEqual(upload.digest_algorithm, "sha256")
        self.assertEqual(read_bytes(upload.path), native)
        self.assertTrue(upload.peer.startswith("127.0.0.1:"))
        self.assertEqual(len(broken), 1)
        self.assertEqual((broken[0].transport, broken[0].size, broken[0].resumable), ("seed-tcp", 100, False))
        self.assertEqual(server.statistics["uploads_stored"], 2)
        self.assertEqual(sorted(os.listdir(self.dir)), sorted([by_transport["seed-tcp"].stored_name, "report.bin", ".datastream"]))

    def test_a_callback_that_raises_does_not_stop_the_server(self):
        calls = Collector()

        def broken(upload):
            calls(upload)
            raise RuntimeError("the host's bug")

        with datastream.Server(dir=self.dir, port=0, on_stored=broken) as server:
            seed_upload(server.port, b"first")
            seed_upload(server.port, b"second")
            self.assertEqual(len(calls.wait_for(2)), 2)
        self.assertEqual(server.loop_close_status, 0)

    def test_bad_options_and_a_port_in_use_raise_with_the_library_message(self):
        with self.assertRaisesRegex(datastream.DataStreamError, "0 to 65535"):
            datastream.Server(dir=self.dir, port=70000).start()
        with self.assertRaisesRegex(datastream.DataStreamError, "byte count"):
            datastream.Server(dir=self.dir, port=0, max_file_size="lots").start()
        with self.assertRaisesRegex(datastream.DataStreamError, "no option named"):
            datastream.Server(dir=self.dir, port=0, no_such_option=1).start()
        with datastream.Server(dir=self.dir, port=0, udp=False) as first:
            with self.assertRaisesRegex(datastream.DataStreamError, "in use"):
                datastream.Server(dir=self.dir, port=first.port, udp=False).start()
        self.assertEqual(first.loop_close_status, 0)


if __name__ == "__main__":
    unittest.main()
