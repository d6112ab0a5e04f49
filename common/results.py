"""Results: ``record`` writes a topic's ``results.json``; the scoreboard and index render the README."""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import tokenize
from pathlib import Path

import torch

from .runtime import REPO_ROOT, device_description, elapsed, scale
from .topics import LIMITS, SECTIONS, TOPICS, topic_dir

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
    if isinstance(v, float):  # 6 decimals, but small values (a check's 1e-15, say) keep 7 significant digits
        return float(f"{v:.7g}") if abs(v) < 1e-3 else round(v, 6)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def seed_stats(values) -> dict:
    """Mean, min, max, sample std and count of one metric measured over several seeds.

    ``values`` is a non-empty sequence of finite numbers (one per seed). Use ``mean`` as the metric
    and ``[min, max]`` as its spread in :func:`record`.
    """
    vals = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    if not vals:
        raise ValueError("seed_stats: no values given")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"seed_stats: non-finite values {vals}")
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "min": min(vals), "max": max(vals), "std": std, "n": len(vals)}


def fmt_stats(values, spec: str = ".3g", unit: str = "") -> str:
    """``values`` over seeds as text: ``"2.1x (1.8-2.5, 3 seeds)"``; a single value is shown alone."""
    st = seed_stats(values)
    if st["n"] == 1:
        return f"{st['mean']:{spec}}{unit}"
    return f"{st['mean']:{spec}}{unit} ({st['min']:{spec}}-{st['max']:{spec}}{unit}, {st['n']} seeds)"


def _code_text(src: str) -> str:
    """Python source as hashed by :func:`source_sha256`: docstrings and comments cut out, trailing spaces and
    blank lines dropped, everything else as written (so the text, and its hash, is the same under every Python
    version; ``ast.unparse`` is not: 3.12 writes some f-strings differently from 3.11)."""
    lines = src.splitlines()

    def char_col(row: int, byte_col: int) -> int:  # ast's columns count UTF-8 bytes, tokenize's characters
        return len(lines[row - 1].encode()[:byte_col].decode(errors="ignore"))

    cuts = []  # (line, start column, end line, end column), lines from 1, columns in characters
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                d = body[0]
                cuts.append((d.lineno, char_col(d.lineno, d.col_offset), d.end_lineno,
                             char_col(d.end_lineno, d.end_col_offset)))
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            cuts.append((tok.start[0], tok.start[1], tok.end[0], tok.end[1]))
    for r0, c0, r1, c1 in sorted(cuts, reverse=True):  # from the end, so earlier positions stay valid
        lines[r0 - 1:r1] = [lines[r0 - 1][:c0] + lines[r1 - 1][c1:]]
    return "\n".join(line.rstrip() for line in lines if line.strip())


def source_sha256(folder: str | Path) -> str:
    """Hash of the code that produces a topic's results: its ``.py`` files and its notebook's code cells.

    In Python files docstrings, comments, blank lines and trailing spaces do not count (:func:`_code_text`);
    the rest, and the notebook's code cells, count as written. The hash does not depend on the Python version
    that computes it (a gpu run's Python may differ from the cpu run's). A repo test compares this with the
    hash stored in ``results.json``, so a result is never older than its code.
    """
    folder = Path(folder)
    if not folder.is_absolute():
        folder = REPO_ROOT / folder
    h = hashlib.sha256()
    for py in sorted(folder.glob("*.py")):
        try:
            code = _code_text(py.read_text())
        except SyntaxError as exc:
            raise ValueError(f"source_sha256: {py} does not parse ({exc})") from None
        h.update(f"## {py.name}\n{code}\n".encode())
    nb = folder / "notes.ipynb"
    if nb.exists():
        cells = json.loads(nb.read_text()).get("cells", [])
        for cell in cells:
            if cell.get("cell_type") == "code":
                src = cell.get("source", "")
                src = "".join(src) if isinstance(src, list) else src
                h.update(f"## cell\n{src.rstrip()}\n".encode())
    return h.hexdigest()


PAPER_KEYS = ("source", "dataset", "summary", "values")
GPU_NOTEBOOK = "notes.gpu.ipynb"  # a gpu-scale run's executed notebook, kept beside the cpu-scale notes.ipynb


