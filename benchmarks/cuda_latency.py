"""ResNet-18 batch 1 on a CUDA GPU: TVM (default schedules, CUDA graphs, fp16) against torch.

Two halves, because the build host has ``nvcc`` but no GPU and the GPU machine has no TVM
compiler:

``prepare OUT`` (build host): exports ``zoo:resnet18`` (seed 0) with every weight rounded to a
float16-representable value, builds it for ``cuda`` the way ``edgeopt.compile.build`` does
(``compile_module``) in three variants (fp32 without CUDA graphs, fp32 with, fp16 with), but with
the weights as function inputs, so each library holds kernels only and the weights travel once as a
float16 ``.npz`` (exact, since they were rounded). onnxruntime's fp32 output on a fixed input is
stored as the parity reference. The TVM runtime (no compiler) is copied beside them.

``run DIR`` (GPU machine, runtime-only TVM): loads each library, checks parity with the stored
reference (fp32 within 1e-4 relative to the output's largest magnitude; fp16 reported), times it,
and in the same process times torch eager, ``torch.compile`` and
``torch.compile(mode="reduce-overhead")`` (CUDA graphs) in fp32 and fp16 (channels-last) on the
same architecture. Medians of ``--repeat`` synchronized calls after ``--warmup``.

Example:
    .venv/bin/python benchmarks/cuda_latency.py prepare .gpu/r18
    # on the GPU machine, with the TVM runtime and tvm-ffi importable:
    python3 benchmarks/cuda_latency.py run .gpu/r18 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = {  # name -> BuildConfig fields, and compile_module's tensor_cores (cuda convs run NHWC)
    "tvm-fp32": {"precision": "fp32", "cuda_graph": False},
    "tvm-fp32-graph": {"precision": "fp32", "cuda_graph": True},            # build's fp32 default
    "tvm-fp16-dlight": {"precision": "fp16", "cuda_graph": False, "tensor_cores": False},
    "tvm-fp16-graph-dlight": {"precision": "fp16", "cuda_graph": True, "tensor_cores": False},
    "tvm-fp16-graph": {"precision": "fp16", "cuda_graph": True},            # build's fp16 default
}


def prepare(out: Path, arch: str) -> None:
    import onnx
    import onnxruntime as ort
    import torch
    from tvm.relax.frontend.onnx import from_onnx

    from edgeopt.compile import BuildConfig, ExportConfig, export
    from edgeopt.compile.targets import resolve_target
    from edgeopt.compile.tvm_build import compile_module
    from edgeopt.pipeline.zoo import create

    out.mkdir(parents=True, exist_ok=True)
    model = create("resnet18").eval()
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.dtype == torch.float32:
                p.copy_(p.half().float())
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    onnx_path = export(model, ExportConfig(), x, out=out / "onnx").output.model_file
    onnx_model = onnx.load(onnx_path)
    # the exporter folds batch norms into the convs: round the folded weights too
    for init in onnx_model.graph.initializer:
        a = onnx.numpy_helper.to_array(init)
        if a.dtype == np.float32:
            init.CopyFrom(onnx.numpy_helper.from_array(a.astype(np.float16).astype(np.float32), init.name))
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    mod = from_onnx(onnx_model, keep_params_in_input=True)
    params = [p.name for p in mod["main"].params]
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in onnx_model.graph.initializer}
    order = [n for n in params[1:]]
    missing = [n for n in order if n not in weights]
    if missing:
        raise SystemExit(f"parameters without an initializer: {missing[:5]}")
    np.savez(out / "weights.npz", **{f"p{i}": weights[n].astype(np.float16) for i, n in enumerate(order)})
    np.save(out / "input.npy", x)
    np.save(out / "reference.npy", reference)
    spec = resolve_target(f"cuda:{arch}")
    # the first input is the image; the rest are weights that CUDA graphs may treat as static
    mod["main"] = mod["main"].with_attr("num_input", 1)
    for name, fields in VARIANTS.items():
        t0 = time.perf_counter()
        fields = dict(fields)
        tensor_cores = fields.pop("tensor_cores", None)
        executable, _ = compile_module(mod, spec, BuildConfig(target=f"cuda:{arch}", **fields),
                                       tensor_cores=tensor_cores)
        executable.export_library(str(out / f"{name}.so"), options=["-Wl,--strip-debug"])
        code = executable.as_text() if hasattr(executable, "as_text") else ""
        print(f"{name}: built in {time.perf_counter() - t0:.0f} s, "
              f"{(out / f'{name}.so').stat().st_size / 1e6:.1f} MB, cuda graph calls: "
              f"{code.count('cuda_graph')}", flush=True)
    (out / "meta.json").write_text(json.dumps({"arch": arch, "variants": VARIANTS, "params": len(order)}))
    _copy_tvm_runtime(out / "site")
    shutil.rmtree(out / "onnx")


def _copy_tvm_runtime(site: Path) -> None:
    """The TVM Python package without its compiler library (runtime-only mode loads without it)."""
    import tvm

    src = Path(tvm.__file__).parent
    dst = site / "tvm"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("libtvm_compiler.so", "3rdparty", "src",
                                                            "__pycache__", "*.pyc", "include"))


def _time(fn, warmup: int, repeat: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples) * 1e3)


def _zoo_create(root: Path):
    """``edgeopt.pipeline.zoo.create`` from a checkout that is not installed (the GPU machine)."""
    import importlib.util
    import types

    if importlib.util.find_spec("edgeopt") is not None:  # installed: the real package
        from edgeopt.pipeline.zoo import create

        return create
    for name, folder in (("edgeopt", None), ("edgeopt.core", "core"), ("edgeopt.pipeline", "pipeline")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(root / folder)] if folder else []
            sys.modules[name] = module  # a bare package: pipeline/__init__ needs the whole project
    from edgeopt.pipeline.zoo import create

    return create


def run(folder: Path, warmup: int, repeat: int) -> dict:
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    sys.path.insert(0, str(folder / "site"))
    import ctypes

    import torch

    import tvm
    from tvm.runtime.vm import VirtualMachine

    ctypes.CDLL(str(folder / "site" / "tvm" / "lib" / "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL)
    dev = tvm.cuda(0)
    assert dev.exist, "no CUDA device visible to TVM"
    x = np.load(folder / "input.npy")
    reference = np.load(folder / "reference.npy")
    weights = np.load(folder / "weights.npz")
    params = [tvm.runtime.tensor(weights[f"p{i}"].astype(np.float32), dev) for i in range(len(weights.files))]
    x_dev = tvm.runtime.tensor(x, dev)
    rows = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for name in VARIANTS:
        lib = tvm.runtime.load_module(str(folder / f"{name}.so"))
        vm = VirtualMachine(lib, dev)
        got = vm["main"](x_dev, *params).numpy()
        err = float(np.max(np.abs(got - reference)) / np.max(np.abs(reference)))
        ms = _time(lambda: vm["main"](x_dev, *params), warmup, repeat, dev.sync)
        rows[name] = {"ms": ms, "max_rel_err": err}
        print(f"{name}: {ms:.3f} ms, max relative error {err:.2e}", flush=True)

    create = _zoo_create(Path(__file__).resolve().parents[1])

    sync = torch.cuda.synchronize
    xt = torch.from_numpy(x).cuda()
    for precision in ("fp32", "fp16"):
        model = create("resnet18").eval().cuda()
        inp = xt
        if precision == "fp16":
            model = model.half().to(memory_format=torch.channels_last)
            inp = xt.half().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            rows[f"torch-eager-{precision}"] = {"ms": _time(lambda: model(inp), warmup, repeat, sync)}
            for mode in ("default", "reduce-overhead"):
                torch._dynamo.reset()
                compiled = torch.compile(model, mode=mode)
                rows[f"torch-compile-{mode}-{precision}"] = {
                    "ms": _time(lambda: compiled(inp), warmup, repeat, sync)}
        for k in (f"torch-eager-{precision}", f"torch-compile-default-{precision}",
                  f"torch-compile-reduce-overhead-{precision}"):
            print(f"{k}: {rows[k]['ms']:.3f} ms", flush=True)
    return rows


def run_artifact(folder: Path, warmup: int, repeat: int) -> dict:
    """An artifact written by ``edgeopt compile --target cuda``, through edgeopt's own runner
    (``edgeopt.runtimes.load``), against onnxruntime's output stored beside it."""
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    sys.path.insert(0, str(folder.parent / "r18" / "site"))
    from edgeopt.runtimes import load

    x, reference = np.load(folder / "input.npy"), np.load(folder / "reference.npy")
    rows = {}
    for art in sorted(p for p in folder.iterdir() if (p / "manifest.json").exists()):
        runner = load(art)
        got = runner.run(x)[0]
        err = float(np.max(np.abs(got - reference)) / np.max(np.abs(reference)))
        ms = runner.benchmark(x, warmup=warmup, repeat=repeat).latency.median_ms
        rows[f"edgeopt-{folder.name}-{art.name}"] = {"ms": ms, "max_rel_err": err}
        print(f"edgeopt artifact {folder.name}/{art.name}: {ms:.3f} ms, max relative error {err:.2e}", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out", type=Path)
    p.add_argument("--arch", default="sm_90")
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("--warmup", type=int, default=50)
    r.add_argument("--repeat", type=int, default=200)
    r.add_argument("--json", type=Path)
    r.add_argument("--artifacts", type=Path, action="append", default=[],
                   help="a folder of edgeopt cuda artifacts with input.npy and reference.npy, run "
                   "through edgeopt.runtimes (edgeopt installed on the GPU machine)")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        prepare(args.out, args.arch)
    else:
        rows = run(args.folder, args.warmup, args.repeat)
        for folder in args.artifacts:
            rows.update(run_artifact(folder, args.warmup, args.repeat))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
