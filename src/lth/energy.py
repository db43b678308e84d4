"""Per-round energy (kWh), CO2 (kg) and wall time, behind one small interface.

    meter = make_meter("codecarbon", country="CAN")   # or "carbontracker", or "off"
    for each round: meter.start(); ...train...; row.update(meter.stop().as_row())
    meter.close()                                      # the study is done

Honesty first: `EnergyReading.method` says how a figure was obtained: "measured (...)" when read from
hardware counters, "estimated ..." when computed from a power model (TDP x CPU load, a constant wattage,
a RAM model), "not measurable: <reason>" (kwh/co2_kg None) without a number. A tracker never fails a
run; it runs offline (grid intensity from its bundled table for an ISO-3 country), silently, file-free.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.resources
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Protocol

TRACKERS = ("codecarbon", "carbontracker", "off")
_HINT = {"codecarbon": "pip install 'lth[energy]'", "carbontracker": "pip install 'lth[carbontracker]'"}


@dataclass(frozen=True)
class EnergyReading:
    kwh: float | None  # None when not measurable
    co2_kg: float | None
    seconds: float
    method: str  # "codecarbon: measured (RAPL); ...", "...: estimated ...", "not measurable: ...", "off"

    @property
    def measurable(self) -> bool:
        return self.kwh is not None

    def share(self, k: int) -> EnergyReading:
        """This study's equal share of a round that k studies trained together (`--parallel`)."""
        if k == 1 or self.kwh is None:
            return self
        others = "1 other study" if k == 2 else f"{k - 1} other studies"
        co2 = None if self.co2_kg is None else self.co2_kg / k
        method = f"{self.method}; 1/{k} of a round trained together with {others}"
        return EnergyReading(self.kwh / k, co2, self.seconds, method)

    def as_row(self) -> dict[str, object]:
        """Columns for rounds.csv; None becomes "" so the CSV cell is empty rather than "None"."""
        return {"energy_kwh": "" if self.kwh is None else self.kwh,
                "co2_kg": "" if self.co2_kg is None else self.co2_kg,
                "energy_seconds": self.seconds, "energy_method": self.method}


class EnergyMeter(Protocol):
    def start(self) -> None: ...  # a round begins; never raises
    def stop(self) -> EnergyReading: ...  # the round's reading; never raises; seconds = its wall time
    def close(self) -> None: ...  # the study is done: stop the tracker; never raises; idempotent


def make_meter(tracker: str = "codecarbon", country: str = "CAN") -> EnergyMeter:
    """A meter for one of TRACKERS; its package is imported at the first start(), not here."""
    if tracker not in TRACKERS:
        raise ValueError(f"unknown energy tracker {tracker!r}; choose one of: {', '.join(TRACKERS)}")
    code = str(country).strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError(f"energy country must be an ISO 3166-1 alpha-3 code such as 'CAN' or 'DNK', got {country!r}")
    return {"off": _Meter, "codecarbon": _Codecarbon, "carbontracker": _Carbontracker}[tracker](code)


