"""Train/dev/test leakage: shared fnames, identical and near-duplicate dialogues (character 5-gram Jaccard).

Ingest (kdsum.data.ingest) calls :func:`find_leakage` on its validated splits (objects with ``name``, ``table.path`` and
``records``), then :func:`apply_policy` (``data.leakage``): ``report`` keeps every row and records the pairs,
``refuse`` refuses any overlap (:func:`leakage_error`), ``drop_train`` removes the train rows that copy or
near-duplicate a dev or test dialogue. An fname in two splits is refused under every policy, and so is a dialogue
identical after normalisation in two splits, unless ``drop_train`` removes its train copy.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kdsum.data.readers import DataError

# --------------------------------------------------------------------------- near-duplicates
#
# Similarity of two dialogues: the Jaccard index of the sets of character 5-grams of their similarity text (the
# turns' text without speaker tags, case-folded, letters and digits only, Hangul decomposed into jamo by NFD), so
# that one threshold fits Korean (5 jamo: about 2 syllables) and English (5 letters). Measured on the real data
# (tests/test_data.py, test_real_data_near_duplicates): DialogSum's duplicated dialogues score 0.47-1.0 in English;
# the two independent Korean translations of one dialogue 0.21-0.53; Korean dialogues translated from unrelated
# English ones at most 0.21 (two short stock-phrase reservations); the repository's sample data, written as
# paraphrases of a few scenarios, at most 0.23. The default threshold, 0.25, refuses nothing of the sample and
# none of the unrelated pairs, and catches 12 of the 15 Korean translations of DialogSum's identical dialogues.
#
# Exact for every pair that shares at least MIN_SHARED_RARE "rare" 5-grams (in at most max(RARE_DOCS, texts/256)
# distinct texts): candidate pairs come from the rare 5-grams' postings; the 5-grams common to many texts (stock
# phrases such as "안녕하세요") are counted exactly for the candidates only, with bit sets. Pairs that share only
# stock phrases are not compared (measured: every pair of the real data at similarity >= 0.2 shares >= 9 rare
# 5-grams). Identical similarity texts always pair, however short.

SHINGLE = 5
RARE_DOCS = 50
MIN_SHARED_RARE = 5
#: The default of ``data.near_duplicate_threshold`` (schemas/config.schema.yaml), calibrated on the real data.
NEAR_DUPLICATE_THRESHOLD = 0.25
_MAX_TEXTS = 1 << 24  # text ids share an int64 with a 40-bit hash
_NOT_WORD_RE = re.compile(r"[\W_]+")


def similarity_text(record: Mapping[str, Any]) -> str:
    """What near-duplicate detection compares: the turns' text, case-folded, letters and digits only, NFD."""
    text = "".join(t["text"] for t in record["turns"]).casefold()
    return unicodedata.normalize("NFD", _NOT_WORD_RE.sub("", text))


