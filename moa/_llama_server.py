"""Entry point of the local model's server process: ``python -m moa._llama_server ARGS``.

It runs ``llama_cpp.server`` with the same arguments, after one change: on CPUs
with AMX, llama.cpp repacks the weights for its AMX kernels, and that kernel
crashed the server with a segmentation fault on the first request here
(llama-cpp-python 0.3.36, SmolLM2's Q4_1 weights, a Xeon with amx_int8). The
plain CPU kernels answer correctly, so the "extra buffer types" that hold
repacked weights are switched off on such CPUs.  ``MOA_LLAMA_EXTRA_BUFFERS=1``
turns them back on; ``=0`` turns them off everywhere.

This module runs only in the child process; moa itself never imports llama_cpp.
"""

from __future__ import annotations

import os
from pathlib import Path


def _cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return "amx_tile" in flags


def extra_buffers_wanted() -> bool:
    """Whether llama.cpp may repack weights into its extra buffer types (AMX and others)."""
    choice = os.environ.get("MOA_LLAMA_EXTRA_BUFFERS", "").strip()
    if choice in ("0", "1"):
        return choice == "1"
    return not _cpu_has_amx()


def main() -> None:
    import llama_cpp
    import llama_cpp.llama
    from llama_cpp.server.__main__ import main as serve

    if not extra_buffers_wanted():
        default_params = llama_cpp.llama_model_default_params

        def without_extra_buffers() -> object:
            params = default_params()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_model_default_params = without_extra_buffers
        llama_cpp.llama.llama_cpp.llama_model_default_params = without_extra_buffers
    serve()


if __name__ == "__main__":
    main()
