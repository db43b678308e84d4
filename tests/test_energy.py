"""Energy meters: honest labels, no crash whatever the tracker does, no files, no network, no noise.

Everything runs the real codecarbon and carbontracker (dependencies of lth and of its test extra: a
missing one fails, never skips); failures are injected by patching one of their methods.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

from lth.energy import TRACKERS, EnergyReading, make_meter


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def has_power_counters() -> bool:
    return any(Path("/sys/class/powercap").glob("intel-rapl*")) or Path("/dev/nvidiactl").exists()


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt is recorded and refused."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    for owner, name in [(socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                        (socket, "getaddrinfo")]:
        monkeypatch.setattr(owner, name, refuse)
    return attempts


@pytest.fixture
def quiet_cwd(tmp_path, monkeypatch, capfd, no_network):
    """Run in an empty directory (the temporary one too); afterwards nothing was written there, printed or sent."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where codecarbon's output_dir points, too
    before = sorted(tmp_path.iterdir())
    yield tmp_path
    assert sorted(tmp_path.iterdir()) == before  # no emissions.csv, no log, no lock file
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert no_network == []


def one_round(meter, seconds: float = 0.3) -> EnergyReading:
    meter.start()
    busy(seconds)
    return meter.stop()


# --------------------------------------------------------------------------------------------------
# The interface


def test_trackers_and_bad_arguments():
    assert TRACKERS == ("codecarbon", "carbontracker", "off")
    with pytest.raises(ValueError, match="codecarbon, carbontracker, off") as err:
        make_meter("powertop")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="alpha-3"):
        make_meter("codecarbon", country="Canada")
    make_meter("codecarbon", country=" can ")  # normalised, not an error; nothing imported or started


def test_off_meter():
    meter = make_meter("off")
    for _ in range(2):
        reading = one_round(meter, 0.05)
        assert reading == EnergyReading(None, None, reading.seconds, "off")
        assert 0.04 < reading.seconds < 5 and not reading.measurable
    meter.close()
    meter.close()
    row = reading.as_row()
    assert list(row) == ["energy_kwh", "co2_kg", "energy_seconds", "energy_method"]
    assert row["energy_kwh"] == "" and row["co2_kg"] == "" and row["energy_method"] == "off"


def test_as_row_keeps_numbers():
    row = EnergyReading(1.5e-6, 2.5e-7, 0.5, "codecarbon: estimated (x)").as_row()
    assert row == {"energy_kwh": 1.5e-6, "co2_kg": 2.5e-7, "energy_seconds": 0.5,
                   "energy_method": "codecarbon: estimated (x)"}


def test_share():
    reading = EnergyReading(3.0, 0.6, 10.0, "m")
    assert reading.share(1) is reading
    half = reading.share(2)
    assert (half.kwh, half.co2_kg, half.seconds) == (1.5, 0.3, 10.0)
    assert half.method == "m; 1/2 of a round trained together with 1 other study"
    assert reading.share(3).method == "m; 1/3 of a round trained together with 2 other studies"
    assert EnergyReading(3.0, None, 1.0, "m").share(2).co2_kg is None
    unmeasured = EnergyReading(None, None, 1.0, "not measurable: x")
    assert unmeasured.share(4) is unmeasured


def test_stop_without_start_and_restart_without_stop():
    meter = make_meter("off")
    meter.close()  # before any start: nothing to do
    assert meter.stop().method == "not measurable: stop() called without start()"
    meter.start()
    meter.start()  # a round that never stopped is dropped
    assert meter.stop().method == "off"


@pytest.mark.parametrize("tracker, hint", [("codecarbon", "lth[energy]"), ("carbontracker", "lth[carbontracker]")])
def test_not_installed(monkeypatch, tracker, hint):
    monkeypatch.setitem(sys.modules, tracker, None)  # makes `import <tracker>` fail as if absent
    meter = make_meter(tracker)
    reading = one_round(meter, 0.01)
    assert reading.method == f"not measurable: {tracker} not installed (pip install '{hint}')"
    assert reading.kwh is None and reading.co2_kg is None and reading.seconds > 0
    assert reading.as_row()["energy_kwh"] == ""
    meter.close()


