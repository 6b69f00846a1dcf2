"""The on-call page in a real browser (Debian's chromium and chromedriver, driven by PyPI's
selenium): run by tests/it/browser.rs against a `backstop serve` that has just rolled the demo
canary back, in one of two modes.

The demo (the manifests target, an alert whose labels carry script and markup): BACKSTOP_URL
(the server), BACKSTOP_ACTION_ID (the rollback's id, as the object's backstop.io/action-id
annotation carries it), BACKSTOP_MANIFEST (the VirtualService file), BACKSTOP_FIRING (a second
alert's JSON body), BACKSTOP_SCREENSHOTS (a folder for the pictures).

The Kubernetes Event's link (the kubernetes target, with `ui.url`): BACKSTOP_PERMALINK (the URL
taken out of the Event's message), BACKSTOP_ACTION_ID (the object's annotation), BACKSTOP_TARGET
(namespace/name), BACKSTOP_BASIC_AUTH (user:password, sent as a browser sends them once asked),
BACKSTOP_SCREENSHOTS.

Prints one line per check; exits non-zero on the first that fails.
"""

import base64
import json
import os
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ACTION = os.environ["BACKSTOP_ACTION_ID"]
SHOTS = os.environ["BACKSTOP_SCREENSHOTS"]
PERMALINK = os.environ.get("BACKSTOP_PERMALINK")
if PERMALINK:
    TARGET = os.environ["BACKSTOP_TARGET"]
    AUTH = os.environ.get("BACKSTOP_BASIC_AUTH")
else:
    URL = os.environ["BACKSTOP_URL"]
    MANIFEST = os.environ["BACKSTOP_MANIFEST"]
    FIRING = os.environ["BACKSTOP_FIRING"]


def check(what, ok, detail=""):
    print(("ok: " if ok else "FAILED: ") + what + ("" if ok else f" ({detail})"), flush=True)
    if not ok:
        sys.exit(1)


