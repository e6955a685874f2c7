import os

import pytest

from vice.secrets import (
    REDACTED,
    is_secret_key,
    redact_mapping,
    redact_text,
    redact_tree,
    secret_values,
)


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "MLFLOW_TRACKING_TOKEN",
        "tracking.password",
        "db.PASSWD",
        "AWS_SECRET_ACCESS_KEY",
        "aws_access_key_id",
        "openai.api_key",
        "apiKey",
        "APIKEY",
        "ssh.private_key",
        "gcp.credentials",
        "credential",
        "tracking.auth.user",
        "http-authorization",
        "accessToken",
        "mask_token",  # a whole part "token": hidden, the documented price
    ],
)
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "tokens_per_step",
        "max_tokens",
        "num_tokens",
        "tokenizer",
        "author",
        "authority",
        "keys",
        "optim.lr",
        "data.root",
        "tracking.uri",
        "api.url",
        "private.dir",
        "key",
        "secretary",
        "",
    ],
)
def test_plain_keys(key):
    assert not is_secret_key(key)


def test_redact_mapping_hides_secret_values_and_url_passwords():
    flat = {
        "optim.lr": 0.3,
        "trainer.max_steps": 200,
        "tracking.token": "dapi0123456789abcdef",
        "tracking.password": 123456,
        "tracking.uri": "postgresql://vice:s3cr3t-pw@db.example.org:5432/mlflow",
        "storage.api_key": None,
        "db.passwd": "",
        "tokens_per_step": 4096,
    }
    out = redact_mapping(flat, env={})
    assert out == {
        "optim.lr": 0.3,
        "trainer.max_steps": 200,
        "tracking.token": REDACTED,
        "tracking.password": REDACTED,  # numbers are hidden too
        "tracking.uri": "postgresql://vice:***@db.example.org:5432/mlflow",
        "storage.api_key": None,  # "not set" stays visible
        "db.passwd": "",
        "tokens_per_step": 4096,
    }
    assert flat["tracking.token"] == "dapi0123456789abcdef"  # the input is not changed


def test_redact_text_replaces_current_env_secrets():
    env = {
        "MLFLOW_TRACKING_TOKEN": "dapi-abcdef-123456",
        "MLFLOW_TRACKING_PASSWORD": "hunter2-long",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "HF_TOKEN": "hf_abcdefghijklmnop",
        "MY_SERVICE_API_KEY": "k-9f8e7d6c",
        "SOME_AUTH": "true",  # never a credential: would blank out every "true"
        "DB_PASSWORD": "abc",  # shorter than 4 characters: left alone
        "HOME": "/home/vice",  # not secret
        "TOKENIZERS_PARALLELISM": "false",
    }
    text = (
        "export MLFLOW_TRACKING_TOKEN=dapi-abcdef-123456\n"
        "login hunter2-long failed; key AKIAIOSFODNN7EXAMPLE / "
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
        "hf_abcdefghijklmnop k-9f8e7d6c abc true in /home/vice\n"
        "tracking.uri=http://user:pw1234@10.0.0.5:5000 and http://127.0.0.1:5000/#/runs"
    )
    assert redact_text(text, env) == (
        "export MLFLOW_TRACKING_TOKEN=***\n"
        "login *** failed; key *** / ***\n"
        "*** *** abc true in /home/vice\n"
        "tracking.uri=http://user:***@10.0.0.5:5000 and http://127.0.0.1:5000/#/runs"
    )


def test_longest_secret_first_and_default_env(monkeypatch):
    # One secret contains another: the long one is replaced whole, not "***-suffix".
    env = {"A_TOKEN": "abcd", "B_TOKEN": "abcd-efgh"}
    assert secret_values(env) == ["abcd-efgh", "abcd"]
    assert redact_text("abcd-efgh abcd", env) == "*** ***"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "live-token-42")
    assert redact_text("Bearer live-token-42") == "Bearer ***"


def test_redact_tree_hides_secret_sections_and_keeps_structure():
    tree = {
        "optim": {"lr": 0.3, "betas": (0.9, 0.999)},
        "tracking": {
            "uri": "mysql://root:toor1@localhost/mlflow",
            "auth": {"user": "bob", "password": "pw-xyz-1"},
            "token": None,
        },
        "data": {"roots": ["/data/a", "/data/secret-is-a-dir-name"]},
        "tokens_per_step": [512, 1024],
    }
    out = redact_tree(tree, env={})
    assert out == {
        "optim": {"lr": 0.3, "betas": (0.9, 0.999)},
        "tracking": {
            "uri": "mysql://root:***@localhost/mlflow",
            "auth": {"user": REDACTED, "password": REDACTED},
            "token": None,
        },
        "data": {"roots": ["/data/a", "/data/secret-is-a-dir-name"]},
        "tokens_per_step": [512, 1024],
    }
    assert tree["tracking"]["auth"]["password"] == "pw-xyz-1"


def test_redact_tree_agrees_with_redact_mapping_on_flattened_keys():
    from vice.tracking import flatten

    tree = {"a": {"auth": {"user": "bob"}, "b": 1}, "c": {"api_key": "k-123456"}}
    assert redact_mapping(flatten(tree), env={}) == flatten(redact_tree(tree, env={}))


def test_environment_changing_under_our_feet_is_tolerated(monkeypatch):
    import threading

    from vice import secrets

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter22")
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            os.environ[f"_VICE_CHURN_{i % 50}"] = "x"
            os.environ.pop(f"_VICE_CHURN_{(i + 25) % 50}", None)
            i += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(300):
            assert secrets.redact_text("pw hunter22") == f"pw {secrets.REDACTED}"
    finally:
        stop.set()
        thread.join()
        for i in range(50):
            os.environ.pop(f"_VICE_CHURN_{i}", None)
