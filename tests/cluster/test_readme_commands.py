"""Every command the documentation shows is one the real parsers accept.

Shell lines are taken from the fenced code blocks of README.md and docs/*.md. Each
``dvamn ...`` command (also the entrypoint after ``--`` of ``ray job submit``) is parsed
with ``dvamn.cli.build_parser()``; each ``ray ...`` and ``serve ...`` command with Ray's
own click commands (parsing only, nothing runs). Config files that ``ray``, ``serve`` and
``kubectl`` lines name must exist in the repository.
"""

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```|~~~)(?P<lang>[\w+-]*)\s*$")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
CONFIG_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ShellCommand:
    source: str  # "docs/cluster.md:42"
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.source}: {shlex.join(self.argv)}"


def shell_lines(markdown: str) -> list[tuple[int, str]]:
    """(line number, command) of every shell command in the fenced shell blocks.

    Backslash continuations are joined; in ``console`` blocks only ``$ `` lines count.
    """
    out: list[tuple[int, str]] = []
    language: Optional[str] = None  # None: outside a fence
    pending, pending_start = "", 0
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence and language is None:
            language = fence["lang"].lower()
            continue
        if fence and language is not None:
            language = None
            continue
        if language is None or language not in SHELL_LANGUAGES:
            continue
        text = line.strip()
        if not pending:
            if language == "console":
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            elif text.startswith("$ "):
                text = text[2:]
            pending_start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        command = (pending + text).strip()
        pending = ""
        if command and not command.startswith("#"):
            out.append((pending_start, command))
    return out


def simple_commands(line: str) -> list[tuple[str, ...]]:
    """The simple commands of a shell line: split at && || ; | &, env assignments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for argv in commands:
        while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
            argv = argv[1:]
        if argv:
            out.append(tuple(argv))
    return out


def documented_commands(path: Path) -> list[ShellCommand]:
    rel = path.relative_to(REPO)
    return [
        ShellCommand(f"{rel}:{number}", argv)
        for number, line in shell_lines(path.read_text())
        for argv in simple_commands(line)
    ]


def dvamn_invocations(command: ShellCommand) -> list[tuple[str, ...]]:
    """dvamn argv lists in a command: the command itself, or a job's entrypoint."""
    argv = command.argv
    if argv[0] == "dvamn":
        return [argv[1:]]
    if argv[:2] == ("python", "-m") and len(argv) > 2 and argv[2] in ("dvamn", "dvamn.cli"):
        return [argv[3:]]
    if argv[:3] == ("ray", "job", "submit") and "--" in argv:
        entrypoint = argv[argv.index("--") + 1 :]
        if entrypoint and entrypoint[0] == "dvamn":
            return [entrypoint[1:]]
    return []


def parse_dvamn(argv: tuple[str, ...]) -> Optional[str]:
    """None when the real CLI parser accepts argv, else argparse's message."""
    from dvamn.cli import build_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(list(argv))
    except SystemExit as exit_:
        if exit_.code not in (0, None):  # 0: --help
            return stderr.getvalue().strip() or f"exit {exit_.code}"
    return None


def parse_click(root, prog: str, args: list[str]) -> Optional[str]:
    """None when Ray's click command tree accepts args (parsing only), else the error."""
    import click

    command, name = root, prog
    try:
        while True:
            ctx = command.make_context(name, list(args))
            if not isinstance(command, click.Group):
                return None
            rest = list(getattr(ctx, "_protected_args", None) or ctx.protected_args) + ctx.args
            name, command, args = command.resolve_command(ctx, rest)
    except click.exceptions.Exit as exit_:
        return None if exit_.exit_code == 0 else f"exit {exit_.exit_code}"
    except click.ClickException as error:
        return f"{name}: {error.format_message()}"


def doc_files() -> list[Path]:
    return sorted((REPO / "docs").glob("*.md")) + ([README] if README.exists() else [])


def all_commands() -> list[ShellCommand]:
    return [c for path in doc_files() for c in documented_commands(path)]


def test_shell_lines_are_found_in_fences_joined_and_split():
    markdown = (
        "text `dvamn no`\n"
        "```bash\n"
        "# a comment\n"
        "export RAY_ADDRESS=http://localhost:8265\n"
        "RAY_AUTH_MODE=token ray job submit --no-wait -- \\\n"
        "    dvamn extract s3://b/v --out s3://b/f  # trailing comment\n"
        "```\n"
        "```python\nimport dvamn\n```\n"
        "```console\n$ dvamn --help && ray down cluster.yaml\noutput line\n```\n"
    )
    lines = shell_lines(markdown)
    assert [number for number, _ in lines] == [4, 5, 12]
    argvs = [argv for _, line in lines for argv in simple_commands(line)]
    assert argvs[1][:4] == ("ray", "job", "submit", "--no-wait")
    assert dvamn_invocations(ShellCommand("x", argvs[1])) == [
        ("extract", "s3://b/v", "--out", "s3://b/f")
    ]
    assert argvs[2:] == [("dvamn", "--help"), ("ray", "down", "cluster.yaml")]


def _shows(commands: list[ShellCommand], *pattern: str) -> bool:
    """Some command's argv holds ``pattern`` in order (a token ending in * is a prefix)."""

    def matches(token: str, want: str) -> bool:
        return token.startswith(want[:-1]) if want.endswith("*") else token == want

    for command in commands:
        argv = iter(command.argv)
        if all(any(matches(token, want) for token in argv) for want in pattern):
            return True
    return False


RUNBOOK = (
    ("ray", "get-auth-token"),
    ("ray", "up", "cluster.yaml"),
    ("ray", "job", "submit", "--", "dvamn", "extract", "s3://*", "--out", "s3://*"),
    ("ray", "job", "submit", "--", "dvamn", "train", "s3://*", "--out", "s3://*", "--workers"),
    ("serve", "deploy", "serve_config.yaml"),
    ("ray", "down", "cluster.yaml"),
)


def test_the_docs_show_the_cluster_runbook():
    """The cluster section carries every step the issue asks for (README once merged)."""
    for path in [REPO / "docs" / "cluster.md"] + ([README] if README.exists() else []):
        commands = documented_commands(path)
        for pattern in RUNBOOK:
            assert _shows(commands, *pattern), f"{path.name} shows no `{' '.join(pattern)}`"


def test_every_documented_dvamn_command_parses():
    invocations = [(c, argv) for c in all_commands() for argv in dvamn_invocations(c)]
    assert invocations, "the docs show no dvamn command"
    failures = [f"{c}\n    {error}" for c, argv in invocations if (error := parse_dvamn(argv))]
    assert not failures, "commands the CLI refuses:\n" + "\n".join(failures)


@pytest.mark.parametrize("tool", ["ray", "serve"])
def test_every_documented_ray_and_serve_command_parses(tool):
    if tool == "ray":
        from ray.scripts.scripts import cli as root
    else:
        from ray.serve.scripts import cli as root
    commands = [c for c in all_commands() if c.argv[0] == tool]
    failures = [f"{c}\n    {e}" for c in commands if (e := parse_click(root, tool, c.argv[1:]))]
    assert not failures, f"{tool} commands that {tool} refuses:\n" + "\n".join(failures)


def test_config_files_named_by_cluster_commands_exist():
    missing = []
    for command in all_commands():
        if command.argv[0] not in ("ray", "serve", "kubectl"):
            continue
        for arg in command.argv[1:]:
            if arg.endswith(CONFIG_SUFFIXES) and "://" not in arg and not (REPO / arg).is_file():
                missing.append(f"{command}: {arg}")
    assert not missing, "files the docs name but the repository lacks:\n" + "\n".join(missing)
