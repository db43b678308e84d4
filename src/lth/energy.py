"""Per-round energy (kWh), CO2 (kg) and duration, behind one small interface.

    meter = make_meter("codecarbon", country="CAN")   # or "carbontracker", or "off"
    meter.start()
    ...train one round...
    reading = meter.stop()                             # never raises
    row.update(reading.as_row())

Honesty first: `EnergyReading.method` says how a figure was obtained. A number read from hardware
counters is labelled "measured (...)"; a number computed from a power model (TDP x CPU load, a
constant wattage, codecarbon's RAM model) is labelled "estimated ..."; where there is no number,
`kwh`/`co2_kg` are None and the method says "not measurable: <reason>". On a machine without
power counters (no /sys/class/powercap/intel-rapl, no NVIDIA GPU), codecarbon falls back to
TDP x CPU load, and the label says so, including when the CPU model is not in codecarbon's table and
its TDP is a default of 4 W per thread.

codecarbon: only its *offline* tracker is used (grid intensity from the bundled table for the given
ISO-3 country, no geolocation or API call); it writes no file (no output method), its log is
silenced (records are captured only around start/stop, to learn how it set itself up), and the
whole machine is tracked (codecarbon's "machine" mode). The tracker's own start/stop and hardware
probing are private details of codecarbon: whatever they raise, or swallow, ends in a
"not measurable: ..." reading instead of an exception.

carbontracker (the seed study's tool) is an optional extra behind the same interface. It has no
offline switch for its geolocation (an IP lookup on the network), so that lookup is replaced by
"location unknown" while it is built; its energy (which includes its fixed PUE of 1.58) is
converted to CO2 here with its own bundled intensity table for the configured country.

codecarbon is a dependency of lth and carbontracker an optional extra (`lth[carbontracker]`); a
missing package never fails a run: the meter says "not measurable: <package> not installed (...)".
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

TRACKERS = ("codecarbon", "carbontracker", "off")
DEFAULT_TRACKER = "codecarbon"
DEFAULT_COUNTRY = "CAN"  # ISO 3166-1 alpha-3, as codecarbon's offline tracker wants it

ROW_KEYS = ("energy_kwh", "co2_kg", "energy_seconds", "energy_method")

_INSTALL_HINT = {
    "codecarbon": "pip install 'lth[energy]'",
    "carbontracker": "pip install 'lth[carbontracker]'",
}


@dataclass(frozen=True)
class EnergyReading:
    kwh: float | None  # None when not measurable
    co2_kg: float | None
    seconds: float
    # "codecarbon: measured (RAPL); ...", "codecarbon: estimated from TDP ...", "not measurable: ...", "off"
    method: str

    @property
    def measurable(self) -> bool:
        return self.kwh is not None

    def share(self, k: int) -> EnergyReading:
        """This study's equal share of a round that K studies trained together (`--parallel`)."""
        if k == 1 or self.kwh is None:
            return self
        others = "1 other study" if k == 2 else f"{k - 1} other studies"
        co2 = None if self.co2_kg is None else self.co2_kg / k
        return EnergyReading(self.kwh / k, co2, self.seconds, f"{self.method}; 1/{k} of a round trained together with {others}")

    def as_row(self) -> dict[str, object]:
        """Columns for rounds.csv; None becomes "" so the CSV cell is empty rather than "None"."""
        return {
            "energy_kwh": "" if self.kwh is None else self.kwh,
            "co2_kg": "" if self.co2_kg is None else self.co2_kg,
            "energy_seconds": self.seconds,
            "energy_method": self.method,
        }


class EnergyMeter(Protocol):
    def start(self) -> None: ...

    def stop(self) -> EnergyReading: ...


def not_measurable(reason: str, seconds: float = 0.0) -> EnergyReading:
    return EnergyReading(None, None, seconds, f"not measurable: {reason}")


def make_meter(tracker: str = DEFAULT_TRACKER, country: str = DEFAULT_COUNTRY) -> EnergyMeter:
    """A meter for one of TRACKERS. Nothing is imported here; the tracker package loads on first start().

    The same meter may be started and stopped once per round, as many rounds as needed.
    """
    if tracker not in TRACKERS:
        raise ValueError(f"unknown energy tracker {tracker!r}; choose one of: {', '.join(TRACKERS)}")
    code = str(country).strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError(f"energy country must be an ISO 3166-1 alpha-3 code such as 'CAN' or 'DNK', got {country!r}")
    if tracker == "off":
        return OffMeter()
    if tracker == "codecarbon":
        return CodecarbonMeter(code)
    return CarbontrackerMeter(code)


