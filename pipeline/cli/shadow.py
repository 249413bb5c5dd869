"""``edgeopt shadow``: compare a candidate with the champion on logged inputs.

Run CANDIDATE and the --champion model (artifact folders, .onnx/.pt2 files or torch MODEL specs) on
every input of --inputs (a .npy file, a .npz file or a folder of .npy files; read in chunks, so a
log larger than memory works) and report the top-1 disagreement rate, the output drift (SQNR, KL of
the softmax) and the latency of both. The disagreeing inputs go to --out/disagreements.npy (indices
and both top-1 in disagreements.npz), the summary to --out/shadow.json. Exit 1 when the disagreement
is above --max-disagreement, 0 otherwise, 2 on bad input.
"""

from __future__ import annotations

from .common import add_command, positive_int, say


def add_parser(sub):
    s = add_command(sub, __doc__, run)
    s.add_argument("candidate", metavar="CANDIDATE")
    s.add_argument("--champion", required=True, metavar="MODEL", help="the model in production")
    s.add_argument("--inputs", required=True, metavar="LOG", help=".npy, .npz or a folder of .npy files; "
                   "one input per row, without the batch axis of the model's input")
    s.add_argument("--max-disagreement", type=float, default=None, metavar="F",
                   help="largest allowed fraction of inputs whose top-1 differs (default: not gated)")
    s.add_argument("--out", default="build/shadow", help="output folder (default: build/shadow)")
    s.add_argument("--runtime", default=None, help="runtime for both models (default: each file's own; "
                   "torch for a torch MODEL)")
    s.add_argument("--threads", type=positive_int, default=None, help="threads per runtime")
    s.add_argument("--input-shape", default=None, help="input shape of a torch MODEL, e.g. 1,1,28,28")
    s.add_argument("--chunk", type=positive_int, default=256, help="inputs read at a time (default 256)")
    return s


def run(args) -> int:
    from edgeopt.pipeline.shadow import format_summary, shadow

    summary = {}

    def log(line: str) -> None:
        summary["last"] = line

    try:
        result = shadow(args.candidate, args.champion, args.inputs, out=args.out,
                        max_disagreement=args.max_disagreement, runtime=args.runtime, threads=args.threads,
                        input_shape=args.input_shape, chunk=args.chunk, progress=log)
    except Exception:
        if summary.get("last"):
            say(f"shadow: stopped after {summary['last']}")
        raise
    print(format_summary(result))
    print(f"wrote {args.out}/shadow.json")
    return 0
