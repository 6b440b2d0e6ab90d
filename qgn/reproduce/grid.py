"""The paper's tables as grids of runs: each row is a set of config switches on top of one config.

A row's runs are ordinary ``qgn train`` run directories, ``DIR/<table>/<row>/seed<k>/``; the full
model, a row of several tables, lives once in ``DIR/full/seed<k>/`` and every table reads it there.
Seeds are 1..K and set ``train.seed = k``, so ``--seeds 5`` after ``--seeds 3`` adds seeds 4 and 5.
A switch named ``train.<key>`` sets the ``train`` section (only the QGN+ row of ``--plus`` has them).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from qgn.errors import QGNError
from qgn.modeling.configuration_qgn import layer_schedule

TABLES = ("I", "II", "III", "IV", "V", "VI", "fig3")
FULL = "full"
DEFAULT_QUERY_SWEEP = (10, 20, 40, 60, 80, 100)
# Table VI: where the ViT features are read. "fixed": at the config's vision_extract_layers (the paper's
# V = {2, 5, 8, 11}; the paper varies where text is injected, not what is read); "follow": at the
# injection layers, an option (it also changes how deep the ViT runs).
VI_VISUAL_LAYERS = ("fixed", "follow")


@dataclass(frozen=True)
class Row:
    """One row of a table: its label as the paper prints it and the model switches it sets."""

    table: str
    label: str
    switches: dict[str, Any] = field(default_factory=dict)
    variant: str = ""  # appended to the run folder's name, so that another variant never reuses its runs
    folder: str = ""  # the run folder's name, when not made from the label (the QGN+ row)

    @property
    def is_full(self) -> bool:
        return not self.switches

    @property
    def slug(self) -> str:
        if self.is_full:
            return FULL
        if self.folder:
            return self.folder
        slug = re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")
        return f"{slug}-{self.variant}" if self.variant else slug


def _vi(ext_stride: int, ext_start: int, inj_stride: int, inj_start: int, visual: str) -> dict[str, Any]:
    # Table VI varies J (the BERT layers fused) and the ViT injection layers; the ViT features stay at
    # the config's V unless visual == "follow" (then V = the injection layers).
    inject = layer_schedule(inj_start, inj_stride)
    switches = {"text_extract_layers": layer_schedule(ext_start, ext_stride), "vision_inject_layers": inject}
    return {**switches, "vision_extract_layers": inject} if visual == "follow" else switches


@dataclass(frozen=True)
class Plus:
    """``--plus``: a config beyond the paper, as an extra row of Table I. ``switches`` are what it
    changes on the base config: ``model`` keys as they are, ``train`` keys as ``train.<key>``."""

    name: str
    switches: dict[str, Any]

    @property
    def label(self) -> str:
        return f"QGN+ ({self.name}, not the paper's)"

    def row(self) -> Row:
        # The folder names the config and a digest of its switches: a changed plus config (or a base
        # config it now differs from otherwise) never reuses the runs of another.
        digest = hashlib.sha1(json.dumps(self.switches, sort_keys=True).encode()).hexdigest()[:8]
        name = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return Row("I", self.label, dict(self.switches), folder=f"qgn-plus-{name}-{digest}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "switches": self.switches}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Plus | None:
        return cls(data["name"], dict(data["switches"])) if data else None


def plus_switches(base: dict[str, Any], plus: dict[str, Any]) -> dict[str, Any]:
    """What the run dict ``plus`` changes on the run dict ``base``, both with their defaults filled
    (``settings_from_dict(...).to_dict()``): every ``model`` key whose value differs, and every ``train``
    key that differs as ``train.<key>`` (``train.seed`` aside: the grid sets it). ``data`` is not
    compared (the base's is used). Refused: different presets, or no difference at all."""
    from qgn.engine.settings import settings_from_dict

    base_full, plus_full = settings_from_dict(base).to_dict(), settings_from_dict(plus).to_dict()
    base_model, plus_model = dict(base_full["model"]), dict(plus_full["model"])
    base_preset, plus_preset = base_model.pop("preset"), plus_model.pop("preset")
    if base_preset != plus_preset:
        raise QGNError(
            f"--plus: its model.preset is {plus_preset!r} but the base config's is {base_preset!r}; a QGN+ row "
            "changes settings on the base model, give configs of the same preset"
        )
    switches = {k: v for k, v in plus_model.items() if k not in base_model or base_model[k] != v}
    switches.update(
        {
            f"train.{k}": v
            for k, v in plus_full["train"].items()
            if k != "seed" and (k not in base_full["train"] or base_full["train"][k] != v)
        }
    )
    if not switches:
        raise QGNError("--plus: its model and train sections are the base config's: no extra row to run")
    return switches


VI_SCHEDULES = (
    (1, 1, 3, 2),
    (2, 1, 3, 2),
    (3, 2, 3, 2),
    (3, 3, 3, 2),
    (3, 1, 1, 2),
    (3, 1, 2, 2),
    (3, 1, 3, 1),
    (3, 1, 3, 3),
)  # the paper's rows after the full model's 3 1 3 2, in its order


def table_rows(
    table: str,
    query_sweep: tuple[int, ...] = DEFAULT_QUERY_SWEEP,
    base_model: dict[str, Any] | None = None,
    vi_visual: str = "fixed",
    plus: Plus | None = None,
) -> list[Row]:
    """The rows of ``table`` in the paper's order; the full model's row has no switches.

    A switch that sets what ``base_model`` (the run config's ``model`` section; the paper's defaults
    when ``None``) already has is dropped, so a row equal to the full model is the full model and
    shares its runs (Fig. 3's Nq = 60 with the paper configs). ``plus``: Table I gets its row after
    QGN's, with its switches as they are (they were taken against the base config).
    """
    if vi_visual not in VI_VISUAL_LAYERS:
        raise QGNError(f"Table VI visual layers must be one of {', '.join(VI_VISUAL_LAYERS)}, got {vi_visual!r}")
    off = lambda *names: {f"use_{n}": False for n in names}  # noqa: E731
    rows: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "I": [("QGN", {})],
        "II": [("QGN", {})],
        "III": [
            ("MQA", off("hvla", "mqd")),
            ("HVLA", off("mqa", "mqd")),
            ("MQD", off("mqa", "hvla")),
            ("MQA+HVLA", off("mqd")),
            ("MQA+MQD", off("hvla")),
            ("HVLA+MQD", off("mqa")),
            ("MQA+HVLA+MQD", {}),
        ],
        "IV": [
            ("L_pred", {"lambda_nt": 0.0, "lambda_con": 0.0}),
            ("L_pred+L_nt", {"lambda_con": 0.0}),
            ("L_pred+L_con", {"lambda_nt": 0.0}),
            ("L_pred+L_nt+L_con", {}),
        ],
        "V": [
            ("random queries (full)", {}),
            ("batch-shared query parameters", {"query_init": "batch_shared"}),
            ("mean-pooled text queries", {"query_init": "mean_pooled_text"}),
            ("attention-pooled text queries", {"query_init": "attention_pooled_text"}),
            ("w/o TQC", off("tqc")),
            ("w/o JCA", off("jca")),
            ("w/o VTF", off("vtf")),
            ("w/o FDE", off("fde")),
            ("w/o MRE", off("mre")),
        ],
        "VI": [("3,1,3,2", {})] + [(",".join(map(str, s)), _vi(*s, vi_visual)) for s in VI_SCHEDULES],
        "fig3": [(f"Nq={n}", {"num_queries": n}) for n in query_sweep],
    }
    if table not in rows:
        raise QGNError(f"unknown table {table!r}; choose from {', '.join(TABLES)}")
    if base_model is None:
        from qgn.modeling.configuration_qgn import QGNConfig

        base_model = QGNConfig().to_dict()
    variant = "v-follows-injection" if table == "VI" and vi_visual == "follow" else ""
    out = []
    for label, switches in rows[table]:
        changed = {
            k: v for k, v in switches.items() if k.startswith("train.") or k not in base_model or base_model[k] != v
        }
        out.append(Row(table, label, changed, variant if changed else ""))
    if table == "I" and plus is not None:
        out.append(plus.row())
    return out


