"""The OpenAI-compatible HTTP backend (vLLM, SGLang, hosted APIs): retries, structured output, logprobs."""

from __future__ import annotations

import base64
import ipaddress
import hashlib
import io
import logging
import math
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from tasks.answers import RANDOM_TAG
from tasks.errors import ConfigError, SemioflowError, mask_secrets
from tasks.local_models import Media, Reply
from tasks.media import output_size
from tasks.params import EndpointParams, QueryParams
from tasks.query.parse import ANSWER_SCHEMA, REFUSAL_FINISH
from tasks.query.questions import Question


log = logging.getLogger(__name__)
BACKOFF_CAP_S = 30.0  # longest wait between retries (also caps Retry-After)
VIDEO_UUID_HEX = 32  # hex digits of a video part's uuid (SHA-256 of the clip)
BREAKER_COOLDOWN_S = 300.0  # an endpoint that failed for good is not asked again for this long (then once)
STRUCTURED_WORDS = ("response_format", "json_schema", "guided", "structured", "schema")  # a 400 about that option


class MediaParts(list):
    """A window x arm's content parts; ``fps``: the video part's frame rate (vLLM's ``mm_processor_kwargs``)."""

    fps: float | None = None


class EndpointError(SemioflowError):
    """The model endpoint failed for good (after retries); finished answers stay cached."""



# ---- backends ----------------------------------------------------------------------------