def similarity(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """The near-duplicate similarity of two normalised records: the Jaccard index of their 5-gram sets (one pair;
    ingest computes all pairs at once)."""
    grams = []
    for record in (a, b):
        t = similarity_text(record)
        grams.append({t[i : i + SHINGLE] for i in range(len(t) - SHINGLE + 1)} if len(t) >= SHINGLE else {t} - {""})
    union = len(grams[0] | grams[1])
    return len(grams[0] & grams[1]) / union if union else 1.0


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise (uint64, wrapping)."""
    h = h ^ (h >> np.uint64(31))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _shingle_table(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hash, text id) of every distinct character 5-gram of each text, sorted by hash then text id.

    A text shorter than 5 characters (but not empty) is one shingle, itself (padded with NULs, which normalised
    text never contains). The hash is a 40-bit polynomial hash of the code points: collisions among the 10^6
    distinct 5-grams of the full competition data are improbable (~10^-6) and would only add one shared 5-gram.
    """
    padded = [t if len(t) >= SHINGLE or not t else t.ljust(SHINGLE, "\0") for t in texts]
    lens = np.fromiter(map(len, padded), dtype=np.int64, count=len(padded))
    chars = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n_grams = np.maximum(lens - SHINGLE + 1, 0)
    span = max(chars.size - SHINGLE + 1, 0)
    h = np.zeros(span, dtype=np.uint64)
    for k in range(SHINGLE):
        h = h * np.uint64(0x100000001B3) + chars[k : k + span]
    h = _mix64(h)
    text_of = np.repeat(np.arange(len(padded), dtype=np.int64), n_grams)
    starts = np.cumsum(lens) - lens
    pos = np.arange(int(n_grams.sum()), dtype=np.int64) + np.repeat(starts - (np.cumsum(n_grams) - n_grams), n_grams)
    keys = ((h[pos] >> np.uint64(24)).astype(np.int64) << 24) | text_of
    keys.sort()
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if keys.size else keys
    return keys >> 24, keys & (_MAX_TEXTS - 1)


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each run of equal values of a sorted array."""
    if not sorted_keys.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    start = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    return start, np.diff(np.concatenate((start, [sorted_keys.size])))


def _rare_candidates(hashes: np.ndarray, tids: np.ndarray, in_a: np.ndarray, in_b: np.ndarray) -> np.ndarray:
    """Ordered text pairs (a in split A, b in split B, a != b) sharing >= MIN_SHARED_RARE of the given (rare)
    5-grams, as keys ``a << 24 | b``, with those counts: an array of shape (2, pairs)."""
    ha, ta = hashes[in_a], tids[in_a]
    hb, tb = hashes[in_b], tids[in_b]
    lo = np.searchsorted(hb, ha, "left")
    n = np.searchsorted(hb, ha, "right") - lo
    first = np.cumsum(n) - n
    partner = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(first, n) + np.repeat(lo, n)
    keys = (np.repeat(ta, n) << 24) | tb[partner]
    keys = keys[(keys >> 24) != (keys & (_MAX_TEXTS - 1))]
    keys.sort()
    start, count = _runs(keys)
    keep = count >= MIN_SHARED_RARE
    return np.stack((keys[start][keep], count[keep]))


def _similar_texts(texts: Sequence[str], masks: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(x, y, Jaccard) of the distinct texts x < y, from different splits (``masks``: the splits of each text as
    bits), whose 5-gram sets have Jaccard >= ``threshold``."""
    n_texts = len(texts)
    if n_texts >= _MAX_TEXTS:
        raise DataError(f"near-duplicate detection handles at most {_MAX_TEXTS - 1} distinct dialogues")
    hashes, tids = _shingle_table(texts)
    size = np.bincount(tids, minlength=n_texts)
    start, count = _runs(hashes)
    group = np.repeat(np.arange(start.size), count)
    rare = count[group] <= max(RARE_DOCS, -(-n_texts // 256))
    split_bits = masks[tids]
    found = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        in_a = rare & ((split_bits >> a) & 1).astype(bool)
        in_b = rare & ((split_bits >> b) & 1).astype(bool)
        if in_a.any() and in_b.any():
            found.append(_rare_candidates(hashes, tids, in_a, in_b))
    if not found:
        return []
    keys, rare_shared = np.concatenate(found, axis=1)
    x, y = keys >> 24, keys & (_MAX_TEXTS - 1)
    keys = (np.minimum(x, y) << 24) | np.maximum(x, y)  # one entry per unordered pair
    keys, first = np.unique(keys, return_index=True)
    rare_shared = rare_shared[first]
    x, y = keys >> 24, keys & (_MAX_TEXTS - 1)
    if not x.size:
        return []
    # the common 5-grams each candidate pair shares, exactly, from per-text bit sets
    common = ~rare
    common_group = group[common]
    common_id = np.cumsum(np.concatenate(([True], common_group[1:] != common_group[:-1]))) - 1
    common_id = common_id[: common_group.size]
    width = (int(common_id[-1]) + 8) // 8 if common_id.size else 1
    bits = np.zeros(n_texts * width, dtype=np.uint8)
    np.bitwise_or.at(bits, tids[common] * width + (common_id >> 3), np.left_shift(1, common_id & 7).astype(np.uint8))
    bits = bits.reshape(n_texts, width)
    shared = rare_shared.copy()
    for s in range(0, x.size, 4096):
        both = bits[x[s : s + 4096]] & bits[y[s : s + 4096]]
        shared[s : s + 4096] += np.bitwise_count(both).sum(axis=1, dtype=np.int64)
    jaccard = shared / (size[x] + size[y] - shared)
    keep = np.flatnonzero(jaccard >= threshold)
    return [(int(x[i]), int(y[i]), float(jaccard[i])) for i in keep]


# --------------------------------------------------------------------------- leakage

_SHOW_PAIRS = 3  # how many pairs a refusal names


def find_leakage(splits: Sequence[Any], threshold: float) -> list[dict[str, Any]]:
    """Per pair of splits (train-dev, train-test, dev-test) that overlap: the fnames they share, and the pairs of
    rows whose dialogues are identical after normalisation or near-duplicates (similarity >= ``threshold``), in
    file order of the earlier split, then of the later."""
    docs = [(si, r) for si, s in enumerate(splits) for r in s.records]
    text_id: dict[str, int] = {}
    doc_text = [text_id.setdefault(similarity_text(r), len(text_id)) for _, r in docs]
    masks = np.zeros(len(text_id), dtype=np.int64)
    docs_of: defaultdict[int, list[int]] = defaultdict(list)
    for d, ((si, _), t) in enumerate(zip(docs, doc_text, strict=True)):
        masks[t] |= 1 << si
        docs_of[t].append(d)
    similar = [(t, t, 1.0) for t in docs_of if masks[t] & (masks[t] - 1)]  # one text in several splits
    similar += _similar_texts(list(text_id), masks, threshold)
    pairs: defaultdict[tuple[int, int], list[tuple[int, int, float]]] = defaultdict(list)
    for x, y, sim in similar:
        for dx in docs_of[x]:
            for dy in docs_of[y] if x != y else docs_of[x]:
                (sa, _), (sb, _) = docs[dx], docs[dy]
                if sa < sb:
                    pairs[sa, sb].append((dx, dy, sim))
                elif sb < sa and x != y:
                    pairs[sb, sa].append((dy, dx, sim))
    found: list[dict[str, Any]] = []
    for i, a in enumerate(splits):
        for j in range(i + 1, len(splits)):
            b = splits[j]
            shared = sorted({r["fname"] for r in a.records} & {r["fname"] for r in b.records})
            rows = sorted(pairs.get((i, j), ()))
            if not shared and not rows:
                continue
            found.append(
                {
                    "splits": [a.name, b.name],
                    "files": [str(a.table.path), str(b.table.path)],
                    "shared_fnames": [f for f in (r["fname"] for r in a.records) if f in set(shared)],
                    "pairs": [
                        {
                            "fnames": [docs[dx][1]["fname"], docs[dy][1]["fname"]],
                            "similarity": round(sim, 4),
                            "identical": docs[dx][1]["dialogue"] == docs[dy][1]["dialogue"],
                        }
                        for dx, dy, sim in rows
                    ],
                }
            )
    return found


def leakage_error(leakage: list[dict[str, Any]], threshold: float, hint: str = "") -> DataError:
    """One line naming the first overlapping split pair, its files and its first (most similar) pairs."""
    first = leakage[0]
    (name_a, name_b), (file_a, file_b) = first["splits"], first["files"]
    fnames, pairs = first["shared_fnames"], first["pairs"]
    between = f"between {name_a} and {name_b}"
    if fnames:
        what = (
            f"fname {fnames[0]!r} is in both {name_a} ({file_a}) and {name_b} ({file_b}); {len(fnames)} shared "
            f"fname(s) {between}" + (f", and {len(pairs)} shared dialogue(s)" if pairs else "")
        )
    else:
        # identical first, then the most similar; file order among equals (a stable sort)
        shown = sorted(pairs, key=lambda p: (not p["identical"], -p["similarity"]))[:_SHOW_PAIRS]
        top = shown[0]
        how = (
            "is identical after normalisation to"
            if top["identical"]
            else f"is a near-duplicate (similarity {top['similarity']:.2f}) of"
        )
        also = ", ".join(f"{p['fnames'][1]!r} ~ {p['fnames'][0]!r} ({p['similarity']:.2f})" for p in shown[1:])
        what = (
            f"dialogue of {top['fnames'][1]!r} in {name_b} ({file_b}) {how} {top['fnames'][0]!r} in {name_a} "
            f"({file_a}); {len(pairs)} such pair(s) {between} (identical, or similarity >= "
            f"data.near_duplicate_threshold {threshold})" + (f", also {also}" if also else "")
        )
    others = f"; {len(leakage) - 1} other split pair(s) also overlap" if len(leakage) > 1 else ""
    return DataError(f"leakage: {what}{others}; {hint or _REFUSE_HINT}")


# --------------------------------------------------------------------------- policy

#: ``data.leakage``: what ingest does with dialogues shared between splits (the first is the default).
LEAKAGE_POLICIES = ("report", "refuse", "drop_train")
_REFUSE_HINT = "remove them, or set data.leakage: report (record them) or drop_train (drop the train rows)"


def _hard_overlaps(found: list[dict[str, Any]], policy: str) -> list[dict[str, Any]]:
    """The overlaps no policy accepts: shared fnames, and identical dialogues (except the train copies that
    ``drop_train`` removes)."""
    hard = []
    for item in found:
        dropped = policy == "drop_train" and item["splits"][0] == "train"
        identical = [p for p in item["pairs"] if p["identical"] and not dropped]
        if item["shared_fnames"] or identical:
            hard.append({**item, "pairs": identical})
    return hard


def _hard_hint(hard: list[dict[str, Any]]) -> str:
    if hard[0]["shared_fnames"]:
        return "an fname must be in one split only, whatever data.leakage says; remove or rename them"
    if hard[0]["splits"][0] == "train":
        return "an identical dialogue is refused under data.leakage: report; remove it, or set drop_train"
    return "an identical dialogue in two evaluated splits is refused under every data.leakage policy; remove it"


def train_pairs(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs of a train row with a dev or test row, in :func:`find_leakage`'s order."""
    return [p for item in found if item["splits"][0] == "train" for p in item["pairs"]]


def apply_policy(splits: Sequence[Any], found: list[dict[str, Any]], policy: str, threshold: float) -> list[str]:
    """Refuse what ``policy`` refuses; under ``drop_train``, remove the train rows of :func:`train_pairs` from the
    train split's records (in place). Returns the fnames removed, in file order."""
    if policy not in LEAKAGE_POLICIES:
        raise DataError(f"data.leakage: unknown policy {policy!r}; expected one of {', '.join(LEAKAGE_POLICIES)}")
    if hard := _hard_overlaps(found, policy):
        raise leakage_error(hard, threshold, _hard_hint(hard))
    if found and policy == "refuse":
        raise leakage_error(found, threshold)
    if policy != "drop_train" or not found or splits[0].name != "train":
        return []
    drop = {p["fnames"][0] for p in train_pairs(found)}
    train = splits[0]
    dropped = [r["fname"] for r in train.records if r["fname"] in drop]
    train.records = [r for r in train.records if r["fname"] not in drop]
    if not train.records:
        raise DataError(f"data.leakage: drop_train would remove every row of {train.table.path}")
    return dropped