# --------------------------------------------------------------------------------------------------
# codecarbon


def test_codecarbon_one_tracker_per_study_one_task_per_round(quiet_cwd, monkeypatch):
    import codecarbon

    built, tasks = [], []

    class Spy(codecarbon.OfflineEmissionsTracker):
        def __init__(self, **kwargs):
            built.append(kwargs)
            super().__init__(**kwargs)

        def start_task(self, task_name=None):
            tasks.append(task_name)
            return super().start_task(task_name)

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Spy)
    # A hostile configuration: it must change nothing (no CSV, no API call, no forced power).
    (quiet_cwd / ".codecarbon.config").write_text(
        "[codecarbon]\noutput_methods = csv\nsave_to_file = true\nelectricitymaps_api_token = abc\n"
        "force_cpu_power = 99999\nlog_level = debug\n")
    monkeypatch.setenv("CODECARBON_EMISSIONS_ENDPOINT", "http://example.invalid/emissions")
    meter = make_meter("codecarbon", country="CAN")
    for _ in range(3):  # the first start probes the hardware; later ones reuse the tracker
        reading = one_round(meter, 0.4)
        assert 0.35 < reading.seconds < 5
        assert reading.method.startswith(("codecarbon: measured (", "codecarbon: estimated")), reading.method
        assert isinstance(reading.kwh, float) and 0 < reading.kwh < 1000 * 0.4 / 3.6e6  # above 0, below 1 kW
        assert isinstance(reading.co2_kg, float) and reading.co2_kg > 0
        assert "RAM estimated (" in reading.method  # codecarbon models RAM power, it never measures it
        assert "99999" not in reading.method and "world-average" not in reading.method
        if not has_power_counters():  # this machine: no RAPL, no GPU
            assert reading.method.startswith("codecarbon: estimated from TDP × CPU load (TDP "), reading.method
    meter.close()
    meter.close()  # idempotent
    assert len(built) == 1 and tasks == ["lth round"] * 3
    reading = one_round(meter, 0.05)  # used again after close: a fresh tracker
    assert reading.measurable and len(built) == 2
    meter.close()
    assert [p.name for p in quiet_cwd.iterdir()] == [".codecarbon.config"]  # nothing written beside it
    (quiet_cwd / ".codecarbon.config").unlink()


def test_codecarbon_unknown_country_is_said(quiet_cwd):
    meter = make_meter("codecarbon", country="XYZ")
    reading = one_round(meter, 0.05)
    meter.close()
    assert reading.kwh is not None and reading.co2_kg is not None
    assert reading.method.endswith("; CO2 at world-average intensity (country 'XYZ' not in codecarbon's table)")


def _patched_round(monkeypatch, *patches) -> str:
    """One real codecarbon round, its probes or its EmissionsData patched once its tracker runs."""
    meter = make_meter("codecarbon")
    meter.start()
    with monkeypatch.context() as patch:
        for target, name, value in patches:
            patch.setattr(target, name, value)
        method = meter.stop().method
    meter.close()
    return method


def test_codecarbon_labels_from_its_public_probes(quiet_cwd, monkeypatch):
    import codecarbon
    import codecarbon.core.cpu as cc_cpu
    import codecarbon.core.hardware_cache as cc_cache

    real_stop_task = codecarbon.OfflineEmissionsTracker.stop_task

    def with_gpu(self, task_name=None):
        return dataclasses.replace(real_stop_task(self, task_name), gpu_count=1, gpu_model="1 x NVIDIA H200")

    method = _patched_round(monkeypatch, (cc_cpu, "is_rapl_available", lambda *a: True),
                            (codecarbon.OfflineEmissionsTracker, "stop_task", with_gpu))
    assert method.startswith("codecarbon: measured (RAPL); GPU measured (1 x NVIDIA H200); RAM estimated ("), method

    table = types.SimpleNamespace(model="AMD EPYC 7763", tdp=280)
    method = _patched_round(monkeypatch, (cc_cache, "get_cached_tdp", lambda _cpu: table))
    assert "codecarbon: estimated from TDP × CPU load (TDP 280 W: CPU 'AMD EPYC 7763' in codecarbon's table)" in method

    unknown = types.SimpleNamespace(model="Unknown", tdp=None)
    method = _patched_round(monkeypatch, (cc_cache, "get_cached_tdp", lambda _cpu: unknown))
    assert "codecarbon: estimated from TDP × CPU load (TDP 85 W: codecarbon's generic default" in method, method


