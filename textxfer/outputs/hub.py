"""Publish a finished run on the Hugging Face Hub: `textxfer push` and `textxfer card` (the recipe's `hub.push`
after training is `hub_after_training`, through `push_run`).

A pushed repo is complete and self-describing: the merged model (or the LoRA adapter with its trained head and
label names), a model card written from the run (see `textxfer.outputs.card`), the resolved recipe.yaml (local
paths by their last name) and metrics.json. The upload is staged in a temporary folder that is removed whatever
happens, so the run directory is never touched and nothing is left half-written locally; the Hub receives it as
one commit.

`huggingface_hub` is imported inside the functions: it reads `HF_ENDPOINT` and `HF_HUB_OFFLINE` when first
imported, and `textxfer --help` should not pay for it. The token comes from where `huggingface_hub` looks
(`HF_TOKEN`, then the login cache of `hf auth login`); it is never printed or written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from textxfer.core.errors import UserError
from textxfer.outputs.card import model_card
from textxfer.outputs.card_metadata import published_recipe
from textxfer.outputs.finished_run import Run, read_run, source_folder

BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
# Top-level files a textxfer push publishes. When a later push to the same branch does not bring one of them
# (say an adapter push after a merged one), it is deleted in that commit, so the repo never mixes two models.
# Files the user added by other means are left alone.
PUBLISHED_FILES = re.compile(
    r"^(?:.*\.safetensors|model\.safetensors\.index\.json|pytorch_model.*\.bin|config\.json|adapter_config\.json|"
    r"textxfer_labels\.json|tokenizer(?:_config)?\.json|special_tokens_map\.json|added_tokens\.json|vocab\.(?:txt|json)|"
    r"merges\.txt|spiece\.model|sentencepiece\.bpe\.model|preprocessor_config\.json|generation_config\.json|"
    r"metrics\.json|recipe\.yaml|onnx/(?:model(?:_int8)?\.onnx(?:\.data)?|tokenizer\.json|textxfer_export\.json))$"
)


def validate_repo_id(repo_id: str) -> None:
    """The Hub's naming rules (huggingface_hub's own check), before any network call so a typo costs nothing."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate

    try:
        hub_validate(repo_id or "")
        bad = not repo_id or repo_id.endswith(".git")
    except HFValidationError:
        bad = True
    if bad:
        raise UserError(
            f"{repo_id!r} is not a valid Hub repo id. Use `namespace/name` (your user name or an organisation, "
            "then the repo name) or just `name`, with letters, digits, `-`, `_` and `.` only (no spaces, no `--` "
            "or `..`, at most 96 characters each, not starting or ending with `-` or `.`), e.g. "
            "`alice/bert-sst2-lora`."
        )


def validate_branch(revision: str) -> None:
    if not BRANCH_RE.match(revision) or ".." in revision or revision.endswith(("/", ".lock")) or "//" in revision:
        raise UserError(
            f"--revision {revision!r} is not a valid branch name. Use letters, digits, `-`, `_`, `.` and `/` "
            "(e.g. `experiment-1` or `runs/lora-r8`), starting with a letter or digit."
        )


# ---------------------------------------------------------------------------------------------- errors


def _chain(e: BaseException) -> Iterator[BaseException]:
    """The exception and what caused it (huggingface_hub wraps upload errors in RuntimeError)."""
    seen: set[int] = set()
    stack = [e]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        stack += [cur.__cause__, cur.__context__]


def _is_network_error(e: BaseException) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "ProxyError",
                         "RemoteProtocolError", "ConnectionError"}) and "OfflineModeIsEnabled" not in names


def _server_message(e: BaseException) -> str:
    msg = getattr(e, "server_message", None) or ""
    return " ".join(str(msg).split())