# --------------------------------------------------------------------------------------------------
# The guard every meter goes through: time the round, turn any failure into a reading.


class _Unavailable(Exception):
    """Raised by a meter's _start when its package cannot be used; the message is the reason as is."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Unavailable):
        return str(exc)
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


class _GuardedMeter:
    """start()/stop() that never raise (KeyboardInterrupt aside); subclasses fill in _start/_stop/_abandon."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._failure: str | None = None

    def start(self) -> None:
        if self._t0 is not None:  # the previous round never called stop(): drop what it was tracking
            self._quietly(self._abandon)
        self._failure = None
        try:
            self._start()
        except (Exception, SystemExit) as exc:  # carbontracker's error path is sys.exit
            self._failure = _reason(exc)
            self._quietly(self._abandon)
        self._t0 = time.perf_counter()  # after the tracker's setup, which is not part of the round

    def stop(self) -> EnergyReading:
        if self._t0 is None:
            return not_measurable("stop() called without start()")
        seconds = time.perf_counter() - self._t0
        self._t0 = None
        if self._failure is not None:
            return not_measurable(self._failure, seconds)
        try:
            return self._stop(seconds)
        except (Exception, SystemExit) as exc:
            self._quietly(self._abandon)
            return not_measurable(_reason(exc), seconds)

    @staticmethod
    def _quietly(fn: Any) -> None:
        try:
            fn()
        except (Exception, SystemExit):
            pass

    def _start(self) -> None:
        pass

    def _stop(self, seconds: float) -> EnergyReading:
        raise NotImplementedError

    def _abandon(self) -> None:
        pass


class OffMeter(_GuardedMeter):
    """Tracking switched off: no energy figure, but the round's wall-clock time is still kept."""

    def _stop(self, seconds: float) -> EnergyReading:
        return EnergyReading(None, None, seconds, "off")


class _NullIO(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)

    def writable(self) -> bool:
        return True


_NULL = _NullIO()


def _check_energy(kwh: Any, co2: Any, who: str) -> tuple[float, float]:
    kwh, co2 = float(kwh), float(co2)
    if not (math.isfinite(kwh) and kwh >= 0 and math.isfinite(co2) and co2 >= 0):
        raise RuntimeError(f"{who} returned an invalid figure (kWh={kwh!r}, kg CO2={co2!r})")
    return kwh, co2


def _watts(w: Any) -> str:
    return f"{float(w):.3g} W"


# --------------------------------------------------------------------------------------------------
# codecarbon


_CC_LOGGER = "codecarbon"
_SILENT = logging.CRITICAL + 10
_cc_lock = threading.Lock()
# How codecarbon found the CPU's TDP. It probes the hardware once per process and caches the result, so
# its warnings ("we don't know it ... default power consumption of 4 W per thread") appear only at the
# start that ran the probe; what they said is kept here. None: not seen (the probe ran elsewhere).
_cc_tdp_source: str | None = None

# CPU modes of codecarbon's CPU hardware object that read energy counters.
_CC_MEASURED_CPU = {
    "intel_rapl": "RAPL",
    "windows_emi": "Windows EMI",
    "intel_power_gadget": "Intel Power Gadget",
}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _silence_codecarbon() -> None:
    """No handler, no propagation, and a level above CRITICAL: nothing reaches stderr (not even lastResort)."""
    log = logging.getLogger(_CC_LOGGER)
    log.handlers = [logging.NullHandler()]
    log.propagate = False
    log.setLevel(_SILENT)


@contextlib.contextmanager
def _capturing_codecarbon(level: int = logging.WARNING) -> Iterator[_Capture]:
    """Route codecarbon's records at `level`+ to a list for the duration, then silence it again."""
    log = logging.getLogger(_CC_LOGGER)
    cap = _Capture()
    log.handlers = [cap]
    log.propagate = False
    log.setLevel(level)
    try:
        yield cap
    finally:
        _silence_codecarbon()


def _swallowed_error(records: list[logging.LogRecord], errors_too: bool = True) -> str | None:
    """codecarbon's @suppress logs an exception instead of raising it; recover a short reason."""
    for rec in records:
        if rec.exc_info and rec.exc_info[1] is not None:
            return _reason(rec.exc_info[1])
    for rec in records if errors_too else ():
        if rec.levelno >= logging.ERROR:
            return " ".join(rec.getMessage().split())[:160]
    return None


