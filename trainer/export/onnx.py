"""Our parameters → an ONNX decoder with a KV cache (`model.onnx`) that onnxruntime runs, and its check.

Graph inputs and outputs follow the layout Hugging Face Optimum gives decoder-only models, so ONNX tooling that knows it
(onnxruntime-genai, transformers.js) finds what it expects:

    input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64, position_ids [batch, seq] int64,
    past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]
      → logits [batch, seq, vocab], present.{i}.key / .value [batch, kv_heads, past + seq, head_dim]

Why not Optimum: optimum-onnx 0.1.0 requires transformers < 4.58 and can't be installed beside transformers 5.
Why a small torch decoder here rather than transformers' `LlamaForCausalLM`: tracing that model means tracing its cache
classes and mask builders, whose internals change from release to release (and need the `attention_mask` workaround for
`aten::diff`); the forward pass below is the LLaMA of `trainer.model` in 40 lines of torch, traced once by
`torch.onnx.export(dynamo=False, opset_version=17)`, and the parity check proves it computes our logits.
float16 files are the float32 graph converted by onnxruntime's own converter (inputs and outputs stay float32).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import numpy as np

from trainer.config import ModelConfig
from trainer.errors import ConversionError
from trainer.export import mapping, parity
from trainer.model import rope

OPSET = 17
FILENAME = "model.onnx"
DATA_FILENAME = "model.onnx_data"  # weights beside the graph: protobuf caps a file at 2 GB
DTYPES = ("float32", "float16")


def check_installed() -> None:
    """Fail in one line, before any work, when onnx or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise ConversionError('the ONNX export needs torch, onnx and onnxruntime: pip install -e ".[onnx]"') from None


