"""Uploads to the Hugging Face Hub from one background thread, so training never waits on the network.

`HubUploader` (it uploads on the main process only) creates the repo, and the branch, once, then uploads
folders in the order they were submitted. A failed upload never raises into training and never touches a
checkpoint: `close` waits for what is pending and reports each failure with its reason. `push_save` is
what `hub.strategy: every_save | checkpoint` does at each checkpoint, as transformers.Trainer does: a
Hub-ready export of the step ("Training in progress, step N") and, for `checkpoint`, the resumable
checkpoint into `last-checkpoint/`. Both go through a staging copy under `output_dir/.hub/` that the
upload removes when it is done, so pruning old checkpoints never races an upload.
"""

from __future__ import annotations

import os
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from data.schema import ConfigError
from training.config import check_hub_target, config_dict
from training.export import checkpoint_to_export, export_checkpoint, export_from_accelerator

STAGING = ".hub"  # under output_dir: copies being uploaded


@dataclass
class Upload:
    what: str  # "step 10 model", "final export"
    folder: Path
    path_in_repo: str
    future: Future
    staged: bool  # the folder is a staging copy (removed after the upload), not something the user keeps


class HubUploader:
    """One repo, one worker thread. Disabled (does nothing) on every process but the main one."""

    def __init__(
        self, repo_id: str, private: bool = False, revision: str | None = None, enabled: bool = True
    ) -> None:
        self.repo_id, self.private, self.revision = repo_id, private, revision
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-upload") if enabled else None
        self._uploads: list[Upload] = []
        self._repo_ready = False

    @property
    def enabled(self) -> bool:
        return self._pool is not None

    def submit(
        self,
        what: str,
        folder: str | Path,
        commit_message: str,
        path_in_repo: str = "",
        staged: bool = False,
    ) -> None:
        """Queue an upload of `folder` into `path_in_repo` (the repo root by default). A queued upload to the
        same place that has not started yet is dropped: the newer folder supersedes it."""
        if self._pool is None:
            return
        for earlier in self._uploads:
            if earlier.path_in_repo == path_in_repo and earlier.future.cancel() and earlier.staged:
                shutil.rmtree(earlier.folder, ignore_errors=True)
        folder = Path(folder)
        future = self._pool.submit(self._upload, folder, path_in_repo, commit_message, staged)
        self._uploads.append(Upload(what, folder, path_in_repo, future, staged))

    def close(self, retry_hint: str) -> list[str]:
        """Wait for every pending upload, then report: one line if all went up, else a warning on stderr that
        lists each failed upload with its reason, and `retry_hint`. Returns the failure lines."""
        if self._pool is None:
            return []
        failures, done = [], [u for u in self._uploads if not u.future.cancelled()]  # cancelled: superseded
        for upload in done:
            err = upload.future.exception()
            if err is not None:
                kept = "" if upload.staged else f"; kept at {upload.folder}"
                failures.append(f"{upload.what}: {describe_error(err)}{kept}")
        self._pool.shutdown()
        where = self.repo_id + (f" (branch {self.revision})" if self.revision else "")
        if done and not failures:
            print(f"uploaded to {where}: {', '.join(u.what for u in done)}")
        elif failures:
            lines = "\n".join(f"  - {line}" for line in failures)
            print(
                f"warning: {len(failures)} of {len(done)} uploads to the Hub repo {where} failed; the local "
                f"checkpoints and export are kept:\n{lines}\n{retry_hint}",
                file=sys.stderr,
            )
        return failures

    def _upload(self, folder: Path, path_in_repo: str, commit_message: str, staged: bool) -> str:
        from huggingface_hub import HfApi

        try:
            api = HfApi()
            if not self._repo_ready:
                api.create_repo(self.repo_id, private=self.private, exist_ok=True)
                if self.revision:
                    api.create_branch(self.repo_id, branch=self.revision, exist_ok=True)
                self._repo_ready = True
            commit = api.upload_folder(
                repo_id=self.repo_id,
                folder_path=str(folder),
                path_in_repo=path_in_repo or None,
                revision=self.revision,
                commit_message=commit_message,
                # A subfolder (last-checkpoint/) is replaced whole: no stale files of an older checkpoint.
                delete_patterns=["*"] if path_in_repo else None,
            )
            return str(commit)
        finally:
            if staged:
                shutil.rmtree(folder, ignore_errors=True)


