"""Where things are: the checkout, and the read-only shared data beside it.

The chapter's data and GPT-2's BPE files live in `../shared/` beside the checkout (never copied
into the repo); GPT2_INSTRUCT_SHARED points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GPT2_INSTRUCT_SHARED") or REPO.parent / "shared")
INSTRUCTION_DATA = SHARED / "data" / "instruction-data.json"
RESPONSES_DATA = SHARED / "data" / "instruction-data-with-response.json"
TOKENIZER_DIR = SHARED / "tokenizer" / "gpt2"
