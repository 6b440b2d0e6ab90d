"""The pretrained encoders (paper Sec. III-A): a BERT-like text encoder and the CLIP vision tower.

Both come from ``transformers``. Built from ``QGNConfig.text_config`` / ``vision_config`` (random
weights, nothing downloaded) or loaded with ``from_pretrained`` from a hub name or a local
directory; after a load the encoder's config is written back into the ``QGNConfig`` so that a
saved checkpoint rebuilds offline.

Loading fails fast with a :class:`QGNError` naming the fix (download once, pass a directory)
instead of hanging on retries when the hub cannot be reached. The CLIP vision tower is not run
through its own ``forward``: :func:`run_vision_tower` drives its modules one by one so that HVLA
can inject text guidance between layers (paper eq. 3 and text around it).
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from qgn.errors import QGNError

logger = logging.getLogger(__name__)

_TRUE = {"1", "ON", "YES", "TRUE"}
HUB_PROBE_TIMEOUT_S = 3.0


# ----------------------------------------------------------------------------- loading
def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``).

    Read from the environment at call time (the libraries read it once at import time).
    """
    if any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):
        return False


def _hub_reachable() -> bool:
    """A TCP connect to the hub endpoint within a few seconds (the libraries retry for ~30 s)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe says nothing about a proxy; let the library try
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except (ImportError, AttributeError):
        endpoint = "https://huggingface.co"
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _load_failure(what: str, field: str, name: str, reason: str) -> QGNError:
    return QGNError(
        f"could not load {what} {name!r} ({reason}); download it once on a machine with internet, e.g. "
        f"`hf download {name} --local-dir /path/to/dir`, and pass {field}=/path/to/dir"
    )


def load_from_name_or_dir(loader: Callable[..., Any], name: str, what: str, field: str) -> Any:
    """``loader(name, **kw)`` (a ``from_pretrained``) that never hangs and fails with a QGNError.

    A directory is loaded directly. A hub name is tried from the local cache first, then from
    the hub unless offline mode is on or a quick probe finds the hub unreachable.

    Args:
        loader: e.g. ``BertModel.from_pretrained``; called with ``local_files_only`` for names.
        name: hub name or local directory.
        what / field: words for the message ("text encoder", "text_encoder").
    """
    if os.path.isdir(os.path.expanduser(name)):
        try:
            return loader(os.path.expanduser(name))
        except Exception as exc:  # a broken folder: say which and why, one line
            raise QGNError(f"could not load {what} from directory {name!r}: {exc}") from exc
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, not an "org/name" hub id
        raise QGNError(f"{what} directory {name!r} does not exist (give {field}=<existing directory or hub name>)")
    try:
        return loader(name, local_files_only=True)
    except Exception as cached_exc:  # not in the cache: go on to the hub below
        cache_error = cached_exc
    if hub_offline():
        raise _load_failure(
            what, field, name, "offline mode (HF_HUB_OFFLINE) is on and it is not in the cache"
        ) from cache_error
    if not _hub_reachable():
        raise _load_failure(
            what, field, name, "the Hugging Face hub is unreachable and it is not in the cache"
        ) from cache_error
    try:
        return loader(name)
    except Exception as exc:
        raise _load_failure(what, field, name, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc


def load_tokenizer(name_or_path: str) -> Any:
    """The (fast) tokenizer of the text encoder ``name_or_path`` (hub name or local directory)."""
    from transformers import AutoTokenizer

    return load_from_name_or_dir(AutoTokenizer.from_pretrained, name_or_path, "tokenizer", "text_encoder")


def _config_from_dict(data: dict[str, Any], default_type: str) -> Any:
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None) or default_type
    return AutoConfig.for_model(model_type, **data)


def build_text_encoder(config: Any, load_pretrained: bool = False) -> nn.Module:
    """The text encoder: loaded when ``load_pretrained`` or ``config.text_config`` is None, else
    built with random weights from ``config.text_config``. Writes the encoder's config back into
    ``config.text_config``. BERT's pooler is left out (QGN never uses it, and an unused module
    would get no gradient)."""
    from transformers import AutoModel

    if load_pretrained or config.text_config is None:

        def loader(name: str, **kw: Any) -> nn.Module:
            try:
                return AutoModel.from_pretrained(name, add_pooling_layer=False, **kw)
            except TypeError:  # an encoder class without a pooler option
                return AutoModel.from_pretrained(name, **kw)

        model = load_from_name_or_dir(_quiet(loader), config.text_encoder, "text encoder", "text_encoder")
    else:
        text_config = _config_from_dict(config.text_config, "bert")
        try:
            model = AutoModel.from_config(text_config, add_pooling_layer=False)
        except TypeError:
            model = AutoModel.from_config(text_config)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    config.text_config = model.config.to_dict()
    return model


def _quiet(loader: Callable[..., Any]) -> Callable[..., Any]:
    """``loader`` with transformers' warnings muted: loading the vision half of a full CLIP
    checkpoint (or BERT without its pooler) otherwise prints every unused weight as UNEXPECTED."""
    from transformers.utils import logging as hf_logging

    def quiet_loader(*args: Any, **kwargs: Any) -> Any:
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return loader(*args, **kwargs)
        finally:
            hf_logging.set_verbosity(level)

    return quiet_loader


def build_vision_encoder(config: Any, load_pretrained: bool = False) -> nn.Module:
    """The CLIP vision tower (``CLIPVisionModel``), from ``config.vision_config`` or loaded from
    ``config.vision_encoder`` (a CLIP *or* CLIP-vision checkpoint: ``CLIPVisionModel.from_pretrained``
    takes the vision half of a full CLIP). Writes its config back into ``config.vision_config``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if load_pretrained or config.vision_config is None:
        model = load_from_name_or_dir(
            _quiet(CLIPVisionModel.from_pretrained), config.vision_encoder, "vision encoder", "vision_encoder"
        )
    else:
        data = dict(config.vision_config)
        if data.get("model_type", "clip_vision_model") != "clip_vision_model":
            raise QGNError(f"vision_config must be a CLIP vision config, got model_type={data['model_type']!r}")
        data.pop("model_type", None)
        model = CLIPVisionModel(CLIPVisionConfig(**data))
    config.vision_config = model.config.to_dict()
    return model


