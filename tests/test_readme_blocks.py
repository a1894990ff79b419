"""The README is a test: every command it shows runs in a test, as written. This guard keeps that true.

Each fenced code block of README.md and of every ``services/*/README.md`` (``tests/readme.py`` parses them) is
known here by its key, ``<heading> [<first 12 hex of the sha256 of its text>]`` (after ``<file>: `` for a
service's README), so any edit to a block, or a move under another heading, gives it
a new key. ``REGISTRY`` maps each key to the tests that run (or check) that block as written, read from
README.md; a block that is not a command (sample output, a JSON shape) may have ``"not a command: <what it
is>"`` instead. ``UNTESTED`` names, for now, what no test runs yet: a block in it alone has no test at all, a
block in both has tests that check only part of it (they parse it, or render what it installs) and its entry
says what is missing. The guard fails when a block has no entry (new or edited), when an entry names a block no
longer in the README, and when an entry names a test that does not exist (found statically: the file, and a
top-level ``def test_…`` in it; no test module is imported).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from tests.readme import ROOT, Block, all_blocks, parse

HERE = "tests/test_readme_blocks.py"
NOT_A_COMMAND = "not a command: "

CLI = "tests/cli/test_readme_commands.py"
K8S = "tests/k8s/test_readme_commands.py"
PARSED = f"{CLI}::test_every_llmsvc_command_in_the_readme_parses"
K8S_OFFLINE = [f"{K8S}::test_every_line_works_in_the_namespace_the_block_creates",
               f"{K8S}::test_each_helm_install_lints_clean_with_its_values_file",
               f"{K8S}::test_the_jobs_block_follows_objects_the_manifests_and_the_chart_create"]

REGISTRY: dict[str, list[str] | str] = {
    # bash scripts/install.sh && .venv/bin/llmsvc up / bash scripts/test.sh
    # The first line runs as written in tests/cli/test_quick_start.py (a fresh home, port 8000, a 60-step
    # build); the second is the command .ci/run runs, the whole suite.
    "# llmsvc [6544246a90e1]": [
        "tests/cli/test_quick_start.py::"
        "test_the_quick_start_line_builds_tiny_chat_on_a_fresh_home_serves_it_on_8000_and_stops_on_ctrl_c",
        f"{CLI}::test_the_quick_start_scripts_exist_and_parse",
        f"{CLI}::test_the_quick_start_runs_the_console_script_install_sh_makes",
        PARSED,
    ],
    # curl …/v1/chat/completions; the openai client streaming, both at 127.0.0.1:8000 with $KEY
    "## Talk to it [9fb9b6fb154b]": [
        "tests/gateway/test_tool_agent.py::test_the_readme_curl_line_streams_a_chat",
    ],
    "## Talk to it [50ef1b05512d]": [
        "tests/gateway/test_tool_agent.py::test_the_readme_python_client_streams_a_chat",
    ],
    "### Tool calls and structured outputs [797a6189584e]": [
        "tests/gateway/test_tool_agent.py::test_the_readme_tool_call_example_runs_as_written",
    ],
    "### Responses API [e35159061c69]": [
        "tests/gateway/test_tool_agent.py::test_the_readme_responses_example_runs_as_written",
    ],
    "### Embeddings [1c2c81b6b0e6]": [
        "tests/gateway/test_tool_agent.py::test_the_readme_embeddings_example_runs_as_written",
    ],
    "### Batches [882e97acd238]": [
        "tests/gateway/test_tool_agent.py::test_the_readme_batch_example_runs_as_written",
    ],
    "## Fine-tune [c1d25d40160c]": [
        "tests/trainer_service/test_api_e2e.py::test_the_readme_fine_tune_example_runs_as_written",
    ],
    # llmsvc eval run (twice) / eval compare / models promote
    "## Evaluate and promote [7608f2bbf9e0]": [
        "tests/eval/test_readme_eval_block.py::test_the_readme_eval_and_promote_lines_run_as_written",
        PARSED,
    ],
    # llmsvc keys create / list / usage / revoke
    "## Auth: keys, limits, usage [6b3127cc9396]": [
        "tests/cli/test_readme_keys.py::test_the_readme_key_commands_run_as_written",
        PARSED,
    ],
    # kubectl apply -f k8s/namespace.yaml, the database Secrets, helm install (GPU, CPU), helm test
    "## Kubernetes [a7ffa4dab6ed]": [
        *K8S_OFFLINE,
        f"{K8S}::test_the_secrets_created_are_those_the_external_database_install_reads",
        f"{K8S}::test_helm_test_has_a_test_pod_to_run",
    ],
    # kubectl apply -f k8s/jobs/sft.yaml, get pods, logs, wait, exec ls /models/sft-chat/v1, the eval Job
    "### Training and eval Jobs with kubectl [cf5d2aafc261]": [
        *K8S_OFFLINE,
        f"{K8S}::test_the_model_path_listed_is_where_the_job_writes_on_the_store_the_trainer_mounts",
    ],
    # services/*/README.md. The trainer's: a fine-tune's client calls (create, retrieve, events, checkpoints, cancel)
    "services/trainer/README.md: ## With the OpenAI client [7295bcb9ac59]": [
        "tests/trainer_service/test_api_e2e.py::test_the_trainer_readme_client_example_runs_as_written",
    ],
}

# What no test runs yet. Keep it short: a test that runs the block as written takes its entry out.
UNTESTED: dict[str, str] = {
    "## Kubernetes [a7ffa4dab6ed]":
        "checked offline only (files, namespace, Secrets, helm lint and render with each values file, the test "
        "Pod): no test runs kubectl or helm against a cluster, which needs one (kind) with a ReadWriteMany "
        "storage class and the images, and GPU nodes for values-gpu.yaml.",
    "### Training and eval Jobs with kubectl [cf5d2aafc261]":
        "checked offline only (files, names, namespace, the model path on the trainer's store): no test runs "
        "the Jobs on a cluster, which needs the chart installed, 8 GPUs per node and the base model and data on "
        "the model store.",
}


@functools.cache
def _top_level_tests(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(), str(path))
    return frozenset(n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _test_problem(test_id: str, root: Path) -> str | None:
    """Why ``tests/….py::test_name`` (a ``[param]`` suffix allowed) is not a test that runs a README block."""
    path, sep, name = test_id.partition("::")
    name = name.split("[", 1)[0]
    if not sep or not path.endswith(".py") or not name.startswith("test_") or "::" in name:
        return "is not of the form tests/<path>.py::test_<name>"
    file = root / path
    if not file.is_file():
        return f"does not exist: there is no file {path}"
    if name not in _top_level_tests(file):
        return f"does not exist: {path} defines no top-level `def {name}`"
    if "README" not in file.read_text():
        return (f"is in {path}, which never reads README.md: a test that runs a block reads it from there "
                "(tests/readme.py's block()), so that an edit cannot leave it running an old copy")
    return None


def _describe(b: Block) -> str:
    return f"{b.source} line {b.line} ({b.heading or 'before any heading'}), the ```{b.lang} block `{b.first_line}`"


def problems(readme: list[Block], registry: dict, untested: dict, root: Path = ROOT) -> list[str]:
    """What is wrong between the README's blocks and the registry, each with what to do about it."""
    out: list[str] = []
    keys = {}
    for b in readme:
        if b.key in keys:
            out.append(f"{_describe(b)} is identical to the block at line {keys[b.key].line}, under the same "
                       "heading: they share a key. Drop one, or make them differ.")
        keys.setdefault(b.key, b)
    stale = {k: v for k, v in [*registry.items(), *untested.items()] if k not in keys}
    mentioned = set()
    for key, b in keys.items():
        if key in registry or key in untested:
            continue
        was = [k for k in stale if k.rsplit(" [", 1)[0] == b.heading]
        mentioned.update(was)
        out.append(
            f"{_describe(b)} has no entry in {HERE}: it is new or was edited. Its key is now\n"
            f"    {key!r}\n"
            "Add or update the test that runs it (reading it from README.md with tests/readme.py's block()), then "
            f"update the registry: REGISTRY[{key!r}] = ['tests/<path>.py::test_<name>']"
            f" (or, for a block that is not a command, '{NOT_A_COMMAND}<what it is>'; for one no test can run yet, "
            f"UNTESTED[{key!r}] = '<what a test needs>')."
            + (f"\nEntries under the same heading that match no block any more (this block's old text?): {was}; "
               "move their tests to the new key once they run the new text." if was else ""))
    for key in stale:
        if key not in mentioned:
            where = "REGISTRY" if key in registry else "UNTESTED"
            out.append(f"{HERE}: {where}[{key!r}] names a block no longer in README.md (edited, moved under another "
                       "heading, or removed). If it was edited or moved, add or update the test that runs it, then "
                       "move the entry to the block's new key; if it was removed, delete the entry (and a test that "
                       "ran only that block).")
    for key, value in registry.items():
        if isinstance(value, str):
            if not value.startswith(NOT_A_COMMAND) or not value.removeprefix(NOT_A_COMMAND).strip():
                out.append(f"{HERE}: REGISTRY[{key!r}] is {value!r}: give a list of tests that run the block, or "
                           f"'{NOT_A_COMMAND}<what it is>'.")
            elif key in untested:
                out.append(f"{HERE}: {key!r} is both '{NOT_A_COMMAND}…' and UNTESTED: it is one or the other.")
            continue
        if not isinstance(value, list) or not value:
            out.append(f"{HERE}: REGISTRY[{key!r}] is {value!r}: give a non-empty list of test ids.")
            continue
        for test_id in value:
            if why := _test_problem(test_id, root):
                out.append(f"{HERE}: REGISTRY[{key!r}] lists {test_id!r}, which {why}. Add or update the test that "
                           "runs the block, then point the entry at it.")
    for key, value in untested.items():
        if not isinstance(value, str) or not value.strip():
            out.append(f"{HERE}: UNTESTED[{key!r}] must say what a test of the block needs.")
    return out


