"""Request parameters have bounds, checked by one parser per request kind: each accepted at its bounds,
refused beyond them and for the wrong type, with a message naming the parameter, its range and the value."""

from __future__ import annotations

import inspect
from functools import partial

import numpy as np
import pytest

from lib.activelearning.scoring import MC_DROPOUT, scoring_params
from lib.configs.registry import SPECS
from lib.errors import InvalidRequest
from lib.infers.postprocessing import METHODS, OPTION_CHOICES, OPTION_RANGES, default_options, resolve
from lib.infers.segmentation import parse_infer_request
from lib.params import Range, boolean
from lib.volumes.blockwise import BLOCKS_PER_JOB, MAX_BLOCK_MVOX, SW_BATCH_SIZE, VolumeRequest

WRONG_TYPES = ["abc", "", [0.5], {"value": 1}, True, None, float("nan"), float("inf"), "nan", "1e400"]
AXON = SPECS["axon"]


def _edges(r: Range) -> tuple[list[float], list[float]]:
    """Values at the range's ends (accepted) and just past them (refused)."""
    step = 1 if r.integer else 1e-6
    at, beyond = [], []
    for end, open_, outward in ((r.low, r.low_open, -step), (r.high, r.high_open, step)):
        if open_:
            at.append(end - outward)
            beyond.append(end)
        else:
            at.append(end)
            beyond.append(end + outward)
    return at, beyond


def _refused(call, *words) -> str:
    with pytest.raises(InvalidRequest) as error:
        call()
    message = str(error.value)
    for word in words:
        assert str(word) in message, message
    return message


# --- post-processing options ---------------------------------------------------------------------
def _method_taking(name: str) -> str:
    return next(m for m, f in METHODS.items() if name in inspect.signature(f).parameters)


# hysteresis needs low < high: the other one is moved out of the way (at low 1 or high 0 none is left)
_COMPANION = {"low": {"high": 1.0}, "high": {"low": 0.0}}
_NO_ROOM = {"low": 1.0, "high": 0.0}


@pytest.mark.parametrize("name", list(OPTION_RANGES))
def test_postprocessing_option_bounds(name):
    r, method = OPTION_RANGES[name], _method_taking(name)
    at, beyond = _edges(r)
    for value in at:
        if _NO_ROOM.get(name) == value:  # in its range, but the other one cannot be on its right side
            _refused(partial(resolve, AXON, method, **_COMPANION[name], **{name: value}), "low < high")
            continue
        _, options = resolve(AXON, method, **_COMPANION.get(name, {}), **{name: value})
        assert options[name] == value and type(options[name]) is (int if r.integer else float)
    for value in beyond:
        _refused(partial(resolve, AXON, method, **{name: value}), name, r, value, f"'{method}' post-processing")
    for value in WRONG_TYPES + ([2.5, "2.5"] if r.integer else []):
        _refused(partial(resolve, AXON, method, **{name: value}), name, r)
    inside = at[0] + (1 if r.integer else 1e-3)
    text = {**_COMPANION.get(name, {}), name: str(inside)}  # Slicer sends options back as text
    assert resolve(AXON, method, **text)[1][name] == inside


def test_postprocessing_integers_take_whole_floats_and_huge_values_are_refused():
    assert resolve(AXON, "threshold", min_size=3.0)[1]["min_size"] == 3  # what the protocol's sweep sends
    assert resolve(AXON, "threshold", min_size=np.int64(7))[1]["min_size"] == 7
    message = _refused(partial(resolve, AXON, "threshold", min_size=10**30), "min_size", "[0, 10000000]")
    assert "1000000000" in message
    _refused(partial(resolve, AXON, "threshold", min_size=list(range(10**4))), "...")  # quoted cut short


@pytest.mark.parametrize("name", ["skeleton", "instances"])
def test_postprocessing_flags(name):
    method = _method_taking(name)
    for value, expected in ((True, True), (False, False), ("true", True), ("False", False), (1, True), ("0", False)):
        assert resolve(AXON, method, **{name: value})[1][name] is expected
    for value in ("maybe", 2, [True], None, 0.5):
        _refused(partial(resolve, AXON, method, **{name: value}), name, "true or false", "post-processing")


