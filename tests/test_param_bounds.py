"""Request parameters have bounds, checked by one parser per request kind: each accepted at its bounds,
refused beyond them and for the wrong type, with a message naming the parameter, its range and the value."""

from __future__ import annotations

import contextlib
import inspect
import json
from datetime import datetime, timezone
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest

from lib.activelearning.scores import Scores
from lib.activelearning.scoring import MC_DROPOUT, scoring_params
from lib.configs.registry import SPECS
from lib.errors import InvalidRequest
from lib.infers.postprocessing import METHODS, OPTION_CHOICES, OPTION_RANGES, default_options, resolve
from lib.infers.request import parse_infer_request
from lib.infers.segmentation import ModelWeights, SegmentationInfer
from lib.jobs.training import TrainingRuns
from lib.params import MAX_LIST_ITEMS, Range, boolean, string_list, text
from lib.trainers.pretrain_task import PRETRAIN_TRAINER, PretrainTrainer
from lib.trainers.task import SegmentationTrainer
from lib.volumes.blocks.plan import BLOCKS_PER_JOB, MAX_BLOCK_MVOX, SW_BATCH_SIZE, VolumeRequest

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


def _slicer_infer_request(spec, **changes) -> dict:
    """What 3D Slicer sends with /infer: the model's config from /info/ (a list as its first item), the
    reply's form and its client id (MONAILabel.py: getParamsFromConfig, MONAILabelLogic.infer)."""
    config = SegmentationInfer(spec, ModelWeights("", "")).info()["config"]
    request = {k: v[0] if isinstance(v, list) else v for k, v in config.items()}
    return {**request, "result_extension": ".nrrd", "result_dtype": "uint8", "client_id": "slicer", **changes}


@pytest.mark.parametrize("name", list(SPECS))
def test_infer_request_takes_what_slicer_ohif_and_the_api_send(name):
    spec = SPECS[name]
    assert parse_infer_request(spec, _slicer_infer_request(spec)).method == spec.postprocessing
    ohif = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False, "restore_label_idx": False}
    assert parse_infer_request(spec, {**ohif, "label_values": "classes", "client_id": "ohif"}).result_compress is False
    queued = {"client_id": "me", "max_voxels_in_memory": 10**9, "model": name, "image": "/tmp/x.nrrd", "label": None}
    parse_infer_request(spec, queued)  # the worker's request (lib.jobs.tasks.infer)
    parse_infer_request(spec, {"images": ["a"], "label_info": [{"name": "axon", "idx": 1}]})
    for method in METHODS:  # another method than the advertised one: Slicer still sends the advertised options
        request = _slicer_infer_request(spec, postprocessing=method, **default_options(spec, method))
        assert parse_infer_request(spec, request).method == method


def test_infer_request_refuses_unknown_keys_by_name():
    message = _refused(partial(parse_infer_request, AXON, {"roi": {"offset": [0, 0, 0]}}), "unknown infer option")
    assert "'roi'" in message and "options of 'axon' with 'threshold' post-processing are: tta" in message
    for key, value in (("sw_batch_size", 1e9), ("overlap", -1), ("thresold", 0.5), ("largest_cc", True)):
        _refused(partial(parse_infer_request, AXON, {key: value}), "unknown infer option", f"'{key}'")
    message = _refused(partial(parse_infer_request, AXON, {f"k{i}": i for i in range(25)}), "'k0'", "'k9'")
    assert "'k10'" not in message and "and 15 more" in message
    # an option of another method than the requested one is no option of the request
    _refused(partial(parse_infer_request, AXON, {"postprocessing": "threshold", "radius": 4}), "'radius'")
    # the advertised options a request echoes beside another method keep their bounds
    mito = SPECS["mitochondria"]
    _refused(partial(parse_infer_request, mito, _slicer_infer_request(mito, postprocessing="threshold",
                                                                         min_distance=-1)), "min_distance")  # fmt: skip
    _refused(partial(parse_infer_request, AXON, {"threshold": float("nan")}), "threshold", "[0, 1]")


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


def test_scoring_requests_refuse_unknown_keys_and_images_that_are_no_list():
    scores = Scores(None, None, lambda: None, ["axon"])  # every check comes before the queue or datastore
    both = {"samples": 4, "roi": 1}
    _refused(partial(scores.submit, "axon", "epistemic", None, both), "'roi'", "scoring takes samples, rate")
    _refused(partial(scores.submit, "axon", "tta", None, {"samples": 4}), "unknown scoring option", "'samples'", "none")
    _refused(partial(scores.submit, "axon", "epistemic", None, {"samples": float("nan")}), "samples", "[1, 64]")
    _refused(partial(scores.submit, "axon", "epistemic", "abc", {"client_id": "me"}), "images must be a list")
    _refused(partial(scores.submit, "axon", "dice", ["a", 3]), "images[1] must be text")


