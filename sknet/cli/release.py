"""`sknet release ls|promote|history`: the published versions, the LATEST pointer and its moves."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from sknet.cli.common import add_storage_args
from sknet.errors import SknetError

RELEASE_EXAMPLES = """\
examples:
  sknet release ls --store s3://my-bucket/sknet                       # every model's versions, LATEST marked
  sknet release ls --store file:///srv/sknet --model sknet-tiny
  sknet release promote --store s3://my-bucket/sknet --model sknet50 --version <flow-run-id> --reason "night data"
  sknet release history --store s3://my-bucket/sknet --model sknet50 --json      # every move of LATEST
  sknet release ls --store s3://my-bucket/sknet --model sknet50 --at 2026-12-01T06:00:00Z   # LATEST back then
"""


def add_commands(commands: argparse._SubParsersAction) -> None:
    """`sknet release ls|promote|history`: the published versions, the LATEST pointer and its moves."""
    release = commands.add_parser("release", help="list released versions, re-point LATEST (rollback), its history",
                                  epilog=RELEASE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    release.set_defaults(handler=run_release)
    actions = release.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    ls = _action(actions, "ls", "versions under releases/ with metrics and released_at, LATEST marked (a table; "
                 "JSON when piped)",
                 "Print each model's versions, oldest first: a table on a terminal, and with --json (or when stdout is "
                 "not a terminal, as scripts read it) the JSON {store, models: {model: {latest, versions: [{version, "
                 "uri, released_at, metrics, latest, complete}]}}}. complete=false: a publication that never finished "
                 "(no manifest), or one whose objects are not all there at the sizes its manifest records (damaged: "
                 "file → what is wrong); --verify checks every complete version's files by sha256 too. A store that "
                 "does not exist, a URI that is not a store's, or an unknown --model exits 2 naming it.",
                 model_required=False)
    ls.add_argument("--json", action="store_true", help="JSON, also on a terminal")
    ls.add_argument("--table", action="store_true", help="the table, also when stdout is not a terminal")
    ls.add_argument("--verify", action="store_true",
                    help="check each complete version's files by content (sha256) as well as size: reads them all")
    ls.add_argument("--at", default=None, metavar="TIME",
                    help="instead: what LATEST of --model was at TIME (ISO 8601, UTC unless an offset is given), "
                    "from its recorded moves (see `release history`)")
    promote = _action(actions, "promote", "point LATEST at an existing, complete version (also backwards: a rollback)",
                      "Re-point releases/<model>/LATEST at VERSION by compare-and-swap. VERSION must be published "
                      "completely (its manifest.json and every file it lists, at the recorded size and sha256). "
                      "Releases published before the promotion never move LATEST past it; a newer release moves it on "
                      "as usual. Prints the new pointer. The move is recorded (`release history`: promoted by "
                      "<user>@<host>, --reason) and the event sknet.release.promoted is posted to "
                      "$PREFECT_API_URL/events (with PREFECT_API_KEY or PREFECT_API_AUTH_STRING) when PREFECT_API_URL "
                      "is set; the output's `event` says whether it was received.")
    promote.add_argument("--version", required=True, metavar="V",
                         help="the version to point LATEST at (one path segment, [A-Za-z0-9._-]+)")
    promote.add_argument("--reason", default=None, metavar="TEXT",
                         help="why, recorded in the release history after \"promoted by <user>@<host>\" (one line)")
    history = _action(actions, "history", "every recorded move of LATEST, oldest first: when, from → to, why, "
                      "metrics, run URL",
                      "Print the moves of releases/<model>/LATEST (releases and promotions), oldest first, one a "
                      "line; --json: one JSON object per line ({sequence, from, to, why, when, metrics, run_url, …}). "
                      "History starts at the first move recorded (LATEST moves before the trail existed are not "
                      "known).")
    history.add_argument("--json", action="store_true", help="one JSON object per line")


def _action(actions: argparse._SubParsersAction, name: str, help: str, description: str, *,
            model_required: bool = True) -> argparse.ArgumentParser:
    """A release action with what all three take: --store (and the storage arguments) and --model."""
    parser = actions.add_parser(name, help=help, description=description, epilog=RELEASE_EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, metavar="URI",
                        help="where runs/ and releases/ are (storage.uri): s3://bucket/prefix or file:///path")
    add_storage_args(parser)
    parser.add_argument("--model", required=model_required, default=None, metavar="M",
                        help=("the model's name" if model_required else "only this model (its name") +
                        " under releases/: one path segment, [A-Za-z0-9._-]+" + ("" if model_required else ")"))
    return parser


def run_release(args: argparse.Namespace) -> dict | None:
    from sknet.release import check_segment, list_releases, promote
    from sknet.storage import open_store

    if args.model is not None:
        from sknet.plan import release_name

        args.model = release_name(check_segment("--model", args.model))  # sknet_tiny (model.name) = sknet-tiny
    if args.release_command == "promote":
        check_segment("--version", args.version)
    at = _release_time(args)
    store = open_store(_release_store_uri(args.store), endpoint_url=args.endpoint_url, region=args.region)
    if args.release_command == "history" or at is not None:
        return _release_history(store, args.model, at, args)
    if args.release_command == "ls":
        listing = {"store": store.uri, "models": list_releases(store, args.model, verify=args.verify)}
        if args.model and not listing["models"][args.model]["versions"]:
            known = ", ".join(list_releases(store)) or "none"
            raise SknetError(f"no release of model {args.model!r} in {store.uri} (models there: {known})")
        if not listing["models"]:
            print(f"sknet: note: no releases in {store.uri}", file=sys.stderr)
        if args.json or (not args.table and not sys.stdout.isatty()):
            return listing
        print(release_table(listing))
        return None
    pointer = promote(store, args.model, args.version, reason=args.reason)
    return {**pointer, "event": _announce(store.uri, args.model, pointer)}


def _release_store_uri(uri: str) -> str:
    """`--store` as `open_store` takes it, refused unless it names a store that can be there: s3://bucket[/prefix],
    file:///path or an existing local directory (`s3:/bad` is no local path anyone meant)."""
    from sknet.storage import FILE_SCHEME, S3_SCHEME, file_uri_path

    if uri.startswith(S3_SCHEME):
        if not uri[len(S3_SCHEME):].partition("/")[0]:
            raise SknetError(f"--store {uri!r}: no bucket (expected s3://bucket/prefix)")
        return uri
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri) and not uri.startswith(FILE_SCHEME):
        raise SknetError(f"--store {uri!r}: not a store URI (expected s3://bucket/prefix, file:///path or a local "
                         "directory)")
    path = Path(file_uri_path(uri) if uri.startswith(FILE_SCHEME) else uri)
    if not path.is_dir():
        raise SknetError(f"--store {uri!r}: {path} is not a directory (no such store)")
    return uri


