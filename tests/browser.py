"""The browser the page test drives: Debian's Chromium, found on PATH or installed with apt-get.

README's test command (`python -m pytest -n 2`) must pass on a fresh machine, so the suite installs
what the browser test needs itself instead of skipping it (playwright cannot download its own
browsers on machines without internet; Debian's package comes from the apt mirror).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

NAMES = ("chromium", "chromium-browser")
PACKAGE = "chromium"


class ChromiumUnavailable(RuntimeError):
    """Chromium is not installed and could not be installed."""


def find_chromium() -> str | None:
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def install_chromium(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str:
    """``apt-get install chromium`` (as root, else through ``sudo -n``); the path of the browser.
    :class:`ChromiumUnavailable` with the failed command's last words and what to do otherwise."""
    if shutil.which("apt-get") is None:
        raise ChromiumUnavailable(
            "the browser test needs Chromium and this machine has no apt-get: install "
            "Chromium so that `chromium` is on PATH, then run the tests again"
        )
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", PACKAGE]):
        try:
            result = run(sudo + command, env=env, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as err:
            result = subprocess.CompletedProcess(command, 1, "", str(err))
        if result.returncode != 0:
            said = (result.stderr or result.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise ChromiumUnavailable(
                f"the browser test needs Chromium; `{' '.join(sudo + command)}` failed ({said[0]}): run "
                f"`sudo apt-get install {PACKAGE}` yourself, then run the tests again"
            )
    path = find_chromium()
    if path is None:
        raise ChromiumUnavailable(
            f"apt-get installed {PACKAGE} but no `chromium` is on PATH "
            f"({os.environ.get('PATH', '')}); put it there and run the tests again"
        )
    return path


def chromium_path() -> str:
    """The browser, installed first when it is missing."""
    return find_chromium() or install_chromium()
