import keras
import numpy as np
import pytest
from conftest import BACKEND

import keras_transfer as kt

ALL = kt.list_backbones()
# On jax and torch a sample of families (JAX convolutions are slow on CPU).
SAMPLE = ["mobilenet", "mobilenet_v3_small", "resnet50", "efficientnet_b0", "xception"]


def test_registry_covers_every_keras_application():
    constructors = {n for n in dir(keras.applications) if n[0].isupper()}
    registered = {kt.get_backbone_spec(name).constructor for name in ALL}
    assert len(ALL) == 40
    assert registered == constructors


def test_unknown_name_lists_closest_names():
    with pytest.raises(ValueError, match="resnet50") as info:
        kt.get_backbone_spec("resnet_50")
    assert "list_backbones" in str(info.value)


def test_names_are_forgiving_about_case_and_dashes():
    assert kt.get_backbone_spec("MobileNet-V2").name == "mobilenet_v2"


@pytest.mark.parametrize("name", ALL if BACKEND == "tensorflow" else SAMPLE)
def test_every_backbone_builds_at_its_minimum_size(name):
    spec = kt.get_backbone_spec(name)
    size = spec.min_size
    model = kt.build_image_classifier(
        name, 3, input_shape=(size, size, 3), weights=None, augmentation=None
    )
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    keras.backend.clear_session()


def test_below_minimum_size_is_refused():
    with pytest.raises(ValueError, match="at least 71"):
        kt.build_image_classifier("xception", 2, input_shape=(64, 64, 3), weights=None)


def test_grayscale_input_with_imagenet_weights_is_refused():
    with pytest.raises(ValueError, match="3 \\(RGB\\)"):
        kt.build_image_classifier("mobilenet", 2, input_shape=(64, 64, 1))


def test_default_image_size_comes_from_the_registry():
    assert kt.default_image_size("xception") == (299, 299)
    assert kt.default_image_size("efficientnet_b3") == (300, 300)


def test_weights_that_cannot_be_downloaded_name_the_cache_file(tmp_path, monkeypatch):
    """Offline: the error names the file Keras looks for in $KERAS_HOME/models."""
    from keras.src.utils import file_utils

    def offline(fname, origin, *args, **kwargs):  # keras.utils.get_file without a network
        raise Exception(f"URL fetch failure on {origin}: None -- Name or service not known")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(file_utils, "get_file", offline)
    wanted = tmp_path / "models" / "mobilenet_2_5_128_tf_no_top.h5"
    with pytest.raises(ValueError, match=f"copy the file to {wanted} "):
        kt.build_image_classifier(
            "mobilenet", 2, input_shape=(128, 128, 3), backbone_kwargs={"alpha": 0.25}
        )
