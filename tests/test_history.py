"""The README's story: live numbers from results.json, the limit each topic lifted, the timeline figure."""

from __future__ import annotations

import json

import pytest

from common import results
from common.results import format_value, lookup_value, render_values
from common.runtime import REPO_ROOT
from common.timeline import TIMELINE_SVG, render_timeline, timeline_rows, update_timeline
from common.topics import LIMITS, TOPICS

TOPIC = "05-image-generation/03-diffusion"


def _results(tmp_path, metrics, holds=False, scale="cpu"):
    folder = tmp_path / TOPIC
    folder.mkdir(parents=True, exist_ok=True)
    data = {"topic": TOPIC, "claim": "c", "runs": {scale: {"metrics": metrics, "claim_holds": holds}}}
    (folder / "results.json").write_text(json.dumps(data))
    return data


def _m(key, fmt=None, text="?", scale="cpu"):
    return f"<!-- value:{TOPIC}:{scale}:{key}{':' + fmt if fmt else ''} -->{text}<!-- /value -->"


def test_format_value():
    assert format_value(56.105656, ".1f") == "56.1"
    assert format_value(0.9807, ".1%") == "98.1%"
    assert format_value(20017.8, ",.0f") == "20,018"
    assert format_value(1.093911, ".2f|x") == "1.09x"
    assert format_value(-0.11, "+.2f") == "-0.11"
    assert format_value(56.105656) == "56.1" and format_value(19) == "19"
    assert format_value(True) == "holds" and format_value(False) == "does not hold"
    assert format_value(False, "held|did not hold") == "did not hold"
    assert format_value("DDIM 20 steps") == "DDIM 20 steps"
    with pytest.raises(ValueError, match="TRUE TEXT"):
        format_value(True, "yes")
    with pytest.raises(ValueError, match="does not apply"):
        format_value(1.5, "d")
    with pytest.raises(ValueError, match="only numbers"):
        format_value([1, 2], ".1f")


def test_lookup_value_dotted_paths():
    data = {"runs": {"cpu": {"claim_holds": True, "metrics": {
        "fid": 56.1, "sweep": {"w=0.5": {"acc": 92.8}}, "by": {"0.25": 1.09}, "curve": [3.0, 2.0, 1.0]}}}}
    assert lookup_value(data, "cpu", "fid") == 56.1
    assert lookup_value(data, "cpu", "sweep.w=0.5.acc") == 92.8  # a key with a dot in it
    assert lookup_value(data, "cpu", "by.0.25") == 1.09
    assert lookup_value(data, "cpu", "curve.-1") == 1.0
    assert lookup_value(data, "cpu", "holds") is True
    with pytest.raises(KeyError, match="no 'gpu' run"):
        lookup_value(data, "gpu", "fid")
    with pytest.raises(KeyError, match=r"metrics\['sweep'\] has no 'w=9'"):
        lookup_value(data, "cpu", "sweep.w=9.acc")


def test_render_values_rewrites_numbers_and_is_idempotent(tmp_path):
    _results(tmp_path, {"fid": 56.105656, "acc": 0.8195, "sweep": {"w=4": {"acc": 100.0}}}, holds=False)
    text = (f"FID {_m('fid', '.1f', '12.0')} at {_m('acc', '.1%')}, w=4 {_m('sweep.w=4.acc', '.0f|%')}; "
            f"the claim {_m('holds', 'held|did not hold')}.\n")
    out = render_values(text, tmp_path)
    shown = results.VALUE_RE.sub(lambda m: m.group("text"), out)
    assert shown == "FID 56.1 at 82.0%, w=4 100%; the claim did not hold.\n"
    assert render_values(out, tmp_path) == out  # idempotent
    assert out.count("<!-- value:") == 4 and "12.0" not in out


