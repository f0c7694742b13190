"""Where ``model_name_or_path`` points: a local model directory, or a hub id that can be loaded.

    from lit_lora.model_source import resolve_model_path
    resolve_model_path("lit_lora/assets/tiny-llama")   # -> ".../site-packages/lit_lora/assets/tiny-llama" from any directory
    resolve_model_path("no-such/dir")                  # -> ModelNotFoundError, one line:
    # model_name_or_path 'no-such/dir': not a local directory (looked in /home/me/no-such/dir) and not in the
    # Hugging Face cache (/home/me/.cache/huggingface/hub), which is all there is with HF_HUB_OFFLINE=1

A relative path is looked for in the working directory, then, if it starts with ``lit_lora/``, inside
the installed package: a config naming the bundled ``lit_lora/assets/tiny-llama`` (``configs/demo.yaml``)
runs from any directory. A hub id is passed on as it is; only offline (``HF_HUB_OFFLINE=1``) can lit-lora
tell beforehand that it will not load, from the local cache.
"""

from __future__ import annotations

from pathlib import Path

from lit_lora.errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent


class ModelNotFoundError(InputError, FileNotFoundError):
    """``model_name_or_path`` names no local directory and no loadable hub model; the message says what was tried.

    ``lit-lora`` checks the path before it builds anything (``LitLoraCLI.before_instantiate_classes``) and
    prints this one line: raised later, inside jsonargparse's instantiation, it would end in a "Does not
    validate against any of the Union subtypes" report with the cause a hundred lines up.
    """


def resolve_model_path(name_or_path: str, check_hub: bool = True) -> str:
    """The local model directory ``name_or_path`` names, or ``name_or_path`` itself as a hub id (whose
    ``config.json`` is fetched into the hub cache here, if it is not there yet: ``fetch_config``).

    ``check_hub=False`` skips the offline cache look-up, for code that only needs the name (``estimate``
    reads known architectures from its registry, without the hub).
    """
    candidates = local_candidates(name_or_path)
    found = next((c for c in candidates if c.is_dir()), None)
    if found is not None:  # a ~ expanded: transformers takes an unexpanded ~/model for a hub id
        return name_or_path if found == Path(name_or_path) else str(found)
    looked = f"not a local directory (looked in {', '.join(str(c.absolute()) for c in candidates)})"
    if not is_hub_id(name_or_path):
        raise ModelNotFoundError(f"model_name_or_path {name_or_path!r}: {looked}, and not a hub id ('org/name')")
    if check_hub and not in_hub_cache(name_or_path):
        from huggingface_hub import constants

        if hub_offline():
            raise ModelNotFoundError(f"model_name_or_path {name_or_path!r}: {looked} and not in the Hugging Face "
                                     f"cache ({constants.HF_HUB_CACHE}), which is all there is with HF_HUB_OFFLINE=1")
        fetch_config(name_or_path, looked)
    return name_or_path


def fetch_config(repo_id: str, looked: str) -> None:
    """Download the model's ``config.json`` into the hub cache (every load reads it first), or stop with one line
    saying why not: no connection, no such repository, a gated one. The tokenizer and the weights follow later."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, "config.json")
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises OSError, HTTP, connection and repo errors
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ModelNotFoundError(f"model_name_or_path {repo_id!r}: {looked}, and the hub did not give its "
                                 f"config.json ({type(err).__name__}: {reason[:200]}); on a machine without internet, "
                                 f"download it elsewhere and give its directory, or set HF_HUB_OFFLINE=1 to use "
                                 f"the cache") from err


def local_candidates(name_or_path: str) -> list[Path]:
    """Where a local ``name_or_path`` may be: as given (relative to the working directory), then in the package."""
    path = Path(name_or_path).expanduser()
    candidates = [path]
    if not path.is_absolute() and path.parts[:1] == (PACKAGE_DIR.name,):
        candidates.append(PACKAGE_DIR.joinpath(*path.parts[1:]))
    return candidates


def is_hub_id(name: str) -> bool:
    """``name`` has the form of a hub repository id (``org/name`` or ``name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def in_hub_cache(repo_id: str) -> bool:
    """The model's ``config.json`` is in the local hub cache (what ``from_pretrained`` reads offline)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
