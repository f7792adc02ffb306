"""Every error class survives pickling (the way it crosses Ray) with its type and fields."""

import pickle

import pytest

from graph import errors

CASES = [
    errors.SesameError("boom"),
    errors.RequestError("bad"),
    errors.MalformedJSON("not json"),
    errors.BodyTooLarge("too big"),
    errors.NotFound("no run"),
    errors.IdempotencyKeyReused("other body"),
    errors.Unauthorized("no key"),
    errors.TooManyRuns("slow down", 2),
    errors.Overloaded("busy", 1),
    errors.InvalidRequest("1 problem", [{"node_id": "1", "field": "id", "message": "m"}]),
    errors.NodeError("n", "code", True, True, 2.5),
    errors.ProviderError("p", "provider_error", True),
    errors.NodeTimeout("t", None, True),
    errors.PromptTooLarge("the rendered text would be 5 characters; at most 4 are allowed"),
    errors.ToolCallFailed("f", "tool_call_failed", False, True),
    errors.InternalError("oops"),
]


@pytest.mark.parametrize("error", CASES, ids=lambda e: type(e).__name__)
def test_round_trips_through_pickle(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.args == error.args and copy.message == error.message
    assert copy.code == error.code and copy.http_status == error.http_status


def test_node_error_fields():
    error = pickle.loads(pickle.dumps(errors.NodeTimeout("t", None, True, False, 1.5)))
    assert (error.error_code, error.retryable, error.may_have_reached_provider, error.retry_after_s) == \
        ("node_timeout", True, False, 1.5)


def test_redact_removes_secrets():
    assert errors.redact("key sk-abcdef leaked sk-abcdef", ["sk-abcdef", None, ""]) == \
        "key [redacted] leaked [redacted]"
