"""Stage 1: the canonical raw count file of a dataset (simulated, or converted from its real format)."""


from dagster import AssetExecutionContext, Output, asset

from scaling_assets.assets.common import count_metadata, new_stage, show_progress, rounded, timed, write_summary
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.data.tasks import SIMULATED, describe_signal
from scaling_assets.layout import COUNTS_FILE


def raw_counts_asset(ds: DatasetAssets):
    cfg = ds.config

    @asset(
        key=ds.key("raw_counts"),
        group_name=ds.name,
        kinds={"h5ad"},
        description=f"Canonical raw counts of `{ds.name}` ({cfg.source}, "
        + (f"task {cfg.task}" if cfg.task else "own signals") + f"; signals {', '.join(cfg.signal_names)}): "
        "integer CSR X, signal columns in obs, unique gene ids.",
    )
    def raw_counts(context: AssetExecutionContext):
        from scaling_assets.errors import InputError

        stage = new_stage(ds.study, "raw")
        out = stage / COUNTS_FILE
        try:
            summary, seconds = _write_raw(ds, out)
        except InputError as exc:  # the stage folder is never renamed into place (swept as abandoned)
            out.unlink(missing_ok=True)
            raise InputError(f"dataset {ds.name!r}: {exc}") from None  # the message is the cause
        summary = dict(summary, source=cfg.source, task=cfg.task, signals=summary.get("signals"),
                       signal_specs=[describe_signal(s) for s in cfg.signals])
        write_summary(stage, summary)
        context.log.info(f"{ds.name}: {summary.get('cells')} cells x {summary.get('genes')} genes in {seconds:.1f} s")
        return Output(stage, metadata={**count_metadata(summary), "source": cfg.source, "wall_time_s": rounded("wall_time_s", seconds)})

    return raw_counts


def _write_raw(ds: DatasetAssets, out) -> tuple[dict, float]:
    """Simulate or convert the dataset to ``out`` and check that it carries every signal of the dataset."""
    cfg = ds.config
    with timed() as elapsed:
        if cfg.source == SIMULATED:
            from scaling_assets.data.simulate import simulate

            summary = simulate(
                cfg.task, cfg.cells, cfg.genes, cfg.seed, out,
                chunk_size=ds.study.chunk_size, progress=show_progress(),
            )
        else:
            from scaling_assets.data.loaders import ingest

            options = dict(cfg.paths, **cfg.options, chunk_size=ds.study.chunk_size)
            if cfg.source == "h5ad":
                # the canonical file must carry the dataset's signals: checked before anything is written
                options.update(task=cfg.task, signals=cfg.signals)
            summary = ingest(cfg.source, out, progress=show_progress(), **options)
        if cfg.source != "h5ad":  # a format's loader checks its task's columns; the dataset may declare more
            from scaling_assets.data.h5ad_io import CsrReader
            from scaling_assets.data.loaders import check_signal_specs

            with CsrReader(out) as reader:
                summary["signals"] = check_signal_specs(reader, cfg.signals, str(out), ds.study.chunk_size)
        return summary, elapsed()
