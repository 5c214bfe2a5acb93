"""Stand-in ONNX pose models, exported once per test session."""

import warnings

import pytest

from tests.support.standin_pose import export_all


@pytest.fixture(scope="session")
def standin_models(tmp_path_factory) -> dict:
    """{'rtmo', 'yolox', 'rtmpose'} -> path of a stand-in ONNX file with rtmlib's contract."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on the TorchScript exporter
        return export_all(str(tmp_path_factory.mktemp("pose-models")))
