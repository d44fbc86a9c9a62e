"""The model card (README.md) of a pretrained folder: Hub metadata in YAML, then what the model is and how it was made.

Built with ``huggingface_hub.ModelCard`` / ``ModelCardData`` from ``CardFacts``, every number measured by the caller
(``hub.save_pretrained``): the architecture, the data, bits per byte on held-out text beside gzip/bzip2/xz on the
same bytes, the loss curve (a PNG next to the card, linked relatively) and the command line or tool calls that
trained it (``provenance.py``).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from .config import RunConfig
from .provenance import Invocation, Provenance

LIBRARY = "bit-transformer"
COMPRESSOR_FLAGS = {"gzip": "gzip -9", "bzip2": "bzip2 -9", "xz": "xz -9e"}


class DataFacts(BaseModel):
    """The training corpus as loaded (``data.Corpus``), or only its config when it could not be loaded."""

    source: str = Field(description="Where the text came from: the data source, file names or the Hub dataset.")
    n_bytes: int | None = None
    train_bytes: int | None = None
    val_bytes: int | None = None


class Measured(BaseModel):
    """Bits per byte of the model and of the compressors on the same held-out bytes."""

    bits_per_byte: float
    compressors: dict[str, float] = Field(default_factory=dict)
    eval_bytes: int
    context_bytes: int = Field(0, description="Training bytes the compressors saw first.")
    bound: bool = Field(False, description="True for a denoising model: an upper bound (NELBO).")


class CardFacts(BaseModel):
    name: str = Field(description="The repo id (or the folder's name).")
    config: RunConfig
    params: int
    ema: bool = Field(description="The weights are the run's exponential moving average.")
    update: int | None = None
    val_bpb: float | None = Field(None, description="The checkpoint's last validation during training.")
    data: DataFacts
    measured: Measured | None = None
    not_measured: str | None = Field(None, description="Why there is no measurement (no data, eval_bytes=0).")
    curve: str | None = Field(None, description="The loss-curve PNG, relative to the card.")
    provenance: Provenance = Field(default_factory=Provenance)


def _metadata(f: CardFacts):
    from huggingface_hub import EvalResult, ModelCardData

    m, d = f.config.model, f.config.data
    results = None
    if f.measured is not None:
        results = [EvalResult(task_type="text-generation", dataset_type=d.hf_name if d.source == "hf" else d.source,
                              dataset_name=f"{f.data.source} (held out)", dataset_split="validation",
                              metric_type="bits_per_byte", metric_name="bits per byte",
                              metric_value=round(f.measured.bits_per_byte, 4))]
    return ModelCardData(
        library_name=LIBRARY, license="mit", pipeline_tag="text-generation", model_name=f.name,
        tags=["bit-level", "byte-level", "bittransformerlm", "safetensors", f"arch-{m.arch}", f"block-{m.block}"],
        datasets=[d.hf_name] if d.source == "hf" else None, metrics=["bits_per_byte"], eval_results=results,
    )


def _architecture(f: CardFacts) -> list[str]:
    m = f.config.model
    kind = "causal next-bit model" if m.causal else "bidirectional denoising model"
    return [
        "## Architecture", "",
        f"BitTransformerLM, a {kind} over 9 bits per byte (8 data bits and a parity bit).", "",
        "| | |", "|---|---|",
        f"| arch | {m.arch} |", f"| block | {m.block} |", f"| layers | {m.layers} |",
        f"| width (d_model) | {m.d_model} |",
        f"| heads | {m.nhead} |", f"| context | {m.max_seq_len} bits ({m.max_seq_len // 9} bytes) |",
        f"| parameters | {f.params:,} |",
        f"| weights | {'EMA average of the training weights' if f.ema else 'the training weights'} |",
        "",
    ]


def _data(f: CardFacts) -> list[str]:
    d = f.data
    lines = ["## Data", "", f"Source: `{d.source}`."]
    if d.n_bytes is not None:
        lines.append(f"{d.n_bytes:,} bytes: {d.train_bytes:,} for training, {d.val_bytes:,} held out "
                     f"(the last {f.config.data.val_fraction:.0%}).")
    if f.update is not None:
        lines.append(f"Trained for {f.update:,} optimizer updates"
                     + (f"; validation during training: {f.val_bpb:.4f} bits per byte." if f.val_bpb else "."))
    return [*lines, ""]


def _results(f: CardFacts) -> list[str]:
    lines = ["## Bits per byte", ""]
    m = f.measured
    if m is None:
        return [*lines, f"Not measured: {f.not_measured or 'no held-out text'}.", ""]
    what = "upper bound (NELBO)" if m.bound else "next-bit code length"
    lines += [f"On {m.eval_bytes:,} held-out bytes (the start of the validation split), lower is better; the "
              f"compressors are charged for the same bytes after seeing {m.context_bytes:,} training bytes.", "",
              "| model | bits per byte |", "|---|---|", f"| this model ({what}) | {m.bits_per_byte:.4f} |"]
    lines += [f"| {COMPRESSOR_FLAGS.get(k, k)} | {v:.4f} |" for k, v in m.compressors.items()]
    return [*lines, ""]


def _call(call) -> str:
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in call.arguments.items())
    return f"{call.tool}({args})"


def _invocation(inv: Invocation) -> list[str]:
    if inv.via == "cli":
        return ["```bash", inv.command or "", "```"]
    head = [f"MCP job `{inv.job}`:"] if inv.job else []
    return [*head, "```python", *(_call(c) for c in inv.tool_calls), "```"]


def _made_by(f: CardFacts) -> list[str]:
    lines = ["## How it was made", ""]
    calls = f.provenance.invocations
    if not calls:
        return [*lines, "Not recorded (the run predates provenance records).", ""]
    if len(calls) > 1:
        lines += [f"Trained in {len(calls)} sessions (later ones resume the run), in order:", ""]
    for inv in calls:
        lines += [*_invocation(inv), ""]
    return lines


def build_card(f: CardFacts):
    """The ``huggingface_hub.ModelCard`` for ``f``."""
    from huggingface_hub import ModelCard

    body = [f"# {f.name}", "", "A bit-level language model trained with BitTransformerLM.", ""]
    body += _architecture(f) + _data(f) + _results(f)
    if f.curve:
        body += ["## Loss curve", "", f"![Training and validation bits per byte]({f.curve})", ""]
    body += _made_by(f)
    body += ["## Use", "", "```bash", f"bit-transformer pull {f.name} --out model",
             "bit-transformer generate --checkpoint model --prompt 'Hello'", "```", "",
             "```python", "from bit_transformer.hub import from_pretrained", "",
             f"model, config = from_pretrained({f.name!r})", "```", ""]
    return ModelCard(f"---\n{_metadata(f).to_yaml()}\n---\n\n" + "\n".join(body))