def test_every_readme_block_is_run_by_a_registered_test_that_exists():
    found = problems(all_blocks(), REGISTRY, UNTESTED)
    assert not found, f"{len(found)} README block problem(s):\n\n" + "\n\n".join(found)


# The guard itself, on a small README of its own.

README_V1 = """# Tool

```bash
tool run
```

## Output

```
{"ok": true}
```
"""


def _tree(tmp_path: Path, body: str = "def test_runs():\n    '''Runs README.md's block.'''\n") -> Path:
    (tmp_path / "tests").mkdir(parents=True, exist_ok=True)
    (tmp_path / "tests" / "test_tool.py").write_text(body)
    return tmp_path


def _keys(text: str) -> list[str]:
    return [b.key for b in parse(text)]


def test_the_guard_accepts_a_registry_that_matches(tmp_path):
    run, out = _keys(README_V1)
    registry = {run: ["tests/test_tool.py::test_runs"], out: f"{NOT_A_COMMAND}sample output"}
    assert problems(parse(README_V1), registry, {}, _tree(tmp_path)) == []
    assert problems(parse(README_V1), {out: registry[out]}, {run: "needs a server"}, tmp_path) == []


def test_the_guard_names_a_new_block_and_its_key(tmp_path):
    text = README_V1 + "\n```python\nprint(1)\n```\n"
    run, out, new = _keys(text)
    (found,) = problems(parse(text), {run: ["tests/test_tool.py::test_runs"], out: f"{NOT_A_COMMAND}x"}, {},
                        _tree(tmp_path))
    assert "line 13 (## Output)" in found and repr(new) in found and "`print(1)`" in found
    assert "Add or update the test that runs it" in found and "then update the registry" in found


