"""Train an IResNet with a margin head on a synthface export; checkpoint every epoch; resume exactly.

    result = train("out/run", "runs/r50", preset_config("hsface10k"), eval_bins="/data/faces_webface_112x112")

A run folder holds `config.json`, `model.pt` (the backbone's plain state dict, as arcface_torch
saves it: its `iresnet50()` loads it with strict=True and `synthface eval` reads it back),
`checkpoint.pt` (backbone, head, optimiser, scaler, position and RNG states, replaced atomically
after every epoch and when a run stops at --max-steps), `metrics.jsonl` (loss, learning rate and
images/s every `log_every` steps; verification after each epoch when bins are given) and, with
bins, `results.json` of the last evaluation.

Guarantees: the data order and every augmentation derive from (seed, epoch, index) and the torch
RNG state is checkpointed, so on CPU a run stopped (or killed) and resumed ends with the same
weights, bit for bit, as one that ran through. Multi-GPU runs start under `torchrun` or
`accelerate launch` (RANK, WORLD_SIZE, LOCAL_RANK): each process takes every world-th batch of one
seeded permutation and DistributedDataParallel averages the gradients; rank 0 writes the files.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from synthface.errors import InvalidInputError, OutputPathError
from synthface.fr.backbones import DEPTHS, IResNet
from synthface.fr.data import EpochView, TrainingSet, epoch_order, open_source
from synthface.fr.heads import MarginHead
from synthface.fr.settings import PRECISIONS, PRESETS, SCHEDULES, TrainConfig, parse_overrides, preset_config

__all__ = ["DEPTHS", "PRECISIONS", "PRESETS", "SCHEDULES", "TrainConfig", "TrainResult", "learning_rate", "load_metrics",
           "parameter_groups", "parse_overrides", "preset_config", "train"]

CONFIG, MODEL, CHECKPOINT, METRICS, RESULTS = "config.json", "model.pt", "checkpoint.pt", "metrics.jsonl", "results.json"


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """lr at global step `step` (0-based). "step": base * gamma^(milestones reached), a milestone e
    being reached from the first step of 1-based epoch e. "poly": linear warm-up over warmup_epochs,
    then base * (1 - progress)^power down to 0 at the last step."""
    if config.schedule == "step":
        epoch = step // steps_per_epoch + 1
        return config.lr * config.gamma ** sum(epoch >= m for m in config.milestones)
    warmup = int(config.warmup_epochs * steps_per_epoch)
    total = config.epochs * steps_per_epoch
    if step < warmup:
        return config.lr * step / warmup
    return config.lr * max(0.0, 1.0 - (step - warmup) / max(1, total - warmup)) ** config.power


def parameter_groups(modules: list[nn.Module], weight_decay: float, bn_weight_decay: bool) -> list[dict]:
    """Trainable parameters in two groups: BatchNorm weights/biases (decay only if `bn_weight_decay`) and the rest."""
    bn_ids = {id(p) for m in modules for mod in m.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)
              for p in mod.parameters(recurse=False)}
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    bn = [p for p in params if id(p) in bn_ids]
    rest = [p for p in params if id(p) not in bn_ids]
    return [{"params": rest, "weight_decay": weight_decay}, {"params": bn, "weight_decay": weight_decay if bn_weight_decay else 0.0}]


@dataclass
class TrainResult:
    """What a call did: steps reached, rank 0's last logged loss, training images/s of all processes
    (evaluation excluded), and this process's rank (only rank 0 writes files)."""

    out_dir: Path
    steps: int
    epochs_done: float
    last_loss: float
    images_per_s: float
    results: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    rank: int = 0


class _Model(nn.Module):
    """Backbone + head in one module, so DistributedDataParallel sees one forward."""

    def __init__(self, backbone: IResNet, head: MarginHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x), labels)