def record(*, claim: str, paper: dict, dataset: str, metrics: dict, claim_holds, seeds, headline: str,
           spread: dict | None = None, substitute_for: str | None = None, notes: str | None = None,
           seconds: float | None = None, folder: str | Path | None = None, run_scale: str | None = None) -> dict:
    """Write this run's measured results into the topic's ``results.json``; return the run's entry.

    - ``claim``: exactly what ``claim_holds`` checks. ``claim_holds``: a bool computed from ``metrics``.
    - ``paper``: ``source`` (table or figure), ``dataset`` (the paper's), ``summary`` (its number in
      words, e.g. "ReLU reaches 25% training error 6x sooner than tanh") and ``values`` (the numbers).
    - ``dataset``: what we ran on; ``substitute_for``: the paper's dataset when ours differs.
    - ``seeds``: the seeds behind the metrics; with more than one, ``spread`` maps each metric that
      was averaged over seeds to its ``[min, max]`` (see :func:`seed_stats`).
    - ``headline``: one line of measured numbers for the scoreboard.

    Nothing is written at smoke scale. ``seconds`` defaults to the time since :func:`common.setup`.
    ``source_sha256`` (see :func:`source_sha256`) ties the run to the code that produced it. Runs at
    other scales already in the file are kept.
    """
    if not isinstance(claim, str) or not claim.strip():
        raise ValueError("record: claim must be a non-empty sentence")
    if not isinstance(paper, dict) or not set(PAPER_KEYS) <= set(paper):
        raise ValueError(f"record: paper must be a dict with {', '.join(PAPER_KEYS)}; got {paper!r}")
    if not isinstance(dataset, str) or not dataset.strip():
        raise ValueError(f"record: dataset must name the data the run used, got {dataset!r}")
    if substitute_for is not None and (not isinstance(substitute_for, str) or not substitute_for.strip()):
        raise ValueError(f"record: substitute_for must name the paper's dataset, got {substitute_for!r}")
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError("record: metrics must be a non-empty dict of measured numbers")
    if not isinstance(headline, str) or not headline.strip():
        raise ValueError("record: headline must be a one-line summary of the measured numbers")
    if isinstance(seeds, int) or not isinstance(seeds, (list, tuple)) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"record: seeds must be a non-empty list of non-negative ints, got {seeds!r}")
    spread = dict(spread or {})
    if len(seeds) > 1 and not spread:
        raise ValueError(f"record: {len(seeds)} seeds but no spread: give [min, max] of each averaged metric")
    for k, v in spread.items():
        if k not in metrics:
            raise ValueError(f"record: spread names {k!r}, which is not in metrics")
        if not isinstance(v, (list, tuple)) or len(v) != 2 or not float(v[0]) <= float(v[1]):
            raise ValueError(f"record: spread[{k!r}] must be [min, max] with min <= max, got {v!r}")
    if hasattr(claim_holds, "item"):
        claim_holds = claim_holds.item()
    if not isinstance(claim_holds, bool):
        raise ValueError(f"record: claim_holds must be a bool computed from the metrics, got {claim_holds!r}")
    s = run_scale or scale()
    folder = Path(folder) if folder is not None else Path(os.getcwd())
    name = _topic_of(folder)
    secs = seconds if seconds is not None else elapsed()
    run = {"dataset": dataset}
    if substitute_for:
        run["substitute_for"] = substitute_for
    run.update({
        "seeds": list(seeds),
        "metrics": _jsonable(metrics),
        "spread": _jsonable(spread),
        "claim_holds": claim_holds,
        "headline": headline,
        "seconds": round(secs, 1) if secs is not None else None,
        "device": device_description(),
        "torch": torch.__version__.split("+")[0],
        "source_sha256": source_sha256(folder),
        "date": _dt.date.today().isoformat(),
    })
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


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def render_scoreboard(root: Path = REPO_ROOT) -> str:
    """The Markdown scoreboard: one row per topic and recorded scale.

    Columns: topic, claim, the paper's number in words with its table or figure, the data we ran
    on (marked as a substitute when it is not the paper's), scale, measured (with the number of
    seeds), holds, time.
    """
    rows = ["| Topic | Claim | Paper | Data | Scale | Measured | Holds | Time |",
            "|---|---|---|---|---|---|---|---|"]
    titles = {t[0]: t[2] for t in TOPICS}
    for folder, data in load_results(root).items():
        paper = data.get("paper", {})
        pcell = f"{paper.get('source', '')}, {paper.get('dataset', '')}: {paper.get('summary', '')}"
        for s in ("cpu", "gpu"):
            run = data.get("runs", {}).get(s)
            if not run:
                continue
            data_cell = run.get("dataset", "")
            if run.get("substitute_for"):
                data_cell += f" (substitute for {run['substitute_for']})"
            measured = run.get("headline", "")
            n_seeds = len(run.get("seeds", []))
            if n_seeds > 1 and "seeds" not in measured:  # fmt_stats already names them
                measured += f" ({n_seeds} seeds)"
            holds = "yes" if run["claim_holds"] else "**no**"
            secs = run.get("seconds")
            nb = GPU_NOTEBOOK if s == "gpu" and (root / folder / GPU_NOTEBOOK).exists() else "notes.ipynb"
            rows.append(f"| [{titles[folder]}]({folder}/{nb}) | {_cell(data['claim'])} | {_cell(pcell)} "
                        f"| {_cell(data_cell)} | {s} | {_cell(measured)} | {holds} "
                        f"| {'' if secs is None else f'{secs:.0f} s'} |")
    if len(rows) == 2:
        rows.append("| (no results yet) | | | | | | | |")
    return "\n".join(rows)