@contextmanager
def hub_errors(repo_id: str, endpoint: str) -> Iterator[None]:
    """Turn what the Hub client raises into one clear UserError paragraph (exit code 2)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    kept = "The run directory is unchanged and no commit was made."
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        for e in _chain(exc):
            if isinstance(e, OfflineModeIsEnabled):
                raise UserError(_offline_message()) from None
            if isinstance(e, HfHubHTTPError) and e.response is not None:
                status = e.response.status_code
                detail = _server_message(e)
                detail = f" The Hub said: {detail}." if detail else ""
                if status == 401:
                    raise UserError(
                        f"The Hub at {endpoint} rejected your token (401 Unauthorized): it is invalid, expired or "
                        f"revoked.{detail} Create a token with write access at https://huggingface.co/settings/tokens "
                        f"and set HF_TOKEN (or run `hf auth login`). {kept}"
                    ) from None
                if status == 403:
                    raise UserError(
                        f"Your token may not write to {repo_id} (403 Forbidden).{detail} Push to your own namespace "
                        "or to an organisation where you have write access, or use a token with write permission "
                        f"for this repo. {kept}"
                    ) from None
                if status == 404:
                    ns = repo_id.split("/")[0] if "/" in repo_id else "your namespace"
                    raise UserError(
                        f"{repo_id} was not found on {endpoint} (404 Not Found).{detail} The namespace `{ns}` "
                        "does not exist, or the repository is private and your token cannot see it. Check the "
                        f"repo id and HF_ENDPOINT (if set). {kept}"
                    ) from None
                if status in (400, 422):
                    raise UserError(f"The Hub refused the upload to {repo_id} ({status}).{detail} {kept}") from None
                raise UserError(
                    f"The Hub at {endpoint} answered {status} while pushing to {repo_id}.{detail} Try again in a "
                    f"while. {kept}"
                ) from None
            if _is_network_error(e):
                raise UserError(
                    f"Could not reach the Hub at {endpoint} ({type(e).__name__}: {e}). Check your network "
                    f"connection (and HF_ENDPOINT, if set), then push again. {kept}"
                ) from None
        for e in _chain(exc):
            if type(e).__name__ == "HFValidationError" or (isinstance(e, ValueError) and "README" in str(e)):
                raise UserError(f"The push to {repo_id} was refused: {e} {kept}") from None
        raise


def _offline_message() -> str:
    return ("HF_HUB_OFFLINE is set, so huggingface_hub blocks all network access and cannot push. Unset it "
            "for this command (`HF_HUB_OFFLINE=0 textxfer push ...`) and push again.")


# ---------------------------------------------------------------------------------------------- staging


def _place(src: Path, dst: Path) -> None:
    """Hard-link when possible (no copy of big weights), else copy; the source is only read either way."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage(run: Run, mode: str, dest: Path, card: str) -> list[str]:
    """Lay out the repo's files in `dest`: model (or adapter) files, README.md, recipe.yaml, metrics.json."""
    folder = source_folder(run, mode)
    names: list[str] = []
    for src in sorted(folder.rglob("*")):
        rel = src.relative_to(folder)
        if src.is_dir() or any(p.startswith(".") for p in rel.parts) or rel.as_posix() == "README.md":
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _place(src, target)
        names.append(rel.as_posix())
    if mode == "adapter" and not (dest / "tokenizer_config.json").exists():
        # the tokenizer travels with the adapter, so the usage snippet loads it from the same repo
        model_dir = run.dir / "model"
        for src in sorted(model_dir.glob("*")):
            if src.is_file() and (src.name.startswith(("tokenizer", "special_tokens", "added_tokens", "vocab",
                                                       "merges", "spiece", "sentencepiece"))):
                _place(src, dest / src.name)
                names.append(src.name)
    # the recipe as the card shows it: local paths by their last name (a public repo never names your folders)
    (dest / "recipe.yaml").write_text(published_recipe(run.recipe_text), encoding="utf-8")
    _place(run.dir / "metrics.json", dest / "metrics.json")
    names += ["recipe.yaml", "metrics.json"]
    (dest / "README.md").write_text(card, encoding="utf-8")
    names.append("README.md")
    return sorted(names)


def stage_onnx(export: Path, dest: Path) -> list[str]:
    """`textxfer push --onnx`: the exported folder placed as the repo's `onnx/`; the files' repo paths."""
    from textxfer.outputs.card_onnx import ONNX_FOLDER

    (dest / ONNX_FOLDER).mkdir()
    names = []
    for f in sorted(export.iterdir()):
        if f.is_file():
            _place(f, dest / ONNX_FOLDER / f.name)
            names.append(f"{ONNX_FOLDER}/{f.name}")
    return names


def refuse_secrets(files: list[Path], token: str) -> None:
    """Never publish the token: refuse when a file to upload (a recipe, a config, the card) contains it."""
    needle = token.encode()
    found = [f for f in files if f.is_file() and f.suffix not in (".safetensors", ".bin")
             and f.stat().st_size < 50_000_000 and needle in f.read_bytes()]
    if found:
        raise UserError(
            f"{', '.join(str(f) for f in found)} contains your Hugging Face token, so pushing would publish it. "
            "Remove the token from the run directory (and revoke the token if it was ever shared), then push "
            "again. Nothing was uploaded."
        )


