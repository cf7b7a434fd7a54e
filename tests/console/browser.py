#!/usr/bin/python3
"""The console in a real browser: headless Chromium driven by Selenium (Debian's chromium,
chromium-driver, python3-selenium). Arguments: the console's URL, the PID of the node to kill,
a screenshot path, then the bootstorm command line, started once the farm is on screen (so the
page sees its targets come and go). Asserts what a person sees, in order, each within a bound:
three servers up; the vdisk with its versions and an identical copy on every server; targets
appearing (the bootstorm that tests/console_browser.rs started); boots finishing (recent boots);
the killed node shown down within the health window. Prints one line per step."""
import os
import signal
import subprocess
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, kill_pid, shot, storm_cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
storm = None

opts = webdriver.ChromeOptions()
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100",
          "--user-data-dir=" + os.environ.get("CONSOLE_PROFILE", "/tmp/bootfarm-console-profile")]:
    opts.add_argument(a)
opts.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
driver.set_page_load_timeout(20)


def rows(table, attr=None, value=None):
    sel = "#%s tbody tr" % table + ("[%s='%s']" % (attr, value) if attr else "")
    return driver.find_elements(By.CSS_SELECTOR, sel)


def wait(what, secs, f):
    t0 = time.time()
    while time.time() - t0 < secs:
        try:
            v = f()
            if v:
                print("ok: %s (%.1f s)" % (what, time.time() - t0), flush=True)
                return v
        except Exception:  # the page re-renders under us: ask again
            pass
        time.sleep(0.1)
    print(driver.find_element(By.TAG_NAME, "main").text, flush=True)
    raise SystemExit("not within %d s: %s" % (secs, what))


try:
    driver.get(url)
    wait("the event stream is live", 15, lambda: driver.find_element(By.ID, "live").text == "live")
    wait("three servers up", 20, lambda: len(rows("servers", "data-health", "up")) == 3)
    names = [r.find_element(By.CSS_SELECTOR, "td").text.split(" ")[0] for r in rows("servers")]
    assert names == ["node1", "node2", "node3"], names

    def vdisk_ok():
        r = rows("vdisks", "data-vdisk", "disk")
        if not r:
            return False
        cells = r[0].find_elements(By.TAG_NAME, "td")
        versions = r[0].get_attribute("data-versions")
        return versions == "2" and "v1" in cells[3].text and "v2" in cells[3].text and cells[4].text == "node1, node2, node3"
    wait("vdisk 'disk' with its two versions, identical on every server", 20, vdisk_ok)
    storm = subprocess.Popen(storm_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    def booting():
        live = [r for r in rows("targets") if r.get_attribute("data-phase") in ("booting", "running")]
        return live and live[0].get_attribute("data-target")
    first = wait("a target appears, booting", 60, booting)
    print("target: " + first, flush=True)
    wait("that target finishes (in recent boots, no longer booting)", 90,
         lambda: rows("recent", "data-target", first)
         and not [r for r in rows("targets", "data-target", first) if r.get_attribute("data-phase") == "booting"])
    wait("more boots finish", 90, lambda: len(rows("recent")) >= 5)
    # Mid-storm: targets booting, others done, rates moving.
    driver.save_screenshot(shot)
    print("screenshot: " + shot, flush=True)
    os.kill(kill_pid, signal.SIGKILL)
    t_kill = time.time()
    wait("node3 shown down", 10, lambda: len(rows("servers", "data-health", "down")) == 1
         and rows("servers", "data-server", "node3")[0].get_attribute("data-health") == "down")
    print("down after %.1f s" % (time.time() - t_kill), flush=True)
    out, _ = storm.communicate(timeout=150)
    if storm.returncode != 0:
        raise SystemExit("bootstorm failed:\n" + out.decode(errors="replace"))
    print("bootstorm:\n" + out.decode(errors="replace"), flush=True)
    print("PASS", flush=True)
finally:
    if storm and storm.poll() is None:
        storm.kill()
    driver.quit()
