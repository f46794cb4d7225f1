"""What a registration says: backend_args with secrets redacted, the worker's URL, backoff bounds."""

from __future__ import annotations

import argparse

from cserve.gateway.registration import (REDACTED, backend_args, default_worker_url, is_secret, local_url,
                                         redacted_args, with_scheme)
from cserve.gateway.worker import Backoff


def test_secret_option_names():
    for name in ("api_key", "hf_token", "ssl_keyfile", "ssl_keyfile_password", "admin_api_key", "client_secret"):
        assert is_secret(name), name
    for name in ("max_num_batched_tokens", "tokenizer", "skip_tokenizer_init", "max_tokens", "ssl_certfile",
                 "model", "port"):
        assert not is_secret(name), name


def test_the_fallback_redacts_set_secrets_and_keeps_the_rest():
    args = argparse.Namespace(model="m", api_key=["k1", "k2"], hf_token="hf_abc", ssl_keyfile=None,
                              max_num_batched_tokens=2048, tokenizer="t", gateway_address="http://gw")
    out = redacted_args(args)
    assert out["api_key"] == [REDACTED, REDACTED] and out["hf_token"] == REDACTED
    assert out["ssl_keyfile"] is None and out["max_num_batched_tokens"] == 2048 and out["tokenizer"] == "t"


def test_backend_args_of_a_real_command_line_has_no_secret(tmp_path):
    from cserve.cli.args import parse_serve_args

    args = parse_serve_args([str(tmp_path), "--api-key", "sekret-key", "--max-model-len", "256",
                             "--hf-token", "hf_sekret"])
    out = backend_args(args)
    assert "sekret" not in repr(out)
    assert out["max_model_len"] == 256
    assert out["api_key"] in (REDACTED, [REDACTED])


def test_urls():
    assert with_scheme("gw:9000/") == "http://gw:9000"
    assert with_scheme("https://gw") == "https://gw"
    ns = argparse.Namespace
    assert local_url(ns(host=None, port=8000, uds=None)) == "http://127.0.0.1:8000"
    assert local_url(ns(host="::", port=8000, uds=None)) == "http://[::1]:8000"
    assert local_url(ns(host="10.1.2.3", port=1, uds=None, ssl_certfile="c.pem")) == "https://10.1.2.3:1"
    assert local_url(ns(host=None, port=1, uds="/tmp/s")) is None
    # An address that names one interface is the worker's URL; on every interface, a gateway on this
    # machine gets loopback and one elsewhere the address of the interface that routes to it.
    assert default_worker_url(ns(host="10.1.2.3", port=5, uds=None), "http://gw") == "http://10.1.2.3:5"
    assert default_worker_url(ns(host="0.0.0.0", port=5, uds=None), "http://127.0.0.1:9") == "http://127.0.0.1:5"
    assert default_worker_url(ns(host=None, port=5, uds=None), "localhost:9") == "http://127.0.0.1:5"
    assert default_worker_url(ns(host=None, port=5, uds="/tmp/s"), "http://gw") is None
    remote = default_worker_url(ns(host=None, port=5, uds=None), "http://127.0.0.2:9")
    assert remote.startswith("http://127.") and remote.endswith(":5")


def test_backoff_grows_to_its_cap_with_jitter():
    b = Backoff(base=0.5, cap=4.0)
    delays = [b.next() for _ in range(10)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(d <= 4.0 for d in delays) and max(delays) >= 2.0
    b.reset()
    assert b.next() <= 0.5
