"""Issue 19 §1–2: what we render from data is shown as text, never rendered (sknet.markdown, the notification
template), and secrets stay out of what we print and log (a presigned URL's signature, the server's log).

`HOSTILE` and `check_rendered_as_text` are shared with the card's and the run summary's tests: a document built
from hostile values must render with the same structure as the one built from plain values, show each hostile
value whole as text, and hold no tag, image or live link.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from sknet.errors import DataError
from sknet.markdown import DASH, code, number, table, text

REPO = Path(__file__).resolve().parent.parent
HOSTILE = ("s3://b/`x`` y\n# Pwned <img src=x onerror=alert(1)> [login](https://evil.example/login) | a *b* _c_ "
           "~~d~~ <https://evil.example> www.evil.example &amp; \\")
STRUCTURE = ("h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "tr", "th", "td", "blockquote", "pre", "hr", "a", "img",
             "strong", "em", "del", "br")


def rendered(markdown: str) -> str:
    """The HTML of a CommonMark renderer with GFM's tables and strikethrough, raw HTML allowed."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)


def visible(markdown: str) -> str:
    """The text a reader sees."""
    return html.unescape(re.sub(r"<[^>]+>", "", rendered(markdown)))


def bare_urls(markdown: str) -> list[str]:
    """The `https://…` and `www.…` that GFM would turn into links: those outside code spans, not escaped."""
    outside = markdown
    for span in re.findall(r"<code>(.*?)</code>", rendered(markdown), flags=re.S):
        outside = outside.replace(f"`{html.unescape(span)}`", "")
    return re.findall(r"(?:https?|ftp)://|www\.", outside, flags=re.IGNORECASE)


def check_rendered_as_text(hostile: str, plain: str, values: list[str]) -> None:
    """`hostile` (a document built from `values`) renders like `plain` (the same document from plain values) and
    shows each value whole (line breaks as spaces), with no tag, image or link of its own."""
    structure = [Counter(re.findall(rf"<({'|'.join(STRUCTURE)})\b", rendered(doc))) for doc in (hostile, plain)]
    assert structure[0] == structure[1]
    assert len(hostile.splitlines()) == len(plain.splitlines())  # no line break got in: no heading, item or row
    assert "<img" not in hostile and "<img" not in rendered(hostile)
    assert not bare_urls(hostile)
    shown = visible(hostile)
    for value in values:
        assert re.sub(r"[\x00-\x1f]+", " ", value) in shown


def test_text_and_code_show_a_hostile_value_as_exactly_its_characters():
    for fragment in (text(HOSTILE), code(HOSTILE)):
        check_rendered_as_text(f"- {fragment}", "- plain", [HOSTILE])
    assert code("s3://b/datasets/cifar10/0af3") == "`s3://b/datasets/cifar10/0af3`"  # verbatim when it can be
    assert text("top_1_accuracy 0.93 ≥ threshold 0.90") == "top_1_accuracy 0.93 ≥ threshold 0.90"


def test_a_table_cell_keeps_its_pipes_and_line_breaks_inside_it():
    markdown = table(["what", "value"], [[code("a|b"), text("c|d\ne")], ["`x|y`", "x"]])
    assert markdown.count("\n") == 3
    assert rendered(markdown).count("<td>") == 4 and "a|b" in visible(markdown) and "c|d e" in visible(markdown)


def test_numbers_that_are_missing_or_not_finite_are_a_dash():
    assert [number(v) for v in (float("nan"), float("inf"), -float("inf"), None)] == [DASH] * 4
    assert number(0.93) == "0.9300" and number(-0.005, "+.4f") == "-0.0050" and number(10000, ",") == "10,000"
    with pytest.raises(TypeError, match="expected a number, got str '0.93'"):
        number("0.93")


def test_an_unchanged_summary_shows_a_crafted_release_as_text_and_nan_as_a_dash():
    from sknet.release.training_key import unchanged_summary

    def summary(value: str, metric: float) -> str:
        release = {"version": value, "uri": value, "released_at": value,
                   "metrics": {"top_1_accuracy": metric, "top_5_accuracy": 0.99}}
        return unchanged_summary(release, {"digest": "d" * 64}, "k" * 64)

    hostile = summary(HOSTILE, float("nan"))
    check_rendered_as_text(hostile, summary("s3://b/releases/m/v1", 0.9), [HOSTILE])
    assert "top_1_accuracy —, top_5_accuracy 0.9900" in hostile and "nan" not in hostile


