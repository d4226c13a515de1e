"""Configs: validation rules, published defaults, the cache budget, and reading TOML/YAML files."""

from __future__ import annotations

import math

import pytest

from core.config import (
    CacheBudget,
    CachePolicy,
    EngineConfig,
    EvictionMode,
    GenerationConfig,
    StreamConfig,
    config_from_mapping,
    load_config_file,
)
from core.errors import ConfigError

# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (StreamConfig, {"fps": 0.0}, "fps"),
        (StreamConfig, {"fps": -2.0}, "fps"),
        (StreamConfig, {"fps": math.nan}, "fps"),
        (StreamConfig, {"chunk_seconds": 0.0}, "chunk_seconds"),
        (StreamConfig, {"chunk_seconds": -1.0}, "chunk_seconds"),
        (StreamConfig, {"fps": 3.0, "chunk_seconds": 0.5}, "fps x chunk_seconds"),  # 1.5 frames
        (StreamConfig, {"fps": 0.5, "chunk_seconds": 1.0}, "fps x chunk_seconds"),  # half a frame
        (StreamConfig, {"min_pixels": 28 * 28 - 1}, "min_pixels"),
        (StreamConfig, {"max_pixels": 100 * 28 * 28 - 1}, "max_pixels"),
        (CachePolicy, {"sink_tokens": -1}, "sink_tokens"),
        (CachePolicy, {"text_window_tokens": -1}, "text_window_tokens"),
        (CachePolicy, {"vision_window_chunks": 0}, "vision_window_chunks"),
        (CachePolicy, {"text_window_replies": 0}, "text_window_replies"),
        (CachePolicy, {"mode": "sometimes"}, "mode"),
        (GenerationConfig, {"max_new_tokens": 0}, "max_new_tokens"),
        (GenerationConfig, {"min_new_tokens": -1}, "min_new_tokens"),
        (GenerationConfig, {"min_new_tokens": 21}, "min_new_tokens"),  # more than max_new_tokens=20
        (GenerationConfig, {"temperature": -0.1}, "temperature"),
        (GenerationConfig, {"temperature": math.nan}, "temperature"),
        (GenerationConfig, {"top_p": 0.0}, "top_p"),
        (GenerationConfig, {"top_p": 1.5}, "top_p"),
        (GenerationConfig, {"top_p": math.nan}, "top_p"),
        (GenerationConfig, {"top_k": -1}, "top_k"),
        (GenerationConfig, {"repetition_penalty": 0.0}, "repetition_penalty"),
        (GenerationConfig, {"repetition_penalty": math.nan}, "repetition_penalty"),
        (GenerationConfig, {"repetition_window_replies": -1}, "repetition_window_replies"),
    ],
)
def test_each_rule_names_its_field(cls, kwargs, field):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert field in message
    assert message.count("must") == 1, f"one bad value should give one complaint: {message}"


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (StreamConfig, {"fps": 1000.0}, "fps"),  # tokens a second explode: the run allocates until it dies
        (StreamConfig, {"fps": math.inf}, "fps"),  # was an OverflowError traceback
        (StreamConfig, {"chunk_seconds": math.inf}, "chunk_seconds"),
        (StreamConfig, {"chunk_seconds": 3600.0}, "chunk_seconds"),
        (StreamConfig, {"max_pixels": 10**12}, "max_pixels"),
        (StreamConfig, {"min_pixels": 10**12, "max_pixels": 10**12}, "pixels"),
        (CachePolicy, {"sink_tokens": 10**9}, "sink_tokens"),
        (CachePolicy, {"vision_window_chunks": 10**9}, "vision_window_chunks"),
        (GenerationConfig, {"max_new_tokens": 10**9}, "max_new_tokens"),
        (GenerationConfig, {"temperature": 1e300}, "temperature"),
        (GenerationConfig, {"top_k": 10**30}, "top_k"),
        (GenerationConfig, {"repetition_penalty": math.inf}, "repetition_penalty"),
        (GenerationConfig, {"seed": 2**64}, "seed"),  # torch.Generator.manual_seed refuses it mid-run
        (GenerationConfig, {"seed": -1}, "seed"),
        (GenerationConfig, {"seed": 10**5000}, "seed"),  # too long for Python to print: the line stays short
    ],
)
def test_upper_bounds_and_infinities_are_refused_with_the_allowed_range(cls, kwargs, field):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert field in message and "must be a" in message and len(message) < 200, message


