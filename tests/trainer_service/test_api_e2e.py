"""OpenAI's files and fine-tuning API end to end, with the official ``openai`` client unchanged, the
``llmsvc train``/``llmsvc models`` commands and README's fine-tune example: gateway → auth → trainer service →
the real trainer, each service its own process started by :class:`services.cli.stack.Stack` (no router or vLLM
worker: nothing here serves)."""

from __future__ import annotations

import json
import time

import openai
import pytest

from services.cli.default_version import ensure_default_version
from services.cli.main import main as llmsvc
from tests.readme import ROOT, block

from .helpers import CHAT, jsonl, trainer_only_stack


@pytest.fixture(scope="module")
def trainer_stack(tmp_path_factory, default_model, api_key):
    with trainer_only_stack(tmp_path_factory.mktemp("trainer-stack"), default_model, api_key) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(trainer_stack):
    return openai.OpenAI(base_url=trainer_stack.cfg.base_url, api_key=trainer_stack.cfg.api_key, max_retries=0,
                         timeout=60)


def wait_final(client, job_id: str, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(job_id)


def test_files_upload_list_retrieve_content_delete(client):
    data = jsonl(CHAT)
    f = client.files.create(file=("adder.jsonl", data), purpose="fine-tune")
    assert (f.object, f.purpose, f.bytes, f.filename, f.status) == ("file", "fine-tune", len(data), "adder.jsonl",
                                                                     "processed")
    assert client.files.retrieve(f.id).id == f.id
    assert f.id in [x.id for x in client.files.list(purpose="fine-tune")]
    assert client.files.content(f.id).read() == data
    deleted = client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_bad_files_are_refused_with_the_reason(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n'),
                            purpose="fine-tune")
    assert "line 1: the example has no assistant message" in err.value.message
    assert err.value.body["code"] == "invalid_file"
    with pytest.raises(openai.BadRequestError, match="no examples"):
        client.files.create(file=("empty.jsonl", b""), purpose="fine-tune")


def test_a_fine_tuning_job_end_to_end(client, trainer_stack):
    f = client.files.create(file=("adder.jsonl", jsonl(CHAT)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-random", training_file=f.id, suffix="e2e", seed=3,
                                         hyperparameters={"n_epochs": 1, "batch_size": 4},
                                         extra_body={"checkpoint_every": 1})
    assert (job.object, job.status, job.model, job.training_file, job.seed) == (
        "fine_tuning.job", "validating_files", "tiny-random", f.id, 3)
    assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 4
    assert job.method.type == "supervised" and job.method.supervised.hyperparameters.batch_size == 4
    done = wait_final(client, job.id)
    assert done.status == "succeeded" and done.fine_tuned_model == "e2e-v1" and done.error is None
    assert done.finished_at and done.trained_tokens > 0

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))  # iterating follows the pages
    assert events[0].message == "The job has successfully completed"  # newest first
    assert events[-1].message == f"Created fine-tuning job: {job.id}"
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [3, 2, 1] and all(e.object == "fine_tuning.job.event" for e in events)

    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    steps = [c.step_number for c in ckpts]
    assert steps == sorted(steps, reverse=True) and {1, 2} <= set(steps) <= {1, 2, 3}  # newest first
    assert ckpts[0].object == "fine_tuning.job.checkpoint" and ckpts[0].fine_tuning_job_id == job.id
    assert ckpts[0].metrics.step == steps[0] and ckpts[0].metrics.train_loss > 0

    listed = client.fine_tuning.jobs.list(limit=1)
    assert listed.data[0].id == job.id
    assert (trainer_stack.cfg.home / "models" / "e2e" / "1" / "config.json").exists()


def test_cancel_through_the_api(client):
    f = client.files.create(file=("adder.jsonl", jsonl(CHAT)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-random", training_file=f.id, suffix="e2e-cancel",
                                         hyperparameters={"steps": 100000, "batch_size": 2})
    deadline = time.monotonic() + 120
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.5)
    client.fine_tuning.jobs.cancel(job.id)
    done = wait_final(client, job.id)
    assert done.status == "cancelled" and done.fine_tuned_model is None
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        client.fine_tuning.jobs.cancel(job.id)


