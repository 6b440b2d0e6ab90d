"""``qgn export``: the network of a checkpoint as an ONNX graph, for serving runtimes.

What goes into the graph is ``QGNModel.forward`` in inference mode: both encoders, HVLA, MQA, MQD
and the four heads. In: ``input_ids``, ``attention_mask``, ``word_index`` (B, S) int64,
``word_mask`` (B, W) bool and, unless the model is text-only, ``pixel_values`` (B, 3, H, H)
float32; batch, sub-word and word lengths are dynamic. Out: ``type_logits``, ``start_logits``,
``end_logits`` and, with images, ``pred_boxes`` and ``notarget_logits``.

What stays in Python: turning text into those inputs (word splitting, the tokenizer, the word map;
``qgn.data.pipeline``), resizing and normalising the image (``ImageTransform``), and the
post-processor (best span per query, thresholds, pixel boxes; ``qgn.modeling.postprocess``), which
reads the graph's outputs as it reads PyTorch's (:func:`onnx_outputs`); :func:`load_onnx` puts the
graph behind a ``qgn.load``-style predictor (``qgn predict --onnx``). Hungarian matching and the
losses are for training only and are not exported.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from qgn.errors import QGNError

logger = logging.getLogger(__name__)

TEXT_INPUTS = ("input_ids", "attention_mask", "word_index", "word_mask")
TEXT_OUTPUTS = ("type_logits", "start_logits", "end_logits")
IMAGE_OUTPUTS = ("pred_boxes", "notarget_logits")


def input_names(config: Any) -> tuple[str, ...]:
    if config.text_only:
        return TEXT_INPUTS
    # a padded image (image_geometry "pad") says which pixels are its own
    padded = getattr(config, "image_geometry", "stretch") == "pad"
    return (*TEXT_INPUTS, "pixel_values", "pixel_mask") if padded else (*TEXT_INPUTS, "pixel_values")


def output_names(config: Any) -> tuple[str, ...]:
    return TEXT_OUTPUTS if config.text_only else (*TEXT_OUTPUTS, *IMAGE_OUTPUTS)


def _graph_module(model: Any) -> Any:
    import torch

    names = output_names(model.config)

    class Graph(torch.nn.Module):
        """``QGNModel.forward`` with positional inputs and a tuple of outputs, as exporters want."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            word_index: torch.Tensor,
            word_mask: torch.Tensor,
            pixel_values: torch.Tensor | None = None,
            pixel_mask: torch.Tensor | None = None,
        ) -> tuple[torch.Tensor, ...]:
            outputs = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                word_index=word_index,
                word_mask=word_mask,
                pixel_values=pixel_values,
                pixel_mask=pixel_mask,
            )
            return tuple(outputs[name] for name in names)

    return Graph().eval()