# ---------------------------------------------------------------------------------------------- push


def _base_license(api: Any, run: Run) -> str | None:
    """The base model's license from its Hub card, when the base is a Hub repo (a convenience: None on failure)."""
    from textxfer.outputs.card_metadata import is_hub_id

    if not is_hub_id(run.model_name):
        return None
    try:
        data = api.model_info(run.model_name).card_data
        lic = getattr(data, "license", None) if data is not None else None
        return lic if isinstance(lic, str) and lic else None
    except Exception:
        return None


def _default_message(run: Run, mode: str) -> str:
    strategy = (run.record.get("strategy") or {}).get("name", "?")
    best = run.metrics.get("best_metric") or "accuracy"
    score = ""
    for split in ("test", "validation"):
        value = (run.metrics.get(split) or {}).get(best)
        if isinstance(value, (int, float)):
            score = f", {split} {best} {value:.4f}"
            break
    what = "LoRA adapter" if mode == "adapter" else "model"
    return f"textxfer: {what} from run {run.dir.resolve().name} ({strategy}{score})"


def push_run(run_dir: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
             mode: str = "merged", commit_message: str | None = None, license: str | None = None,
             onnx: str | None = None) -> str:
    """Push a finished run to `repo_id` (created if needed) in one commit; returns the commit URL.

    `mode="merged"` publishes model/ (plain transformers loads it); `mode="adapter"` the LoRA adapter with its
    trained head and label names. `revision` pushes to that branch (created from main if new). `private=True`
    creates the repo private, and makes an existing public one private. `onnx` (`none` or `int8`) exports the
    model (`textxfer export`) into the repo's `onnx/` folder next to it, before anything is uploaded.
    """
    validate_repo_id(repo_id)
    if revision is not None:
        validate_branch(revision)
    run = read_run(run_dir)
    source_folder(run, mode)  # fail on a missing model/adapter before any network call (or token look-up)

    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise UserError(_offline_message())
    token = get_token()
    if not token:
        raise UserError(
            "No Hugging Face token found, and pushing needs one with write access. Create it at "
            "https://huggingface.co/settings/tokens, then `export HF_TOKEN=...` or run `hf auth login`."
        )
    folder = source_folder(run, mode)
    refuse_secrets([run.dir / "recipe.yaml", run.dir / "metrics.json", run.dir / "run.json",
                    *sorted(folder.rglob("*"))], token)
    with tempfile.TemporaryDirectory(prefix="textxfer-push-onnx-") as exported:
        if onnx:  # exported (and checked against PyTorch) before any network call
            from textxfer.outputs.onnx_export import export_run

            export_run(run.dir, Path(exported) / "onnx", quantize=onnx)
        return _upload(run, repo_id, private, revision, mode, commit_message, license, token,
                       Path(exported) / "onnx" if onnx else None, onnx)


