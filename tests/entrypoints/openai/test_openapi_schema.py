"""Schemathesis fuzzes a live server from its own /openapi.json, which describes the real request
bodies (fields, types and bounds): whatever it generates, valid or not, gets no 5xx. Afterwards
the server is alive and idle."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.helpers.server import ServerProcess, wait_idle


@pytest.fixture(scope="module")
def fuzzed_server(chat_model_dir, tmp_path_factory):
    proc = ServerProcess(chat_model_dir, "--max-model-len", "128", "--max-num-seqs", "4",
                         "--enable-server-load-tracking", "--max-logprobs", "5",
                         log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready()
    yield proc
    with proc.client(timeout=30) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/load").json()["server_load"] == 0
        wait_idle(http)
    log = proc.log()
    proc.stop()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture(scope="module")
def api_schema(fuzzed_server):
    return schemathesis.openapi.from_url(fuzzed_server.base_url + "/openapi.json")


def test_the_schema_describes_the_request_bodies(api_schema):
    raw = api_schema.raw_schema
    for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/generate"):
        ref = raw["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.startswith("#/components/schemas/")
    fields = raw["components"]["schemas"]["CompletionRequest"]["properties"]
    assert fields["top_p"]["maximum"] == 1 and fields["temperature"]["minimum"] == 0
    assert fields["seed"]["anyOf"][0]["maximum"] == 2**63 - 1


# Driven through hypothesis directly: schemathesis' pytest plugin does not run on this pytest.
def test_no_server_errors(api_schema):
    from hypothesis import given

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            case.call_and_validate(checks=[not_a_server_error], timeout=60)

        fuzz()
