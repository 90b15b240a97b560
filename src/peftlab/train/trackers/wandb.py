"""``--report-to wandb``: one Weights & Biases run through ``wandb.init``.

Files go into ``--output/wandb`` (or ``--tracker-dir``/wandb). The run is offline (``wandb sync`` uploads it
later) when ``WANDB_MODE=offline`` or when no API key is found (``WANDB_API_KEY`` or ``wandb login``'s netrc);
otherwise W&B's own settings apply. Project ``--tracker-project``, name ``--run-name``, tags ``method:...``,
``task:...``, ``model:...``, ``seed:...``; ``--resume`` continues the run id kept in ``trackers.json``.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from peftlab.train.trackers.base import TrackerMissing, TrackerRun

EXIT_CODES = {"finished": 0, "failed": 1, "killed": 130}


class WandbTracker:
    def __init__(self, run: TrackerRun) -> None:
        try:
            import wandb
        except ImportError as error:
            raise TrackerMissing("wandb", error) from None
        self.wandb, self.run = wandb, run
        self.offline = os.environ.get("WANDB_MODE") == "offline" or not has_api_key()
        stored = run.stored.get("wandb", {}).get("run_id") if run.continues else None
        self.run_id = stored or uuid.uuid4().hex[:8]  # W&B's own ids are 8 of [a-z0-9] too

    def start(self, config: dict[str, Any], step: int) -> None:
        self.run.root.mkdir(parents=True, exist_ok=True)
        self.session = self.wandb.init(
            project=self.run.project, name=self.run.name, id=self.run_id, resume="allow", dir=str(self.run.root),
            config=config, tags=[f"{key}:{value}"[:64] for key, value in self.run.tags.items()],
            mode="offline" if self.offline else None, settings=self.wandb.Settings(console="off"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.session.log(metrics, step=step)

    def finish(self, summary: dict[str, float], status: str) -> None:
        self.session.summary.update(summary)
        self.session.finish(exit_code=EXIT_CODES[status])

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id}


def has_api_key() -> bool:
    """Whether W&B would find a key: ``WANDB_API_KEY``, or the netrc entry ``wandb login`` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

        return read_netrc_auth(host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")) is not None
    except Exception:  # noqa: BLE001  (an internal module that may move: then no key found, so offline)
        return False
