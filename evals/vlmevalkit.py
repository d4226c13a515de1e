"""Our model as a VLMEvalKit video model, and the adapter both VQA paths share.

`VideoQAAdapter` answers a VLMEvalKit message (a list of `{type: text|video|image, value}` parts)
with one forward and one new token restricted to the option letters the prompt lists, plus Yes
and No (evals/offline_qa.py); frames are read from the video at the dataset's rate (`fps`) or
count (`nframe`), as VLMEvalKit tells a video model. The question is the message's text parts, each
stripped, joined by newlines, in order (as VLMEvalKit's own Qwen2-VL wrapper puts them all in the
user turn), so the builtin reader and VLMEvalKit's prompt builders give the same tokens.

VLMEvalKit is installed from the package index as `nvidia-vlmeval` (`pip install 'streamvlm[vlmeval]'`,
see pyproject.toml for why that packaging and why with --no-deps). `register` adds `model_class()`
(a `vlmeval.vlm.base.BaseModel` with `VIDEO_LLM = True` and `generate_inner(message, dataset)`) to
`vlmeval.config.supported_VLM` under a name, and `run` drives VLMEvalKit's own video inference
(`infer_data_job_video`: its `build_prompt`, frame sampling settings and result files) and scoring
(`dataset.evaluate` with exact matching) on its dataset class, reading `<DATA>/<benchmark>.tsv` and
the videos in the layout its download step leaves (`local_dataset`), so nothing is fetched.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ConfigError

# torch (offline_qa) and PyAV (video) load where used, so `python -m evals vqa --help` is instant.
if TYPE_CHECKING:
    from evals.offline_qa import FrameBudget

MAX_FRAMES = 768  # qwen-vl-utils' cap on frames per video
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.):]", re.MULTILINE)


def answer_letters(prompt: str) -> list[str]:
    """The option letters a prompt lists (A, B, ... in order), else A-E."""
    found = sorted(set(_OPTION_LINE.findall(prompt)))
    letters = [c for c in string.ascii_uppercase[: len(found)] if c in found]
    return letters if len(letters) >= 2 else list("ABCDE")


class VideoQAAdapter:
    """VLMEvalKit's message interface over `OfflineQA`."""

    def __init__(self, model, budget: FrameBudget | None = None, max_frames: int = MAX_FRAMES) -> None:
        from evals.offline_qa import OfflineQA

        self.qa = OfflineQA(model, budget)
        self.max_frames = max_frames

    def generate(
        self,
        message: list[dict],
        *,
        fps: float | None = None,
        nframe: int | None = None,
        clip: tuple[float, float] | None = None,
    ) -> str:
        videos = [part["value"] for part in message if part["type"] == "video"]
        if len(videos) != 1:
            raise ConfigError(f"a video question needs exactly one video part (got {len(videos)})")
        if any(part["type"] == "image" for part in message):
            raise ConfigError("this adapter takes the video itself (VIDEO_LLM), not extracted frames")
        from evals.video import duration, frames_at, sample_times

        path = Path(videos[0])
        start, end = clip if clip else (0.0, duration(path))
        if nframe:
            times = sample_times(start, end, count=nframe)
        else:
            times = sample_times(start, end, fps=fps or 1.0, max_frames=self.max_frames)
        frames = [f.rgb for f in frames_at(path, times)]
        texts = (str(p["value"]).strip() for p in message if p["type"] == "text")
        question = "\n".join(t for t in texts if t)
        answers = [*answer_letters(question), "Yes", "No"]
        return self.qa.answer(
            frames, len(times) / max(end - start, 1e-3), question, answers, prefix=""
        ).answer


# -- VLMEvalKit (only imported when installed) ---------------------------------------------------

INSTALL = "pip install 'streamvlm[vlmeval]' (VLMEvalKit from the package index as nvidia-vlmeval)"
DATASETS = {
    "Video-MME": "Video-MME_1fps",
    "MVBench": "MVBench_64frame",
    "LongVideoBench": "LongVideoBench_1fps",
}
MODEL_NAME = "streamvlm"


def vlmeval_module(name: str):
    """Import a VLMEvalKit module with autograd left as it was: importing `vlmeval.vlm` (which most of its
    modules do) calls `torch.set_grad_enabled(False)` for the whole process, and every later backward in
    it (a training step, a test's) then fails."""
    import importlib

    import torch

    enabled = torch.is_grad_enabled()
    try:
        return importlib.import_module(name)
    finally:
        torch.set_grad_enabled(enabled)


