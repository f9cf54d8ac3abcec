"""What the scoring convention does to ``final``: the same summaries of the Korean dev split scored under the pipeline's
convention and under the alternatives teams meet in public write-ups (docs/SCORING.md has the table).

Data: ``../shared/data/ko/dev.csv`` (499 dialogues, one reference each) read by ingest (kdsum.data.ingest.read_split);
the summaries are the pipeline's two baselines (kdsum.generation.baselines: ``lead``, ``longest``) and, as a third
system, each dialogue's reference scored against the next dialogue's (an unrelated summary of the same style: the
share of a score that topic-free wording earns). Every convention scores with the pipeline's ROUGE
(kdsum.scoring.rouge.rouge_scores, ``rouge_score``'s F1 bit for bit) and ``final`` = the mean of ROUGE-1/2/L F1 x100;
only the tokens differ:

* ``pipeline``: Kiwi morphemes, masks (``#Person1#``) one token, symbols dropped, lowercase (kdsum.korean.kiwi);
* ``masks unprotected``: the same without registering the mask pattern (Kiwi splits ``#Person1#은`` into hashtags);
* ``punctuation kept``: the pipeline's, with every symbol morpheme kept;
* ``whitespace``: the text split on whitespace (eojeol), as it is;
* ``mecab raw``: MeCab-ko morphemes (``python-mecab-ko``) of the text as it is;
* ``mecab cleaned``: MeCab-ko morphemes after replacing every character outside ``[A-Za-z0-9가-힣]`` with a space
  (the Korean_DCS 2024 scorer's cleaning).

The MeCab rows need ``python-mecab-ko`` (PyPI; it brings mecab-ko-dic); without it they are recorded as missing.

    python3 benchmarks/bench_scoring_conventions.py [--data ../shared/data/ko/dev.csv]
        [--out docs/bench/scoring_conventions.json]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import time
from importlib import metadata
from pathlib import Path

from kdsum.data.ingest import read_split
from kdsum.generation.baselines import run_baseline
from kdsum.io import write_json
from kdsum.korean.kiwi import KiwiMorphemeTokenizer, _forms, _nfc
from kdsum.korean.text import DATA_TOKEN_PATTERN
from kdsum.scoring.rouge import ROUGE_KEYS, rouge_scores

ROOT = Path(__file__).resolve().parents[1]
NOT_HANGUL = re.compile(r"[^A-Za-z0-9가-힣]")


class KiwiVariant:
    """Kiwi morphemes as the pipeline takes them, with the mask pattern registered or not, symbols dropped or kept."""

    def __init__(self, protect_masks: bool, keep_symbols: bool) -> None:
        from kiwipiepy import Kiwi

        self.kiwi = Kiwi(num_workers=1)
        if protect_masks:
            self.kiwi.add_re_word(DATA_TOKEN_PATTERN, "NNP")
        self.keep_symbols = keep_symbols

    def _tokens(self, toks) -> list[str]:
        return [t.form.lower() for t in toks] if self.keep_symbols else _forms(toks)

    def tokenize(self, text: str) -> list[str]:
        return self._tokens(self.kiwi.tokenize(_nfc(text)))

    def tokenize_many(self, texts) -> list[list[str]]:
        return [self._tokens(t) for t in self.kiwi.tokenize([_nfc(t) for t in texts])]


class Whitespace:
    def tokenize(self, text: str) -> list[str]:
        return text.split()


class Mecab:
    """MeCab-ko morphemes of the text as it is, or after the Korean_DCS cleaning."""

    def __init__(self, cleaned: bool) -> None:
        import mecab

        self.mecab, self.cleaned = mecab.MeCab(), cleaned

    def tokenize(self, text: str) -> list[str]:
        return self.mecab.morphs(NOT_HANGUL.sub(" ", text) if self.cleaned else text)


def conventions() -> dict:
    """name -> a factory of its tokenizer (None: the pipeline's own, rouge_scores' default)."""
    return {
        "pipeline": lambda: None,
        "masks unprotected": lambda: KiwiVariant(protect_masks=False, keep_symbols=False),
        "punctuation kept": lambda: KiwiVariant(protect_masks=True, keep_symbols=True),
        "whitespace": Whitespace,
        "mecab raw": lambda: Mecab(cleaned=False),
        "mecab cleaned": lambda: Mecab(cleaned=True),
    }


def systems(records: list[dict]) -> dict[str, list[str]]:
    refs = [r["summaries"][0] for r in records]
    return {
        "baseline/lead": run_baseline("lead", records),
        "baseline/longest": run_baseline("longest", records),
        "next reference": refs[1:] + refs[:1],
    }


def score(predictions: list[str], references: list[list[str]], tokenizer) -> dict:
    frame = rouge_scores(predictions, references, "mean", tokenizer)
    means = {k: round(100 * float(frame[k].mean()), 2) for k in ROUGE_KEYS}
    return {"final": round(sum(100 * float(frame[k].mean()) for k in ROUGE_KEYS) / 3, 2), **means}


def measure(records: list[dict]) -> dict:
    references = [r["summaries"] for r in records]
    outputs, table = systems(records), {}
    for name, make in conventions().items():
        try:
            tokenizer = make()
        except ImportError as exc:
            table[name] = {"missing": str(exc)}
            continue
        t0 = time.perf_counter()
        table[name] = {s: score(preds, references, tokenizer) for s, preds in outputs.items()}
        table[name]["seconds"] = round(time.perf_counter() - t0, 2)
    return table


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("kiwipiepy", "kiwipiepy_model", "python-mecab-ko", "python-mecab-ko-dic", "rouge-score"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def markdown(table: dict, system_names: list[str]) -> str:
    lines = ["| convention | " + " | ".join(system_names) + " |", "|---" * (len(system_names) + 1) + "|"]
    for name, row in table.items():
        cells = [f"{row[s]['final']:.2f}" if s in row else "not installed" for s in system_names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ko" / "dev.csv"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "scoring_conventions.json"))
    args = ap.parse_args(argv)
    records = read_split(args.data, "dev")
    KiwiMorphemeTokenizer(num_workers=1).tokenize("준비")  # Kiwi's model loaded before any timer
    table = measure(records)
    result = {
        "date": datetime.date.today().isoformat(),
        "data": args.data,
        "n": len(records),
        "versions": versions(),
        "final": table,
    }
    write_json(args.out, result)
    print(markdown(table, list(systems(records[:2]))))


if __name__ == "__main__":
    main()
