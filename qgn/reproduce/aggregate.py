"""``DIR/tables.md`` and ``DIR/tables.json``: our mean ± std over seeds beside the paper's numbers.

Only the test figures of each run's dev-selected checkpoint are read (``final_metrics.json``,
written by ``qgn train``: the best dev epoch, with the thresholds chosen on dev). A row whose runs
have not all finished shows what has (its n says how many) or ``missing``. With ``--plus``, Table I
has a second row of ours, QGN+, which the paper does not have (its ``paper`` is null).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from qgn.reproduce.grid import DEFAULT_QUERY_SWEEP, Plus, Row, paper_tables, run_dir, table_rows

METRIC_COLUMNS = [
    ("GMNER", "recall"),
    ("GMNER", "precision"),
    ("GMNER", "f1"),
    ("MNER", "recall"),
    ("MNER", "precision"),
    ("MNER", "f1"),
    ("EEG", "recall"),
    ("EEG", "precision"),
    ("EEG", "f1"),
]
# Table II's coarse categories, in the paper's order, as qgn's FMNERG scorer names them.
COARSE = {
    "Person": "person",
    "Location": "location",
    "Building": "building",
    "Organization": "organization",
    "Product": "product",
    "Art": "art",
    "Event": "event",
    "Other": "other",
}


def _finals(root: Path, row: Row, seeds: int) -> list[dict[str, Any]]:
    out = []
    for seed in range(1, seeds + 1):
        file = run_dir(root, row, seed) / "final_metrics.json"
        if file.is_file():
            out.append(json.loads(file.read_text(encoding="utf-8")))
    return out


def _stats(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
        "values": values,
    }


def _coarse_f1(final: dict[str, Any], category: str) -> float | None:
    if category == "All":
        return final["test"]["GMNER"]["f1"]
    rows = final["test"].get("fmnerg_coarse") or {}
    wanted = COARSE[category]
    for name, row in rows.items():
        if name.lower() == wanted:
            return row["f1"]
    return None


def collect(
    root: Path,
    tables: list[str],
    seeds: int,
    query_sweep: tuple[int, ...] = DEFAULT_QUERY_SWEEP,
    base_model: dict[str, Any] | None = None,
    vi_visual: str = "fixed",
    plus: Plus | None = None,
) -> dict[str, Any]:
    """``{table: {"title", "rows": [...]}}`` with our statistics and the paper's numbers per row
    (``base_model``, ``vi_visual``, ``plus``: as :func:`qgn.reproduce.grid.table_rows`, to find the runs)."""
    paper = paper_tables()
    out: dict[str, Any] = {
        "source_of_paper_numbers": paper["source"],
        "seeds": seeds,
        "vi_visual_layers": vi_visual,
        "tables": {},
    }
    if plus is not None:  # recorded only with --plus: without it tables.json is as before
        out["plus"] = plus.to_json()
    full_row = Row("III", "full")
    full = _stats([f["test"]["GMNER"]["f1"] for f in _finals(root, full_row, seeds)])
    for table in tables:
        info = paper[table]
        rows = []
        for row in table_rows(table, query_sweep, base_model, vi_visual, plus):
            finals = _finals(root, row, seeds)
            entry: dict[str, Any] = {"row": row.label, "switches": row.switches, "runs_finished": len(finals)}
            if table == "I":
                entry["ours"] = {
                    f"{m} {c[0].upper() if c != 'f1' else 'F1'}": _stats([f["test"][m][c] for f in finals])
                    for m, c in METRIC_COLUMNS
                }
                # the paper has no QGN+ row: only the QGN row (the full model) has its numbers
                entry["paper"] = dict(zip(info["columns"], info["rows"]["QGN"])) if row.is_full else None
            elif table == "II":
                for category in [*COARSE, "All"]:
                    values = [v for v in (_coarse_f1(f, category) for f in finals) if v is not None]
                    rows.append(
                        {
                            "row": category,
                            "runs_finished": len(finals),
                            "ours": _stats(values),
                            "paper": dict(zip(info["columns"], info["rows"][category])),
                        }
                    )
                continue
            else:
                ours = _stats([f["test"]["GMNER"]["f1"] for f in finals])
                entry["ours"] = ours
                entry["delta"] = None if ours is None or full is None else ours["mean"] - full["mean"]
                entry["paper"] = info["rows"].get(row.label)
            rows.append(entry)
        out["tables"][table] = {"title": info["title"], "note": info.get("note"), "rows": rows}
    return out


def _cell(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "missing"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f} (n={stats['n']})"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# The paper's tables, reproduced with qgn",
        "",
        f"Ours: test F1 (%) of the dev-selected checkpoint, mean ± std over seeds (n = runs finished, of "
        f"{result['seeds']}); Δ against our full model, as the paper's Δ is against its own. "
        f"Paper: {result['source_of_paper_numbers']}",
        "",
    ]
    for table, block in result["tables"].items():
        lines += [f"## {block['title']}", ""]
        if block.get("note"):
            lines += [f"Note: {block['note']}", ""]
        if table == "VI":
            lines += [
                "ViT features read at "
                + (
                    "the injection layers (--vi-visual-layers follow)"
                    if result.get("vi_visual_layers") == "follow"
                    else "the config's vision_extract_layers in every row"
                )
                + ".",
                "",
            ]
        if table == "I" and len(block["rows"]) == 1:
            row = block["rows"][0]
            lines += ["| column | ours | paper (QGN) |", "|---|---|---|"]
            for column, paper_value in row["paper"].items():
                lines.append(f"| {column} | {_cell(row['ours'].get(column))} | {paper_value:.2f} |")
        elif table == "I":  # QGN and the QGN+ row of --plus, a column each, then the paper's QGN
            rows, paper_row = block["rows"], block["rows"][0]["paper"]
            lines += [
                "| column | " + " | ".join(f"ours {r['row']}" for r in rows) + " | paper (QGN) |",
                "|---" * (len(rows) + 2) + "|",
            ]
            for column, paper_value in paper_row.items():
                cells = " | ".join(_cell(r["ours"].get(column)) for r in rows)
                lines.append(f"| {column} | {cells} | {paper_value:.2f} |")
            for r in rows[1:]:
                switches = ", ".join(f"{k}={json.dumps(v)}" for k, v in r["switches"].items())
                lines += ["", f"{r['row']}: its config's changes on the base config: {switches}."]
        elif table == "II":
            lines += ["| category | ours | paper QGN | H-Index | TIGER | MQSPN |", "|---|---|---|---|---|---|"]
            for row in block["rows"]:
                p = row["paper"]
                lines.append(
                    f"| {row['row']} | {_cell(row['ours'])} | {p['QGN']:.2f} | {p['H-Index']:.2f} | "
                    f"{p['TIGER']:.2f} | {p['MQSPN']:.2f} |"
                )
        else:
            lines += ["| row | ours GMNER F1 | ours Δ | paper GMNER F1 | paper Δ |", "|---|---|---|---|---|"]
            for row in block["rows"]:
                paper = row.get("paper") or {}
                paper_f1 = f"{paper['GMNER']:.2f}" if "GMNER" in paper else "–"
                paper_delta = _signed(paper.get("delta")) if paper else "–"
                lines.append(
                    f"| {row['row']} | {_cell(row['ours'])} | {_signed(row['delta'])} | {paper_f1} | {paper_delta} |"
                )
        lines.append("")
    return "\n".join(lines)


def write_tables(
    root: Path,
    tables: list[str],
    seeds: int,
    query_sweep: tuple[int, ...] = DEFAULT_QUERY_SWEEP,
    base_model: dict[str, Any] | None = None,
    vi_visual: str = "fixed",
    plus: Plus | None = None,
) -> tuple[Path, Path]:
    result = collect(root, tables, seeds, query_sweep, base_model, vi_visual, plus)
    md, js = root / "tables.md", root / "tables.json"
    md.write_text(to_markdown(result), encoding="utf-8")
    js.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return md, js
