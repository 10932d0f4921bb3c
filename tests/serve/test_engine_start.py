"""An engine that cannot start is an error at once, not a restart loop."""

import asyncio
import socket
from pathlib import Path

import pytest

from serve.engine import Engine, Supervisor
from serve.errors import EngineStartError
from serve.settings import EngineSettings


def test_a_taken_port_is_refused_before_anything_is_spawned(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        engine = Engine(EngineSettings(port=port), tmp_path)
        with pytest.raises(EngineStartError, match=f"cannot start an engine on http://127.0.0.1:{port}"):
            asyncio.run(Supervisor(engine).run())
        assert engine.process is None
