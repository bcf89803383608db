"""Checks a relay's OpenAI-compatible API with the official `openai` package.

Usage: python3 check_api.py BASE_URL API_KEY (API_KEY "none": the relay has no key)
Run by tests/tests/serial/openai_api.rs against a live `ait relay`; exits non-zero on the first
failed check and prints what it checked.
"""

import concurrent.futures
import json
import sys
import urllib.error
import urllib.request

import openai

BASE, KEY = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0, timeout=300)


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


models = client.models.list().data
check(len(models) == 1, f"models.list lists one model: {[m.id for m in models]}")
MODEL = models[0].id

question = [{"role": "user", "content": "What is the capital of France?"}]
chat = client.chat.completions.create(model=MODEL, messages=question, temperature=0, max_tokens=32)
text = chat.choices[0].message.content
check("Paris" in text, f"chat completion answers Paris: {text!r}")
check(chat.choices[0].finish_reason == "stop", f"finish_reason stop: {chat.choices[0].finish_reason}")
check(chat.usage.prompt_tokens > 10 and chat.usage.completion_tokens > 0, f"usage: {chat.usage}")
check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, "usage adds up")

# Sampled (not greedy) with a seed: streamed pieces join to the non-streamed text.
story = [{"role": "user", "content": "Tell me a short story about a robot."}]
args = dict(model=MODEL, messages=story, temperature=0.9, top_p=0.95, seed=1234, max_tokens=48)
whole = client.chat.completions.create(**args)
pieces, finish, usage = [], None, None
for chunk in client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}):
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
check(len(pieces) > 5, f"streamed in {len(pieces)} pieces")
check("".join(pieces) == whole.choices[0].message.content, "streamed text equals the non-streamed text")
check(finish == whole.choices[0].finish_reason, f"same finish_reason: {finish}")
check(usage is not None and usage.completion_tokens == whole.usage.completion_tokens, f"stream usage: {usage}")
other = client.chat.completions.create(**{**args, "seed": 99})
check(other.choices[0].message.content != whole.choices[0].message.content, "another seed, another story")

# Length limit and stop sequences.
capped = client.chat.completions.create(model=MODEL, messages=story, temperature=0, max_tokens=5)
check(capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 5, "max_tokens -> length")
full = client.chat.completions.create(model=MODEL, messages=question, temperature=0, max_tokens=32)
cut = client.chat.completions.create(model=MODEL, messages=question, temperature=0, max_tokens=32, stop=["Paris"])
check(cut.choices[0].message.content == full.choices[0].message.content.split("Paris")[0], f"stop: {cut.choices[0].message.content!r}")
check(cut.choices[0].finish_reason == "stop", "stop -> finish_reason stop")

comp = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8)
check("Paris" in comp.choices[0].text, f"completion: {comp.choices[0].text!r}")
check(comp.usage.completion_tokens <= 8, f"completion usage: {comp.usage}")
streamed = "".join(c.choices[0].text for c in client.completions.create(
    model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8, stream=True) if c.choices)
check(streamed == comp.choices[0].text, "streamed completion equals the non-streamed one")


def raw(path, body, key=KEY):
    req = urllib.request.Request(f"{BASE}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


status, body = raw("/v1/chat/completions", b'{"model": "x", "messages": [')
check(status == 400 and "message" in body["error"], f"malformed JSON -> 400 {body}")
try:
    client.chat.completions.create(model="no-such-model", messages=question)
    check(False, "unknown model must fail")
except openai.NotFoundError as e:
    check(e.status_code == 404 and e.body["code"] == "model_not_found", f"unknown model -> 404 {e.body}")
try:
    client.completions.create(model=MODEL, prompt="word " * 9000, max_tokens=4)
    check(False, "an over-long prompt must fail")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body["code"] == "context_length_exceeded", f"too long -> 400 {e.body}")
if KEY != "none":
    try:
        openai.OpenAI(base_url=f"{BASE}/v1", api_key="wrong", max_retries=0).models.list()
        check(False, "a wrong key must fail")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "wrong API key -> 401")

# 16 concurrent streamed requests, each checked against its own non-streamed twin.
prompts = [f"Count from 1 to {n}." for n in range(3, 19)]
expected = {p: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}],
                                              temperature=0, max_tokens=24).choices[0].message.content for p in prompts[:4]}


def stream_one(p):
    out = []
    for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}],
                                                temperature=0, max_tokens=24, stream=True):
        for c in chunk.choices:
            if c.delta.content:
                out.append(c.delta.content)
    return p, "".join(out)


with concurrent.futures.ThreadPoolExecutor(16) as pool:
    results = list(pool.map(stream_one, prompts))
check(len(results) == 16 and all(len(t) > 0 for _, t in results), "16 concurrent streams all answered")
for p, t in results:
    if p in expected:
        check(t == expected[p], f"concurrent stream equals the sequential answer for {p!r}")
print("all API checks passed")
