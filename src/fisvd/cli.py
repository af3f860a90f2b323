"""Shared stage runner: `--help`, logging, fail-fast validation and exit codes.

`run_stage(name, doc, keys, main)` parses `--help` / `--params`, loads and validates params.yaml
(exit 2 with one line naming the key on a bad value), checks the stage's pipeline inputs
(`fisvd.paths.require`: exit 2 naming the missing path and the stage to run), then calls
`main(params)`. Any expected input error (`fisvd.errors.InputError`: bad data, model, Fisher,
ranks or compressed files) also exits 2 with one line; stages validate before they write anything.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from .errors import InputError, ParamError
from .params import Params, load_params
from .paths import INPUTS_TEXT, OUTPUTS_TEXT, STAGES, require


def run_stage(name: str, doc: str, keys: list[str], main: Callable[..., None], methods: str = "",
              arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Run a stage's `main(params)`; with `arguments` (adds options to the parser) `main(params, args)`."""
    ins, outs = STAGES[name]
    parser = argparse.ArgumentParser(
        prog=f"python -m stages.{name}", description=doc,
        epilog=(f"methods:\n{methods}\n\n" if methods else "")
        + "params.yaml keys read by this stage: " + ", ".join(keys)
        + f"\ninputs: {INPUTS_TEXT.get(name) or ', '.join(ins)}\noutputs: {OUTPUTS_TEXT.get(name) or ', '.join(outs)}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if arguments is not None:
        arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("FISVD_LOG", "INFO"), stream=sys.stderr,
                        format=f"%(asctime)s {name}: %(message)s", datefmt="%H:%M:%S")
    try:
        params = load_params(args.params)
        require(name)
        main(params, args) if arguments is not None else main(params)
    except InputError as exc:
        kind = "invalid parameter" if isinstance(exc, ParamError) else "invalid input"
        print(f"error: {kind}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
