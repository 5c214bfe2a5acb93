"""Peak memory of one hostile action, measured in a fresh subprocess.

The hostile-input tests assert that memory stays bounded by a small multiple of the
input's size. Measuring inside the test process would be meaningless (pytest, Ray and
earlier tests have already raised the peak), so each action runs in its own Python: the
``setup`` code (imports, building the input) runs first, then the peak RSS is read, then
the ``action`` code runs, and the growth of the peak is reported.
"""

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass

_RUNNER = """
import json, resource, sys, traceback

def _peak_mb():
    if {reset_peak}:  # VmHWM, which clear_refs restarts (ru_maxrss cannot be restarted)
        with open("/proc/self/status") as _status:
            for _line in _status:
                if _line.startswith("VmHWM:"):
                    return int(_line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

{setup}
if {reset_peak}:
    with open("/proc/self/clear_refs", "w") as _refs:
        _refs.write("5")  # the high-water mark restarts at the current RSS
_before = _peak_mb()
_outcome = {{"error_type": None, "error": None}}
try:
{action}
except BaseException as _exc:  # the test decides which errors are the expected ones
    _outcome = {{"error_type": type(_exc).__name__, "error": str(_exc)[:2000],
                 "traceback": traceback.format_exc()[-4000:]}}
_outcome["growth_mb"] = _peak_mb() - _before
_outcome["peak_mb"] = _peak_mb()
print("@@MEMORY@@" + json.dumps(_outcome))
"""


@dataclass
class MeasuredAction:
    """What one action did: the exception it raised (type name and message, or None) and
    how much its process's peak resident memory grew while it ran, in MB."""

    error_type: "str | None"
    error: "str | None"
    growth_mb: float
    peak_mb: float
    traceback: "str | None" = None


def measure_action(
    setup: str, action: str, timeout_s: float = 120.0, reset_peak: bool = False
) -> MeasuredAction:
    """Run ``setup`` then ``action`` (Python source) in a new interpreter; report the error
    ``action`` raised, if any, and the growth of peak RSS during ``action``.

    ``reset_peak`` (Linux): restart the peak at the current RSS after ``setup``, so that
    a transient peak of the imports or of building the input (freed before ``action``)
    cannot hide what ``action`` allocates; without it, growth counts only what rises
    above that earlier peak.
    """
    source = _RUNNER.format(
        reset_peak=bool(reset_peak),
        setup=textwrap.dedent(setup),
        action=textwrap.indent(textwrap.dedent(action), "    ") or "    pass",
    )
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=timeout_s
    )
    for line in done.stdout.splitlines():
        if line.startswith("@@MEMORY@@"):
            return MeasuredAction(**json.loads(line[len("@@MEMORY@@") :]))
    raise AssertionError(
        f"the measured action did not report (exit {done.returncode}):\n"
        f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
