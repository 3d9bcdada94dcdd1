import pytest

from conftest import run_sknet
from sknet.cli import build_parser


@pytest.mark.parametrize("command", [[], ["data", "synth"], ["data", "verify"], ["config", "show"],
                                     ["train"], ["launch"], ["gate"], ["eval"], ["export"], ["ranktable"],
                                     ["data", "stage"], ["data", "fetch"]])
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert "example" in capsys.readouterr().out


def test_config_show_prints_the_resolved_yaml_and_digest():
    proc = run_sknet("config", "show", "--config", "cpu-smoke", "--set", "train.epochs=9")
    assert proc.stdout.startswith("# digest: ")
    assert "  epochs: 9\n" in proc.stdout


def test_config_errors_exit_2_with_the_message_on_stderr():
    proc = run_sknet("train", "--config", "cpu-smoke", "--set", "gate.threshold=3", check=False)
    assert proc.returncode == 2
    assert "gate.threshold: got 3.0, expected a number in [0, 1]" in proc.stderr
    assert proc.stdout == ""


def test_one_profile_shows_one_recipe_digest_wherever_it_runs_and_each_digest_is_labelled(tmp_path):
    """Issue #27 §14: config show, the nightly log, the smoke log and the summary printed four digests."""
    from sknet.config import load_config
    from sknet.plan import plan_run
    from sknet.training.run_record import recipe_digest

    shown = run_sknet("config", "show", "--config", "cpu-smoke").stdout.splitlines()
    assert shown[0].startswith("# digest: ") and "(the resolved config" in shown[0]
    recipe = shown[1].split()[3]
    assert shown[1].startswith("# recipe digest: ") and recipe == recipe_digest(load_config("cpu-smoke"))
    planned = [plan_run("cpu-smoke", None, run_id=run, work_dir=tmp_path / run, publish_to=f"file://{tmp_path}/{run}")[0]
               for run in ("nightly", "smoke")]
    assert {recipe_digest(cfg) for cfg in planned} == {recipe}  # other paths, one recipe
    assert len({cfg.digest() for cfg in planned}) == 2  # the resolved configs differ, and are labelled so
    assert recipe_digest(load_config("cpu-smoke", ["train.epochs=4"])) != recipe
