"""Upload, in the thread, the wafer map as the model read it — failing dies highlighted (DEFECT_GLM_BOT_UPLOAD_MAP=1).

The die grid comes back from model_server in `findings.grid`; it is drawn with
`data_tools.render.render_highlight` and sent with `files_upload_v2`,
so the engineer can check that the map was read correctly.
"""

from __future__ import annotations

import asyncio

import numpy as np
from slack_sdk.web.async_client import AsyncWebClient

from bot.store import Job
from model_server import wire

TARGET_PX = 416


def render_grid_png(grid: list[list[int]]) -> bytes:
    """PNG bytes of the die grid, failing dies in a strong colour, about TARGET_PX pixels wide."""
    from data_tools.render import render_highlight, to_png_bytes  # lazy: only when uploading
    from data_tools.wafer_map import WaferMap

    wafer = WaferMap(np.asarray(grid, dtype=np.uint8))
    return to_png_bytes(render_highlight(wafer, size=TARGET_PX))


async def upload_map_as_read(slack: AsyncWebClient, job: Job, reply: wire.ThreadReply) -> None:
    """Render `reply.findings.grid` and upload it in the job's thread."""
    if reply.findings is None or not reply.findings.grid:
        return
    png = await asyncio.to_thread(render_grid_png, reply.findings.grid)
    m = reply.findings.measured
    await slack.files_upload_v2(
        channel=job.channel,
        thread_ts=job.thread_ts,
        content=png,
        filename="wafer-map-as-read.png",
        title="Wafer map as read",
        alt_txt=f"Die grid as read: {m.get('failing', '?')} of {m.get('dies', '?')} dies failing (highlighted)",
        initial_comment="The wafer map as I read it (failing dies highlighted):",
    )
