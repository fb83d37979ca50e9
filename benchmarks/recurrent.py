"""Recurrent models on CPU: one training step with a packed ``nn.LSTM`` (the reference) against serlib's
:class:`serlib.models.masking.MaskedBiLSTM`, in float32 and with bfloat16 autocast (``TrainConfig.cpu_amp``).

    python benchmarks/recurrent.py [--threads 1] [--steps 3]

For the MHSA-FACA CLDNN at the paper's size (40 MFCC, 10-ms hop, BiLSTM 2 x 256 after two pools by 2; also the
``cpu`` profile's model) and MOMA (23 log-Mel, BiLSTM 2 x 512 on every frame) at the paper's size and at the
``cpu`` profile's (2 x 128), one batch of 32 sequences
whose lengths are those of 32 RAVDESS utterances drawn from the committed manifest (seed 0). The same weights run
every path; the record keeps the largest logit difference of each path against the packed float32 reference.
Prints the timings and writes a JSON record to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from serlib.models.registry import build_model
from serlib.records import environment_info, git_revision

REPO = Path(__file__).resolve().parents[1]
HOP_S = 0.010


class PackedBiLSTM(nn.Module):
    """The reference: ``nn.LSTM(bidirectional=True)`` on a packed sequence, with MaskedBiLSTM's interface."""

    def __init__(self, masked):
        super().__init__()
        self.lstm = nn.LSTM(masked.input_size, masked.hidden_size, masked.num_layers, batch_first=True,
                            bidirectional=True, dropout=masked.dropout)
        with torch.no_grad():
            for layer in range(masked.num_layers):
                for mod, suffix in ((masked.fwd[layer], ""), (masked.bwd[layer], "_reverse")):
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        getattr(self.lstm, f"{name}_l{layer}{suffix}").copy_(getattr(mod, f"{name}_l0"))

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[1])
        return y


def ravdess_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Frame counts (10-ms hop) of ``n`` RAVDESS utterances drawn from the committed manifest."""
    with open(REPO / "data_manifests" / "ravdess.csv") as f:
        durations = np.array([float(r["duration"]) for r in csv.DictReader(f)])
    pick = np.random.default_rng(seed).choice(len(durations), n, replace=False)
    return (durations[pick] / HOP_S).astype(int) + 1


CASES = {
    "faca_paper": ("cldnn_attention", 40, {"n_classes": 8, "attention": "faca"}),
    "moma_paper": ("moma", 23, {"n_classes": 8}),
    "moma_cpu_profile": ("moma", 23, {"n_classes": 8, "lstm_hidden": 128, "context": 64, "proj_dim": 256}),
}


def time_steps(model, x, lengths, y, steps: int, bf16: bool) -> float:
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x, lengths)[0]
        F.cross_entropy(logits.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run_case(name: str, steps: int, batch: int) -> dict:
    kind, n_features, kw = CASES[name]
    torch.manual_seed(0)
    masked, _ = build_model(kind, n_features=n_features, **kw)
    masked.train()
    packed, _ = build_model(kind, n_features=n_features, **kw)
    packed.load_state_dict(masked.state_dict())
    packed.lstm = PackedBiLSTM(masked.lstm)
    lengths = torch.as_tensor(ravdess_lengths(batch))
    x = torch.randn(batch, n_features, int(lengths.max())) * (torch.arange(int(lengths.max())) < lengths[:, None])[:, None]
    y = torch.randint(0, 8, (batch,))
    masked.eval(), packed.eval()
    with torch.no_grad():
        ref = packed(x, lengths)[0]
        diff32 = float((masked(x, lengths)[0] - ref).abs().max())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            diff16 = float((masked(x, lengths)[0].float() - ref).abs().max())
    masked.train(), packed.train()
    out = {"model": kind, "model_kwargs": kw, "batch": batch, "frames_max": int(lengths.max()),
           "frames_mean": float(lengths.float().mean()),
           "max_abs_logit_diff_vs_packed": {"masked_float32": diff32, "masked_bfloat16": diff16}}
    out["step_s"] = {
        "packed_float32": time_steps(packed, x, lengths, y, steps, False),
        "masked_float32": time_steps(masked, x, lengths, y, steps, False),
        "masked_bfloat16": time_steps(masked, x, lengths, y, steps, True),
    }
    s = out["step_s"]
    out["speedup_vs_packed"] = {k: s["packed_float32"] / v for k, v in s.items() if k != "packed_float32"}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "recurrent_step.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rec = {"benchmark": "recurrent_step", "git": git_revision(), "torch_threads": args.threads,
           "environment": environment_info(), "steps": args.steps, "cases": {}}
    for name in args.cases:
        rec["cases"][name] = run_case(name, args.steps, args.batch)
        c = rec["cases"][name]
        print(f"{name}: " + ", ".join(f"{k} {v:.3f} s" for k, v in c["step_s"].items())
              + " | speedup " + ", ".join(f"{k} {v:.1f}x" for k, v in c["speedup_vs_packed"].items())
              + f" | max logit diff {c['max_abs_logit_diff_vs_packed']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return rec


if __name__ == "__main__":
    main()