def model_class():
    """A VLMEvalKit model class around the adapter (built on first use: vlmeval is optional)."""
    BaseModel = vlmeval_module("vlmeval.vlm.base").BaseModel

    class StreamVLMVideo(BaseModel):
        INSTALL_REQ = False
        INTERLEAVE = True
        VIDEO_LLM = True
        allowed_types = ["text", "image", "video"]

        def __init__(
            self, model_path: str, fps: float | None = None, nframe: int | None = None, **load
        ) -> None:
            from core.loading import load_model
            from evals.offline_qa import FrameBudget

            max_pixels = load.pop("max_pixels", None)
            max_frames = load.pop("max_frames", MAX_FRAMES)
            self.fps, self.nframe = fps, nframe  # VLMEvalKit sets these from the dataset
            model = load_model(model_path, **load)
            self.adapter = VideoQAAdapter(model, FrameBudget.capped(max_pixels), max_frames)

        def generate_inner(self, message, dataset=None):
            fps = self.fps if self.fps and self.fps > 0 else None
            return self.adapter.generate(message, fps=fps, nframe=self.nframe or None)

    return StreamVLMVideo


def register(name: str, **kwargs) -> None:
    """Add our model to VLMEvalKit's `supported_VLM` under `name` (its public model registry)."""
    from functools import partial

    supported_VLM = vlmeval_module("vlmeval.config").supported_VLM
    supported_VLM[name] = partial(model_class(), **kwargs)


def local_dataset(benchmark: str, data: Path):
    """VLMEvalKit's dataset `DATASETS[benchmark]` over `<data>/<benchmark>.tsv` and its videos.

    VLMEvalKit's `prepare_dataset` downloads the data and then checks the TSV's MD5 against the
    published one; this subclass returns the local folder instead (the layout that step leaves:
    Video-MME `video/<video>.mp4`, MVBench `<prefix>/<video>`, LongVideoBench `<video_path>`) and
    leaves everything else (prompts, frame settings, scoring) to VLMEvalKit's class.
    """
    supported_video_datasets = vlmeval_module("vlmeval.dataset.video_dataset_config").supported_video_datasets
    made = supported_video_datasets[
        DATASETS[benchmark]
    ]  # functools.partial(Class, dataset=..., fps|nframe=...)
    tsv = data / f"{benchmark}.tsv"

    class Local(made.func):
        def prepare_dataset(self, dataset_name: str = benchmark, repo_id: str | None = None) -> dict:
            return {"data_file": str(tsv), "root": str(data)}

    Local.__name__ = f"Local{made.func.__name__}"
    return Local(**made.keywords)


def run(benchmark: str, data: Path, model_path: str, work_dir: Path, **load) -> tuple[dict, dict, dict]:
    """VLMEvalKit's own inference and exact-match scoring of `benchmark` on the local data.

    Returns its rating, and its prediction and score (1 or 0; -1 where it could not score) of each
    question by the TSV's `index`.
    """
    import os

    infer_data_job_video = vlmeval_module("vlmeval.inference_video").infer_data_job_video
    vlmeval_load = vlmeval_module("vlmeval.smp").load

    work_dir.mkdir(parents=True, exist_ok=True)
    # VLMEvalKit keeps extracted frames under $LMUData (default ~/LMUData); keep them with the run.
    lmu = work_dir / "LMUData"
    lmu.mkdir(exist_ok=True)
    os.environ.setdefault("LMUData", str(lmu))
    dataset = local_dataset(benchmark, data)
    per_frame = {"nframe": dataset.nframe} if dataset.nframe > 0 else {"fps": dataset.fps}
    register(MODEL_NAME, model_path=model_path, **per_frame, **load)
    result_file = f"{MODEL_NAME}_{DATASETS[benchmark]}.xlsx"
    infer_data_job_video(
        MODEL_NAME,
        work_dir=str(work_dir),
        model_name=MODEL_NAME,
        dataset=dataset,
        result_file_name=result_file,
    )
    rating = dataset.evaluate(str(work_dir / result_file), model="exact_matching")
    scored = vlmeval_load(str(work_dir / result_file.replace(".xlsx", "_score.xlsx")))
    keys = [str(k) for k in scored["index"]]
    predictions = dict(zip(keys, (str(p) for p in scored["prediction"]), strict=True))
    scores = dict(zip(keys, (int(x) for x in scored["score"]), strict=True))
    return rating, predictions, scores