def paper_tables() -> dict[str, Any]:
    """The paper's numbers (``paper_tables.json``), by table and row."""
    return json.loads(resources.files("qgn.reproduce").joinpath("paper_tables.json").read_text(encoding="utf-8"))


def parse_tables(text: str) -> list[str]:
    """``--tables``: comma-separated table names, or ``all`` (every table, Fig. 3 included)."""
    if text.strip() == "all":
        return list(TABLES)
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in TABLES]
    if unknown or not wanted:
        raise QGNError(f"--tables {text!r}: choose from {', '.join(TABLES)} (comma-separated)")
    return [t for t in TABLES if t in wanted]  # paper order, no repeats


@dataclass(frozen=True)
class Run:
    """One training run: a row's switches (on the GMNER or the FMNERG config) and a seed."""

    key: str  # "<config kind>/<row slug>", e.g. "gmner/full", shared by every table that has the row
    kind: str  # "gmner" or "fmnerg" (Table II trains on the FMNERG config)
    switches: tuple[tuple[str, Any], ...]
    seed: int
    path: Path

    @property
    def overrides(self) -> list[str]:
        section = lambda k: k if k.startswith("train.") else f"model.{k}"  # noqa: E731
        return [f"{section(k)}={json.dumps(v)}" for k, v in self.switches] + [f"train.seed={self.seed}"]