def release_table(listing: dict) -> str:
    """`release ls` for people: one line a version (LATEST marked), metrics rounded, what is damaged named."""
    rows = [("model", "version", "released at", "top-1", "top-5", "state")]
    for model, found in listing["models"].items():
        for v in found["versions"]:
            metrics = v.get("metrics") or {}
            state = ("LATEST" if v["latest"] else "") if v["complete"] else \
                "damaged: " + ", ".join(v.get("damaged") or {}) if v.get("damaged") else "incomplete"
            rows.append((model, v["version"], str(v.get("released_at") or "—"), _percent(metrics.get(
                "top_1_accuracy")), _percent(metrics.get("top_5_accuracy")), state or "complete"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows)
    return "\n".join(lines)


def _percent(value) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) and value == value else "—"


def _release_time(args: argparse.Namespace):
    """`release ls --at`'s time, checked before the store is opened; None without --at."""
    from sknet.release.history import parse_time

    if getattr(args, "at", None) is None:
        return None
    if args.model is None:
        raise SknetError("release ls --at: name the model (--model M): the time is looked up in its history")
    return parse_time(args.at)


def _release_history(store, model: str, at, args: argparse.Namespace) -> dict | None:
    """`release history` (printed here, one move a line) or `release ls --at` (LATEST at that time, as JSON)."""
    from sknet.jsonio import dumps
    from sknet.release import history
    from sknet.release.history import latest_at, render

    records, notes = history(store, model)
    for note in notes or ([] if records else [f"no release of {model} in {store.uri}"]):
        print(f"sknet: note: {note}", file=sys.stderr)
    if at is not None:
        record = latest_at(records, at, model)
        return {"store": store.uri, "model": model, "at": at.isoformat(), "latest": record["to"],
                "since": record["when"], "move": record}
    for record in records:
        print(dumps(record, sort_keys=True) if args.json else render(record))
    return None


def _announce(store_uri: str, model: str, pointer: dict) -> dict:
    """Send `sknet.release.promoted` for the promotion that wrote `pointer`; what happened goes to the output (and
    to stderr when nothing was received)."""
    from sknet.release.events import release_event, send_event

    status = send_event(release_event(store_uri, model, pointer), occurred=pointer["move"]["when"])
    if not status["sent"]:
        print(f"sknet: note: {status['event']}: {status['detail']}", file=sys.stderr)
    return status
