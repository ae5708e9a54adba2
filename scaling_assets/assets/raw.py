"""Stage 1: the canonical raw count file of a dataset (simulated, or converted from its real format)."""


from dagster import AssetExecutionContext, Output, asset

from scaling_assets.assets.common import count_metadata, new_stage, show_progress, rounded, timed, write_summary
from scaling_assets.assets.partitions import DatasetAssets
from scaling_assets.data.tasks import SIMULATED
from scaling_assets.layout import COUNTS_FILE


def raw_counts_asset(ds: DatasetAssets):
    cfg = ds.config

    @asset(
        key=ds.key("raw_counts"),
        group_name=ds.name,
        kinds={"h5ad"},
        description=f"Canonical raw counts of `{ds.name}` ({cfg.source}, task {cfg.task}): integer CSR X, "
        "signal columns in obs, unique gene ids.",
    )
    def raw_counts(context: AssetExecutionContext):
        stage = new_stage(ds.study, "raw")
        out = stage / COUNTS_FILE
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
                    options["task"] = cfg.task  # the canonical file must carry this task's signals
                summary = ingest(cfg.source, out, progress=show_progress(), **options)
        summary = dict(summary, source=cfg.source, task=cfg.task)
        write_summary(stage, summary)
        context.log.info(f"{ds.name}: {summary.get('cells')} cells x {summary.get('genes')} genes in {elapsed():.1f} s")
        return Output(stage, metadata={**count_metadata(summary), "source": cfg.source, "wall_time_s": rounded("wall_time_s", elapsed())})

    return raw_counts
