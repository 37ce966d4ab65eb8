"""Fixtures of the serving tests (helpers.py holds the rest)."""
from __future__ import annotations

import pytest

from tests.serve.helpers import DEMO, MG_DEMO, MIXED, Server, cli_wav


@pytest.fixture(scope="session")
def cli_refs(tmp_path_factory) -> list[bytes]:
    """What the CLI writes for each MIXED request alone."""
    folder = tmp_path_factory.mktemp("cli_refs")
    return [cli_wav(b, folder) for b in MIXED]


@pytest.fixture(scope="session")
def engines():
    """The demo engines, loaded once (the in-process apps share them)."""
    import warnings

    from magnet_fast import MagnetFast, MusicGenFast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return {"magnet": MagnetFast.from_pretrained(DEMO), "musicgen": MusicGenFast.from_pretrained(MG_DEMO)}


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real server for the session's tests: both demo models, batches of up to 8 (window 1 s)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    s = Server("--model", f"magnet={DEMO}", "--model", f"musicgen={MG_DEMO}", "--max-batch", "8",
               "--batch-window-ms", "1000", log=log)
    yield s
    code = s.stop()
    assert code == 0, s.log()
