"""What the web tests share: a `datastream serve` of their own on an ephemeral loopback port
(TCP only), and the counters its /metrics shows."""
import re
import subprocess
import urllib.request


class Receiver:
    def __init__(self, datastream, directory, *extra, port=0):
        self.directory = directory
        self.process = subprocess.Popen([datastream, "serve", "--port", str(port), "--no-udp", "--dir", directory, *extra],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("listening tcp "):
            self.stop(kill=True)
            raise RuntimeError("datastream serve did not start: %r" % line)
        self.port = int(line.rsplit(":", 1)[1])
        self.base = "http://127.0.0.1:%d" % self.port

    def stop(self, kill=False):
        """Ends the server: SIGTERM (a drain), or SIGKILL with `kill`."""
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=30)
        self.process.stdout.close()

    def metric(self, name):
        """The value of the sample `name` (with its labels), or None if /metrics has none."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r"^%s (\d+)" % re.escape(name), text, re.M)
        return int(m.group(1)) if m else None
