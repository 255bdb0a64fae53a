"""A real Prometheus (Debian's) scrapes a real `datastream serve`'s /metrics: its query API
must show the upload counters move as curl uploads files. Run by scripts/test-web.

Usage: python3 tests/web/test_prometheus.py PATH-TO-DATASTREAM
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

DATASTREAM = sys.argv[1] if len(sys.argv) > 1 else ".build/debug/datastream"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, seconds=60):
    """Polls `condition` until it returns something true, within `seconds`; returns it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    return None


class PrometheusScrapes(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="datastream-prometheus-")
        self.server = subprocess.Popen([DATASTREAM, "serve", "--port", "0", "--no-udp", "--dir", self.work + "/in"],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.server.stdout.readline()
        self.assertTrue(line.startswith("listening tcp "), line)
        self.port = int(line.rsplit(":", 1)[1])
        self.prometheus_port = free_port()
        config = os.path.join(self.work, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: datastream\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{self.port}']\n")
        self.prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.work}/tsdb",
             f"--web.listen-address=127.0.0.1:{self.prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def tearDown(self):
        for p in (self.prometheus, self.server):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.server.stdout.close()
        subprocess.run(["rm", "-rf", self.work])

    def query(self, expression):
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = json.load(r)
        except OSError:
            return None
        if body.get("status") != "success":
            return None
        return {tuple(sorted(x["metric"].items())): float(x["value"][1]) for x in body["data"]["result"]}

    def stored_http(self):
        result = self.query('datastream_uploads_stored_total{transport="http"}') or {}
        return next(iter(result.values()), None)

    def test_counters_move_in_prometheus(self):
        # The target is up and scraped once before any upload.
        up = wait_for(lambda: next(iter((self.query('up{job="datastream"}') or {}).values()), 0) == 1)
        self.assertTrue(up, "Prometheus never scraped the server")
        self.assertEqual(wait_for(lambda: self.stored_http() == 0), True)
        payload = os.path.join(self.work, "payload.bin")
        with open(payload, "wb") as f:
            f.write(os.urandom(300_000))
        for i in range(3):
            r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", payload,
                                f"http://127.0.0.1:{self.port}/file-{i}.bin"], capture_output=True, text=True)
            self.assertEqual(r.stdout, "201")
        # A PUT over no room is impossible here; a cut body is a failure with its reason.
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(b"PUT /cut.bin HTTP/1.1\r\nContent-Length: 1000\r\n\r\nabc")
            s.shutdown(socket.SHUT_WR)
            s.recv(100)
        self.assertTrue(wait_for(lambda: self.stored_http() == 3), "stored counter did not reach 3 in Prometheus")
        received = self.query('datastream_received_bytes_total{transport="http"}')
        self.assertEqual(list(received.values()), [900_003.0])
        failed = wait_for(lambda: self.query('datastream_uploads_failed_total{transport="http"}'))
        self.assertEqual({dict(k)["reason"]: v for k, v in failed.items()}, {"unexpected_end_of_stream": 1.0})
        rate = self.query('increase(datastream_uploads_started_total{transport="http"}[1m])')
        self.assertTrue(rate and list(rate.values())[0] > 0, rate)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]])
