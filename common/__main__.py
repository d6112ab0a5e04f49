"""Command line: ``python -m common run|papers|scoreboard|bench|list``."""

from __future__ import annotations

import argparse
import json
import sys

from .results import GPU_NOTEBOOK
from .runtime import REPO_ROOT, SCALES


def _cmd_run(args) -> int:
    from .notebooks import NotebookError, run_notebook
    from .runtime import scale
    from .topics import resolve, topic_dir

    try:
        folder = resolve(args.topic)[0]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.scale is not None and args.scale not in SCALES:
        print(f"unknown scale {args.scale!r}; valid scales: {', '.join(SCALES)}", file=sys.stderr)
        return 2
    try:
        run_scale = args.scale or scale()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    nb_path = topic_dir(folder) / "notes.ipynb"
    if not nb_path.exists():
        print(f"{folder} has no notes.ipynb yet (it is planned)", file=sys.stderr)
        return 2
    print(f"running {folder}/notes.ipynb at {run_scale} scale ...", flush=True)
    try:
        out = topic_dir(folder) / GPU_NOTEBOOK if run_scale == "gpu" and args.gpu_copy else None
        run_notebook(nb_path, scale=run_scale, save=not args.no_save, output=out)
    except NotebookError as exc:
        print(f"\n{exc}\n\nIn short: {exc.summary}", file=sys.stderr)
        return 1
    res = topic_dir(folder) / "results.json"
    if run_scale == "smoke":
        print("smoke run finished (results are not recorded at smoke scale)")
    elif res.exists():
        data = json.loads(res.read_text())
        run = data.get("runs", {}).get(run_scale)
        print(f"claim: {data['claim']}")
        print(json.dumps(run, indent=2))
    return 0


def _cmd_papers(args) -> int:
    from .papers import fetch_all

    return 1 if fetch_all(only_existing=not args.all) else 0


def _cmd_scoreboard(args) -> int:
    from .results import render_readme, update_readme
    from .timeline import TIMELINE_SVG, render_timeline, update_timeline

    readme = REPO_ROOT / "README.md"
    try:
        if args.check:
            stale = []
            if render_readme(readme.read_text()) != readme.read_text():
                stale.append("README.md (index, scoreboard or live numbers)")
            if not TIMELINE_SVG.exists() or render_timeline() != TIMELINE_SVG.read_text():
                stale.append(TIMELINE_SVG.name)
            if stale:
                print(f"stale: {', '.join(stale)}: run `make scoreboard`", file=sys.stderr)
                return 1
            print("README.md and the timeline are current")
            return 0
        print("README.md updated" if update_readme(readme) else "README.md already current")
        print(f"{TIMELINE_SVG.name} updated" if update_timeline() else f"{TIMELINE_SVG.name} already current")
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _cmd_bench(args) -> int:
    from .bench import run_all

    run_all()
    return 0


def _cmd_list(args) -> int:
    from .results import load_results
    from .topics import TOPICS, topic_dir

    results = load_results()
    for folder, module, title, _year in TOPICS:
        exists = (topic_dir(folder) / f"{module}.py").exists()
        runs = results.get(folder, {}).get("runs", {})
        status = ", ".join(f"{s}: {'holds' if r['claim_holds'] else 'does not hold'}" for s, r in runs.items())
        print(f"{folder:52s} {title:32s} {status if exists else 'planned'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m common``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m common", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="execute a topic's notebook headless and save it in place")
    p.add_argument("topic", nargs="?", default="01-deep-neural-networks/01-dnn")
    p.add_argument("--scale", default=None, help=f"one of {', '.join(SCALES)} (default: common.scale())")
    p.add_argument("--no-save", action="store_true", help="do not write the executed notebook back")
    p.add_argument("--gpu-copy", action="store_true",
                   help=f"at gpu scale, save the executed notebook as {GPU_NOTEBOOK} beside notes.ipynb")
    p = sub.add_parser("papers", help="download every paper's PDF into its topic folder")
    p.add_argument("--all", action="store_true", help="also for planned topics (creates their folders)")
    p = sub.add_parser("scoreboard", help="rewrite the README index, scoreboard, live numbers and timeline.svg")
    p.add_argument("--check", action="store_true", help="only check that the README is current")
    sub.add_parser("bench", help="print speed ratios against the usual alternatives")
    sub.add_parser("list", help="list the topics and their recorded results")
    args = parser.parse_args(argv)
    return {"run": _cmd_run, "papers": _cmd_papers, "scoreboard": _cmd_scoreboard,
            "bench": _cmd_bench, "list": _cmd_list}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
