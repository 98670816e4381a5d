"""Remote work dirs (gs:// etc.): files are written to a local mirror, then uploaded."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import jax


@dataclasses.dataclass(frozen=True)
class Mirror:
    """`local` is where the run writes its logs, plots, summary and export; for a remote `workdir` a
    temporary folder whose files `upload` copies there, else `workdir` itself."""

    workdir: str
    local: Path
    remote: bool

    @classmethod
    def open(cls, workdir, fetch=("metrics.jsonl",)) -> Mirror:
        """The run's mirror, with the remote files in `fetch` downloaded (a resumed run appends to them)."""
        remote = "://" in str(workdir)
        local = Path(tempfile.mkdtemp(prefix="cel_jax_")) if remote else Path(workdir)
        if remote:
            from etils import epath

            for n in fetch:
                src = epath.Path(workdir) / n
                if src.exists():
                    (local / n).write_bytes(src.read_bytes())
        if jax.process_index() == 0:
            local.mkdir(parents=True, exist_ok=True)
        return cls(str(workdir), local, remote)

    def upload_file(self, f: Path) -> None:
        """One file of the mirror's top level (process 0; a no-op for a local work dir)."""
        if self.remote and jax.process_index() == 0 and f.exists():
            from etils import epath

            (epath.Path(self.workdir) / f.name).write_bytes(f.read_bytes())

    def upload(self) -> None:
        """Every file of the mirror (metrics, plots, summary, exported model) to the remote work dir."""
        if not self.remote:
            return
        from etils import epath

        for f in self.local.rglob("*"):
            if f.is_file():
                dst = epath.Path(self.workdir) / f.relative_to(self.local).as_posix()
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(f.read_bytes())
