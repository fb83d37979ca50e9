"""Self-supervised (wav2vec 2.0) front end through Hugging Face ``transformers``: frozen hidden states of one layer.

(Just over 450 lines: loading with its clear errors, the weights fingerprint, batching rules and the resumable
cache are one contract its tests pin down together.)

    ssl = load_ssl("facebook/wav2vec2-base")          # or a local folder: load_ssl("/path/to/model")
    feats = cached_hidden_states(ssl, waves, layer=9)   # list of (T_i, 768) float32 arrays, cached on disk

* :func:`load_ssl` loads ``Wav2Vec2Model.from_pretrained(id_or_folder)`` in eval mode, on the GPU when there is one,
  and fingerprints it: ``weights_hash`` is a blake2b of the loaded parameters and buffers (names, dtypes, shapes,
  bytes) and of the model config, so the same weights give the same key whether they came from the hub or from a
  folder, and a fine-tuned copy saved under the same name does not. When the weights cannot be had (no network,
  wrong id, missing folder) it raises :class:`WeightsUnavailableError`, which says how to pass a local folder.
* :func:`hidden_states` runs the frozen model (``torch.no_grad``) on a list of 16-kHz mono waveforms in batches and
  returns layer ``layer`` of ``output_hidden_states`` for each, cut to each utterance's own frame count.
  ``layer`` indexes the ``hidden_states`` tuple: 0 is the input of the first transformer block (the projected CNN
  features after the positional convolution), ``k`` the output of transformer block ``k`` (the paper's layer 9 is
  ``hidden_states[9]`` of wav2vec2-base's 12 blocks).
  Length-correctness: a model whose CNN uses layer norm (``feat_extract_norm="layer"``, e.g. wav2vec2-large-lv60)
  is batched with zero padding and an attention mask, which leaves every valid frame as it is alone. A model whose
  first CNN layer uses group norm (``feat_extract_norm="group"``, e.g. wav2vec2-base) normalises each channel over
  the whole input, padding included, and Hugging Face documents that it must not get an attention mask; so such a
  model is batched only over utterances of identical length (no padding at all), which is exact and, on real
  corpora where lengths rarely coincide, amounts to one utterance per forward pass.
  Per-utterance zero-mean unit-variance normalisation of the waveform (``Wav2Vec2FeatureExtractor``'s
  ``do_normalize``) is applied when the model's ``preprocessor_config.json`` asks for it (default: yes).
* :func:`cached_hidden_states` keeps one ``.npy`` file per utterance under
  ``$SERLIB_CACHE/ssl/<model name>-<weights hash>/layer<L>-<settings>/<audio hash>.npy`` (``<audio hash>`` =
  blake2b of the float32 waveform bytes and its sample rate). Files are written atomically as each batch
  finishes, so an interrupted build resumes where it stopped: cached utterances are read, only the missing ones
  are computed, with a tqdm progress bar. An unreadable file is reported and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serlib.cache import _atomic_write, cache_dir

__all__ = [
    "SAMPLE_RATE",
    "SSLModel",
    "WeightsUnavailableError",
    "audio_hash",
    "cached_hidden_states",
    "cached_layers",
    "frame_counts",
    "hidden_states",
    "load_ssl",
    "ssl_cache_folder",
]

SAMPLE_RATE = 16000  # wav2vec 2.0 is trained on 16-kHz audio
PAPER_LAYER = 9  # CA-SER uses wav2vec2-base's transformer layer 9
SSL_CACHE_FORMAT = 1

LOCAL_FOLDER_HINT = (
    "To use weights without network, download them once where there is network, e.g. "
    "`huggingface-cli download facebook/wav2vec2-base --local-dir /path/to/model` or, in Python, "
    "`transformers.Wav2Vec2Model.from_pretrained('facebook/wav2vec2-base').save_pretrained('/path/to/model')`, "
    "copy the folder (config.json + model.safetensors or pytorch_model.bin) here and pass it: "
    "`--w2v2 /path/to/model` (in Python: load_ssl('/path/to/model'))."
)


class WeightsUnavailableError(RuntimeError):
    """wav2vec 2.0 weights could not be loaded (no network, wrong id, missing or broken folder)."""


def _require_transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "serlib.ssl needs Hugging Face transformers: pip install 'serlib[ssl]' (or pip install 'transformers>=4.40')"
        ) from exc
    return transformers


@dataclass
class SSLModel:
    """A loaded, frozen wav2vec 2.0 model and what identifies it."""

    model: Any  # transformers.Wav2Vec2Model, eval mode, requires_grad False
    source: str  # the id or folder it was loaded from, as given
    weights_hash: str  # blake2b of the parameters, buffers and config (see module docstring)
    normalize: bool  # per-utterance zero-mean unit-variance waveform normalisation (feature extractor's do_normalize)
    device: torch.device
    revision: str | None = None  # hub commit, when known
    meta: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        """Transformer blocks; valid layers are 0..n_layers."""
        return int(self.model.config.num_hidden_layers)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def name(self) -> str:
        """A file-name-safe short name: the last path component / hub name."""
        base = Path(self.source.rstrip("/\\")).name or "model"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", base)[:60]


def _looks_like_path(source: str) -> bool:
    """A filesystem path rather than a hub id (``name`` or ``org/name``): absolute, relative, home or drive."""
    return source.startswith((".", "/", "~", "\\")) or source[1:3] in (":\\", ":/") or source.count("/") > 1


def _weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    # the architecture, not where it was loaded from or by which transformers version
    config = {k: v for k, v in model.config.to_dict().items()
              if not k.startswith("_") and k not in ("transformers_version", "name_or_path", "dtype", "torch_dtype")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_normalize(folder: Path | None) -> bool:
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        try:
            return bool(json.loads((folder / "preprocessor_config.json").read_text()).get("do_normalize", True))
        except (OSError, ValueError):
            pass
    return True


def load_ssl(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    local_files_only: bool | None = None,
) -> SSLModel:
    """Load a wav2vec 2.0 model (hub id or local folder), frozen, in eval mode, on ``device`` (GPU when available).

    Raises :class:`WeightsUnavailableError` with instructions when the weights cannot be loaded.
    ``local_files_only`` defaults to ``$HF_HUB_OFFLINE``; with it nothing is fetched from the network.
    """
    transformers = _require_transformers()
    source = str(source)
    folder = Path(source).expanduser()
    is_folder = folder.is_dir()
    if not is_folder and (folder.exists() or _looks_like_path(source)):
        raise WeightsUnavailableError(
            f"wav2vec 2.0 weights: {source!r} is not a model folder (no such directory). {LOCAL_FOLDER_HINT}"
        )
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        model = transformers.Wav2Vec2Model.from_pretrained(
            str(folder) if is_folder else source, revision=revision, local_files_only=local_files_only
        )
    except Exception as exc:  # OSError (missing files, no network), ValueError, network-library errors
        where = f"folder {str(folder)!r}" if is_folder else f"hub id {source!r}"
        raise WeightsUnavailableError(
            f"could not load wav2vec 2.0 weights from {where} ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            + ("Offline mode is on, so nothing was downloaded. " if local_files_only and not is_folder else "")
            + LOCAL_FOLDER_HINT
        ) from exc
    if getattr(model.config, "add_adapter", False):
        raise ValueError(f"{source}: models with an adapter (add_adapter=True) are not supported")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.eval().requires_grad_(False).to(dev)
    normalize = _read_normalize(folder if is_folder else None)
    if not is_folder:
        try:
            fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(
                source, revision=revision, local_files_only=local_files_only
            )
            normalize = bool(fe.do_normalize)
        except (OSError, ValueError):
            pass
    commit = getattr(model.config, "_commit_hash", None)
    return SSLModel(
        model=model,
        source=source,
        weights_hash=_weights_hash(model),
        normalize=normalize,
        device=dev,
        revision=commit or revision,
        meta={"transformers": transformers.__version__, "feat_extract_norm": model.config.feat_extract_norm},
    )


def frame_counts(config: Any, n_samples: Sequence[int]) -> list[int]:
    """Output frames of the CNN feature encoder for inputs of ``n_samples`` samples (no padding in the convs)."""
    out = []
    for n in n_samples:
        length = int(n)
        for k, s in zip(config.conv_kernel, config.conv_stride):
            length = (length - k) // s + 1
        out.append(max(length, 0))
    return out


def _prepare(wave: np.ndarray, normalize: bool) -> np.ndarray:
    w = np.asarray(wave, dtype=np.float32)
    if w.ndim != 1:
        raise ValueError(f"expected a mono waveform (n_samples,), got shape {w.shape}; mix stereo down first")
    if normalize:
        w = (w - w.mean()) / np.sqrt(w.var() + 1e-7)  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm
    return w.astype(np.float32, copy=False)


def _batches(lengths: Sequence[int], batch_size: int, equal_only: bool) -> list[list[int]]:
    """Indices grouped into batches, sorted by length (less padding); ``equal_only``: one length per batch."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (not equal_only or lengths[batches[-1][0]] == lengths[i]):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _as_ssl(model: SSLModel | torch.nn.Module, normalize: bool | None) -> tuple[torch.nn.Module, bool]:
    if isinstance(model, SSLModel):
        return model.model, model.normalize if normalize is None else normalize
    return model, True if normalize is None else normalize


