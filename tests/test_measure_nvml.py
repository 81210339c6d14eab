"""NVML code paths against a fake NVML (there is no GPU here): UUID matching, per-process
memory that NVML cannot attribute (None, host PIDs, MIG), energy, and no NVML at all."""

from __future__ import annotations

import os
import sys
import time
import types
from types import SimpleNamespace

import pytest
import torch

from dqar_bench.measure import nvml
from dqar_bench.measure.energy import EnergyMeter
from dqar_bench.measure.meter import CaseMeter


class NVMLError(Exception):
    pass


def fake_nvml(gpus, driver="560.35.03"):
    """A pynvml stand-in. `gpus`: list of dicts with uuid, name, used, processes, energy_mj,
    and optionally migs (list of such dicts); handles are the dicts themselves."""
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    m.calls = []
    m.inited = 0

    def init():
        m.inited += 1

    def shutdown():
        m.inited -= 1

    def need(handle, key):
        if key not in handle:
            raise NVMLError("Not Supported")
        value = handle[key]
        return value() if callable(value) else value

    m.nvmlInit = init
    m.nvmlShutdown = shutdown
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    m.nvmlDeviceGetUUID = lambda h: h["uuid"].encode()  # older pynvml gives bytes
    m.nvmlDeviceGetName = lambda h: h["name"]
    m.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=need(h, "used"), total=80 * 2**30)
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: [SimpleNamespace(pid=p, usedGpuMemory=u) for p, u in need(h, "processes")]
    m.nvmlDeviceGetTotalEnergyConsumption = lambda h: need(h, "energy_mj")
    m.nvmlDeviceGetMigMode = lambda h: (1, 1) if "migs" in h else (_ for _ in ()).throw(NVMLError("Not Supported"))
    m.nvmlDeviceGetMaxMigDeviceCount = lambda h: 7
    m.nvmlDeviceGetMigDeviceHandleByIndex = lambda h, j: h["migs"][j] if j < len(h["migs"]) else (_ for _ in ()).throw(NVMLError("Not Found"))
    m.nvmlSystemGetDriverVersion = lambda: driver
    return m


def fake_cuda(uuid):
    return SimpleNamespace(
        current_device=lambda: 0,
        get_device_properties=lambda i: SimpleNamespace(uuid=uuid, name="fake"),
        synchronize=lambda device=None: None,
        empty_cache=lambda: None,
        reset_peak_memory_stats=lambda device=None: None,
        max_memory_allocated=lambda device=None: 3 * 2**20,
        max_memory_reserved=lambda device=None: 4 * 2**20,
    )


ME = os.getpid()
A = "8a1b2c3d-0000-1111-2222-333344445555"
B = "ffffffff-9999-8888-7777-666655554444"


def two_gpus(**ours):
    other = {"uuid": f"GPU-{A}", "name": "NVIDIA H100", "used": 70 * 2**30, "processes": [(12345, 60 * 2**30)], "energy_mj": 5_000_000}
    mine = {"uuid": f"GPU-{B}", "name": "NVIDIA H200", "used": 2 * 2**30, "processes": [(ME, 1 * 2**30)], "energy_mj": 1_000_000, **ours}
    return [other, mine]


def test_device_is_matched_by_uuid_not_index():
    gpus = two_gpus()
    module = fake_nvml(gpus)
    # torch's device 0 (CUDA_VISIBLE_DEVICES=1, say) is NVML's index 1: found by UUID
    device, note = nvml.open_device(torch.device("cuda", 0), module, fake_cuda(B.upper()))
    assert note is None and device.handle is gpus[1] and device.name == "NVIDIA H200" and not device.mig
    assert nvml.normalize_uuid(b"GPU-ABC") == nvml.normalize_uuid("abc") == nvml.normalize_uuid("MIG-abc")


def test_unknown_uuid_is_not_guessed_by_index():
    device, note = nvml.open_device(torch.device("cuda", 0), fake_nvml(two_gpus()), fake_cuda("00000000-dead-beef-0000-000000000000"))
    assert device is None and "no NVML device has torch's UUID" in note


def test_process_memory_of_this_pid():
    device = nvml.find_device(fake_nvml(two_gpus()), B)
    assert nvml.process_memory(device, ME) == (2**30, None)


def test_used_gpu_memory_none_is_not_available():
    device = nvml.find_device(fake_nvml(two_gpus(processes=[(ME, None)])), B)
    used, note = nvml.process_memory(device, ME)
    assert used is None and note.startswith("not available") and "per-process" in note


def test_foreign_host_pids_are_not_available():
    device = nvml.find_device(fake_nvml(two_gpus(processes=[(987654, 2**30)])), B)
    used, note = nvml.process_memory(device, ME)
    assert used is None and "host PIDs" in note


def test_process_listing_error_is_not_available():
    gpu = two_gpus()
    del gpu[1]["processes"]
    used, note = nvml.process_memory(nvml.find_device(fake_nvml(gpu), B), ME)
    assert used is None and "Not Supported" in note