# --- trainer options -----------------------------------------------------------------------------
TRAINERS = {
    "axon": SegmentationTrainer(AXON, ModelWeights("", ""), "/nonexistent/axon.json"),
    "membrane": SegmentationTrainer(SPECS["membrane"], ModelWeights("", ""), "/nonexistent/membrane.json"),
    PRETRAIN_TRAINER: PretrainTrainer(SPECS, "/nonexistent/encoders", "/nonexistent/ssl.json", []),
}
RANGED = [
    (trainer, name, parse.__self__)
    for trainer, t in TRAINERS.items()
    for name, (_, parse) in t.options().items()
    if isinstance(getattr(parse, "__self__", None), Range)
]


@pytest.mark.parametrize(("trainer", "name", "r"), RANGED, ids=[f"{t}-{n}" for t, n, _ in RANGED])
def test_trainer_option_bounds(trainer, name, r):
    resolve_ = TRAINERS[trainer].resolve
    at, beyond = _edges(r)
    for value in at:
        params = resolve_({name: value})
        assert params[name] == value and type(params[name]) is (int if r.integer else float)
    assert resolve_({name: str(at[0])})[name] == at[0]  # as Slicer's option table sends it: text
    for value in beyond + [-1, 1e12, 10**30] + ([2.5] if r.integer else []) + WRONG_TYPES:
        _refused(partial(resolve_, {name: value}), name, r, f"for '{trainer}' training")


def test_the_issues_training_values_are_refused():
    refused = [("learning_rate", float("nan")), ("learning_rate", float("inf")), ("learning_rate", 0),
               ("max_epochs", 1e9), ("max_epochs", -1), ("max_epochs", 0), ("batch_size", 1e9), ("iterations", 1e9),
               ("iterations", -1), ("replay_share", 1), ("freeze_encoder_epochs", -1)]  # fmt: skip
    for name, value in refused:
        _refused(partial(TRAINERS["axon"].resolve, {name: value}), name, "'axon' training", repr(value)[:3])
    # json.loads takes NaN: a request body of {"learning_rate": NaN} arrives as a float nan
    _refused(partial(TRAINERS["axon"].resolve, json.loads('{"learning_rate": NaN}')), "learning_rate", "(0, 10]")


def test_fine_tuning_options_that_are_no_plain_number():
    resolve_ = TRAINERS["axon"].resolve
    for value, expected in (("auto", "auto"), (" AUTO ", "auto"), (20, 20), ("20", 20), (1_000_000, 1_000_000)):
        assert resolve_({"iterations": value})["iterations"] == expected
    for value in (0, 1_000_001, 2.5, "many", float("nan"), None, [20]):
        _refused(partial(resolve_, {"iterations": value}), "iterations", "[1, 1000000] or auto")
    assert resolve_({"publish": "always"})["publish"] == "always" and resolve_({})["publish"] == "gate"
    _refused(partial(resolve_, {"publish": "sometimes"}), "publish", "gate, always")
    _refused(partial(resolve_, {"publish": ["always"]}), "publish")
    assert resolve_({"device": "cuda:1"})["device"] == "cuda:1"
    _refused(partial(resolve_, {"device": "gpu"}), "device", "cuda:N")
    assert resolve_({"pretrained_encoder": None})["pretrained_encoder"] == ""
    _refused(partial(resolve_, {"pretrained_encoder": "3"}), "needs the database")  # an id: looked up
    _refused(partial(resolve_, {"pretrained_encoder": 3}), "needs the database")
    for value in (0, -1, 2.5, True, [3], "9" * 5000, 2**31):
        _refused(partial(resolve_, {"pretrained_encoder": value}), "pretrained_encoder")


def test_pretraining_options_that_are_no_plain_number():
    resolve_ = TRAINERS[PRETRAIN_TRAINER].resolve
    assert resolve_({"structure": "membrane", "task": "edges"})["task"] == "edges"
    _refused(partial(resolve_, {"structure": "neuron"}), "structure", "axon", "'neuron'")
    _refused(partial(resolve_, {"task": "jigsaw"}), "task", "slice_permutation", "'jigsaw'")
    assert resolve_({"volumes": " , "})["volumes"] == [] and resolve_({"volumes": []})["volumes"] == []
    _refused(partial(resolve_, {"volumes": 5}), "volumes must be a list of paths or comma-separated text")
    _refused(partial(resolve_, {"volumes": ["a.h5", None]}), "volumes[1] must be text")
    _refused(partial(resolve_, {"volumes": "/etc/passwd"}), "outside the folders")
    _refused(partial(resolve_, {"dataset": 3}), "dataset must be text")


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_trainer_defaults_are_inside_their_bounds_and_slicer_sends_them_back(trainer):
    t = TRAINERS[trainer]
    assert list(t.config()) == list(t.options())
    defaults = t.resolve({})
    slicer = {k: v[0] if isinstance(v, list) else v for k, v in t.config().items()}  # getParamsFromConfig
    assert t.resolve({**slicer, "client_id": "slicer"}) == {**defaults, "client_id": "slicer"}
    assert t.resolve(defaults) == defaults  # the worker resolves what the API resolved again


