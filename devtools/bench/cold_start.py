"""Cold start: import + module init of each function's app.py in a fresh Python process.

Each run is a new interpreter with the function's directory and a layer's python/ first on
sys.path, as Lambda has /var/task and /opt/python. It times `import app` only, not the
interpreter's own start, next to a bare handler that only does `import json`. Runs are
interleaved, after one unmeasured run each. Also: the modules each API function imports, whether
boto3/botocore are among them, and the sizes of what `sam build` packages.

*Locally* the layer is layers/common/python with the venv's packages (their .pyc written).
*As on Lambda* it is what `sam build` packaged (.aws-sam/build/CommonLayer/python, dependencies
included) and Python may not write bytecode, as on Lambda's read-only /opt: whatever the build did
not compile for Python 3.13 is compiled on every cold start (until commit 113f22d that was the
whole layer: pip had compiled it for the build machine's 3.11).

Goal: <= 250 ms median init per API function as on Lambda with the template's defaults
(stretch: 150 ms). When it is missed: `python -X importtime`, and the fixes in PROTOTYPES
measured the same way on a patched copy of the layer (product code is not touched).

Fixed so far: the Tracer's auto-patching (commit a06d18f: it imported botocore, requests and the
CRT into every API function), and the X-Ray SDK itself where tracing is off (commit 3d80a8d:
atcore/observability.py builds no Powertools Tracer then; the template's ApiTracing=false, the
default, sets POWERTOOLS_TRACE_DISABLED for the API functions). "As on Lambda, traced" is
ApiTracing=true.

SnapStart (the template's SnapStart=true) replaces this init by a snapshot restore on Lambda;
that cannot be measured here.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

from devtools.bench import common

RUNS = 10
GOAL_S = 0.250
STRETCH_S = 0.150
TRACED = "traced"  # as on Lambda with ApiTracing=true
BARE = "bare handler (`import json`)"
PROTOTYPE_FUNCTION = "get_task"

# Runs in the fresh interpreter: json is imported only after the timing, for the report.
PROBE = """
import sys, time
sys.path[:0] = [sys.argv[1], sys.argv[2]]
before = set(sys.modules)
began = time.perf_counter()
import app
elapsed = time.perf_counter() - began
modules = sorted(set(sys.modules) - before)
import json
print(json.dumps({"seconds": elapsed, "modules": modules}))
"""

# What an API function needs at the least with its current models and driver: a floor.
FLOOR = "floor: pydantic models + pg8000, no Powertools"
FLOOR_APP = """import json

import pg8000.native

from atcore import models
"""

BARE_APP = """import json


def lambda_handler(event, context):
    return {"statusCode": 200, "body": json.dumps({"ok": True})}
