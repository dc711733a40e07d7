"""Where the bundled data lives (signatures, deploy objects), for a source checkout or an install."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SIGNATURES_DIR = PROJECT_ROOT / "signatures"
VENDORS_DIR = SIGNATURES_DIR / "vendors"
PHI_LEXICON_DIR = SIGNATURES_DIR / "phi"
DEPLOY_DIR = PROJECT_ROOT / "deploy"