def _upload(run: Run, repo_id: str, private: bool, revision: str | None, mode: str, commit_message: str | None,
            license: str | None, token: str, export: Path | None, onnx: str | None) -> str:
    """Create the repo if needed and upload the staged files in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    endpoint = api.endpoint
    with hub_errors(repo_id, endpoint):
        url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        full_id = url.repo_id
        branch = revision or "main"
        if revision is not None:
            api.create_branch(full_id, branch=revision, exist_ok=True)
        info = api.repo_info(full_id, revision=branch)
        if private and not info.private:
            api.update_repo_settings(full_id, private=True)
        if license is None:
            license = _base_license(api, run)
        card = model_card(run.dir, mode, repo_id=full_id, revision=revision, license=license, onnx=onnx)
        remote = {s.rfilename for s in (info.siblings or [])}
        with tempfile.TemporaryDirectory(prefix="textxfer-push-") as tmp:
            names = stage(run, mode, Path(tmp), card)
            if export is not None:
                names = sorted(names + stage_onnx(export, Path(tmp)))
            refuse_secrets(sorted(Path(tmp).rglob("*")), token)
            stale = sorted(f for f in remote if PUBLISHED_FILES.match(f) and f not in names)
            commit = api.upload_folder(
                repo_id=full_id, folder_path=tmp, revision=revision,
                commit_message=commit_message or _default_message(run, mode),
                commit_description=f"Pushed with `textxfer push` ({mode}): {', '.join(names)}.",
                delete_patterns=stale or None,
            )
    return str(commit.commit_url)


# ---------------------------------------------------------------------------------------------- commands


@click.command("push")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo private (and make an existing public one private).")
@click.option("--revision", metavar="BRANCH", help="Push to this branch (created from main if it does not exist).")
@click.option("--adapter-only", is_flag=True,
              help="Push only the LoRA adapter with its trained head and label names (needs `save_adapter`).")
@click.option("--merged", is_flag=True,
              help="Push the full model, LoRA merged in, that plain transformers loads (the default).")
@click.option("--commit-message", metavar="MSG", help="Commit title (default: run, strategy and score).")
@click.option("--license", "license_", metavar="ID",
              help="License for the card metadata, e.g. apache-2.0 (default: the base model's, else `other`).")
@click.option("--onnx", is_flag=True, help="Also export the model to ONNX (`textxfer export`) into the repo's "
                                           "onnx/ folder; the card says how to load it without torch.")
@click.option("--quantize", type=click.Choice(["none", "int8"]), default=None,
              help="With --onnx: int8 weights (default: none, fp32).")
def push_command(run_dir, repo_id, private, revision, adapter_only, merged, commit_message, license_, onnx,
                 quantize):
    """Push a finished run to the Hugging Face Hub: model (or adapter), model card, recipe and metrics.

    RUN_DIR is what `textxfer train` wrote; REPO_ID is `namespace/name` (created if needed; pushing again
    makes a new commit). The token comes from HF_TOKEN or `hf auth login` and is never printed.

    \b
    Examples:
      textxfer push runs/quickstart alice/minilm-bbc-news
      textxfer push runs/sst2-lora alice/bert-sst2-lora --adapter-only --private
      textxfer push runs/sst2 alice/bert-sst2 --revision experiment-2 --commit-message "lr 3e-5"
      textxfer push runs/sst2 alice/bert-sst2 --onnx --quantize int8
    """
    if adapter_only and merged:
        raise UserError("--adapter-only and --merged each say what to push: give one (--merged is the default).")
    mode = "adapter" if adapter_only else "merged"
    if quantize is not None and not onnx:
        raise UserError("--quantize applies to the ONNX export: add --onnx.")
    if onnx and mode == "adapter":
        raise UserError("--onnx exports the full model; it cannot go with --adapter-only.")
    url = push_run(run_dir, repo_id, private=private, revision=revision, mode=mode,
                   commit_message=commit_message, license=license_, onnx=(quantize or "none") if onnx else None)
    what = "LoRA adapter" if mode == "adapter" else "model"
    where = f" (branch {revision})" if revision else ""
    click.echo(f"Pushed the {what} of {run_dir} to {repo_id}{where}.")
    click.echo(f"commit: {url}")
    if mode == "merged":
        rev = f", revision={revision!r}" if revision else ""
        task = "image-classification" if read_run(run_dir).task == "image" else "text-classification"
        click.echo(f"load it: pipeline({task!r}, model={repo_id!r}{rev})")


@click.command("card")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--adapter", is_flag=True, help="The card for an adapter-only push (default: the merged model).")
@click.option("--repo-id", metavar="ID", help="Use this repo id in the usage snippet (default: the local folder).")
@click.option("--revision", metavar="BRANCH", help="Branch named in the usage snippet.")
@click.option("--license", "license_", metavar="ID", help="License for the metadata, e.g. apache-2.0.")
def card_command(run_dir, adapter, repo_id, revision, license_):
    """Print the model card (README.md) that `textxfer push` would upload for RUN_DIR.

    \b
    Examples:
      textxfer card runs/quickstart
      textxfer card runs/sst2-lora --adapter --repo-id alice/bert-sst2-lora > README.md
    """
    if repo_id:
        validate_repo_id(repo_id)
    if revision:
        validate_branch(revision)
    card = model_card(run_dir, "adapter" if adapter else "merged", repo_id=repo_id, revision=revision,
                      license=license_)
    from huggingface_hub import get_token

    token = get_token()
    if token and token in card:  # the card is meant for publishing: never print the token into it
        raise UserError(f"The card of {run_dir} would contain your Hugging Face token (it is in the run's files, "
                        "e.g. the recipe's `description`), so it is not printed. Remove the token from the run "
                        "directory, and revoke it if it was ever shared.")
    click.echo(card, nl=False)
