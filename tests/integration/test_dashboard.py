"""The web dashboard and /metrics of a real dispatcher (twistd, ``--http``), reached with the
link ``hConnect dashboard`` prints, in a real headless Chromium (selenium) and over plain
HTTP: live updates without reload, one user's view hidden from another, 403 pages for bad
links, and the metrics parsed as Prometheus reads them."""

from __future__ import annotations

import functools
import getpass
import http.cookiejar
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import cli
from tests.helpers.processes import REPO, Installation, UnixUser, wait_until
from tests.helpers.requirements import installation_shared_with, second_user, skip_or_fail

HTTP = ("--http", "tcp:0:interface=127.0.0.1")
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def dashboard_url(inst: Installation) -> str:
    return json.loads((inst.var / "http.json").read_text())["url"]


class Browser:
    """A plain HTTP client with its own cookie jar (one browser's worth of state)."""

    def __init__(self) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, url: str) -> tuple[int, str]:
        try:
            with self.opener.open(url, timeout=30) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def json(self, url: str) -> Any:
        status, body = self.get(url)
        assert status == 200, body
        return json.loads(body)


def signed_in(link: str) -> tuple[Browser, str]:
    browser = Browser()
    status, body = browser.get(link)
    assert status == 200, body
    return browser, link.split("/login", 1)[0]


