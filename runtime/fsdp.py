"""``trainer.strategy: fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) and its sharded
checkpoints (``torch.distributed.checkpoint``).

- :func:`shard_model` shards every child block of the model that holds parameters, then the
  root, with a mixed-precision policy from ``trainer.precision`` (``bf16-mixed``: bf16
  parameters in compute, fp32 gradient reduction; ``32``: none). The model stays the same
  object (``fully_shard`` changes it in place); its parameters become DTensor shards.
- A checkpoint is a folder: every rank writes its shards of the model and optimizer
  states (``torch.distributed.checkpoint``), and rank zero writes ``busloop.pt`` with the
  rest of the checkpoint (loop position, every rank's random state and pending logs,
  callbacks, schedulers, config), loadable with ``weights_only=True``. :func:`load_sharded`
  reads both back for an exact resume, on the same number of ranks or another.
- :func:`consolidate` (``python -m runtime.fsdp CHECKPOINT_DIR OUT.ckpt``) turns such a folder
  into one busloop checkpoint file with full tensors, for inference, export or a
  single-process run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from runtime import distributed as dist
from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.errors import ConfigError

if TYPE_CHECKING:
    from runtime.core import RuntimeCore as Runtime

__all__ = ["META_FILE", "consolidate", "is_sharded", "load_sharded", "save_sharded", "shard_model"]

#: The file in a sharded checkpoint folder that holds everything but the sharded tensors.
META_FILE = "busloop.pt"

#: The keys of a checkpoint that ``torch.distributed.checkpoint`` writes as shards.
_SHARDED_KEYS = ("state_dict", "optimizer_states")


def shard_model(rt: Runtime) -> nn.Module:
    """Apply ``fully_shard`` per block (the root's children with parameters), then to the
    root; return the model (sharded in place)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model = rt.model  # a plain module: RuntimeCore refuses Lightning-style ones under fsdp
    policy = MixedPrecisionPolicy()
    if rt.config.trainer.precision == "bf16-mixed":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.children():
        if any(True for _ in block.parameters()):
            fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def is_sharded(rt: Runtime) -> bool:
    """Whether the run trains an FSDP2-sharded model (its checkpoints are folders)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(rt._train_model, FSDPModule)


def save_sharded(rt: Runtime, checkpoint: dict[str, Any], target: Path) -> bool:
    """Write ``checkpoint`` as the folder ``target`` (call on every rank); returns whether this
    rank wrote the metadata file (rank zero). A failure on any rank raises on all."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(rt.model, rt.optimizers)
    dcp.save({"model": model_state, "optimizers": optimizer_state}, checkpoint_id=target)
    meta = {k: v for k, v in checkpoint.items() if k not in _SHARDED_KEYS}
    return dist.rank_zero_write(lambda: save_checkpoint(meta, target / META_FILE), str(target / META_FILE))


def load_sharded(rt: Runtime, path: Path) -> dict[str, Any]:
    """Load the shards of a checkpoint folder into the (sharded) model and optimizers, and
    return its metadata checkpoint (everything else, for :func:`runtime.resume.restore`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    meta = load_checkpoint(path / META_FILE, map_location="cpu")
    model_state, optimizer_state = get_state_dict(rt.model, rt.optimizers)
    dcp.load({"model": model_state, "optimizers": optimizer_state}, checkpoint_id=path)  # in place
    set_state_dict(rt.model, rt.optimizers, model_state_dict=model_state, optim_state_dict=optimizer_state)
    return meta


def full_state_dict(model: nn.Module) -> dict[str, Any]:
    """The sharded ``model``'s weights as full CPU tensors on rank zero (empty elsewhere): a
    collective, every rank calls it. For files that hold weights only (``save_weights_only``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_model_state_dict(model, options=options))


def consolidate(folder: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """One checkpoint file from a sharded checkpoint folder (run in a single process).

    The file holds the folder's metadata and the full model weights under ``state_dict``
    (the optimizer state is left out: it only resumes a sharded run) and loads with
    ``torch.load(out, weights_only=True)``.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    source = Path(folder)
    if not (source / META_FILE).is_file():
        raise ConfigError(f"{source}: not a sharded busloop checkpoint (no {META_FILE})")
    meta = load_checkpoint(source / META_FILE, map_location="cpu")
    with tempfile.TemporaryDirectory() as scratch:
        full = Path(scratch) / "full.pt"
        dcp_to_torch_save(source, full)
        tensors = torch.load(full, weights_only=True, map_location="cpu")
    weights = {k.removeprefix("model."): v for k, v in _flatten(tensors).items() if k.startswith("model.")}
    return save_checkpoint({**meta, "state_dict": weights}, Path(out))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"0.weight": t}}`` as ``{"model.0.weight": t}`` (dcp_to_torch_save nests
    by the saved top-level keys)."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def main(argv: list[str] | None = None) -> int:
    """``python -m runtime.fsdp CHECKPOINT_DIR OUT.ckpt``: consolidate a sharded checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m runtime.fsdp", description=consolidate.__doc__)
    parser.add_argument("folder", help="a sharded checkpoint folder (trainer.strategy=fsdp)")
    parser.add_argument("out", help="the single checkpoint file to write")
    args = parser.parse_args(argv)
    try:
        path = consolidate(args.folder, args.out)
    except ConfigError as exc:
        parser.exit(2, f"busloop: error: {exc}\n")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
