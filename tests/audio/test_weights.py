"""Weights that cannot be had end the job early, with a message naming the flags; weights
that would run code, or cached downloads changed after download, are refused the same way."""

import time
import urllib.error
from pathlib import Path

import pytest
import torch

from dvamn import storage
from dvamn.audio import (
    WeightsUnavailableError,
    add_audio_arguments,
    audio_embedder_from_args,
    check_audio_weights,
    make_audio_embedder,
)
from tests.support.standin_vggish import save_pca_standin

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


# --- Nothing in a weights file runs -----------------------------------------------------


class _OpensAFile:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the pickle runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_files(tmp_path, marker) -> list:
    """.pth files whose unpickling would create ``marker``: the payload alone, and hidden
    in a valid-looking state dict, in torch's zip format and its legacy format."""
    out = []
    for name, payload in [
        ("alone", _OpensAFile(marker)),
        ("in-state-dict", {"features.0.weight": torch.zeros(2), "extra": _OpensAFile(marker)}),
    ]:
        for legacy in (False, True):
            path = tmp_path / f"{name}-{'legacy' if legacy else 'zip'}.pth"
            torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
            out.append(path)
    return out


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, vggish_files):
    marker = tmp_path / "payload-ran"
    crafted = _crafted_files(tmp_path, marker)
    for path in crafted:
        with pytest.raises(WeightsUnavailableError) as caught:
            check_audio_weights("vggish-raw", str(path))
        message = str(caught.value)
        assert str(path) in message and "could run code" in message
        assert_names_the_flags(message)
        assert "weights_only=False" not in message and "open" not in message
        with pytest.raises(WeightsUnavailableError, match="PCA parameters"):
            check_audio_weights("vggish", str(vggish_files[0]), str(path))
        assert not marker.exists(), f"{path.name}: the payload ran"
    # The payload is real: a full unpickle (which dvamn never does) runs it.
    torch.load(crafted[0], weights_only=False)
    assert marker.exists()


