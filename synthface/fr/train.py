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

Refusals leave the way open: the --out folder, the data (labels, class count), the batch size, the
bins and, with `resume`, config.json (same settings, same data by its recorded fingerprint),
checkpoint.pt and metrics.jsonl are checked before anything is created; a refusal during a new run
before its first checkpoint removes what the run wrote; after one, the run stays for `resume`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from synthface.distributed import ranks_from_environment
from synthface.errors import FileFormatError, InvalidInputError, OutputPathError, SynthfaceError
from synthface.fr.backbones import DEPTHS, IResNet
from synthface.fr.data import EpochView, TrainingSet
from synthface.fr.heads import AdaFaceHead, MarginHead
from synthface.fr.mixing import data_changes, open_mix
from synthface.fr.settings import PRECISIONS, PRESETS, SCHEDULES, TrainConfig, parse_overrides, preset_config

__all__ = ["DEPTHS", "PRECISIONS", "PRESETS", "SCHEDULES", "TrainConfig", "TrainResult", "build_head", "learning_rate",
           "load_metrics", "parameter_groups", "parse_overrides", "preset_config", "train"]

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
    """Backbone + head in one module, so DistributedDataParallel sees one forward. The head gets the
    backbone's raw (un-normalised) embeddings: each head normalises, and AdaFace reads their norms."""

    def __init__(self, backbone: IResNet, head: MarginHead | AdaFaceHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x), labels)


_open = open  # every file the loop writes goes through here (tests put a full disk behind it)


class _Recorded(io.RawIOBase):
    """A binary file that remembers the OSError its write met: torch.save reports a failed write as a
    RuntimeError without the errno, and a full disk must read as one."""

    def __init__(self, handle):
        super().__init__()
        self.handle, self.error = handle, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise


def _save(obj, path: Path) -> None:
    from synthface.io import atomic_path

    with atomic_path(path) as tmp, _open(tmp, "wb") as handle:
        recorded = _Recorded(handle)
        try:
            torch.save(obj, recorded)
        except RuntimeError:
            if recorded.error is not None:
                raise recorded.error from None
            raise


def _append(path: Path, text: str) -> None:
    from synthface.io import output_errors

    with output_errors(path, action="append to"), _open(path, "a") as handle:
        handle.write(text)


def _damaged(path: Path, problem: str, fix: str) -> FileFormatError:
    return FileFormatError(f"{path} is damaged: {problem}. {fix}")


def _read_config(out_dir: Path) -> dict:
    """config.json of an existing run, checked for the shape a run writes."""
    path = out_dir / CONFIG
    fix = ("A run cannot resume without the settings it started with: restore the file from a backup, or start a "
           "new run in another --out folder.")
    try:
        saved = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(path, f"it is not JSON ({exc})", fix) from None
    except OSError as exc:
        raise FileFormatError(f"Cannot read {path}: {os.strerror(exc.errno) if exc.errno else exc}. {fix}") from None
    if not (isinstance(saved, dict) and isinstance(saved.get("train"), dict) and isinstance(saved.get("data", {}), dict)):
        raise _damaged(path, 'it lacks the "train" settings (and "data" description) a run writes', fix)
    return saved


def _check_resume(out_dir: Path, config: TrainConfig, data_info: dict) -> None:
    """Refuse a resume under other settings or on another data set (nothing is written)."""
    if not (out_dir / CONFIG).is_file():
        raise OutputPathError(f"--resume needs a run folder; {out_dir} has no {CONFIG}. Drop --resume to start a new run there.")
    saved = _read_config(out_dir)
    mine = config.to_dict()
    saved["train"] = {**TrainConfig.field_defaults(), **saved["train"]}  # a run from before a setting existed
    if saved["train"] != mine:
        diff = sorted(k for k in set(saved["train"]) | set(mine) if saved["train"].get(k) != mine.get(k))
        raise InvalidInputError(
            f"{out_dir} was started with other settings ({', '.join(diff)} differ). Resume with the same preset and "
            "--set values, or start a new run in another --out folder."
        )
    changed = data_changes(saved.get("data", {}), data_info)  # every source's counts, fingerprint and weight
    if changed:
        raise InvalidInputError(
            f"{out_dir} was started on another data set ({changed}). Resume with the data the run started on, or start "
            "a new run in another --out folder."
        )


