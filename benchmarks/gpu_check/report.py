"""GPU check, the report: ``gpu_check.json`` (one object, a ``parts`` dict), its markdown, and a schema check.

    python benchmarks/gpu_check/report.py init     --json PATH --mode gpu|dry-run --budget-s S
    python benchmarks/gpu_check/report.py update   --json PATH --part NAME --status S [--seconds X] [--timeout-s T]
                                                   [--result PART.json] [--log PART.log] [--note TEXT]
    python benchmarks/gpu_check/report.py finish   --json PATH
    python benchmarks/gpu_check/report.py validate --json PATH [--require-ok]
    python benchmarks/gpu_check/report.py markdown --json PATH
    python benchmarks/gpu_check/report.py summary  --json PATH

Every command that changes the JSON rewrites it atomically and rewrites the markdown beside it
(``gpu_check.md``), so a run stopped at any point still leaves both. Standard library only.

Schema (checked by ``validate``; ``SCHEMA`` below is the same in JSON Schema form, for readers):
top level ``schema`` (= SCHEMA_ID), ``mode`` (gpu | dry-run), ``started_utc``, ``updated_utc`` (strings),
``finished`` (bool), ``budget_s``, ``elapsed_s`` (numbers), ``gpu_name``, ``driver`` (string or null), ``parts``:
an object with exactly the names in PARTS, each ``{"status": ok|failed|timeout|not_run, "seconds": number|null,
"timeout_s": number|null, "figures": object, "notes": [string], "error": string|null}``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from pathlib import Path

SCHEMA_ID = "grpo-custom/gpu-check/1"
PARTS = ("install", "environment", "models", "bench_loss", "step_compare", "e2e_step", "gpu_tests")
STATUSES = ("ok", "failed", "timeout", "not_run")
PART_KEYS = {"status": (str,), "seconds": (int, float, type(None)), "timeout_s": (int, float, type(None)),
             "figures": (dict,), "notes": (list,), "error": (str, type(None))}
TOP_KEYS = {"schema": (str,), "mode": (str,), "started_utc": (str,), "updated_utc": (str,), "finished": (bool,),
            "budget_s": (int, float), "elapsed_s": (int, float), "gpu_name": (str, type(None)),
            "driver": (str, type(None)), "parts": (dict,)}
SCHEMA = {  # documentation of what validate() checks
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": sorted(TOP_KEYS),
    "properties": {
        "schema": {"const": SCHEMA_ID}, "mode": {"enum": ["gpu", "dry-run"]}, "finished": {"type": "boolean"},
        "parts": {"type": "object", "required": list(PARTS), "additionalProperties": False,
                  "properties": {name: {"$ref": "#/$defs/part"} for name in PARTS}},
    },
    "$defs": {"part": {"type": "object", "required": sorted(PART_KEYS), "properties": {
        "status": {"enum": list(STATUSES)}, "seconds": {"type": ["number", "null"]},
        "timeout_s": {"type": ["number", "null"]}, "figures": {"type": "object"},
        "notes": {"type": "array", "items": {"type": "string"}}, "error": {"type": ["string", "null"]}}}},
}
ERROR_TAIL_LINES = 40


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def save(path: Path, report: dict) -> None:
    report["updated_utc"] = now_utc()
    report["elapsed_s"] = round(time.time() - report.get("_start_epoch", time.time()), 1)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(report, indent=1, default=repr))
    temporary.replace(path)
    markdown_path = path.with_suffix(".md")
    temporary = markdown_path.with_suffix(".md.tmp")
    temporary.write_text(markdown(report))
    temporary.replace(markdown_path)


def empty_part() -> dict:
    return {"status": "not_run", "seconds": None, "timeout_s": None, "figures": {}, "notes": ["not reached"],
            "error": None}


def init(path: Path, mode: str, budget_s: float) -> dict:
    report = {"schema": SCHEMA_ID, "mode": mode, "started_utc": now_utc(), "updated_utc": now_utc(),
              "finished": False, "budget_s": budget_s, "elapsed_s": 0.0, "gpu_name": None, "driver": None,
              "_start_epoch": time.time(), "parts": {name: empty_part() for name in PARTS}}
    path.parent.mkdir(parents=True, exist_ok=True)
    save(path, report)
    return report


def error_tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(lines[-ERROR_TAIL_LINES:])


def update(path: Path, part: str, status: str, seconds, timeout_s, result: Path | None, log: Path | None,
           note: str | None) -> dict:
    if part not in PARTS:
        raise SystemExit(f"report: unknown part {part!r}; parts are {PARTS}")
    if status not in STATUSES:
        raise SystemExit(f"report: unknown status {status!r}; statuses are {STATUSES}")
    report = load(path)
    entry = {"status": status, "seconds": seconds, "timeout_s": timeout_s, "figures": {}, "notes": [],
             "error": None}
    if result is not None and result.exists():
        try:
            data = json.loads(result.read_text())
            entry["figures"] = data.get("figures", {})
            entry["notes"] = [str(n) for n in data.get("notes", [])]
        except (json.JSONDecodeError, OSError) as error:
            entry["notes"].append(f"result file unreadable: {error}")
    if note:
        entry["notes"].append(note)
    if status in ("failed", "timeout"):
        entry["error"] = error_tail(log)
    report["parts"][part] = entry
    if part == "environment":
        report["gpu_name"] = entry["figures"].get("gpu_name")
        report["driver"] = entry["figures"].get("driver")
    save(path, report)
    return report


def validate(report: dict, require_ok: bool = False) -> list[str]:
    """Problems with ``report`` against the schema (empty list: valid)."""
    problems = []
    for key, types in TOP_KEYS.items():
        if key not in report:
            problems.append(f"missing top-level key {key!r}")
        elif not isinstance(report[key], types) or (bool in types) != isinstance(report[key], bool):
            problems.append(f"{key!r} has type {type(report[key]).__name__}")
    if report.get("schema") != SCHEMA_ID:
        problems.append(f"schema is {report.get('schema')!r}, not {SCHEMA_ID!r}")
    if report.get("mode") not in ("gpu", "dry-run"):
        problems.append(f"mode is {report.get('mode')!r}")
    parts = report.get("parts", {})
    if isinstance(parts, dict):
        if set(parts) != set(PARTS):
            problems.append(f"parts are {sorted(parts)}, expected {sorted(PARTS)}")
        for name, entry in parts.items():
            if not isinstance(entry, dict):
                problems.append(f"part {name!r} is not an object")
                continue
            for key, types in PART_KEYS.items():
                if key not in entry:
                    problems.append(f"part {name!r} lacks {key!r}")
                elif not isinstance(entry[key], types) or isinstance(entry[key], bool):
                    problems.append(f"part {name!r}: {key!r} has type {type(entry[key]).__name__}")
            if entry.get("status") not in STATUSES:
                problems.append(f"part {name!r}: status {entry.get('status')!r} not in {STATUSES}")
            if not all(isinstance(n, str) for n in entry.get("notes", [])):
                problems.append(f"part {name!r}: notes must be strings")
            if require_ok and entry.get("status") != "ok":
                problems.append(f"part {name!r}: status {entry.get('status')!r} (required ok)")
    if require_ok and report.get("finished") is not True:
        problems.append("the run did not finish")
    return problems


# ---------------------------------------------------------------------------------------------- markdown


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _table(headers: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines + [""]


def suggested_name(report: dict) -> str:
    gpu = re.sub(r"[^a-z0-9]+", "-", (report.get("gpu_name") or "unknown").lower()).strip("-")
    gpu = gpu.removeprefix("nvidia-") or "unknown"
    return f"benchmarks/results/gpu-{gpu}-{report.get('started_utc', '')[:10]}.md"


def _part_body(name: str, figures: dict) -> list[str]:
    lines: list[str] = []
    if name == "install":
        if figures.get("wheels"):
            lines += _table(["wheel", "MiB"], [[w["name"], w["mib"]] for w in figures["wheels"]])
        lines += [f"- {k}: {_fmt(v)}" for k, v in figures.items() if k != "wheels"]
    elif name == "environment":
        versions = figures.get("versions", {})
        lines += _table(["package", "version"], [[k, v] for k, v in versions.items()])
        lines += [f"- {k}: {_fmt(v)}" for k, v in figures.items() if k != "versions"]
    elif name == "models":
        rows = []
        for model, f in figures.items():
            if isinstance(f, dict) and "parameters" in f:
                c = f.get("config", {})
                rows.append([model, f["parameters"], f.get("non_embedding_parameters"), c.get("hidden_size"),
                             c.get("num_hidden_layers"), c.get("num_attention_heads"), c.get("num_key_value_heads"),
                             c.get("intermediate_size"), c.get("vocab_size"), c.get("tie_word_embeddings"),
                             f.get("dtype"), f.get("build_s"), f.get("save_s"), f.get("disk_mib")])
        if rows:
            lines += _table(["model", "params", "non-emb params", "hidden", "layers", "heads", "kv", "inter",
                             "vocab", "tied", "dtype", "build s", "save s", "disk MiB"], rows)
        if "tokenizer" in figures:
            lines.append(f"- tokenizer: {figures['tokenizer']}")
    elif name == "bench_loss":
        lines += [f"- {h}" for h in figures.get("header", [])]
        if figures.get("command"):
            lines.append(f"- command: `{figures['command']}`")
        lines.append("")
        if figures.get("rows"):
            lines += _table(["vocab", "variant", "peak MiB", "× base", "median ms", "× base"],
                            [[r["vocab"], r["variant"], r["peak_mib"], r["memory_x_base"], r["median_ms"],
                              r["time_x_base"]] for r in figures["rows"]])
        if figures.get("checks"):
            lines += _table(["vocab", "check", "value", "target", "verdict"],
                            [[c["vocab"], c["check"], c["value"], c["target"], "PASS" if c["passed"] else "FAIL"]
                             for c in figures["checks"]])
    elif name == "step_compare":
        summary = figures.get("summary", {})
        if figures.get("settings"):
            lines.append(f"- settings: {figures['settings']}")
        rows = [[v, s.get("trainer_class"), s.get("runs"), s.get("timed_steps"), s.get("median_step_s"),
                 s.get("median_update_s"), s.get("generation_tokens_per_s"), s.get("peak_mib_timed"),
                 s.get("per_run_median_step_s")]
                for v, s in summary.items() if isinstance(s, dict) and "median_step_s" in s]
        if rows:
            lines += _table(["variant", "trainer", "runs", "timed steps", "median step s", "median update s",
                             "gen tokens/s", "peak VRAM MiB (timed)", "per-run median step s"], rows)
        for key in ("fork_over_stock_step_time", "fork_over_stock_update_time", "fork_over_stock_peak_vram",
                    "first_runs_losses"):
            if key in summary:
                lines.append(f"- {key}: {_fmt(summary[key])}")
        for run in figures.get("runs", []):
            lines.append(f"- run {run['run']}: {run['status']}, {run['seconds']} s (import {_fmt(run.get('import_s'))} s,"
                         f" load {_fmt(run.get('load_s'))} s), median step {_fmt(run.get('median_step_s'))} s")
    elif name == "e2e_step":
        keys = ("trainer_class", "settings", "base_parameters", "trainable_parameters", "import_s", "load_s",
                "step_s", "generate_s", "score_s", "update_s", "generated_tokens", "generation_tokens_per_s",
                "update_tokens", "update_batch_rows_prompt_completion", "update_tflops_per_s", "mfu", "mfu_formula",
                "peak_mib_timed", "peak_mib_warmup_and_load", "losses", "rewards", "run_s")
        lines += [f"- {k}: {_fmt(figures[k])}" for k in keys if k in figures]
    elif name == "gpu_tests":
        if figures.get("command"):
            lines.append(f"- command: `{figures['command']}`; exit {figures.get('exit_code')}; "
                         f"counts {figures.get('counts')}")
            lines.append("")
        if figures.get("tests"):
            lines += _table(["test", "outcome", "s"], [[t["test"], t["outcome"], t["seconds"]]
                                                       for t in figures["tests"]])
            for test in figures["tests"]:
                if test["outcome"] in ("failed", "error") and test.get("message"):
                    lines += [f"{test['test']}:", "```", test["message"][-1500:], "```"]
    else:
        lines += [f"- {k}: {_fmt(v)}" for k, v in figures.items()]
    return lines


def markdown(report: dict) -> str:
    parts = report.get("parts", {})
    date = report.get("started_utc", "")[:10]
    lines = [f"# GPU check: {report.get('gpu_name') or 'no GPU'}, {date}", "",
             f"- mode: {report.get('mode')}; driver: {report.get('driver') or '–'}; started (UTC) "
             f"{report.get('started_utc')}; elapsed {_fmt(report.get('elapsed_s'))} s of a {_fmt(report.get('budget_s'))} s "
             f"budget; finished: {report.get('finished')}",
             f"- made by `bash scripts/gpu_check.sh{' --dry-run' if report.get('mode') == 'dry-run' else ''}`; "
             f"commit as `{suggested_name(report)}`", ""]
    lines += _table(["part", "status", "seconds", "timeout s"],
                    [[name, p.get("status"), p.get("seconds"), p.get("timeout_s")] for name, p in parts.items()])
    for name, part in parts.items():
        lines += [f"## {name}: {part.get('status')}", ""]
        try:
            lines += _part_body(name, part.get("figures", {}))
        except Exception as error:  # noqa: BLE001 - the raw figures still go into the JSON
            lines.append(f"(figures could not be formatted: {error!r}; see gpu_check.json)")
        for note in part.get("notes", []):
            lines.append(f"- note: {note}")
        if part.get("error"):
            lines += ["", "```", part["error"][-4000:], "```"]
        lines.append("")
    return "\n".join(lines)


def summary(report: dict) -> str:
    """A short plain-text digest (the device tool returns only the end of the output): status and headline figures."""
    parts = report.get("parts", {})
    lines = [f"GPU check ({report.get('mode')}): {report.get('gpu_name')}, driver {report.get('driver')}, "
             f"{_fmt(report.get('elapsed_s'))} s of {_fmt(report.get('budget_s'))} s"]
    for name, part in parts.items():
        figures, line = part.get("figures", {}), f"- {name}: {part.get('status')} ({_fmt(part.get('seconds'))} s)"
        try:
            if name == "environment":
                versions = figures.get("versions", {})
                line += " " + ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in (
                    "torch", "triton", "transformers", "trl", "unsloth", "unsloth_zoo", "peft", "bitsandbytes"))
                line += f"; bf16 matmul {_fmt(figures.get('matmul_bf16_tflops_8192'))} TFLOP/s; bnb {figures.get('bitsandbytes_native')}"
            elif name == "models":
                line += " " + ", ".join(f"{k} {_fmt(v.get('parameters'))} params" for k, v in figures.items()
                                        if isinstance(v, dict) and "parameters" in v)
            elif name == "bench_loss":
                rows = {r["variant"]: r for r in figures.get("rows", []) if r["vocab"] == max(x["vocab"] for x in figures["rows"])}
                line += " " + "; ".join(f"{v} {_fmt(r['peak_mib'])} MiB {_fmt(r['median_ms'])} ms" for v, r in rows.items()
                                        if v in ("base", "entropy", "entropy (recompute)", "naive entropy"))
                line += "; targets " + ", ".join(f"{c['check']} {_fmt(c['value'])} {'PASS' if c['passed'] else 'FAIL'}"
                                                for c in figures.get("checks", []))
            elif name == "step_compare":
                s = figures.get("summary", {})
                for variant in ("stock", "fork"):
                    if variant in s:
                        line += (f"; {variant}: median step {_fmt(s[variant].get('median_step_s'))} s, update "
                                 f"{_fmt(s[variant].get('median_update_s'))} s, peak {_fmt(s[variant].get('peak_mib_timed'))} MiB"
                                 f" ({s[variant].get('runs')} runs)")
                line += (f"; fork/stock step {_fmt(s.get('fork_over_stock_step_time'))}, VRAM "
                         f"{_fmt(s.get('fork_over_stock_peak_vram'))}; losses equal "
                         f"{s.get('first_runs_losses', {}).get('equal')}")
            elif name == "e2e_step":
                line += (f" gen {_fmt(figures.get('generation_tokens_per_s'))} tok/s, update {_fmt(figures.get('update_s'))} s"
                         f" for {_fmt(figures.get('update_tokens'))} tokens, MFU {_fmt(figures.get('mfu'))}, peak "
                         f"{_fmt(figures.get('peak_mib_timed'))} MiB")
            elif name == "gpu_tests":
                line += f" {figures.get('counts')}"
        except Exception as error:  # noqa: BLE001
            line += f" (figures: {error!r})"
        lines.append(line)
        if part.get("error"):
            lines += ["    " + l for l in part["error"].splitlines()[-6:]]
        lines += [f"    note: {n}" for n in part.get("notes", []) if n != "not reached"][:4]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("init", "update", "finish", "validate", "markdown", "summary"))
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--mode", choices=("gpu", "dry-run"))
    parser.add_argument("--budget-s", type=float, default=0.0)
    parser.add_argument("--part")
    parser.add_argument("--status")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--timeout-s", type=float, default=None)
    parser.add_argument("--result", type=Path, default=None)
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--note", default=None)
    parser.add_argument("--require-ok", action="store_true")
    options = parser.parse_args(argv)
    if options.command == "init":
        init(options.json, options.mode, options.budget_s)
    elif options.command == "update":
        update(options.json, options.part, options.status, options.seconds, options.timeout_s, options.result,
               options.log, options.note)
    elif options.command == "finish":
        report = load(options.json)
        report["finished"] = True
        save(options.json, report)
    elif options.command == "markdown":
        print(markdown(load(options.json)))
    elif options.command == "summary":
        print(summary(load(options.json)))
    else:
        try:
            report = load(options.json)
        except (OSError, json.JSONDecodeError) as error:
            print(f"gpu_check.json invalid: {error}")
            return 1
        problems = validate(report, options.require_ok)
        for problem in problems:
            print(f"gpu_check.json invalid: {problem}")
        if not problems:
            print(f"gpu_check.json valid ({SCHEMA_ID}; parts: "
                  + ", ".join(f"{n} {p['status']}" for n, p in report["parts"].items()) + ")")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