def _tracker_kwargs(cc_module: Any, country: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        country_iso_code=country,
        project_name="lth",
        tracking_mode="machine",
        log_level="warning",
        allow_multiple_runs=True,  # no lock file
        emissions_endpoint=None,  # never an HTTP output, whatever a .codecarbon.config says
        output_dir=tempfile.gettempdir(),  # only a Mac/Windows power-gadget log would go there; never the CWD
    )
    import inspect

    params = inspect.signature(cc_module.emissions_tracker.BaseEmissionsTracker.__init__).parameters
    if "output_methods" in params:
        kwargs["output_methods"] = []  # no CSV, API, logger, Prometheus...; the non-deprecated switch
    else:  # older codecarbon
        kwargs.update(save_to_file=False, save_to_api=False, save_to_logger=False, save_to_prometheus=False)
    return kwargs


def _import_failed(package: str, exc: Exception) -> _Unavailable:
    """The reading's reason when a tracker package is missing or breaks on import."""
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == package:
        return _Unavailable(f"{package} not installed ({_INSTALL_HINT[package]})")
    return _Unavailable(f"{package} cannot be imported: {_reason(exc)}")


def _import_codecarbon() -> Any:
    try:
        import codecarbon  # noqa: F401
        import codecarbon.emissions_tracker
    except Exception as exc:
        raise _import_failed("codecarbon", exc) from exc
    _silence_codecarbon()  # its import installs a stderr handler at INFO
    return codecarbon


