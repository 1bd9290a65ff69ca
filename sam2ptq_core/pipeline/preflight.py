"""Cheap checks of a run's inputs before any work starts, each failing with one line that names the fix."""
from __future__ import annotations

import os
from pathlib import Path

from ..config import ConfigError, RunConfig
from ..sam2.variants import narrowest_linear
from .stages import StageError

__all__ = ["preflight"]


def preflight(cfg: RunConfig) -> None:
    _check_rank(cfg)
    _check_mixed(cfg)
    _check_folder(cfg.output.root, "output.root")
    from .object_store import is_url
    if is_url(cfg.cache.root):
        _check_url(cfg.cache.root, cfg.cache.io_timeout_seconds)
        from .stages import local_dir
        _check_folder(str(local_dir(cfg)), "cache.local", probe=True)
    else:
        _check_folder(cfg.cache.root, "cache.root")
    _check_image_counts(cfg)
    _check_images_decode(cfg)
    if cfg.quant.eval.video is not None:  # the clip opens and every object's prompt fits its frames
        from .video_evaluation import clip_prompts
        try:
            clip_prompts(cfg)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.quant.eval.annotations and not Path(cfg.quant.eval.annotations).is_file():
        raise StageError(f"quant.eval.annotations file {cfg.quant.eval.annotations} does not exist")
    if cfg.model.path:
        from ..sam2.variants import check_checkpoint_dir
        check_checkpoint_dir(cfg.model.path)
    if cfg.model.device == "cuda":
        from .stage_inputs import device_of
        device_of(cfg)
    if cfg.convert_nunchaku:
        from ..export.nunchaku import check_supported
        check_supported(cfg)
    if cfg.onnx is not None:  # the exporter and a runtime are extras
        from ..export.runtime_choice import NO_VNNI, MissingRuntime, check_exporter, int8_dot_products
        try:
            rt = check_exporter(cfg.onnx.runtime)
        except MissingRuntime as e:
            raise ConfigError(f"onnx: {e}") from None
        if rt == "openvino" and not int8_dot_products():  # auto gives openvino here only without onnxruntime
            raise ConfigError(f"onnx.runtime {cfg.onnx.runtime} (openvino): {NO_VNNI}; use onnx.runtime: "
                              "onnxruntime (pip install -e '.[onnx]'; auto picks it on such a CPU)")


def _check_rank(cfg: RunConfig) -> None:
    """A low-rank branch as wide as a layer holds its whole weight in 16-bit: the model would not be quantized."""
    lr = cfg.quant.wgts.low_rank
    width = narrowest_linear(cfg.model.name, cfg.model.arch)
    if lr is not None and lr.rank >= width:
        raise ConfigError(f"quant.wgts.low_rank.rank {lr.rank} is not below {width}, the width of {cfg.model.name}'s "
                          f"narrowest quantized layers (blocks.0.attn.proj is {width}→{width}): such a branch holds "
                          f"the whole weight in 16-bit; use a rank below {width} (SVDQuant uses 16–64)")


def _check_mixed(cfg: RunConfig) -> None:
    """A mixed-precision policy that can be met and leaves something quantized; layer names that exist. From the
    variant table alone (no model is built): the same byte costs the mixed stage uses."""
    m = cfg.quant.mixed
    if m is None:
        return
    import difflib
    import fnmatch

    from ..schemes import layer_costs, quantized_shapes
    shapes = quantized_shapes(cfg)
    everything = f"every quantized layer would fall back to {m.fallback}: nothing would be quantized"
    if cfg.quant.calib.mode == "sequential" and not m.layers:
        raise ConfigError("quant.calib.mode sequential decides each layer's format before calibrating it: give "
                          "quant.mixed.layers (e.g. the layers a one-shot run with this budget chose, recorded in its "
                          "output config.yaml), not budget_bits or num_layers")
    if m.layers:
        for p in m.layers:
            if not any(fnmatch.fnmatch(k, p) for k in shapes):
                close = difflib.get_close_matches(p, list(shapes), n=3) or list(shapes)[:3]
                raise ConfigError(f"quant.mixed.layers entry {p!r} matches no quantized layer of "
                                  f"{cfg.model.name}; did you mean {', '.join(close)}? (fnmatch patterns allowed)")
        if all(any(fnmatch.fnmatch(k, p) for p in m.layers) for k in shapes):
            raise ConfigError(f"quant.mixed.layers covers all {len(shapes)} layers: {everything}; name fewer layers")
        return
    if m.num_layers is not None:
        if m.num_layers >= len(shapes):
            raise ConfigError(f"quant.mixed.num_layers {m.num_layers}: {everything} ({cfg.model.name} has "
                              f"{len(shapes)}); use fewer")
        return
    from ..algorithms.mixed_precision import average_bits, minimum_bits
    params, cost, fb = layer_costs(cfg.quant, shapes)
    low, high = minimum_bits(params, cost, fb), average_bits(params, cost, fb, set(shapes))
    if m.budget_bits < low - 1e-9:
        raise ConfigError(f"quant.mixed.budget_bits {m.budget_bits} is below the minimum {low:.3f} average weight "
                          f"bits {cfg.model.name} can reach with {cfg.quant.wgts.dtype} and {m.fallback} fallbacks "
                          f"(codes, 16-bit scales and the branch counted); use at least {low:.3f}")
    if m.budget_bits >= high - 1e-9:
        raise ConfigError(f"quant.mixed.budget_bits {m.budget_bits}: {everything} (that costs {high:.3f} average "
                          f"weight bits); use a budget below {high:.3f}")