@pytest.mark.parametrize("marker,message", [
    (f"<!-- value:{TOPIC}:cpu:nope:.1f -->1<!-- /value -->", "has no 'nope'"),
    (f"<!-- value:{TOPIC}:gpu:fid -->1<!-- /value -->", "no 'gpu' run"),
    ("<!-- value:05-image-generation/99-none:cpu:fid -->1<!-- /value -->", "unknown topic"),
    ("<!-- value:05-image-generation/04-clip:cpu:acc -->1<!-- /value -->", "has no results.json"),
    (f"<!-- value:{TOPIC}:cpu:fid:d -->1<!-- /value -->", "does not apply"),
])
def test_render_values_names_the_broken_marker(tmp_path, marker, message):
    _results(tmp_path, {"fid": 56.1})
    with pytest.raises(ValueError, match=message) as info:
        render_values(f"text {marker} text", tmp_path)
    assert marker.split("-->")[0] in str(info.value)


@pytest.mark.parametrize("text", [
    f"<!-- value:{TOPIC}:cpu:fid -->1",  # never closed
    f"<!-- value:{TOPIC}:cpu -->1<!-- /value -->",  # no key
    f"<!-- value:{TOPIC}:cpu:fid -->1 <!-- note --> <!-- /value -->",  # a comment inside
    "1<!-- /value -->",  # a stray close
])
def test_render_values_rejects_malformed_markers(tmp_path, text):
    _results(tmp_path, {"fid": 56.1})
    with pytest.raises(ValueError, match="malformed value marker"):
        render_values(text, tmp_path)


def test_readme_render_covers_the_live_numbers(tmp_path):
    _results(tmp_path, {"fid": 56.105656})
    readme = tmp_path / "README.md"
    readme.write_text(f"FID {_m('fid', '.1f', 'old')}\n<!-- index:start -->\n<!-- index:end -->\n"
                      "<!-- scoreboard:start -->\n<!-- scoreboard:end -->\n")
    assert results.update_readme(readme, tmp_path)
    assert "-->56.1<!-- /value -->" in readme.read_text()
    assert not results.update_readme(readme, tmp_path)


def test_readme_numbers_are_read_from_results():
    text = (REPO_ROOT / "README.md").read_text()
    assert len(results.VALUE_RE.findall(text)) >= 20, "the story should state measured numbers through markers"
    assert render_values(text) == text, "README's live numbers are stale: run `make scoreboard`"


def test_every_topic_has_the_limit_it_lifted():
    folders = [t[0] for t in TOPICS]
    assert set(LIMITS) == set(folders), f"LIMITS lacks {set(folders) - set(LIMITS)}, extra {set(LIMITS) - set(folders)}"
    for folder, line in LIMITS.items():
        assert line.strip() and "\n" not in line and len(line) <= 110, f"{folder}: one short line please"
    index = results.render_index()
    assert all(line in index for line in LIMITS.values())


def test_timeline_rows_follow_papers_toml():
    rows = timeline_rows()
    assert len(rows) == len(TOPICS)  # every topic has a paper listed
    assert [r["year"] for r in rows] == sorted(r["year"] for r in rows)
    diffusion = next(r for r in rows if r["folder"] == TOPIC)
    assert diffusion["year"] == 2020 and min(diffusion["years"]) == 2015


def test_timeline_is_deterministic_and_committed(tmp_path):
    a, b = render_timeline(), render_timeline()
    assert a == b, "two renders of the timeline differ"
    assert "<dc:date>" not in a and "Matplotlib v" not in a
    assert "Backpropagation (1986)" in a and "Diffusion (DDPM) (2020)" in a  # text stays text
    out = tmp_path / "t.svg"
    assert update_timeline(out) and not update_timeline(out)
    assert TIMELINE_SVG.exists() and TIMELINE_SVG.read_text() == a, "timeline.svg is stale: run `make scoreboard`"
    assert f"]({TIMELINE_SVG.name})" in (REPO_ROOT / "README.md").read_text(), "README should show the timeline"
