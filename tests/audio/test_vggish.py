"""VGGish through the stand-in files, loaded the way a user's --vggish-weights are."""

import numpy as np
import pytest
import torch

from dvamn.audio import check_audio_weights, load_vggish
from dvamn.audio.vggish import QUANTIZE_MAX, QUANTIZE_MIN, load_torch_file
from tests.support.standin_vggish import save_pca_standin

from .conftest import tone_with_beat

DURATIONS_S = [12.0, 12.3, 1.0, 0.1]
EXPECTED_FRAMES = [60, 61, 5, 0]


@pytest.fixture(scope="module")
def waveforms():
    return [tone_with_beat(d, seed=i) for i, d in enumerate(DURATIONS_S)]


@pytest.fixture(scope="module")
def quantised(vggish_embedder, waveforms):
    return vggish_embedder.embed(waveforms)


@pytest.fixture(scope="module")
def raw(vggish_raw_embedder, waveforms):
    return vggish_raw_embedder.embed(waveforms)


def test_interface_and_provenance(vggish_embedder, vggish_raw_embedder, vggish_files):
    weights, pca = vggish_files
    assert (vggish_embedder.kind, vggish_embedder.dim) == ("vggish", 128)
    assert vggish_raw_embedder.kind == "vggish-raw"
    assert str(weights) in vggish_embedder.weights and str(pca) in vggish_embedder.weights
    assert "sha256:" in vggish_embedder.weights
    assert str(pca) not in vggish_raw_embedder.weights
    assert check_audio_weights("vggish", str(weights), str(pca)) == vggish_embedder.weights
    assert check_audio_weights("vggish-raw", str(weights)) == vggish_raw_embedder.weights


def test_frame_counts_for_known_durations(quantised, raw):
    for outputs in (quantised, raw):
        assert [o.shape for o in outputs] == [(n, 128) for n in EXPECTED_FRAMES]
        assert all(o.dtype == np.float32 for o in outputs)


def test_quantised_values_are_integers_0_to_255(quantised):
    values = np.concatenate(quantised)
    np.testing.assert_array_equal(values, np.round(values))
    assert values.min() >= 0 and values.max() <= 255
    assert len(np.unique(values)) > 50  # the stand-in PCA keeps the values spread


def test_quantised_is_vggish_postprocessor_of_raw(quantised, raw, vggish_files):
    params = load_torch_file(vggish_files[1])
    eigen_vectors = np.asarray(params["pca_eigen_vectors"], np.float64)
    means = np.asarray(params["pca_means"], np.float64)
    raw_all = np.concatenate(raw).astype(np.float64)
    # torchvggish's Postprocessor, written out
    pca_applied = (eigen_vectors @ (raw_all.T - means[:, None])).T
    expected = np.round((np.clip(pca_applied, QUANTIZE_MIN, QUANTIZE_MAX) + 2.0) * 255.0 / 4.0)
    mismatched = np.abs(np.concatenate(quantised) - expected) > 0
    assert mismatched.mean() < 0.001  # float32 vs float64 may flip a value at a .5 boundary


def test_faithful_embedding_has_no_final_relu(raw, vggish_files):
    """Google's VGGish has no ReLU after the last layer: raw values go negative."""
    raw_all = np.concatenate(raw)
    assert (raw_all < 0).mean() > 0.1
    with_relu = load_vggish(str(vggish_files[0]), postprocess=False, device="cpu", final_relu=True)
    assert "final ReLU" in with_relu.weights
    relu_out = with_relu.embed([tone_with_beat(1.0, seed=2)])[0]
    assert relu_out.min() >= 0.0
    np.testing.assert_allclose(relu_out, np.maximum(raw[2], 0.0), atol=1e-4)


def test_batching_gives_the_same_as_one_by_one(vggish_raw_embedder, waveforms, raw):
    one_by_one = [vggish_raw_embedder.embed([w])[0] for w in waveforms[1:]]
    for alone, batched in zip(one_by_one, raw[1:]):
        np.testing.assert_allclose(alone, batched, rtol=1e-4, atol=1e-3)
    # Chunks that split one waveform's examples change nothing either.
    original = vggish_raw_embedder.batch_examples
    vggish_raw_embedder.batch_examples = 7
    try:
        chunked = vggish_raw_embedder.embed(waveforms[2:])
    finally:
        vggish_raw_embedder.batch_examples = original
    for small, batched in zip(chunked, raw[2:]):
        np.testing.assert_allclose(small, batched, rtol=1e-4, atol=1e-3)


def test_empty_and_short_inputs(vggish_embedder):
    outputs = vggish_embedder.embed([np.zeros(100, np.float32)])
    assert outputs[0].shape == (0, 128)
    assert vggish_embedder.embed([]) == []


def test_stereo_input_is_refused_with_a_clear_message(vggish_embedder):
    with pytest.raises(ValueError, match="mono"):
        vggish_embedder.embed([np.zeros((2, 16000), np.float32)])


def test_pca_stored_as_numpy_arrays_loads_too(tmp_path, vggish_files, raw):
    numpy_pca = save_pca_standin(tmp_path / "pca.pth", as_numpy=True)
    embedder = load_vggish(str(vggish_files[0]), str(numpy_pca), device="cpu")
    out = embedder.embed([tone_with_beat(1.0, seed=2)])[0]
    assert out.shape == (5, 128) and out.min() >= 0 and out.max() <= 255


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(vggish_files, raw):
    embedder = load_vggish(str(vggish_files[0]), postprocess=False, device="cuda")
    assert embedder.device == "cuda"
    out = embedder.embed([tone_with_beat(12.0, seed=0)])[0]
    np.testing.assert_allclose(out, raw[0], rtol=1e-2, atol=2e-2)
