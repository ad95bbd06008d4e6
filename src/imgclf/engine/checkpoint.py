"""Resumable training state, stored as safetensors + JSON metadata.

Nothing here unpickles: tensors go into a safetensors file and everything else (epoch, step,
history, optimizer hyper-parameters) into its JSON metadata, in the same single file, so the
state on disk is always one consistent snapshot.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from imgclf.config import TrainConfig
from imgclf.engine.loop import FitState
from imgclf.errors import ImgclfError, UsageError
from imgclf.files import atomic_write_tensors

__all__ = [
    "PREVIOUS_STATE_FILE",
    "STATE_FILE",
    "StateOrigin",
    "TrainingState",
    "check_state_meta",
    "has_training_state",
    "load_training_state",
    "save_training_state",
    "state_dict_for_saving",
]

_STATE_KEY = "imgclf_training_state"
_DIGEST_KEY = "imgclf_sha256"


def state_dict_for_saving(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies of the weights (safetensors refuses shared storage)."""
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in module.state_dict().items()}


def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"{param_id}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    for key, value in meta["scalars"].items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    best_weights: dict[str, torch.Tensor] | None,
    rng_states: dict[str, torch.Tensor],
    meta: dict,
    ema_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """One file with weights, best weights, optimizer state, RNG states, the weight average's
    state (with ``--ema``) and ``meta``. When the best weights are the current ones (the epoch just
    ended was the best), they are written once: a third less to write for SGD's state."""
    weights = state_dict_for_saving(model)
    tensors = {f"model.{k}": v for k, v in weights.items()}
    if ema_state is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema_state.items()})
    best_is_model = best_weights is not None and _same_tensors(best_weights, weights)
    if best_weights is not None and not best_is_model:
        tensors.update({f"best.{k}": v.contiguous() for k, v in best_weights.items()})
    optimizer_tensors, optimizer_meta = _split_optimizer_state(optimizer)
    tensors.update(optimizer_tensors)
    tensors.update({f"rng.{k}": v.cpu().contiguous() for k, v in rng_states.items()})
    payload = {**meta, "optimizer": optimizer_meta, "best_is_model": best_is_model}
    text = json.dumps(payload)
    metadata = {_STATE_KEY: text, _DIGEST_KEY: _state_digest(text, tensors)}
    atomic_write_tensors(path, tensors, metadata=metadata)


def _state_digest(text: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the metadata and every tensor's name, dtype, shape and bytes: a changed byte
    anywhere in the state (a bad disk, a hand edit) makes the file's digest disagree."""
    digest = hashlib.sha256(text.encode("utf-8"))
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k].cpu(), second[k]) for k in first)