def test_api_errors_are_openai_shaped(client, trainer_stack):
    with pytest.raises(openai.NotFoundError) as err:
        client.fine_tuning.jobs.create(model="no-such-model", training_file="file-x")
    assert err.value.body["param"] == "model" and err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="tiny-random", training_file="file-missing")
    assert err.value.body["param"] == "training_file"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.cancel("ftjob-nope")
    bad = openai.OpenAI(base_url=trainer_stack.cfg.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.fine_tuning.jobs.list()


def test_the_cli_submits_follows_lists_and_shows(trainer_stack, tmp_path, capsys):
    data = tmp_path / "adder.jsonl"
    data.write_bytes(jsonl(CHAT))
    base = ["--base-url", f"http://{trainer_stack.cfg.host}:{trainer_stack.cfg.gateway_port}",
            "--api-key", trainer_stack.cfg.api_key]
    code = llmsvc(["train", "submit", str(data), "--validation", str(data), "--model", "tiny-random", "--suffix",
                   "cli", "--steps", "2", "--batch-size", "2", "--seq-len", "64", "-f", *base])
    out = capsys.readouterr().out
    assert code == 0 and "Fine-tuning job started" in out and "succeeded → cli-v1" in out
    assert llmsvc(["train", "list", *base]) == 0 and "cli-v1" in capsys.readouterr().out
    db = ["--url", trainer_stack.cfg.db_url]
    assert llmsvc(["models", "show", "cli", "--json", *db]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == "cli-v1" and shown["recipe"] == "sft" and shown["metrics"]["final_loss"] > 0
    assert shown["metrics"]["eval_loss"] > 0  # the validation file reached the trainer
    assert llmsvc(["models", "list", "--name", "cli", "--json", *db]) == 0
    assert [v["id"] for v in json.loads(capsys.readouterr().out)] == ["cli-v1"]


def test_the_readme_fine_tune_example_runs_as_written(client, trainer_stack, default_model, tmp_path, monkeypatch,
                                                      capsys):
    """README's "## Fine-tune" code, unchanged, with ``client`` bound and a ``chat.jsonl`` in the working directory,
    on a home where ``tiny-chat`` is a registered version's alias, as the first ``llmsvc up`` leaves it (the random
    tiny model stands in for the trained one). The job it creates succeeds as ``adder-v1``, as the README says."""
    _tiny_chat_registered(trainer_stack, default_model)
    (tmp_path / "chat.jsonl").write_bytes(jsonl(CHAT))
    monkeypatch.chdir(tmp_path)
    scope = {"client": client}
    exec(compile(block("## Fine-tune", "python").text, "README.md", "exec"), scope)  # noqa: S102 - the README's code
    job = scope["job"]
    assert (job.model, job.training_file, job.hyperparameters.n_epochs) == ("tiny-chat", scope["f"].id, 2)
    done = wait_final(client, job.id)
    assert done.status == "succeeded" and done.fine_tuned_model == "adder-v1", done.error
    assert llmsvc(["models", "list", "--name", "adder", "--json", "--url", trainer_stack.cfg.db_url]) == 0
    assert [v["id"] for v in json.loads(capsys.readouterr().out)] == ["adder-v1"]


def _tiny_chat_registered(stack, default_model) -> None:
    """``tiny-chat`` as the first ``llmsvc up`` leaves it: the version ``tiny-chat-v1`` of the home's model folder,
    with the alias (the random tiny model stands in for the trained one)."""
    home_model = stack.cfg.home / "models" / "tiny-chat"  # where `llmsvc up` builds its default model
    if not home_model.exists():
        home_model.symlink_to(default_model, target_is_directory=True)
    assert ensure_default_version(stack.cfg.db_url, home_model) == ("tiny-chat-v1", ["tiny-chat"])


def test_the_trainer_readme_client_example_runs_as_written(client, trainer_stack, default_model, tmp_path,
                                                           monkeypatch):
    """services/trainer/README.md's client example, unchanged but for its address: it names 127.0.0.1:8000, where
    ``llmsvc up`` serves (tests/cli/test_quick_start.py), and this stack serves on a free port. ``KEY`` is bound
    to the stack's key and ``chat.jsonl`` is in the working directory. The job it creates from ``tiny-chat`` is
    looked at (status, events, checkpoints) and then cancelled, as the README's last line does."""
    _tiny_chat_registered(trainer_stack, default_model)
    (tmp_path / "chat.jsonl").write_bytes(jsonl(CHAT))
    monkeypatch.chdir(tmp_path)
    code = block("## With the OpenAI client", "python", path=ROOT / "services/trainer/README.md").text
    assert code.count("http://127.0.0.1:8000/v1") == 1
    code = code.replace("http://127.0.0.1:8000/v1", trainer_stack.cfg.base_url)
    scope = {"KEY": trainer_stack.cfg.api_key}
    exec(compile(code, "services/trainer/README.md", "exec"), scope)  # noqa: S102 - the README's code
    job = scope["job"]
    assert (job.model, job.training_file, job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (
        "tiny-chat", scope["f"].id, 2, 8)
    assert wait_final(client, job.id).status == "cancelled"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=50).data]
    assert any("cancel" in m.lower() for m in messages), messages


def test_a_stopped_trainer_service_is_a_503(client, trainer_stack):
    """Last in this module: it stops the trainer service (which exits cleanly on SIGTERM)."""
    trainer_stack.stop_proc("trainer")
    assert trainer_stack.procs["trainer"].popen.returncode == 0
    with pytest.raises(openai.InternalServerError) as err:
        client.fine_tuning.jobs.list()
    assert err.value.status_code == 503 and err.value.body["code"] == "service_unavailable"