NOTIFICATION = REPO / "deployments" / "notify-on-failure.yaml"
CHAT_HOSTILE = ("<!channel> *URGENT* <https://evil.example/login|Open this run> <!here> <@U024BE7LH> @channel "
                "[Open](https://evil.example/x)\n# injected line")


def notification_text(**run: object) -> str:
    """The webhook's text for a flow run, rendered as Prefect's automation service renders it (its sandboxed
    environment and filters), joined as the `sknet-notify` block joins it."""
    from prefect.server.events.jinja_filters import all_filters
    from prefect.server.schemas.core import FlowRun
    from prefect.server.schemas.states import State, StateType
    from prefect.server.utilities.user_templates import register_user_template_filters, render_user_template

    register_user_template_filters(all_filters)
    [action] = yaml.safe_load(NOTIFICATION.read_text())["actions"]
    flow_run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name=run["name"], parameters=run["parameters"],
                       state=State(type=StateType.FAILED, name=run["state"], message=run["message"]))
    subject, body = (asyncio.run(render_user_template(action[part], {"flow_run": flow_run}))
                     for part in ("subject", "body"))
    return f"{subject}\n{body}"


def check_chat_safe(message: str) -> None:
    """No Slack control sequence (`<!channel>`, `<@U…>`, `<url|text>`), no @-mention, no Markdown link, no line
    the data started."""
    assert "<" not in message and ">" not in message
    assert not re.search(r"@(?:channel|here|everyone)\b", message) and "](" not in message
    assert "\n#" not in message


def test_every_value_in_the_notification_is_neutralised():
    message = notification_text(name=CHAT_HOSTILE, state=CHAT_HOSTILE, message=CHAT_HOSTILE,
                                parameters={"config": CHAT_HOSTILE, "dataset_uri": CHAT_HOSTILE})
    check_chat_safe(message)
    assert len(message.splitlines()) == 5  # subject, run and state, message, parameters, UI link
    assert message.count("&lt;!channel&gt; *URGENT* &lt;https://evil.example/login|Open this run&gt;") == 5


def test_a_gate_miss_notification_names_the_run_its_state_and_the_gate_message():
    message = notification_text(name="brisk-otter", state="Failed", message="gate failed: top_1_accuracy 0.1000 < "
                                "threshold 0.9990", parameters={"config": "cpu-smoke", "dataset_uri": None})
    assert message.splitlines()[:4] == [
        "sknet-train: a flow run did not complete", "sknet-train brisk-otter: Failed",
        "Message: gate failed: top_1_accuracy 0.1000 &lt; threshold 0.9990",  # Slack shows `<`
        "Parameters: config=cpu-smoke, dataset_uri=None"]


def test_the_server_log_filter_writes_urls_as_scheme_and_host():
    from infra.log_redaction import RedactUrls

    secret = "http://USERNAME:PASSWORD1@hooks.example.com:8443/services/T0/B0/SECRETTOKEN?token=QUERYSECRET#frag"
    try:
        raise RuntimeError(f"Server error '500' for url '{secret}'")
    except RuntimeError:
        record = logging.LogRecord("prefect.server", logging.ERROR, __file__, 1, "notify %s failed", (secret,),
                                   sys.exc_info())
    assert RedactUrls().filter(record)
    line = logging.Formatter("%(message)s").format(record)
    assert not re.search("USERNAME|PASSWORD1|SECRETTOKEN|QUERYSECRET|frag", line)
    assert line.count("http://hooks.example.com:8443/***") == 2
    access = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s"',
                               ("127.0.0.1:5", "GET", "/api/flow_runs/filter"), None)
    assert RedactUrls().filter(access) and access.msg == '127.0.0.1:5 - "GET /api/flow_runs/filter"'  # no scheme


def test_a_presigned_url_with_a_space_is_refused_without_its_signature(tmp_path):
    from sknet.data.stage import stage_dataset
    from sknet.storage import LocalStore

    url = ("https://bucket.example.com/cifar-10-binary.tar.gz?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature="
           "abc SIGNATURE123")
    with pytest.raises(DataError) as refused:
        stage_dataset(url, LocalStore(tmp_path / "store"), work_dir=tmp_path)
    message = str(refused.value)
    assert "SIGNATURE123" not in message and "AKIAEXAMPLE" not in message
    assert "X-Amz-Signature=REDACTED" in message and "has a space at character" in message and "%20" in message
    assert refused.value.__cause__ is None and refused.value.__context__ is None
