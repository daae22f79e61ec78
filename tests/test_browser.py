"""The review page in a real headless Chromium (Debian's chromium + chromedriver, via Selenium),
against a real server on loopback: review, generate in both modes, and untrusted text stays text.
"""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
from webhome import make_home, running_server

from tweetgen.store import Store

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (.ci/system-deps.sh installs them)")

# Untrusted text: a corpus line the model may learn and repeat. It must show as these very
# characters, never become elements, and never run.
SCRIPT_LINE = "<script>pwned=1</script><b>bold</b>"
IMG_LINE = '<img src=x onerror="window.pwned=2"> hi'
INJECTED = "#tweets tbody script, #tweets tbody b, #tweets tbody img, #generated script, #generated b"


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return make_home(tmp_path_factory.mktemp("browser") / "home")


@pytest.fixture(scope="module")
def url(settings):
    with running_server(settings) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1400", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(condition, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def open_page(browser, url: str) -> None:
    browser.get(url + "/")
    wait_until(lambda: browser.execute_script("return document.getElementById('tweets').dataset.loaded"),
               what="the tweet table")


def row(browser, tweet_id: int):
    from selenium.webdriver.common.by import By

    found = browser.find_elements(By.CSS_SELECTOR, f'#tweets tbody tr[data-id="{tweet_id}"]')
    return found[0] if found else None


def cell_text(browser, tweet_id: int, column: str) -> str | None:
    from selenium.webdriver.common.by import By

    found = row(browser, tweet_id)
    return found.find_element(By.CSS_SELECTOR, f"td.{column}").text if found else None


def db_status(settings, tweet_id: int) -> str:
    with Store(settings.db_file) as store:
        return store.get_sample(tweet_id)["status"]


def add_tweets(settings, *texts: str, **fields) -> list[int]:
    with Store(settings.db_file) as store:
        return store.add_samples([{"text": t, "seed": "", "temperature": 1.0, "source": "scheduled",
                                   "mode": "continue", "copied": False, "novelty": 0.9, **fields}
                                  for t in texts])


def shown_ids(browser) -> list[int]:
    return [int(i) for i in browser.execute_script(
        "return [...document.querySelectorAll('#tweets tbody tr')].map(r => r.dataset.id)")]


def press(browser, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    browser.execute_script("document.activeElement.blur()")  # keys go to the page, not a field
    for key in keys:
        ActionChains(browser).send_keys(key).perform()
        time.sleep(0.3)  # each review answers before the next key


def search(browser, words: str) -> None:
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.ID, "f-search")
    box.clear()
    box.send_keys(words)
    before = browser.execute_script("return document.getElementById('tweets').dataset.loaded")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_until(lambda: browser.execute_script(
        "return document.getElementById('tweets').dataset.loaded") != before, what="the search")


def test_approve_and_reject_change_the_database(browser, url, settings):
    from selenium.webdriver.common.by import By

    keep, drop = add_tweets(settings, "a tweet worth keeping", "a tweet to throw away")
    open_page(browser, url)
    assert cell_text(browser, keep, "text") == "a tweet worth keeping"
    assert "checkpoint ckpt-" in browser.find_element(By.ID, "status").text

    row(browser, keep).find_element(By.CSS_SELECTOR, "button.approve").click()
    wait_until(lambda: cell_text(browser, keep, "status") == "approved", what="the approved status")
    assert db_status(settings, keep) == "approved"
    row(browser, drop).find_element(By.CSS_SELECTOR, "button.reject").click()
    wait_until(lambda: db_status(settings, drop) == "rejected", what="the rejection in the database")

    # The status filter, then a reload, shows what the database holds.
    browser.find_element(By.CSS_SELECTOR, "#f-status option[value=approved]").click()
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_until(lambda: row(browser, drop) is None, what="the filtered table")
    assert cell_text(browser, keep, "status") == "approved"


def test_generate_from_the_box_in_both_modes(browser, url, settings):
    from selenium.webdriver.common.by import By

    open_page(browser, url)
    seed = browser.find_element(By.ID, "gen-seed")
    seed.clear()
    seed.send_keys("the c")
    count = browser.find_element(By.ID, "gen-n")
    count.clear()
    count.send_keys("3")
    browser.find_element(By.ID, "gen-button").click()
    items = wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#generated li"),
                       what="generated tweets")
    ids = [int(item.get_attribute("data-id")) for item in items]
    assert len(ids) == 3 and all(item.text.startswith("the c") for item in items)
    wait_until(lambda: all(row(browser, i) is not None for i in ids), what="the new tweets in the table")
    with Store(settings.db_file) as store:
        stored = [store.get_sample(i) for i in ids]
    assert {(s["source"], s["mode"], s["seed"]) for s in stored} == {("on-demand", "continue", "the c")}

    browser.find_element(By.CSS_SELECTOR, "#gen-mode option[value=reply]").click()
    seed.clear()
    seed.send_keys("the cat sat on the mat")
    count.clear()
    count.send_keys("2")
    browser.find_element(By.ID, "gen-button").click()
    wait_until(lambda: "2 reply tweets" in browser.find_element(By.ID, "message").text, what="the reply")
    items = browser.find_elements(By.CSS_SELECTOR, "#generated li")
    replies = [int(item.get_attribute("data-id")) for item in items]
    assert len(replies) == 2 and not set(replies) & set(ids)
    for tweet_id in replies:
        assert cell_text(browser, tweet_id, "mode") == "reply"
        assert cell_text(browser, tweet_id, "seed") == "the cat sat on the mat"


