"""ArcFace family (``arcface-r50``): insightface's buffalo_l recogniser through onnxruntime.

Input geometry (option ``arcface_align``):

- ``"detect"`` (default): insightface's SCRFD detector (``det_10g.onnx``) finds 5 landmarks on
  the chip, then ``insightface.utils.face_align.norm_crop`` warps the chip to the 112x112
  ArcFace template. The chip is first padded with black borders (``PAD_FRACTION`` of its side
  on every edge): SCRFD misses faces that fill the whole frame (insightface #2165, #2782).
  The most central, largest face is kept (insightface's ``max_num=1`` rule).
- ``"center"``: no detection. The chip's central square of side ``CENTER_FRACTION`` x chip side
  is warped to 112x112 with the same bilinear ``cv2.warpAffine`` that ``norm_crop`` uses. Why
  one half: the chips are 512 px crops of the face box with a 0.5 margin on every side
  (``facechips512_m0.5``), so the face box is the central 1 / (1 + 2 * 0.5) = 0.5 of the chip,
  and the ArcFace template (eyes at y=51.6, mouth at y=92 of 112) spans about one detector face
  box. Override with option ``arcface_center_fraction`` for chips made differently.

Option ``no_face``: ``"record"`` (default) raises ``PreprocessFailure("no_face")`` so the row is
recorded, never silently embedded; ``"center"`` falls back to the centre crop (recorded in the
resolved spec).

Channel order: insightface's API takes cv2 BGR images and ``ArcFaceONNX.get_feat`` converts
them with ``cv2.dnn.blobFromImages(..., swapRB=True)``: the network itself reads RGB planes,
``(x - 127.5) / 127.5``. We keep the decoded RGB chip, align it (a per-channel warp) and feed
the same tensor ``get_feat`` builds; tests check parity with ``get_feat`` on BGR crops, and that
swapping channels changes the output. The detector, likewise, is given the BGR image.

Recognition is batched: one ``session.run`` on ``(B, 3, 112, 112)`` when the ONNX input has a
dynamic batch axis (buffalo_l's does); a fixed batch of 1 is looped and ``runtime()`` says so.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facestore.errors import DeviceError, PreprocessFailure, WeightsNotFoundError
from facestore.models.base import Encoder, library_versions, sha256_of_files
from facestore.models.spec import ModelSpec, Preprocessing
from facestore.models.weights import check_readable, describe_folder

log = logging.getLogger(__name__)

RECOGNISER_FILE = "w600k_r50.onnx"
DETECTOR_FILE = "det_10g.onnx"
PACK = "buffalo_l"
INPUT_SIZE = 112
PAD_FRACTION = 0.25
CENTER_FRACTION = 0.5
DET_SIZE = 640
DET_THRESH = 0.5
ALIGN_MODES = ("detect", "center")
NO_FACE_MODES = ("record", "center")

_GET_PACK = (
    f"insightface's {PACK} pack (non-commercial research licence) is not on this machine. Get it with "
    f"`python -c \"from insightface.app import FaceAnalysis; FaceAnalysis(name='{PACK}')\"` on a machine online "
    f"(it lands in ~/.insightface/models/{PACK}), or download {PACK}.zip from the insightface model zoo, unzip it "
    "and pass --weights DIR (a folder holding w600k_r50.onnx and det_10g.onnx)."
)


def default_pack_dir(root: str | Path = "~/.insightface") -> Path:
    """Where ``FaceAnalysis(name='buffalo_l')`` keeps the pack (insightface's default root)."""
    return Path(root).expanduser() / "models" / PACK


def find_pack_files(weights: str | Path | None, *, default_dir: Path | None = None) -> tuple[Path, Path | None]:
    """``(recogniser.onnx, detector.onnx or None)`` inside ``weights`` (or insightface's default pack)."""
    if weights is not None:
        directory = Path(weights).expanduser()
    else:
        directory = default_dir if default_dir is not None else default_pack_dir()
    if directory.is_file() and directory.suffix == ".onnx":
        rec, directory = directory, directory.parent
    elif not directory.is_dir():
        where = f"--weights {str(directory)!r} does not exist" if weights is not None else _GET_PACK
        raise WeightsNotFoundError(f"arcface: {where}")
    else:
        rec = directory / RECOGNISER_FILE
        if not rec.is_file():
            onnx_files = sorted(p for p in directory.glob("*.onnx") if not p.name.startswith("det_"))
            recognisers = [p for p in onnx_files if _is_recogniser(p)]
            if len(recognisers) != 1:
                raise WeightsNotFoundError(
                    f"arcface: {str(directory)!r} must hold {RECOGNISER_FILE} (or exactly one recognition .onnx) and, "
                    f"to detect faces, {DETECTOR_FILE}; {describe_folder(directory)}. {_GET_PACK}"
                )
            rec = recognisers[0]
    det = directory / DETECTOR_FILE
    if not det.is_file():
        dets = sorted(directory.glob("det_*.onnx"))
        det = dets[0] if len(dets) == 1 else None
    return rec, det


def _is_recogniser(path: Path) -> bool:
    """A recognition ONNX has one NCHW input of 112 (or 128) square pixels and one output."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if len(model.graph.input) < 1 or len(model.graph.output) != 1:
        return False
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return len(dims) == 4 and dims[2].dim_value == dims[3].dim_value and dims[2].dim_value in (112, 128)


def providers_for(device: str) -> tuple[list[Any], str]:
    """onnxruntime providers for ``auto|cpu|cuda|cuda:N``, and the device they stand for.

    Raises DeviceError when CUDA is asked for and this onnxruntime has no CUDA provider.
    """
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"], "cpu"
    if device == "auto":
        if "CUDAExecutionProvider" in available:
            return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], "cuda:0"
        log.info("arcface: onnxruntime has no CUDA provider (available: %s); running on CPU", available)
        return ["CPUExecutionProvider"], "cpu"
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if "CUDAExecutionProvider" not in available:
            raise DeviceError(_cuda_provider_message(device, available))
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], f"cuda:{index}"
    raise DeviceError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")


def _cuda_provider_message(device: str, providers: list[str]) -> str:
    import onnxruntime

    return (
        f"device {device!r} requested for ArcFace but onnxruntime {onnxruntime.__version__} runs only {providers}. "
        "insightface depends on the CPU package `onnxruntime`, which installed beside `onnxruntime-gpu` hides the "
        "CUDA provider. Fix: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu "
        "(matching your CUDA), then check `facestore doctor`. Or pass --device cpu."
    )


def _options(spec: ModelSpec, options: dict[str, Any]) -> dict[str, Any]:
    merged = {**dict(spec.options), **options}
    align = merged.get("arcface_align", "detect")
    no_face = merged.get("no_face", "record")
    fraction = float(merged.get("arcface_center_fraction", CENTER_FRACTION))
    if align not in ALIGN_MODES:
        raise ValueError(f"arcface_align must be one of {ALIGN_MODES}, got {align!r}")
    if no_face not in NO_FACE_MODES:
        raise ValueError(f"no_face must be one of {NO_FACE_MODES}, got {no_face!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"arcface_center_fraction must be in (0, 1], got {fraction}")
    unknown = set(merged) - {"arcface_align", "no_face", "arcface_center_fraction"}
    if unknown:
        raise ValueError(f"unknown ArcFace options {sorted(unknown)}; known: arcface_align, no_face, "
                         "arcface_center_fraction")
    return {"arcface_align": align, "no_face": no_face, "arcface_center_fraction": fraction}


def center_crop_matrix(height: int, width: int, *, fraction: float, size: int = INPUT_SIZE) -> np.ndarray:
    """The 2x3 affine matrix mapping the chip's central ``fraction`` square onto ``size`` x ``size``.

    Pixel centres are aligned (``x_dst + 0.5 = s * (x_src + 0.5 - x0)``), so the warp equals
    ``cv2.resize(chip[y0:y0+side, x0:x0+side], (size, size), interpolation=cv2.INTER_LINEAR)``.
    """
    side = fraction * min(height, width)
    s = size / side
    x0 = (width - side) / 2.0
    y0 = (height - side) / 2.0
    return np.array([[s, 0.0, s * (0.5 - x0) - 0.5], [0.0, s, s * (0.5 - y0) - 0.5]], dtype=np.float64)


# Detector sessions inherited through fork, kept alive on purpose (see ArcFacePreprocessor.detector).
_FORKED_SESSIONS: list[Any] = []


def _in_dataloader_worker() -> bool:
    try:
        import torch.utils.data

        return torch.utils.data.get_worker_info() is not None
    except ImportError:
        return False


class ArcFacePreprocessor:
    """Picklable: uint8 RGB chip ``(H, W, 3)`` -> the aligned ``uint8 (3, 112, 112)`` RGB crop.

    Normalisation, ``(x - 127.5) / 127.5``, happens in :meth:`ArcFaceEncoder.encode`, so a
    quarter of the bytes cross from the decode workers. The detector session is created lazily
    in the process that calls it (a DataLoader worker, or the main process with ``--workers 0``),
    on ``detector_device``: the CUDA provider when the build runs on CUDA and onnxruntime has it,
    else the CPU provider. In a worker it gets one intra-op thread (one worker per core already
    fills the CPU; onnxruntime's default pool per worker would oversubscribe it). Pickling drops
    the session.
    """

    def __init__(self, *, align: str, no_face: str, center_fraction: float, detector_path: str | None,
                 input_mean: float, input_std: float, detector_device: str = "cpu") -> None:
        if align == "detect" and detector_path is None:
            raise ValueError("arcface_align='detect' needs a detector ONNX")
        self.align = align
        self.no_face = no_face
        self.center_fraction = center_fraction
        self.detector_path = detector_path
        self.input_mean = input_mean
        self.input_std = input_std
        self.detector_device = detector_device if align == "detect" else "cpu"
        self._detector: Any = None
        self._detector_info: dict[str, Any] | None = None
        self._detector_pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_detector"] = None  # onnxruntime sessions are per process
        state["_detector_info"] = None
        return state

    @property
    def output_nbytes(self) -> int:
        return 3 * INPUT_SIZE * INPUT_SIZE

    @property
    def uses_cuda_in_workers(self) -> bool:
        """A CUDA detector in decode workers: they must be spawned, not forked from a CUDA process."""
        return self.align == "detect" and self.detector_device.startswith("cuda")

    def draft_min_side(self) -> int | None:
        """Detection wants the full chip (None); the centre crop needs 112 / fraction pixels."""
        if self.align == "detect":
            return None
        return int(np.ceil(INPUT_SIZE / self.center_fraction))

    def detector(self) -> Any:
        """insightface's SCRFD on ``detector_device``, created on first use in this process."""
        if self._detector is not None and self._detector_pid != os.getpid():
            # Inherited through fork (a DataLoader worker of a process that had already detected):
            # onnxruntime's thread pool does not survive a fork, so this process makes its own.
            # The inherited session is kept, never destroyed: its destructor would wait forever
            # on the parent's pool threads, which do not exist here.
            _FORKED_SESSIONS.append(self._detector)
            self._detector, self._detector_info = None, None
        if self._detector is None:
            import onnxruntime
            from insightface.model_zoo.scrfd import SCRFD

            options = onnxruntime.SessionOptions()
            in_worker = _in_dataloader_worker()
            if in_worker:
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
            providers, _ = providers_for(self.detector_device)
            session = onnxruntime.InferenceSession(self.detector_path, sess_options=options, providers=providers)
            det = SCRFD(model_file=self.detector_path, session=session)
            on_cuda = "CUDAExecutionProvider" in session.get_providers()
            # ctx_id < 0 makes insightface force the CPU provider; >= 0 keeps the session's own.
            det.prepare(0 if on_cuda else -1, input_size=(DET_SIZE, DET_SIZE), det_thresh=DET_THRESH)
            running = list(det.session.get_providers())
            if self.detector_device.startswith("cuda") and "CUDAExecutionProvider" not in running:
                log.warning("arcface: the detector's CUDA provider failed to load in this process; it runs on %s",
                            running)
            self._detector_info = {
                "providers": running,
                "intra_op_threads": int(options.intra_op_num_threads),  # 0: onnxruntime's default pool
                "process": "decode worker" if in_worker else "main process",
            }
            log.info("arcface: detector %s in the %s runs on %s", Path(self.detector_path).name,
                     self._detector_info["process"], running)
            self._detector = det
            self._detector_pid = os.getpid()
        return self._detector

    def runtime_info(self) -> dict[str, Any] | None:
        """What the detector of this process actually runs on (None before its first use here)."""
        if self._detector_info is None or self._detector_pid != os.getpid():
            return None
        return dict(self._detector_info)

    def landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        """5 landmarks ``(5, 2)`` in chip pixels, or None when no face is found."""
        import cv2

        h, w = rgb.shape[:2]
        pad = int(round(PAD_FRACTION * max(h, w)))
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        padded = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        _, kpss = self.detector().detect(padded, max_num=1)
        if kpss is None or len(kpss) == 0:
            return None
        return (kpss[0] - pad).astype(np.float32)

    def aligned(self, rgb: np.ndarray) -> np.ndarray:
        """The aligned 112x112 uint8 RGB crop (raises PreprocessFailure('no_face'))."""
        import cv2
        from insightface.utils import face_align

        if self.align == "detect":
            kps = self.landmarks(rgb)
            if kps is not None:
                with warnings.catch_warnings():
                    # insightface's estimate_norm calls skimage's SimilarityTransform.estimate, which
                    # skimage >= 0.26 deprecates (FutureWarning per call); the result is unchanged.
                    warnings.filterwarnings("ignore", message=".*estimate.*deprecated", category=FutureWarning)
                    return face_align.norm_crop(rgb, kps, image_size=INPUT_SIZE)
            if self.no_face == "record":
                raise PreprocessFailure("no_face", "insightface's detector found no face on the padded chip")
        m = center_crop_matrix(rgb.shape[0], rgb.shape[1], fraction=self.center_fraction)
        # Same resampling as norm_crop (bilinear warpAffine, black border), so the two paths
        # differ only in geometry.
        return cv2.warpAffine(rgb, m, (INPUT_SIZE, INPUT_SIZE), borderValue=0.0)

    def __call__(self, image: np.ndarray) -> Any:
        import torch

        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"ArcFacePreprocessor expects a uint8 RGB array (H, W, 3), got "
                             f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
        crop = self.aligned(np.ascontiguousarray(image))
        return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``(..., 3, 112, 112)`` -> float32 ``(x - mean) / std``, the tensor ``get_feat`` builds."""
        return (np.asarray(pixels).astype(np.float32) - np.float32(self.input_mean)) / np.float32(self.input_std)


class ArcFaceEncoder(Encoder):
    """ArcFace recogniser on onnxruntime; view ``embedding`` is the raw (unnormalised) output."""

    def __init__(self, spec: ModelSpec, *, session: Any, preprocessor: ArcFacePreprocessor,
                 preprocessing: Preprocessing, weights: dict[str, Any], options: dict[str, Any],
                 alignment: dict[str, Any], dim: int, device: str) -> None:
        self.spec = spec
        self.session = session
        self._preprocessor = preprocessor
        self._preprocessing = preprocessing
        self._weights = weights
        self._options = options
        self._alignment = alignment
        self._dim = dim
        self._device = device
        inp = session.get_inputs()[0]
        self._input_name = inp.name
        self._output_name = session.get_outputs()[0].name
        self.dynamic_batch = not isinstance(inp.shape[0], int)

    def preprocessor(self) -> Callable[[np.ndarray], Any]:
        """Detection/centre alignment + normalisation; picklable, detector created per worker."""
        return self._preprocessor

    def model_input(self, batch: Any) -> np.ndarray:
        """uint8 aligned crops ``(B, 3, 112, 112)`` -> the normalised float32 array the ONNX graph takes."""
        import torch

        x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        if x.dtype != np.uint8:
            raise TypeError(f"ArcFaceEncoder.encode takes the preprocessor's uint8 crops, got {x.dtype}")
        return np.ascontiguousarray(self._preprocessor.normalise(x))

    def encode(self, batch: Any) -> dict[str, Any]:
        """One ``session.run`` per batch (per image for a fixed-batch-1 ONNX); float32 CPU tensors."""
        import torch

        x = self.model_input(batch)
        if self.dynamic_batch:
            out = self.session.run([self._output_name], {self._input_name: x})[0]
        else:
            out = np.concatenate([self.session.run([self._output_name], {self._input_name: x[i:i + 1]})[0]
                                  for i in range(len(x))]) if len(x) else np.zeros((0, self._dim), np.float32)
        return {"embedding": torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))}

    def resolved_spec(self) -> dict[str, Any]:
        """Registry spec + ArcFace preprocessing, alignment, weights sha256, precision, versions."""
        d = self.spec.to_dict()
        d["views"] = {"embedding": self._dim}
        d["preprocessing"] = self._preprocessing.to_dict()
        d["options"] = dict(self._options)
        d["alignment"] = dict(self._alignment)
        d["weights"] = dict(self._weights)
        d["precision"] = "fp32"  # the ONNX graph's own float32; onnxruntime does not autocast
        import onnxruntime

        # The onnxruntime module's version: the same whether it came from onnxruntime or onnxruntime-gpu.
        d["versions"] = {**library_versions("insightface", "opencv-python", "facestore"),
                         "onnxruntime": onnxruntime.__version__}
        return d

    def runtime(self) -> dict[str, Any]:
        """Device, recogniser providers that actually run, batching, detector provider."""
        return {
            "device": self._device,
            "precision": "fp32",
            "providers": list(self.session.get_providers()),
            "batching": "dynamic batch: one session.run per batch" if self.dynamic_batch
            else "fixed batch 1 in the ONNX: one session.run per image",
            # What the detector was asked to run on; the build reports what its sessions ran on.
            "detector_device": self._preprocessor.detector_device if self._options["arcface_align"] == "detect"
            else None,
        }


def load(spec: ModelSpec, *, weights: Any, device: str, precision: str, options: dict[str, Any]) -> Encoder:
    """Load the ArcFace recogniser (and the detector for ``arcface_align='detect'``)."""
    import onnxruntime
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    if precision not in ("auto", "fp32"):
        raise ValueError(f"ArcFace runs its ONNX graph in float32; precision {precision!r} is not available "
                         "(use auto or fp32)")
    opts = _options(spec, options)
    rec_path, det_path = find_pack_files(weights)
    check_readable(spec.name, [rec_path] + ([det_path] if det_path is not None else []))
    if opts["arcface_align"] == "detect" and det_path is None:
        raise WeightsNotFoundError(
            f"arcface: arcface_align='detect' needs the detector {DETECTOR_FILE} next to {rec_path.name} in "
            f"{str(rec_path.parent)!r}; add it from the {PACK} pack, or use --arcface-align center"
        )
    providers, dev = providers_for(device)
    session = onnxruntime.InferenceSession(str(rec_path), providers=providers)
    running = session.get_providers()
    if dev.startswith("cuda") and "CUDAExecutionProvider" not in running:
        if device == "auto":
            log.warning("arcface: CUDA provider failed to load; running on %s", running)
            dev = "cpu"
        else:
            raise DeviceError(_cuda_provider_message(device, running))
    log.info("arcface: recogniser %s on providers %s", rec_path.name, running)
    # insightface's own reading of the graph: mean/std 127.5 unless normalisation is built in.
    reference = ArcFaceONNX(model_file=str(rec_path), session=session)
    if tuple(reference.input_size) != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"arcface: {rec_path.name} takes {reference.input_size} inputs; facestore aligns to "
                         f"{INPUT_SIZE}x{INPUT_SIZE}")
    dim = reference.output_shape[-1]
    if not isinstance(dim, int):
        raise ValueError(f"arcface: {rec_path.name} has a symbolic embedding size {dim!r}")
    mean, std = float(reference.input_mean), float(reference.input_std)
    preprocessing = Preprocessing(
        size=(INPUT_SIZE, INPUT_SIZE), resize="aligned", interpolation="bilinear",
        mean=(mean / 255.0,) * 3, std=(std / 255.0,) * 3, rescale=1.0 / 255.0, channel_order="RGB",
        source="insightface-arcface-onnx",
    )
    use_detector = opts["arcface_align"] == "detect"
    files = [rec_path] + ([det_path] if use_detector else [])
    weights_id = {"kind": "local", "path_name": rec_path.parent.name, "recogniser": rec_path.name,
                  "detector": det_path.name if use_detector else None, "sha256": sha256_of_files(files)}
    alignment = {
        "method": "detect+norm_crop" if use_detector else "center",
        "no_face": opts["no_face"] if use_detector else "n/a (no detection)",
        "no_face_fallback": "center crop" if use_detector and opts["no_face"] == "center" else None,
        "pad_fraction": PAD_FRACTION if use_detector else None,
        "det_size": DET_SIZE if use_detector else None,
        "det_thresh": DET_THRESH if use_detector else None,
        "center_fraction": opts["arcface_center_fraction"],
        "input_image_order": "RGB tensor (insightface's BGR API swaps to RGB before the network)",
    }
    preprocessor = ArcFacePreprocessor(
        align=opts["arcface_align"], no_face=opts["no_face"], center_fraction=opts["arcface_center_fraction"],
        detector_path=str(det_path) if use_detector else None, input_mean=mean, input_std=std,
        # The detector follows the recogniser: on CUDA when the build runs there.
        detector_device=dev if dev.startswith("cuda") else "cpu",
    )
    return ArcFaceEncoder(spec, session=session, preprocessor=preprocessor, preprocessing=preprocessing,
                          weights=weights_id, options=opts, alignment=alignment, dim=int(dim), device=dev)