def example_inputs(predictor: Any) -> dict[str, Any]:
    """A two-post batch built the way prediction builds it (the exporter traces with it)."""
    from PIL import Image

    from qgn.data.pipeline import Collator, GMNERDataset, model_inputs

    image = None if predictor.config.text_only else Image.new("RGB", (64, 48), (120, 160, 200))
    pairs = [
        predictor.make_post("Anna met the Blue Comets in Paris", image, "0"),
        predictor.make_post("Hugo", image, "1"),
    ]
    dataset = GMNERDataset(
        [p for p, _ in pairs],
        predictor.tokenizer,
        predictor.config,
        image_transform=predictor.image_transform,
        text_only=predictor.config.text_only,
        images=[i for _, i in pairs],
    )
    batch = Collator(predictor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    return model_inputs(batch)


def export_onnx(checkpoint: str, output: str | Path, opset: int | None = None) -> Path:
    """Export ``checkpoint``'s network to ``output`` (ONNX, dynamic batch and text lengths)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; a clear message beats its ImportError)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise QGNError(f"qgn export needs the onnx extra: pip install 'qgn[onnx]' ({err})") from None
    import torch

    from qgn.api import load

    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise QGNError(f"--output {output}: give a file name ending in .onnx")
    output.parent.mkdir(parents=True, exist_ok=True)
    predictor = load(checkpoint, device="cpu")
    inputs = example_inputs(predictor)
    names = input_names(predictor.config)
    args = tuple(inputs[name] for name in names)
    batch = torch.export.Dim("batch", min=1, max=4096)
    subwords = torch.export.Dim("subwords", min=2, max=predictor.config.max_text_length)
    words = torch.export.Dim("words", min=1, max=predictor.config.max_text_length)
    shapes = {
        "input_ids": {0: batch, 1: subwords},
        "attention_mask": {0: batch, 1: subwords},
        "word_index": {0: batch, 1: subwords},
        "word_mask": {0: batch, 1: words},
        "pixel_values": {0: batch},
        "pixel_mask": {0: batch},
    }
    chatter = io.StringIO()  # the exporter prints its progress; keep it for -v
    with torch.no_grad(), contextlib.redirect_stdout(chatter), _quiet_exporter():
        torch.onnx.export(
            _graph_module(predictor.model),
            args,
            str(output),
            dynamo=True,
            input_names=list(names),
            output_names=list(output_names(predictor.config)),
            dynamic_shapes={name: shapes[name] for name in names},
            opset_version=opset,
        )
    logger.debug("%s", chatter.getvalue())
    return output


# The exporter's own loggers: hundreds of INFO lines per export (one per deduplicated weight).
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """The exporter's INFO logging and warnings only with -v (a DEBUG root logger)."""
    import warnings

    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def written_files(output: Path) -> list[Path]:
    """The graph and, for graphs whose weights are stored beside it, ``NAME.onnx.data``."""
    data = output.with_name(output.name + ".data")
    return [output, data] if data.is_file() else [output]


def onnx_outputs(session: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run an onnxruntime ``session`` on a batch's model inputs (torch tensors); returns the
    outputs as torch tensors, keyed as ``QGNModel.forward``'s, ``word_mask`` included, ready for
    the post-processor."""
    import torch

    wanted = [i.name for i in session.get_inputs()]
    feeds = {name: inputs[name].cpu().numpy() for name in wanted}
    feeds["word_mask"] = feeds["word_mask"].astype(bool)
    values = session.run(None, feeds)
    outputs = {o.name: torch.from_numpy(v) for o, v in zip(session.get_outputs(), values)}
    outputs["word_mask"] = inputs["word_mask"].bool().cpu()
    return outputs


def load_onnx(onnx_file: str | Path, checkpoint: str | Path, **thresholds: Any) -> Any:
    """A :class:`qgn.api.Predictor` whose network is the exported graph, run by onnxruntime on the
    CPU: ``checkpoint`` (the folder it was exported from) gives the config, tokenizer, image
    transform and post-processor, so ``predict``, ``predict_posts`` and ``qgn predict --onnx`` give
    the PyTorch path's entities. ``thresholds`` override the checkpoint's, as for ``qgn.load``."""
    from transformers import AutoTokenizer

    from qgn.api import Predictor, checkpoint_folder
    from qgn.data.pipeline import ImageTransform
    from qgn.modeling import QGNConfig
    from qgn.modeling.postprocess import PostProcessor

    folder = checkpoint_folder(checkpoint)
    config = QGNConfig.load(folder / "config.json")
    model = OnnxModel(onnx_file, config)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    transform = None if config.text_only else ImageTransform.load(folder)
    return Predictor(model, tokenizer, transform, PostProcessor(config, **thresholds), torch.device("cpu"), "no")


class OnnxModel(torch.nn.Module):
    """An exported graph behind ``QGNModel.forward``'s interface (keyword inputs, a dict of
    outputs), which is all the prediction loop asks of a model."""

    def __init__(self, onnx_file: str | Path, config: Any):
        super().__init__()
        try:
            import onnxruntime
        except ImportError as err:
            raise QGNError(f"--onnx needs the onnx extra: pip install 'qgn[onnx]' ({err})") from None
        path = Path(onnx_file)
        if not path.is_file():
            raise QGNError(f"--onnx {path}: no such file (qgn export --format onnx writes one)")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own kinds for a bad file
            raise QGNError(
                f"--onnx {path}: onnxruntime cannot load it ({str(err).splitlines()[0][:200]}); is its "
                "NAME.onnx.data beside it, and is it a graph qgn export wrote?"
            ) from None
        self.config = config
        graph_inputs = [i.name for i in self.session.get_inputs()]
        if set(graph_inputs) != set(input_names(config)) or [o.name for o in self.session.get_outputs()] != list(
            output_names(config)
        ):
            raise QGNError(
                f"--onnx {path} takes {graph_inputs}, but the checkpoint's model takes "
                f"{list(input_names(config))}: export the graph from this checkpoint"
            )

    def forward(self, **inputs: Any) -> dict[str, Any]:
        return onnx_outputs(self.session, inputs)


# ----------------------------------------------------------------------------- CLI
def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint's network (ONNX) for serving runtimes",
        description="Export the network of a checkpoint. Tokenising, image preprocessing and the post-processor "
        "stay in Python (qgn.export's docstring and docs/architecture.md say what is where). Needs the onnx "
        "extra: pip install 'qgn[onnx]'.",
    )
    p.add_argument("--checkpoint", required=True, help="a QGN checkpoint folder (a run's best/) or a hub repo id")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="only onnx for now")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.set_defaults(func=_main)


def _main(args: Any) -> int:
    import sys

    path = export_onnx(args.checkpoint, args.output, args.opset)
    files = written_files(path)
    shown = " and ".join(f"{f} ({f.stat().st_size / 1e6:.1f} MB)" for f in files)
    together = "; the graph reads its weights from the .data file: keep the two together" if len(files) > 1 else ""
    print(
        f"exported {args.checkpoint} to {shown}{together}. Predict with it: qgn predict --onnx {path} "
        f"--checkpoint {args.checkpoint} ...",
        file=sys.stderr,
    )
    return 0
