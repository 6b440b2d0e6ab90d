"""Run settings: the YAML file format of ``qgn train`` and ``--set key=value`` overrides.

A run file has three sections::

    model:            # QGNConfig fields; `preset: tiny` starts from QGNConfig.tiny()
      preset: default
      num_queries: 60
    data:             # DataSettings fields
      path: /data/Twitter10000_v2.0
      image_dir: /data/twitter-images
    train:            # TrainSettings fields
      epochs: 50

``--set train.lr=1e-4 --set model.text_extract_layers=[1,4,7,10]`` overrides any field; values
are parsed as YAML, so numbers, booleans, lists and null work as expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from qgn.errors import QGNError
from qgn.modeling.configuration_qgn import QGNConfig


@dataclass
class DataSettings:
    """Where the data is and how to treat missing images.

    Attributes:
        path: a Twitter-GMNER / FMNERG folder (``txt/`` + ``xml/``), a folder of
            ``{split}.jsonl`` files, or ``synthetic`` for the embedded demo benchmark.
        image_dir: image folder (flat, or with ``twitter2015_images/`` and
            ``twitter2017_images/``); ``null`` means the layout's own ``images/`` folder if any.
        missing_images: ``fail`` (default), ``skip`` the post, or ``text_only`` (keep the post
            and feed a blank image).
        fmnerg_xml_dir: the GMNER v2.0 ``xml/`` folder that Twitter-FMNERG boxes come from.
        train_split, dev_split, test_split: split names.
        tokenizer: ``null`` loads the tokenizer of ``model.text_encoder``; ``words`` builds a
            small WordPiece vocabulary from the training words (tiny models trained from scratch).
        cache_images: keep the resized pixels of every post in memory after its first use
            (false; the demo turns it on: 479 KB a post at 192 px, 652 KB at 224 px). A split
            whose cache would take more than half of the memory free is not cached (a warning).
    """

    path: str | None = None
    image_dir: str | None = None
    missing_images: str = "fail"
    fmnerg_xml_dir: str | None = None
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    tokenizer: str | None = None
    cache_images: bool = False


LR_SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class TrainSettings:
    """The training recipe; defaults are the paper's (Sec. IV-A) where it gives one.

    Attributes:
        epochs: 50 (paper). batch_size: global batch size over all processes, 16 (paper).
        lr: 2e-5 (paper), for the pretrained encoders. head_lr: learning rate of the randomly
            initialised QGN modules; ``null`` means ``lr``.
        weight_decay: AdamW weight decay (0.01; not in the paper).
        warmup_ratio: linear warm-up over this fraction of the steps, then linear decay (0.05).
        lr_schedule: what follows the warm-up: ``linear`` decay to 0 (the default), ``cosine``
            decay to 0, or ``constant`` (not in the paper, which gives only the warm-up).
        layer_decay: layer-wise learning-rate decay of the pretrained encoders (1.0 = off; not in
            the paper; ELECTRA / BEiT fine-tuning): the top of each encoder (what sits above its
            last layer, or else its last layer) learns at ``lr``, and every step down (layers,
            then the embeddings) multiplies the rate by ``layer_decay``. Lower layers, which hold
            the general features, move less.
        max_grad_norm: gradient clipping (1.0; not in the paper; 0 disables).
        augment_flip, augment_zoom: probabilities of a left-right mirror and of a zoom-out of each
            training post, boxes moved with the pixels (0 = off, the paper's training;
            :mod:`qgn.data.augment`). augment_min_scale: the smallest zoom-out factor (0.6).
        grad_accum_steps: gradient accumulation for small GPUs (1).
        mixed_precision: ``no``, ``bf16``, ``fp16`` or ``auto`` autocast; matcher and losses stay
            fp32. bf16 also runs on CPUs with AMX / AVX-512 bf16 units; ``auto`` picks bf16 where
            the GPU or CPU has bf16 units and fp32 elsewhere (``qgn.engine.precision``).
        seed: base seed; each process uses ``seed + rank``. deterministic: deterministic kernels.
        eval_batch_size: batch size for dev / test prediction.
        num_workers: DataLoader workers.
        checkpoint_every_steps: also checkpoint inside an epoch every N optimizer steps (0: off).
        checkpoint_every_minutes: also checkpoint inside an epoch when this many minutes have
            passed since the last checkpoint (10; 0: off), so a SIGKILL or power cut loses at most
            that much work. Ctrl-C and SIGTERM save where they stopped either way.
        max_steps: stop after this many optimizer steps (0: no limit; for smoke tests).
        eval_every_epochs: evaluate on dev every N epochs (1, as the paper); the last epoch is
            always evaluated.
        select_metric: the dev micro F1 that picks the best checkpoint: ``GMNER`` (the paper's
            main metric), or ``MNER`` for text-only models, which cannot ground.
        tune_thresholds: after training, choose ``score_threshold``, ``no_target_threshold`` and
            ``remove_overlaps`` on dev for the best checkpoint (by ``select_metric``) and store
            them in it (true; not in the paper, which gives no thresholds).
    """

    epochs: int = 50
    batch_size: int = 16
    lr: float = 2e-5
    head_lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    lr_schedule: str = "linear"
    layer_decay: float = 1.0
    augment_flip: float = 0.0
    augment_zoom: float = 0.0
    augment_min_scale: float = 0.6
    max_grad_norm: float = 1.0
    grad_accum_steps: int = 1
    mixed_precision: str = "no"
    seed: int = 42
    deterministic: bool = False
    eval_batch_size: int = 32
    num_workers: int = 0
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 10.0
    max_steps: int = 0
    eval_every_epochs: int = 1
    select_metric: str = "GMNER"
    tune_thresholds: bool = True


@dataclass
class RunSettings:
    model: QGNConfig = field(default_factory=QGNConfig)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    model_preset: str = "default"

    def to_dict(self) -> dict[str, Any]:
        model = self.model.to_dict()
        return {
            "model": {"preset": self.model_preset, **model},
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    def with_absolute_paths(self) -> RunSettings:
        """The data paths (and encoder paths that are local folders) made absolute, so that a
        run's ``config.yaml`` resumes from any working directory."""
        absolute = lambda p: str(Path(p).absolute()) if p else p  # noqa: E731
        data = dataclasses.replace(
            self.data,
            path=absolute(self.data.path),
            image_dir=absolute(self.data.image_dir),
            fmnerg_xml_dir=absolute(self.data.fmnerg_xml_dir),
        )
        model = self.model
        for name in ("text_encoder", "vision_encoder"):
            value = getattr(model, name, None)
            if value and Path(value).is_dir() and not Path(value).is_absolute():
                model = model.replace(**{name: absolute(value)})
        return dataclasses.replace(self, model=model, data=data)


