"""Drives tokenmeter's gateway with the real OpenAI Python SDK, changing only base URL and key.

Usage: openai_client.py BASE_URL API_KEY BROKE_API_KEY  -> prints one JSON object of findings.
"""
import json
import sys

from openai import OpenAI, RateLimitError

base, key, broke_key = sys.argv[1:4]
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
found = {}

reply = client.chat.completions.create(
    model="tokenmeter-demo",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello from the SDK"}],
    max_tokens=20,
)
found["whole"] = {
    "text": reply.choices[0].message.content,
    "finish": reply.choices[0].finish_reason,
    "prompt": reply.usage.prompt_tokens,
    "completion": reply.usage.completion_tokens,
    "total": reply.usage.total_tokens,
}

text, pieces, usage = "", 0, None
stream = client.chat.completions.create(
    model="tokenmeter-demo",
    messages=[{"role": "user", "content": "Stream to the SDK"}],
    max_tokens=15,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
        pieces += 1
    if chunk.usage:
        usage = chunk.usage
found["stream"] = {
    "text": text,
    "pieces": pieces,
    "completion": usage.completion_tokens if usage else None,
    "total": usage.total_tokens if usage else None,
}

broke = OpenAI(base_url=base + "/v1", api_key=broke_key, max_retries=0)
try:
    broke.chat.completions.create(
        model="tokenmeter-demo",
        messages=[{"role": "user", "content": "I have almost no tokens left, answer anyway"}],
    )
    found["limit"] = "not refused"
except RateLimitError as e:
    found["limit"] = {"status": e.status_code, "code": e.code, "message": str(e)}

found["models"] = [m.id for m in client.models.list()]
print(json.dumps(found))