def test_untrusted_text_is_shown_as_text_never_markup(browser, url, settings):
    from selenium.webdriver.common.by import By

    client = httpx.Client(base_url=url, timeout=60)
    assert client.post("/api/corpus", json={"lines": [SCRIPT_LINE, IMG_LINE]}).json()["added"] == 2
    # The model repeating the corpus lines word for word, as a scheduled tweet would.
    copied = add_tweets(settings, SCRIPT_LINE, IMG_LINE)
    open_page(browser, url)
    assert [cell_text(browser, i, "text") for i in copied] == [SCRIPT_LINE, IMG_LINE]

    # And through the generate box: the tweet starts with the seed, the seed has its own column.
    browser.find_element(By.CSS_SELECTOR, "#gen-mode option[value=continue]").click()
    seed = browser.find_element(By.ID, "gen-seed")
    seed.clear()
    seed.send_keys(SCRIPT_LINE)
    count = browser.find_element(By.ID, "gen-n")
    count.clear()
    count.send_keys("1")
    browser.find_element(By.ID, "gen-button").click()
    item = wait_until(lambda: [i for i in browser.find_elements(By.CSS_SELECTOR, "#generated li")
                               if i.text.startswith(SCRIPT_LINE)], what="the generated tweet")[0]
    tweet_id = int(item.get_attribute("data-id"))
    wait_until(lambda: row(browser, tweet_id) is not None, what="the tweet in the table")
    assert cell_text(browser, tweet_id, "text").startswith(SCRIPT_LINE)
    assert cell_text(browser, tweet_id, "seed") == SCRIPT_LINE

    assert browser.execute_script(f"return document.querySelectorAll({INJECTED!r}).length") == 0
    assert browser.execute_script("return typeof window.pwned") == "undefined"
    assert browser.execute_script("return document.scripts.length") == 1  # app.js alone
    assert browser.execute_script(
        "return document.querySelector('#tweets tbody td.text').innerHTML.includes('&lt;')") is True


def test_chart_and_status_are_drawn(browser, url, settings):
    from selenium.webdriver.common.by import By

    from tweetgen.idle import set_state

    with Store(settings.db_file) as store:
        set_state(store, "stopped", best_bpc=2.1234, reason="no better validation in 6 checkpoints")
    open_page(browser, url)
    painted = wait_until(lambda: browser.execute_script("""
        const c = document.getElementById('chart');
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
        return n > 500 ? n : 0;"""), what="the loss chart")
    assert painted > 500
    status = browser.find_element(By.ID, "status").text
    assert "tweets" in status
    assert "idle training stopped, best 2.1234 bits/char (no better validation in 6 checkpoints)" in status
    errors = [entry["message"] for entry in browser.get_log("browser")
              if entry["level"] == "SEVERE" and "favicon.ico" not in entry["message"]]
    assert errors == []  # no CSP violation, no failed request, no script error


def test_sorted_by_score_copies_hidden_and_reviewed_from_the_keyboard(browser, url, settings):
    from selenium.webdriver.common.by import By

    low, best, middle = add_tweets(settings, "zebrakey low", "zebrakey best", "zebrakey middle",
                                   score=None)
    with Store(settings.db_file) as store:
        for tweet_id, score in ((low, 0.3), (best, 0.9), (middle, 0.6)):
            store.db.execute("UPDATE samples SET score = ? WHERE id = ?", [score, tweet_id])
        store.db.conn.commit()
    [copy] = add_tweets(settings, "zebrakey copy", copied=True, score=0.99)
    open_page(browser, url)
    assert "j/k" in browser.find_element(By.ID, "keys").text
    search(browser, "zebrakey")
    assert shown_ids(browser) == [best, middle, low]  # best score first, the copy hidden
    assert cell_text(browser, best, "score") == "0.90"
    counts_before = int(browser.find_element(By.ID, "count-approved").text)

    press(browser, "j", "a", "r")  # select the first, approve it, reject the next
    wait_until(lambda: db_status(settings, middle) == "rejected", what="the keyboard rejection")
    assert db_status(settings, best) == "approved"
    press(browser, "u")  # undo the rejection
    wait_until(lambda: db_status(settings, middle) == "new", what="the undo")
    assert db_status(settings, best) == "approved" and db_status(settings, low) == "new"
    assert "current" in row(browser, middle).get_attribute("class")
    wait_until(lambda: browser.find_element(By.ID, "count-approved").text == str(counts_before + 1),
               what="the approved count")

    # Copies show when asked.
    browser.find_element(By.ID, "f-copies").click()
    search(browser, "zebrakey")
    assert shown_ids(browser)[0] == copy and cell_text(browser, copy, "novelty") == "copied"

    # The approved view: approved tweets only, latest decision first.
    browser.find_element(By.CSS_SELECTOR, '#views button[data-status="approved"]').click()
    wait_until(lambda: shown_ids(browser) == [best], what="the approved view")
    assert browser.find_element(By.CSS_SELECTOR, '#views button[data-status="approved"]'
                                ).get_attribute("aria-pressed") == "true"