class OpenAIBackend:
    """Any OpenAI-compatible chat-completions server (vLLM, SGLang, LMDeploy, Ollama, transformers serve)."""

    name = "openai"

    def __init__(self, ep: EndpointParams, params: QueryParams):
        if not ep.model:
            raise ConfigError("query: the openai backend needs a model name (query.vision.model / query.audio.model)")
        self.ep, self.params = ep, params
        self.url = ep.base_url.rstrip("/") + "/chat/completions"
        self.random_weights = (Path(ep.model) / "semioflow_tiny.json").is_file()
        self.model_id = f"openai:{ep.model}" + (RANDOM_TAG if self.random_weights else "")
        self.structured = ep.structured_output
        self.logprobs = ep.logprobs
        self.requests = 0  # HTTP attempts made (what a cached rerun must keep at zero)
        self._lock = threading.Lock()
        self._client = None
        self._down: tuple[float, str] | None = None  # circuit breaker: (when, the first cause) once it failed for good
        self._key = os.environ.get(ep.api_key_env, "")
        host = urlsplit(ep.base_url).hostname or ""
        if urlsplit(ep.base_url).scheme == "http" and not _loopback(host):
            log.warning("query: %s is plain http to another machine: frames, sound and transcripts of the "
                        "recordings cross the network unencrypted; use https or an SSH tunnel to 127.0.0.1",
                        ep.base_url)

    def gen_params(self) -> dict:
        """Generation settings that change an answer (part of the cache key): what requests carry now
        (structured output stays off once the server refused it by name)."""
        return {"max_tokens": self.params.max_tokens, "temperature": self.params.temperature,
                "structured": self.structured, "media_format": self.ep.media_format}

    def media_parts(self, media: Media) -> MediaParts:
        """Content parts of the media, built once per window x arm and reused by every question."""
        parts = MediaParts()
        if media.kind == "video" and self.ep.media_format == "video":
            mp4 = frames_mp4(media)
            # vLLM's format: the uuid (stable: the clip's content) keys its multimodal cache, so the 20
            # questions of a window x arm preprocess the clip once; the clip's frame rate goes with the request
            parts.append({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,"
                                                             + base64.b64encode(mp4).decode()},
                          "uuid": hashlib.sha256(mp4).hexdigest()[:VIDEO_UUID_HEX]})
            parts.fps = media.fps
        elif media.kind == "video":
            parts.extend({"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,"
                                                            + base64.b64encode(img).decode()}}
                         for img in media.images)
        else:
            parts.append({"type": "input_audio", "input_audio": {"data": base64.b64encode(media.wav).decode(),
                                                                 "format": "wav"}})
        if media.text:
            parts.append({"type": "text", "text": media.text})
        return parts

    def body(self, q: Question, media_parts: list[dict]) -> dict:
        """The chat-completions request body (media parts first, then the question)."""
        body = {"model": self.ep.model, "max_tokens": self.params.max_tokens,
                "temperature": self.params.temperature,
                "messages": [{"role": "system", "content": q.system},
                             {"role": "user", "content": media_parts + [{"type": "text", "text": q.prompt}]}]}
        if self.structured:
            schema = ANSWER_SCHEMA if not q.batched else {
                "type": "object", "properties": {f.id: ANSWER_SCHEMA for f in q.features},
                "required": [f.id for f in q.features], "additionalProperties": False}
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "semiology_answer", "schema": schema, "strict": True}}
        if self.logprobs and not q.batched:
            body["logprobs"], body["top_logprobs"] = True, 5
        if getattr(media_parts, "fps", None):
            body["mm_processor_kwargs"] = {"fps": media_parts.fps}
        return body

    def ask(self, q: Question, media_parts: list[dict]) -> Reply:
        """POST one question, retrying timeouts, 429 and 5xx with bounded backoff."""
        import httpx

        if self._client is None:
            key = self._key
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._client = httpx.Client(timeout=self.ep.timeout_s, headers=headers)
        last = ""
        attempt = 0
        while attempt <= self.ep.retries:
            self._check_breaker()
            with self._lock:
                self.requests += 1
            wait_s = min(BACKOFF_CAP_S, self.ep.backoff_s * 2 ** attempt)
            try:
                body = self.body(q, media_parts)
                r = self._client.post(self.url, json=body)
            except httpx.TimeoutException:
                last = f"timed out after {self.ep.timeout_s:g} s"
            except httpx.TransportError as exc:
                last = f"cannot reach the endpoint ({type(exc).__name__})"
            else:
                if r.status_code == 200:
                    reply, last = self._reply(r, q, body)
                    if reply is not None:
                        return reply
                    # a 200 that carries no answer is a transport failure: retried, never cached
                    attempt += 1
                    if attempt <= self.ep.retries:
                        time.sleep(wait_s)
                    continue
                # an error body may echo the key (a 401) or the request: masked before it reaches any log
                last = f"HTTP {r.status_code}: {mask_secrets(r.text[:300], self._key)}"
                if r.status_code in (400, 422) and self._drop_optional(body, r.text):
                    continue  # same attempt again without the refused option
                if r.status_code != 429 and r.status_code < 500:
                    raise EndpointError(f"{self.ep.base_url} refused the request: {last}")
                retry_after = r.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait_s = min(BACKOFF_CAP_S, float(retry_after))
            attempt += 1
            if attempt <= self.ep.retries:
                time.sleep(wait_s)
        with self._lock:
            if self._down is None:  # open the breaker: every later question of this run fails at once
                self._down = (time.monotonic(), last)
        raise EndpointError(f"{self.ep.base_url} failed {self.ep.retries + 1} times, last: {last}. "
                            "Finished answers are cached; rerun to resume.")

    def _check_breaker(self) -> None:
        """Fail at once while the endpoint is known to be down (the first cause in the error)."""
        with self._lock:
            down = self._down
            if down is not None and time.monotonic() - down[0] >= BREAKER_COOLDOWN_S:
                self._down = down = None  # cooled down: let one question try again
        if down is not None:
            raise EndpointError(f"{self.ep.base_url} is down (first failure: {down[1]}); not asked again for "
                                f"{BREAKER_COOLDOWN_S:g} s. Finished answers are cached; rerun to resume.")

    def _drop_optional(self, sent: dict, error: str) -> bool:
        """After a 400/422 whose ``error`` names it: drop structured output or logprobs (True = ask again).

        An error that names neither (a prompt too long, a bad model name) drops nothing: it fails the
        request as it is.  Requests in flight may fail for an option another thread already dropped: they
        just ask again.
        """
        error = error.lower()
        with self._lock:
            if "response_format" in sent and any(w in error for w in STRUCTURED_WORDS):
                if self.structured:
                    self.structured = False
                    log.warning("query: the server refused JSON-schema output; asking without it (%s)",
                                self.ep.model)
                return True
            if "logprobs" in sent and "logprob" in error:
                if self.logprobs:
                    self.logprobs = False
                    log.warning("query: the server refused logprobs; P(yes) will be empty (%s)", self.ep.model)
                return True
        return False

    def _reply(self, r, q: Question, sent: dict) -> tuple[Reply | None, str]:
        """(the reply, "") of a 200, or (None, why it is no reply): a body that is not JSON, an error object,
        no choices."""
        try:
            data = r.json()
        except ValueError:
            return None, f"HTTP 200 with a body that is not JSON ({len(r.content)} bytes)"
        if not isinstance(data, dict) or "error" in data:
            err = data.get("error") if isinstance(data, dict) else None
            kind = err.get("type") or err.get("code") if isinstance(err, dict) else None
            return None, f"HTTP 200 carrying an error ({kind or 'no type'}) instead of an answer"
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None, "HTTP 200 with no choices"
        choice = choices[0]
        message = choice.get("message") or {}
        gen = {**self.gen_params(), "structured": "response_format" in sent}  # what this answer was asked with
        if message.get("refusal"):  # the OpenAI refusal field: a refusal, its words kept as the raw text
            return Reply(text=str(message["refusal"]), finish_reason=REFUSAL_FINISH, yes_prob=None, gen=gen), ""
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        yes_prob = None if q.batched else yes_prob_from_logprobs((choice.get("logprobs") or {}).get("content"))
        return Reply(text=content, finish_reason=choice.get("finish_reason") or "stop", yes_prob=yes_prob, gen=gen), ""


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def yes_prob_from_logprobs(tokens: list[dict] | None) -> float | None:
    """P(yes)/(P(yes)+P(no)) at the first answer token that reads yes or no (top logprobs summed over variants)."""
    for tok in tokens or []:
        word = str(tok.get("token", "")).strip().strip('"').lower()
        if not (word.startswith("yes") or word.startswith("no")):
            continue
        p = {"yes": 0.0, "no": 0.0}
        for alt in tok.get("top_logprobs") or [tok]:
            w = str(alt.get("token", "")).strip().strip('"').lower()
            for k in p:
                if w == k:
                    p[k] += math.exp(alt.get("logprob", -math.inf))
        total = p["yes"] + p["no"]
        return p["yes"] / total if total > 0 else None
    return None


def frames_mp4(media: Media) -> bytes:
    """The frames as one H.264 MP4 (for servers that take a video part)."""
    import tempfile

    from PIL import Image

    from tasks.media import VideoWriter

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "window.mp4"
        first = np.asarray(Image.open(io.BytesIO(media.images[0])).convert("RGB"))
        w, h = output_size(first.shape[1], first.shape[0], min(first.shape[:2]) // 2 * 2)
        with VideoWriter(path, width=w, height=h, fps=media.fps or 1.0) as vw:
            for img in media.images:
                rgb = np.asarray(Image.open(io.BytesIO(img)).convert("RGB").resize((w, h)))
                vw.write(rgb)
        return path.read_bytes()


