"""The `dvamn` command: every stage is registered and explains itself."""

import pytest

from dvamn.cli import COMMAND_MODULES, build_parser

COMMANDS = ("demo", "synth", "extract", "train", "evaluate", "catalog", "serve", "match")


def test_every_command_module_exists_and_registers():
    import importlib.util

    for module in COMMAND_MODULES:
        assert importlib.util.find_spec(module) is not None, module
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(subparsers.choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_each_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"dvamn {command}" in text and len(text) > 300


def test_importing_the_cli_does_not_import_ray_or_torch():
    import subprocess
    import sys

    code = "import sys, dvamn.cli; dvamn.cli.build_parser(); print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_dvamn_train_defaults_to_the_onset_head_and_no_onset_head_is_the_papers_network():
    from dvamn.training.cli import train_config_from_args

    base = ["train", "FEATURES", "--out", "RUN"]
    default = train_config_from_args(build_parser().parse_args(base))
    assert default.model.onset_head and default.objective == "both"
    assert default.scoring == "cosine-w+onset"  # selection sees the rhythm term it serves
    paper = train_config_from_args(
        build_parser().parse_args([*base, "--no-onset-head", "--objective", "logcosh"])
    )
    assert not paper.model.onset_head and paper.objective == "logcosh"
    assert paper.scoring == "cosine-w"
    assert paper.model.to_dict() == type(paper.model)().to_dict()  # the paper's network