def test_mig_instance_found_by_uuid_and_degrades():
    mig = {"uuid": "MIG-11111111-2222-3333-4444-555555555555", "name": "ignored", "used": 3 * 2**30, "processes": [(ME, None)], "energy_mj": 42}
    parent = {"uuid": f"GPU-{A}", "name": "NVIDIA A100", "used": 30 * 2**30, "processes": [], "energy_mj": 10, "migs": [mig]}
    module = fake_nvml([parent])
    device, note = nvml.open_device(torch.device("cuda"), module, fake_cuda("11111111-2222-3333-4444-555555555555"))
    assert note is None and device.mig and device.handle is mig and device.name == "NVIDIA A100 (MIG)"
    sampler = nvml.NvmlSampler(device, pid=ME)
    sampler.sample()
    report = sampler.report()
    assert report["device_used_peak_bytes"] == 3 * 2**30  # the instance's own memory
    assert report["process_peak_bytes"] is None and "MIG" in report["process_note"]
    energy = EnergyMeter(device)
    energy.start()
    energy.stop()
    assert energy.report(4)["joules"] is None and "MIG" in energy.report(4)["energy_note"]


def test_sampler_keeps_peaks_and_never_raises():
    values = iter([1, 5, 3] + [2] * 10_000)
    gpus = two_gpus(used=lambda: next(values) * 2**30)
    device = nvml.find_device(fake_nvml(gpus), B)
    sampler = nvml.NvmlSampler(device, interval_s=0.001)
    sampler.start()
    deadline = time.monotonic() + 5
    while sampler.samples < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    gpus[1]["used"] = lambda: (_ for _ in ()).throw(NVMLError("GPU is lost"))  # the driver goes away mid-run
    time.sleep(0.01)
    report = sampler.stop()
    assert report["device_used_peak_bytes"] == 5 * 2**30
    assert report["process_peak_bytes"] == 2**30 and report["process_note"] is None
    assert "GPU is lost" in report["nvml_note"] and report["nvml_samples"] >= 4


def test_energy_is_the_counter_delta_per_image():
    counter = iter([1_000_000, 1_250_000])
    device = nvml.find_device(fake_nvml(two_gpus(energy_mj=lambda: next(counter))), B)
    energy = EnergyMeter(device)
    energy.start()
    energy.stop()
    assert energy.report(10) == {"joules": 250.0, "joules_per_image": 25.0, "energy_note": None}


def test_energy_not_supported_is_not_available():
    gpu = two_gpus()
    del gpu[1]["energy_mj"]
    energy = EnergyMeter(nvml.find_device(fake_nvml(gpu), B))
    energy.start()
    energy.stop()
    report = energy.report(4)
    assert report["joules_per_image"] is None and "no energy counter" in report["energy_note"]


def test_no_nvml_library_degrades(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    device, note = nvml.open_device(torch.device("cuda"), None, fake_cuda(B))
    assert device is None and "not installed" in note
    broken = fake_nvml([])
    broken.nvmlInit = lambda: (_ for _ in ()).throw(NVMLError("Driver Not Loaded"))
    assert nvml.load(broken) == (None, "not available: NVML did not start (NVMLError: Driver Not Loaded)")


def test_real_pynvml_module_is_used_when_monkeypatched(monkeypatch):
    """The default path imports `pynvml` (nvidia-ml-py); a fake in sys.modules stands in for it."""
    module = fake_nvml(two_gpus())
    monkeypatch.setitem(sys.modules, "pynvml", module)
    device, note = nvml.open_device(torch.device("cuda"), cuda=fake_cuda(B))
    assert note is None and device.nvml is module
    assert nvml.driver_version() == "560.35.03"


def test_case_meter_on_a_fake_gpu(monkeypatch):
    counter = iter([2_000_000, 2_600_000])
    module = fake_nvml(two_gpus(energy_mj=lambda: next(counter)))
    meter = CaseMeter(torch.device("cuda", 0), nvml_interval_s=0.001, nvml=module, cuda=fake_cuda(B))
    with meter:
        with meter.timed_section():
            pass
    report = meter.report(images=12)
    assert report["energy"]["joules_per_image"] == pytest.approx(50.0)
    mem = report["memory"]
    assert mem["device_used_peak_bytes"] == 2 * 2**30 and mem["process_peak_bytes"] == 2**30
    assert mem["torch_peak_allocated_bytes"] == 3 * 2**20 and mem["torch_peak_reserved_bytes"] == 4 * 2**20
    assert mem["gpu"] == "NVIDIA H200" and module.inited == 0  # NVML shut down again


def test_case_meter_on_the_cpu_says_na_and_records_rss():
    with CaseMeter(torch.device("cpu")) as meter:
        blob = torch.ones(8 * 2**20, dtype=torch.uint8)  # 8 MiB touched inside the case
        del blob
    report = meter.report(images=4)
    mem = report["memory"]
    assert mem["device_used_peak_bytes"] is None and mem["nvml_note"] == "n/a: no GPU"
    assert mem["torch_peak_allocated_bytes"] is None
    assert mem["peak_rss_bytes"] > 8 * 2**20 and mem["peak_rss_scope"] in ("case", "process")
    assert report["energy"]["joules_per_image"] is None and report["energy"]["energy_note"] == "n/a: no GPU"
