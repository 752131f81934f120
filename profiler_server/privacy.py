"""What of a run's ``extra``, a validation's ``extra`` and a device's ``metadata`` anyone may read.

An ALLOW-list: a key is shown to anonymous readers, the read token and other devices only when it is
one of :data:`PUBLIC_KEYS`, at any depth (a dict under an unknown key is dropped whole, whatever it
holds). The admin and the device's own token see everything. The list is what the agents upload
(``device_agents``: the transports' provenance, the protocol's report and configuration, the run's
calibration, the validations' pricing) and the descriptive hardware keys an operator may put in a
device's metadata; a key an agent starts to send stays private until it is added here.

Some values are maps whose keys are data, not field names (sensor zones, CPU names, op keys, price
sources): under :data:`NUMERIC_MAPS` an entry is kept only when its value is a number and its key a
short plain name.
"""

from __future__ import annotations

import re

# the transports' provenance (adb, native, host, ios; the runner's --version line and its events)
_PROVENANCE = {
    "runner", "version", "build", "executorch", "board", "abi", "fingerprint", "max_freqs_mhz", "loadavg", "cpus",
    "product_type", "exporter", "torch", "coremltools", "source",
    "event", "round", "key", "batches", "median_us", "stable", "reference_median_us", "temps", "freqs",
    "threads", "programs",
}
# the protocol: its configuration (device_agents.protocol.ProtocolConfig), its report (ProtocolInfo.to_dict)
_PROTOCOL = {
    "protocol_config", "warmup", "repeats", "rounds", "seed", "cv_threshold", "max_remeasure", "cooldown_s",
    "reference", "normalize", "unstable_threshold", "warmup_stable", "stable_tol", "max_warmup_batches",
    "settle_tau", "max_rounds",
    "protocol", "reference_keys", "round_factors", "spread", "unstable", "warmup_batches_us", "settle", "tau",
    "space_version", "sampled", "plan_round", "remeasured", "measure_s", "runner_rounds",
    "calibration", "factor", "us_per_mb", "models", "overhead_us", "arch", "ops_sum_us", "weight_mb", "n", "ratio",
    "label", "plausible", "table_version",  # a sampled v2 profile's calibration (device_agents.calibration_v2)
}
# whole-model validations (device_agents.validate and validate_v2) and the table configuration they priced
_VALIDATION = {
    "raw_sum_us", "pricing", "statistic", "table_predicted_us", "drift_scale", "context_factor",
    "context_us_per_mb", "table_context_factor", "alone_predicted_us", "configuration", "precision", "runtime",
    "runtime_version", "cpu_mask", "compute_units", "imported", "table_overhead_us", "n_ops", "transport",
    "p10_us", "p90_us", "drift", "model_drift", "calibration_models", "reference_ops", "inround_predicted_us",
    "sources", "resolution", "mflops", "calibration_now_us", "calibration_then_us",
}
# a device's descriptive metadata (what an operator registers besides model, soc and os)
_HARDWARE = {
    "platform", "model", "soc", "os", "os_version", "chipset", "cpu", "gpu", "npu", "cores", "ram_mb", "ram_gb",
    "form_factor", "architecture", "lab",
}
PUBLIC_KEYS = frozenset(_PROVENANCE | _PROTOCOL | _VALIDATION | _HARDWARE)
# maps keyed by data: {"thermal_zone0:cpu": 41.5}, {"cpu4": 2314.0}, {op key: median}, {"measured": 12}
NUMERIC_MAPS = frozenset({"max_freqs_mhz", "temps", "freqs", "reference_median_us", "sources", "calibration_now_us",
                          "calibration_then_us"})
_MAP_KEY = re.compile(r"[A-Za-z0-9_.:+ -]{1,80}", re.ASCII)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _numeric_map(value) -> dict:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and _MAP_KEY.fullmatch(k) and _number(v)}


def public(value):
    """``value`` with only the public keys, at every depth (lists are filtered item by item)."""
    if isinstance(value, dict):
        return {k: _numeric_map(v) if k in NUMERIC_MAPS else public(v)
                for k, v in value.items() if k in PUBLIC_KEYS}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value

