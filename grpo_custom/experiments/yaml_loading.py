"""Reading YAML strictly: a duplicated key is an error (PyYAML's default keeps the last one silently), and every
error names the file; writing files atomically (a reader never sees half a file)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that rejects a mapping with the same key twice."""

    def construct_mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return StrictLoader


def load_yaml_file(path: str | Path):
    """The data of a YAML (or JSON) file, read with duplicate keys rejected.

    Raises:
        ExperimentConfigError: the file does not exist, or is not valid YAML (with the line and column).
    """
    import yaml

    from grpo_custom.experiments.variants import ExperimentConfigError

    path = Path(path)
    if not path.is_file():
        raise ExperimentConfigError(f"{path}: no such file")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_strict_loader())  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise ExperimentConfigError(f"{path}: not valid YAML: {error}") from None


def write_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, fsync'd, then ``os.replace``: the
    file either holds all of ``text`` or does not exist / keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json_atomically(path: str | Path, data) -> Path:
    """:func:`write_atomically` of ``data`` as indented JSON (strict: NaN/inf are refused, so store them as None)."""
    return write_atomically(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
