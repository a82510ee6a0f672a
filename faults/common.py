"""What every fault shares: the run's settings, progress lines and the targets."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from faults.ports import PortRange

# The targets every fault is judged against (issue 10, "The fault suite").
RECOVERY_TARGET_S = 60.0


def say(message: str) -> None:
    """Progress goes to stderr, so that stdout is only the report (or its JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Context:
    run_dir: Path
    ports: PortRange = field(default_factory=PortRange)
    short: bool = False
    seed: int = 1
    keep: bool = False
    recover_timeout: float | None = None  # how long to wait for the backlog after a fault

    def seconds(self, full: float, short: float) -> float:
        """A fault's duration: as the issue states it, or scaled down with --short."""
        return short if self.short else full

    @property
    def recovery_cap(self) -> float:
        return self.recover_timeout or self.seconds(360.0, 150.0)
