"""The examples page of the Snakemake report (kdsum.reporting.report_page)."""

import json

import pandas as pd
import pytest

from kdsum.config.spec import ReportSpec, SystemRow
from kdsum.errors import KdsumError
from kdsum.reporting.report_page import report_page


def _files(tmp_path, name, rows, chosen=None):
    """rows: fname -> (summary, rouge1) with rouge2 = rougeL = rouge1 / 2."""
    slug = name.replace("/", "_")
    pred = pd.DataFrame({"fname": list(rows), "summary": [s for s, _ in rows.values()]})
    if chosen:
        pred["system"] = [chosen[f] for f in rows]
    pred.to_csv(tmp_path / f"{slug}.csv", index=False)
    r1 = [r for _, r in rows.values()]
    items = pd.DataFrame(
        {"fname": list(rows), "rouge1": r1, "rouge2": [r / 2 for r in r1], "rougeL": [r / 2 for r in r1]}
    )
    items.to_csv(tmp_path / f"{slug}_items.csv", index=False)
    return str(tmp_path / f"{slug}.csv"), str(tmp_path / f"{slug}_items.csv")


@pytest.fixture
def page_inputs(tmp_path):
    fnames = [f"dev_{i}" for i in range(8)]
    data = tmp_path / "dev.jsonl"
    with data.open("w", encoding="utf-8") as fh:
        for i, f in enumerate(fnames):
            rec = {
                "fname": f,
                "dialogue": f"#Person1#: 대화 {i} <b>",
                "turns": [],
                "summaries": [f"참조 {i}"],
                "topic": "",
            }
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    # a/x is the better system; its two worst dialogues are dev_5 (10) and dev_2 (20)
    a = {f: (f"요약 {i}", 10.0 if i == 5 else 20.0 if i == 2 else 60.0 + i) for i, f in enumerate(fnames)}
    b = {f: ("Hello 요약" if i == 3 else f"짧은 {i}", 30.0) for i, f in enumerate(fnames)}
    ens = {f: a[f] for f in fnames}
    files = [
        _files(tmp_path, "a/x", a),
        _files(tmp_path, "b/x", b),
        _files(tmp_path, "ensemble/e", ens, chosen={f: "a/x" for f in fnames}),
    ]
    rows = [
        SystemRow("a/x", "a", "x", "fine-tuned"),
        SystemRow("b/x", "b", "x", "fine-tuned"),
        SystemRow("ensemble/e", "ensemble", "e", "ensemble"),
    ]
    return data, rows, [p for p, _ in files], [i for _, i in files]


def test_page_shows_the_best_systems_worst_dialogues_first_then_a_sample(page_inputs):
    data, rows, preds, items = page_inputs
    html = report_page(ReportSpec("dev", rows, sample=3, worst=2, seed=0), data, preds, items)
    worst_at, sample_at = html.index("lowest-scoring dialogues of the best system (a/x)"), html.index("drawn at random")
    assert worst_at < html.index("<h3>dev_5</h3>") < html.index("<h3>dev_2</h3>") < sample_at
    assert html.count("<h3>") == 5 and html[sample_at:].count("<h3>") == 3
    assert "<h3>dev_5</h3>" not in html[sample_at:]  # a worst dialogue is not drawn again
    assert "&lt;b&gt;" in html and "<b>" not in html.replace("<b>Reference(s)</b>", "")  # texts are escaped
    assert "참조 5" in html and "chosen: a/x" in html
    # dev_5's row of a/x: final 10 * (1 + 1/2 + 1/2) / 3, its length, no foreign script
    assert '<td class="n">6.7</td><td class="n">10.0</td><td class="n">5.0</td>' in html
    # the same seed draws the same sample; the Latin summary of b/x carries the flag wherever dev_3 appears
    assert html == report_page(ReportSpec("dev", rows, sample=3, worst=2, seed=0), data, preds, items)
    full = report_page(ReportSpec("dev", rows, sample=8, worst=0, seed=0), data, preds, items)
    dev3 = full[full.index("<h3>dev_3</h3>") :].split("<h3>")[1]
    assert "Hello 요약" in dev3 and '<span class="flag">yes</span>' in dev3


def test_a_missing_prediction_is_an_error_naming_the_system(page_inputs):
    data, rows, preds, items = page_inputs
    pd.read_csv(preds[1]).iloc[:-1].to_csv(preds[1], index=False)
    with pytest.raises(KdsumError, match=r"b/x.*dev_7"):
        report_page(ReportSpec("dev", rows, sample=1, worst=1, seed=0), data, preds, items)
