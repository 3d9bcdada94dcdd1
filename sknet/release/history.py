"""The audit trail of a model's LATEST: one record per move (a release or a promotion), recorded by the
compare-and-swap that moves LATEST.

A move's record (`move_record`: from, to, why, when, metrics, run URL) is written *inside* the LATEST it
moves (`pointer["move"]`), so the one conditional write both moves LATEST and records the move: a writer that
loses the race has recorded nothing, and no two moves are ever both recorded as the N-th. Records then leave
the pointer for `release-history/<model>/<sequence:08d>-<id>.json` (`keep_record`): each mover copies the
record of the LATEST it read there *before* its own conditional write, so a record reaches the trail before
the only pointer that holds it is replaced, and writes its own right after (a crash before that loses
nothing: LATEST still holds it). A record is written once and never changed.

Records link by id: `previous` is the id of the record of the LATEST the move replaced. A reader (`trail`)
starts at LATEST's record and follows `previous` back, so the history is exactly the chain of moves that
LATEST went through, oldest first. Anything in `release-history/` off that chain (only a record from before a
malformed LATEST was replaced, or from a store without conditional writes, can be) is reported, never shown
as a move. A LATEST written before the trail existed holds no record: history starts at the first recorded
move, whose `previous` is null and whose `from` is the version LATEST held.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from sknet.errors import ConfigError, SknetError
from sknet.markdown import CONTROL, number
from sknet.storage import StorageError, Store, WriteConflict, redact_url

HISTORY_PREFIX = "release-history"
RECORD_NAME = re.compile(r"(\d{8,})-([0-9a-f]{16})\.json")
MAX_REASON = 500  # characters of `promote --reason`


class NotRecorded(SknetError):
    """The trail does not reach back to the time asked about."""


def history_prefix(model: str) -> str:
    return f"{HISTORY_PREFIX}/{model}"


def record_key(model: str, record: Mapping) -> str:
    return f"{history_prefix(model)}/{record['sequence']:08d}-{record['id']}.json"


def move_record(current: Mapping | None, version: str, sequence: int, *, why: str, metrics: Mapping,
                run_url: str | None = None, **facts: object) -> dict:
    """The record of LATEST moving from `current` (the pointer read; None before the first release) to `version`
    as its `sequence`-th move. `facts` (action, by, reason, flow_run_id, dataset) join it unless None."""
    previous = record_of(current)
    return {"sequence": sequence, "id": uuid.uuid4().hex[:16], "previous": previous["id"] if previous else None,
            "from": (current or {}).get("version"), "to": version, "why": why,
            "when": datetime.now(UTC).isoformat(), "metrics": dict(metrics), "run_url": safe_url(run_url),
            **{key: value for key, value in facts.items() if value is not None}}


def record_of(pointer: Mapping | None) -> dict | None:
    """The move record LATEST `pointer` carries, if it carries a well-formed one for itself (else None: a LATEST
    written before the trail existed)."""
    record = (pointer or {}).get("move")
    if not well_formed(record):
        return None
    return record if (record["sequence"], record["to"]) == (pointer.get("sequence"), pointer.get("version")) else None


def well_formed(record: object) -> bool:
    """A move record as `move_record` writes it: a sequence ≥ 1, a 16-hex-digit id, `to`, and a readable `when`."""
    if not isinstance(record, dict):
        return False
    sequence, moment = record.get("sequence"), record.get("when")
    try:
        datetime.fromisoformat(moment)
    except (TypeError, ValueError):
        return False
    return isinstance(sequence, int) and not isinstance(sequence, bool) and sequence >= 1 and \
        isinstance(record.get("id"), str) and re.fullmatch(r"[0-9a-f]{16}", record["id"]) is not None and \
        isinstance(record.get("to"), str)


def keep_record(store: Store, model: str, pointer: Mapping | None) -> None:
    """Copy the record LATEST `pointer` carries into the trail, unless it is there already (records never change)."""
    if (record := record_of(pointer)) is None:
        return
    try:
        store.put_bytes_if(json.dumps(record, indent=2, sort_keys=True).encode(), record_key(model, record), None)
    except WriteConflict:
        pass  # written by the mover or by an earlier copy: the same record


def keep_own_record(store: Store, model: str, pointer: Mapping, log) -> None:
    """`keep_record` right after the move; a failure is a warning: LATEST holds the record, the next move copies it."""
    try:
        keep_record(store, model, pointer)
    except StorageError as exc:
        log.warning("LATEST of %s moved, its record stays in LATEST until the next move copies it (%s)", model, exc)


def trail(store: Store, model: str, pointer: Mapping | None) -> tuple[list[dict], list[str]]:
    """The moves that led to LATEST `pointer`, oldest first, and notes on what the trail does not show.

    Starts at the record LATEST carries and follows `previous` through `release-history/<model>/` (one listing,
    one read per record). A record that is missing or does not match where the chain expects it ends the
    history there, with a note; records off the chain are counted in a note.
    """
    head = record_of(pointer)
    if head is None:
        return [], [f"LATEST of {model} holds no move record (written before the release trail was kept, or there "
                    "is no release): history starts at the first recorded move"] if pointer else []
    prefix = history_prefix(model)
    stored = {match[2]: o.key for o in store.list(prefix + "/")
              if (match := RECORD_NAME.fullmatch(o.key.rsplit("/", 1)[-1]))}
    chain, notes = [head], []
    while (wanted := chain[-1].get("previous")) is not None:
        record = _stored_record(store, stored.get(wanted))
        if record is None or record.get("id") != wanted or record.get("sequence") != chain[-1]["sequence"] - 1:
            notes.append(f"{store.uri}/{prefix}: the record before move {chain[-1]['sequence']} (id {wanted}) is "
                         f"missing or unreadable: history before move {chain[-1]['sequence']} is not known")
            break
        chain.append(record)
    if off_chain := set(stored) - {record["id"] for record in chain}:
        notes.append(f"{store.uri}/{prefix}: {len(off_chain)} record(s) not on LATEST's chain (from before a "
                     "malformed LATEST was replaced, or a store without conditional writes): not shown")
    return chain[::-1], notes


def _stored_record(store: Store, key: str | None) -> dict | None:
    if key is None:
        return None
    try:
        record = json.loads(store.get_bytes(key))
    except (ValueError, RecursionError):
        return None
    return record if well_formed(record) else None


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (a date, or a date and time; UTC when it names no offset), else `ConfigError`."""
    try:
        moment = datetime.fromisoformat(text)
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except ValueError:
        raise ConfigError(f"--at {text!r}: expected an ISO 8601 time, e.g. 2026-12-01T06:00:00Z or "
                          "2026-12-01 (UTC unless an offset is given)") from None
    except OverflowError:  # its UTC time falls outside years 1-9999 (9999-12-31T23:00-05:00)
        raise ConfigError(f"--at {text!r}: in UTC this is outside the years 1 to 9999 that a time can name") from None