def load_training_state(path: Path) -> dict:
    """Read a state file: {"model", "best", "optimizer", "rng", "ema": tensors by name, "meta": dict}."""
    try:
        with safe_open(str(path), framework="pt") as file:
            header = file.metadata()
            text = header[_STATE_KEY]
            tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (not iterable)
        meta = json.loads(text)
    except Exception as error:  # safetensors raises its own error types for truncated files
        raise ImgclfError(f"{path}: not a readable imgclf training state ({error})") from None
    recorded = header.get(_DIGEST_KEY)
    if recorded is not None and recorded != _state_digest(text, tensors):
        raise ImgclfError(f"{path}: damaged (its contents differ from those written: SHA-256 mismatch)")
    if not isinstance(meta, dict) or not isinstance(meta.get("optimizer"), dict):
        raise ImgclfError(f"{path}: not a readable imgclf training state (no optimizer state)")

    def strip(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    model = strip("model.")
    return {
        "model": model,
        "best": dict(model) if meta.pop("best_is_model", False) else strip("best.") or None,
        "optimizer": _join_optimizer_state(tensors, meta.pop("optimizer")),
        "rng": strip("rng."),
        "ema": strip("ema.") or None,
        "meta": meta,
    }


# A run folder keeps two training states: the latest, and the one before it, kept until the
# latest is completely written (a crash between the renames, or a truncated copy, falls back).
STATE_FILE = "training_state.safetensors"
PREVIOUS_STATE_FILE = "training_state.prev.safetensors"


def has_training_state(folder: Path) -> bool:
    return any((Path(folder) / name).is_file() for name in (STATE_FILE, PREVIOUS_STATE_FILE))


@dataclass
class TrainingState:
    """A run's training state, typed: what ``write`` saves after an epoch (or inside one) and what
    a resume restores, side by side. The file holds the weights, the optimizer's and the weight
    average's state and the RNG states as tensors, and the rest as JSON (``save_training_state``).

    ``stage``: the index of the training stage it was written in (a resume at a stage boundary
    starts the next stage fresh, as an uninterrupted run does); ``world_size``: the processes that
    wrote it; ``config``: the configuration to finish the run with; ``data``: the data's identity
    (source, classes, split fingerprints), so a resume on other images is refused."""

    fit: FitState
    weights: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    config: TrainConfig
    stage: int = 0
    world_size: int = 1
    data: dict | None = None

    @staticmethod
    def write(
        folder: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        fit_state: FitState,
        rng_states: dict[str, torch.Tensor],
        where: StateOrigin,
        ema_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """The training state of a run in ``folder``; the latest state becomes the previous one first."""
        current, previous = Path(folder) / STATE_FILE, Path(folder) / PREVIOUS_STATE_FILE
        if current.exists():
            os.replace(current, previous)  # keep the previous one until the new one is complete
        meta = {
            "epoch": fit_state.epoch,
            "step": fit_state.step,
            "best_epoch": fit_state.best_epoch,
            "best_val_accuracy": fit_state.best_val_accuracy,
            "history": fit_state.history,
            "epochs_without_improvement": fit_state.epochs_without_improvement,
            "epoch_progress": fit_state.epoch_progress,
            "stopped_early": fit_state.stopped_early,  # early stopping or the deadline ended the run here
            "stage": where.stage,
            "world_size": where.world_size,
            "config": where.config,
            "data": where.data,
        }
        save_training_state(current, model, optimizer, fit_state.best_weights, rng_states, meta, ema_state)

    @classmethod
    def read(cls, path: Path) -> TrainingState:
        """One state file, its values checked (ImgclfError naming the file when one is bad)."""
        saved = load_training_state(path)
        meta = saved["meta"]
        config = check_state_meta(path, meta)
        fit = FitState(
            epoch=meta["epoch"],
            step=meta["step"],
            best_epoch=meta["best_epoch"],
            best_val_accuracy=meta.get("best_val_accuracy", 0.0),
            best_weights=saved["best"],
            epochs_without_improvement=meta["epochs_without_improvement"],
            history=meta["history"],
            epoch_progress=meta.get("epoch_progress") or {},
            stopped_early=bool(meta.get("stopped_early", False)),
        )
        return cls(fit, saved["model"], saved["optimizer"], saved["rng"], saved["ema"], config,
                   meta.get("stage", 0), meta.get("world_size", 1), meta.get("data"))  # fmt: skip

    @classmethod
    def latest(cls, folder: Path, warn) -> TrainingState:
        """The newest readable training state in ``folder``: the previous one when the latest is
        missing (a crash between the two renames) or damaged (a truncated copy), saying so through
        ``warn(text)``."""
        for path in (Path(folder) / STATE_FILE, Path(folder) / PREVIOUS_STATE_FILE):
            if not path.is_file():
                continue
            try:
                return cls.read(path)
            except ImgclfError as error:
                warn(f"warning: {error}; trying the previous training state")
        raise UsageError(f"{folder}: no readable training state to resume")

    @property
    def epoch(self) -> int:
        return self.fit.epoch

    @property
    def inside_epoch(self) -> bool:
        """Written during an epoch (its progress recorded), not at its end."""
        return bool(self.fit.epoch_progress)

    def restore(self, model: torch.nn.Module, augment_generator: torch.Generator) -> FitState:
        """The weights and the random streams as they were; the loop's state to continue from."""
        model.load_state_dict(self.weights)
        torch.set_rng_state(self.rng["torch"])
        augment_generator.set_state(self.rng["augment"])
        return self.fit

    def restore_optimizer(self, optimizer: torch.optim.Optimizer, ema=None) -> None:
        """The optimizer's moments (and the weight average) as they were: only within the stage
        that wrote them."""
        optimizer.load_state_dict(self.optimizer)
        if ema is not None and self.ema:
            ema.load_state_dict(self.ema)


@dataclass(frozen=True)
class StateOrigin:
    """Where in a run a training state is written: the stage, the processes, the configuration
    that finishes the run, and the data's identity."""

    stage: int
    world_size: int
    config: dict
    data: dict


def check_state_meta(path: Path, meta: dict) -> TrainConfig:
    """The values a resume relies on, checked before any is used (a damaged or hand-edited state
    is refused, so the previous one is tried)."""

    def counter(key: str) -> int:
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ImgclfError(f"{path}: {key} must be a count, not {value!r}")
        return value

    for key in ("step", "best_epoch", "epochs_without_improvement"):
        counter(key)
    if "stage" in meta:
        counter("stage")
    epoch = counter("epoch")
    if not isinstance(meta.get("history"), list) or not all(isinstance(row, dict) for row in meta["history"]):
        raise ImgclfError(f"{path}: history must be a list of epoch records")
    if not isinstance(meta.get("config"), dict):
        raise ImgclfError(f"{path}: no training configuration")
    config = TrainConfig.from_dict(meta["config"])  # raises UsageError naming a bad value
    if not isinstance(config.epochs, int) or epoch > config.epochs:
        raise ImgclfError(f"{path}: epoch {epoch} is past the run's {config.epochs} epochs")
    if len(meta["history"]) != epoch:
        raise ImgclfError(f"{path}: {len(meta['history'])} epoch records for epoch {epoch}")
    return config