def _check_layer(net: torch.nn.Module, layer: int) -> None:
    n = int(net.config.num_hidden_layers)
    if not 0 <= layer <= n:
        raise ValueError(f"layer must be in 0..{n} for this model ({n} transformer blocks), got {layer}")


def _run(
    net: torch.nn.Module, waves: list[np.ndarray], layers: Sequence[int], device: torch.device
) -> list[dict[int, np.ndarray]]:
    """One forward pass over already prepared waveforms -> per utterance {layer: (T_i, D) float32 array}."""
    lengths = [len(w) for w in waves]
    T = max(lengths)
    x = torch.zeros(len(waves), T, dtype=torch.float32)
    mask = torch.zeros(len(waves), T, dtype=torch.long)
    for b, w in enumerate(waves):
        x[b, : len(w)] = torch.from_numpy(w)
        mask[b, : len(w)] = 1
    padded = min(lengths) != T
    if padded and net.config.feat_extract_norm != "layer":
        raise AssertionError("group-norm models must be batched over equal lengths only")
    kwargs = {"attention_mask": mask.to(device)} if padded else {}
    out = net(x.to(device), output_hidden_states=True, **kwargs)
    frames = frame_counts(net.config, lengths)
    result: list[dict[int, np.ndarray]] = [{} for _ in waves]
    for layer in layers:
        h = out.hidden_states[layer].float().cpu().numpy()  # (B, T_frames, D)
        assert h.shape[1] == max(frames), f"frame count {h.shape[1]} != expected {max(frames)}"
        for b in range(len(waves)):
            result[b][layer] = np.ascontiguousarray(h[b, : frames[b]])
    return result


