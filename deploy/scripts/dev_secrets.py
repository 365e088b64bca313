"""Write the dev overlay's secrets, random and local, where its kustomization reads them.

`make k8s-dev-secrets` runs this; a file that exists is kept, so a developer can put their own
Supabase project's JWT secret there. The folder is git-ignored: no secret is ever committed.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "k8s" / "overlays" / "dev" / "secrets"
NAMES = ("edge-secret", "supabase-jwt-secret")


def ensure(folder: Path = FOLDER) -> list[Path]:
    """The secret files, each created (0600, 48 random bytes as URL-safe text) if missing."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in NAMES]
    for path in paths:
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
    return paths


if __name__ == "__main__":
    for written in ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER):
        print(written)
