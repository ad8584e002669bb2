"""`distca-eval RUN_DIR|HF_DIR [OVERRIDES...]`: the evaluation tasks on a checkpoint or a
Hugging Face folder, without training, at any layout.

RUN_DIR: a folder distca-train wrote; its config.yaml is the starting point and its newest
complete checkpoint is evaluated (`checkpoint.load=` picks another step's folder). HF_DIR: a
Hugging Face model folder (`model.init_from`); the default config with its architecture.
OVERRIDES are the training command's (`eval.tasks=[passkey] eval.passkey.lengths=[8192,32768]
parallel.tp=2 ...`). Under torchrun (`python -m launch.local ... -m distca.evaluation.cli`, or
torchrun `-m distca.evaluation.cli`) every rank runs its part of the layout. The results go
to stdout as JSON and to `<eval run dir>/eval.json`; the eval run dir is
`<RUN_DIR>/eval-<time>` (or `runs/eval-<time>` for a Hugging Face folder).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import uuid
from pathlib import Path

from omegaconf import OmegaConf


def _config(target: str, overrides: list[str]):
    from distca.checkpoint.hf_source import COPY_DIR
    from distca.config import compose_config, to_typed
    from distca.config.schema import RootConfig
    path = Path(target)
    stamp = f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    if (path / "config.yaml").is_file():  # a run dir
        raw = OmegaConf.load(path / "config.yaml")
        raw.pop("run", None)
        base = OmegaConf.merge(OmegaConf.structured(RootConfig), raw)
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        cfg = to_typed(merged) if not isinstance(merged, RootConfig) else merged
        # the architecture is in config.yaml and the weights in the checkpoint: the folder the
        # run started from is not needed (it may be gone); its tokenizer, which the run took
        # from it (data.tokenizer=auto), was copied into the run dir at start
        if cfg.model.init_from and str(cfg.data.tokenizer) == "auto" and (path / COPY_DIR / "tokenizer.json").is_file():
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer="hf",
                                                                   tokenizer_path=str(path / COPY_DIR)))
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=""))
        ckpt_dir = cfg.checkpoint.dir or str(path / "checkpoints")
        load = next((o.split("=", 1)[1] for o in overrides if o.startswith("checkpoint.load=")), ckpt_dir)
        run_dir = str(path / stamp)
    elif (path / "config.json").is_file():  # a Hugging Face folder
        cfg = to_typed(compose_config([f"model.init_from={target}", *overrides]))
        load, run_dir = "", os.path.join("runs", stamp)
    else:
        raise ValueError(f"{target} is neither a run dir (config.yaml) nor a Hugging Face folder (config.json)")
    # checkpoint.dir "": <run dir>/checkpoints, after rank 0's run dir is agreed on (each rank
    # stamps its own name here)
    ck = dataclasses.replace(cfg.checkpoint, dir="", load=load,
                             resume="never", save_final=False, every=0, every_minutes=0)
    ev = cfg.eval if cfg.eval.tasks else dataclasses.replace(cfg.eval, tasks=["loss"])
    # no step runs: any checkpoint step is "before the end", and no progress bar
    train = dataclasses.replace(cfg.train, steps=1 << 30)
    logger = dataclasses.replace(cfg.logger, progress=False)
    return dataclasses.replace(cfg, checkpoint=ck, eval=ev, train=train, logger=logger, run_dir=run_dir)


def evaluate_once(target: str, overrides: list[str]) -> dict:
    from distca.evaluation.tasks import evaluate
    from distca.startup import build_trainer, prepare
    cfg = _config(target, overrides)
    run = prepare(cfg)
    if run.loud:
        os.makedirs(run.run_dir, exist_ok=True)
    trainer = build_trainer(run)
    trainer.model.eval()
    step = run.start.step
    out = evaluate(run.cfg, step, run.plan, trainer.engine, trainer.stage, trainer.amp, run.device, run.tokenizer,
                   force=True)
    trainer.logger.close()
    result = {"target": target, "step": step, **out}
    if run.loud:
        Path(run.run_dir, "eval.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    from distca.config.validate import ConfigError
    import torch.distributed as dist
    try:
        result = evaluate_once(argv[0], argv[1:])
    except (ConfigError, ValueError) as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"distca-eval: error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