def _raise(exc):
    def method(self, *args, **kwargs):
        raise exc

    return method


@pytest.mark.parametrize("name, replacement, reason", [
    ("start_task", _raise(RuntimeError("RAPL exploded")), "RuntimeError: RAPL exploded"),
    ("stop_task", _raise(PermissionError("energy_uj not readable")), "PermissionError: energy_uj not readable"),
    ("__init__", _raise(OSError("no /proc")), "OSError: no /proc"),
    ("start_task", _raise(SystemExit(70)), "SystemExit: 70"),
    ("stop_task", lambda self, task_name=None: None, "codecarbon recorded nothing for this round"),
    ("stop_task", lambda self, task_name=None: types.SimpleNamespace(energy_consumed=float("nan"), emissions=1.0,
                                                                      gpu_count=0, ram_power=1.0, country_name="x"),
     "invalid figure"),
])
def test_codecarbon_failures_never_raise(quiet_cwd, monkeypatch, name, replacement, reason):
    import codecarbon

    meter = make_meter("codecarbon")
    with monkeypatch.context() as patch:
        patch.setattr(codecarbon.OfflineEmissionsTracker, name, replacement)
        reading = one_round(meter, 0.05)
    assert reading.method.startswith("not measurable: ") and reason in reading.method, reading.method
    assert "\n" not in reading.method
    assert reading.kwh is None and reading.co2_kg is None and reading.seconds >= 0.04
    assert one_round(meter, 0.05).measurable  # the next round starts from a fresh tracker
    meter.close()


def test_codecarbon_swallowed_failure_is_not_measurable(quiet_cwd, monkeypatch):
    """codecarbon's constructor swallows its own exceptions: the round must still say so."""
    import codecarbon.emissions_tracker

    monkeypatch.setattr(codecarbon.emissions_tracker, "get_hierarchical_config", _raise(OSError("bad config")))
    meter = make_meter("codecarbon")
    reading = one_round(meter, 0.05)
    meter.close()
    assert reading.method.startswith("not measurable: ") and reading.kwh is None, reading.method


# --------------------------------------------------------------------------------------------------
# carbontracker


def test_carbontracker_offline(quiet_cwd, monkeypatch):
    import geocoder

    looked_up = []
    monkeypatch.setattr(geocoder, "ip", lambda *a, **k: looked_up.append(a))
    meter = make_meter("carbontracker", country="CAN")
    for _ in range(2):
        reading = one_round(meter, 0.5)
        assert reading.method.startswith(("carbontracker: measured (", "carbontracker: estimated (")), reading.method
        assert reading.kwh > 0 and reading.co2_kg > 0
        assert "×PUE 1.58" in reading.method and "(CAN, " in reading.method
        if not has_power_counters():
            assert reading.method.startswith("carbontracker: estimated (constant CPU power "), reading.method
    meter.close()
    meter.close()
    assert looked_up == []  # it never tries to geolocate this machine


def test_carbontracker_unknown_country_and_failures(quiet_cwd, monkeypatch):
    from carbontracker.components.cpu.generic import GenericCPU

    meter = make_meter("carbontracker", country="XYZ")
    assert "CO2 at 445 g/kWh (world average: country 'XYZ' not in its table)" in one_round(meter).method
    meter.close()

    monkeypatch.setattr(GenericCPU, "power_usage", _raise(RuntimeError("sensor gone")))
    reading = one_round(meter)
    assert reading.method == "not measurable: carbontracker stopped monitoring: RuntimeError: sensor gone"
    assert reading.kwh is None
    meter.close()

    monkeypatch.setattr(GenericCPU, "available", lambda self: False)  # nor RAPL nor GPU here
    reading = one_round(meter)
    meter.close()
    if not has_power_counters():
        assert reading.method.startswith("not measurable: carbontracker stopped monitoring: "
                                         "NoComponentsAvailableError"), reading.method
