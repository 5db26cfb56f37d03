"""The nvml.h types the stand-in fills, declared here from the header (not
taken from ``pynvml``), so a layout or version slip in the bindings shows up
as a wrong value or a version error instead of agreeing with itself.

Versioned structs carry ``NVML_STRUCT_VERSION(name, n)`` = ``sizeof | n << 24``
in their first field. The GPU-instance profile info v2 and v3 have the same
size but different layouts (v3 drops ``isP2pSupported`` and adds
``capabilities`` at the end), so only the version byte tells them apart.
"""

from __future__ import annotations

import ctypes
from ctypes import c_char, c_uint, c_ulonglong, c_void_p

NVML_DEVICE_NAME_V2_BUFFER_SIZE = 96
NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE = 32
NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE = 16


def struct_version(struct: type[ctypes.Structure], n: int) -> int:
    return ctypes.sizeof(struct) | (n << 24)


class PciInfo(ctypes.Structure):  # nvmlPciInfo_t (the _v3 call)
    _fields_ = [
        ("busIdLegacy", c_char * NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE),
        ("domain", c_uint),
        ("bus", c_uint),
        ("device", c_uint),
        ("pciDeviceId", c_uint),
        ("pciSubSystemId", c_uint),
        ("busId", c_char * NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE),
    ]


class Memory(ctypes.Structure):  # nvmlMemory_t
    _fields_ = [("total", c_ulonglong), ("free", c_ulonglong), ("used", c_ulonglong)]


class MemoryV2(ctypes.Structure):  # nvmlMemory_v2_t
    _fields_ = [("version", c_uint), ("total", c_ulonglong), ("reserved", c_ulonglong), ("free", c_ulonglong), ("used", c_ulonglong)]


class ProcessInfo(ctypes.Structure):  # nvmlProcessInfo_t (v2 and v3 calls)
    _fields_ = [("pid", c_uint), ("usedGpuMemory", c_ulonglong), ("gpuInstanceId", c_uint), ("computeInstanceId", c_uint)]


class Placement(ctypes.Structure):  # nvmlGpuInstancePlacement_t, nvmlComputeInstancePlacement_t
    _fields_ = [("start", c_uint), ("size", c_uint)]


_GI_COUNTS = [
    ("multiprocessorCount", c_uint),
    ("copyEngineCount", c_uint),
    ("decoderCount", c_uint),
    ("encoderCount", c_uint),
    ("jpegCount", c_uint),
    ("ofaCount", c_uint),
]


class GiProfileInfoV1(ctypes.Structure):  # nvmlGpuInstanceProfileInfo_t
    _fields_ = [("id", c_uint), ("isP2pSupported", c_uint), ("sliceCount", c_uint), ("instanceCount", c_uint), *_GI_COUNTS, ("memorySizeMB", c_ulonglong)]


class GiProfileInfoV2(ctypes.Structure):  # nvmlGpuInstanceProfileInfo_v2_t
    _fields_ = [
        ("version", c_uint),
        ("id", c_uint),
        ("isP2pSupported", c_uint),
        ("sliceCount", c_uint),
        ("instanceCount", c_uint),
        *_GI_COUNTS,
        ("memorySizeMB", c_ulonglong),
        ("name", c_char * NVML_DEVICE_NAME_V2_BUFFER_SIZE),
    ]


class GiProfileInfoV3(ctypes.Structure):  # nvmlGpuInstanceProfileInfo_v3_t
    _fields_ = [
        ("version", c_uint),
        ("id", c_uint),
        ("sliceCount", c_uint),
        ("instanceCount", c_uint),
        *_GI_COUNTS,
        ("memorySizeMB", c_ulonglong),
        ("name", c_char * NVML_DEVICE_NAME_V2_BUFFER_SIZE),
        ("capabilities", c_uint),
    ]


class GpuInstanceInfo(ctypes.Structure):  # nvmlGpuInstanceInfo_t
    _fields_ = [("device", c_void_p), ("id", c_uint), ("profileId", c_uint), ("placement", Placement)]


_CI_COUNTS = [
    ("multiprocessorCount", c_uint),
    ("sharedCopyEngineCount", c_uint),
    ("sharedDecoderCount", c_uint),
    ("sharedEncoderCount", c_uint),
    ("sharedJpegCount", c_uint),
    ("sharedOfaCount", c_uint),
]


class CiProfileInfoV1(ctypes.Structure):  # nvmlComputeInstanceProfileInfo_t
    _fields_ = [("id", c_uint), ("sliceCount", c_uint), ("instanceCount", c_uint), *_CI_COUNTS]


class CiProfileInfoV2(ctypes.Structure):  # nvmlComputeInstanceProfileInfo_v2_t
    _fields_ = [("version", c_uint), ("id", c_uint), ("sliceCount", c_uint), ("instanceCount", c_uint), *_CI_COUNTS, ("name", c_char * NVML_DEVICE_NAME_V2_BUFFER_SIZE)]


class CiProfileInfoV3(ctypes.Structure):  # nvmlComputeInstanceProfileInfo_v3_t
    _fields_ = [*CiProfileInfoV2._fields_, ("capabilities", c_uint)]


class ComputeInstanceInfo(ctypes.Structure):  # nvmlComputeInstanceInfo_t
    _fields_ = [("device", c_void_p), ("gpuInstance", c_void_p), ("id", c_uint), ("profileId", c_uint), ("placement", Placement)]


GI_PROFILE_INFO_V2 = struct_version(GiProfileInfoV2, 2)  # 0x02000098
GI_PROFILE_INFO_V3 = struct_version(GiProfileInfoV3, 3)  # 0x03000098
CI_PROFILE_INFO_V2 = struct_version(CiProfileInfoV2, 2)  # 0x02000088
CI_PROFILE_INFO_V3 = struct_version(CiProfileInfoV3, 3)  # 0x0300008C
MEMORY_V2 = struct_version(MemoryV2, 2)  # 0x02000028
