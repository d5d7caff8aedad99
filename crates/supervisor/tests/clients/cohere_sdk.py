"""The official `cohere` SDK against a running ce-supervisor (tests/clients.rs).

Usage: cohere_sdk.py BASE_URL API_KEY MODEL
Prints, as JSON, the scores the SDK parsed ({"v1": {index: score}, ...}) for
the Rust side to compare with the server's own /rerank; asserts the shapes.
"""

import json
import sys

import cohere

base_url, api_key, model = sys.argv[1:4]
QUERY = "how do rust lifetimes work"
DOCUMENTS = [
    "Lifetimes tell the compiler how long references live.",
    "Bananas are yellow.",
    "The borrow checker compares the lifetimes of references.",
]
out = {}

v1 = cohere.Client(api_key=api_key, base_url=base_url, max_retries=0)
reply = v1.rerank(model=model, query=QUERY, documents=DOCUMENTS, top_n=2, return_documents=True)
assert len(reply.results) == 2, reply
assert reply.results[0].relevance_score >= reply.results[1].relevance_score, reply
for r in reply.results:
    assert r.document.text == DOCUMENTS[r.index], r
assert reply.meta.api_version.version == "1", reply.meta
out["v1"] = {r.index: r.relevance_score for r in reply.results}

reply = v1.rerank(
    query=QUERY,
    documents=[{"title": "Rust", "text": d, "id": str(i)} for i, d in enumerate(DOCUMENTS)],
    rank_fields=["text"],
    return_documents=False,
    max_chunks_per_doc=3,
)
assert len(reply.results) == 3 and all(r.document is None for r in reply.results), reply
out["v1_objects"] = {r.index: r.relevance_score for r in reply.results}

v2 = cohere.ClientV2(api_key=api_key, base_url=base_url, max_retries=0)
reply = v2.rerank(model=model, query=QUERY, documents=DOCUMENTS, top_n=1, max_tokens_per_doc=512)
assert len(reply.results) == 1, reply
out["v2"] = {r.index: r.relevance_score for r in reply.results}

try:
    v2.rerank(model="rerank-v3.5", query=QUERY, documents=DOCUMENTS)
    raise AssertionError("an unknown model was served")
except cohere.errors.NotFoundError as e:
    assert model in e.body["message"], e.body
try:
    v2.rerank(model=model, query=" ", documents=DOCUMENTS)
    raise AssertionError("a blank query was served")
except cohere.errors.BadRequestError as e:
    assert "query" in e.body["message"], e.body
try:
    cohere.ClientV2(api_key="wrong", base_url=base_url, max_retries=0).rerank(
        model=model, query=QUERY, documents=DOCUMENTS
    )
    raise AssertionError("a wrong key was served")
except cohere.errors.UnauthorizedError:
    pass

print(json.dumps(out))
