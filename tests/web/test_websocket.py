"""The upload WebSocket at /ws with a non-browser client (Python's `websockets`, through
ws_client.py) and with raw sockets for what no well-behaved client sends: uploads are stored
byte for byte, a client that stops resumes in a new process, the token is proven by HMAC, and
bad frames and bad messages close the connection with the right code and store nothing.

Usage: python tests/web/test_websocket.py PATH-TO-DATASTREAM
"""
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

from receiver import Receiver

DATASTREAM = sys.argv[1] if len(sys.argv) > 1 else ".build/debug/datastream"
CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ws_client.py")


def masked(opcode, payload, fin=True, mask=b"\x11\x22\x33\x44", masked=True):
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSocket:
    """A WebSocket client written by hand, to send what `websockets` refuses to."""

    def __init__(self, port, headers=None):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = headers if headers is not None else [
            "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: " + key]
        self.s.sendall(("GET /ws HTTP/1.1\r\nHost: x\r\n" + "".join(l + "\r\n" for l in lines) + "\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1])
        self.head = head.decode()

    def __del__(self):
        self.s.close()

    def frame(self):
        """The next server frame: (opcode, payload), or None at the end of the stream."""
        while True:
            if len(self.buffer) >= 2:
                n = self.buffer[1] & 0x7F
                at = 2
                if n == 126:
                    n, at = struct.unpack(">H", self.buffer[2:4])[0], 4
                elif n == 127:
                    n, at = struct.unpack(">Q", self.buffer[2:10])[0], 10
                if len(self.buffer) >= at + n:
                    opcode, payload = self.buffer[0] & 0x0F, self.buffer[at:at + n]
                    self.buffer = self.buffer[at + n:]
                    return opcode, payload
            try:
                chunk = self.s.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buffer += chunk

    def message(self):
        opcode, payload = self.frame()
        assert opcode == 1, (opcode, payload)
        return json.loads(payload)

    def close_code(self):
        """Reads to the server's close frame and returns its code."""
        while True:
            f = self.frame()
            if f is None:
                return None
            if f[0] == 8:
                return struct.unpack(">H", f[1][:2])[0] if len(f[1]) >= 2 else 1005

    def send(self, data):
        self.s.sendall(data)


class WebSocketUploads(unittest.TestCase):
    token = None

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="datastream-ws-")
        self.directory = self.work + "/in"
        extra = ["--max-file-size", "10000000"] + (["--token", self.token] if self.token else [])
        self.server = Receiver(DATASTREAM, self.directory, *extra)
        self.port = self.server.port
        self.url = "ws://127.0.0.1:%d/ws" % self.port
        self.metric = self.server.metric

    def tearDown(self):
        self.server.stop()
        subprocess.run(["rm", "-rf", self.work])

    def payload(self, name, size):
        path = os.path.join(self.work, name)
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        return path

    def client(self, *args):
        r = subprocess.run([sys.executable, CLIENT, self.url] + list(args), capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.split("\n")

    def stored_names(self):
        return sorted(n for n in os.listdir(self.directory) if not n.startswith("."))

    def partials(self):
        return sorted(os.listdir(self.directory + "/.datastream/partial"))

    def same(self, path, name):
        with open(path, "rb") as a, open(os.path.join(self.directory, name), "rb") as b:
            return a.read() == b.read()


class Plain(WebSocketUploads):
    def test_files_are_stored_byte_for_byte_in_turn(self):
        big = self.payload("big.bin", 3 * 1024 * 1024 + 5)
        small = self.payload("small.txt", 10)
        empty = self.payload("empty", 0)
        out = self.client(big, small, empty)
        self.assertEqual([l.split()[:3] for l in out if l.startswith("stored")],
                         [["stored", "big.bin", str(3 * 1024 * 1024 + 5)], ["stored", "small.txt", "10"], ["stored", "empty", "0"]])
        self.assertTrue(self.same(big, "big.bin") and self.same(small, "small.txt") and self.same(empty, "empty"))
        self.assertEqual(self.partials(), [])
        self.assertEqual(self.metric('datastream_uploads_stored_total{transport="websocket"}'), 3)
        self.assertEqual(self.metric('datastream_received_bytes_total{transport="websocket"}'), 3 * 1024 * 1024 + 15)

    def test_a_stopped_client_resumes_from_the_servers_offset(self):
        path = self.payload("resume.bin", 2 * 1024 * 1024)
        out = self.client("--stop-after", "700000", path)
        upload_id = [l.split()[1] for l in out if l.startswith("stopped")][0]
        self.assertEqual(self.stored_names(), [])
        out = self.client("--resume", upload_id, path)
        self.assertIn("ready %s 700000" % upload_id, out)
        self.assertTrue(self.same(path, "resume.bin"))
        self.assertEqual(self.partials(), [])
        self.assertEqual(self.metric('datastream_received_bytes_total{transport="websocket"}'), 2 * 1024 * 1024)

    def test_a_resume_of_another_file_starts_afresh(self):
        path = self.payload("one.bin", 50000)
        other = self.payload("two.bin", 60000)
        out = self.client("--stop-after", "1000", path)
        upload_id = [l.split()[1] for l in out if l.startswith("stopped")][0]
        out = self.client("--resume", upload_id, other)
        ready = [l for l in out if l.startswith("ready")][0].split()
        self.assertNotEqual(ready[1], upload_id)
        self.assertEqual(ready[2], "0")
        self.assertTrue(self.same(other, "two.bin"))

    def test_a_file_over_the_limit_is_refused_before_a_byte(self):
        path = self.payload("huge.bin", 10000001)
        out = self.client(path)
        self.assertTrue(any(l.startswith("error file_too_large") for l in out), out)
        self.assertEqual(self.stored_names(), [])
        self.assertEqual(self.partials(), [])

    def test_bad_names_are_refused_and_the_connection_goes_on(self):
        c = RawSocket(self.port)
        self.assertEqual(c.status, 101)
        self.assertEqual(c.message()["type"], "hello")
        c.send(masked(1, json.dumps({"type": "begin", "name": "", "size": 3}).encode()))
        self.assertEqual(c.message()["code"], "invalid_name")
        c.send(masked(1, json.dumps({"type": "begin", "name": "../x", "size": 3}).encode()))
        ready = c.message()
        self.assertEqual(ready["type"], "ready")
        c.send(masked(2, b"abc"))
        stored = c.message()
        self.assertEqual(stored["type"], "stored")
        self.assertNotIn("/", stored["name"])

    def test_a_client_gone_after_its_last_byte_still_has_its_file_stored_once(self):
        data = os.urandom(3 * 1024 * 1024)
        c = RawSocket(self.port)
        c.message()
        c.send(masked(1, json.dumps({"type": "begin", "name": "left.bin", "size": len(data)}).encode()))
        self.assertEqual(c.message()["type"], "ready")
        c.send(masked(2, data))
        c.s.close()  # gone without waiting for stored
        deadline = time.monotonic() + 60
        while self.metric('datastream_uploads_stored_total{transport="websocket"}') != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(self.stored_names(), ["left.bin"])
        with open(os.path.join(self.directory, "left.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(self.metric('datastream_uploads_failed_total{transport="websocket",reason="unexpected_end_of_stream"}'), None)
        self.assertEqual([p for p in self.partials() if p.endswith(".part")], [])

    def test_more_bytes_than_the_size_close_with_1008_and_store_nothing(self):
        c = RawSocket(self.port)
        c.message()
        c.send(masked(1, json.dumps({"type": "begin", "name": "over.bin", "size": 4}).encode()))
        self.assertEqual(c.message()["type"], "ready")
        c.send(masked(2, b"abcdef"))
        self.assertEqual(c.message()["code"], "protocol_violation")
        self.assertEqual(c.close_code(), 1008)
        self.assertEqual(self.stored_names(), [])

    def test_data_before_begin_and_junk_messages_close_with_1008(self):
        for frame in [masked(2, b"xyz"), masked(1, b"not json"), masked(1, b'{"type":"dance"}')]:
            c = RawSocket(self.port)
            c.message()
            c.send(frame)
            self.assertEqual(c.message()["code"], "protocol_violation")
            self.assertEqual(c.close_code(), 1008)
        self.assertEqual(self.stored_names(), [])

    def test_bad_frames_close_with_their_codes(self):
        cases = [
            (masked(2, b"abc", masked=False), 1002),           # a client frame must be masked
            (masked(9, b"p" * 126), 1002),                     # a control frame over 125 bytes
            (masked(9, b"p", fin=False), 1002),                # a fragmented control frame
            (masked(8, b"\x03\xe8\xc3\x28"), 1007),            # bad UTF-8 in a close reason
            (masked(1, b"\xff\xfe"), 1007),                    # bad UTF-8 in a text message
            (masked(1, b"a" * 70000), 1009),                   # a text message too long
            (masked(3, b"abc"), 1002),                         # a reserved opcode
        ]
        for frame, code in cases:
            c = RawSocket(self.port)
            c.message()
            c.send(masked(1, json.dumps({"type": "begin", "name": "cut.bin", "size": 100}).encode()))
            self.assertEqual(c.message()["type"], "ready")
            c.send(masked(2, b"0123456789"))
            c.send(frame)
            self.assertEqual(c.close_code(), code, frame[:4])
        self.assertEqual(self.stored_names(), [])
        # Each cut upload stays resumable.
        self.assertEqual(len([p for p in self.partials() if p.endswith(".part")]), len(cases))

    def test_a_ping_is_answered_and_a_close_is_returned(self):
        c = RawSocket(self.port)
        c.message()
        c.send(masked(9, b"are you there"))
        self.assertEqual(c.frame(), (10, b"are you there"))
        c.send(masked(8, struct.pack(">H", 1000)))
        self.assertEqual(c.close_code(), 1000)
        self.assertIsNone(c.frame())

    def test_bad_handshakes_are_refused(self):
        key = "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode()
        self.assertEqual(RawSocket(self.port, ["Upgrade: websocket", "Connection: Upgrade", key]).status, 426)
        self.assertEqual(RawSocket(self.port, ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                                               "Sec-WebSocket-Key: short"]).status, 400)
        self.assertEqual(RawSocket(self.port, ["Sec-WebSocket-Version: 13", key]).status, 426)


class WithToken(WebSocketUploads):
    token = "s3cret-token"

    def test_the_right_token_uploads(self):
        path = self.payload("secret.bin", 100000)
        out = self.client("--token", self.token, path)
        self.assertTrue(any(l.startswith("stored secret.bin") for l in out), out)
        self.assertTrue(self.same(path, "secret.bin"))

    def test_a_wrong_token_is_refused_and_creates_nothing(self):
        path = self.payload("nope.bin", 1000)
        out = self.client("--token", "wrong", path)
        self.assertTrue(any(l.startswith("error authentication_failed") for l in out), out)
        c = RawSocket(self.port)
        self.assertEqual(c.message()["auth"], "hmac-sha256")
        c.send(masked(1, json.dumps({"type": "begin", "name": "x", "size": 1}).encode()))
        self.assertEqual(c.message()["code"], "authentication_required")
        self.assertEqual(c.close_code(), 1008)
        self.assertEqual(self.stored_names(), [])
        self.assertEqual(self.partials(), [])


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
