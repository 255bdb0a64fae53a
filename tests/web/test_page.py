"""The browser page at GET / in headless Chromium (Debian's chromium and chromium-driver,
driven by selenium): it uploads a 100 MiB file and three small ones over the WebSocket, each
stored byte for byte; an upload resumes when the server is restarted under it and when the page
is reloaded; with a token, the page asks for it and proves it with WebCrypto.

To stop an upload part-way at a known point, the test holds back the page's binary sends past a
number of bytes (a stalled network, from the page's side), waits for the server's partial to
hold them all, then restarts the server or reloads the page.

Usage: python tests/web/test_page.py PATH-TO-DATASTREAM [SCREENSHOT.png]
"""
import os
import subprocess
import sys
import tempfile
import time
import unittest

from receiver import Receiver
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

DATASTREAM = sys.argv[1] if len(sys.argv) > 1 else ".build/debug/datastream"
SCREENSHOT = sys.argv[2] if len(sys.argv) > 2 else None
MiB = 1024 * 1024

# Holds back binary sends once `window.holdAfter` bytes went out (the page sees them as sent).
HOLD = """
window.sentBytes = 0;
window.holdAfter = arguments[0];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (data instanceof ArrayBuffer && window.holdAfter !== null) {
    if (window.sentBytes >= window.holdAfter) return;
    window.sentBytes += data.byteLength;
  }
  return send.call(this, data);
};
"""

ITEMS = "return [...document.querySelectorAll('#list li')].map(l => [l.dataset.name, l.dataset.state, l.dataset.stored || '', l.dataset.offset || ''])"


def browser(width=420, height=900):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=%d,%d" % (width, height)]:
        options.add_argument(a)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"))


class Page(unittest.TestCase):
    token = None

    @classmethod
    def setUpClass(cls):
        cls.driver = browser()

    @classmethod
    def tearDownClass(cls):
        cls.driver.quit()

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="datastream-page-")
        self.directory = self.work + "/in"
        self.port = 0
        self.start_server()
        self.driver.get(self.base)
        self.driver.execute_script("localStorage.clear()")

    def tearDown(self):
        self.stop_server()
        subprocess.run(["rm", "-rf", self.work])

    def start_server(self):
        self.server = Receiver(DATASTREAM, self.directory, *(["--token", self.token] if self.token else []), port=self.port)
        self.port = self.server.port
        self.base = self.server.base + "/"

    def stop_server(self, kill=False):
        self.server.stop(kill=kill)

    def payload(self, name, size):
        path = os.path.join(self.work, name)
        with open(path, "wb") as f:
            while size > 0:
                n = min(size, 8 * MiB)
                f.write(os.urandom(n))
                size -= n
        return path

    def pick(self, *paths):
        self.driver.find_element(By.ID, "files").send_keys("\n".join(paths))

    def wait(self, condition, timeout=120):
        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(lambda d: condition())

    def items(self):
        return self.driver.execute_script(ITEMS)

    def all_stored(self, count):
        items = self.items()
        return len(items) == count and all(i[1] == "stored" for i in items)

    def held(self):
        """Bytes in the server's partials."""
        partial = self.directory + "/.datastream/partial"
        if not os.path.isdir(partial):
            return 0
        return sum(os.path.getsize(os.path.join(partial, n)) for n in os.listdir(partial) if n.endswith(".part"))

    def same(self, path, name):
        with open(path, "rb") as a, open(os.path.join(self.directory, name), "rb") as b:
            while True:
                x, y = a.read(MiB), b.read(MiB)
                if x != y:
                    return False
                if not x:
                    return True


class Uploads(Page):
    def test_a_100_mib_file_and_three_small_ones(self):
        big = self.payload("big.bin", 100 * MiB)
        smalls = [self.payload("small-%d.txt" % i, 1000 * i + 1) for i in range(3)]
        self.pick(big, *smalls)
        self.wait(lambda: self.all_stored(4))
        self.assertEqual([i[2] for i in self.items()], ["big.bin", "small-0.txt", "small-1.txt", "small-2.txt"])
        for path in [big] + smalls:
            self.assertTrue(self.same(path, os.path.basename(path)), path)
        summary = self.driver.find_element(By.ID, "summary").text
        self.assertTrue(summary.startswith("All "), summary)
        if SCREENSHOT:
            self.driver.save_screenshot(SCREENSHOT)

    def test_a_restarted_server_is_resumed_from_its_offset(self):
        path = self.payload("restart.bin", 24 * MiB)
        self.driver.execute_script(HOLD, 8 * MiB)
        self.pick(path)
        self.wait(lambda: self.held() >= 8 * MiB)
        self.stop_server(kill=True)
        self.driver.execute_script("window.holdAfter = null")
        self.start_server()  # the same port
        self.wait(lambda: self.all_stored(1))
        name, _, stored, offset = self.items()[0]
        self.assertEqual(stored, "restart.bin")
        self.assertEqual(int(offset), 8 * MiB)
        self.assertTrue(self.same(path, "restart.bin"))

    def test_a_reloaded_page_resumes_when_the_file_is_picked_again(self):
        path = self.payload("reload.bin", 24 * MiB)
        self.driver.execute_script(HOLD, 6 * MiB)
        self.pick(path)
        self.wait(lambda: self.held() >= 6 * MiB)
        self.driver.refresh()
        self.pick(path)
        self.wait(lambda: self.all_stored(1))
        name, _, stored, offset = self.items()[0]
        self.assertEqual(stored, "reload.bin")
        self.assertEqual(int(offset), 6 * MiB)
        self.assertTrue(self.same(path, "reload.bin"))
        self.assertEqual(sorted(n for n in os.listdir(self.directory) if not n.startswith(".")), ["reload.bin"])


class WithToken(Page):
    token = "page-token-123"

    def test_the_page_asks_for_the_token_and_proves_it(self):
        path = self.payload("secret.txt", 5000)
        self.wait(lambda: self.driver.find_element(By.ID, "auth").is_displayed())
        self.pick(path)
        field = self.driver.find_element(By.ID, "token")
        field.send_keys("wrong")
        self.driver.find_element(By.CSS_SELECTOR, "#auth button").click()
        self.wait(lambda: "Wrong token" in self.driver.find_element(By.ID, "state").text)
        self.assertFalse(os.path.exists(os.path.join(self.directory, "secret.txt")))
        self.wait(lambda: self.driver.find_element(By.ID, "auth").is_displayed())
        self.driver.find_element(By.ID, "token").send_keys(self.token)
        self.driver.find_element(By.CSS_SELECTOR, "#auth button").click()
        self.wait(lambda: self.all_stored(1))
        self.assertTrue(self.same(path, "secret.txt"))
        self.assertNotIn(self.token, self.driver.current_url)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
