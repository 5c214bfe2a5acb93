"""dvamn.console: our warnings on the console, everything else (Ray's too) in the log file."""

import logging
import os
import subprocess
import sys

from dvamn import console


def test_the_console_shows_our_warnings_and_the_file_gets_everything(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DVAMN_CACHE", str(tmp_path))
    with console.session("unit", verbose=False) as log_file:
        logging.getLogger("dvamn.example").warning("the input is odd: rename it")
        logging.getLogger("dvamn.example").info("a detail")
        logging.getLogger("ray.data").warning("an executor's note")
    shown = capsys.readouterr().err
    assert shown == "warning: the input is odd: rename it\n"
    written = log_file.read_text()
    assert "a detail" in written and "an executor's note" in written
    assert log_file.parent == tmp_path / "logs"

    with console.session("unit", verbose=True):
        logging.getLogger("ray.data").warning("an executor's note")
    assert "an executor's note" in capsys.readouterr().err


def test_what_is_written_to_file_descriptor_2_goes_to_the_log_file(tmp_path):
    """In a real process (not under a test's capture) C libraries' stderr output, such as
    Ray's C++ core's, lands in the log file; Python's sys.stderr keeps the console."""
    script = (
        "import os, sys\n"
        "from dvamn import console\n"
        "with console.session('fd', verbose=False) as f:\n"
        "    os.write(2, b'[core_worker.cc] noise\\n')\n"
        "    print('ours', file=sys.stderr)\n"
        "print(f)\n"
        "os.write(2, b'after\\n')\n"
    )
    env = {**os.environ, "DVAMN_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "ours\nafter\n"
    assert "[core_worker.cc] noise" in open(done.stdout.strip()).read()


def test_a_stage_prints_its_title_and_time_and_hands_the_time_to_its_command(capsys):
    with console.stage("1/2 do a thing") as took:
        console.say("   a line of the stage")
        assert took.seconds == 0.0  # known only at the end
    shown = capsys.readouterr().out.splitlines()
    assert shown[:3] == ["", "== 1/2 do a thing", "   a line of the stage"]
    assert shown[3] == f"   done in {took.seconds:.1f} s" and took.seconds > 0