def test_ranges_accept_their_upper_edges():
    assert StreamConfig(fps=30.0).fps == 30.0
    assert StreamConfig(min_pixels=16384 * 28 * 28, max_pixels=16384 * 28 * 28).max_pixels == 12845056
    assert GenerationConfig(seed=2**64 - 1, top_k=10**6, temperature=10.0).seed == 2**64 - 1


@pytest.mark.parametrize(
    "cls, kwargs, fields",
    [
        (StreamConfig, {"fps": 0.0, "min_pixels": 1}, ["fps", "min_pixels"]),
        (StreamConfig, {"fps": 3.0, "chunk_seconds": 0.5, "max_pixels": 1000}, ["fps x chunk", "max_pixels"]),
        (
            CachePolicy,
            {
                "sink_tokens": -1,
                "text_window_tokens": -1,
                "vision_window_chunks": 0,
                "text_window_replies": 0,
            },
            ["sink_tokens", "text_window_tokens", "vision_window_chunks", "text_window_replies"],
        ),
        (
            GenerationConfig,
            {
                "max_new_tokens": 0,
                "temperature": -1.0,
                "top_p": 2.0,
                "top_k": -1,
                "repetition_penalty": 0.0,
                "repetition_window_replies": -1,
            },
            [
                "max_new_tokens",
                "temperature",
                "top_p",
                "top_k",
                "repetition_penalty",
                "repetition_window_replies",
            ],
        ),
    ],
)
def test_all_problems_are_listed_in_one_message(cls, kwargs, fields):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    for field in fields:
        assert field in message
    assert message.count("must") == len(fields)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (StreamConfig, {"fps": 4.0, "chunk_seconds": 0.5}),
        (StreamConfig, {"fps": 1.0, "chunk_seconds": 1.0}),
        (StreamConfig, {"fps": 10.0, "chunk_seconds": 0.1}),  # 0.1 * 10 is not exactly 1 in floats
        (StreamConfig, {"min_pixels": 28 * 28, "max_pixels": 28 * 28}),
        (
            CachePolicy,
            {"sink_tokens": 0, "text_window_tokens": 0, "vision_window_chunks": 1, "text_window_replies": 1},
        ),
        (GenerationConfig, {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_new_tokens": 20}),
        (GenerationConfig, {"max_new_tokens": 1, "repetition_window_replies": 0}),
    ],
)
def test_boundary_values_are_accepted(cls, kwargs):
    config = cls(**kwargs)
    for name, value in kwargs.items():
        assert getattr(config, name) == value


# -- defaults --------------------------------------------------------------------------------------


def test_defaults_are_the_published_values():
    stream, cache, generation = StreamConfig(), CachePolicy(), GenerationConfig()
    assert (stream.fps, stream.chunk_seconds, stream.frames_per_chunk) == (2.0, 1.0, 2)
    assert (stream.min_pixels, stream.max_pixels) == (100 * 28 * 28, 768 * 28 * 28)
    assert cache.mode is EvictionMode.STREAMING
    assert (cache.sink_tokens, cache.text_window_tokens) == (512, 512)
    assert (cache.vision_window_chunks, cache.text_window_replies) == (16, 16)
    assert (generation.max_new_tokens, generation.repetition_penalty) == (20, 1.05)
    assert EngineConfig() == EngineConfig(stream, cache, generation)