def describe_error(err: BaseException) -> str:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return "the Hub is offline (HF_HUB_OFFLINE=1)"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, HfHubHTTPError) and status in (401, 403):
        return f"not authorised (HTTP {status}): log in with `hf auth login` or set HF_TOKEN"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def close_run_uploads(uploader: HubUploader | None, cfg: Any) -> None:
    """End of a run: wait for its uploads and report them. Failures are warnings, not errors: the run's work
    (checkpoints, export) is local and complete."""
    if uploader is not None:
        export = Path(cfg.output_dir) / "export"
        uploader.close(
            f"Push the final export later with `python train.py export {cfg.output_dir} --push-to-hub "
            f"{cfg.push_to_hub}` or `hf upload {cfg.push_to_hub} {export}`."
        )
        if uploader.enabled:
            shutil.rmtree(Path(cfg.output_dir) / STAGING, ignore_errors=True)  # what the uploads left


def run_uploader(cfg: Any, is_main_process: bool) -> HubUploader | None:
    """The run's uploader (None without `push_to_hub`); clears staging copies a crashed run left behind."""
    if cfg.push_to_hub is None:
        return None
    if is_main_process:
        shutil.rmtree(Path(cfg.output_dir) / STAGING, ignore_errors=True)
    return HubUploader(cfg.push_to_hub, cfg.hub.private, cfg.hub.revision, enabled=is_main_process)


def push_save(
    accelerator: Accelerator,
    uploader: HubUploader | None,
    cfg: Any,
    step_dir: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    metrics: dict[str, float],
    step: int,
) -> None:
    """`hub.strategy` every_save / checkpoint, right after `step_dir` was saved. Collective (the export
    gathers ZeRO-3 shards). The final step's model goes up as the final export instead."""
    if uploader is None or cfg.hub.strategy == "end":
        return
    staging = Path(cfg.output_dir) / STAGING / step_dir.name
    if step < cfg.max_steps:
        export_from_accelerator(
            accelerator, model, tokenizer, staging / "model", config_dict(cfg), metrics, None, step
        )
        uploader.submit(
            f"step {step} model", staging / "model", f"Training in progress, step {step}", staged=True
        )
    if cfg.hub.strategy == "checkpoint" and accelerator.is_main_process:
        snapshot = link_copy(step_dir, staging / "last-checkpoint")
        uploader.submit(
            f"step {step} checkpoint (last-checkpoint/)",
            snapshot,
            f"Checkpoint at step {step}",
            path_in_repo="last-checkpoint",
            staged=True,
        )


def link_copy(src: Path, dst: Path) -> Path:
    """`src` copied as hard links (no bytes copied; the checkpoint's files are never rewritten in place, so a
    later prune of `src` leaves the copy whole), or as plain copies where links are not possible."""
    try:
        return Path(shutil.copytree(src, dst, copy_function=os.link))
    except OSError:
        shutil.rmtree(dst, ignore_errors=True)
        return Path(shutil.copytree(src, dst))


def export_and_push(
    source: str | Path,
    out: str | Path | None,
    repo_id: str | None,
    private: bool = False,
    revision: str | None = None,
) -> int:
    """`train.py export RUN [--push-to-hub REPO]`: export a checkpoint, then upload it and wait. Returns the
    exit status: 0, 1 when the upload failed (the export is kept), 2 for a bad RUN, repo id or branch."""
    try:
        if repo_id is not None:
            check_hub_target(repo_id, revision, names=("--push-to-hub", "--revision"))
        step_dir, out = checkpoint_to_export(source, out)
    except (ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        export_dir = export_checkpoint(step_dir, out, repo_id, revision)
    except Exception as err:  # a damaged checkpoint: safetensors, JSON, YAML and torch all raise their own
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        print(
            f"error: checkpoint {step_dir} cannot be exported ({reason}); try an older step_N",
            file=sys.stderr,
        )
        return 2
    print(f"export: {export_dir} (from {step_dir})")
    if repo_id is None:
        return 0
    uploader = HubUploader(repo_id, private, revision)
    uploader.submit("export", export_dir, f"Upload BCT export of {step_dir.name}")
    failures = uploader.close(f"Upload it later with `hf upload {repo_id} {export_dir}`.")
    return 1 if failures else 0
