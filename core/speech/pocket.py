"""Kyutai's Pocket TTS: the neural voice (the optional extra `pip install 'streamvlm[speech]'`).

Chosen over Kokoro-82M (`kokoro`) for two reasons. Licence: Pocket TTS's code is MIT and its weights
CC-BY-4.0, and it reads text with its own tokenizer, while `kokoro` phonemizes English through
misaki[en], which loads the GPL espeak-ng library into the process (espeakng-loader,
phonemizer-fork) and pulls spaCy with a model fetched at run time. Install weight: pocket-tts adds
a few pure-Python packages to torch (einops, sentencepiece, fastapi for its own server). Speed: about
100M parameters made to run in real time on a laptop CPU (docs/speech.md has this machine's figures).

Weights come from the hub on first use through `core.download.fetch` (its progress, resume and
one-sentence errors), cached by huggingface_hub: the files the package's own config pins (the
English model without voice cloning, its tokenizer) and the chosen predefined voice's state, at
the package's pinned revisions, then loaded by the package's own `TTSModel.load_model` from a config
naming the cached files. The voice-cloning weights (a gated repository) are not used.
"""

from __future__ import annotations

import importlib.util
import tempfile
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, StreamVLMError

REPO = "kyutai/pocket-tts-without-voice-cloning"
LICENCE = "MIT (pocket-tts code), CC-BY-4.0 (Kyutai's weights and voices, downloaded on first use)"
INSTALL = "pip install 'streamvlm[speech]'"
DEFAULT_SPEAKER = "alba"
OFFLINE_HINT = "use --voice espeak, which needs no download"


def installed() -> bool:
    """Whether the pocket-tts package is there (found without importing it, which loads torch)."""
    return importlib.util.find_spec("pocket_tts") is not None


def _pocket_tts():
    """The package, imported without its side effect: it sets torch to one thread on import, which
    would slow the vision-language model sharing this process; the count is put back."""
    import torch

    threads = torch.get_num_threads()
    try:
        import pocket_tts
        import pocket_tts.utils.config
        import pocket_tts.utils.utils
    except ImportError:
        raise StreamVLMError(f"the pocket voice needs the pocket-tts package: {INSTALL}") from None
    finally:
        torch.set_num_threads(threads)
    return pocket_tts


class PocketVoice:
    """One Pocket TTS model speaking with one voice state (a predefined speaker, or a cloned prompt)."""

    name = "pocket"
    licence = LICENCE

    def __init__(self, model: Any, state: dict, speaker: str) -> None:
        """`model`: a pocket_tts `TTSModel`; `state`: its voice state (`get_state_for_audio_prompt`)."""
        self.model, self.state, self.speaker = model, state, speaker
        self.sample_rate = int(model.sample_rate)

    def synthesize(self, text: str) -> np.ndarray:
        if not text.strip():
            return np.zeros(0, np.float32)
        audio = self.model.generate_audio(self.state, text)  # copies the voice state: it is reused
        return audio.detach().cpu().numpy().astype(np.float32).reshape(-1)

    @classmethod
    def load(
        cls,
        speaker: str = DEFAULT_SPEAKER,
        *,
        config: str | Path | None = None,
        progress=None,
        cancel: threading.Event | None = None,
        endpoint: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> PocketVoice:
        """The voice of predefined `speaker`, its files fetched first if the cache lacks them.
        `config`: a pocket-tts config whose `hf://` paths name the files (default: the package's
        English one); `progress`, `cancel`, `endpoint`, `cache_dir` go to `core.download.fetch`."""
        import yaml

        tts = _pocket_tts()
        from pocket_tts.utils.utils import _ORIGINS_OF_PREDEFINED_VOICES, get_predefined_voice

        if speaker not in _ORIGINS_OF_PREDEFINED_VOICES:
            raise ConfigError(
                f"the pocket voice has no speaker '{speaker}'; choose one of {', '.join(sorted(_ORIGINS_OF_PREDEFINED_VOICES))}"
            )
        config_path = Path(config) if config else tts.utils.config.CONFIGS_DIR / "english.yaml"
        settings = yaml.safe_load(config_path.read_text())
        # Predefined voices only: the weights without voice cloning (the cloning ones are gated).
        plain = settings.pop("weights_path_without_voice_cloning", None)
        if plain:
            settings["weights_path"] = plain
        embedding = get_predefined_voice(language=config_path.stem, name=speaker)
        local = _fetch_pins([*_pins(settings), embedding], progress, cancel, endpoint, cache_dir)
        settings = _replace_pins(settings, local)
        with tempfile.TemporaryDirectory(prefix="pocket-tts-") as folder:
            local_config = Path(folder) / config_path.name
            local_config.write_text(yaml.safe_dump(settings))
            model = tts.TTSModel.load_model(config=local_config)
        return cls(model, model.get_state_for_audio_prompt(local[embedding]), speaker)

    @classmethod
    def from_config(cls, config: str | Path, prompt: np.ndarray, rate: int) -> PocketVoice:
        """A model built by the package from a local `config` (with its weights, or random weights
        where the config names none) speaking like `prompt` (float32 mono samples at `rate`)."""
        import torch

        tts = _pocket_tts()
        from pocket_tts.data.audio_utils import convert_audio

        model = tts.TTSModel.load_model(config=Path(config))
        audio = convert_audio(
            torch.from_numpy(np.asarray(prompt, np.float32))[None], rate, model.sample_rate, 1
        )
        return cls(model, model.get_state_for_audio_prompt(audio), "prompt")


def _pins(node: Any) -> list[str]:
    """Every `hf://repo/path@revision` string in a config."""
    if isinstance(node, dict):
        return [pin for value in node.values() for pin in _pins(value)]
    if isinstance(node, list):
        return [pin for value in node for pin in _pins(value)]
    return [node] if isinstance(node, str) and node.startswith("hf://") else []


def _replace_pins(node: Any, local: dict[str, Path]) -> Any:
    if isinstance(node, dict):
        return {key: _replace_pins(value, local) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace_pins(value, local) for value in node]
    return str(local[node]) if isinstance(node, str) and node in local else node


def _fetch_pins(pins: list[str], progress, cancel, endpoint, cache_dir) -> dict[str, Path]:
    """The cached file of each `hf://` pin, fetched one repository revision at a time."""
    from core.download import LOCAL_FOLDER_HINT, fetch

    groups: dict[tuple[str, str | None], list[tuple[str, str]]] = defaultdict(list)
    for pin in pins:
        where, _, revision = pin.removeprefix("hf://").partition("@")
        owner, name, path = where.split("/", 2)
        groups[(f"{owner}/{name}", revision or None)].append((pin, path))
    local = {}
    for (repo, revision), files in groups.items():
        try:
            folder = fetch(
                repo,
                revision=revision,
                allow_patterns=[path for _, path in files],
                progress=progress,
                cancel=cancel,
                endpoint=endpoint,
                cache_dir=cache_dir,
            )
        except StreamVLMError as exc:  # the download's sentence, with the voice's way out
            raise type(exc)(str(exc).replace(LOCAL_FOLDER_HINT, OFFLINE_HINT)) from None
        local |= {pin: folder / path for pin, path in files}
    missing = [str(p) for p in local.values() if not p.is_file()]
    if missing:
        raise StreamVLMError(f"the pocket voice's files are missing after the download: {', '.join(missing)}")
    return local