def render_index(root: Path = REPO_ROOT) -> str:
    """The Markdown index of all topics by section; existing topics linked, the rest marked planned.

    Each line ends with the limit the topic lifted (``LIMITS`` in :mod:`common.topics`).
    """
    lines = []
    for section, title in SECTIONS.items():
        lines.append(f"**{title}**\n")
        for folder, module, name, year in TOPICS:
            if not folder.startswith(section + "/"):
                continue
            limit = f" — {LIMITS[folder]}" if folder in LIMITS else ""
            if (root / folder / f"{module}.py").exists():
                lines.append(f"- [{name} ({year})]({folder}/notes.ipynb) · [`{module}.py`]({folder}/{module}.py)"
                             f"{limit}")
            else:
                lines.append(f"- {name} ({year}) · *planned*{limit}")
        lines.append("")
    return "\n".join(lines).rstrip()


def _replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    start, end = markers
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no {start} ... {end} markers")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


# A live number in the README's prose: ``<!-- value:TOPIC:SCALE:KEY[:FORMAT] -->TEXT<!-- /value -->``.
# TOPIC is a topic folder, SCALE a recorded run (cpu, gpu), KEY a dotted path into that run's ``metrics``
# (or ``holds`` for ``claim_holds``), FORMAT an optional format spec (see :func:`format_value`). TEXT is
# rewritten by ``make scoreboard``; on GitHub the comments are invisible and only TEXT shows.
VALUE_OPEN = "<!-- value:"
VALUE_CLOSE = "<!-- /value -->"
VALUE_RE = re.compile(r"<!-- value:(?P<topic>[^:\s]+):(?P<scale>[^:\s]+):(?P<key>[^:\s]+)"
                      r"(?::(?P<fmt>[^>]*?))? -->(?P<text>(?:(?!<!--).)*?)<!-- /value -->", re.S)


def lookup_value(data: dict, scale_name: str, key: str):
    """The value that a marker's ``SCALE:KEY`` names in one topic's ``results.json`` data.

    ``key`` is ``holds`` (the run's ``claim_holds``) or a dotted path into the run's ``metrics``:
    ``guidance_sweep.w=0.5.acc``. A metric name may itself contain dots (``w=0.5``): at each level the
    longest run of parts that is a key wins. A part that is an integer indexes a list. Raises
    ``KeyError`` naming what is missing.
    """
    run = data.get("runs", {}).get(scale_name)
    if run is None:
        raise KeyError(f"no {scale_name!r} run (recorded: {', '.join(data.get('runs', {})) or 'none'})")
    if key == "holds":
        return run["claim_holds"]
    node, parts, path = run.get("metrics", {}), key.split("."), []
    while parts:
        for n in range(len(parts), 0, -1):
            name = ".".join(parts[:n])
            if isinstance(node, dict) and name in node:
                node = node[name]
                break
            if isinstance(node, list) and n == 1 and name.lstrip("-").isdigit() and -len(node) <= int(name) < len(node):
                node = node[int(name)]
                break
        else:
            where = "metrics" + "".join(f"[{p!r}]" for p in path)
            have = ", ".join(map(str, node)) if isinstance(node, dict) else f"a {type(node).__name__}"
            raise KeyError(f"{where} has no {parts[0]!r} (it has: {have})")
        path.append(name)
        parts = parts[n:]
    return node