def hidden_states(
    model: SSLModel | torch.nn.Module,
    waves: Sequence[np.ndarray],
    layer: int,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    normalize: bool | None = None,
) -> list[np.ndarray]:
    """Layer ``layer`` of the frozen model for each 16-kHz mono waveform: a list of (T_i, D) float32 arrays.

    No caching (see :func:`cached_hidden_states`). Each result equals that utterance's result alone (see the module
    docstring on batching). ``device`` defaults to the model's device.
    """
    net, norm = _as_ssl(model, normalize)
    _check_layer(net, layer)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    if next(net.parameters()).device != dev:  # move the model (and say so on the SSLModel)
        net.to(dev)
        if isinstance(model, SSLModel):
            model.device = dev
    net.eval()
    prepared = [_prepare(w, norm) for w in waves]
    too_short = [i for i, n in enumerate(frame_counts(net.config, [len(w) for w in prepared])) if n < 1]
    if too_short:
        raise ValueError(f"utterances {too_short[:10]} are too short for the model's CNN (no output frame)")
    results: list[np.ndarray | None] = [None] * len(prepared)
    equal_only = net.config.feat_extract_norm != "layer"
    with torch.no_grad():
        for idx in _batches([len(w) for w in prepared], batch_size, equal_only):
            for i, h in zip(idx, _run(net, [prepared[i] for i in idx], [layer], dev)):
                results[i] = h[layer]
    return results  # type: ignore[return-value]