def run_dir(root: Path, row: Row, seed: int) -> Path:
    if row.table == "II":
        return root / "II" / "fmnerg-full" / f"seed{seed}"
    if row.is_full:
        return root / FULL / f"seed{seed}"
    return root / row.table / row.slug / f"seed{seed}"


def plan(
    root: Path,
    tables: list[str],
    seeds: int,
    query_sweep: tuple[int, ...] = DEFAULT_QUERY_SWEEP,
    base_model: dict[str, Any] | None = None,
    vi_visual: str = "fixed",
    plus: Plus | None = None,
) -> list[Run]:
    """Every run the tables need, each once (the full model is shared), in a fixed order
    (``base_model``, ``vi_visual``, ``plus``: as :func:`table_rows`)."""
    runs: dict[Path, Run] = {}
    for table in tables:
        for row in table_rows(table, query_sweep, base_model, vi_visual, plus):
            kind = "fmnerg" if table == "II" else "gmner"
            for seed in range(1, seeds + 1):
                path = run_dir(root, row, seed)
                if path not in runs:
                    runs[path] = Run(f"{kind}/{row.slug}", kind, tuple(sorted(row.switches.items())), seed, path)
    return list(runs.values())


def run_config(base: dict[str, Any], run: Run) -> dict[str, Any]:
    """The settings of ``run``: ``base`` (a run file as a dict) with the row's switches (``train.<key>``
    in ``train``, the others in ``model``) and seed, validated."""
    from qgn.engine.settings import settings_from_dict

    raw = {k: dict(v) for k, v in base.items()}
    for key, value in run.switches:
        if key.startswith("train."):
            raw["train"][key[len("train.") :]] = value
        else:
            raw["model"][key] = value
    raw["train"]["seed"] = run.seed
    settings_from_dict(raw)  # each row's switches are valid on this config (e.g. layers the encoders have)
    return raw


def status(run: Run) -> str:
    """``done`` (final_metrics.json written), ``interrupted`` (a checkpoint to resume) or ``new``."""
    if (run.path / "final_metrics.json").is_file():
        return "done"
    if (run.path / "checkpoint" / "trainer_state.json").is_file():
        return "interrupted"
    return "new"


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise QGNError(f"--shard {text!r}: give i/n with 0 <= i < n, e.g. 0/4")
    return int(match[1]), int(match[2])
