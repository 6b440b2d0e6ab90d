"""README's test command on a fresh machine: the browser test's Chromium is installed with apt-get
when it is missing (tests/browser.py), and a failed install is one line saying what to do."""

from __future__ import annotations

import os
import stat

import pytest

import browser


def fake_apt_get(folder, exit_code: int = 0, creates_chromium: bool = True):
    """An ``apt-get`` on PATH that logs its arguments and, on install, puts a ``chromium`` beside itself."""
    log = folder / "apt-get.log"
    script = folder / "apt-get"
    install = f'touch "{folder}/chromium"; chmod +x "{folder}/chromium"' if creates_chromium else "true"
    script.write_text(f"""#!/bin/sh
PATH=/usr/bin:/bin  # for touch and chmod (the test's PATH holds only this folder)
echo "$@ DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> "{log}"
if [ {exit_code} -ne 0 ]; then echo "E: Could not get lock /var/lib/dpkg/lock-frontend" >&2; exit {exit_code}; fi
if [ "$1" = install ]; then {install}; fi
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return log


@pytest.fixture
def bare_path(tmp_path, monkeypatch):
    """PATH holding only an empty folder: no chromium, as on a fresh machine."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # as root, apt-get runs without sudo
    return tmp_path


def test_chromium_missing_is_installed_with_apt_get(bare_path):
    log = fake_apt_get(bare_path)
    assert browser.find_chromium() is None
    assert browser.chromium_path() == str(bare_path / "chromium")
    calls = log.read_text().splitlines()
    assert calls == [
        "update -qq DEBIAN_FRONTEND=noninteractive",
        "install -y -qq chromium DEBIAN_FRONTEND=noninteractive",
    ]
    # Found now: no second install.
    assert browser.chromium_path() == str(bare_path / "chromium")
    assert len(log.read_text().splitlines()) == 2


def test_a_failed_install_says_what_to_do(bare_path):
    fake_apt_get(bare_path, exit_code=100)
    with pytest.raises(browser.ChromiumUnavailable) as err:
        browser.chromium_path()
    message = str(err.value)
    assert "\n" not in message
    assert "apt-get update -qq` failed (E: Could not get lock" in message
    assert "sudo apt-get install chromium" in message


def test_an_install_that_leaves_no_chromium_on_path_is_an_error(bare_path):
    fake_apt_get(bare_path, creates_chromium=False)
    with pytest.raises(browser.ChromiumUnavailable, match="no `chromium` is on PATH"):
        browser.chromium_path()


def test_without_apt_get_the_error_says_to_install_chromium(bare_path):
    with pytest.raises(browser.ChromiumUnavailable, match="no apt-get: install Chromium"):
        browser.chromium_path()