@pytest.mark.parametrize("text, mode", [(m.value, m) for m in EvictionMode])
def test_cache_mode_string_is_coerced_to_the_enum(text, mode):
    policy = CachePolicy(mode=text)
    assert policy.mode is mode
    assert policy.evicts == (mode is not EvictionMode.NONE)


# -- budget ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [EvictionMode.STREAMING, EvictionMode.RECOMPUTE])
def test_budget_adds_the_fixed_prefix_and_every_window(mode):
    policy = CachePolicy(
        mode=mode, sink_tokens=2, text_window_tokens=3, vision_window_chunks=4, text_window_replies=5
    )
    budget = policy.budget(
        fixed_tokens=7, vision_tokens_per_chunk=11, text_tokens_per_round=13, bytes_per_token=17
    )
    tokens = 7 + 2 + 3 + 4 * 11 + 5 * 13
    assert budget == CacheBudget(tokens=tokens, bytes=tokens * 17)


def test_budget_of_the_published_policy_on_7b_shapes():
    # 720 vision tokens per 720p chunk, 57344 bytes of bf16 K/V per token on the 7B.
    budget = CachePolicy().budget(
        fixed_tokens=20, vision_tokens_per_chunk=720, text_tokens_per_round=30, bytes_per_token=57344
    )
    assert budget.tokens == 20 + 512 + 512 + 16 * 720 + 16 * 30 == 13044
    assert str(budget) == "13,044 tokens, 0.70 GiB of K/V"


def test_budget_refuses_a_cache_that_never_evicts():
    with pytest.raises(ConfigError, match="never evicts"):
        CachePolicy(mode="none").budget(
            fixed_tokens=1, vision_tokens_per_chunk=1, text_tokens_per_round=1, bytes_per_token=1
        )


# -- files -----------------------------------------------------------------------------------------

TOML_ALL = """
[stream]
fps = 4
chunk_seconds = 0.5
max_pixels = 200704

[cache]
mode = "recompute"
sink_tokens = 64
vision_window_chunks = 8

[generation]
temperature = 0
max_new_tokens = 32
suppress = ["<|endoftext|>", "..."]
seed = 7
"""

YAML_ALL = """
stream:
  fps: 4
  chunk_seconds: 0.5
  max_pixels: 200704
cache:
  mode: recompute
  sink_tokens: 64
  vision_window_chunks: 8
generation:
  temperature: 0
  max_new_tokens: 32
  suppress: ["<|endoftext|>", "..."]
  seed: 7
"""

EXPECTED_ALL = EngineConfig(
    stream=StreamConfig(fps=4.0, chunk_seconds=0.5, max_pixels=200704),
    cache=CachePolicy(mode=EvictionMode.RECOMPUTE, sink_tokens=64, vision_window_chunks=8),
    generation=GenerationConfig(
        temperature=0.0, max_new_tokens=32, suppress=("<|endoftext|>", "..."), seed=7
    ),
)


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text", [("c.toml", TOML_ALL), ("c.yaml", YAML_ALL), ("c.yml", YAML_ALL)])
def test_file_with_all_three_sections(tmp_path, name, text):
    config = load_config_file(write(tmp_path, name, text))
    assert config == EXPECTED_ALL
    assert type(config.stream.fps) is float and type(config.generation.temperature) is float


@pytest.mark.parametrize(
    "name, text",
    [
        ("empty.toml", ""),
        ("empty.yaml", ""),
        ("partial.toml", "[cache]\n"),
        ("nulls.yaml", "stream:\ncache:\n"),
    ],
)
def test_empty_file_or_sections_give_defaults(tmp_path, name, text):
    assert load_config_file(write(tmp_path, name, text)) == EngineConfig()