# --- Chromium ---------------------------------------------------------------------------------


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        skip_or_fail("needs Debian's chromium and chromium-driver (/usr/bin/chromium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1200",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    service = Service(CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()
        process = service.process
        if process is not None:
            process.wait(30)


def wait_for(driver: Any, css: str, timeout: float = 30) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _settled(driver: Any, action: Any, timeout: float = 30) -> Any:
    """``action(driver)``'s result, tried again while the live page re-renders the element
    under it (a push may replace a table row between finding it and reading it)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver, timeout, ignored_exceptions=[StaleElementReferenceException]
    ).until(lambda d: (action(d),))[0]


def text_of(driver: Any, css: str) -> str:
    """The text of the element at ``css``, read from one rendering of it."""
    from selenium.webdriver.common.by import By

    return _settled(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).text)


def click(driver: Any, css: str) -> None:
    """Click the element at ``css`` as it is now rendered."""
    from selenium.webdriver.common.by import By

    _settled(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click())


def keep_screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1400, max(1200, int(height) + 40))  # the whole page
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


@pytest.fixture
def web_installation(tmp_path: Path) -> Iterator[Installation]:
    inst = Installation(tmp_path)
    try:
        inst.start_dispatcher(*HTTP)
        yield inst
    finally:
        inst.cleanup()


def test_the_dashboard_shows_a_new_job_live_without_reload(
    web_installation: Installation, chromium: Any
) -> None:
    inst = web_installation
    from selenium.webdriver.common.by import By

    first = cli.submit(inst, "-g", "sweep", "echo '<b>not bold</b>'; echo tail-marker; sleep 60")
    link = cli.tms(inst, "dashboard").strip()
    assert link.startswith(dashboard_url(inst) + "/login?token=")
    chromium.get(link)
    wait_for(chromium, f'tr[data-job-id="{first}"]')
    # The user's text is shown as text, never as markup.
    command = text_of(chromium, f'tr[data-job-id="{first}"] td.command')
    assert "<b>not bold</b>" in command
    assert chromium.find_elements(By.CSS_SELECTOR, "#jobs b") == []
    assert chromium.current_url == dashboard_url(inst) + "/"  # the token left the address bar
    chromium.execute_script("window.tmNotReloaded = true;")
    wait_for(chromium, "#live.on")

    second = cli.submit(inst, "-g", "sweep", "true")
    wait_for(chromium, f'tr[data-job-id="{second}"]')
    wait_for(chromium, f'tr[data-job-id="{second}"][data-state="finished"]', timeout=60)
    assert chromium.execute_script("return window.tmNotReloaded === true;")
    # Hosts, the queue, group progress and the charts are drawn from the same pushes.
    wait_for(chromium, "#hosts tbody tr[data-host]")
    wait_for(chromium, '#groups tbody tr[data-group="sweep"]')
    wait_for(chromium, '#throughput[data-total="1"]', timeout=60)
    assert chromium.find_elements(By.CSS_SELECTOR, "#throughput rect")
    # A job's history and where its output is.
    click(chromium, f'tr[data-job-id="{second}"]')
    wait_for(chromium, "#history tbody tr")
    output = text_of(chromium, "#output")
    assert f"output on host {cli.lajob(inst, second).host}" in output
    assert f".taskmanager/logs/{second}.out" in output
    # The running job's output, read by its executor, shown as text.
    cli.wait_state(inst, first, "running")
    click(chromium, f'tr[data-job-id="{first}"]')
    wait_for(chromium, "#output-tail:not([hidden])")
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(chromium, 30, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: "tail-marker" in d.find_element(By.ID, "output-tail").text
    )
    assert "<b>not bold</b>" in text_of(chromium, "#output-tail")
    assert chromium.find_elements(By.CSS_SELECTOR, "#output-tail b") == []
    keep_screenshot(chromium, "dashboard.png")
    cli.tms(inst, f"killjob:{first}")


def test_a_used_garbled_or_expired_link_gets_a_403_page(tmp_path: Path, chromium: Any) -> None:
    from selenium.webdriver.common.by import By

    inst = Installation(tmp_path)
    try:
        inst.start_dispatcher(*HTTP, "--dashboard-link-lifetime", "2")
        base = dashboard_url(inst)
        link = cli.tms(inst, "dashboard").strip()
        issued = time.time()
        assert Browser().get(link)[0] == 200
        for url in (link, base + "/login?token=%3Cscript%3Ealert(1)%3C/script%3E", base + "/"):
            status, body = Browser().get(url)
            assert status == 403 and "Traceback" not in body, url
            assert "hConnect dashboard" in body
        expired = cli.tms(inst, "dashboard").strip()
        wait_until(lambda: time.time() > issued + 3, 10, "the link's lifetime to pass")
        chromium.get(expired)
        text = chromium.find_element(By.TAG_NAME, "body").text
        assert text.startswith("This dashboard link has expired, was used already, or is not")
        assert "<" not in text and chromium.find_elements(By.CSS_SELECTOR, "#jobs") == []
    finally:
        inst.cleanup()


def test_an_address_in_use_stops_the_start_with_one_line(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    inst = Installation(tmp_path)
    try:
        process = inst.start_dispatcher("--http", f"tcp:{port}:interface=127.0.0.1", wait=False)
        out = process.communicate(timeout=60)[0].decode()
        assert process.returncode != 0, out
        assert f"tmdispatcher: cannot listen on 'tcp:{port}:interface=127.0.0.1'" in out
        assert "Traceback" not in out
    finally:
        taken.close()
        inst.cleanup()


def test_without_http_the_command_says_how_to_enable_it(installation: Installation) -> None:
    result = installation.run("hConnect", "dashboard", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "this dispatcher serves no dashboard: the admin starts it with --http ENDPOINT"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--http", "nonsense:1"), "tmdispatcher: bad endpoint 'nonsense:1'"),
        (("--metrics", "tcp:0"), "--metrics needs --http"),
    ],
)
def test_a_bad_endpoint_stops_the_start_with_one_line(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    inst = Installation(tmp_path)
    try:
        process = inst.start_dispatcher(*args, wait=False)
        out = process.communicate(timeout=60)[0].decode()
        assert process.returncode != 0 and expected in out, out
        assert "Traceback" not in out
    finally:
        inst.cleanup()


# --- two users --------------------------------------------------------------------------------


@pytest.fixture
def two_users() -> Iterator[tuple[Installation, UnixUser, UnixUser]]:
    with second_user("tm-web-a-") as alice, second_user("tm-web-b-") as bob:
        with installation_shared_with("tm-web-inst-", alice, bob, dispatcher_args=HTTP) as inst:
            yield inst, alice, bob


def as_user(inst: Installation, user: UnixUser) -> cli.As:
    return cli.As(functools.partial(user.run, inst), user.name)


def test_a_users_link_shows_only_their_jobs_and_an_admins_all(
    two_users: tuple[Installation, UnixUser, UnixUser], chromium: Any
) -> None:
    from selenium.webdriver.common.by import By

    inst, alice, bob = two_users
    a, b = as_user(inst, alice), as_user(inst, bob)
    alices = cli.submit(a, "-g", "alices-secret-group", "echo alices-secret-command")
    bobs = cli.submit(b, "true")
    cli.wait_ended(a, alices)
    cli.wait_ended(b, bobs)

    bob_browser, base = signed_in(cli.tms(b, "dashboard").strip())
    state = bob_browser.json(base + "/api/state")
    assert state["user"] == bob.name and state["sees_all"] is False
    assert [j["id"] for j in state["jobs"]] == [bobs]
    assert "alices-secret" not in json.dumps(state) and alice.name not in json.dumps(state)
    status, body = bob_browser.get(f"{base}/api/job?id={alices}")
    assert status == 404 and "alices-secret" not in body

    # Bob's link in a real browser: his job, not Alice's.
    chromium.get(cli.tms(b, "dashboard").strip())
    wait_for(chromium, f'tr[data-job-id="{bobs}"]')
    assert chromium.find_elements(By.CSS_SELECTOR, f'tr[data-job-id="{alices}"]') == []
    assert "alices-secret" not in chromium.page_source
    keep_screenshot(chromium, "dashboard-plain-user.png")

    # The admin (root runs this dispatcher) sees both, through the TMS as through -T.
    for line in (cli.tms(inst, "dashboard"), cli.td(inst, "dashboard")):
        admin, base = signed_in(line.strip())
        seen = {j["id"] for j in admin.json(base + "/api/state")["jobs"]}
        assert {alices, bobs} <= seen
        assert admin.json(f"{base}/api/job?id={alices}")["command"] == "echo alices-secret-command"


# --- metrics ----------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture(params=["sqlite", "mysql"])
def store_installation(request: pytest.FixtureRequest, tmp_path: Path) -> Installation:
    url = request.getfixturevalue("mysql_url") if request.param == "mysql" else None
    inst = Installation(tmp_path, database_url=url)
    request.addfinalizer(inst.cleanup)
    inst.start_dispatcher(*HTTP, "--metrics", "tcp:0:interface=127.0.0.1")
    return inst


def test_metrics_and_the_api_agree_with_the_jobs_submitted(
    store_installation: Installation,
) -> None:
    inst = store_installation
    me = getpass.getuser()
    jobs = cli.job_file(["true", "true", "false"])
    ids = cli.submit_file(inst, inst.work / "jobs.txt", "-g", "batch", content=jobs)
    for job_id in ids:
        cli.wait_ended(inst, job_id)
    info = json.loads((inst.var / "http.json").read_text())
    # /metrics is on its own endpoint: not on the dashboard's.
    assert Browser().get(info["url"] + "/metrics")[0] == 404
    status, text = Browser().get(f"http://127.0.0.1:{info['metrics_port']}/metrics")
    assert status == 200
    s = samples(text)
    assert s[("tm_jobs_submitted_total", (("user", me),))] == 3
    assert s[("tm_jobs_ended_total", (("state", "finished"), ("user", me)))] == 2
    assert s[("tm_jobs_ended_total", (("state", "failed"), ("user", me)))] == 1
    assert s[("tm_jobs", (("state", "waiting"), ("user", me)))] == 0
    host = next(iter(cli.hosts(inst)))
    assert s[("tm_host_slots", (("host", host),))] == os.cpu_count()
    assert s[("tm_host_slots_used", (("host", host),))] == 0
    assert s[("tm_executors", (("host", host),))] == 1
    assert s[("tm_scheduling_pass_seconds_count", ())] >= 1
    assert s[("tm_database_write_seconds_count", ())] >= 1
    wait_until(
        lambda: (
            "tm_reactor_lag_seconds_count 0.0"
            not in Browser().get(f"http://127.0.0.1:{info['metrics_port']}/metrics")[1]
        ),
        30,
        "a measure of the reactor's lag",
    )
    # The dashboard's API reads the same jobs from the store: group progress and history.
    browser, base = signed_in(cli.tms(inst, "dashboard").strip())
    state = browser.json(base + "/api/state")
    [group] = [g for g in state["groups"] if g["group"] == "batch"]
    assert group["done"] == group["total"] == 3 and group["counts"] == {"finished": 2, "failed": 1}
    assert sum(m["ends"] for m in state["charts"]["minutes"]) == 3
    detail = browser.json(f"{base}/api/job?id={ids[2]}")
    assert detail["state"] == "failed" and detail["exit_code"] == 1
    assert [h["state"] for h in detail["history"]][-1] == "failed"
