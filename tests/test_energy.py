"""Energy meters: honest labels, no crash whatever the tracker does, no files, no network, no noise.

The codecarbon and carbontracker runs use the real packages (dependencies of lth and of its test extra:
a missing one fails); the failure paths use a stand-in `codecarbon` module.
"""

from __future__ import annotations

import socket
import sys
import time
import types
from pathlib import Path

import pytest

from lth import energy
from lth.energy import TRACKERS, EnergyReading, make_meter


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def has_power_counters() -> bool:
    rapl = any(Path("/sys/class/powercap").glob("intel-rapl*"))
    return rapl or Path("/dev/nvidiactl").exists()


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt is recorded and refused."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def keep_tdp_note(monkeypatch):
    """Stand-in trackers must not change what the module learnt from the real codecarbon probe."""
    monkeypatch.setattr(energy, "_cc_tdp_source", energy._cc_tdp_source)


def test_trackers_and_unknown_tracker():
    assert TRACKERS == ("codecarbon", "carbontracker", "off")
    with pytest.raises(ValueError, match="codecarbon, carbontracker, off") as err:
        make_meter("powertop")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="alpha-3"):
        make_meter("codecarbon", country="Canada")
    make_meter("codecarbon", country=" can ")  # normalised, not an error


def test_off_meter():
    meter = make_meter("off")
    meter.start()
    reading = meter.stop()
    assert reading.method == "off"
    assert reading.kwh is None and reading.co2_kg is None
    assert isinstance(reading.seconds, float) and reading.seconds >= 0
    row = reading.as_row()
    assert list(row) == ["energy_kwh", "co2_kg", "energy_seconds", "energy_method"] == list(energy.ROW_KEYS)
    assert row["energy_kwh"] == "" and row["co2_kg"] == "" and row["energy_method"] == "off"


def test_as_row_keeps_numbers():
    row = EnergyReading(1.5e-6, 2.5e-7, 0.5, "codecarbon: estimated (x)").as_row()
    assert row == {
        "energy_kwh": 1.5e-6, "co2_kg": 2.5e-7, "energy_seconds": 0.5, "energy_method": "codecarbon: estimated (x)"
    }


def test_stop_without_start_and_restart_without_stop():
    meter = make_meter("off")
    assert meter.stop().method == "not measurable: stop() called without start()"
    meter.start()
    meter.start()  # a round that never stopped is dropped
    assert meter.stop().method == "off"


def test_codecarbon_on_this_machine(tmp_path, monkeypatch, capfd, no_network):
    import codecarbon  # noqa: F401 - a dependency of lth: missing means a broken install, not a skip
    monkeypatch.chdir(tmp_path)
    meter = make_meter("codecarbon", country="CAN")
    for _ in range(2):  # the first start probes the hardware; the second reuses it
        meter.start()
        busy(0.5)
        reading = meter.stop()
        assert 0.45 < reading.seconds < 5
        assert reading.method.startswith(("codecarbon: measured (", "codecarbon: estimated")), reading.method
        assert isinstance(reading.kwh, float) and reading.kwh > 0
        assert isinstance(reading.co2_kg, float) and reading.co2_kg > 0
        # 0.5 s of a machine: well above zero, well below a kilowatt for that long
        assert reading.kwh < 1000 * 0.5 / 3.6e6
        if not has_power_counters():
            assert reading.method.startswith("codecarbon: estimated"), reading.method
        assert "RAM estimated" in reading.method  # codecarbon models RAM power, it never measures it
    assert no_network == []
    assert list(tmp_path.iterdir()) == []  # no emissions.csv, no lock file
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # its log is silenced


def test_codecarbon_unknown_country_is_said(tmp_path, monkeypatch):
    import codecarbon  # noqa: F401 - a dependency of lth: missing means a broken install, not a skip
    monkeypatch.chdir(tmp_path)
    meter = make_meter("codecarbon", country="XYZ")
    meter.start()
    reading = meter.stop()
    assert reading.kwh is not None
    assert "world-average" in reading.method and "XYZ" in reading.method
    assert list(tmp_path.iterdir()) == []


def fake_codecarbon(monkeypatch, tracker_cls: type) -> None:
    module = types.ModuleType("codecarbon")
    submodule = types.ModuleType("codecarbon.emissions_tracker")

    class BaseEmissionsTracker:
        def __init__(self, output_methods=None, **kwargs):
            pass

    submodule.BaseEmissionsTracker = BaseEmissionsTracker
    module.emissions_tracker = submodule
    module.OfflineEmissionsTracker = tracker_cls
    monkeypatch.setitem(sys.modules, "codecarbon", module)
    monkeypatch.setitem(sys.modules, "codecarbon.emissions_tracker", submodule)


