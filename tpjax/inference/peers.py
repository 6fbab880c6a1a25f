"""Peer systems for `tpjax.benchmark`, each run in its own process.

    python -m tpjax.inference.peers --system=NAME --model_dir=DIR --batches=FILE.npz \
        --threads=N

Systems (`PRECISIONS` names each one's arithmetic):
  hf_pytorch        Hugging Face PyTorch eager, float32
  hf_pytorch_bf16   the same under torch.autocast("cpu", bfloat16): matmuls in bf16
                    (oneDNN's AMX/AVX512-BF16 kernels where the CPU has them)
  onnxruntime       ONNX Runtime with its BERT fusions, float32
  onnxruntime_int8  that fused graph with dynamic int8 quantisation of its MatMul
                    weights (onnxruntime.quantization.quantize_dynamic)

`model_dir` holds the trained weights in Hugging Face layout (config.json and
safetensors, written by the benchmark from the tpjax checkpoint). The ONNX systems
export that model to ONNX with torch's exporter and apply ONNX Runtime's BERT graph
optimisations (fused attention, LayerNorm, GELU) before timing.

The process reads one JSON command per line on stdin and answers one JSON line on the
real stdout (library chatter goes to stderr). Commands:
  {"cmd": "throughput", "order": NAME}  runs every batch of NAME once -> {"seconds"}
  {"cmd": "latency"}                    each batch-1 example once -> {"seconds": [...]}
  {"cmd": "logits", "order": NAME, "batch": i}  -> {"logits": [[...]]}
  {"cmd": "all_logits", "order": NAME}  every batch of NAME -> {"logits": [[[...]]]}
  {"cmd": "quit"}
Between commands the process only waits on stdin, so it never runs while the
benchmark times another system.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

PRECISIONS = {"hf_pytorch": "float32", "hf_pytorch_bf16": "bfloat16 autocast",
              "onnxruntime": "float32", "onnxruntime_int8": "int8 dynamic (weights)"}


INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_batches(path: str) -> dict[str, list[dict]]:
  """{order: [batch dicts of int64 arrays]} from the benchmark's npz file.

  Keys are '<order>/<index>/<input name>'; order 'latency' holds batch-1 examples.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  data = np.load(path)
  out: dict[str, dict[int, dict]] = {}
  for key in data.files:
    order, index, name = key.split("/")
    out.setdefault(order, {}).setdefault(int(index), {})[name] = data[key].astype(np.int64)
  return {k: [v[i] for i in sorted(v)] for k, v in out.items()}


def _torch_runner(model_dir: str, threads: int, bf16: bool = False):
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      model_dir, attn_implementation="eager").eval()

  def run(batch):
    cast = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
            else contextlib.nullcontext())
    with torch.inference_mode(), cast:
      logits = model(**{k: torch.from_numpy(batch[k]) for k in INPUTS}).logits
    return logits.float().numpy()
  return run


def export_onnx(model_dir: str, path: str) -> None:
  """The Hugging Face model as ONNX, batch and sequence dynamic."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      model_dir, attn_implementation="eager").eval()
  model.config.return_dict = False
  dummy = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in INPUTS)
  axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
  torch.onnx.export(model, dummy, path, input_names=list(INPUTS), output_names=["logits"],
                    dynamic_axes={**axes, "logits": {0: "batch"}}, opset_version=17,
                    dynamo=False)


def _onnx_runner(model_dir: str, threads: int, int8: bool = False):
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  from onnxruntime.transformers import optimizer  # pylint: disable=g-import-not-at-top
  with open(os.path.join(model_dir, "config.json")) as f:
    config = json.load(f)
  raw = os.path.join(model_dir, "model.onnx")
  fused = os.path.join(model_dir, "model_fused.onnx")
  if not os.path.exists(fused):
    export_onnx(model_dir, raw)
    model_type = "bert" if config["model_type"] == "bert" else "bert"  # roberta: same fusions
    optimized = optimizer.optimize_model(raw, model_type=model_type,
                                         num_heads=config["num_attention_heads"],
                                         hidden_size=config["hidden_size"])
    optimized.save_model_to_file(fused)
    print("ONNX fusions:", optimized.get_fused_operator_statistics(), file=sys.stderr)
  if int8:
    from onnxruntime import quantization  # pylint: disable=g-import-not-at-top
    quantized = os.path.join(model_dir, "model_fused_int8.onnx")
    if not os.path.exists(quantized):
      import onnx  # pylint: disable=g-import-not-at-top
      # The fused graph's contrib ops hide some tensor types from shape inference.
      quantization.quantize_dynamic(
          fused, quantized, weight_type=quantization.QuantType.QInt8,
          extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    fused = quantized
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  session = ort.InferenceSession(fused, options, providers=["CPUExecutionProvider"])
  names = {i.name for i in session.get_inputs()}

  def run(batch):
    return session.run(["logits"], {k: batch[k] for k in INPUTS if k in names})[0]
  return run


def _define_flags() -> None:
  """The worker's flags, defined only when it runs: the benchmark imports this module
  for `PRECISIONS`, beside flags of its own."""
  flags.DEFINE_enum("system", None, list(PRECISIONS), "Peer.")
  flags.DEFINE_string("model_dir", None, "Hugging Face model folder.")
  flags.DEFINE_string("batches", None, "npz written by the benchmark.")
  flags.DEFINE_integer("threads", 1, "Intra-op threads.")


def main(argv):
  del argv
  system, model_dir = flags.FLAGS.system, flags.FLAGS.model_dir
  reply = os.fdopen(os.dup(1), "w")  # the protocol's channel
  os.dup2(2, 1)                       # everything else printed goes to stderr
  make = {"hf_pytorch": _torch_runner,
          "hf_pytorch_bf16": lambda d, t: _torch_runner(d, t, bf16=True),
          "onnxruntime": _onnx_runner,
          "onnxruntime_int8": lambda d, t: _onnx_runner(d, t, int8=True)}[system]
  runner = make(model_dir, flags.FLAGS.threads)
  batches = load_batches(flags.FLAGS.batches)
  for order in batches.values():  # warm-up: every shape once
    for batch in order:
      runner(batch)

  def send(obj):
    reply.write(json.dumps(obj) + "\n")
    reply.flush()

  send({"ready": True})
  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["cmd"] == "quit":
      break
    if cmd["cmd"] == "throughput":
      work = batches[cmd["order"]]
      start = time.perf_counter()
      for batch in work:
        runner(batch)
      send({"seconds": time.perf_counter() - start})
    elif cmd["cmd"] == "latency":
      times = []
      for batch in batches["latency"]:
        start = time.perf_counter()
        runner(batch)
        times.append(time.perf_counter() - start)
      send({"seconds": times})
    elif cmd["cmd"] == "logits":
      send({"logits": runner(batches[cmd["order"]][cmd["batch"]]).tolist()})
    elif cmd["cmd"] == "all_logits":
      send({"logits": [runner(b).tolist() for b in batches[cmd["order"]]]})
    else:
      send({"error": f"unknown command {cmd['cmd']!r}"})


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["system", "model_dir", "batches"])
  app.run(main)
