"""Know the data before training on it: each split's class histogram, its exact duplicate images, a skew check.

Duplicates are images whose 3,072 pixel bytes equal another record's, whatever the labels. Within a split,
`duplicates` counts the records beyond the first copy of each image; across splits, `test_in_train` counts the
test records whose image is also in train (their test accuracy measures memory, not generalization). Images are
compared by a 128-bit BLAKE2b digest of their bytes: a collision among 60,000 images has a probability near
1e-29. Duplicates are reported, never refused.

A split is skewed when a class has no images, or when a class count is off the split's mean (records / 10) by
more than `max_class_skew` of that mean (default 0.1 = 10 %; CIFAR-10 has exactly 5,000 images per class in train
and 1,000 in test). `refuse_skew` refuses a skewed dataset unless the skew was allowed (`--allow-skew`); the
census then says so (`skew_allowed`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sknet.data.layout import CLASS_NAMES, NUM_CLASSES, RECORD_BYTES, TEST_FILE, TRAIN_FILES
from sknet.errors import ConfigError, DataError
from sknet.markdown import number, table, text

log = logging.getLogger(__name__)

DEFAULT_MAX_CLASS_SKEW = 0.1  # a class more than 10 % off its split's mean is refused
SPLITS = {"train": TRAIN_FILES, "test": (TEST_FILE,)}
OVERRIDE = "--allow-skew (the sknet-stage flow's allow_skew=true)"


def check_max_class_skew(value: float) -> float:
    """`value` if it is a finite fraction ≥ 0, else a `ConfigError` (checked before anything is read)."""
    if not _is_number(value) or value < 0:
        raise ConfigError(f"--max-class-skew {value!r}: expected a fraction ≥ 0 of a split's mean class count "
                          f"(default {DEFAULT_MAX_CLASS_SKEW:g} = {DEFAULT_MAX_CLASS_SKEW:.0%})")
    return float(value)


def image_digests(records: np.ndarray) -> np.ndarray:
    """The 16-byte BLAKE2b digest of each record's image bytes (label byte excluded), as an (n,) `S16` array."""
    images = np.ascontiguousarray(records[:, 1:])
    return np.array([hashlib.blake2b(row, digest_size=16).digest() for row in images], dtype="S16")


def split_census(layout: Path, names: tuple[str, ...]) -> tuple[dict, np.ndarray]:
    """(records, per-class counts, duplicates) of the split in `names`, and its image digests."""
    labels, digests = [], []
    for name in names:
        records = np.fromfile(layout / name, dtype=np.uint8).reshape(-1, RECORD_BYTES)
        labels.append(records[:, 0])
        digests.append(image_digests(records))
    all_labels, all_digests = np.concatenate(labels), np.concatenate(digests)
    counts = np.bincount(all_labels, minlength=NUM_CLASSES)[:NUM_CLASSES]
    facts = {"records": int(all_labels.size), "classes": dict(zip(CLASS_NAMES, counts.tolist(), strict=True)),
             "duplicates": int(all_digests.size - np.unique(all_digests).size)}
    return facts, all_digests


def take_census(layout: Path, *, max_class_skew: float = DEFAULT_MAX_CLASS_SKEW, allow_skew: bool = False) -> dict:
    """The census of a verified layout directory: per split, class counts and duplicates; test images also in
    train; the classes off their split's mean by more than `max_class_skew` (`skewed`) and whether that was allowed."""
    max_class_skew, started = check_max_class_skew(max_class_skew), time.perf_counter()
    splits, digests = {}, {}
    for split, names in SPLITS.items():
        splits[split], digests[split] = split_census(Path(layout), names)
    skewed = skewed_classes(splits, max_class_skew)
    census = {"splits": splits, "test_in_train": int(np.isin(digests["test"], digests["train"]).sum()),
              "max_class_skew": max_class_skew, "skewed": skewed, "skew_allowed": bool(skewed and allow_skew)}
    log.info("data census of %s: %s images, %d skewed classes, %d + %d duplicates, %d test images in train (%.2f s)",
             layout, f"{sum(facts['records'] for facts in splits.values()):,}", len(skewed),
             splits["train"]["duplicates"], splits["test"]["duplicates"], census["test_in_train"],
             time.perf_counter() - started)
    return census


def skewed_classes(splits: Mapping[str, Mapping], max_class_skew: float) -> list[dict]:
    """Each class with no images, or off its split's mean by more than `max_class_skew` of it."""
    found = []
    for split, facts in splits.items():
        mean = facts["records"] / NUM_CLASSES
        for name, count in facts["classes"].items():
            off = abs(count - mean) / mean if mean else 0.0
            if count == 0 or off > max_class_skew:
                found.append({"split": split, "class": name, "count": count, "mean": mean, "off": round(off, 4)})
    return found