def _dist() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _save(obj, path: Path) -> None:
    from synthface.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _prepare_out(out_dir: Path, config: TrainConfig, data_info: dict, resume: bool) -> None:
    cfg_path = out_dir / CONFIG
    if resume:
        if not cfg_path.is_file():
            raise OutputPathError(f"--resume needs a run folder; {out_dir} has no {CONFIG}. Drop --resume to start a new run there.")
        saved = json.loads(cfg_path.read_text())
        if saved["train"] != config.to_dict():
            diff = sorted(k for k in saved["train"] if saved["train"][k] != config.to_dict().get(k))
            raise InvalidInputError(
                f"{out_dir} was started with other settings ({', '.join(diff)} differ). Resume with the same preset and "
                "--set values, or start a new run in another --out folder."
            )
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputPathError(
            f"{out_dir} already holds files (a previous run?). Pass --resume to continue it, or choose another --out folder."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    from synthface.io import atomic_write_bytes

    atomic_write_bytes(cfg_path, (json.dumps({"train": config.to_dict(), "data": data_info}, indent=2) + "\n").encode())


def train(
    data: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    eval_bins: str | Path | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train on the export at `data` into `out_dir` (see the module docstring for the folder and guarantees).

    max_steps stops (with a checkpoint) after that many optimiser steps in total; `resume` continues a
    stopped or killed run from its checkpoint (same config required). `on_step(step, loss)` is called
    after every optimiser step.
    """
    from synthface.devices import resolve_device
    from synthface.fr.verification import evaluate, find_bins, read_bin, torch_recognizer, write_results

    config = config or PRESETS["hsface10k"]
    out_dir = Path(out_dir)
    rank, world, local_rank = _dist()
    if world > 1:
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        dev = resolve_device(None, local_rank=local_rank)  # one process per GPU under the launcher
    else:
        dev = resolve_device(device)
    source = open_source(data, config.format)
    packs = [read_bin(p) for p in find_bins(eval_bins)] if eval_bins is not None and rank == 0 else []
    data_info = {"path": str(Path(data).resolve()), "format": source.fmt, "num_images": len(source), "num_classes": source.num_classes}
    if rank == 0:  # one process checks and creates the run folder; the others wait for it
        _prepare_out(out_dir, config, data_info, resume)
    if world > 1:
        torch.distributed.barrier()
    dataset = TrainingSet(source, config.augment, config.input_size, config.seed)
    steps_per_epoch = len(dataset) // (config.batch_size * world)
    if steps_per_epoch == 0:
        raise InvalidInputError(
            f"The export has {len(dataset)} images, fewer than one global batch ({config.batch_size} x {world} processes). "
            "Lower batch_size with --set batch_size=N."
        )

    torch.manual_seed(config.seed)
    backbone = IResNet(config.backbone())
    head = MarginHead(source.num_classes, config.num_features, scale=config.scale, arc_margin=config.arc_margin,
                      cos_margin=config.cos_margin, gradient=config.gradient, sample_rate=config.sample_rate)
    # fp16 (and auto's bf16) pay only on CUDA; a CPU run keeps fp32 unless bf16 is asked for explicitly
    precision = config.precision if dev.type == "cuda" else ("bf16" if config.precision == "bf16" else "fp32")
    if precision == "auto":
        precision = "bf16"
    channels_last = config.channels_last and dev.type == "cuda"
    model = _Model(backbone, head).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(parameter_groups([backbone, head], config.weight_decay, config.bn_weight_decay),
                                lr=config.lr, momentum=config.momentum)
    scaler = torch.amp.GradScaler(dev.type, growth_interval=config.grad_scaler_growth_interval, enabled=precision == "fp16")
    start_step = 0
    metrics_path = out_dir / METRICS
    if resume and (out_dir / CHECKPOINT).is_file():
        state = torch.load(out_dir / CHECKPOINT, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_step = state["step"]
        torch.set_rng_state(state["rng"].cpu())  # RNG states are CPU byte tensors, whatever map_location did
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), dev)
    if resume and rank == 0:  # lines the stopped run logged after its checkpoint are redone
        kept = [m for m in load_metrics(out_dir) if m["step"] <= start_step]
        metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))
    runner: nn.Module = model
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if dev.type == "cuda" else None)
    if config.compile:
        runner = torch.compile(runner)

    total_steps = config.epochs * steps_per_epoch
    end_step = min(total_steps, max_steps) if max_steps is not None else total_steps
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    log: list[dict] = []
    results = None

    def write_metric(entry: dict) -> None:
        log.append(entry)
        if rank == 0:
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")

    def checkpoint(step: int) -> None:
        if rank == 0:
            _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                   "step": step, "rng": torch.get_rng_state(),
                   "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}, out_dir / CHECKPOINT)
            _save({k: v.detach().cpu() for k, v in backbone.state_dict().items()}, out_dir / MODEL)

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=end_step, initial=start_step, unit="step", dynamic_ncols=True)
    step, last_loss, images, clock, window_loss = start_step, math.nan, 0, time.perf_counter(), []
    train_seconds, run_images = 0.0, 0
    model.train()
    while step < end_step:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        order = epoch_order(len(dataset), config.seed, epoch, rank=rank, world=world, batch_size=config.batch_size)
        batches = order.reshape(-1, config.batch_size)[in_epoch : in_epoch + end_step - step].tolist()
        loader = torch.utils.data.DataLoader(  # its own generator: creating it must not move the global RNG
            EpochView(dataset, epoch), batch_sampler=batches, num_workers=config.num_workers, pin_memory=dev.type == "cuda",
            generator=torch.Generator().manual_seed(config.seed + epoch))
        for x, labels in loader:
            x, labels = x.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = learning_rate(config, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = runner(x, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if config.clip_grad_norm > 0:
                nn.utils.clip_grad_norm_(backbone.parameters(), config.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            images += len(x) * world
            run_images += len(x) * world
            window_loss.append(loss.detach())
            if on_step is not None:
                on_step(step, float(loss.detach()))
            if step % config.log_every == 0 or step == end_step:
                last_loss = float(torch.stack(window_loss).float().mean())
                now = time.perf_counter()
                speed = images / max(now - clock, 1e-9)
                train_seconds += now - clock
                write_metric({"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": round(last_loss, 6),
                              "lr": lr, "images_per_s": round(speed, 2)})
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2g}", img_s=f"{speed:.0f}")
                window_loss, images, clock = [], 0, now
            if bar is not None:
                bar.update(1)
        if step % steps_per_epoch == 0 or step == end_step:
            checkpoint(step)
        if (step % steps_per_epoch == 0 or step == end_step) and packs:
            results = evaluate(torch_recognizer(backbone, device=dev), packs)
            model.train()
            write_metric({"step": step, "epoch": round(step / steps_per_epoch, 4), "average": results["average"],
                          "verification": {k: v["accuracy"] for k, v in results["sets"].items()}})
            write_results(results, out_dir / RESULTS)
            images, clock = 0, time.perf_counter()  # images/s counts training only
        if world > 1:
            torch.distributed.barrier()
    if bar is not None:
        bar.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return TrainResult(out_dir, step, step / steps_per_epoch, last_loss, run_images / max(train_seconds, 1e-9), results, log, rank)


def load_metrics(out_dir: str | Path) -> list[dict]:
    """metrics.jsonl as a list of dicts (empty when the run wrote none yet)."""
    path = Path(out_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
