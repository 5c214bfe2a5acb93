"""Weights that cannot be had end the job early, with a message naming the flags."""

import time
import urllib.error

import pytest
import torch

from dvamn.audio import (
    WeightsUnavailableError,
    add_audio_arguments,
    audio_embedder_from_args,
    check_audio_weights,
    make_audio_embedder,
)

FLAGS = ("--vggish-weights PATH|s3://...", "--vggish-pca PATH|s3://...", "--audio logmel")


def assert_names_the_flags(message: str) -> None:
    for flag in FLAGS:
        assert flag in message, f"{flag!r} missing from: {message}"


@pytest.fixture
def no_internet(tmp_path, monkeypatch):
    """An empty torch hub folder and a download that fails at once, as with no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert torch.hub.get_dir().startswith(str(tmp_path)), "something called torch.hub.set_dir"
    calls = []

    def refuse(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return calls


@pytest.mark.parametrize("kind", ["vggish", "vggish-raw"])
def test_default_urls_without_internet(no_internet, kind):
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        check_audio_weights(kind)
    assert time.monotonic() - started < 5
    assert_names_the_flags(str(caught.value))
    assert "vggish-10086976.pth" in str(caught.value)
    assert no_internet and no_internet[0].startswith("https://")
    with pytest.raises(WeightsUnavailableError):
        make_audio_embedder(kind, device="cpu")


def test_missing_local_file(tmp_path):
    missing = str(tmp_path / "nowhere" / "vggish.pth")
    with pytest.raises(WeightsUnavailableError) as caught:
        check_audio_weights("vggish", missing, missing)
    assert missing in str(caught.value)
    assert_names_the_flags(str(caught.value))
    assert isinstance(caught.value, RuntimeError)


def test_missing_pca_file(vggish_files, tmp_path):
    missing = str(tmp_path / "pca.pth")
    with pytest.raises(WeightsUnavailableError, match="PCA") as caught:
        make_audio_embedder("vggish", str(vggish_files[0]), missing, device="cpu")
    assert_names_the_flags(str(caught.value))


def test_a_file_that_is_not_a_state_dict(tmp_path):
    bogus = tmp_path / "vggish.pth"
    bogus.write_text("not weights")
    with pytest.raises(WeightsUnavailableError, match="not a torch state dict"):
        check_audio_weights("vggish-raw", str(bogus))


def test_a_state_dict_of_another_network(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(WeightsUnavailableError, match="not torchvggish's VGGish state dict"):
        check_audio_weights("vggish-raw", str(other))


def test_logmel_needs_no_weights(no_internet):
    assert check_audio_weights("logmel") == ""
    assert make_audio_embedder("logmel").kind == "logmel"
    assert not no_internet


def test_unknown_kind():
    with pytest.raises(ValueError, match="logmel"):
        make_audio_embedder("mfcc")


def test_cli_flags_build_the_embedder():
    import argparse

    parser = argparse.ArgumentParser()
    add_audio_arguments(parser)
    args = parser.parse_args(["--audio", "logmel"])
    assert args.vggish_weights is None and args.audio_device == "auto"
    assert audio_embedder_from_args(args).kind == "logmel"
    assert parser.parse_args([]).audio == "vggish"
