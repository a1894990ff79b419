"""End to end through gateway → auth → router → vLLM worker, each its own process, with the official openai client."""

from __future__ import annotations

import pytest


def _chat_ids(tokenizer, messages) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Count to five."}]


def test_non_streamed_chat_counts_tokens_like_the_tokenizer(openai_client, model_name, tokenizer):
    resp = openai_client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=7,
                                                 temperature=0, seed=1)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert resp.usage.prompt_tokens == len(_chat_ids(tokenizer, MESSAGES))
    assert resp.usage.completion_tokens == 7
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 7


def test_streamed_chat_follows_openai_chunk_shape(openai_client, model_name, tokenizer):
    stream = openai_client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=6, seed=3,
                                                   stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert content_chunks
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == "length"
    # The usage chunk comes last, with no choices; the others carry usage=None.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks.index(finishing[0]) < len(chunks) - 1
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == len(_chat_ids(tokenizer, MESSAGES))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(tokenizer.encode(text, add_special_tokens=False)) <= 6 + 1  # re-tokenising may merge or split once


def test_stream_without_usage_option_has_no_usage_chunk(openai_client, model_name):
    chunks = list(openai_client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=3, stream=True))
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_same_seed_same_text_and_other_seed_differs(openai_client, model_name):
    def run(seed: int) -> str:
        r = openai_client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=24,
                                                  temperature=1.0, seed=seed)
        return r.choices[0].message.content

    first, again = run(1234), run(1234)
    assert first == again
    assert any(run(s) != first for s in (1, 2, 3))


def test_stop_string_ends_the_choice_with_finish_reason_stop(openai_client, model_name):
    kwargs = dict(model=model_name, messages=MESSAGES, max_tokens=40, temperature=0)
    full = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    assert len(full) > 12, full
    stop = full[8:11]
    resp = openai_client.chat.completions.create(stop=[stop], **kwargs)
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert stop not in choice.message.content
    assert full.startswith(choice.message.content)
    assert len(choice.message.content) <= full.index(stop)


def test_n_choices_are_indexed_and_counted(openai_client, model_name):
    resp = openai_client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=5, n=3,
                                                 temperature=1.0, seed=7)
    assert sorted(c.index for c in resp.choices) == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in resp.choices)
    assert resp.usage.completion_tokens == 15


def test_streamed_n_choices_each_get_role_and_finish(openai_client, model_name):
    chunks = list(openai_client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=4, n=2,
                                                        stream=True, temperature=1.0))
    roles = {c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role == "assistant"}
    finishes = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert roles == {0, 1} and finishes == {0, 1}


def test_logprobs_shape(openai_client, model_name):
    resp = openai_client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=4, logprobs=True,
                                                 top_logprobs=3, temperature=0)
    content = resp.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        # Greedy decoding picks the most likely token.
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs), abs=1e-4)
    assert "".join(e.token for e in content) == resp.choices[0].message.content


def test_completions_streamed_and_not(openai_client, model_name, tokenizer):
    prompt = "the model serves a request"
    resp = openai_client.completions.create(model=model_name, prompt=prompt, max_tokens=5, temperature=0)
    assert resp.object == "text_completion"
    assert resp.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert resp.usage.completion_tokens == 5 and resp.choices[0].finish_reason == "length"
    streamed = list(openai_client.completions.create(model=model_name, prompt=prompt, max_tokens=5, temperature=0,
                                                     stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == resp.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_completions_batch_of_prompts(openai_client, model_name):
    resp = openai_client.completions.create(model=model_name, prompt=["one two", "three four five"], max_tokens=3,
                                            temperature=0)
    assert sorted(c.index for c in resp.choices) == [0, 1]
    single = openai_client.completions.create(model=model_name, prompt="three four five", max_tokens=3, temperature=0)
    assert resp.choices[1].text == single.choices[0].text


def test_echo_with_prompt_logprobs(openai_client, model_name, tokenizer):
    prompt = "hello world again"
    resp = openai_client.completions.create(model=model_name, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    choice = resp.choices[0]
    ids = tokenizer.encode(prompt)
    assert choice.text == prompt
    assert len(choice.logprobs.tokens) == len(ids)
    assert choice.logprobs.token_logprobs[0] is None
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs[1:])
    assert choice.logprobs.text_offset[0] == 0
    assert resp.usage.completion_tokens == 0


def test_models_list(openai_client, model_name):
    ids = [m.id for m in openai_client.models.list().data]
    assert model_name in ids
    assert openai_client.models.retrieve(model_name).id == model_name
