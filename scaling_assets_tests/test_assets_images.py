"""Images in the UI's metadata: a short Markdown link the webserver serves (shown in place), or the
PNG embedded in the Markdown where the instance keeps no local compute logs (shown in a dialog)."""

from pathlib import Path

import pandas as pd

from dagster import AssetExecutionContext, DagsterInstance, Output, asset, materialize

from scaling_assets.assets.common import image_metadata
from scaling_assets.metrics.plots import plot_loss_curves

IN_PLACE_LIMIT = 1000  # the UI renders Markdown entries shorter than this in place (MetadataEntry.tsx)


def materialise_image(png: Path, instance) -> str:
    @asset
    def plotted(context: AssetExecutionContext):
        return Output(1, metadata={"plot": image_metadata(context, png, "loss")})

    result = materialize([plotted], instance=instance)
    return result.asset_materializations_for_node("plotted")[0].metadata["plot"].value


def test_image_is_served_by_the_webserver_and_shown_in_place(tmp_path):
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import EmptyWorkspaceTarget
    from dagster_webserver.app import create_app_from_workspace_process_context
    from starlette.testclient import TestClient

    png = plot_loss_curves(pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [3.0, 2.0, 1.5]}), tmp_path / "loss.png")
    with DagsterInstance.local_temp(tempdir=str(tmp_path)) as instance:  # local compute logs
        markdown = materialise_image(png, instance)
        assert markdown.startswith("![loss](/logs/") and len(markdown) < IN_PLACE_LIMIT
        with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as workspace:
            client = TestClient(create_app_from_workspace_process_context(workspace))
            served = client.get(markdown[len("![loss]("):-1])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content == png.read_bytes()


def test_image_is_embedded_without_local_compute_logs(tmp_path):
    png = plot_loss_curves(pd.DataFrame({"step": [1], "train_loss": [0.5]}), tmp_path / "one.png")
    with DagsterInstance.ephemeral() as instance:  # no compute logs kept
        markdown = materialise_image(png, instance)
    assert markdown.startswith("![loss](data:image/png;base64,") and len(markdown) > IN_PLACE_LIMIT
