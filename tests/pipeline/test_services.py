"""equitune.pipeline.services: a service that fails to start is reported with its log; a detached service outlives
the Python that started it and is stopped, with its process group, from another process by its pid."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request

import pytest

from equitune.pipeline.services import ServiceError, alive, executor, free_port, running, start, stop_pid

HTTP_SERVER = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1"]


def test_a_service_that_exits_while_starting_is_named_with_its_log(tmp_path):
    log = tmp_path / "broken.log"
    broken = executor([sys.executable, "-c", "import sys; print('no config'); sys.exit(3)"], log=log, env={},
                      timeout=60, port=free_port())
    with pytest.raises(ServiceError, match=r"(?s)the broken service exited \(3\) while starting.*no config"):
        start(broken, "the broken service", log)


def test_a_port_already_served_is_refused_before_starting(tmp_path):
    port = free_port()
    log = tmp_path / "first.log"
    with running(executor([*HTTP_SERVER, str(port)], log=log, env={}, timeout=60, port=port), "first", log):
        second = executor([*HTTP_SERVER, str(port)], log=log, env={}, timeout=60, port=port)
        with pytest.raises(ServiceError, match="something already listens on its port"):
            start(second, "second", log)
        assert second.process is None  # nothing was started


def test_a_detached_service_outlives_its_starter_and_stops_by_pid(tmp_path):
    port = free_port()
    starter = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from equitune.pipeline.services import detach, executor, start
        log = Path({str(tmp_path / "http.log")!r})
        service = executor({[*HTTP_SERVER, str(port)]!r}, log=log, env={{}}, timeout=60,
                           url="http://127.0.0.1:{port}/")
        print(json.dumps(detach(start(service, "http.server", log))))
    """)
    started = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    pid = json.loads(started.stdout)
    try:
        assert alive(pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
    finally:
        stop_pid(pid, grace=10)
    assert not alive(pid)
