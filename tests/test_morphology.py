"""The morphology backbone: classical measurements of a cutout's light, in the Keras graph.

Drawn galaxies with a known shape check that each measurement means what its name says;
real Galaxy10 cutouts check the invariance under the 8 orientations and that LiteRT
computes the same numbers as Keras.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SIZE = 96


def drawn(axis_ratio=1.0, angle=0.0, companion=None, colour=(1.0, 1.0, 1.0), sigma=8.0, sky=10.0):
    """A Gaussian galaxy at the centre on a flat sky; ``companion`` = (dx, dy, flux) adds a second one."""
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5 - SIZE / 2
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    light = 200 * np.exp(-0.5 * ((u / sigma) ** 2 + (v / (sigma * axis_ratio)) ** 2))
    if companion is not None:
        dx, dy, flux = companion
        light += flux * 200 * np.exp(-0.5 * (((xx - dx) / 4) ** 2 + ((yy - dy) / 4) ** 2))
    image = sky + light[..., None] * np.asarray(colour, np.float32)
    return np.clip(image, 0, 255).astype(np.float32)


@pytest.fixture(scope="module")
def measure():
    from galaxylib.modeling.morphology import MEASUREMENTS, build_morphology

    model = build_morphology(SIZE)

    def run(*images) -> list[dict[str, float]]:
        out = np.asarray(model(np.stack(images)))
        return [dict(zip(MEASUREMENTS, row)) for row in out]

    return run


def test_the_axis_ratio_of_an_elongated_galaxy_is_its_shape_at_any_angle(measure):
    round_, flat, tilted = measure(drawn(1.0), drawn(0.3), drawn(0.3, angle=0.7))
    assert round_["axis_ratio_t0.1"] == pytest.approx(1.0, abs=0.02)
    assert flat["axis_ratio_t0.1"] == pytest.approx(0.3, abs=0.03)
    assert tilted["axis_ratio_t0.1"] == pytest.approx(flat["axis_ratio_t0.1"], abs=0.02)


def test_a_symmetric_galaxy_has_no_asymmetry_and_a_companion_adds_it(measure):
    alone, merging = measure(drawn(), drawn(companion=(18, 6, 0.8)))
    assert alone["asymmetry180_r0.6"] < 0.01
    assert merging["asymmetry180_r0.6"] > 0.3
    # the brightest point 12-24 px out, against the centre's: the profile (0.33) or a companion's peak
    assert alone["ring_max_r0.25-0.5"] == pytest.approx(np.exp(-0.5 * 1.5**2), abs=0.05)
    assert merging["ring_max_r0.25-0.5"] > 0.6
    assert merging["centroid_offset_t0"] > alone["centroid_offset_t0"]


def test_sky_is_subtracted_and_colour_is_read_per_channel(measure):
    faint_sky, bright_sky, blue = measure(drawn(sky=5), drawn(sky=60), drawn(colour=(0.5, 0.8, 1.0)))
    assert bright_sky["flux_fraction_r0-0.05"] == pytest.approx(faint_sky["flux_fraction_r0-0.05"], rel=0.05)
    assert blue["colour_blue"] > 0.2 > -0.2 > blue["colour_red"]
    assert abs(faint_sky["colour_blue"]) < 0.01


def test_a_concentrated_galaxy_puts_more_light_in_the_centre(measure):
    compact, extended = measure(drawn(sigma=4), drawn(sigma=12))
    inner = lambda m: m["flux_fraction_r0-0.05"] + m["flux_fraction_r0.05-0.1"]  # noqa: E731
    assert inner(compact) > 2 * inner(extended)


def real_cutouts(sample_files, size: int) -> np.ndarray:
    from galaxylib.preprocessing import load_image

    return np.stack([load_image(f, size) for f in sample_files[:8]])


def test_the_measurements_are_the_same_in_all_8_orientations_of_real_cutouts(sample_files):
    from galaxylib.modeling.morphology import build_morphology
    from galaxylib.modeling.orientation import VIEWS, orient

    images = real_cutouts(sample_files, 128)
    model = build_morphology(128)
    base = np.asarray(model(images))
    assert np.isfinite(base).all() and base.std(axis=0).max() > 0
    for view in VIEWS[1:]:
        np.testing.assert_allclose(np.asarray(model(orient(images, view))), base, rtol=1e-4, atol=1e-4)


def test_litert_computes_the_same_measurements_as_keras(sample_files, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from galaxylib.modeling.export import export_tflite
    from galaxylib.modeling.morphology import build_morphology

    images = real_cutouts(sample_files, 128)
    model = build_morphology(128)
    interpreter = Interpreter(model_path=str(export_tflite(model, Path(tmp_path) / "m.tflite", features=False)))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    litert = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(litert, np.asarray(model(images)), rtol=1e-3, atol=1e-4)