@pytest.mark.parametrize("name", list(OPTION_CHOICES))
def test_postprocessing_choices(name):
    method = _method_taking(name)
    for value in OPTION_CHOICES[name]:
        assert resolve(AXON, method, **{name: value})[1][name] == value
    for value in ("Sections", "", 3, None, ["3d"]):
        _refused(partial(resolve, AXON, method, **{name: value}), name, *OPTION_CHOICES[name])


def test_hysteresis_order_is_checked_before_any_work():
    _refused(partial(resolve, AXON, "hysteresis", low=0.99), "low < high", "0.99", "0.98")
    _refused(partial(resolve, AXON, "hysteresis", low=0.5, high=0.5), "low < high")


def test_every_option_has_bounds_and_every_spec_default_is_inside_them():
    for spec in SPECS.values():
        for method in METHODS:
            defaults = default_options(spec, method)
            bounded = (n in OPTION_RANGES or n in OPTION_CHOICES or isinstance(v, bool) for n, v in defaults.items())
            assert all(bounded), (method, defaults)
            assert resolve(spec, method, **defaults) == (method, defaults)


def test_unknown_or_malformed_method_and_options():
    _refused(partial(resolve, AXON, "magic"), "unknown post-processing", "threshold, hysteresis")
    _refused(partial(resolve, AXON, ["threshold"]), "unknown post-processing")  # was a TypeError: 500
    _refused(partial(resolve, AXON, "threshold", radius=1), "takes", "radius")


# --- infer and batch-infer requests --------------------------------------------------------------
def test_infer_request_tta():
    for value in (1, 8, 16, "8", 16.0):
        assert parse_infer_request(AXON, {"tta": value}).tta == int(value)
    for value in (0, 2, 4, 17, 32, -8, 8.5, "x", True, [8], None):
        _refused(partial(parse_infer_request, AXON, {"tta": value}), "tta", "1, 8, 16")


def test_infer_request_device():
    for value, expected in ((None, "auto"), ("", "auto"), ("auto", "auto"), ("cpu", "cpu"), ("cuda:1", "cuda:1")):
        assert parse_infer_request(AXON, {"device": value}).device == expected
    for value in ("banana", "cuda:", "cuda:x", "cpu ", 0, ["cpu"]):
        _refused(partial(parse_infer_request, AXON, {"device": value}), "device", "cuda:N")


def test_infer_request_options_and_other_keys():
    request = {"postprocessing": "bilateral", "radius": "16", "threshold": 0, "client_id": "me", "images": ["a"]}
    parsed = parse_infer_request(SPECS["membrane"], request)
    assert parsed.method == "bilateral" and parsed.options["radius"] == 16 and parsed.options["threshold"] == 0.0
    assert parse_infer_request(AXON, {}).options == default_options(AXON)
    _refused(partial(parse_infer_request, AXON, {"postprocessing": "bilateral", "radius": 17}), "radius", "[0, 16]", 17)


# --- whole-volume requests -----------------------------------------------------------------------
IMAGE = (101, 120, 120)


def _volume(**request):
    return VolumeRequest.parse(AXON, request, IMAGE)


def test_volume_roi_bounds():
    assert _volume(roi={"offset": [0, 0, 0], "shape": list(IMAGE)}).roi.shape == IMAGE  # the whole image
    assert _volume(roi={"offset": [100, 119, 119], "shape": [1, 1, 1]}).roi.offset == (100, 119, 119)
    assert _volume(roi={"offset": ["1", 2.0, 3], "shape": [4, 5, 6]}).roi.offset == (1, 2, 3)
    assert _volume().roi is None
    _refused(partial(_volume, roi={"offset": [-1, 0, 0], "shape": [1, 1, 1]}), "roi offset[0]", "[0, 100]", -1)
    _refused(partial(_volume, roi={"offset": [0, 120, 0], "shape": [1, 1, 1]}), "roi offset[1]", "[0, 119]", 120)
    _refused(partial(_volume, roi={"offset": [0.5, 0, 0], "shape": [1, 1, 1]}), "roi offset[0]", "integer", 0.5)
    _refused(partial(_volume, roi={"offset": [90, 0, 0], "shape": [12, 1, 1]}), "roi shape[0]", "[1, 11]", "[90, 0, 0]")
    _refused(partial(_volume, roi={"offset": [0, 0, 0], "shape": [1, 0, 1]}), "roi shape[1]", "[1, 120]", 0)
    for roi in ([1, 2], {"offset": [0, 0, 0]}, {"offset": [0, 0], "shape": [1, 1, 1]}, "all", {"offset": [0, 0, 0],
                "shape": [1, 1, 1], "step": 2}):  # fmt: skip
        _refused(partial(_volume, roi=roi), "roi")
    for value in ("a", None, [1], True):
        _refused(partial(_volume, roi={"offset": [value, 0, 0], "shape": [1, 1, 1]}), "roi offset[0]")


