"""The operator's dashboard in headless Chromium against a real fleet: server + 3 agents.

Debian's Chromium (/usr/bin/chromium, installed by .ci/run) is driven by Playwright for
Python; no browser is downloaded. Screenshots are written to ``artifacts/e2e-dashboard/``
(or ``$FEDFORGE_ARTIFACTS_DIR``); the path is printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from shared.datasets.split import read_agent_parts
from simulations.demo import prepare_split, send_malformed
from simulations.fleet import LocalFleet
from simulations.replay import Replayer
from tests.e2e.procs import processes_mentioning

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a long operator passphrase"
LABELLED = 800
UI_TIMEOUT_MS = 120_000  # bounds a failing wait only; nothing asserts speed


def artifacts_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "artifacts" / "e2e-dashboard"
    out = Path(os.environ.get("FEDFORGE_ARTIFACTS_DIR", default))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_operator_sees_the_fleet_and_rolls_it_back(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    out = artifacts_dir()
    print(f"\ndashboard screenshots: {out}")
    split_dir = prepare_split(tmp_path / "split", n_agents=3, synthetic=12_000, seed=11)
    parts = read_agent_parts(split_dir)
    fleet = LocalFleet(
        tmp_path / "fleet", mosquitto.url, split_dir, n_agents=3, fleet="dash", heartbeat_s=1.0, bootstrap_epochs=1
    )
    live: Replayer | None = None
    try:
        fleet.write_configs()
        fleet.create_user("ops", "operator", PASSWORD)
        fleet.start_server()
        fleet.start_agents()
        fleet.wait_serving(1)
        streams = dict(zip(fleet.device_ids, parts, strict=True))
        Replayer(mosquitto.url, "dash", streams, rate=0, batch=250, label_delay=0.5, limit=LABELLED).run()
        send_malformed(mosquitto.url, "dash", fleet.device_ids, per_device=5)
        fleet.wait_labelled(min(LABELLED, *(len(p) for p in parts)))
        summary = fleet.train(rounds=1)
        assert summary["status"] == "succeeded", summary
        assert summary["published_version"] == 2
        fleet.wait_serving(2)
        # Traffic while the operator watches, so the charts and records/s move.
        rest = {d: p.iloc[LABELLED:] for d, p in streams.items()}
        live = Replayer(mosquitto.url, "dash", rest, rate=40, batch=20, label_delay=None)
        live.run(until_done=False)

        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),  # a fresh profile every run
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1440, "height": 900},
            )
            try:
                page = context.new_page()
                page.set_default_timeout(UI_TIMEOUT_MS)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("dialog", lambda dialog: dialog.accept())

                # Log in: a page without a session leads to the login form and back.
                page.goto(f"{fleet.api}/fleet")
                expect(page).to_have_url(re.compile(r"/login\?next="))
                page.fill("#username", "ops")
                page.fill("#password", PASSWORD)
                page.click("#signin")
                expect(page).to_have_url(re.compile(r"/fleet$"))
                expect(page.locator(".who .role")).to_have_text("operator")

                # The three devices, online, serving v2, with live rates.
                rows = page.locator("#devices tbody tr[data-device]")
                expect(rows).to_have_count(3)
                for device in fleet.device_ids:
                    row = page.locator(f'#devices tbody tr[data-device="{device}"]')
                    expect(row.locator(".badge")).to_have_text("online")
                    expect(row.locator("td.version")).to_have_text("v2")
                    expect(row.locator("td").nth(4)).not_to_have_text("–")  # records/s measured
                expect(page.locator("#s-online")).to_have_text("3 / 3")
                expect(page.locator("#versions .sharebar span")).to_have_count(1)
                # The page down to the end of its content (the README's picture).
                bottom = page.evaluate("Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)")
                page.screenshot(path=str(out / "fleet.png"), clip={"x": 0, "y": 0, "width": 1440, "height": bottom + 8})

                # A device: charts of its telemetry and its quarantined records with reasons.
                page.click(f'#devices a:text-is("{fleet.device_ids[0]}")')
                expect(page.locator("#c-rps svg path.series")).to_have_count(1)
                expect(page.locator("#c-drift svg path.series")).to_have_count(1)
                expect(page.locator("#quarantine tbody tr").first).not_to_have_text("nothing quarantined")
                # Pin it to the release, see the device report the pin, then let it go again.
                pinned = page.locator('#facts dt:text-is("Pinned") + dd')
                expect(pinned).to_have_text("no: follows the release")
                page.fill("#pin-version", "2")
                page.click('button[data-action="pin"]')
                expect(page.locator("#toast")).to_contain_text("pin to v2: done")
                expect(pinned).to_have_text("v2")
                page.screenshot(path=str(out / "device.png"), full_page=True)
                page.click('button[data-action="unpin"]')
                expect(page.locator("#toast")).to_contain_text("unpin: done")
                expect(pinned).to_have_text("no: follows the release")
                # Remote settings: the device applies one (and restarts with it), refuses a bad one.
                in_effect = page.locator('#remote-facts dt:text-is("In effect") + dd')
                expect(in_effect).to_contain_text("its local settings")
                expect(page.locator("#configs tbody")).to_have_text("none sent")
                page.fill("#config-settings", '{"heartbeat_s": 1.5}')
                page.click('button[data-action="configure"]')
                expect(page.locator("#toast")).to_contain_text("configure: done")
                expect(in_effect).to_have_text("heartbeat_s = 1.5")
                expect(page.locator("#configs tbody tr").first.locator("td.state")).to_have_text("applied")
                page.fill("#config-settings", '{"heartbeat_s": -1}')
                page.click('button[data-action="configure"]')
                newest = page.locator("#configs tbody tr").first
                expect(newest.locator("td.state")).to_have_text("refused")
                expect(newest.locator("td").nth(4)).to_contain_text("heartbeat_s")
                expect(in_effect).to_have_text("heartbeat_s = 1.5")
                page.fill("#config-settings", "not json")
                page.click('button[data-action="configure"]')
                expect(page.locator("#toast")).to_contain_text("configure failed: not JSON")
                page.locator("#remote").screenshot(path=str(out / "device-remote-settings.png"))

                page.goto(f"{fleet.api}/models")
                expect(page.locator('#models tbody tr[data-version="2"] .badge')).to_have_text("published")
                expect(page.locator("#compare table")).to_be_visible()
                page.screenshot(path=str(out / "models.png"), full_page=True)

                page.goto(f"{fleet.api}/runs")
                expect(page.locator("#run-detail")).to_be_visible()
                expect(page.locator("#c-part svg path.series")).to_have_count(2)
                page.screenshot(path=str(out / "runs.png"), full_page=True)

                # Roll the fleet back to v1 and watch it follow, live.
                page.goto(f"{fleet.api}/rollouts")
                page.select_option("#rollback-version", "1")
                page.click('button[data-action="rollback"]')
                expect(page.locator("#toast")).to_contain_text("roll back to v1: done")
                share = page.locator('#share-table tr[data-version="1"] td.share')
                expect(share).to_have_text("100.0 %")
                page.screenshot(path=str(out / "rollouts.png"), full_page=True)
                assert {d: s["serving_version"] for d, s in fleet.devices().items()} == dict.fromkeys(
                    fleet.device_ids, 1
                )

                page.goto(f"{fleet.api}/audit")
                expect(page.locator("#audit tbody")).to_contain_text("ops")
                expect(page.locator("#audit tbody")).to_contain_text("rollback")
                page.screenshot(path=str(out / "audit.png"), full_page=True)

                # Logging out (a POST with the CSRF header) ends the session: pages lead to the login again.
                page.click("#logout")
                expect(page).to_have_url(re.compile(r"/login"))
                page.goto(f"{fleet.api}/fleet")
                expect(page).to_have_url(re.compile(r"/login\?next="))
                assert errors == []
            finally:
                context.close()
    finally:
        if live is not None:
            live.stop()
        fleet.stop()
    assert processes_mentioning(str(tmp_path)) == []
