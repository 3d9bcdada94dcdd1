"""Asset keys and metadata for Prefect's lineage events (dataset → checkpoint → MINDIR release)."""

from __future__ import annotations

from pathlib import Path

from prefect.assets import add_asset_metadata
from prefect.context import AssetContext


def asset_key(uri: str) -> str:
    """A URI usable as an asset key: s3:// and file:// stay, a plain path becomes file://<absolute path>."""
    return uri if "://" in uri else f"file://{Path(uri).resolve()}"


def describe_assets(metadata: dict) -> None:
    """Attach `metadata` to every asset this task run materializes; nothing outside `@materialize`."""
    context = AssetContext.get()
    for asset in context.downstream_assets if context else ():
        add_asset_metadata(asset, metadata)
