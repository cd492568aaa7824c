"""Read and write generator checkpoints: the field's `.pt` format and fsg-ray's self-describing format.

The field's format (rosinality/stylegan2-pytorch and the CDC reference code) is a dict with `g`,
`d`, `g_ema` state dicts, sometimes only `g_ema` with a `module.` prefix on every key. It carries no
architecture, so the architecture is inferred from tensor shapes. fsg-ray's own format is the same
state dicts plus plain metadata (`format`, `model`, `step`, `method`, `source`, `config`, ...) and
optional training state, all loadable with `torch.load(weights_only=True)`: a checkpoint never runs code.
"""

from __future__ import annotations

import io
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fsg_ray import storage
from fsg_ray.nets.stylegan2 import Discriminator, Generator, ModelConfig, PatchHeads

FORMAT = "fsg-ray/1"
CHECKPOINT_FILE = "state.pt"
CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")
NETWORK_KEYS = ("g", "g_ema", "d")
SHIPPED_MODELS = {"toy:faces": Path(__file__).resolve().parent.parent / "assets" / "toy_faces.pt"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the network; the message names the file and key."""


class CheckpointMismatch(CheckpointError):
    pass


def checkpoint_dir_name(step: int) -> str:
    """Deterministic directory name, so a replayed step overwrites instead of duplicating."""
    return f"checkpoint_{step:06d}"


def resolve_checkpoint_uri(uri: str) -> str:
    """A checkpoint file, a checkpoint directory (`RUN/checkpoint_000400`), a run directory (its latest
    checkpoint) or a shipped model name -> a file URI."""
    if uri in SHIPPED_MODELS:
        return str(SHIPPED_MODELS[uri])
    if uri.startswith("toy:"):
        raise CheckpointError(f"{uri}: no such shipped model; shipped: {', '.join(SHIPPED_MODELS)}")
    if not storage.is_dir(uri):
        return uri
    if CHECKPOINT_FILE in storage.list_dir(uri):
        return storage.join(uri, CHECKPOINT_FILE)
    latest = latest_checkpoint_dir(uri)
    if latest is None:
        raise CheckpointError(f"{uri}: a directory with neither {CHECKPOINT_FILE} nor checkpoint_* subdirectories")
    return storage.join(uri, latest, CHECKPOINT_FILE)


def latest_checkpoint_dir(run_uri: str) -> str | None:
    steps = [(int(m.group(1)), name) for name in storage.list_dir(run_uri) if (m := CHECKPOINT_DIR.match(name))]
    return max(steps)[1] if steps else None


def read_checkpoint(uri: str) -> dict[str, Any]:
    """Load any supported checkpoint as an fsg-ray-format dict (field files are converted)."""
    file_uri = resolve_checkpoint_uri(uri)
    data = storage.read_bytes(file_uri)
    if not data:
        raise CheckpointError(f"{file_uri}: empty file (0 bytes)")
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{file_uri}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file_uri}: expected a dict checkpoint, got {type(raw).__name__}")
    ckpt = raw if raw.get("format") == FORMAT else _from_field_format(raw, file_uri)
    return {**ckpt, "uri": file_uri}


def _from_field_format(raw: dict[str, Any], uri: str) -> dict[str, Any]:
    states = {k: _strip_module_prefix(raw[k]) for k in NETWORK_KEYS if k in raw}
    if not states and all(isinstance(v, Tensor) for v in raw.values()) and raw:
        states = {"g_ema": _strip_module_prefix(raw)}
    if not states:
        raise CheckpointError(f"{uri}: none of the keys {NETWORK_KEYS} found; keys are {sorted(raw)[:8]}")
    g_state = states.get("g_ema", states.get("g"))
    model = infer_generator_config(g_state, uri) if g_state is not None else infer_discriminator_config(states["d"], uri)
    if g_state is not None and "d" in states:
        d_model = infer_discriminator_config(states["d"], uri)
        if d_model.size != model.size:
            raise CheckpointMismatch(f"{uri}: d is for {d_model.size}px but the generator is {model.size}px")
    return {"format": FORMAT, "model": asdict(model), "source": uri, **states}


def _strip_module_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _channel_config(channels: dict[int, int], base: dict[str, Any], uri: str) -> ModelConfig:
    """Find the (multiplier, cap) whose channel table gives exactly the observed channels."""
    caps: list[int | None] = [None, *sorted(set(channels.values()))]
    for cap in caps:
        for cm in (2, 1, 4, 3, 8, 6, 5, 7):
            config = ModelConfig(**base, channel_multiplier=cm, channel_max=cap)
            if all(config.channels(res) == c for res, c in channels.items()):
                return config
    raise CheckpointMismatch(f"{uri}: channel counts {channels} match no StyleGAN2 channel table")


def infer_generator_config(state: dict[str, Tensor], uri: str = "<state dict>") -> ModelConfig:
    try:
        style_layers = sorted(int(m.group(1)) for k in state if (m := re.match(r"^style\.(\d+)\.weight$", k)))
        n_to_rgbs = sum(1 for k in state if re.match(r"^to_rgbs\.\d+\.conv\.weight$", k))
        channels = {4: state["conv1.conv.weight"].shape[1]}
        for i in range(n_to_rgbs):
            channels[2 ** (i + 3)] = state[f"to_rgbs.{i}.conv.weight"].shape[2]
        base = {"size": 2 ** (n_to_rgbs + 2), "style_dim": state["style.1.weight"].shape[1], "n_mlp": len(style_layers)}
    except KeyError as exc:
        raise CheckpointMismatch(f"{uri}: not a StyleGAN2 generator state dict, missing key {exc.args[0]}") from exc
    return _channel_config(channels, base, uri)


def infer_discriminator_config(state: dict[str, Tensor], uri: str = "<state dict>") -> ModelConfig:
    try:
        n_blocks = sum(1 for k in state if re.match(r"^convs\.\d+\.conv1\.0\.weight$", k))
        log_size = n_blocks + 2
        channels = {2**log_size: state["convs.0.0.weight"].shape[0]}
        for b in range(1, n_blocks + 1):
            channels[2 ** (log_size - b)] = state[f"convs.{b}.conv2.1.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointMismatch(f"{uri}: not a StyleGAN2 discriminator state dict, missing key {exc.args[0]}") from exc
    return _channel_config(channels, {"size": 2**log_size}, uri)


def load_state_strict(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """`load_state_dict(strict=True)` with an error naming the first missing, unexpected or mis-shaped key."""
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointMismatch(f"{what}: missing key {key} (expected shape {list(tensor.shape)})")
        if state[key].shape != tensor.shape:
            raise CheckpointMismatch(f"{what}: {key}: expected {list(tensor.shape)}, got {list(state[key].shape)}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointMismatch(f"{what}: unexpected key {unexpected[0]}")
    module.load_state_dict(state, strict=True)


def model_config(ckpt: dict[str, Any]) -> ModelConfig:
    return ModelConfig(**ckpt["model"])


def build_generator(ckpt: dict[str, Any], which: str = "g_ema") -> Generator:
    if which not in ("g", "g_ema"):
        raise ValueError(f"which: expected 'g' or 'g_ema', got {which!r}")
    if which not in ckpt:
        raise CheckpointError(f"{ckpt.get('uri', 'checkpoint')}: has no {which!r}; it holds {[k for k in NETWORK_KEYS if k in ckpt]}")
    g = Generator(model_config(ckpt))
    load_state_strict(g, ckpt[which], f"{ckpt.get('uri', 'checkpoint')}[{which}]")
    return g.eval()


def build_discriminator(ckpt: dict[str, Any]) -> Discriminator:
    if "d" not in ckpt:
        raise CheckpointError(f"{ckpt.get('uri', 'checkpoint')}: has no discriminator 'd'")
    d = Discriminator(model_config(ckpt))
    load_state_strict(d, ckpt["d"], f"{ckpt.get('uri', 'checkpoint')}[d]")
    return d.eval()


def build_patch_heads(ckpt: dict[str, Any], d: Discriminator) -> PatchHeads:
    """The checkpoint's extra patch heads, or fresh ones when it has none (a source model)."""
    heads = PatchHeads(d.patch_map_channels())
    if "heads" in ckpt:
        load_state_strict(heads, ckpt["heads"], f"{ckpt.get('uri', 'checkpoint')}[heads]")
    return heads


def load_generator(uri: str, which: str = "g_ema") -> Generator:
    """A generator from a field `.pt`, an fsg-ray checkpoint, a run directory (latest) or `toy:faces`."""
    return build_generator(read_checkpoint(uri), which)


def load_discriminator(uri: str) -> Discriminator:
    return build_discriminator(read_checkpoint(uri))


def write_checkpoint(uri: str, ckpt: dict[str, Any]) -> None:
    """Serialise in memory, then one atomic write: readers never see half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def to_field_format(ckpt: dict[str, Any]) -> dict[str, dict[str, Tensor]]:
    """The networks only, under the field's keys, loadable by the reference code."""
    return {k: ckpt[k] for k in NETWORK_KEYS if k in ckpt}


def export_checkpoint(uri: str, out: str) -> list[str]:
    """Write any loadable checkpoint or run in the field's format; returns the keys written."""
    field = to_field_format(read_checkpoint(uri))
    write_checkpoint(out, field)
    return list(field)
