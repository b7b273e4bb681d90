"""The in-process backend: a Hugging Face model folder loaded once per process (``tasks.local_models``)."""

from __future__ import annotations

from functools import lru_cache


from tasks.answers import RANDOM_TAG
from tasks.errors import ConfigError
from tasks.local_models import Media, Reply
from tasks.params import EndpointParams, QueryParams
from tasks.query.parse import JUSTIFICATION_PREFIX, SINGLE_PREFIX
from tasks.query.questions import Question
from tasks.query.responses import request_seed



class LocalBackend:
    """A Hugging Face folder loaded in-process (Qwen2.5-VL, InternVL, Qwen3-VL, Audio Flamingo 3)."""

    name = "local"

    def __init__(self, ep: EndpointParams, params: QueryParams):
        if not ep.model:
            raise ConfigError("query: the local backend needs a model folder (query.vision.model / "
                              "query.audio.model); `semioflow models tiny` builds a random-weight one for smoke runs")
        self.ep, self.params = ep, params
        self.model = _load_local(ep.model, ep.device, params.max_pixels)
        self.random_weights = self.model.random_weights
        self.model_id = self.model.model_id + (RANDOM_TAG if self.random_weights else "")
        self.requests = 0

    def gen_params(self) -> dict:
        return {"max_tokens": self.params.max_tokens, "temperature": self.params.temperature,
                "prefix": SINGLE_PREFIX, "max_pixels": self.params.max_pixels,
                "constrained": self.params.constrained and self.params.mode == "single", "seed": "per-request"}

    def media_parts(self, media: Media) -> Media:
        return media

    def ask(self, q: Question, media_parts: Media) -> Reply:
        self.requests += 1
        constrained = JUSTIFICATION_PREFIX if self.params.constrained and not q.batched else None
        return self.model.generate(q.system, media_parts, q.prompt, max_new_tokens=self.params.max_tokens,
                                   temperature=self.params.temperature,
                                   answer_prefix="" if q.batched else SINGLE_PREFIX, constrained=constrained,
                                   seed=request_seed(q))


@lru_cache(maxsize=4)
def _load_local(path: str, device: str, max_pixels: int):
    from tasks.local_models import load_local

    return load_local(path, device=device, max_pixels=max_pixels)