def test_yaml_null_seed_means_no_seed(tmp_path):
    config = load_config_file(write(tmp_path, "c.yaml", "generation:\n  seed: null\n"))
    assert config.generation.seed is None


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("c.toml", "[streem]\nfps = 2\n", ["unknown section", "streem"]),
        ("c.yaml", "generation: {}\nsampling: {}\n", ["unknown section", "sampling"]),
        ("c.toml", "[stream]\nfsp = 2\n", ["unknown stream setting", "fsp", "fps"]),
        ("c.yaml", "cache:\n  sink: 4\n", ["unknown cache setting", "sink", "sink_tokens"]),
        (
            "c.toml",
            '[generation]\nmax_new_tokens = "20"\n',
            ["generation.max_new_tokens", "wrong type", "'20'"],
        ),
        (
            "c.toml",
            "[generation]\nmax_new_tokens = true\n",
            ["generation.max_new_tokens", "wrong type", "True"],
        ),
        ("c.yaml", "cache:\n  sink_tokens: yes\n", ["cache.sink_tokens", "wrong type"]),
        ("c.toml", "[generation]\ntop_k = 2.5\n", ["generation.top_k", "wrong type"]),
        ("c.toml", '[generation]\ntemperature = "hot"\n', ["generation.temperature", "wrong type"]),
        ("c.toml", "[generation]\ntemperature = false\n", ["generation.temperature", "wrong type"]),
        ("c.toml", '[generation]\nseed = "7"\n', ["generation.seed", "wrong type"]),
        (
            "c.toml",
            "[generation]\nsuppress = [1, 2]\n",
            ["generation.suppress[0]", "must be str (got int: 1)"],
        ),
        ("c.toml", '[generation]\nsuppress = "..."\n', ["generation.suppress", "must be a list (got str"]),
        (
            "c.toml",
            '[cache]\nmode = "sometimes"\n',
            ["cache.mode", "streaming, none, recompute", "sometimes"],
        ),
        ("c.toml", "[stream]\nfps = -1\n", ["invalid stream config", "fps must be a number > 0 and <= 30"]),
        ("c.toml", "[stream\nfps = \n", ["not valid TOML"]),
        ("c.yaml", "stream: [1, 2\n", ["not valid YAML"]),
        ("c.yaml", "- stream\n- cache\n", ["must hold a mapping"]),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path, name, text, expected):
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    for fragment in expected:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    "name, text",
    [("c.toml", "stream = 3\n"), ("c.yaml", "stream: [1, 2]\n"), ("c.yaml", "stream:\n  1: 2\n  foo: 3\n")],
)
def test_section_that_is_not_a_mapping_is_a_config_error(tmp_path, name, text):
    with pytest.raises(ConfigError, match="stream"):
        load_config_file(write(tmp_path, name, text))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(path) in str(info.value) and "not found" in str(info.value)


@pytest.mark.parametrize(
    "cls, values, name, expected, kind",
    [
        (StreamConfig, {"fps": 4}, "fps", 4.0, float),
        (GenerationConfig, {"temperature": 1}, "temperature", 1.0, float),
        (GenerationConfig, {"suppress": ["a", "b"]}, "suppress", ("a", "b"), tuple),
        (GenerationConfig, {"suppress": []}, "suppress", (), tuple),
        (GenerationConfig, {"seed": None}, "seed", None, type(None)),
        (CachePolicy, {"mode": "none"}, "mode", EvictionMode.NONE, EvictionMode),
    ],
)
def test_config_from_mapping_coerces(cls, values, name, expected, kind):
    config = config_from_mapping(cls, values, "where")
    assert getattr(config, name) == expected
    assert type(getattr(config, name)) is kind


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: GenerationConfig(temperature=float("inf")), "temperature"),
        (lambda: GenerationConfig(max_new_tokens="5"), "max_new_tokens"),
        (lambda: CachePolicy(mode=5), "mode"),
        (lambda: CachePolicy(mode=None), "mode"),
        (lambda: StreamConfig(fps=True), "fps"),
    ],
)
def test_wrong_values_from_python_are_config_errors(make, field):
    with pytest.raises(ConfigError, match=field):
        make()