# ----------------------------------------------------------------------------- running CLIP
def vision_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.ModuleList]:
    """``(embeddings, pre_layrnorm, encoder layers)`` of a CLIPVisionModel (transformers 5 keeps
    them on the model, 4.x on ``model.vision_model``)."""
    core: Any = getattr(model, "vision_model", model)
    return core.embeddings, core.pre_layrnorm, core.encoder.layers


def prune_vision_tower(model: nn.Module, num_layers: int) -> None:
    """Keep the first ``num_layers`` CLIP layers and drop ``post_layernorm``: QGN reads the
    tokens of chosen layers only, so later layers and the pooled-output norm would be dead
    weights (no gradient, wasted compute). Deterministic from the config, so checkpoints
    rebuild to the same structure."""
    core: Any = getattr(model, "vision_model", model)
    core.encoder.layers = core.encoder.layers[:num_layers]
    core.post_layernorm = nn.Identity()


def _layer_takes_causal_mask(layer: nn.Module) -> bool:
    return "causal_attention_mask" in inspect.signature(layer.forward).parameters


def run_vision_tower(
    model: nn.Module,
    pixel_values: torch.Tensor,
    extract_layers: Sequence[int],
    after_layer: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    token_padding: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Run the CLIP vision tower module by module.

    Args:
        model: a CLIPVisionModel (possibly pruned by :func:`prune_vision_tower`).
        pixel_values: (B, 3, H, H) CLIP-normalised images.
        extract_layers: 1-based layers whose output tokens are returned, in this order.
        after_layer: ``f(i, tokens) -> tokens`` called after layer ``i`` (1-based), before its
            tokens are extracted; HVLA's text injection.
        token_padding: (B, Nv) bool, True for tokens that are padding (patches of a padded
            image's border), which the self-attention then never attends to; ``None``: none.
    Returns:
        One (B, Nv, Dv) tensor per extracted layer; Nv = 1 + (H / patch)^2 (class token first).
    """
    embeddings, pre_norm, layers = vision_parts(model)
    hidden = pre_norm(embeddings(pixel_values))
    wanted = {layer: k for k, layer in enumerate(extract_layers)}
    features: list[torch.Tensor | None] = [None] * len(extract_layers)
    # transformers 4.x layers take a positional causal mask and return a tuple; 5.x neither.
    causal = bool(layers) and _layer_takes_causal_mask(layers[0])
    mask = None
    if token_padding is not None:
        # an additive (B, 1, 1, Nv) key mask, the form CLIP's eager and SDPA attention both take
        mask = torch.zeros(token_padding.shape, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(token_padding.to(hidden.device), torch.finfo(hidden.dtype).min)[:, None, None, :]
    for i, layer in enumerate(layers, start=1):
        out = layer(hidden, mask, causal_attention_mask=None) if causal else layer(hidden, mask)
        hidden = out[0] if isinstance(out, (tuple, list)) else out
        if after_layer is not None:
            hidden = after_layer(i, hidden)
        if i in wanted:
            features[wanted[i]] = hidden
    missing = [layer for layer, k in wanted.items() if features[k] is None]
    if missing:
        raise QGNError(f"vision layers {missing} requested but the vision tower has {len(layers)} layers")
    return features  # type: ignore[return-value]


def check_layers(name: str, layers: Sequence[int], available: int, encoder: str) -> None:
    """QGNError when a 1-based layer index of ``name`` exceeds the encoder's depth."""
    bad = [i for i in layers if not 1 <= int(i) <= available]
    if bad:
        raise QGNError(f"{name}={list(layers)}: {encoder} has {available} layers (1-based), so {bad} do not exist")
