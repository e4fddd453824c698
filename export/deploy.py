"""Which variant of each graph an export deploys, and why: deploy.json (read back by zoo.deployment).

`auto` (the default) deploys, per graph, the variant measured fastest on the execution provider
the graphs will run on here, among those that passed the accuracy gate and beat fp32 there; fp32
otherwise. On a CUDA GPU that is normally fp16 (tensor cores), on a CPU with int8 dot-product
instructions (VNNI) int8. `--deploy fp32|int8|fp16` names the variant instead; a graph whose
variant was refused keeps fp32. The export is made on the kind of machine that will serve it, or
the choice is given with --deploy: the figures behind `auto` are measured here.
"""
from __future__ import annotations

import json
from pathlib import Path

from zoo.atomic import atomic_write_json
from zoo.deployment import FP32, KINDS, MANIFEST, variant_file
from zoo.errors import UsageError, ZooError
from zoo.export.formats import AUTO_DEPLOY
from zoo.inference import CPU, open_session

MANIFEST_VERSION = 1
# Instruction-set flags (Linux /proc/cpuinfo) under which ONNX Runtime's int8 kernels use dot products.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
REPORT_KEYS = {"classifier": "variants", "features": "feature_variants"}  # where export_report.json keeps each


def int8_instructions(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU's int8 dot-product instruction sets (VNNI on x86, dot product on Arm); empty when unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    flags = {f for line in text.splitlines() if line.split(":")[0].strip() in ("flags", "Features")
             for f in line.split(":", 1)[1].split()}
    return [f for f in INT8_FLAGS if f in flags]


def detect_target(graph: Path) -> dict:
    """The provider a session on `graph` really gets here (zoo.inference's choice), and the CPU's int8 flags."""
    provider = open_session(graph).get_providers()[0]
    return {"provider": provider, "cpu_int8_instructions": int8_instructions()}


def _target_words(target: dict) -> str:
    if target["provider"] != CPU:
        return target["provider"]
    flags = target.get("cpu_int8_instructions") or []
    return f"{CPU} with VNNI ({', '.join(flags)})" if flags else f"{CPU} without VNNI"


def choose(kind: str, variants: dict[str, dict], asked: str, target: dict) -> dict:
    """{variant, file, reason} for one graph; `variants` are its entries in export_report.json."""
    where = _target_words(target)
    if asked == FP32:
        return _entry(kind, FP32, "--deploy fp32")
    if asked != AUTO_DEPLOY:
        info = variants.get(asked)
        if info and info.get("status") == "accepted":
            return _entry(kind, asked, f"--deploy {asked} (passed its gate: {info['drop_points']:+.2f} points)")
        why = "was refused by its accuracy gate" if info else f"was not made (--quantize {asked})"
        return _entry(kind, FP32, f"--deploy {asked}, but {variant_file(kind, asked)} {why}")
    passed = {v: i for v, i in variants.items() if i.get("status") == "accepted"}
    faster = {v: i for v, i in passed.items() if i.get("speed_ratio", 0) > 1.0}
    if not faster:
        tried = "; ".join(f"{v} {i.get('status')}, {i.get('speed_ratio', 0):.2f}x fp32" for v, i in variants.items())
        return _entry(kind, FP32, f"auto on {where}: no variant passed its gate and beat fp32 here"
                                  + (f" ({tried})" if tried else " (none made: --quantize int8 or fp16)"))
    best = max(faster, key=lambda v: faster[v]["speed_ratio"])
    info = faster[best]
    return _entry(kind, best, f"auto on {where}: {best} passed its gate ({info['drop_points']:+.2f} points, limit "
                              f"{info['threshold_points']}) and ran {info['speed_ratio']:.2f}x fp32 at batch 1 on "
                              f"{info.get('latency_provider', CPU)}, the fastest that passed")


def _entry(kind: str, variant: str, reason: str) -> dict:
    return {"variant": variant, "file": variant_file(kind, variant), "reason": reason}


def manifest(report: dict, asked: str, target: dict) -> dict:
    """deploy.json's content from an export report (its variants' gates and speeds)."""
    out = {"manifest_version": MANIFEST_VERSION, "asked": asked, "target": target,
           "fallback": {kind: variant_file(kind, FP32) for kind in KINDS}}
    for kind in KINDS:
        out[kind] = choose(kind, report.get(REPORT_KEYS[kind]) or {}, asked, target)
    return out


def check_asked(asked: str, made: list[str]) -> None:
    """Refuse, before anything is written, a --deploy variant this export will not make."""
    if asked not in (AUTO_DEPLOY, FP32) and asked not in made:
        raise UsageError(f"--deploy {asked} needs the {asked} variant: add --quantize {asked}.")


def write(out_dir: Path, content: dict) -> None:
    atomic_write_json(Path(out_dir) / MANIFEST, content)


def redeploy(out_dir: Path, report_name: str, asked: str) -> dict:
    """Choose again in a finished export folder, without exporting again: deploy.json and the report's copy."""
    out_dir = Path(out_dir)
    report = json.loads((out_dir / report_name).read_text())
    made = [v for kind in KINDS for v, i in (report.get(REPORT_KEYS[kind]) or {}).items()
            if i.get("status") == "accepted" and (out_dir / variant_file(kind, v)).is_file()]
    if asked not in (AUTO_DEPLOY, FP32) and asked not in made:
        raise ZooError(f"{out_dir} holds no accepted {asked} variant: export again with --quantize {asked} --force.")
    content = manifest(report, asked, detect_target(out_dir / variant_file("classifier", FP32)))
    report["deploy"] = content
    write(out_dir, content)
    atomic_write_json(out_dir / report_name, report)
    return report


def is_export_of(out_dir: Path, report_name: str, run_dir: Path) -> bool:
    """True when out_dir holds a finished export of run_dir (what --deploy alone may re-choose in)."""
    path = Path(out_dir) / report_name
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    fp32 = all((Path(out_dir) / variant_file(kind, FP32)).is_file() for kind in KINDS)
    return bool(report.get("ok")) and fp32 and Path(report.get("run_dir", "")).resolve() == Path(run_dir).resolve()