def post_alert(body):
    req = urllib.request.Request(URL + "/v1/alertmanager", data=body.encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def canary_weight():
    for line in open(MANIFEST):
        if line.rstrip().endswith("# canary"):
            return int(line.split("weight:")[1].split("#")[0])
    raise AssertionError("no canary line")


def submit(driver, button, reason):
    form = driver.find_element(By.XPATH, f"//form[button[normalize-space()='{button}']]")
    form.find_element(By.NAME, "reason").send_keys(reason)
    form.find_element(By.NAME, "confirm").click()
    form.find_element(By.TAG_NAME, "button").click()
    return form


def follow_the_event_link(driver):
    """Open the link a Kubernetes Event carries: the action's page, the rollback on it."""
    if AUTH:
        # As a browser sends them on every request once the user answered its basic-auth prompt.
        token = base64.b64encode(AUTH.encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": "Basic " + token}})
    driver.get(PERMALINK)
    check("the browser is at the Event's link", driver.current_url == PERMALINK, driver.current_url)
    heading = driver.find_element(By.TAG_NAME, "h1").text
    check("the page is the action's, by the id the object's annotation carries", ACTION in heading,
          heading + " " + driver.page_source[:1500])
    page = driver.find_element(By.TAG_NAME, "main")
    check("the action page names the target", f"On {TARGET}." in page.text, page.text[:1500])
    check("the target is a link to its timeline",
          len(page.find_elements(By.CSS_SELECTOR, f'a[href="/ui/targets/{TARGET}"]')) >= 1, driver.page_source[:2000])
    table = page.find_element(By.TAG_NAME, "table")
    head = [th.text.strip() for th in table.find_elements(By.TAG_NAME, "th")]
    kind, change = head.index("kind"), head.index("change")
    rows = [[td.text.strip() for td in tr.find_elements(By.TAG_NAME, "td")] for tr in table.find_elements(By.TAG_NAME, "tr")]
    applied = [r for r in rows if len(r) == len(head) and r[kind] == "applied"]
    check("the action page has one applied row", len(applied) == 1, json.dumps(rows))
    check("the applied row shows the weights before and after",
          applied[0][change] == "v1=90 v2=10 \u2192 v1=100 v2=0", json.dumps(applied[0]))
    driver.save_screenshot(os.path.join(SHOTS, "ui-action-from-event.png"))


def main():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="backstop-chromium-")
    for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,860", f"--user-data-dir={profile}"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, 15)
    try:
        if PERMALINK:
            follow_the_event_link(driver)
            return
        # The overview, after the rollback: the target and its last action.
        driver.get(URL + "/ui/")
        link = driver.find_elements(By.CSS_SELECTOR, f'a[href="/ui/actions/{ACTION}"]')
        check("the overview lists the rollback, linked by its action id", len(link) >= 1, driver.page_source[:2000])
        check("the overview names the target", "sms-app/model-service" in driver.page_source)
        driver.save_screenshot(os.path.join(SHOTS, "ui-overview.png"))

        # The permalink the object's annotation carries.
        driver.get(URL + f"/ui/actions/{ACTION}")
        text = driver.find_element(By.TAG_NAME, "main").text
        check("the action page shows the decision and the weights moved", "applied" in text and "v1=90 v2=10" in text and "v1=100 v2=0" in text, text[:1500])
        # The labels carried script and markup: shown as text, never run.
        check("a <script> label is shown as text", "note=<script>window.__pwned=1</script>" in text, text[:1500])
        check("an <img onerror> label is shown as text", "<img src=x onerror=window.__pwned=2>" in text, text[:1500])
        check("no script from the labels ran", driver.execute_script("return typeof window.__pwned") == "undefined")
        check("the page has no element the labels tried to inject",
              not driver.find_elements(By.CSS_SELECTOR, "main img, main script"))
        driver.save_screenshot(os.path.join(SHOTS, "ui-action.png"))

        # A target's timeline, live: a record arriving while the page is open.
        driver.get(URL + "/ui/targets/sms-app/model-service")
        wait.until(lambda d: d.find_element(By.ID, "live").text == "live")
        answer = post_alert(FIRING)
        check("the second alert is held by the cooldown", answer["results"][0]["outcome"] == "held", json.dumps(answer))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.live tr.new"))
        row = driver.find_elements(By.CSS_SELECTOR, "table.live tr.new")[0].text
        check("the held record appeared live, with its reason", "held" in row and "cooldown" in row, row)

        # Pause from the page: the next alert is held for it.
        form = submit(driver, "Pause this target", "investigating from the page")
        try:
            # The page it was on is gone once the POST was answered (the pause is recorded before
            # the answer); only then is the next alert posted. The URL alone was already the
            # target's before the click.
            wait.until(EC.staleness_of(form))
            wait.until(lambda d: d.current_url.endswith("/ui/targets/sms-app/model-service") and "paused" not in d.title)
        except Exception:
            check("Pause from the page goes back to the target", False, driver.current_url + " " + driver.page_source[:600])
        answer = post_alert(FIRING)
        check("after Pause, the next alert is held because the target is paused",
              answer["results"][0]["outcome"] == "held" and "paused" in answer["results"][0]["reason"], json.dumps(answer))

        # Undo from the action's page: the weights are back.
        driver.get(URL + f"/ui/actions/{ACTION}")
        submit(driver, "Undo this action", "false alarm, from the page")
        wait.until(lambda d: "/ui/actions/" in d.current_url and ACTION not in d.current_url)
        deadline = time.time() + 5
        while canary_weight() != 10 and time.time() < deadline:
            time.sleep(0.1)
        check("after Undo, the canary has its weight back", canary_weight() == 10, str(canary_weight()))
        check("the undo's page says it was applied", "applied" in driver.find_element(By.TAG_NAME, "main").text)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
