"""Schemathesis hooks of hack/fuzz-api.sh: bound what would otherwise run for long.

- A watch streams until its ``timeoutSeconds`` (30 to 60 minutes by default): every
  generated watch gets ``timeoutSeconds=-1``, which ends it at once after its options were
  checked (the errors a fuzzer can provoke come before the stream).
- A numeric ``resourceVersion`` ahead of the store makes a read wait 3 s and then answer
  504 Too large resource version (kube's behaviour, tested in apiserver/tests/hostile.rs):
  numeric ones become ``0``; other strings are kept (they must be 400s).
"""

import sys

import schemathesis

# Generating the deeply nested kinds (Worker, ActorTemplate) recurses deeply; under
# Python 3.11 a RecursionError inside Hypothesis then surfaces as a crash of the tool
# ("AST constructor recursion depth mismatch"), not as a finding.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))


def _first(value):
    # A query parameter may be generated twice (a list): the server reads the first.
    if isinstance(value, (list, tuple)):
        return value[0] if value else ""
    return value


def _truthy(value):
    # How Kubernetes reads a boolean query parameter: all but 0/false is true.
    return str(_first(value)).lower() not in ("0", "false")


# `before_call` runs before every request of every phase (`map_query` is skipped by the
# coverage phase).
@schemathesis.hook
def before_call(ctx, case, kwargs):
    query = case.query
    if not isinstance(query, dict):
        return
    if "watch" in query and _truthy(query["watch"]):
        query["timeoutSeconds"] = -1
    rv = _first(query.get("resourceVersion"))
    if isinstance(rv, bool):
        return
    if isinstance(rv, int) or (isinstance(rv, str) and rv.isdigit()):
        query["resourceVersion"] = "0"
