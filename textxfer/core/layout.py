"""Where a run keeps its model and what the saved model's config records, shared by the code that writes a run
and the code that reads one back."""

from __future__ import annotations

from pathlib import Path

from textxfer.core.errors import UserError

MODEL_DIR = "model"


ADAPTER_DIR = "adapter"


CONFIG_MAX_LENGTH = "textxfer_max_length"
"""Config key of the token limit the model was trained and scored at (`model.max_length`)."""


CONFIG_PAIR_COLUMN = "textxfer_text_pair_column"
"""Config key of the second-text column a sentence-pair model was trained with (`data.text_pair_column`)."""


def find_model_dir(path: str | Path) -> Path:
    """A run directory or the model folder inside it -> the folder holding config.json."""
    p = Path(path)
    for cand in (p, p / MODEL_DIR):
        if (cand / "config.json").is_file():
            return cand
    if (p / "checkpoints").is_dir():
        raise UserError(f"{p} holds a run that stopped before saving its model. Finish it from its checkpoints: "
                        f"`textxfer train {p / 'recipe.yaml'} --output-dir {p} --resume`.")
    if (p / "train.log").is_file():
        raise UserError(f"{p} holds a run that failed or stopped before saving its model (its train.log says why). "
                        "Train it again.")
    raise UserError(
        f"{p} is neither a textxfer run directory nor a model folder (no config.json in it or in {p / MODEL_DIR}). "
        "Pass the `--output-dir` of a finished `textxfer train`, or a saved model folder."
    )