def latest_at(records: list[dict], moment: datetime, model: str) -> dict:
    """The record of the move that set LATEST as it was at `moment` (`records` oldest first); `NotRecorded` for a
    time before the first recorded move."""
    before = [record for record in records if _when(record) <= moment]
    if before:
        return before[-1]
    if not records:
        raise NotRecorded(f"no recorded move of LATEST of {model}: history starts at the first recorded move")
    first = records[0]
    then = (f"LATEST was {first['from']} then, since a time not recorded" if first.get("from") else
            f"{model} had no release before it")
    raise NotRecorded(f"{moment.isoformat()} is before the first recorded move of LATEST of {model} "
                      f"({first['when']}: {first.get('from') or '(none)'} → {first['to']}); {then}")


def _when(record: Mapping) -> datetime:
    moment = datetime.fromisoformat(record["when"])
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def who() -> str:
    """`user@host` of this process, for the record of a promotion."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def clean_reason(reason: str | None) -> str | None:
    """`promote --reason` as recorded: one line (control characters as spaces), 1 to MAX_REASON characters."""
    if reason is None:
        return None
    cleaned = CONTROL.sub(" ", reason).strip()
    if not cleaned or len(cleaned) > MAX_REASON:
        raise ConfigError(f"--reason: expected 1 to {MAX_REASON} characters of text, got {len(cleaned)}")
    return cleaned


def promotion_why(by: str, reason: str | None) -> str:
    """Why a promotion moved LATEST: "promoted by <user@host>", and the reason if one was given."""
    return f"promoted by {by}" + (f": {reason}" if reason else "")


def safe_url(url: str | None) -> str | None:
    """`url` without secrets (`redact_url`), or None when it is not a URL (Prefect gives "None/…" without a UI)."""
    return redact_url(url) if isinstance(url, str) and "://" in url else None


def render(record: Mapping) -> str:
    """One line of `sknet release history` for people: when, move number, from → to, why, metrics, run URL."""
    metrics = " ".join(f"{name}={number(value)}" for name, value in sorted(record.get("metrics", {}).items())
                       if isinstance(value, float))
    fields = [record["when"], f"#{record['sequence']}", f"{record.get('from') or '(none)'} → {record['to']}",
              record.get("why", ""), metrics, record.get("run_url") or ""]
    return CONTROL.sub(" ", "  ".join(str(field) for field in fields if field))


def release_facts(flow_run_id: str | None, run_url: str | None, dataset: Mapping) -> dict:
    """What a release's manifest records for its moves and events: the flow run, its URL (no secrets), the dataset."""
    facts = {"flow_run_id": flow_run_id, "run_url": safe_url(run_url),
             "dataset": {"uri": redact_url(dataset["uri"]), "digest": dataset["digest"]}}
    return {key: value for key, value in facts.items() if value is not None}