class _NoReading(Exception):
    """The tracker ran but gave no usable figure; the message is the whole reason."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _NoReading):
        return str(exc)
    package = (getattr(exc, "name", None) or "").split(".")[0]
    if isinstance(exc, ModuleNotFoundError) and package in _HINT:
        return f"{package} not installed ({_HINT[package]})"
    text = " ".join(f"{type(exc).__name__}: {exc}".split()).rstrip(": ")
    return text if len(text) <= 160 else text[:157] + "..."


class _Meter:
    """Times each round and turns any tracker failure into a reading; as it is, the "off" meter."""

    _tracker: Any = None  # the study's tracker, built at the first start(); close() stops it

    def __init__(self, country: str) -> None:
        self.country, self._t0, self._failure = country, None, None

    def start(self) -> None:
        if self._t0 is not None:  # the last round never stopped: end it, unrecorded
            self.stop()
        self._failure = None
        try:
            self._begin_round()
        except (Exception, SystemExit) as exc:
            self._failure = _reason(exc)
            self.close()  # the next round starts from a fresh tracker
        self._t0 = time.perf_counter()  # after the tracker's setup, which is not part of the round

    def stop(self) -> EnergyReading:
        if self._t0 is None:
            return EnergyReading(None, None, 0.0, "not measurable: stop() called without start()")
        seconds, self._t0 = time.perf_counter() - self._t0, None
        if self._failure is None:
            try:
                reading = self._end_round(seconds)
                if all(math.isfinite(x) and x >= 0 for x in (reading.kwh or 0, reading.co2_kg or 0)):
                    return reading
                raise _NoReading(f"invalid figure (kWh={reading.kwh!r}, kg CO2={reading.co2_kg!r})")
            except (Exception, SystemExit) as exc:
                self._failure = _reason(exc)
                self.close()
        return EnergyReading(None, None, seconds, f"not measurable: {self._failure}")

    def close(self) -> None:
        tracker, self._tracker = self._tracker, None
        with contextlib.suppress(Exception, SystemExit):
            if tracker is not None:
                tracker.stop()

    def _begin_round(self) -> None: ...

    def _end_round(self, seconds: float) -> EnergyReading:
        return EnergyReading(None, None, seconds, "off")


class _Codecarbon(_Meter):
    """One codecarbon OfflineEmissionsTracker per study; each round is one of its tasks."""

    _cpu = ""  # how codecarbon tracks the CPU, found once

    def _begin_round(self) -> None:
        if self._tracker is None:
            import codecarbon

            logging.getLogger("codecarbon").setLevel(logging.CRITICAL)  # it logs at INFO before log_level applies
            # All explicit: no .codecarbon.config or CODECARBON_* variable may add an output, an API call or a
            # lock file ("" overrides a configured token), nor force a power that the label would not know.
            self._tracker = codecarbon.OfflineEmissionsTracker(
                country_iso_code=self.country, region=None, cloud_provider=None, cloud_region=None,
                project_name="lth", tracking_mode="machine", log_level="critical", electricitymaps_api_token="",
                output_methods=[], output_handlers=[], emissions_endpoint=None, allow_multiple_runs=True,
                output_dir=tempfile.gettempdir(),  # a Mac/Windows power-gadget log at most: never in the CWD
                force_carbon_intensity_g_co2e_kwh=None, force_cpu_power=None, force_mode_cpu_load=False, pue=1.0)
        self._tracker.start_task("lth round")

    def _end_round(self, seconds: float) -> EnergyReading:
        data = self._tracker.stop_task()
        if data is None:  # codecarbon logs (silenced here) and swallows its own failures
            raise _NoReading("codecarbon recorded nothing for this round")
        self._cpu = self._cpu or self._cpu_method()
        parts = [f"codecarbon: {self._cpu}"]
        if data.gpu_count:
            parts.append(f"GPU measured ({data.gpu_model or 'energy counters'})")
        if "Raspberry" not in self._cpu:  # a Pi's PMIC measures the RAM rails; elsewhere RAM is a model
            parts.append(f"RAM estimated ({data.ram_power:.3g} W)")
        if not data.country_name:
            parts.append(f"CO2 at world-average intensity (country {self.country!r} not in codecarbon's table)")
        return EnergyReading(float(data.energy_consumed), float(data.emissions), seconds, "; ".join(parts))

    def _cpu_method(self) -> str:
        """How codecarbon gets CPU power: the public probes its ResourceTracker tries (v3.3), in its order."""
        from codecarbon.core import cpu, powermetrics, util, windows_emi
        from codecarbon.core.hardware_cache import get_cached_tdp
        from codecarbon.external.hardware import POWER_CONSTANT

        mac_intel = util.is_mac_os() and not util.is_mac_arm(util.detect_cpu_model() or "")
        for counter, found in (
            ("RAPL", lambda: util.is_linux_os() and cpu.is_rapl_available()),
            ("Raspberry Pi PMIC", cpu.is_raspberry),
            ("Windows EMI", lambda: util.is_windows_os() and windows_emi.is_emi_available()),
            ("Intel Power Gadget", lambda: (mac_intel or util.is_windows_os()) and cpu.is_powergadget_available()),
            ("powermetrics", lambda: mac_intel and powermetrics.is_powermetrics_available()),
        ):
            if found():
                return f"measured ({counter})"
        how = "TDP × CPU load" if cpu.is_psutil_available() else "a constant TDP"
        tdp = None if util.is_mac_os() and not mac_intel else get_cached_tdp(cpu)  # Apple silicon: no TDP lookup
        if tdp is None or tdp.tdp is None:
            return f"estimated from {how} (TDP {POWER_CONSTANT} W: codecarbon's generic default, no TDP for this CPU)"
        watts = tdp.tdp * (self._tracker.get_detected_hardware().get("cpu_physical_count") or 1)  # per socket
        default = tdp.tdp == util.count_cpus() * cpu.DEFAULT_POWER_PER_CORE  # its figure for a CPU not in its table
        note = f"default 4 W/thread, CPU {tdp.model!r} not" if default else f"CPU {tdp.model!r}"
        return f"estimated from {how} (TDP {watts:.3g} W: {note} in codecarbon's table)"


class _Carbontracker(_Meter):
    """carbontracker's measuring thread, one per study; each round is one of its epochs.

    Not its CarbonTracker class: that always looks this machine up by IP (geocoder.ip("me")) when built,
    with no parameter to give a location or skip it. Its measuring thread and component factory never
    touch the network; CO2 comes from its bundled table for the country."""

    _error: str | None = None  # why the thread stopped, if it did

    def _begin_round(self) -> None:
        if self._tracker is None:
            from carbontracker import loggerutil
            from carbontracker.components import component
            from carbontracker.tracker import CarbonTrackerThread

            log = loggerutil.Logger(logger_id="lth")  # no log_dir: no files
            for name in ("lth.err", "lth.output", "root.err", "root.output"):  # its loggers print to stdout
                logging.getLogger(f"carbontracker.{name}").disabled = True
            parts = component.create_components("all", pids=[os.getpid()], devices_by_pid=False, logger=log)
            self._error = None
            self._tracker = CarbonTrackerThread(parts, log, ignore_errors=True, delete=self._on_error)
        self._tracker.epoch_start()

    def _on_error(self) -> None:  # the thread's `delete` hook, called in its `except` block: keep why it stopped
        self._error = _reason(sys.exc_info()[1] or _NoReading("no reason given"))

    def _end_round(self, seconds: float) -> EnergyReading:
        from carbontracker import constants
        from carbontracker.components.cpu.generic import GenericCPU

        self._tracker.epoch_end()
        if self._error is not None:
            raise _NoReading(f"carbontracker stopped monitoring: {self._error}")
        kwh = float(self._tracker.total_energy_per_epoch()[-1])  # includes its PUE
        if kwh == 0.0 and seconds > 0:
            raise _NoReading("carbontracker collected no power sample in this round")
        handlers = [c.handler for c in self._tracker.components if c.available()]
        counters = " + ".join({"IntelCPU": "RAPL", "NvidiaGPU": "NVML"}.get(type(h).__name__, type(h).__name__)
                              for h in handlers if not isinstance(h, GenericCPU))  # RAPL, NVML, powermetrics
        head = f"measured ({counters})"
        for cpu in [h for h in handlers if isinstance(h, GenericCPU)]:  # its fallback: half a TDP, whatever the load
            basis = f"the TDP of {cpu.cpu_brand!r}" if cpu.find_matching_tdp() else (
                f"its table's average TDP, {cpu.cpu_brand!r} not in it")
            head = f"estimated (constant CPU power {cpu.tdp:.3g} W = half {basis}" + (
                f"; measured: {counters})" if counters else ")")
        with (importlib.resources.files("carbontracker") / "data" / "carbon-intensities.csv").open(newline="") as fh:
            row = next((r for r in csv.DictReader(fh) if r["Code"] == self.country), None)  # its bundled table
        grams = float(constants.WORLD_AVG_CARBON_INTENSITY if row is None else
                      row["Carbon intensity of electricity (gCO2eq/kWh)"])
        where = f"{self.country}, {row['Year']}, from" if row else f"world average: country {self.country!r} not in"
        method = f"carbontracker: {head}; ×PUE {constants.PUE_2023}; CO2 at {grams:.0f} g/kWh ({where} its table)"
        return EnergyReading(kwh, kwh * grams / 1000, seconds, method)
