"""Bad input gets a clear error (a gRPC status the gateway maps to OpenAI's 4xx) or a failed job with a reason;
nothing is ever registered for it. With SQLite and PostgreSQL."""

from __future__ import annotations

import json

import grpc
import pytest

from services.common.pb import trainer_pb2 as pb

from .helpers import CHAT, events_until_end, job_request, jsonl, rpc_error, trailers, upload

LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
             "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
             "max_position_embeddings": 8192, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
async def chat_file(trainer) -> str:
    return (await upload(trainer.stub, jsonl(CHAT))).id


@pytest.mark.parametrize("data,expected", [
    (b"", "the file has no examples (it is empty)"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "line 1: the example has no assistant message"),
    (jsonl(CHAT[:3]) + b'{"messages": [\n', "line 4: not valid JSON"),
    (b"\x00\x01binary", "line 1: not valid JSON"),
])
async def test_bad_uploads_are_refused_with_the_line_and_reason(trainer, data, expected):
    err = await rpc_error(upload(trainer.stub, data))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in err.details()
    assert trailers(err)["error-code"] == "invalid_file"


async def test_uploads_need_the_fine_tune_purpose(trainer):
    err = await rpc_error(upload(trainer.stub, jsonl(CHAT), purpose="assistants"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and trailers(err)["param"] == "purpose"


@pytest.mark.parametrize("change,code,param,text", [
    ({"model": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "model", "The model 'no-such-model' does not exist"),
    ({"model": "preset:../../etc"}, grpc.StatusCode.NOT_FOUND, "model", "The model 'preset:../../etc' does not"),
    ({"training_file": "file-doesnotexist"}, grpc.StatusCode.INVALID_ARGUMENT, "training_file",
     "no file with id 'file-doesnotexist'"),
    ({"training_file": "/etc/passwd"}, grpc.StatusCode.INVALID_ARGUMENT, "training_file", "absolute JSONL path under"),
    ({"extra": {"recipe": "rlhf"}}, grpc.StatusCode.INVALID_ARGUMENT, "recipe", "Unknown recipe 'rlhf'"),
    ({"method": {"type": "dpo"}}, grpc.StatusCode.INVALID_ARGUMENT, "training_file",
     "the dpo recipe trains on preference examples, but the file holds chat examples"),
    ({"hyper": {"n_epochs": "many"}}, grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.n_epochs", "integer"),
    ({"hyper": {"muon_attention_lr": 0.005}}, grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.muon_attention_lr",
     "applies only to the 'tiny-chat' recipe, which trains with Muon; the 'sft' recipe trains with AdamW"),
    ({"suffix": "../escape"}, grpc.StatusCode.INVALID_ARGUMENT, "suffix", "suffix may hold"),
    ({"extra": {"resources": {"nodes": 2}}}, grpc.StatusCode.INVALID_ARGUMENT, "resources.nodes",
     "needs the kubernetes runner"),
    # What the job itself would refuse at start-up (trainer/spec.py) is refused at create:
    ({"model": "preset:tiny", "extra": {"lora": {"r": 4}}}, grpc.StatusCode.INVALID_ARGUMENT, "model",
     "recipe 'lora' starts from a trained model"),
    ({"extra": {"lora": {"rank": 4}}}, grpc.StatusCode.INVALID_ARGUMENT, "lora.rank", "Extra inputs"),
    ({"extra": {"lora": {"r": 0}}}, grpc.StatusCode.INVALID_ARGUMENT, "lora.r", "greater than or equal to 1"),
    ({"hyper": {"seq_len": 4}}, grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.seq_len",
     "greater than or equal to 8"),
])
async def test_bad_job_requests_are_refused(trainer, chat_file, change, code, param, text):
    kw = {k: v for k, v in change.items() if k != "training_file"}
    req = job_request(change.get("training_file", chat_file), **kw)
    err = await rpc_error(trainer.stub.CreateJob(req))
    assert err.code() == code and text in err.details() and trailers(err)["param"] == param


async def test_a_model_that_cannot_fit_in_memory_is_refused_up_front(trainer, chat_file, store_root):
    big = store_root / "llama-3-8b"
    big.mkdir(exist_ok=True)
    (big / "config.json").write_text(json.dumps(LLAMA3_8B))
    err = await rpc_error(trainer.stub.CreateJob(job_request(chat_file, model="llama-3-8b")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and trailers(err)["error-code"] == "insufficient_memory"
    assert "8030M parameters" in err.details() and "8.0 GiB is available" in err.details()
    assert "lora" in err.details()


@pytest.mark.parametrize("content,expected", [
    ("", "the file has no examples (it is empty)"),
    ('{"messages": "not a list"}\n', "line 1: 'messages' must be a non-empty list"),
])
async def test_a_corrupt_or_empty_data_path_fails_the_job_while_validating(trainer, data_dir, content, expected):
    path = data_dir / f"bad-{len(content)}.jsonl"
    path.write_text(content)
    job = await trainer.stub.CreateJob(job_request(str(path), suffix="never"))
    assert job.status == "validating_files"
    events = await events_until_end(trainer.stub, job.id)
    done = await trainer.stub.GetJob(pb.JobRequest(job_id=job.id))
    assert done.status == "failed" and done.error.code == "invalid_training_file"
    assert done.error.param == "training_file" and expected in done.error.message
    assert events[-1].level == "error" and "Fine-tuning job started" not in [e.message for e in events]


async def test_a_missing_data_path_is_refused(trainer, data_dir):
    err = await rpc_error(trainer.stub.CreateJob(job_request(str(data_dir / "nope.jsonl"))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not exist" in err.details()


@pytest.mark.parametrize("call", ["GetJob", "CancelJob", "ListJobEvents", "ListCheckpoints"])
async def test_unknown_jobs_are_not_found(trainer, call):
    request = {"GetJob": pb.JobRequest, "CancelJob": pb.JobRequest, "ListJobEvents": pb.ListJobEventsRequest,
               "ListCheckpoints": pb.ListCheckpointsRequest}[call](job_id="ftjob-unknown")
    err = await rpc_error(getattr(trainer.stub, call)(request))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "ftjob-unknown" in err.details()


async def test_unknown_files_are_not_found(trainer):
    err = await rpc_error(trainer.stub.GetFile(pb.FileRequest(file_id="file-nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
