"""tus 1.0 with a real tus client (tuspy): an upload is stored byte for byte; a client killed
mid-upload resumes from the server's offset in a new process, and the server received each
byte once. Run by scripts/test-web inside a virtual environment with tuspy.

Usage: python tests/web/test_tus.py PATH-TO-DATASTREAM
"""
import os
import signal
import subprocess
import sys
import tempfile
import unittest

from receiver import Receiver

DATASTREAM = sys.argv[1] if len(sys.argv) > 1 else ".build/debug/datastream"
CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tus_client.py")


class Tus(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="datastream-tus-")
        self.directory = self.work + "/in"
        self.server = Receiver(DATASTREAM, self.directory)
        self.base = self.server.base
        self.metric = self.server.metric

    def tearDown(self):
        self.server.stop()
        subprocess.run(["rm", "-rf", self.work])

    def payload(self, name, size):
        path = os.path.join(self.work, name)
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        return path

    def stored(self, name):
        with open(os.path.join(self.directory, name), "rb") as f:
            return f.read()

    def test_upload_is_stored_byte_for_byte(self):
        path = self.payload("whole.bin", 3 * 1024 * 1024 + 17)
        r = subprocess.run([sys.executable, CLIENT, self.base + "/files/", path, self.work + "/urls-a", str(1 << 20)],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("done %d" % os.path.getsize(path), r.stdout)
        with open(path, "rb") as f:
            self.assertEqual(self.stored("whole.bin"), f.read())
        self.assertEqual(os.listdir(self.directory + "/.datastream/partial"), [])

    def test_killed_client_resumes_in_a_new_process(self):
        size = 8 * 1024 * 1024 + 5
        path = self.payload("resumed.bin", size)
        storage = self.work + "/urls-b"
        first = subprocess.Popen([sys.executable, CLIENT, self.base + "/files/", path, storage, str(1 << 20), "--pause-after", "3"],
                                 stdout=subprocess.PIPE, text=True)
        lines = []
        for line in first.stdout:
            lines.append(line.strip())
            if line.startswith("paused"):
                break
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        first.stdout.close()
        self.assertIn("offset %d" % (3 << 20), lines, lines)
        self.assertFalse(os.path.exists(os.path.join(self.directory, "resumed.bin")), "stored before it was complete")

        second = subprocess.run([sys.executable, CLIENT, self.base + "/files/", path, storage, str(1 << 20)],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertTrue(second.stdout.startswith("start %d " % (3 << 20)), second.stdout)  # resumed, not restarted
        with open(path, "rb") as f:
            self.assertEqual(self.stored("resumed.bin"), f.read())
        self.assertEqual(self.metric('datastream_received_bytes_total{transport="http"}'), size)
        self.assertEqual(self.metric('datastream_uploads_stored_total{transport="http"}'), 1)



class TusWithToken(unittest.TestCase):
    """With --token, a tus client sends it as a bearer token; without it, it is refused (401)."""

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="datastream-tus-token-")
        self.directory = self.work + "/in"
        self.server = Receiver(DATASTREAM, self.directory, "--token", "tus-t0ken")
        self.base = self.server.base

    def tearDown(self):
        self.server.stop()
        subprocess.run(["rm", "-rf", self.work])

    def run_client(self, path, token):
        env = dict(os.environ)
        env.pop("DATASTREAM_TOKEN", None)
        if token:
            env["DATASTREAM_TOKEN"] = token
        return subprocess.run([sys.executable, CLIENT, self.base + "/files/", path, self.work + "/urls", str(1 << 20)],
                              capture_output=True, text=True, timeout=120, env=env)

    def test_only_the_bearer_token_uploads(self):
        path = os.path.join(self.work, "guarded.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(2 * 1024 * 1024 + 1))
        refused = self.run_client(path, None)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("401", refused.stderr)
        wrong = self.run_client(path, "tus-t0kem")
        self.assertNotEqual(wrong.returncode, 0)
        self.assertEqual(os.listdir(self.directory + "/.datastream/partial"), [])
        right = self.run_client(path, "tus-t0ken")
        self.assertEqual(right.returncode, 0, right.stderr)
        with open(path, "rb") as a, open(os.path.join(self.directory, "guarded.bin"), "rb") as b:
            self.assertEqual(a.read(), b.read())


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]])