class _FakeTracker:
    def __init__(self, **kwargs):
        self._scheduler = None
        self._start_time = None

    def start(self):
        self._start_time = time.perf_counter()

    def stop(self):
        self.final_emissions_data = types.SimpleNamespace(
            energy_consumed=1e-6, emissions=2e-7, ram_power=10.0, country_name="Canada", cpu_model="x"
        )
        return 2e-7


class _RaisesInStart(_FakeTracker):
    def start(self):
        raise RuntimeError("RAPL exploded")


class _RaisesInStop(_FakeTracker):
    def stop(self):
        raise PermissionError("energy_uj not readable")


class _RaisesInInit(_FakeTracker):
    def __init__(self, **kwargs):
        raise OSError("no /proc")


class _ExitsInStart(_FakeTracker):
    def start(self):
        sys.exit(70)  # carbontracker's error path


class _SwallowsInStart(_FakeTracker):
    """Like codecarbon's @suppress: the error is logged, start() returns, nothing was started."""

    def start(self):
        import logging

        try:
            raise ValueError("psutil said no")
        except ValueError:
            logging.getLogger("codecarbon").warning("graceful shutdown. Exceptions:", exc_info=True)


class _NoData(_FakeTracker):
    def stop(self):
        return None


class _NanEnergy(_FakeTracker):
    def stop(self):
        super().stop()
        self.final_emissions_data.energy_consumed = float("nan")


@pytest.mark.parametrize(
    "tracker_cls, reason",
    [
        (_RaisesInStart, "RuntimeError: RAPL exploded"),
        (_RaisesInStop, "PermissionError: energy_uj not readable"),
        (_RaisesInInit, "OSError: no /proc"),
        (_ExitsInStart, "SystemExit: 70"),
        (_SwallowsInStart, "ValueError: psutil said no"),
        (_NoData, "codecarbon returned no data"),
        (_NanEnergy, "invalid figure"),
    ],
)
def test_tracker_failures_never_raise(monkeypatch, tmp_path, capfd, keep_tdp_note, tracker_cls, reason):
    monkeypatch.chdir(tmp_path)
    fake_codecarbon(monkeypatch, tracker_cls)
    meter = make_meter("codecarbon")
    meter.start()
    busy(0.05)
    reading = meter.stop()
    assert reading.method.startswith("not measurable: "), reading.method
    assert reason in reading.method
    assert "\n" not in reading.method
    assert reading.kwh is None and reading.co2_kg is None
    assert reading.seconds >= 0.04
    assert list(tmp_path.iterdir()) == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_fake_tracker_success_is_labelled_from_its_hardware(monkeypatch, keep_tdp_note):
    class WithHardware(_FakeTracker):
        def start(self):
            super().start()
            cpu = type("CPU", (), {"_mode": "intel_rapl", "_tdp": 65})()
            ram = type("RAM", (), {})()
            self._hardware = [ram, cpu]

    fake_codecarbon(monkeypatch, WithHardware)
    meter = make_meter("codecarbon")
    meter.start()
    reading = meter.stop()
    assert reading.kwh == 1e-6 and reading.co2_kg == 2e-7
    assert reading.method == "codecarbon: measured (RAPL); RAM estimated (10 W)"


@pytest.mark.parametrize("tracker, hint", [("codecarbon", "lth[energy]"), ("carbontracker", "lth[carbontracker]")])
def test_not_installed(monkeypatch, tracker, hint):
    monkeypatch.setitem(sys.modules, tracker, None)  # makes `import <tracker>` fail as if absent
    monkeypatch.setitem(sys.modules, f"{tracker}.tracker", None)
    monkeypatch.setitem(sys.modules, f"{tracker}.emissions_tracker", None)
    meter = make_meter(tracker)
    meter.start()
    reading = meter.stop()
    assert reading.method == f"not measurable: {tracker} not installed (pip install '{hint}')"
    assert reading.kwh is None and reading.co2_kg is None
    assert reading.as_row()["energy_kwh"] == ""


def test_carbontracker_if_installed(tmp_path, monkeypatch, capfd, no_network):
    import carbontracker  # noqa: F401 - installed by the test extra: missing fails, never skips
    monkeypatch.chdir(tmp_path)
    meter = make_meter("carbontracker", country="CAN")
    meter.start()
    busy(0.5)
    reading = meter.stop()
    assert reading.method.startswith(("carbontracker: measured (", "carbontracker: estimated (", "not measurable: "))
    if reading.kwh is not None:
        assert reading.kwh > 0 and reading.co2_kg > 0
        assert "PUE" in reading.method and "CAN" in reading.method
        if not has_power_counters():
            assert reading.method.startswith("carbontracker: estimated"), reading.method
    assert no_network == []
    assert list(tmp_path.iterdir()) == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""
