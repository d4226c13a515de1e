"""Our model as a VLMEvalKit video model, and the adapter both VQA paths share.

`VideoQAAdapter` answers a VLMEvalKit message (a list of `{type: text|video|image, value}` parts)
with one forward and one new token restricted to the option letters the prompt lists, plus Yes
and No (evals/offline_qa.py); frames are read from the video at the dataset's rate (`fps`) or
count (`nframe`), as VLMEvalKit tells a video model.

With VLMEvalKit installed (`pip install git+https://github.com/open-compass/VLMEvalKit`),
`register` adds `model_class()` (a `vlmeval.vlm.base.BaseModel` with `VIDEO_LLM = True` and
`generate_inner(message, dataset)`) to `vlmeval.config.supported_VLM` under a name, and `run`
drives VLMEvalKit's own video inference (`infer_data_job_video`) and scoring (`dataset.evaluate`
with exact matching) on its dataset of that name. Without it, evals/vqa.py reads the same TSV
files itself and calls the same adapter.
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
        question = "\n".join(p["value"] for p in message if p["type"] == "text" and str(p["value"]).strip())
        answers = [*answer_letters(question), "Yes", "No"]
        return self.qa.answer(
            frames, len(times) / max(end - start, 1e-3), question, answers, prefix=""
        ).answer


# -- VLMEvalKit (only imported when installed) ---------------------------------------------------

DATASETS = {
    "Video-MME": "Video-MME_1fps",
    "MVBench": "MVBench_64frame",
    "LongVideoBench": "LongVideoBench_1fps",
}


def model_class():
    """A VLMEvalKit model class around the adapter (built on first use: vlmeval is optional)."""
    from vlmeval.vlm.base import BaseModel

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
            self.fps, self.nframe = fps, nframe  # VLMEvalKit sets these from the dataset
            self.adapter = VideoQAAdapter(load_model(model_path, **load), FrameBudget.capped(max_pixels))

        def generate_inner(self, message, dataset=None):
            fps = self.fps if self.fps and self.fps > 0 else None
            return self.adapter.generate(message, fps=fps, nframe=self.nframe or None)

    return StreamVLMVideo


def register(name: str, **kwargs) -> None:
    """Add our model to VLMEvalKit's `supported_VLM` under `name` (its public model registry)."""
    from functools import partial

    from vlmeval.config import supported_VLM

    supported_VLM[name] = partial(model_class(), **kwargs)


def run(benchmark: str, model_path: str, work_dir: Path, **load) -> dict:
    """Run VLMEvalKit's own inference and exact-match scoring of `benchmark`; returns its rating."""
    from vlmeval.dataset.video_dataset_config import supported_video_datasets
    from vlmeval.inference_video import infer_data_job_video

    dataset_name = DATASETS[benchmark]
    dataset = supported_video_datasets[dataset_name]()
    per_frame = {"nframe": dataset.nframe} if getattr(dataset, "nframe", 0) > 0 else {"fps": dataset.fps}
    name = "streamvlm"
    register(name, model_path=model_path, **per_frame, **load)
    work_dir.mkdir(parents=True, exist_ok=True)
    result_file = f"{name}_{dataset_name}.xlsx"
    infer_data_job_video(
        name, work_dir=str(work_dir), model_name=name, dataset=dataset, result_file_name=result_file
    )
    return dataset.evaluate(str(work_dir / result_file), model="exact_matching")
