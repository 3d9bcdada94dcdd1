import pytest

from conftest import run_sknet
from sknet.cli import build_parser


@pytest.mark.parametrize("command", [[], ["data", "synth"], ["data", "verify"], ["config", "show"],
                                     ["train"], ["launch"], ["gate"], ["eval"], ["export"], ["ranktable"], ["data", "stage"], ["data", "fetch"]])
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
