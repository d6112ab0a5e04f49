"""The README's timeline figure: every topic at its year, from ``papers.toml``, drawn as a deterministic SVG."""

from __future__ import annotations

import io
from pathlib import Path

from .papers import PAPERS_TOML, load_papers
from .runtime import REPO_ROOT
from .topics import SECTIONS, TOPICS

TIMELINE_SVG = REPO_ROOT / "timeline.svg"
SECTION_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def timeline_rows(papers_toml: Path = PAPERS_TOML) -> list[dict]:
    """One row per topic, oldest first: folder, title, section title, milestone year and all paper years.

    The milestone year is the topic's year in ``TOPICS``, which must be the year of one of the topic's
    papers in ``papers.toml``; the other papers (follow-ups, a journal version) are the ``years`` around
    it. Topics with no paper listed are left out. Ties in year keep the order of ``TOPICS``.
    """
    years: dict[str, list[int]] = {}
    for p in load_papers(papers_toml):
        years.setdefault(p.topic, []).append(p.year)
    rows = []
    for order, (folder, _module, title, year) in enumerate(TOPICS):
        if folder not in years:
            continue
        if year not in years[folder]:
            raise ValueError(f"{folder}: its year {year} in common/topics.py matches none of its papers in "
                             f"papers.toml ({sorted(years[folder])})")
        section = folder.split("/")[0]
        rows.append({"folder": folder, "title": title, "section": SECTIONS[section], "year": year,
                     "years": sorted(set(years[folder])), "order": order})
    return sorted(rows, key=lambda r: (r["year"], r["order"]))


def render_timeline(papers_toml: Path = PAPERS_TOML) -> str:
    """The timeline as SVG text: one labelled dot per topic at its year, coloured by section.

    A thin line joins the milestone to the topic's other papers (small dots). The output is byte-for-byte
    the same on every call with the same inputs and matplotlib version: a fixed ``svg.hashsalt``, text kept
    as text (no font outlines), and no date or version in the metadata.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = timeline_rows(papers_toml)
    colours = {title: SECTION_COLOURS[i % len(SECTION_COLOURS)] for i, title in enumerate(SECTIONS.values())}
    lo, hi = min(min(r["years"]) for r in rows), max(max(r["years"]) for r in rows)
    with matplotlib.rc_context({"svg.hashsalt": "dl-history-timeline", "svg.fonttype": "none",
                                "font.family": "DejaVu Sans", "font.size": 9, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(9.0, 0.24 * len(rows) + 1.4))
        for y, r in enumerate(rows):
            c = colours[r["section"]]
            ax.plot([min(r["years"]), max(r["years"])], [y, y], color=c, lw=1, alpha=0.5, zorder=1)
            others = [v for v in r["years"] if v != r["year"]]
            ax.scatter(others, [y] * len(others), s=12, color=c, alpha=0.6, zorder=2, linewidths=0)
            ax.scatter([r["year"]], [y], s=44, color=c, zorder=3, linewidths=0)
            label = f"{r['title']} ({r['year']})"
            left = r["year"] > (lo + hi) / 2
            x = min(r["years"]) - 0.6 if left else max(r["years"]) + 0.6
            ax.text(x, y, label, ha="right" if left else "left", va="center", color="#222222")
        for title, c in colours.items():
            ax.scatter([], [], s=44, color=c, label=title)
        ax.legend(loc="lower left", frameon=False, fontsize=8.5, title="section", title_fontsize=8.5)
        ax.set_xlim(lo - 3, hi + 2)
        ax.set_ylim(len(rows) - 0.4, -0.8)
        ax.set_yticks([])
        ax.set_xticks(range(5 * (lo // 5), hi + 1, 5))
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        ax.grid(axis="x", alpha=0.25)
        ax.set_title("Milestones by year (large dot); small dots are the topic's other papers", fontsize=9.5,
                     loc="left", color="#444444")
        fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.45 / fig.get_figheight(),
                            bottom=0.5 / fig.get_figheight())
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
        plt.close(fig)
    return buf.getvalue()


def update_timeline(path: Path = TIMELINE_SVG, papers_toml: Path = PAPERS_TOML) -> bool:
    """Write the timeline SVG to ``path`` if it differs; return whether anything changed."""
    new = render_timeline(papers_toml)
    old = path.read_text() if path.exists() else None
    if new != old:
        path.write_text(new)
    return new != old
