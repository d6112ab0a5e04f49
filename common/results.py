"""Results: ``record`` writes a topic's ``results.json``; the scoreboard and index render the README."""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path

import torch

from .runtime import REPO_ROOT, device_description, elapsed, git_commit, scale
from .topics import SECTIONS, TOPICS, topic_dir

SCOREBOARD_MARKERS = ("<!-- scoreboard:start -->", "<!-- scoreboard:end -->")
INDEX_MARKERS = ("<!-- index:start -->", "<!-- index:end -->")


def _topic_of(folder: Path) -> str:
    folder = folder.resolve()
    for t in TOPICS:
        if topic_dir(t[0]).resolve() == folder:
            return t[0]
    raise ValueError(f"record() must run in a topic folder (a notebook's working directory); "
                     f"{folder} is not one of the planned topics")


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if hasattr(v, "item") and not isinstance(v, (list, dict)):  # numpy scalars
        v = v.item()
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def record(*, claim: str, paper: dict, dataset: str, metrics: dict, claim_holds, headline: str = "",
           notes: str | None = None, seconds: float | None = None, folder: str | Path | None = None,
           run_scale: str | None = None) -> dict:
    """Write this run's measured results into the topic's ``results.json``; return the run's entry.

    ``claim_holds`` must be a boolean computed from ``metrics`` (numpy/torch booleans accepted).
    ``headline`` is a one-line summary of the measured result for the scoreboard. Nothing is
    written at smoke scale. ``seconds`` defaults to the time since :func:`common.setup`. Runs at
    other scales already in the file are kept.
    """
    if not isinstance(claim, str) or not claim.strip():
        raise ValueError("record: claim must be a non-empty sentence")
    if not isinstance(paper, dict) or not {"source", "metric", "values"} <= set(paper):
        raise ValueError(f"record: paper must be a dict with source, metric and values; got {paper!r}")
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError("record: metrics must be a non-empty dict of measured numbers")
    if hasattr(claim_holds, "item"):
        claim_holds = claim_holds.item()
    if not isinstance(claim_holds, bool):
        raise ValueError(f"record: claim_holds must be a bool computed from the metrics, got {claim_holds!r}")
    s = run_scale or scale()
    folder = Path(folder) if folder is not None else Path(os.getcwd())
    name = _topic_of(folder)
    secs = seconds if seconds is not None else elapsed()
    run = {
        "dataset": dataset,
        "metrics": _jsonable(metrics),
        "claim_holds": claim_holds,
        "headline": headline,
        "seconds": round(secs, 1) if secs is not None else None,
        "device": device_description(),
        "torch": torch.__version__.split("+")[0],
        "commit": git_commit(),
        "date": _dt.date.today().isoformat(),
    }
    if notes:
        run["notes"] = notes
    if s == "smoke":
        print(f"[smoke scale] results not recorded; claim_holds={claim_holds}")
        return run
    path = folder / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update({"topic": name, "claim": claim, "paper": _jsonable(paper)})
    data.setdefault("runs", {})[s] = run
    tmp = path.with_name("results.json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    print(f"recorded {name} [{s}]: claim_holds={claim_holds}; {headline}")
    return run


def load_results(root: Path = REPO_ROOT) -> dict[str, dict]:
    """Every topic's ``results.json`` as ``{topic folder: data}``, in topic order."""
    out = {}
    for folder, *_ in TOPICS:
        p = root / folder / "results.json"
        if p.exists():
            out[folder] = json.loads(p.read_text())
    return out


def render_scoreboard(root: Path = REPO_ROOT) -> str:
    """The Markdown scoreboard: one row per topic and recorded scale."""
    rows = ["| Topic | Claim | Paper | Scale | Measured | Holds | Time |",
            "|---|---|---|---|---|---|---|"]
    titles = {t[0]: t[2] for t in TOPICS}
    for folder, data in load_results(root).items():
        paper = data.get("paper", {})
        pvals = ", ".join(f"{k} {v}" for k, v in paper.get("values", {}).items())
        pcell = f"{paper.get('metric', '')}: {pvals} ({paper.get('source', '')})".replace("|", "/")
        for s in ("cpu", "gpu"):
            run = data.get("runs", {}).get(s)
            if not run:
                continue
            measured = run.get("headline") or ", ".join(f"{k} {v}" for k, v in list(run["metrics"].items())[:3])
            holds = "yes" if run["claim_holds"] else "**no**"
            secs = run.get("seconds")
            rows.append(f"| [{titles[folder]}]({folder}/notes.ipynb) | {data['claim']} | {pcell} | {s} "
                        f"| {measured.replace('|', '/')} | {holds} | {'' if secs is None else f'{secs:.0f} s'} |")
    if len(rows) == 2:
        rows.append("| (no results yet) | | | | | | |")
    return "\n".join(rows)


def render_index(root: Path = REPO_ROOT) -> str:
    """The Markdown index of all topics by section; existing topics linked, the rest marked planned."""
    lines = []
    for section, title in SECTIONS.items():
        lines.append(f"**{title}**\n")
        for folder, module, name, year in TOPICS:
            if not folder.startswith(section + "/"):
                continue
            if (root / folder / f"{module}.py").exists():
                lines.append(f"- [{name} ({year})]({folder}/notes.ipynb) · [`{module}.py`]({folder}/{module}.py)")
            else:
                lines.append(f"- {name} ({year}) · *planned*")
        lines.append("")
    return "\n".join(lines).rstrip()


def _replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    start, end = markers
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no {start} ... {end} markers")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


def render_readme(text: str, root: Path = REPO_ROOT) -> str:
    """``text`` (the README) with its index and scoreboard blocks regenerated."""
    text = _replace_between(text, INDEX_MARKERS, render_index(root))
    return _replace_between(text, SCOREBOARD_MARKERS, render_scoreboard(root))


def update_readme(readme: Path = REPO_ROOT / "README.md", root: Path = REPO_ROOT) -> bool:
    """Rewrite the README's index and scoreboard in place; return whether anything changed."""
    old = readme.read_text()
    new = render_readme(old, root)
    if new != old:
        readme.write_text(new)
    return new != old