def _check_fields(cls: type, values: dict[str, Any], section: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise QGNError(f"unknown {section} setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _describe(kind: Any) -> str:
    """A field type in the words of a YAML user: ``list[int]`` -> "a list of integers"."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return "anything"
    if kind is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else ""
        )
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, tuple, set):
        return f"a list of {_PLURALS.get(args[0], _describe(args[0])) if args else 'values'}"
    if origin is dict or kind is dict:
        return "a mapping (e.g. {key: value})"
    return _NAMES.get(kind, getattr(kind, "__name__", str(kind)))


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def _conform(value: Any, kind: Any) -> tuple[bool, Any]:
    """``(True, value)`` when ``value`` fits the type ``kind`` (an integral float is taken as an
    int, an int as a float; a bool is never a number), else ``(False, value)``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True, value
    if kind is type(None):
        return value is None, value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            ok, out = _conform(value, option)
            if ok:
                return True, out
        return False, value
    if origin is typing.Literal:
        return value in args, value
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if kind is str:
        return isinstance(value, str), value
    if origin in (list, tuple, set) or kind in (list, tuple, set):
        if not isinstance(value, (list, tuple)):
            return False, value
        items = []
        for item in value:
            ok, out = _conform(item, args[0]) if args else (True, item)
            if not ok:
                return False, value
            items.append(out)
        return True, items
    if origin is dict or kind is dict:
        return isinstance(value, dict), value
    return True, value  # a type this check does not know: left to the field's own validation


def _check_types(cls: type, values: dict[str, Any], section: str) -> dict[str, Any]:
    """Each value of the type its dataclass field declares (read from the annotations, so a field
    added later is checked too), so that ``--set model.num_queries=abc`` is one clear line, not a
    crash mid-run. Integral floats are accepted for ints (``--set train.epochs=5.0``)."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, value in values.items():
        if name not in hints:
            continue
        ok, out[name] = _conform(value, hints[name])
        if not ok:
            raise QGNError(f"{section}.{name} must be {_describe(hints[name])}, got {value!r}")
    return out


def settings_from_dict(raw: dict[str, Any]) -> RunSettings:
    raw = dict(raw or {})
    unknown = sorted(set(raw) - {"model", "data", "train"})
    if unknown:
        raise QGNError(f"unknown section(s) {unknown}; a run file has model, data and train")
    model = dict(raw.get("model") or {})
    preset = model.pop("preset", "default")
    if preset not in ("default", "tiny"):
        raise QGNError(f"model.preset must be 'default' or 'tiny', got {preset!r}")
    _check_fields(QGNConfig, model, "model")
    model = _check_types(QGNConfig, model, "model")
    try:
        config = QGNConfig.tiny(**model) if preset == "tiny" else QGNConfig(**model)
    except (TypeError, ValueError) as err:
        # QGNConfig.validate names the field first: say which section it is in.
        message = str(err)
        named = message.split(" ", 1)[0] in {f.name for f in dataclasses.fields(QGNConfig)}
        raise QGNError(f"model.{message}" if named else f"invalid model settings: {message}") from None
    data, train = dict(raw.get("data") or {}), dict(raw.get("train") or {})
    _check_fields(DataSettings, data, "data")
    _check_fields(TrainSettings, train, "train")
    data, train = _check_types(DataSettings, data, "data"), _check_types(TrainSettings, train, "train")
    settings = RunSettings(config, DataSettings(**data), TrainSettings(**train), preset)
    t = settings.train
    for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum_steps", "eval_every_epochs"):
        if getattr(t, name) < 1:
            raise QGNError(f"train.{name} must be at least 1, got {getattr(t, name)}")
    for name in ("checkpoint_every_steps", "checkpoint_every_minutes", "max_steps", "num_workers"):
        if getattr(t, name) < 0:
            raise QGNError(f"train.{name} must be 0 or more, got {getattr(t, name)}")
    if settings.data.missing_images not in ("fail", "skip", "text_only"):
        raise QGNError(f"data.missing_images must be fail, skip or text_only, got {settings.data.missing_images!r}")
    if settings.train.select_metric not in ("GMNER", "MNER", "EEG"):
        raise QGNError(f"train.select_metric must be GMNER, MNER or EEG, got {settings.train.select_metric!r}")
    if settings.train.lr_schedule not in LR_SCHEDULES:
        raise QGNError(
            f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {settings.train.lr_schedule!r}"
        )
    for name in ("augment_flip", "augment_zoom"):
        if not 0 <= getattr(settings.train, name) <= 1:
            raise QGNError(f"train.{name} is a probability in [0, 1], got {getattr(settings.train, name)}")
    if not 0 < settings.train.augment_min_scale <= 1:
        raise QGNError(f"train.augment_min_scale must be in (0, 1], got {settings.train.augment_min_scale}")
    if not 0 < settings.train.layer_decay <= 1:
        raise QGNError(f"train.layer_decay must be in (0, 1] (1 = off), got {settings.train.layer_decay}")
    if settings.train.mixed_precision not in ("no", "bf16", "fp16", "auto"):
        raise QGNError(f"train.mixed_precision must be no, bf16, fp16 or auto, got {settings.train.mixed_precision!r}")
    return settings


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw run dict."""
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise QGNError(f"--set expects section.key=value (e.g. train.lr=1e-4), got {item!r}")
        raw.setdefault(section, {})[name] = _parse_value(value)
    return raw


def _parse_value(text: str) -> Any:
    """YAML, plus plain-number forms YAML 1.1 reads as strings (``5e-4``)."""
    if not text.strip():
        return None
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def shipped_config_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("qgn.configs").iterdir() if p.name.endswith(".yaml"))


def load_run_file(name_or_path: str) -> dict[str, Any]:
    """Read a run YAML by path, or by the name of a config shipped in ``qgn/configs``."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = resources.files("qgn.configs") / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise QGNError(
                f"config {name_or_path!r} is neither a file nor a shipped config ({', '.join(shipped_config_names())})"
            )
        return yaml.safe_load(shipped.read_text(encoding="utf-8")) or {}
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def resolve_settings(config: str | None, overrides: list[str] | None = None) -> RunSettings:
    raw = load_run_file(config) if config else {}
    return settings_from_dict(apply_overrides(raw, overrides or []))
