"""Log lines: plain and leveled, or one JSON object per line."""

import json
import logging

import pytest

from appliance.operations.logs import setup_logging


def test_json_lines_carry_level_logger_and_message(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json", "info")
    logging.getLogger("appliance").warning("member %s is gone", "0a1b")
    logging.getLogger("appliance").debug("not shown at info")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "warning" and entry["logger"] == "appliance"
    assert entry["message"] == "member 0a1b is gone" and entry["time"].endswith("Z")


def test_plain_lines_are_leveled(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("plain", "debug")
    logging.getLogger("appliance").info("serving")
    assert capsys.readouterr().err == "INFO appliance: serving\n"
