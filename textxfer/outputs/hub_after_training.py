"""The recipe's `hub.push`: what the push will need, checked when `textxfer train` starts, and the push itself once
the run has finished (`textxfer push` is the same push, asked for by hand)."""

from __future__ import annotations

import shlex
from pathlib import Path

from textxfer.core.errors import UserError
from textxfer.outputs.hub import push_run, validate_branch, validate_repo_id

HUB_CONFIG_KEYS = ("repo_id", "private", "revision", "adapter_only", "commit_message", "license")


def check_push_ready(repo_id: str, revision: str | None = None) -> None:
    """What a push needs that is known before any training (the recipe's `hub.push`): a valid repo id and branch,
    network access allowed, a token. Checked when `textxfer train` starts, so a run is not trained for an hour to
    fail at its last step."""
    validate_repo_id(repo_id)
    if revision is not None:
        validate_branch(revision)
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise UserError(f"The recipe pushes the run to {repo_id} (`hub.push.repo_id`), but HF_HUB_OFFLINE is set, "
                        "so the push after training would fail. Unset HF_HUB_OFFLINE for this command, or remove "
                        "`hub.push.repo_id` and push later with `textxfer push RUN_DIR REPO_ID`.")
    if not get_token():
        raise UserError(f"The recipe pushes the run to {repo_id} (`hub.push.repo_id`), but no Hugging Face token "
                        "was found: create one with write access at https://huggingface.co/settings/tokens, then "
                        "`export HF_TOKEN=...` or run `hf auth login`, or remove `hub.push.repo_id`.")


def push_after_training(run_dir: str | Path, hub_cfg: dict | None) -> str | None:
    """The recipe's `hub: {push: {repo_id, private, ...}}` (or the `push` mapping itself) after a run finished.
    Returns the commit URL, or None when the recipe asks for no push."""
    if not hub_cfg:
        return None
    cfg = hub_cfg.get("push", hub_cfg) if isinstance(hub_cfg, dict) else hub_cfg
    if cfg in (None, False):
        return None
    if not isinstance(cfg, dict):
        raise UserError(f"Recipe key `hub.push` must be a mapping like {{repo_id: alice/my-model, private: true}}, "
                        f"not {cfg!r}.")
    unknown = sorted(set(cfg) - set(HUB_CONFIG_KEYS))
    if unknown:
        raise UserError(f"Unknown recipe key `hub.push.{unknown[0]}`. Allowed keys: {', '.join(HUB_CONFIG_KEYS)}.")
    if not cfg.get("repo_id"):
        return None
    mode = "adapter" if cfg.get("adapter_only") else "merged"
    try:
        return push_run(run_dir, str(cfg["repo_id"]), private=bool(cfg.get("private", False)),
                        revision=cfg.get("revision"), mode=mode, commit_message=cfg.get("commit_message"),
                        license=cfg.get("license"))
    except UserError as e:  # the run itself is complete: say so, and how to push it again
        again = shlex.join(["textxfer", "push", str(run_dir), str(cfg["repo_id"]),
                            *(["--private"] if cfg.get("private") else []),
                            *(["--revision", str(cfg["revision"])] if cfg.get("revision") else []),
                            *(["--adapter-only"] if mode == "adapter" else [])])
        raise UserError(f"The run finished and is saved in {run_dir}; only its push failed. {e} Push it again "
                        f"with `{again}`.") from None
