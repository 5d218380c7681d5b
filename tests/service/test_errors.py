"""Bad requests get a clear status code, and the daemon keeps serving."""

import grpc
import pytest

from mlxd_client import MlxdClientError, pb

pytestmark = pytest.mark.process

BAD_OPTIONS = [
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -3}, "top_k"),
    ({"min_p": 2.0}, "min_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"presence_penalty": float("inf")}, "presence_penalty"),
    ({"frequency_penalty": 5.0}, "frequency_penalty"),
    ({"logit_bias": {999: 1.0}}, "logit_bias"),
    ({"logit_bias": {3: float("nan")}}, "logit_bias"),
    ({"stop": [""]}, "stop"),
    ({"stop_token_ids": [320]}, "stop_token_ids"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 1000}, "top_logprobs"),
]


def code_of(call) -> tuple[grpc.StatusCode, str]:
    """Run call and return the status code and details it failed with (through the client or a raw stub)."""
    with pytest.raises((MlxdClientError, grpc.RpcError)) as info:
        call()
    error = info.value
    if isinstance(error, MlxdClientError):
        return error.code, error.details
    return error.code(), error.details()


@pytest.mark.parametrize("options,field", BAD_OPTIONS)
def test_bad_options_are_invalid_argument(client, options, field):
    code, details = code_of(lambda: client.complete("hi", max_tokens=2, **options))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details


def test_token_ids_outside_the_vocabulary(client):
    code, details = code_of(lambda: client.complete(tokens=[1, 2, 320], max_tokens=2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "320" in details
    code, _ = code_of(lambda: client.complete(tokens=[-1], max_tokens=2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_missing_input_and_empty_chat(client):
    code, _ = code_of(lambda: list(client.stub.Generate(pb.GenerateRequest())))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: list(client.stub.Generate(pb.GenerateRequest(chat=pb.ChatMessages()))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_prompt_longer_than_the_context(client):
    code, details = code_of(lambda: client.complete(tokens=[5] * 2048, max_tokens=1))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "2048" in details


def test_generation_stops_at_the_context_length(client):
    result = client.complete(tokens=[5] * 2040, max_tokens=100, temperature=0.0, ignore_eos=True)
    assert result.final.usage.completion_tokens == 8
    assert result.final.finish_reason == pb.FINISH_REASON_LENGTH


def test_wrong_expected_model_is_failed_precondition(client):
    code, details = code_of(lambda: client.complete("x", max_tokens=1, expected_model="sha256:0000"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "sha256:0000" in details


def test_images_to_a_text_model_are_failed_precondition(client):
    request = pb.MultimodalGenerateRequest(prompt=pb.MultimodalPrompt(parts=[
        pb.ContentPart(text="describe"), pb.ContentPart(image=pb.Image(data=b"\x89PNG"))]))
    code, details = code_of(lambda: list(client.stub.MultimodalGenerate(request)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "text-only" in details


def test_deadline_exceeded(client):
    code, _ = code_of(lambda: client.complete(tokens=[5] * 10, max_tokens=2000, ignore_eos=True, timeout=0.2))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # The worker dropped that request: the next one is served at once and is correct.
    assert client.complete("hi", max_tokens=2, ignore_eos=True, timeout=10).final.usage.completion_tokens == 2


def test_two_hundred_invalid_requests_then_still_serving(client, expected):
    for i in range(200):
        options = BAD_OPTIONS[i % len(BAD_OPTIONS)][0]
        with pytest.raises(MlxdClientError):
            client.complete("hi", max_tokens=2, **options)
    assert client.health() == "SERVING"
    ids = expected["input_ids"][0].tolist()
    result = client.complete(tokens=ids, temperature=0.0, ignore_eos=True, max_tokens=16)
    assert result.token_ids == expected["greedy_ids"].tolist()