def format_value(value, fmt: str | None = None) -> str:
    """Render one marker's value as text.

    - A bool (``holds``): ``fmt`` is ``"TRUE TEXT|FALSE TEXT"``; the default is ``holds|does not hold``.
    - A number: ``fmt`` is a Python format spec (``.1f``, ``,.0f``, ``.1%`` multiplies by 100 and adds
      ``%``, ``+.2f``), optionally followed by ``|SUFFIX`` glued to the number (``.2f|x`` gives ``1.09x``).
      Without a spec, ints print as they are and floats with 3 significant digits.
    - A string is printed as it is (no spec allowed).
    Raises ``ValueError`` when the spec does not fit the value.
    """
    if isinstance(value, bool):
        yes, _, no = (fmt or "holds|does not hold").partition("|")
        if not no:
            raise ValueError(f"a bool needs a format 'TRUE TEXT|FALSE TEXT', got {fmt!r}")
        return yes if value else no
    if isinstance(value, str):
        if fmt:
            raise ValueError(f"a string value takes no format, got {fmt!r}")
        return value
    if not isinstance(value, (int, float)):
        raise ValueError(f"only numbers, bools and strings can be rendered, got {type(value).__name__}")
    spec, _, suffix = (fmt or "").partition("|")
    if not spec:
        text = str(value) if isinstance(value, int) else f"{value:.3g}"
    else:
        try:
            text = format(value, spec)
        except ValueError as exc:
            raise ValueError(f"format {spec!r} does not apply to {value!r}: {exc}") from None
    return text + suffix


def render_values(text: str, root: Path = REPO_ROOT) -> str:
    """``text`` with the content of every ``<!-- value:... -->`` marker re-read from ``results.json``.

    Raises ``ValueError`` naming the marker when its topic, scale or key is missing, its format does
    not fit, or a marker is malformed (an opening comment without a well-formed match), so that a
    README never keeps a stale or invented number.
    """
    known = {t[0] for t in TOPICS}
    cache: dict[str, dict] = {}
    opened = text.count(VALUE_OPEN)
    matches = list(VALUE_RE.finditer(text))
    if len(matches) != opened or text.count(VALUE_CLOSE) != opened:
        good = {m.start() for m in matches}
        bad = [text[i:i + 80].split("\n")[0] for i in (m.start() for m in re.finditer(re.escape(VALUE_OPEN), text))
               if i not in good]
        raise ValueError(f"malformed value marker(s), want '<!-- value:TOPIC:SCALE:KEY[:FORMAT] -->N<!-- /value -->' "
                         f"with no comment inside: {bad or 'an unmatched ' + VALUE_CLOSE}")

    def one(m: re.Match) -> str:
        marker = m.group(0).split("-->")[0] + "-->"
        topic = m.group("topic")
        if topic not in known:
            raise ValueError(f"{marker}: unknown topic {topic!r}")
        if topic not in cache:
            path = root / topic / "results.json"
            if not path.exists():
                raise ValueError(f"{marker}: {topic} has no results.json")
            cache[topic] = json.loads(path.read_text())
        try:
            value = lookup_value(cache[topic], m.group("scale"), m.group("key"))
            rendered = format_value(value, m.group("fmt"))
        except (KeyError, ValueError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise ValueError(f"{marker}: {msg}") from None
        return f"{marker}{rendered}{VALUE_CLOSE}"

    return VALUE_RE.sub(one, text)


def render_readme(text: str, root: Path = REPO_ROOT) -> str:
    """``text`` (the README) with its index and scoreboard blocks and its live numbers regenerated."""
    text = _replace_between(text, INDEX_MARKERS, render_index(root))
    text = _replace_between(text, SCOREBOARD_MARKERS, render_scoreboard(root))
    return render_values(text, root)


def update_readme(readme: Path = REPO_ROOT / "README.md", root: Path = REPO_ROOT) -> bool:
    """Rewrite the README's index and scoreboard in place; return whether anything changed."""
    old = readme.read_text()
    new = render_readme(old, root)
    if new != old:
        readme.write_text(new)
    return new != old