def test_the_guard_names_an_edited_block_with_its_new_and_old_keys(tmp_path):
    run, out = _keys(README_V1)
    edited = README_V1.replace("tool run", "tool run --fast")
    (found,) = problems(parse(edited), {run: ["tests/test_tool.py::test_runs"], out: f"{NOT_A_COMMAND}x"}, {},
                        _tree(tmp_path))
    assert repr(_keys(edited)[0]) in found and repr(run) in found and "new or was edited" in found


def test_the_guard_names_an_entry_whose_block_is_gone(tmp_path):
    run, out = _keys(README_V1)
    gone = "# Other\n\n```bash\nother\n```\n"
    registry = {_keys(gone)[0]: f"{NOT_A_COMMAND}x", run: ["tests/test_tool.py::test_runs"]}
    (found,) = problems(parse(gone), registry, {}, _tree(tmp_path))
    assert found.startswith(f"{HERE}: REGISTRY[{run!r}] names a block no longer in README.md")
    (found,) = problems(parse(gone), {_keys(gone)[0]: f"{NOT_A_COMMAND}x"}, {out: "needs y"}, tmp_path)
    assert f"UNTESTED[{out!r}]" in found


def test_the_guard_names_a_test_that_does_not_exist(tmp_path):
    run, out = _keys(README_V1)
    root = _tree(tmp_path, "class TestTool:\n    def test_nested(self):\n        'README.md'\n")
    for test_id, why in [
        ("tests/test_missing.py::test_runs", "does not exist: there is no file tests/test_missing.py"),
        ("tests/test_tool.py::test_nested", "tests/test_tool.py defines no top-level `def test_nested`"),
        ("tests/test_tool.py", "is not of the form"),
    ]:
        (found,) = problems(parse(README_V1), {run: [test_id], out: f"{NOT_A_COMMAND}x"}, {}, root)
        assert repr(test_id) in found and why in found, found
    other = _tree(tmp_path / "other", "def test_runs():\n    pass\n")
    (found,) = problems(parse(README_V1), {run: ["tests/test_tool.py::test_runs[a]"], out: f"{NOT_A_COMMAND}x"},
                        {}, other)
    assert "never reads README.md" in found


def test_the_guard_wants_a_reason_for_a_block_without_tests(tmp_path):
    run, out = _keys(README_V1)
    for value in ("sample output", NOT_A_COMMAND, []):
        (found,) = problems(parse(README_V1), {run: ["tests/test_tool.py::test_runs"], out: value}, {},
                            _tree(tmp_path))
        assert f"REGISTRY[{out!r}]" in found