"""

# What template.yaml gives every function; nothing that would make the import do I/O.
BASE_ENV = {
    "POWERTOOLS_SERVICE_NAME": "at",
    "POWERTOOLS_METRICS_NAMESPACE": "AT",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "AWS_DEFAULT_REGION": "us-east-1",
    "PATH": os.environ.get("PATH", ""),
    "LANG": "C.UTF-8",
}

# Candidate fixes: (name, file in the layer, [(text, replacement), ...]), measured on a copy.
# ("Tracer patches pg8000 only" was one until commit a06d18f adopted no auto-patching at all, and
# "no X-Ray SDK in API functions" until commit 3d80a8d adopted it where tracing is off.)
PROTOTYPES: list[tuple[str, str, list[tuple[str, str]]]] = []


def _env(function_dir: Path, as_lambda: bool | str) -> dict[str, str]:
    """as_lambda: what the Lambda runtime and the template set, as on AWS: LAMBDA_TASK_ROOT and
    AWS_LAMBDA_FUNCTION_NAME, and POWERTOOLS_TRACE_DISABLED as the API functions get it from
    ApiTracing (default false: tracing off, so no X-Ray SDK); TRACED: ApiTracing=true. No bytecode
    is written (Lambda's /opt and /var/task are read-only)."""
    env = dict(BASE_ENV)
    if as_lambda:
        env |= {
            "LAMBDA_TASK_ROOT": str(function_dir),
            "AWS_LAMBDA_FUNCTION_NAME": f"at-{function_dir.name}",
            "POWERTOOLS_TRACE_DISABLED": "false" if as_lambda == TRACED else "true",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    return env


BUILT_LAYER = common.ROOT / ".aws-sam" / "build" / "CommonLayer" / "python"


def _python(function_dir: Path, layer: Path, as_lambda: bool | str, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, *flags, "-c", PROBE, str(function_dir), str(layer)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tempfile.gettempdir(),
                            env=_env(function_dir, as_lambda))  # fmt: skip
    if result.returncode:
        raise RuntimeError(f"importing {function_dir}/app.py with {layer} failed:\n{result.stderr[-3000:]}")
    return result


def probe(function_dir: Path, layer: Path, as_lambda: bool | str) -> dict:
    return json.loads(_python(function_dir, layer, as_lambda).stdout.strip().splitlines()[-1])


def import_times(function_dir: Path, layer: Path, as_lambda: bool) -> dict[str, float]:
    """Self time (s) of `import app` by top-level package, from `python -X importtime`."""
    by_package: dict[str, float] = defaultdict(float)
    for self_us, _cumulative, name in _importtime_lines(_python(function_dir, layer, as_lambda, "-X", "importtime")):
        by_package[name.strip().split(".")[0]] += self_us / 1e6
    return by_package


def import_tree(function_dir: Path, layer: Path, as_lambda: bool, min_cumulative_s: float = 0.015) -> str:
    """importtime's tree of `import app`: only imports that took at least min_cumulative_s."""
    lines = []
    for _self, cumulative_us, name in _importtime_lines(_python(function_dir, layer, as_lambda, "-X", "importtime")):
        if cumulative_us >= min_cumulative_s * 1e6:
            lines.append(f"{cumulative_us / 1000:7.1f} ms {name.rstrip()}")
    return "\n".join(lines)


def _importtime_lines(result: subprocess.CompletedProcess) -> list[tuple[int, int, str]]:
    """(self µs, cumulative µs, indented name) of the imports under `import app`."""
    rows = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            self_us, cumulative_us, name = line[len("import time:") :].split("|", 2)
            rows.append((int(self_us), int(cumulative_us), name[1:]))  # one space follows each "|"
    # importtime lists a module after its imports: `app` closes the probe's block, which starts
    # after the last top-level (unindented) import that came before it.
    end = max(i for i, row in enumerate(rows) if row[2].strip() == "app")
    start = end
    while start > 0 and rows[start - 1][2].startswith(" "):
        start -= 1
    return rows[start : end + 1]


def patched_layer(directory: Path, path: str, replacements: list[tuple[str, str]]) -> Path:
    """A copy of the layer's python/ with the replacements made in one file."""
    layer = directory / "python"
    shutil.copytree(common.LAYER, layer, ignore=shutil.ignore_patterns("__pycache__"))
    source = layer / path
    text = source.read_text()
    for old, new in replacements:
        if old not in text:
            raise RuntimeError(f"the prototype no longer applies: {old!r} is not in {path}")
        text = text.replace(old, new)
    source.write_text(text)
    return layer


def third_party(modules: list[str]) -> Counter:
    """Modules by top-level package, outside the standard library (and `app` itself)."""
    return Counter(
        top for m in modules if (top := m.split(".")[0]) not in sys.stdlib_module_names and not top.startswith("_")
        and top != "app"
    )  # fmt: skip


def aws_sdk(modules: list[str]) -> str:
    found = [p for p in ("boto3", "botocore") if p in modules]
    submodules = sum(1 for m in modules if m.startswith(("boto3.", "botocore.")))
    return ", ".join(found) + (f" (+{submodules} submodules)" if submodules else "") if found else "none"


# --- sizes ------------------------------------------------------------------------------------


def sam_build() -> tuple[bool, str]:
    env = os.environ | {"SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    sam = Path(sys.executable).parent / "sam"
    result = subprocess.run([str(sam), "build"], cwd=common.ROOT, env=env, capture_output=True, text=True, check=False)
    return result.returncode == 0, (result.stdout + result.stderr)[-2000:]


def package_size(directory: Path) -> tuple[int, int, int]:
    """(files, bytes unpacked, bytes as a deflated zip) of a built function or layer."""
    files = [path for path in directory.rglob("*") if path.is_file()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(directory))
    return len(files), sum(path.stat().st_size for path in files), buffer.tell()


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


# --- the run ----------------------------------------------------------------------------------


def measure(cases: dict[str, tuple[Path, Path, bool | str]], runs: int) -> tuple[dict, dict]:
    """{case: [seconds]} over `runs` interleaved rounds, and {case: modules imported}."""
    modules = {case: probe(*where)["modules"] for case, where in cases.items()}  # unmeasured
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        for case, where in cases.items():
            samples[case].append(probe(*where)["seconds"])
    return samples, modules


def run(quick: bool = False) -> str:
    runs = 3 if quick else RUNS
    facts = common.machine_facts(None)
    functions = {path.name: path for path in sorted(common.FUNCTIONS_DIR.iterdir()) if (path / "app.py").exists()}
    api = [name for name in functions if name in common.API_FUNCTIONS]
    # The packaged layer, as Lambda gets it (a --quick run reuses an earlier build).
    built, build_log = (None, "") if quick and BUILT_LAYER.is_dir() else sam_build()
    lambda_layer = BUILT_LAYER if BUILT_LAYER.is_dir() and built is not False else common.LAYER
    with tempfile.TemporaryDirectory(prefix="at-bench-cold-") as scratch:
        bare = Path(scratch) / "bare"
        bare.mkdir()
        (bare / "app.py").write_text(BARE_APP)
        cases: dict[str, tuple[Path, Path, bool | str]] = {BARE: (bare, common.LAYER, False)}
        cases |= {name: (path, common.LAYER, False) for name, path in functions.items()}
        cases |= {f"{name} as on Lambda": (functions[name], lambda_layer, True) for name in api}
        cases |= {f"{name} as on Lambda, traced": (functions[name], lambda_layer, TRACED) for name in api}
        samples, modules = measure(cases, runs)
        medians = {case: statistics.median(values) for case, values in samples.items()}
        report = Report(facts, runs, list(functions), api, samples, medians, modules)
        report.lambda_layer = lambda_layer
        if any(medians[f"{name} as on Lambda"] > GOAL_S for name in api):
            function = functions[PROTOTYPE_FUNCTION]
            report.importtime["current"] = import_times(function, lambda_layer, True)
            report.tree = import_tree(function, lambda_layer, True)
            prototypes = {}
            for index, (name, path, replacements) in enumerate(PROTOTYPES):
                layer = patched_layer(Path(scratch) / f"fix{index}", path, replacements)
                prototypes[name] = layer
                report.importtime[name] = import_times(function, layer, True)
            # "As on Lambda" from the packaged layer, as in the table above; prototypes patch a copy of
            # the source layer (their dependencies come from the venv).
            fix_cases: dict[str, tuple[Path, Path, bool | str]] = {
                f"{PROTOTYPE_FUNCTION}{suffix}": (function, lambda_layer if lam else common.LAYER, lam)
                         for suffix, lam in _WAYS}  # fmt: skip
            fix_cases |= {f"{name}{suffix}": (function, layer, lam) for name, layer in prototypes.items()
                          for suffix, lam in _WAYS}  # fmt: skip
            floor = Path(scratch) / "floor"
            floor.mkdir()
            (floor / "app.py").write_text(FLOOR_APP)
            fix_cases |= {f"{FLOOR}{suffix}": (floor, lambda_layer if lam else common.LAYER, lam)
                          for suffix, lam in _WAYS}  # fmt: skip
            report.fix_samples, report.fix_modules = measure(fix_cases, runs)
        report.load_during = common.load_average()
    report.built, report.build_log = built, build_log
    return report.markdown()


_WAYS = (("", False), (" as on Lambda", True))


class Report:
    def __init__(self, facts, runs, functions, api, samples, medians, modules) -> None:
        self.facts, self.runs, self.functions, self.api = facts, runs, functions, api
        self.samples, self.medians, self.modules = samples, medians, modules
        self.importtime: dict[str, dict[str, float]] = {}
        self.tree = ""
        self.fix_samples: dict[str, list[float]] = {}
        self.fix_modules: dict[str, list[str]] = {}
        self.load_during = ""
        self.built: bool | None = None
        self.build_log = ""
        self.lambda_layer: Path = BUILT_LAYER

    def markdown(self) -> str:
        lines = [
            "## Cold start",
            "",
            self.facts,
            "",
            f"Time of `import app` (import + module init) in a fresh `python` process per run: {self.runs} runs "
            "per case, median and range, cases interleaved, after one unmeasured run each (.pyc written). "
            "*Locally*, `sys.path` starts with the function's directory and `layers/common/python`; third-party "
            "packages come from the venv. *As on Lambda*: the layer `sam build` packaged "
            f"(`{self.lambda_layer.relative_to(common.ROOT)}`, dependencies included) with no bytecode written, as "
            "on Lambda's read-only /opt, LAMBDA_TASK_ROOT and AWS_LAMBDA_FUNCTION_NAME set, and "
            "POWERTOOLS_TRACE_DISABLED=true as the template's default (ApiTracing=false) sets it for the API "
            "functions: no Tracer, no X-Ray SDK (commit 3d80a8d). *Traced*: ApiTracing=true, so the Powertools "
            "Tracer and the X-Ray SDK load (no patching at import since commit a06d18f; only the dispatcher and "
            "worker patch botocore). Not included: the interpreter's start and Lambda's runtime bootstrap. Load "
            f"average after the runs: {self.load_during}.",
            "",
            f"**Goal: ≤ {GOAL_S * 1000:.0f} ms init per API function as on Lambda (stretch ≤ {STRETCH_S * 1000:.0f} "
            "ms).** Goal column: ✓ meets the goal, ✓✓ the stretch, ✗ neither. Medians move with the machine's "
            "load (printed above): compare rows of one run, not runs.",
            "",
        ]
        rows = []
        for name in [BARE, *self.functions]:
            cells = [name, self._median_range(name)]
            if name in self.api:
                lam, traced = f"{name} as on Lambda", f"{name} as on Lambda, traced"
                mark = "✓✓" if self.medians[lam] <= STRETCH_S else "✓" if self.medians[lam] <= GOAL_S else "✗"
                cells += [self._median_range(lam), mark, self._median_range(traced)]
                cells += [str(len(self.modules[name])), aws_sdk(self.modules[name]), aws_sdk(self.modules[lam])]
            else:
                cells += ["", "", "", str(len(self.modules[name])), aws_sdk(self.modules[name]), ""]
            rows.append(cells)
        lines.append(common.table(["function", "init ms", "as on Lambda ms", "goal", "traced ms", "modules",
                                   "AWS SDK imported", "AWS SDK as on Lambda"], rows))  # fmt: skip
        lines += [
            "",
            "`botocore` alone (no submodule) is Powertools' doing: `aws_lambda_powertools/shared/user_agent.py` "
            "imports it, if installed, to add its user agent; the package's `__init__` only needs the standard "
            "library. Outside Lambda (the *init ms* column) no Tracer is built either. When one is (traced), the "
            "X-Ray SDK's recorder uses the `LocalSampler` on Lambda, which imports no botocore submodule; outside "
            "Lambda its `DefaultSampler` would import `botocore.session`.",
            "",
            "### Third-party modules imported by each API function",
            "",
            "Modules per top-level package (the standard library not counted), locally / as on Lambda:",
            "",
        ]
        counts = {case: third_party(mods) for case, mods in self.modules.items()}
        packages = sorted({p for name in self.api for way in ("", " as on Lambda") for p in counts[name + way]})
        rows = [[p, *(f"{counts[n][p]} / {counts[n + ' as on Lambda'][p]}" for n in self.api)] for p in packages]
        lines.append(common.table(["package", *self.api], rows))
        if self.importtime:
            lines += self._fixes()
        lines += ["", "### Package sizes (`sam build`, .aws-sam/build)", ""]
        lines += self._sizes()
        return "\n".join(lines)

    def _median_range(self, case: str, samples: dict | None = None) -> str:
        values = (samples or self.samples)[case]
        return f"{common.ms(statistics.median(values))} ({common.ms(min(values))} to {common.ms(max(values))})"

    def _fixes(self) -> list[str]:
        variants = list(self.importtime)
        lines = [
            "",
            f"### Where the init time goes, and what would fix it ({PROTOTYPE_FUNCTION}, as on Lambda)",
            "",
            "Self time by top-level package (`python -X importtime`, one run each, ms; importtime's own "
            "overhead included), now and with each candidate fix applied to a copy of the layer:",
            "",
        ]
        totals: dict[str, float] = defaultdict(float)
        for times in self.importtime.values():
            for package, seconds in times.items():
                totals[package] += seconds
        top = sorted(totals, key=lambda p: -totals[p])[:16]
        rows = [[f"`{p}`", *(f"{self.importtime[v].get(p, 0) * 1000:.1f}" for v in variants)] for p in top]
        rows.append(["**all**", *(f"**{sum(self.importtime[v].values()) * 1000:.0f}**" for v in variants)])
        lines += [common.table(["package", *variants], rows), ""]
        rows = []
        for variant in ["current", *variants[1:], FLOOR]:
            key = PROTOTYPE_FUNCTION if variant == "current" else variant
            rows.append([variant, self._median_range(key, self.fix_samples),
                         self._median_range(key + " as on Lambda", self.fix_samples),
                         str(len(self.fix_modules[key + " as on Lambda"])),
                         aws_sdk(self.fix_modules[key]), aws_sdk(self.fix_modules[key + " as on Lambda"])])  # fmt: skip
        lines += [
            f"The same variants timed like the table above ({self.runs} interleaved runs each):",
            "",
            common.table(
                ["variant", "init ms", "as on Lambda ms", "modules as on Lambda", "AWS SDK", "AWS SDK as on Lambda"],
                rows,
            ),
            "",
            f"Import tree of {PROTOTYPE_FUNCTION} as on Lambda, now (imports of ≥ 15 ms, cumulative):",
            "",
            "```",
            self.tree,
            "```",
        ]
        return lines

    def _sizes(self) -> list[str]:
        build_dir = common.ROOT / ".aws-sam" / "build"
        if self.built is None:
            return ["Skipped (--quick)."]
        if not self.built or not build_dir.is_dir():
            return [f"`sam build` failed:\n\n```\n{self.build_log}\n```"]
        rows = []
        for directory in sorted(path for path in build_dir.iterdir() if path.is_dir()):
            files, unpacked, zipped = package_size(directory)
            rows.append([directory.name, str(files), _size(unpacked), _size(zipped)])
        layer = build_dir / "CommonLayer" / "python"
        parts = sorted(((package_size(path)[1] if path.is_dir() else path.stat().st_size, path.name)
                        for path in layer.iterdir()), reverse=True)  # fmt: skip
        return [
            common.table(["artifact", "files", "unpacked", "zip"], rows),
            "",
            "The layer's biggest parts, unpacked: "
            + ", ".join(f"`{name}` {_size(size)}" for size, name in parts[:7])
            + ".",
            "",
            "Lambda's limits: 250 MiB unpacked for a function and its layers together; 50 MiB zipped for a direct "
            "upload. The layer leaves out botocore and urllib3, which the runtime provides (layers/common/Makefile).",
        ]