def describe_skew(entry: Mapping) -> str:
    """`train class 'cat': 2,500 images, 50% below the split's mean of 5,000`."""
    where = f"{entry['split']} class {entry['class']!r}"
    if entry["count"] == 0:
        return f"{where}: no images (missing; the split's mean is {entry['mean']:,.0f})"
    side = "below" if entry["count"] < entry["mean"] else "above"
    return f"{where}: {entry['count']:,} images, {entry['off']:.0%} {side} the split's mean of {entry['mean']:,.0f}"


def refuse_skew(census: Mapping, where: str) -> None:
    """Raise a `DataError` naming every skewed class, unless the census has none or its skew was allowed."""
    if not census["skewed"] or census["skew_allowed"]:
        return
    limit = census["max_class_skew"]
    raise DataError(f"{where}: refusing to stage a skewed dataset: {'; '.join(map(describe_skew, census['skewed']))}. "
                    f"A class missing, or off its split's mean by more than --max-class-skew {limit:g} ({limit:.0%}), "
                    f"is refused (CIFAR-10 has 5,000 images per class in train, 1,000 in test). Check the source, or "
                    f"stage it anyway with {OVERRIDE}: the census then records that the skew was allowed")


def read_census(manifest: Mapping) -> dict | None:
    """The census a staged manifest records, or None when it has none or one not shaped like `take_census`'s
    (the manifest's metadata is not covered by the digest: a bucket is not trusted)."""
    census = manifest.get("census") if isinstance(manifest, Mapping) else None
    try:
        splits, skewed = census["splits"], census["skewed"]
        well_formed = (all(_split_well_formed(splits[split]) for split in SPLITS)
                       and type(census["test_in_train"]) is int and type(census["skew_allowed"]) is bool
                       and _is_number(census["max_class_skew"]) and isinstance(skewed, list)
                       and all(_skew_well_formed(entry) for entry in skewed))
    except (KeyError, TypeError):
        return None
    return dict(census) if well_formed else None


def _split_well_formed(facts: Mapping) -> bool:
    classes = facts["classes"]
    return (type(facts["records"]) is int and type(facts["duplicates"]) is int and isinstance(classes, Mapping)
            and set(classes) == set(CLASS_NAMES) and all(type(count) is int for count in classes.values()))


def _skew_well_formed(entry: Mapping) -> bool:
    return (entry["split"] in SPLITS and entry["class"] in CLASS_NAMES and type(entry["count"]) is int
            and _is_number(entry["mean"]) and _is_number(entry["off"]))


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _per_class(counts) -> str:
    """`5,000` when every class has as many, else `4,990–5,010`."""
    low, high = min(counts), max(counts)
    return number(low, ",") if low == high else f"{number(low, ',')}–{number(high, ',')}"


def census_lines(census: Mapping | None) -> list[str]:
    """The census as Markdown list items (for the model card's data section)."""
    if census is None:
        return ["- data census: not recorded for this dataset (staged before staging took one)"]
    splits = census["splits"]
    spread = "; ".join(f"{split} {number(splits[split]['records'], ',')} images, "
                       f"{_per_class(splits[split]['classes'].values())} per class" for split in SPLITS)
    limit = census["max_class_skew"]
    if not census["skewed"]:
        verdict = f"every class within {number(limit, '.0%')} of its split's mean"
    else:
        verdict = ("**class skew allowed** (--allow-skew): " if census["skew_allowed"] else "**skewed**: ") + \
            "; ".join(text(describe_skew(entry)) for entry in census["skewed"])
    return [f"- data census: {spread}; {verdict}",
            f"- exact duplicate images: {number(splits['train']['duplicates'], ',')} within train, "
            f"{number(splits['test']['duplicates'], ',')} within test, "
            f"{number(census['test_in_train'], ',')} test images also in train (reported, not refused)"]


def census_markdown(census: Mapping | None, uri: str) -> str:
    """The census as a Markdown page: per-class counts of each split, then duplicates and skew."""
    if census is None:
        return "\n".join([f"# Data census of {text(uri)}", "", *census_lines(None)])
    splits = census["splits"]
    rows = [[name, *(number(splits[split]["classes"][name], ",") for split in SPLITS)] for name in CLASS_NAMES]
    rows.append(["**all**", *(f"**{number(splits[split]['records'], ',')}**" for split in SPLITS)])
    return "\n".join([f"# Data census of {text(uri)}", "", table(["class", *SPLITS], rows), "", *census_lines(census)])


def census_differences(recorded: Mapping, census: Mapping) -> str:
    """What a recorded census says that the files do not (empty when they agree), for people."""
    found = []
    for split, facts in census["splits"].items():
        if recorded["splits"][split] != facts:
            wrong = [f"{name} {recorded['splits'][split]['classes'][name]} (the files: {count})"
                     for name, count in facts["classes"].items() if recorded["splits"][split]["classes"][name] != count]
            found.append(f"{split}: {', '.join(wrong) or 'records or duplicates differ'}")
    if recorded["test_in_train"] != census["test_in_train"]:
        found.append(f"test_in_train {recorded['test_in_train']} (the files: {census['test_in_train']})")
    return "; ".join(found)