def test_volume_block_shape_bounds():
    assert _volume(block_shape=[32, 64, 64]).block == (32, 64, 64)
    assert _volume(block_shape=[65536, 1, 1]).block == (65536, 1, 1)  # clipped to the image by the plan
    big = (512, 512, 512)  # 134 Mvox: a block of the whole is one too many
    largest = int(MAX_BLOCK_MVOX * 1e6 // (512 * 512))
    assert VolumeRequest.parse(AXON, {"block_shape": [largest, 512, 512]}, big).block == (largest, 512, 512)
    _refused(
        partial(VolumeRequest.parse, AXON, {"block_shape": [largest + 1, 512, 512]}, big), "block_shape", "128 Mvox"
    )
    for value in ([0, 1, 1], [65537, 1, 1], [1.5, 1, 1], [0, 1], "32,64,64", ["a", 1, 1]):
        _refused(partial(_volume, block_shape=value), "block_shape")


@pytest.mark.parametrize(("name", "r"), [("sw_batch_size", SW_BATCH_SIZE), ("blocks_per_job", BLOCKS_PER_JOB)])
def test_volume_integer_options(name, r):
    at, beyond = _edges(r)
    for value in at:
        assert getattr(_volume(**{name: value}), name) == value
    for value in beyond + [2.5] + [v for v in WRONG_TYPES if v is not None]:
        _refused(partial(_volume, **{name: value}), name, r)
    assert _volume(**{name: None}) == _volume()  # null: the default


def test_volume_flags_tta_device_and_postprocessing():
    assert _volume(amp="false").amp is False and _volume().amp is True
    _refused(partial(_volume, amp="yes"), "amp", "true or false")
    assert _volume(tta="1").post == _volume().post
    _refused(partial(_volume, tta=8), "test-time", "tta 1")
    _refused(partial(_volume, tta=3), "tta", "1, 8, 16")
    _refused(partial(_volume, device="gpu"), "device")
    _refused(partial(_volume, skeleton=True), "skeleton")
    _refused(partial(_volume, min_size=-1), "min_size", "[0, 10000000]", -1)
    _refused(partial(_volume, thresold=0.5), "takes", "thresold")  # a typo is not silently ignored
    assert _volume(client_id="me", threshold="0.3").post.options["threshold"] == 0.3


# --- scoring requests ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MC_DROPOUT))
@pytest.mark.parametrize("method", ["epistemic", "entropy"])
def test_mc_dropout_bounds(method, name):
    default, r = MC_DROPOUT[name]
    assert scoring_params(method, {})[name] == default
    at, beyond = _edges(r)
    for value in at:
        assert scoring_params(method, {name: value})[name] == value
    for value in beyond + [10**6] + [v for v in WRONG_TYPES if v is not None]:
        _refused(partial(scoring_params, method, {name: value}), name, r, f"'{method}' scoring")


def test_scoring_methods_without_parameters_take_none():
    assert scoring_params("tta", {"samples": 10**6}) == {} and scoring_params("dice", None) == {}


# --- the parser itself ---------------------------------------------------------------------------
def test_range_text_and_parsing():
    assert str(Range(0.0, 1.0, high_open=True)) == "[0, 1)" and str(Range(0, 4.0, low_open=True)) == "(0, 4]"
    assert Range(0, 1).check("x", np.float32(0.25)) == 0.25 and Range(0, 10, integer=True).check("x", " 3 ") == 3
    assert Range(0, 10, integer=True).check("x", "1e1") == 10
    assert boolean("b", "TRUE") is True and boolean("b", 0) is False
    _refused(partial(Range(0, 1).check, "x", "0.5" * 100), "x must be a number in [0, 1], not '0.50.5", "...")