def _check_new(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputPathError(
            f"{out_dir} already holds files (a previous run?). Pass --resume to continue it, or choose another --out folder."
        )


def _create_out(out_dir: Path, config: TrainConfig, data_info: dict) -> list[Path]:
    """Make the run folder and its config.json; the folders this call made (on failure they are removed)."""
    from synthface.io import atomic_write_bytes, output_errors

    made = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        with output_errors(out_dir, action="create the training run folder"):
            out_dir.mkdir(parents=True, exist_ok=True)
        saved = {"train": config.to_dict(), "head": config.head_settings(), "data": data_info}
        atomic_write_bytes(out_dir / CONFIG, (json.dumps(saved, indent=2) + "\n").encode())
    except BaseException:
        _remove_new_run(out_dir, made)
        raise
    return made


def _remove_new_run(out_dir: Path, made: list[Path]) -> None:
    """Undo a new run that was refused before its first checkpoint: the files a run writes, then the
    folders this call made (innermost first, only when empty), so the same command can run again."""
    for name in (CONFIG, METRICS, RESULTS, MODEL):
        with contextlib.suppress(OSError):
            (out_dir / name).unlink(missing_ok=True)
    for folder in made:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def _undone_if_refused(out_dir: Path, made: list[Path] | None):
    """A refusal (a damaged image, a full disk) before the first checkpoint of a new run leaves no run folder
    that would block running the same command again; after it, the run stays for --resume."""
    try:
        yield
    except SynthfaceError:
        if made is not None and not (out_dir / CHECKPOINT).exists():
            _remove_new_run(out_dir, made)
        raise


_CHECKPOINT_FIX = (f"Remove {CHECKPOINT} and resume again to restart this run from step 0 (same settings), or restore "
                   "the file from a backup.")


def _load_checkpoint(out_dir: Path, dev) -> dict | None:
    """checkpoint.pt of the run (None when it has none yet), checked for the entries a run writes."""
    path = out_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=dev, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch reports a damaged file in many types (zip, pickle, EOF, ...)
        raise _damaged(path, f"torch cannot read it ({(str(exc).splitlines() or [type(exc).__name__])[0].split('. ')[0][:200]})",
                       _CHECKPOINT_FIX) from None
    keys = ("model", "optimizer", "scaler", "step", "rng")
    if not isinstance(state, dict) or any(k not in state for k in keys) or not isinstance(state["step"], int) \
            or state["step"] < 0:
        raise _damaged(path, f"it is not a training checkpoint (it needs {', '.join(keys)})", _CHECKPOINT_FIX)
    return state


def _restore(state: dict, path: Path, model, optimizer, scaler, dev) -> int:
    """Put a checkpoint's states in place; its step. A checkpoint of another shape is named, not a traceback."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"].cpu())  # RNG states are CPU byte tensors, whatever map_location did
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), dev)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _damaged(path, f"its states do not fit this run's model ({str(exc).splitlines()[0][:200]})",
                       _CHECKPOINT_FIX) from None
    return state["step"]


def _unwrap_worker_error(exc: SynthfaceError) -> SynthfaceError:
    """A DataLoader worker's error arrives with the worker's traceback in its message; keep the message."""
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    last = text.rstrip().splitlines()[-1]
    return type(exc)(last.partition(f"{type(exc).__name__}: ")[2] or last)


def train(
    data: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    eval_bins: str | Path | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    weights: Sequence[float] | dict[str, float] | None = None,
) -> TrainResult:
    """Train on the export at `data` into `out_dir` (see the module docstring for the folder and guarantees).

    max_steps stops (with a checkpoint) after that many optimiser steps in total, counted across epochs
    (each epoch is images // (batch_size x processes) steps, its tail dropped) and never beyond
    `epochs`; `resume` continues a stopped or killed run from its checkpoint (same config and data required). `on_step(step, loss)` is called
    after every optimiser step. Several `data` sources train together with disjoint labels, each weighted by
    `weights` (one number per source, or {source: weight}); synthface.fr.mixing says how an epoch is composed.
    """
    from synthface.devices import resolve_device
    from synthface.fr.benchmarks import get_benchmark, headline_scores, torch_recognizer, write_results
    from synthface.io import check_output_folder

    config = config or PRESETS["hsface10k"]
    out_dir = Path(out_dir)
    # torch.distributed's env:// rendezvous reads RANK/WORLD_SIZE itself, so Slurm's variables alone do not count.
    ranks = ranks_from_environment(slurm=False)
    rank, world, local_rank = ranks.rank, ranks.world_size, ranks.local_rank
    if world > 1:
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        dev = resolve_device(None, local_rank=local_rank)  # one process per GPU under the launcher
    else:
        dev = resolve_device(device)
    # Everything is checked before anything is created in out_dir: a refusal leaves it as it was,
    # so the fix it suggests (another --set, --resume, other data) works at once.
    if rank == 0:
        check_output_folder(out_dir, what="training run folder", option="--out")
    mix = open_mix(data, config.format, weights)
    source = mix.source
    steps_per_epoch = mix.epoch_size // (config.batch_size * world)
    if steps_per_epoch == 0:
        what = f"The export has {len(source)} images" if len(mix.readers) == 1 else \
            f"An epoch of the {len(mix.readers)} sources has {mix.epoch_size} samples"
        raise InvalidInputError(
            f"{what}, fewer than one global batch ({config.batch_size} x {world} processes). "
            "Lower batch_size with --set batch_size=N."
        )
    bench = get_benchmark("bin")  # --eval-bins: insightface's .bin verification sets
    packs = [bench.load(p) for p in bench.find(eval_bins)] if eval_bins is not None and rank == 0 else []
    data_info = mix.info()
    state, kept, made = None, [], None
    if rank == 0:
        if resume:
            _check_resume(out_dir, config, data_info)
        else:
            _check_new(out_dir)
    if resume:
        state = _load_checkpoint(out_dir, dev)
        kept = [m for m in load_metrics(out_dir) if m["step"] <= (state["step"] if state else 0)] if rank == 0 else []
    elif rank == 0:  # one process creates the run folder; the others wait for it
        made = _create_out(out_dir, config, data_info)
    if world > 1:
        torch.distributed.barrier()
    dataset = TrainingSet(source, config.augment, config.input_size, config.seed)

    torch.manual_seed(config.seed)
    backbone = IResNet(config.backbone())
    head = build_head(config, source.num_classes)
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
    if state is not None:
        start_step = _restore(state, out_dir / CHECKPOINT, model, optimizer, scaler, dev)
    if resume and rank == 0:  # lines the stopped run logged after its checkpoint are redone
        from synthface.io import atomic_write_bytes

        atomic_write_bytes(metrics_path, "".join(json.dumps(m) + "\n" for m in kept).encode())
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
            _append(metrics_path, json.dumps(entry) + "\n")

    def checkpoint(step: int) -> None:
        if rank == 0:
            _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                   "step": step, "rng": torch.get_rng_state(),
                   "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}, out_dir / CHECKPOINT)
            _save({k: v.detach().cpu() for k, v in backbone.state_dict().items()}, out_dir / MODEL)

    with _undone_if_refused(out_dir, made):
        bar = None
        if progress and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=end_step, initial=start_step, unit="step", dynamic_ncols=True)
        step, last_loss, images, clock, window_loss = start_step, math.nan, 0, time.perf_counter(), []
        train_seconds, run_images = 0.0, 0
        model.train()
        while step < end_step:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            order = mix.order(config.seed, epoch, rank=rank, world=world, batch_size=config.batch_size)
            batches = order.reshape(-1, config.batch_size)[in_epoch : in_epoch + end_step - step].tolist()
            loader = torch.utils.data.DataLoader(  # its own generator: creating it must not move the global RNG
                EpochView(dataset, epoch), batch_sampler=batches, num_workers=config.num_workers, pin_memory=dev.type == "cuda",
                generator=torch.Generator().manual_seed(config.seed + epoch))
            for x, labels in _batches(loader):
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
                results = bench.evaluate(torch_recognizer(backbone, device=dev), packs)
                model.train()
                write_metric({"step": step, "epoch": round(step / steps_per_epoch, 4), "average": results["average"],
                              "verification": headline_scores(bench, results)})
                write_results(results, out_dir / RESULTS)
                images, clock = 0, time.perf_counter()  # images/s counts training only
            if world > 1:
                torch.distributed.barrier()
    if bar is not None:
        bar.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return TrainResult(out_dir, step, step / steps_per_epoch, last_loss, run_images / max(train_seconds, 1e-9), results, log, rank)


def build_head(config: TrainConfig, num_classes: int) -> MarginHead | AdaFaceHead:
    """The head `config.head` names, with its settings (draws its initial centres from torch's global RNG)."""
    if config.head == "adaface":
        return AdaFaceHead(num_classes, config.num_features, scale=config.scale, margin=config.adaface_margin,
                           h=config.adaface_h, t_alpha=config.adaface_t_alpha)
    return MarginHead(num_classes, config.num_features, scale=config.scale, arc_margin=config.arc_margin,
                      cos_margin=config.cos_margin, gradient=config.gradient, sample_rate=config.sample_rate)


def _batches(loader):
    """The loader's batches; a worker's refusal (a damaged image) surfaces as its own one-paragraph message."""
    try:
        yield from loader
    except SynthfaceError as exc:
        raise _unwrap_worker_error(exc) from None


def load_metrics(out_dir: str | Path) -> list[dict]:
    """metrics.jsonl as a list of dicts (empty when the run wrote none yet); a damaged line is named."""
    path = Path(out_dir) / METRICS
    if not path.is_file():
        return []
    log = f"{METRICS} is only the run's log, the weights are in {CHECKPOINT}"
    fix = f"Delete that line (or the whole file: {log}) and run again."
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"it is not text ({exc})", f"Delete the file ({log}) and run again.") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
            raise _damaged(path, f"line {n} ({line[:80]!r}) is not a JSON object with a step number", fix)
        out.append(entry)
    return out
