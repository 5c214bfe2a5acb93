"""README's first two commands are what a newcomer runs; CI runs exactly them."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_start_commands() -> list:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for block in blocks[:2]:
        lines = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
        assert len(lines) == 1, block
        commands.append(lines[0])
    return commands


def test_readme_opens_with_the_demo_and_the_tests():
    demo, tests = readme_start_commands()
    assert demo.endswith("dvamn demo")
    assert tests.endswith("python -m pytest -q") and '".[test]"' in tests


def test_ci_runs_exactly_the_readme_commands():
    demo, tests = readme_start_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    ci_lines = [ln.strip() for ln in ci.splitlines()]
    assert demo in ci_lines, "the demo smoke check must be README's first command"
    assert tests in ci_lines, "CI must run README's test command"
