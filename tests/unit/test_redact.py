"""obsctl.redact: secrets never leave in a log line, ordinary text is never damaged."""

import pytest

from obsctl.redact import ANYWHERE_LENGTH, MIN_TOKEN_LENGTH, redact

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS documentation's example secret


@pytest.mark.parametrize("secret", ["a", "e", "ab1", "the", "1234567"])
def test_a_short_secret_never_damages_ordinary_text(secret):
    line = "ERROR : the cat sat on a mat at 12:34:56.1234567 with 1234567 bytes; abc"
    assert redact(line, [secret]) == line


def test_a_short_secret_is_still_hidden_where_a_key_names_it():
    assert redact('Setting secret_access_key="ab1" from env', ["ab1"]) == 'Setting secret_access_key="***" from env'
    assert redact('{"password":"ab1","level":"error"}', ["ab1"]) == '{"password":"***","level":"error"}'


def test_a_medium_secret_is_hidden_as_a_whole_token_only():
    secret = "Abcd1234"
    assert len(secret) >= MIN_TOKEN_LENGTH
    assert redact(f"key {secret}: denied", [secret]) == "key ***: denied"
    assert redact(f"file X{secret}Y.txt", [secret]) == f"file X{secret}Y.txt"


def test_a_long_secret_is_hidden_everywhere():
    assert len(AWS_SECRET) >= ANYWHERE_LENGTH
    out = redact(f"sig={AWS_SECRET}&x prefix{AWS_SECRET}suffix", [AWS_SECRET])
    assert AWS_SECRET not in out and out.count("***") == 2


def test_a_secret_containing_another_is_masked_whole():
    inner = "Abcdefgh12"
    outer = inner + "ZZZZZZZZZZZZZZZZZZZZ"
    assert redact(f"v {outer} v", [inner, outer]) == "v *** v"


def test_signing_headers_are_cut_to_the_end_of_the_line():
    line = "[CURL DBG] > Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261121/us-east-1/s3/aws4_request"
    assert redact(line, []) == "[CURL DBG] > Authorization: ***"
    assert "tokVALUE" not in redact("> x-amz-security-token: tokVALUE", [])


def test_ordinary_text_with_credential_words_but_no_value_is_unchanged():
    for line in ("bypass=1 cache", "Using access key from environment", "passing through", "tokens: 3"):
        assert redact(line, [AWS_SECRET]) == line


def test_empty_and_none_secrets_are_ignored():
    assert redact("plain line", ["", None]) == "plain line"