def _check_folder(path: str, key: str, probe: bool = False) -> None:
    """``path`` is a folder this process can write into, or can be created as one (nothing is left behind).
    ``probe``: also create and remove a folder there (permission bits do not tell for /proc, read-only mounts or
    full disks)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key} {p} is a file, not a folder; point --{key} at a folder")
    anc = p
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{key} {p} cannot be created: {anc} is a file; point --{key} at a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {p} is not writable ({anc} is read-only for this user); point --{key} at a folder "
                          f"you can write to")
    if probe:
        import tempfile
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".sam2ptq-probe-", dir=anc))
        except OSError as e:
            raise ConfigError(f"{key} {p} cannot be written ({e.strerror or e} in {anc}); point --{key} at a "
                              f"folder you can write to") from None


def _check_image_counts(cfg: RunConfig) -> None:
    """Enough images listed for calibration and the held-out split (decoding them is left to the stages)."""
    from ..sam2.images import DataError, list_images
    calib, ev = cfg.quant.calib, cfg.quant.eval
    n = len(list_images(calib.path))
    if n < calib.num_samples:
        raise DataError(f"calibration folder '{calib.path}' holds {n} images but quant.calib.num_samples is "
                        f"{calib.num_samples}; lower --quant.calib.num_samples or add images")
    if ev.path:
        m = len(list_images(ev.path))
        if m < ev.num_samples:
            raise DataError(f"evaluation folder '{ev.path}' holds {m} images but quant.eval.num_samples is "
                            f"{ev.num_samples}; lower --quant.eval.num_samples or add images")
    elif n < calib.num_samples + ev.num_samples:
        raise DataError(f"calibration folder '{calib.path}' holds {n} images, fewer than the {calib.num_samples} for "
                        f"calibration plus {ev.num_samples} held out for evaluation; lower quant.calib.num_samples or "
                        f"quant.eval.num_samples, or set --quant.eval.path to a separate folder")


# fsspec protocols whose writes support the exclusive create the store publishes manifests with (S3 If-None-Match,
# GCS generation match, Azure If-None-Match, O_EXCL on local files); ftp/http/… would let two writers mix a stage
EXCLUSIVE_CREATE = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "file", "local")


def _check_images_decode(cfg: RunConfig) -> None:
    """The seeded calibration choice and the held-out split decode (as the stages will choose them): a folder whose
    usable images run out fails now, naming the unreadable files, not at evaluation minutes later; skipped files are
    named on the console (a warning each)."""
    from ..sam2.images import held_out, select_images
    calib, ev = cfg.quant.calib, cfg.quant.eval
    paths, _ = select_images(calib.path, calib.num_samples, cfg.seed)
    held_out(ev.path, calib.path, ev.num_samples, cfg.seed, {str(p) for p in paths})


def _check_url(url: str, timeout: float = 60.0) -> None:
    """The URL's scheme supports exclusive creates, its filesystem package is installed and the location answers
    (credentials from the environment) within the I/O timeout."""
    from .object_store import url_fs
    proto = url.split("://", 1)[0]
    if proto not in EXCLUSIVE_CREATE:
        raise ConfigError(f"cache.root {url}: {proto}:// cannot hold a shared stage store (it has no exclusive "
                          f"create); use s3://, gs://, az:// or a local folder")
    try:
        fs, root = url_fs(url, timeout)
    except ImportError as e:
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}.get(proto, proto)
        raise ConfigError(f"cache.root {url} needs the {proto}:// filesystem package ({str(e).splitlines()[0]}); "
                          f"pip install 'sam2ptq[{extra}]'") from None
    except ValueError as e:
        raise ConfigError(f"cache.root {url} is not a URL fsspec knows ({e})") from None
    try:
        if proto in ("file", "local"):
            fs.makedirs(root, exist_ok=True)  # (on S3, s3fs would create a missing bucket: never do that silently)
        p = root.rstrip("/")
        while p and not fs.exists(p):  # an empty prefix does not exist on an object store: its bucket must
            p = p.rsplit("/", 1)[0] if "/" in p else ""
        if not p:
            raise FileNotFoundError(f"no bucket or folder {root.split('/')[0]}")
    except Exception as e:  # every backend raises its own types for auth, network and missing buckets
        raise ConfigError(f"cache.root {url} cannot be reached ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                          f"check the bucket, the credentials and AWS_ENDPOINT_URL (or your cloud's equivalent)"
                          ) from None
