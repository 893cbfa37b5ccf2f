"""textxfer: transfer learning for text classification with pretrained encoders.

    import textxfer
    run = textxfer.train("recipes/quickstart.yaml", overrides=["training.contrastive=null"])
    textxfer.load(run.output_dir).predict(["Shares fell after the results."])
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["train", "load", "load_recipe", "UserError"]

from textxfer.core.errors import UserError


def __getattr__(name: str):
    # heavy imports (torch, transformers) only when used, so `import textxfer` and the CLI help stay quick
    if name == "train":
        from textxfer.tools.train import train

        return train
    if name == "load":
        from textxfer.modalities.detect import load_saved

        return load_saved
    if name == "load_recipe":
        from textxfer.config.reading import load_recipe

        return load_recipe
    raise AttributeError(name)
