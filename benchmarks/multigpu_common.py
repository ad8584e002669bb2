"""What every multi-GPU benchmark JSON starts with (device, GPU count, versions, date, commit,
command), and the environment a child launch needs. Shared by benchmarks/multigpu_*.py."""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# torchrun's variables: a child started from inside a torchrun rank must not inherit them, or
# it would try to join the parent's job (a one-process reference, a nested launch)
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
               "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
               "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
               "TORCH_NCCL_ASYNC_ERROR_HANDLING", "GROUP_WORLD_SIZE", "ROLE_NAME")
# NVLink multicast must stay off on the lent multi-GPU machines (../shared/DEVICE.md)
NCCL_SAFE = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None  # the device machine may have no git: the tree still travels without .git


def header(world: int) -> dict:
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda else "cpu",
            "gpu_count": torch.cuda.device_count() if cuda else 0, "world_size": world,
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _commit(), "command": " ".join([sys.executable, *sys.argv])}


def child_env(threads: int | None = None) -> dict:
    """os.environ without torchrun's variables, with the repo importable and multicast off."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(NCCL_SAFE)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("WANDB_MODE", "disabled")
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def torchrun(nproc: int, script_args: list[str]) -> list[str]:
    """The command that starts `script_args` (a module or file and its arguments) on nproc ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *script_args]