class CodecarbonMeter(_GuardedMeter):
    """One codecarbon OfflineEmissionsTracker per round (after the first, building one costs milliseconds)."""

    def __init__(self, country: str = DEFAULT_COUNTRY) -> None:
        super().__init__()
        self.country = country
        self._tracker: Any = None

    def _start(self) -> None:
        global _cc_tdp_source
        cc = _import_codecarbon()
        with _cc_lock:
            # The constructor sets the level it is given and adds a stderr handler (bound to sys.stderr as it
            # is then): keep WARNING so a swallowed exception is captured, and give that handler a sink.
            with _capturing_codecarbon() as cap, contextlib.redirect_stderr(_NULL):
                tracker = cc.OfflineEmissionsTracker(**_tracker_kwargs(cc, self.country))
            # The constructor swallows its own exceptions (codecarbon's @suppress): look for one.
            failure = _swallowed_error(cap.records, errors_too=False)
            if failure is not None or not hasattr(tracker, "_scheduler"):
                raise RuntimeError(f"codecarbon tracker could not be built: {failure or 'unknown error'}")
            # An Electricity Maps token from a config file or the environment would make it call that API.
            tracker._electricitymaps_api_token = None
            self._tracker = tracker
            # INFO too: "[setup] CPU Tracking..." tells that this start ran the (once per process) hardware probe.
            with _capturing_codecarbon(logging.INFO) as cap:  # the constructor re-installed its stderr handler
                tracker.start()
            messages = " ".join(r.getMessage() for r in cap.records)
            if "[setup] CPU Tracking" in messages:
                if "don't know it" in messages or "default power consumption" in messages:
                    _cc_tdp_source = "default"
                elif "unable to detect your CPU" in messages:
                    _cc_tdp_source = "undetected"
                else:
                    _cc_tdp_source = "table"
        if getattr(tracker, "_start_time", None) is None:  # start() is @suppress-ed too
            raise RuntimeError(f"codecarbon tracker did not start: {_swallowed_error(cap.records) or 'unknown error'}")

    def _abandon(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None and getattr(tracker, "_start_time", None) is not None:
            with _capturing_codecarbon():
                tracker.stop()

    def _stop(self, seconds: float) -> EnergyReading:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            raise RuntimeError("codecarbon tracker missing")
        with _capturing_codecarbon() as cap:
            tracker.stop()
        data = getattr(tracker, "final_emissions_data", None)
        if data is None:
            raise RuntimeError(f"codecarbon returned no data: {_swallowed_error(cap.records) or 'unknown error'}")
        kwh, co2 = _check_energy(data.energy_consumed, data.emissions, "codecarbon")
        return EnergyReading(kwh, co2, seconds, _codecarbon_method(tracker, data, self.country))


def _codecarbon_method(tracker: Any, data: Any, country: str) -> str:
    """Label from the hardware objects codecarbon set up (its `_hardware` list, the CPU's `_mode`)."""
    measured: list[str] = []
    cpu_part: str | None = None
    gpu = ram = False
    for hw in list(getattr(tracker, "_hardware", None) or []):
        kind = type(hw).__name__
        if kind == "CPU":
            mode = getattr(hw, "_mode", None)
            tdp = getattr(hw, "_tdp", None)
            if mode in _CC_MEASURED_CPU:
                measured.append(_CC_MEASURED_CPU[mode])
            elif mode == "cpu_load":
                if getattr(hw, "_is_generic_tdp", False):
                    note = f"TDP {_watts(tdp)}: codecarbon's generic default, CPU model unknown"
                elif _cc_tdp_source == "default":
                    model = getattr(hw, "_model", None) or getattr(data, "cpu_model", "") or "?"
                    note = f"TDP {_watts(tdp)}: default 4 W/thread, CPU {model!r} not in codecarbon's table"
                elif _cc_tdp_source == "table":
                    note = f"TDP {_watts(tdp)} from codecarbon's table"
                else:
                    note = f"TDP {_watts(tdp)}" if tdp is not None else "TDP unknown"
                cpu_part = f"estimated from TDP × CPU load ({note})"
            elif mode == "constant":
                cpu_part = f"estimated (constant CPU power, {_watts(tdp)})" if tdp is not None else (
                    "estimated (constant CPU power)")
            else:
                cpu_part = f"estimated (CPU mode {mode!r})"
        elif kind == "GPU":
            gpu = True
        elif kind == "AppleSiliconChip":
            if "powermetrics" not in measured:
                measured.append("powermetrics")
        elif kind == "Raspberry":
            if "Raspberry Pi PMIC" not in measured:
                measured.append("Raspberry Pi PMIC")
        elif kind == "RAM":
            ram = True

    ram_note = f"RAM estimated ({_watts(data.ram_power)})" if ram else ""
    if cpu_part is None and measured:
        head = "measured (" + " + ".join(measured + (["GPU counters"] if gpu else [])) + ")"
        tail = [ram_note]
    elif cpu_part is not None:
        head = cpu_part
        tail = ["GPU measured (GPU counters)" if gpu else "", ram_note]
    elif gpu:
        head = "measured (GPU counters; CPU not tracked)"
        tail = [ram_note]
    else:
        head = "estimated (RAM only; CPU not tracked)" if ram else "unknown method"
        tail = [ram_note] if ram else []
    label = "; ".join(["codecarbon: " + head, *[t for t in tail if t]])
    if not getattr(data, "country_name", None):
        label += f"; CO2 at world-average intensity (country {country!r} unknown to codecarbon)"
    return label


# --------------------------------------------------------------------------------------------------
# carbontracker (optional)


class _NoLocation:
    ok = False
    address = "Unknown"
    country = "Unknown"


class _OfflineGeocoder:
    """Stands in for the `geocoder` module inside carbontracker while it is built: no IP lookup."""

    @staticmethod
    def ip(*_a: Any, **_k: Any) -> _NoLocation:
        return _NoLocation()


def _import_carbontracker() -> Any:
    try:
        # Its loggers bind sys.stdout when they are made (some at import): bind them to a sink.
        with contextlib.redirect_stdout(_NULL):
            import carbontracker.tracker as ct_tracker
    except Exception as exc:
        raise _import_failed("carbontracker", exc) from exc
    return ct_tracker


def _carbontracker_intensity(country: str) -> tuple[float, str]:
    """gCO2eq/kWh for an ISO-3 country from carbontracker's bundled table, else its world average."""
    import csv
    import importlib.resources

    from carbontracker import constants

    try:
        path = importlib.resources.files("carbontracker").joinpath("data", "carbon-intensities.csv")
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("Code") == country:
                    value = float(row["Carbon intensity of electricity (gCO2eq/kWh)"])
                    return value, f"{value:.0f} g/kWh for {country}, {row.get('Year', '?')}"
    except Exception:
        pass
    world = float(constants.WORLD_AVG_CARBON_INTENSITY)
    return world, f"world-average {world:.0f} g/kWh: country {country!r} not in carbontracker's table"


def _carbontracker_method(thread: Any, intensity_note: str) -> str:
    measured: list[str] = []
    estimated: list[str] = []
    for comp in list(getattr(thread, "components", None) or []):
        handler = getattr(comp, "_handler", None)
        kind = type(handler).__name__
        if kind == "IntelCPU":
            measured.append("RAPL")
        elif kind == "NvidiaGPU":
            measured.append("NVML")
        elif kind.startswith("AppleSilicon"):
            if "powermetrics" not in measured:
                measured.append("powermetrics")
        elif kind == "GenericCPU":
            tdp = getattr(handler, "tdp", None)
            matched = None
            with contextlib.suppress(Exception):
                matched = handler.find_matching_tdp()
            if tdp is None:
                estimated.append("constant CPU power")
            elif matched is None:
                estimated.append(f"constant CPU power {_watts(tdp)}: CPU not in its table, half its average TDP")
            else:
                estimated.append(f"constant CPU power {_watts(tdp)} = 50% of name-matched TDP {_watts(matched)}")
        elif kind.startswith("Simulated"):
            estimated.append(f"simulated {comp.name.upper()}")
        else:
            estimated.append(f"{getattr(comp, 'name', '?')} via {kind}")
    from carbontracker import constants

    extras = [f"×PUE {constants.PUE_2023}", f"CO2 at {intensity_note}"]
    if estimated:
        head = "estimated (" + "; ".join(estimated + ([f"measured: {' + '.join(measured)}"] if measured else [])) + ")"
    elif measured:
        head = "measured (" + " + ".join(measured) + ")"
    else:
        head = "unknown method"
    return "carbontracker: " + head + "; " + "; ".join(extras)


class CarbontrackerMeter(_GuardedMeter):
    """One long-lived CarbonTracker; each round is one of its epochs (epoch_start/epoch_end).

    Built with ignore_errors=True (otherwise its errors call sys.exit), no log directory (no files),
    no API keys (no intensity fetcher) and the geolocation lookup disabled: it never uses the network.
    """

    EPOCHS = 1_000_000  # never reached, so it never prints its summary or deletes itself

    def __init__(self, country: str = DEFAULT_COUNTRY) -> None:
        super().__init__()
        self.country = country
        self._ct: Any = None

    def _build(self) -> Any:
        ct_tracker = _import_carbontracker()
        from carbontracker.emissions.intensity import intensity as ct_intensity

        saved = ct_intensity.geocoder
        ct_intensity.geocoder = _OfflineGeocoder
        try:
            with contextlib.redirect_stdout(_NULL):
                ct = ct_tracker.CarbonTracker(
                    epochs=self.EPOCHS, epochs_before_pred=0, monitor_epochs=-1, update_interval=1,
                    interpretable=False, stop_and_confirm=False, ignore_errors=True, components="all",
                    devices_by_pid=False, log_dir=None, verbose=0, api_keys=None,
                )
        finally:
            ct_intensity.geocoder = saved
        if getattr(ct, "deleted", False) or not hasattr(ct, "tracker"):
            raise RuntimeError("carbontracker stopped itself while starting (no usable CPU/GPU power interface?)")
        return ct

    def _start(self) -> None:
        if self._ct is None or getattr(self._ct, "deleted", True):
            self._ct = self._build()
        self._ct.epoch_start()
        if self._ct.deleted:
            raise RuntimeError("carbontracker stopped monitoring at epoch start")

    def _abandon(self) -> None:
        ct, self._ct = self._ct, None
        if ct is not None and not getattr(ct, "deleted", True):
            with contextlib.redirect_stdout(_NULL):
                ct.stop()

    def _stop(self, seconds: float) -> EnergyReading:
        ct = self._ct
        if ct is None:
            raise RuntimeError("carbontracker missing")
        ct.epoch_end()
        if ct.deleted:
            self._ct = None
            raise RuntimeError("carbontracker stopped monitoring during the round (no usable power interface?)")
        thread = ct.tracker
        energies = thread.total_energy_per_epoch()
        if len(energies) == 0:
            raise RuntimeError("carbontracker recorded no epoch")
        kwh = float(energies[-1])
        if kwh == 0.0 and seconds > 0:
            raise RuntimeError("carbontracker collected no power sample in this round")
        intensity, note = _carbontracker_intensity(self.country)
        kwh, co2 = _check_energy(kwh, kwh * intensity / 1000.0, "carbontracker")
        return EnergyReading(kwh, co2, seconds, _carbontracker_method(thread, note))
