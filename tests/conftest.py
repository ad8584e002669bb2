import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# tests import `tests.distributed_utils`; make the repo root importable without install quirks
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