def audio_hash(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """blake2b (32 hex) of the float32 waveform bytes, its length and its sample rate."""
    w = np.ascontiguousarray(np.asarray(wave, dtype=np.float32))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{sample_rate}|{w.shape}|".encode())
    h.update(w.tobytes())
    return h.hexdigest()


def ssl_cache_folder(ssl: SSLModel, layer: int, root: str | Path | None = None) -> Path:
    """The folder holding one ``<audio hash>.npy`` per utterance for this model (weights) and layer."""
    base = Path(root) if root is not None else cache_dir() / "ssl"
    settings = f"layer{layer}-norm{int(ssl.normalize)}-f{SSL_CACHE_FORMAT}"
    return base / f"{ssl.name}-{ssl.weights_hash[:16]}" / settings


def _write_npy(path: Path, arr: np.ndarray) -> None:
    _atomic_write(path, lambda f: np.lib.format.write_array(f, arr, allow_pickle=False))


def _read_npy(path: Path) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 2:
            raise ValueError(f"expected a 2-D array, got shape {arr.shape}")
        return arr
    except Exception as exc:  # truncated, corrupt, wrong content
        warnings.warn(f"SSL cache file {path} is unusable ({type(exc).__name__}: {exc}); recomputing it", stacklevel=3)
        return None


def _readable_header(path: Path) -> bool:
    """A cheap validity check without reading the data: a 2-D .npy header and a file long enough for it."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            expected = f.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(shape) != 2 or path.stat().st_size < expected:
            raise ValueError(f"shape {shape}, {path.stat().st_size} bytes of {expected}")
        return True
    except Exception as exc:
        warnings.warn(f"SSL cache file {path} is unusable ({type(exc).__name__}: {exc}); recomputing it", stacklevel=3)
        return False


def _write_spec(folder: Path, ssl: SSLModel, layer: int, sample_rate: int) -> None:
    spec_file = folder / "spec.json"
    if spec_file.exists():
        return
    spec = {
        "source": ssl.source, "weights_hash": ssl.weights_hash, "revision": ssl.revision, "layer": layer,
        "normalize": ssl.normalize, "sample_rate": sample_rate, "format": SSL_CACHE_FORMAT, "dim": ssl.dim,
        **ssl.meta,
    }
    _atomic_write(spec_file, lambda f: f.write((json.dumps(spec, indent=2, sort_keys=True) + "\n").encode()))


def cached_layers(
    ssl: SSLModel,
    waves: Sequence[np.ndarray],
    layers: Sequence[int],
    *,
    batch_size: int = 8,
    sample_rate: int = SAMPLE_RATE,
    root: str | Path | None = None,
    progress: bool = True,
    desc: str | None = None,
    load: bool = True,
) -> dict[int, list[np.ndarray]] | None:
    """:func:`hidden_states` of several layers with a per-utterance, per-layer disk cache; resumable.

    One forward pass per missing utterance fills every requested layer (a layer sweep costs one extraction).
    ``waves`` must be mono at ``sample_rate`` = 16 kHz (resample first). Returns {layer: [(T_i, D) float32 arrays
    in the order of ``waves``]}, or None with ``load=False`` (build the cache only; wav2vec2-base takes 50 frames x
    768 float32 = 150 kB per second of audio per layer, so a sweep over 13 layers reads one layer at a time back).
    """
    from tqdm.auto import tqdm

    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"wav2vec 2.0 expects {SAMPLE_RATE}-Hz audio, got sample_rate={sample_rate}; resample first")
    layers = sorted(set(int(k) for k in layers))
    if not layers:
        raise ValueError("no layers requested")
    for layer in layers:
        _check_layer(ssl.model, layer)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    folders = {layer: ssl_cache_folder(ssl, layer, root) for layer in layers}
    for layer, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        _write_spec(folder, ssl, layer, sample_rate)
    keys = [audio_hash(w, sample_rate) for w in waves]
    results: dict[int, list[np.ndarray | None]] = {layer: [None] * len(waves) for layer in layers}
    missing: list[int] = []
    for i, k in enumerate(keys):
        ok = True
        for layer in layers:
            path = folders[layer] / f"{k}.npy"
            if not path.exists():
                ok = False
            elif load:
                arr = _read_npy(path)
                results[layer][i] = arr
                ok = ok and arr is not None
            elif not _readable_header(path):
                ok = False
        if not ok:
            missing.append(i)
    todo: dict[str, int] = {}  # identical audio appearing twice is computed once
    for i in missing:
        todo.setdefault(keys[i], i)
    if todo:
        order = list(todo.values())
        net, norm = ssl.model, ssl.normalize
        prepared = {i: _prepare(waves[i], norm) for i in order}
        short = [i for i, n in zip(order, frame_counts(net.config, [len(prepared[i]) for i in order])) if n < 1]
        if short:
            raise ValueError(f"utterances {short[:10]} are too short for the model's CNN (no output frame)")
        equal_only = net.config.feat_extract_norm != "layer"
        net.eval()
        bar = tqdm(total=len(order), desc=desc or f"{ssl.name} layers {layers}", unit="utt", disable=not progress)
        try:
            with torch.no_grad():
                for idx in _batches([len(prepared[i]) for i in order], batch_size, equal_only):
                    chosen = [order[j] for j in idx]
                    for i, hs in zip(chosen, _run(net, [prepared[i] for i in chosen], layers, ssl.device)):
                        for layer, h in hs.items():
                            _write_npy(folders[layer] / f"{keys[i]}.npy", h)
                            if load:
                                results[layer][i] = h
                    bar.update(len(chosen))
        finally:
            bar.close()
        if load:
            for i in missing:
                for layer in layers:
                    if results[layer][i] is None:
                        results[layer][i] = results[layer][todo[keys[i]]]
    return results if load else None  # type: ignore[return-value]


def cached_hidden_states(
    ssl: SSLModel,
    waves: Sequence[np.ndarray],
    layer: int = PAPER_LAYER,
    *,
    batch_size: int = 8,
    sample_rate: int = SAMPLE_RATE,
    root: str | Path | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> list[np.ndarray]:
    """:func:`hidden_states` of one layer with a per-utterance disk cache (see the module docstring); resumable.

    ``waves`` must be mono at ``sample_rate`` = 16 kHz (resample first). Returns (T_i, D) float32 arrays in the
    order of ``waves``.
    """
    out = cached_layers(ssl, waves, [layer], batch_size=batch_size, sample_rate=sample_rate, root=root,
                        progress=progress, desc=desc)
    return out[layer]  # type: ignore[index]
