"""The README's ``llmsvc`` and setup commands, read from README.md as written.

Every ``llmsvc …`` line of a README block, and every inline ```llmsvc …``` of README.md and the services'
READMEs, is parsed by the real CLI parser (an optional ``[…]`` part both left out and given; upper-case words
such as ``JOB`` stand for a value); the quick start's scripts exist and parse as bash, ``scripts/install.sh`` makes the
``.venv`` whose console script the quick start runs, and that console script answers. What the commands do
against a running stack is tested elsewhere, with other arguments (see tests/test_readme_blocks.py).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from services.cli.main import build_parser
from tests.readme import README, ROOT, SERVICE_READMES, Block, block, blocks, variants


def _llmsvc_lines(b: Block) -> list[list[str]]:
    return [words for words in b.commands() if Path(words[0]).name == "llmsvc"]


def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The CLI's parser, refusing abbreviated options (``--daily-token``) as a misspelt README line would be."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _strict(sub)
    return parser


WITH_CLI = [b for b in blocks() if b.is_shell and _llmsvc_lines(b)]


@pytest.mark.parametrize("readme_block", WITH_CLI, ids=[b.heading.lstrip("# ") for b in WITH_CLI])
def test_every_llmsvc_command_in_the_readme_parses(readme_block, capsys):
    for words in _llmsvc_lines(readme_block):
        for args in variants(words[1:]):
            try:
                _strict(build_parser()).parse_args(args)
            except SystemExit:
                pytest.fail(f"README.md line {readme_block.line}+ ({readme_block.heading}): `llmsvc {' '.join(args)}`"
                            f" is refused by the CLI:\n{capsys.readouterr().err}")


_INLINE = re.compile(r"`(llmsvc [^`]+)`")


def _inline_commands() -> list[tuple[str, str]]:
    """(``file:line``, command) for each ```llmsvc …``` in the text of README.md and the services' READMEs."""
    found = []
    for path in (README, *SERVICE_READMES):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found += [(f"{path.relative_to(ROOT)}:{number}", m.group(1)) for m in _INLINE.finditer(line)]
    return found


def test_every_inline_llmsvc_command_in_the_readmes_parses(capsys):
    commands = _inline_commands()
    assert len(commands) > 20 and any(c.startswith("llmsvc train submit") for _, c in commands)
    for where, command in commands:
        for args in variants(command.split()[1:]):
            try:
                _strict(build_parser()).parse_args(args)
            except SystemExit:
                pytest.fail(f"{where}: `{command}` is refused by the CLI:\n{capsys.readouterr().err}")


QUICKSTART = block("# llmsvc", "bash")


def test_the_quick_start_scripts_exist_and_parse():
    scripts = [words[1] for words in QUICKSTART.commands() if words[0] == "bash"]
    assert scripts == ["scripts/install.sh", "scripts/test.sh"]
    for script in scripts:
        res = subprocess.run(["bash", "-n", ROOT / script], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, f"{script}: {res.stderr}"
    # The test command is the install plus pytest.
    test_sh = (ROOT / "scripts/test.sh").read_text()
    assert "scripts/install.sh" in test_sh and ".venv/bin/python -m pytest" in test_sh


def test_the_quick_start_runs_the_console_script_install_sh_makes():
    (cmd,) = _llmsvc_lines(QUICKSTART)
    exe = Path(cmd[0])
    assert exe.parent == Path(".venv/bin")
    install = (ROOT / "scripts/install.sh").read_text()
    assert "-m venv .venv" in install and re.search(r"\.venv/bin/python -m pip install .*-e \"?\.", install)
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["llmsvc"] == \
        "services.cli.main:main"
    # The console script of the environment running these tests (install.sh's .venv under scripts/test.sh).
    script = Path(sys.executable).parent / exe.name
    res = subprocess.run([script, *cmd[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("usage: llmsvc up"), res.stderr
