"""``/v1/embeddings`` through the official ``openai`` client, on the real stack.

This module's stack runs an embedding worker beside the chat worker, as ``llmsvc up`` does: the same random
tiny Llama folder on vLLM's pooling runner, converted to an embedding model on load (last-token pooling,
normalized), listed in ``/v1/models`` as ``<model>-embed``. (Its own stack, not the session's: an engine held
for the whole session would raise the suite's peak memory on this 24 GiB machine by its size.) The same input
gives the same vector, alone or in a batch; a batch gives vectors of one size; base64 decodes to the very
floats; token-id input is the text's own tokens; usage counts them. A chat request to the embedding model, an
embedding request to the chat model, ``dimensions`` on a model without Matryoshka support and each malformed
input are 400s naming the parameter. A batch of ``/v1/embeddings`` lines answers each with the online vector.
"""

from __future__ import annotations

import base64
import math
from array import array

import httpx
import openai
import pytest

from services.cli.stack import Stack, StackConfig


@pytest.fixture(scope="module")
def embed_stack(tmp_path_factory, default_model, api_key):
    cfg = StackConfig.ephemeral(tmp_path_factory.mktemp("embed-stack"), default_model, api_key, embeddings=True)
    with Stack(cfg).running() as stack:
        yield stack


@pytest.fixture(scope="module")
def embed_model(embed_stack) -> str:
    return embed_stack.cfg.embed_model_name


@pytest.fixture(scope="module")
def base_url(embed_stack) -> str:
    return embed_stack.cfg.base_url


@pytest.fixture(scope="module")
def model_name(embed_stack) -> str:
    return embed_stack.cfg.model.name


@pytest.fixture(scope="module")
def openai_client(base_url, api_key):
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)


def test_the_embedding_model_is_listed(openai_client, embed_model):
    assert embed_model in {m.id for m in openai_client.models.list().data}


def test_the_same_input_gives_the_same_vector_alone_or_in_a_batch(openai_client, embed_model):
    one = openai_client.embeddings.create(model=embed_model, input="the cat sat").data[0].embedding
    again = openai_client.embeddings.create(model=embed_model, input="the cat sat").data[0].embedding
    batch = openai_client.embeddings.create(model=embed_model, input=["a dog", "the cat sat", "x" * 300])
    assert one == again
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5) for a, b in zip(one, batch.data[1].embedding,
                                                                                strict=True))
    sizes = {len(d.embedding) for d in batch.data}
    assert sizes == {len(one)} and len(one) > 1
    assert math.isclose(sum(x * x for x in one), 1.0, rel_tol=1e-3)  # normalized
    assert batch.data[0].embedding != batch.data[1].embedding
    assert batch.model == embed_model and batch.usage.prompt_tokens == batch.usage.total_tokens > 3


def test_base64_decodes_to_the_floats(openai_client, embed_model):
    floats = openai_client.embeddings.create(model=embed_model, input="hello", encoding_format="float")
    raw = httpx.post(f"{openai_client.base_url}embeddings", json={"model": embed_model, "input": "hello",
                                                                   "encoding_format": "base64"},
                     headers={"Authorization": f"Bearer {openai_client.api_key}"}, timeout=60).json()
    decoded = array("f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == floats.data[0].embedding
    # The client asks for base64 by default and decodes it itself.
    assert openai_client.embeddings.create(model=embed_model, input="hello").data[0].embedding == list(decoded)


def test_token_ids_are_the_texts_own_tokens(openai_client, embed_model, tokenizer):
    text = "token ids in"
    ids = tokenizer.encode(text)
    by_text = openai_client.embeddings.create(model=embed_model, input=text, encoding_format="float")
    by_ids = openai_client.embeddings.create(model=embed_model, input=[ids, ids[:2]], encoding_format="float")
    assert by_ids.data[0].embedding == by_text.data[0].embedding
    assert by_text.usage.prompt_tokens == len(ids) and by_ids.usage.prompt_tokens == len(ids) + 2


def test_chat_and_embeddings_are_refused_on_the_wrong_model(openai_client, embed_model, model_name):
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model=embed_model, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=2)
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.embeddings.create(model=model_name, input="hi")
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        openai_client.embeddings.create(model="no-such-model", input="hi")


BAD = [
    ("input", {"input": ""}),
    ("input", {"input": []}),
    ("input", {"input": [""]}),
    ("input", {"input": [[]]}),
    ("input", {"input": [-1]}),
    ("input", {"input": [10**9]}),
    ("input", {"input": 5}),
    ("input", {"input": ["ok"] * 2049}),
    ("input", {"input": "word " * 5000}),
    ("model", {"input": "x", "model": ""}),
    ("encoding_format", {"input": "x", "encoding_format": "int8"}),
    ("dimensions", {"input": "x", "dimensions": 0}),
    ("dimensions", {"input": "x", "dimensions": 8}),
]


@pytest.mark.parametrize(("param", "body"), BAD, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD)])
def test_each_bad_input_is_a_400_naming_it(base_url, api_key, embed_model, param, body):
    r = httpx.post(f"{base_url}/embeddings", json={"model": embed_model, **body},
                   headers={"Authorization": f"Bearer {api_key}"}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_user_is_named_in_the_workers_log_line_for_the_request(openai_client, embed_stack, embed_model):
    openai_client.embeddings.create(model=embed_model, input="logged", user="end-user-42")
    log = (embed_stack.logs / "worker-embed.log").read_text()
    assert f"embed model={embed_model} inputs=1 user=end-user-42" in log


def test_a_batch_of_embedding_lines_gives_the_vectors_online_requests_give(openai_client, embed_model):
    """``/v1/embeddings`` lines in a batch (``/v1/batches``): each line's answer is the online answer."""
    import io
    import json
    import time

    texts = ["a dog", "the cat sat", "a bird"]
    data = "".join(json.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                               "body": {"model": embed_model, "input": t}}) + "\n" for i, t in enumerate(texts))
    f = openai_client.files.create(file=("embed.jsonl", io.BytesIO(data.encode())), purpose="batch")
    b = openai_client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    deadline = time.monotonic() + 120
    while b.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
        b = openai_client.batches.retrieve(b.id)
    assert b.status == "completed" and b.request_counts.completed == 3 and b.usage.output_tokens == 0
    rows = [json.loads(x) for x in openai_client.files.content(b.output_file_id).text.splitlines()]
    assert [r["custom_id"] for r in rows] == ["e0", "e1", "e2"]
    for text, r in zip(texts, rows, strict=True):
        online = openai_client.embeddings.create(model=embed_model, input=text, encoding_format="float")
        got = r["response"]["body"]["data"][0]["embedding"]
        assert len(got) == len(online.data[0].embedding)
        assert max(abs(x - y) for x, y in zip(got, online.data[0].embedding, strict=True)) < 1e-5
    assert b.usage.input_tokens == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in rows)
