"""The device a plan is made for: from torch when a GPU is there, or given, so that a plan for
another GPU can be made on any machine."""

from __future__ import annotations

from dataclasses import dataclass

from ...known import devices, machine

GIB = 1024**3
MARGIN_FRACTION, MARGIN_MIN = 0.05, GIB // 2  # kept free for the CUDA context, allocator slack, ComfyUI


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int] | None  # None: a CPU

    @property
    def is_cpu(self) -> bool:
        return self.compute_capability is None

    def default_budget(self) -> int:
        """Free memory less a safety margin."""
        return max(0, self.free_bytes - max(MARGIN_MIN, int(self.total_bytes * MARGIN_FRACTION)))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "total_gb": round(self.total_bytes / GIB, 2),
            "free_gb": round(self.free_bytes / GIB, 2),
            "compute_capability": list(self.compute_capability) if self.compute_capability else None,
        }

    @classmethod
    def from_dict(cls, data) -> DeviceProfile:
        """`{"name": str, "total_gb": float, "free_gb": float, "compute_capability": [major, minor] | null}`."""
        if not isinstance(data, dict):
            raise ProfileError("a device profile is a JSON object with name, total_gb, free_gb, compute_capability")
        name = data.get("name")
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ProfileError('device profile: "name" must be a non-empty string (at most 200 characters)')
        for key in ("total_gb", "free_gb"):
            if isinstance(data.get(key), bool):
                raise ProfileError(f'device profile: "{key}" must be a number (GiB), not true/false')
        try:
            total = float(data.get("total_gb", data.get("free_gb")))
            free = float(data.get("free_gb", total))
        except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit integer
            raise ProfileError('device profile: "total_gb" and "free_gb" must be numbers (GiB)') from None
        if not (0 < total < 1e5) or not (0 <= free <= total):
            raise ProfileError(
                f"device profile: need 0 < total_gb < 100000 and 0 <= free_gb <= total_gb, got {total}, {free}"
            )
        cc = data.get("compute_capability")
        if cc is not None:
            if not (
                isinstance(cc, (list, tuple))
                and len(cc) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 100 for v in cc)
            ):
                raise ProfileError('device profile: "compute_capability" must be [major, minor] or null (CPU)')
            cc = (cc[0], cc[1])
        return cls(name, int(total * GIB), int(free * GIB), cc)


def detect(device: str = "cuda") -> DeviceProfile:
    """This machine's GPU (free memory from the driver), or its CPU and RAM when there is none
    (known without importing torch on a Linux machine without GPU device files: devices.cuda_available)."""
    if device.startswith("cuda") and devices.cuda_available():
        import torch

        index = torch.device(device).index or 0
        free, total = torch.cuda.mem_get_info(index)
        return DeviceProfile(
            torch.cuda.get_device_name(index), int(total), int(free), tuple(torch.cuda.get_device_capability(index))
        )
    return DeviceProfile("cpu", machine.total_ram_bytes(), machine.available_ram_bytes() or 0, None)