def _decoder(model: ModelConfig, params: dict[str, Any]) -> Any:
    """A torch module computing our model's forward pass with explicit past keys/values.

    Projections are held [in, out] as our params hold them (HF's [out, in] transposed back): float32 params are then
    shared with the torch module, not copied, and the graph multiplies by them with no Transpose to fold.
    """
    import torch
    from torch import nn

    hd, heads, kv_heads = model.resolved_head_dim, model.num_heads, model.num_kv_heads
    weights = {}
    for name, w in mapping.to_hf(params, model):
        w = np.asarray(w, np.float32)
        ours = w.T if w.ndim == 2 and name != "model.embed_tokens.weight" else w  # [in, out]
        weights[name] = torch.from_numpy(np.ascontiguousarray(ours))
    inv_freq = torch.from_numpy(rope.inverse_frequencies(model, np.float64))  # scaling included (model.rope)
    rope_scale = rope.attention_factor(model)  # yarn's factor on cos/sin; 1 otherwise

    def rms_norm(x: Any, scale: Any) -> Any:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + model.norm_eps) * scale

    def rotate(x: Any, cos: Any, sin: Any) -> Any:  # halves, as trainer.model and HF
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, w in weights.items():
                self.register_buffer(name.replace(".", "__"), w)
            self.register_buffer("inv_freq", inv_freq.float())

        def w(self, name: str) -> Any:
            return getattr(self, name.replace(".", "__"))

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
            batch, seq = input_ids.shape
            x = torch.nn.functional.embedding(input_ids, self.w("model.embed_tokens.weight"))
            angles = position_ids.float()[..., None] * self.inv_freq  # [batch, seq, hd/2]
            angles = torch.cat((angles, angles), dim=-1)[:, None]
            cos, sin = angles.cos() * rope_scale, angles.sin() * rope_scale
            total = attention_mask.shape[1]
            past_len = total - seq
            query_pos = torch.arange(seq)[:, None] + past_len
            allowed = (torch.arange(total)[None, :] <= query_pos)[None, None] & (attention_mask[:, None, None, :] > 0)
            bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
            present = []
            for i in range(model.num_layers):
                p = f"model.layers.{i}."
                h = rms_norm(x, self.w(p + "input_layernorm.weight"))
                q = (h @ self.w(p + "self_attn.q_proj.weight")).view(batch, seq, heads, hd).transpose(1, 2)
                k = (h @ self.w(p + "self_attn.k_proj.weight")).view(batch, seq, kv_heads, hd).transpose(1, 2)
                v = (h @ self.w(p + "self_attn.v_proj.weight")).view(batch, seq, kv_heads, hd).transpose(1, 2)
                q, k = rotate(q, cos, sin), rotate(k, cos, sin)
                k, v = torch.cat((past[2 * i], k), dim=2), torch.cat((past[2 * i + 1], v), dim=2)
                present += [k, v]
                k = k.repeat_interleave(heads // kv_heads, dim=1)
                v = v.repeat_interleave(heads // kv_heads, dim=1)
                scores = (q @ k.transpose(2, 3)) * hd**-0.5 + bias
                attn = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, seq, heads * hd)
                x = x + attn @ self.w(p + "self_attn.o_proj.weight")
                h = rms_norm(x, self.w(p + "post_attention_layernorm.weight"))
                gate = torch.nn.functional.silu(h @ self.w(p + "mlp.gate_proj.weight"))
                x = x + (gate * (h @ self.w(p + "mlp.up_proj.weight"))) @ self.w(p + "mlp.down_proj.weight")
            x = rms_norm(x, self.w("model.norm.weight"))
            head = self.w("model.embed_tokens.weight").T if model.tie_embeddings else self.w("lm_head.weight")
            return (x @ head, *present)

    return Decoder().eval()


def io_names(model: ModelConfig) -> tuple[list[str], list[str]]:
    """The graph's input and output names (Optimum's decoder layout)."""
    past = [f"past_key_values.{i}.{kind}" for i in range(model.num_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(model.num_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def write_onnx(out: str, model: ModelConfig, params: dict[str, Any], dtype: str) -> list[str]:
    """Trace the decoder into `out/model.onnx` (+ `model.onnx_data`, the weights); returns the file names."""
    import onnx
    import torch

    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype} is not available for ONNX: choose float32 or float16")
    decoder = _decoder(model, params)
    inputs, outputs = io_names(model)
    batch, seq, past_len = 1, 3, 2  # any sizes: every axis below is dynamic
    example = (
        torch.zeros((batch, seq), dtype=torch.int64),
        torch.ones((batch, past_len + seq), dtype=torch.int64),
        torch.arange(past_len, past_len + seq)[None],
        *[
            torch.zeros((batch, model.num_kv_heads, past_len, model.resolved_head_dim))
            for _ in range(2 * model.num_layers)
        ],
    )
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    axes.update({name: {0: "batch", 2: "past_sequence"} for name in inputs[3:]})
    axes.update({name: {0: "batch", 2: "total_sequence"} for name in outputs[1:]})
    with tempfile.TemporaryDirectory(dir=out) as tmp, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (see the module docstring); torch warns at every call that it
        # is no longer the default, and its own internals call functions torch has deprecated: nothing the person
        # exporting can act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = os.path.join(tmp, FILENAME)  # the tracer's own file (and weight files, past 2 GB)
        torch.onnx.export(
            decoder,
            example,
            traced,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
        del decoder
        graph = onnx.load(traced)
    if dtype == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        graph = convert_float_to_float16(graph, keep_io_types=True, disable_shape_infer=True)
    onnx.save_model(
        graph,
        os.path.join(out, FILENAME),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILENAME,
        size_threshold=1024,
    )
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(os.path.join(out, DATA_FILENAME), 0o666 & ~umask)  # onnx creates it private (0600)
    return [FILENAME, DATA_FILENAME]


def session(folder: str) -> Any:
    """An onnxruntime CPU session of `folder/model.onnx`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(os.path.join(folder, FILENAME), options, providers=["CPUExecutionProvider"])


def empty_past(sess: Any, batch: int) -> dict[str, np.ndarray]:
    """Zero-length past keys/values for every layer (the first call of a decode)."""
    past = {}
    for node in sess.get_inputs():
        if node.name.startswith("past_key_values."):
            _, heads, _, head_dim = node.shape
            past[node.name] = np.zeros((batch, heads, 0, head_dim), np.float32)
    return past


def run(
    sess: Any, tokens: np.ndarray, past: dict[str, np.ndarray] | None = None, past_len: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One call of the graph on `tokens` [batch, seq] after `past_len` cached positions: (logits, the new past)."""
    tokens = np.asarray(tokens, np.int64)
    batch, seq = tokens.shape
    feed = {
        "input_ids": tokens,
        "attention_mask": np.ones((batch, past_len + seq), np.int64),
        "position_ids": np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq)).copy(),
        **(past if past is not None else empty_past(sess, batch)),
    }
    names = [o.name for o in sess.get_outputs()]
    results = dict(zip(names, sess.run(names, feed)))
    new_past = {
        name.replace("present.", "past_key_values."): value
        for name, value in results.items()
        if name.startswith("present.")
    }
    return results["logits"], new_past


def greedy(sess: Any, prompt: list[int], steps: int) -> list[int]:
    """`steps` greedy tokens after `prompt`: the prompt in one call, then one token per call through the KV cache."""
    logits, past = run(sess, np.array([prompt]))
    produced, length = [], len(prompt)
    for _ in range(steps):
        token = int(np.argmax(logits[0, -1]))
        produced.append(token)
        logits, past = run(sess, np.array([[token]]), past, length)
        length += 1
    return produced


def verify_onnx(folder: str, model: ModelConfig, params: dict[str, Any], dtype: str) -> str:
    """onnxruntime's logits on the written graph vs ours (fp32): within 1e-4 × scale for a float32 graph, within the
    float16 drift tolerance for a float16 one; returns the report line."""
    tokens = parity.sample_tokens(model.vocab_size, length=min(64, model.max_seq_len))
    theirs, _ = run(session(folder), tokens)
    ours = parity.jax_logits(model, params, tokens)
    comparison = parity.compare(ours, theirs)
    if dtype == "float32":
        return parity.check_logits(comparison)
    limit = parity.DRIFT_TOLERANCE[dtype]
    if not comparison.relative <= limit:
        raise parity.ParityError(
            f"parity failed: onnxruntime's float16 logits differ from ours by "
            f"{comparison.relative:.3g} × the logit scale {comparison.scale:.3g} "
            f"(tolerance {limit:g})"
        )
    return (
        f"parity ok: onnxruntime's float16 logits differ from ours by {comparison.relative:.2g} × logit scale "
        f"{comparison.scale:.3g} (tolerance {limit:g})"
    )
