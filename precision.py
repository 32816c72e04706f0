"""The precision of the forward pass (autocast dtype), chosen in one place for training and evaluation."""
import torch


def resolve_amp(amp, device):
    """The autocast dtype (None = fp32): bf16 on recent GPUs and on CPUs with AVX512-BF16/AMX, else fp16."""
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
            return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else None
        except OSError:
            return None
    return None


def device_name(device):
    """The device in words: the GPU's name, or the CPU's model name (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()