def test_unknown_training_keys_are_named_and_request_keys_pass():
    words = "unknown training option(s) 'foo', 'bar'; options of 'axon' are: iterations, max_epochs"
    message = _refused(partial(TRAINERS["axon"].resolve, {"foo": 1, "max_epochs": 2, "bar": 2}), words)
    assert "freeze_encoder_epochs" in message
    _refused(partial(TRAINERS[PRETRAIN_TRAINER].resolve, {"publish": "always"}), "'publish'", "of 'ssl_pretrain'")
    passed = {"client_id": "me", "model": "axon", "trigger": "3 new final labels"}
    assert TRAINERS["axon"].resolve(passed).items() >= passed.items()


class _Queue:
    """Just enough of JobClient for TrainingRuns.submit."""

    def __init__(self):
        self.connection = SimpleNamespace(lock=lambda *a, **k: contextlib.nullcontext())
        self.submitted: list[dict] = []

    def require_workers(self, queue: str) -> None:
        pass

    def submit(self, kind: str, **kwargs):
        self.submitted.append(kwargs)
        return SimpleNamespace(id=f"job{len(self.submitted)}")


class _Runs:
    """Just enough of Database for TrainingRuns.submit."""

    def __init__(self):
        self.rows: dict[str, SimpleNamespace] = {}

    def training_runs(self, **kwargs):
        return []

    def add_training_run(self, job_id: str, model: str, params: dict) -> None:
        self.rows[job_id] = SimpleNamespace(job_id=job_id, model=model, params=params)

    def training_run(self, job_id: str):
        return self.rows[job_id]


def test_train_all_takes_options_for_every_model_and_per_model():
    runs = TrainingRuns(_Runs(), _Queue(), TRAINERS)
    models = ["axon", "membrane"]
    queued = runs.submit_all(models, {"max_epochs": 2, "client_id": "ohif", "membrane": {"publish": "always"}})
    assert [r.params for r in queued] == [
        {"max_epochs": 2, "client_id": "ohif"},
        {"max_epochs": 2, "client_id": "ohif", "publish": "always"},
    ]
    for params, words in (
        ({"axon": {"max_epochs": -1}}, ("max_epochs", "'axon' training")),
        ({"membrane": {"foo": 1}}, ("'foo'", "options of 'membrane'")),
        ({"nope": {"max_epochs": 2}}, ("unknown training option", "'nope'")),
        ({"ssl_pretrain": {"task": "edges"}}, ("POST /train/ trains axon, membrane", "'ssl_pretrain'")),
        ({"learning_rate": float("nan")}, ("learning_rate",)),
    ):
        _refused(partial(runs.submit_all, models, params), *words)
    assert len(runs.jobs.submitted) == 2  # nothing more was queued


def test_a_run_stored_with_nan_is_still_a_json_reply():
    from lib.api.train import train_task as _train_task
    from lib.db.models import TrainingRun

    nan, inf = float("nan"), float("inf")
    run = TrainingRun(
        job_id="job1", model="axon", status="DONE", params={"learning_rate": nan, "n": {"x": [inf, 1.5]}},
        epochs=[{"epoch": 1, "total_epochs": 2, "loss": nan, "validation": {"f1": -inf}}, {"epoch": 2, "loss": None}],
        gate={"baseline": nan}, started_at=datetime.now(timezone.utc),
    )  # fmt: skip
    reply = json.loads(json.dumps(_train_task(run), allow_nan=False))
    assert reply["request"] == {"model": "axon", "learning_rate": None, "n": {"x": [None, 1.5]}}
    assert reply["epochs"][0]["loss"] is None and reply["epochs"][0]["validation"] == {"f1": None}
    assert reply["gate"] == {"baseline": None} and len(reply["details"]) == 2


# --- the parser itself ---------------------------------------------------------------------------
def test_range_text_and_parsing():
    assert str(Range(0.0, 1.0, high_open=True)) == "[0, 1)" and str(Range(0, 4.0, low_open=True)) == "(0, 4]"
    assert Range(0, 1).check("x", np.float32(0.25)) == 0.25 and Range(0, 10, integer=True).check("x", " 3 ") == 3
    assert Range(0, 10, integer=True).check("x", "1e1") == 10
    assert boolean("b", "TRUE") is True and boolean("b", 0) is False
    _refused(partial(Range(0, 1).check, "x", "0.5" * 100), "x must be a number in [0, 1], not '0.50.5", "...")


def test_lists_and_text():
    assert string_list("images", ["a", "b"]) == ["a", "b"] and string_list("images", ()) == []
    _refused(partial(string_list, "images", "abc"), "images must be a list of at most 100000 strings", "'abc'")
    for value in ({"a": 1}, None, 3, ["a"] * (MAX_LIST_ITEMS + 1)):
        _refused(partial(string_list, "images", value), "images must be a list")
    _refused(partial(string_list, "images", ["a", ["b"]], " to score"), "images[1] must be text", "to score")
    assert text("t", "x" * 4096) == "x" * 4096
    _refused(partial(text, "t", "x" * 4097), "t must be text of at most 4096 characters")
