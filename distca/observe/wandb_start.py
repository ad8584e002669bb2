"""Starting W&B without ever stopping the run for it: no prompt, no hang, no traceback.

W&B's own start asks for an API key at a terminal ("Enter your choice:") and otherwise fails
with `No API key configured`; an unreachable server makes it retry for minutes. A training
job's stdin is not ours to read (and on a compute node nobody answers), so before
`wandb.init` this checks that the server answers within `REACH_TIMEOUT_S` and, without prompting, that
credentials exist (`wandb.login(prompt=False)`: WANDB_API_KEY, `wandb login`'s netrc entry,
an identity token or the settings file); otherwise the run logs offline and the banner
says why and how to upload later (`wandb sync`). An online start that still fails (or takes
longer than `INIT_TIMEOUT_S`) falls back the same way; one that cannot start even offline
leaves W&B off with a warning. WANDB_MODE=offline / disabled is honoured as given.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REACH_TIMEOUT_S = 10.0  # the server must answer within this, or the run logs offline
INIT_TIMEOUT_S = 60.0   # wandb.init's own bound for starting online
DEFAULT_HOST = "https://api.wandb.ai"


@dataclass
class WandbStart:
    run: object | None   # the wandb run, or None (off)
    where: str           # for the banner: the URL, or the offline folder with the sync command


def _host() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST


def unreachable(url: str) -> str | None:
    """Why `url` does not answer within REACH_TIMEOUT_S (None: it answers, whatever the status)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=REACH_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # an HTTP answer, even an error, means the server is there
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return str(reason) or type(reason).__name__
    return None


def offline_reason(wandb) -> str | None:
    """Why an online start would prompt, fail or hang (None: it can start online). The
    server first: W&B's credential check itself calls it, with its own long timeouts."""
    if (problem := unreachable(_host())):
        return f"the W&B server {_host()} did not answer ({problem})"
    try:
        logged_in = wandb.login(prompt=False)
    except Exception as e:  # noqa: BLE001 - a malformed key, an unreadable netrc: not fatal
        return f"its credentials are unusable ({str(e).splitlines()[0][:200]})"
    if not logged_in:
        return "no W&B credentials: set WANDB_API_KEY or run `wandb login`"
    return None


def _offline_where(run, run_dir: str, why: str | None) -> str:
    folder = Path(getattr(run, "dir", "") or run_dir)
    folder = folder.parent if folder.name == "files" else folder  # what `wandb sync` takes
    return (f"offline{f' ({why})' if why else ''}: {folder}; upload later with: wandb sync {folder}")


def start_wandb(lcfg, run_dir: str, config: dict, warn) -> WandbStart:
    """wandb.init as configured, offline when online cannot work; never prompts. `warn`
    prints a warning line."""
    import wandb  # lazy: heavy import, optional service

    mode = os.environ.get("WANDB_MODE") or str(lcfg.mode)
    online = mode in ("online", "run")
    why = offline_reason(wandb) if online else None
    kwargs = {"project": lcfg.project, "entity": lcfg.entity, "name": lcfg.name, "dir": run_dir, "config": config}
    if online and why is None:
        try:
            run = wandb.init(mode="online", settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S), **kwargs)
            return WandbStart(run, getattr(run, "url", None) or _offline_where(run, run_dir, None))
        except Exception as e:  # noqa: BLE001 - W&B failing must not end the run
            why = f"the online start failed: {str(e).splitlines()[0][:200]}"
    try:
        run = wandb.init(mode="offline" if online else mode, **kwargs)
    except Exception as e:  # noqa: BLE001
        warn(f"W&B could not start ({str(e).splitlines()[0][:200]}); training without it")
        return WandbStart(None, "off (could not start: see the warning above)")
    return WandbStart(run, _offline_where(run, run_dir, why))
