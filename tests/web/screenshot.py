"""Takes docs/upload-page.png: the page in a phone-sized headless Chromium, with two files
stored and a third held part-way (as test_page.py holds one), so the progress shows.

Usage: python tests/web/screenshot.py PATH-TO-DATASTREAM OUTPUT.png
"""
import os
import subprocess
import sys
import tempfile

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_page import HOLD, ITEMS, MiB, browser  # noqa: E402

datastream, output = sys.argv[1], sys.argv[2]
work = tempfile.mkdtemp(prefix="datastream-shot-")
server = subprocess.Popen([datastream, "serve", "--port", "0", "--no-udp", "--dir", work + "/in"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
driver = browser(390, 700)
try:
    port = int(server.stdout.readline().rsplit(":", 1)[1])
    files = []
    for name, size in [("holiday-photos.zip", 3 * MiB), ("report.pdf", 700 * 1024), ("dataset.csv", 40 * MiB)]:
        path = os.path.join(work, name)
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        files.append(path)
    driver.get("http://127.0.0.1:%d/" % port)
    driver.execute_script(HOLD, 3 * MiB + 700 * 1024 + 17 * MiB)
    driver.find_element(By.ID, "files").send_keys("\n".join(files))
    WebDriverWait(driver, 60, poll_frequency=0.05).until(
        lambda d: d.execute_script("return window.sentBytes >= window.holdAfter") and
        [i[1] for i in d.execute_script(ITEMS)] == ["stored", "stored", "sending"])
    driver.save_screenshot(output)
finally:
    driver.quit()
    server.terminate()
    server.wait(timeout=30)
    subprocess.run(["rm", "-rf", work])