def test_pca_pickled_under_numpy_1_in_the_legacy_format_loads(tmp_path, vggish_files):
    """torchvggish's PCA file (2019) holds numpy arrays, pickled by numpy 1 (which names
    ``numpy.core.multiarray._reconstruct``) in torch's legacy format: the weights-only
    loader reads it with nothing but array reconstruction allowed."""
    from tests.support.standin_vggish import standin_pca_params

    path = tmp_path / "vggish_pca_params-legacy.pth"
    torch.save(standin_pca_params(), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert b"cnumpy._core.multiarray\n" in data
    path.write_bytes(data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    embedder = make_audio_embedder("vggish", str(vggish_files[0]), str(path), device="cpu")
    assert embedder.kind == "vggish"


# --- Cached downloads are checked before every use ---------------------------------------


def _hub_file(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / name


@pytest.fixture
def serves(no_internet, monkeypatch):
    """``serves(name, source)``: torchvggish's PCA URL becomes .../name, and its download
    copies ``source`` (the network stands in; the cache and its checks are the real ones).
    Returns the list of downloaded URLs."""
    import shutil

    import dvamn.audio.vggish as vggish

    downloads = []

    def configure(name: str, source: Path):
        monkeypatch.setattr(vggish, "default_pca_url", lambda: f"https://example.test/{name}")

        def download(url, dst, hash_prefix=None, progress=True):
            downloads.append(url)
            shutil.copyfile(source, dst)
            if hash_prefix and not storage.sha256_hex(dst).startswith(hash_prefix):
                raise RuntimeError(f'invalid hash value (expected "{hash_prefix}")')

        monkeypatch.setattr(torch.hub, "download_url_to_file", download)
        return downloads

    return configure


def test_a_cached_download_changed_after_download_is_refused(serves, vggish_files, tmp_path):
    weights, pca = vggish_files
    downloads = serves("vggish_pca_params.pth", pca)  # no hash in the name
    first = check_audio_weights("vggish", str(weights))
    cached = _hub_file("vggish_pca_params.pth")
    assert downloads and cached.is_file()
    assert storage.digest_record(cached).read_text().strip() == storage.sha256_hex(pca)
    assert check_audio_weights("vggish", str(weights)) == first  # verified, not downloaded
    assert len(downloads) == 1
    save_pca_standin(cached, seed=1)  # swapped after download, a valid-looking file
    with pytest.raises(WeightsUnavailableError) as caught:
        check_audio_weights("vggish", str(weights))
    message = str(caught.value)
    assert str(cached) in message and "changed after download" in message
    assert_names_the_flags(message)
    with pytest.raises(WeightsUnavailableError, match="changed after download"):
        make_audio_embedder("vggish", str(weights), device="cpu")
    assert len(downloads) == 1


def test_a_cached_file_whose_name_hash_does_not_match_is_refused(serves, vggish_files):
    """torch hub's convention: the name carries the first hex digits of the SHA-256, checked
    at download by torch and on every later use by dvamn, record or not."""
    weights, pca = vggish_files
    prefix = storage.sha256_hex(pca)[:8]
    serves(f"vggish_pca_params-{prefix}.pth", pca)
    check_audio_weights("vggish", str(weights))  # downloads, prefix checked, recorded
    cached = _hub_file(f"vggish_pca_params-{prefix}.pth")
    storage.digest_record(cached).unlink()
    check_audio_weights("vggish", str(weights))  # no record: the name still checks it
    assert storage.digest_record(cached).is_file()  # and the record is back
    save_pca_standin(cached, seed=2)
    storage.digest_record(cached).unlink()
    with pytest.raises(WeightsUnavailableError) as caught:
        check_audio_weights("vggish", str(weights))
    assert "the prefix its file name carries" in str(caught.value)
    assert str(cached) in str(caught.value)
    assert_names_the_flags(str(caught.value))


def test_a_cached_file_already_there_is_checked_against_its_name(no_internet, vggish_files):
    """The real default: a file in the hub cache under torchvggish's name whose content is
    not torchvggish's release (its SHA-256 does not start with 970ea276) is refused, and
    nothing is downloaded over it."""
    import dvamn.audio.vggish as vggish

    weights, pca = vggish_files
    name = vggish.default_pca_url().rsplit("/", 1)[1]
    assert storage.name_hash_prefix(name), name
    cached = _hub_file(name)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(pca.read_bytes())
    with pytest.raises(WeightsUnavailableError) as caught:
        check_audio_weights("vggish", str(weights))
    assert str(cached) in str(caught.value) and "--vggish-pca" in str(caught.value)
    assert not no_internet


def test_a_remote_copy_cached_and_then_changed_is_refused(vggish_files, tmp_path, monkeypatch):
    """s3:// (any fsspec URI) copies in $DVAMN_CACHE are checked the same way; memory://
    stands in for S3."""
    import fsspec

    monkeypatch.setenv("DVAMN_CACHE", str(tmp_path / "cache"))
    weights, pca = vggish_files
    uri = f"memory://dvamn-test-{tmp_path.name}/vggish_pca.pth"
    with fsspec.open(uri, "wb") as f:
        f.write(pca.read_bytes())
    check_audio_weights("vggish", str(weights), uri)
    (cached,) = [p for p in (tmp_path / "cache" / "weights").iterdir() if p.suffix == ".pth"]
    assert storage.digest_record(cached).is_file()
    check_audio_weights("vggish", str(weights), uri)
    save_pca_standin(cached, seed=3)
    with pytest.raises(WeightsUnavailableError) as caught:
        check_audio_weights("vggish", str(weights), uri)
    assert str(cached) in str(caught.value) and "changed after download" in str(caught.value)
    assert_names_the_flags(str(caught.value))


def test_local_weights_are_read_in_place_without_records(vggish_files):
    """The stand-in (a user's own --vggish-weights / --vggish-pca) is not a cache: used
    as it is, nothing written beside it."""
    weights, pca = vggish_files
    assert "sha256:" in check_audio_weights("vggish", str(weights), str(pca))
    assert not storage.digest_record(weights).exists()
    assert not storage.digest_record(pca).exists()


def test_cached_pose_models_are_checked_too(monkeypatch, tmp_path):
    """rtmlib's cache (its zip names carry another file's hash, so only the SHA-256 recorded
    at first use is checked): a model changed afterwards is refused, naming the flags."""
    from dvamn.pose import PoseWeightsError
    from dvamn.pose.estimators import resolve_weights, rtmlib_defaults

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = rtmlib_defaults("rtmo", "balanced").pose_url
    cached = tmp_path / "hub" / "checkpoints" / (url.rsplit("/", 1)[1].split(".")[0] + ".onnx")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stand-in model bytes")
    path, provenance = resolve_weights(None, url, "RTMO pose model")
    assert Path(path) == cached and storage.digest_record(cached).is_file()
    assert resolve_weights(None, url, "RTMO pose model")[1] == provenance
    cached.write_bytes(b"another model")
    with pytest.raises(PoseWeightsError) as caught:
        resolve_weights(None, url, "RTMO pose model")
    message = str(caught.value)
    assert str(cached) in message and "changed after download" in message
    assert "--pose-model" in message
